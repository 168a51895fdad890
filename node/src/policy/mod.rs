//! Network policy: documents, parser, selectors, engine, explain.
#![deny(missing_docs)]

mod error;
pub mod parse;
pub mod rule;

pub use error::{Diagnostic, PolicyError};
pub mod engine;
pub mod selector;
