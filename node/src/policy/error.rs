//! The one error type of the policy module: where in which file, and what is wrong.

use std::fmt;

/// A policy that cannot be used, or an argument of `policy explain` that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A policy file is not valid YAML, does not fit the schema, or holds an invalid value.
    #[error("{0}")]
    Invalid(Diagnostic),
    /// A `PORT/PROTO` argument such as `80/TCP` that cannot be read.
    #[error("invalid port/protocol {input:?}: {reason}; write it as PORT/PROTO, e.g. 80/TCP")]
    PortProtocol {
        /// The argument as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Policies could not be written back as YAML (not expected for parsed policies).
    #[error("cannot write the policies as YAML: {0}")]
    Serialize(String),
}

/// Where a policy file is wrong: `file:line:column: path: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file label given to the parser (usually the path as the user typed it).
    pub file: String,
    /// 1-based line, when the YAML parser knows it.
    pub line: Option<usize>,
    /// 1-based column, when the YAML parser knows it.
    pub column: Option<usize>,
    /// The field path inside the document, e.g. `spec.ingress[0].toPorts[0].ports[0]`;
    /// empty for the document itself.
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}
