//! Join tokens in the kubeadm shape `ID.SECRET`.
//!
//! `ID` (6 characters) names the token so that an operator can list and delete it without
//! seeing the secret; `SECRET` (16 characters) is what a joining node proves it knows. Both
//! are lowercase letters and digits, so a token survives copy and paste, shells and URLs.
//! 16 characters of 36 symbols give about 82 bits of secret.
//!
//! The registry only ever stores [`JoinToken::secret_hash`]; a node presenting a token is
//! checked by hashing what it sent and comparing with [`hashes_equal`], in constant time.

use std::fmt;

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::CryptoError;

/// Length of the token id.
pub const TOKEN_ID_LEN: usize = 6;
/// Length of the token secret.
pub const TOKEN_SECRET_LEN: usize = 16;

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A join token. `Debug` hides the secret; `Display` prints the full `id.secret` for the
/// operator who must pass it to `membrane agent --token`.
#[derive(Clone)]
pub struct JoinToken {
    id: String,
    secret: Zeroizing<String>,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret.as_str())
    }
}

impl std::str::FromStr for JoinToken {
    type Err = CryptoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JoinToken::parse(s)
    }
}

impl JoinToken {
    /// A new random token from the operating system's CSPRNG.
    pub fn generate() -> JoinToken {
        let mut rng = rand::rngs::OsRng;
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
                .collect()
        };
        let id = pick(TOKEN_ID_LEN);
        let secret = Zeroizing::new(pick(TOKEN_SECRET_LEN));
        JoinToken { id, secret }
    }

    /// Parses `ID.SECRET`. The error says exactly what is malformed and never repeats the
    /// secret, since parse errors end up in logs.
    pub fn parse(s: &str) -> Result<JoinToken, CryptoError> {
        let bad = |reason: String| CryptoError::InvalidToken { reason };
        if s.is_empty() {
            return Err(bad("the token is empty".into()));
        }
        let Some((id, secret)) = s.split_once('.') else {
            return Err(bad(
                "missing the `.` between the 6-character id and the 16-character secret".into(),
            ));
        };
        if secret.contains('.') {
            return Err(bad("more than one `.`; expected exactly one".into()));
        }
        check_part("id", id, TOKEN_ID_LEN, 0).map_err(bad)?;
        check_part("secret", secret, TOKEN_SECRET_LEN, id.len() + 1).map_err(bad)?;
        Ok(JoinToken {
            id: id.to_string(),
            secret: Zeroizing::new(secret.to_string()),
        })
    }

    /// The public half, used to name, list and delete the token.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Hex SHA-256 of the full token string `id.secret`: the only form the registry stores,
    /// so reading the registry does not reveal usable tokens.
    pub fn secret_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.id.as_bytes());
        h.update(b".");
        h.update(self.secret.as_bytes());
        hex::encode(h.finalize())
    }
}

/// Compares two token hashes in constant time (for equal lengths), so that timing does not
/// tell an attacker how many leading characters of a guess were right.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Checks one part's length and characters. `offset` is the part's position in the whole
/// token, so positions in messages refer to what the operator typed.
fn check_part(name: &str, part: &str, want: usize, offset: usize) -> Result<(), String> {
    if let Some((pos, c)) = part
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
    {
        let what = if c.is_ascii_uppercase() {
            "an uppercase letter"
        } else if c.is_whitespace() {
            "whitespace"
        } else {
            "not a lowercase letter or digit"
        };
        return Err(format!(
            "the {name} has a bad character at position {}: {what} (only a-z and 0-9 are allowed)",
            offset + pos
        ));
    }
    if part.len() != want {
        return Err(format!(
            "the {name} is {} characters long, expected {want}",
            part.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> String {
        match JoinToken::parse(s) {
            Err(CryptoError::InvalidToken { reason }) => reason,
            other => panic!("{s:?}: unexpected {other:?}"),
        }
    }

    #[test]
    fn generated_tokens_have_the_kubeadm_shape_and_differ() {
        let a = JoinToken::generate();
        let b = JoinToken::generate();
        let s = a.to_string();
        assert_eq!(s.len(), 6 + 1 + 16);
        assert_eq!(&s[6..7], ".");
        assert!(s
            .chars()
            .filter(|c| *c != '.')
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_eq!(a.id(), &s[..6]);
        assert_ne!(a.to_string(), b.to_string());
    }

    #[test]
    fn generated_tokens_use_the_whole_alphabet() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.extend(
                JoinToken::generate()
                    .to_string()
                    .chars()
                    .filter(|c| *c != '.'),
            );
        }
        assert_eq!(seen.len(), 36);
    }

    #[test]
    fn parse_round_trips() {
        let t = JoinToken::generate();
        let p = JoinToken::parse(&t.to_string()).unwrap();
        assert_eq!(p.to_string(), t.to_string());
        assert_eq!(p.id(), t.id());
        assert_eq!(p.secret_hash(), t.secret_hash());

        let fixed = JoinToken::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(fixed.id(), "abcdef");
        assert_eq!(fixed.to_string(), "abcdef.0123456789abcdef");
        let via_from_str: JoinToken = "abcdef.0123456789abcdef".parse().unwrap();
        assert_eq!(via_from_str.to_string(), fixed.to_string());
    }

    #[test]
    fn secret_hash_is_sha256_of_the_full_token() {
        let t = JoinToken::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(
            t.secret_hash(),
            hex::encode(Sha256::digest(b"abcdef.0123456789abcdef"))
        );
        let other = JoinToken::parse("abcdef.0123456789abcdee").unwrap();
        assert_ne!(t.secret_hash(), other.secret_hash());
    }

    #[test]
    fn every_malformed_token_is_explained() {
        assert_eq!(reason(""), "the token is empty");
        assert_eq!(
            reason("abcdef0123456789abcdef"),
            "missing the `.` between the 6-character id and the 16-character secret"
        );
        assert_eq!(
            reason("abcdef.01234567.89abcdef"),
            "more than one `.`; expected exactly one"
        );
        assert_eq!(
            reason("abcde.0123456789abcdef"),
            "the id is 5 characters long, expected 6"
        );
        assert_eq!(
            reason("abcdefg.0123456789abcdef"),
            "the id is 7 characters long, expected 6"
        );
        assert_eq!(
            reason(".0123456789abcdef"),
            "the id is 0 characters long, expected 6"
        );
        assert_eq!(
            reason("abcdef.0123456789abcde"),
            "the secret is 15 characters long, expected 16"
        );
        assert_eq!(
            reason("abcdef.0123456789abcdef0"),
            "the secret is 17 characters long, expected 16"
        );
        assert_eq!(
            reason("abcdef."),
            "the secret is 0 characters long, expected 16"
        );
        assert_eq!(
            reason("abCdef.0123456789abcdef"),
            "the id has a bad character at position 2: an uppercase letter (only a-z and 0-9 are allowed)"
        );
        assert_eq!(
            reason("abcdef.0123456789abcd-f"),
            "the secret has a bad character at position 21: not a lowercase letter or digit (only a-z and 0-9 are allowed)"
        );
        assert_eq!(
            reason("abcdef.0123456789abcdef\n"),
            "the secret has a bad character at position 23: whitespace (only a-z and 0-9 are allowed)"
        );
        assert_eq!(
            reason("abcdéf.0123456789abcdef"),
            "the id has a bad character at position 4: not a lowercase letter or digit (only a-z and 0-9 are allowed)"
        );
    }

    #[test]
    fn errors_and_debug_never_show_the_secret() {
        let err = JoinToken::parse("qwerty.9876543210Zyxwvu")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("9876543210"), "{err}");
        assert!(!err.contains("yxwvu"), "{err}");
        assert!(err.contains("membrane init"), "{err}");
        let t = JoinToken::parse("qwerty.9876543210zyxwvu").unwrap();
        let dbg = format!("{t:?}");
        assert!(dbg.contains("qwerty"));
        assert!(!dbg.contains("9876543210"), "{dbg}");
    }

    #[test]
    fn hashes_equal_compares_exactly() {
        let a = JoinToken::generate().secret_hash();
        let b = JoinToken::generate().secret_hash();
        assert!(hashes_equal(&a, &a.clone()));
        assert!(!hashes_equal(&a, &b));
        assert!(!hashes_equal(&a, &a[..63]));
        assert!(!hashes_equal(&a, ""));
        assert!(hashes_equal("", ""));
        let mut flipped = a.clone().into_bytes();
        flipped[63] = if flipped[63] == b'0' { b'1' } else { b'0' };
        assert!(!hashes_equal(&a, std::str::from_utf8(&flipped).unwrap()));
    }
}
