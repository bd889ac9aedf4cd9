//! The error type of the image store and spec generation.

use std::path::Path;

/// Everything that can go wrong in `capsa-image`. Each message says what the
/// user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("image {0:?} not found in the local store (list images with `capsa images`; add one with `capsa load -i FILE`, `capsa load --demo` or `capsa pull REF`)")]
    NotFound(String),

    #[error("image id prefix {0:?} matches more than one image; give more characters of the id or use a name")]
    Ambiguous(String),

    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("digest mismatch for {what}: expected {expected}, got {actual}; the content is corrupt or was modified (export or fetch the image again)")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error(
        "corrupt layer {layer}: {reason}; the image archive is damaged (export or fetch it again)"
    )]
    CorruptLayer { layer: String, reason: String },

    #[error("malformed image: {0}")]
    BadConfig(String),

    /// An image in the store whose own files no longer match what the
    /// store recorded (a truncated or modified config blob, a missing one).
    #[error("image {image} is damaged ({reason}): load or pull it again to repair it, or remove it with `capsa rmi {image}`")]
    Damaged { image: String, reason: String },

    #[error("unsupported image: {0}")]
    Unsupported(String),

    #[error("invalid run options: {0}")]
    InvalidRunConfig(String),

    #[error("registry error while pulling {reference}: {reason}")]
    Registry { reference: String, reason: String },

    /// The I/O error is part of the message and not also its `source()`:
    /// a chain printer (anyhow's `{:#}`) would say it twice.
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            cause: source,
        }
    }

    pub(crate) fn corrupt(layer: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::CorruptLayer {
            layer: layer.into(),
            reason: reason.into(),
        }
    }
}

/// Attach a description (usually naming the path) to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
    fn at(self, action: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, std::io::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
    fn at(self, action: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(format!("{action} {}", path.display()), e))
    }
}
