//! `tls/ca.crt` as a bundle: the CA certificates a node trusts, the one that signs first.
//! Outside a CA rotation it holds one certificate; during one, the old and the new CA.
//! Pure text handling, so that every reader agrees on what "the signing CA" is.

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The PEM blocks of `pem`, each with its markers and a final newline, in file order.
pub fn split(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(format!("{}\n", rest[start..end].trim()));
        rest = &rest[end..];
    }
    out
}

/// The first certificate: the CA that signs.
pub fn signing(pem: &str) -> Option<String> {
    split(pem).into_iter().next()
}

/// One file holding `certs` in this order.
pub fn join<S: AsRef<str>>(certs: &[S]) -> String {
    certs
        .iter()
        .map(|c| format!("{}\n", c.as_ref().trim()))
        .collect()
}

/// Whether two bundles hold the same certificates in the same order (whitespace aside).
pub fn same<S: AsRef<str>>(pem: &str, certs: &[S]) -> bool {
    split(pem) == split(&join(certs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(body: &str) -> String {
        format!("{BEGIN}\n{body}\n{END}\n")
    }

    #[test]
    fn t10_a_bundle_splits_joins_and_compares_in_order() {
        let (a, b) = (cert("AAA"), cert("BBB"));
        let both = join(&[&a, &b]);
        assert_eq!(split(&both), vec![a.clone(), b.clone()]);
        assert_eq!(signing(&both), Some(a.clone()));
        assert!(same(&format!("\n{}\r\n\n{}", a.trim(), b), &[&a, &b]));
        assert!(!same(&both, &[&b, &a]), "order is which CA signs");
        assert!(!same(&both, &[&a]));
        assert_eq!(split("no certificate"), Vec::<String>::new());
        assert_eq!(signing(&format!("{BEGIN}\ntruncated")), None);
    }
}
