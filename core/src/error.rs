//! The error type shared by every module of the library.

use std::path::PathBuf;

/// Errors returned by pegan. Each message names the offending value and, where one exists, the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller-supplied value is out of range or inconsistent (sizes, counts, options).
    #[error("{0}")]
    InvalidArgument(String),

    /// A request needs more memory than the limit allows (a training run's estimated peak).
    #[error("{0}")]
    TooLarge(String),

    /// An input file could not be read or decoded.
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },

    /// An output file could not be written.
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },

    /// A model file or checkpoint has an unexpected layout, version or content.
    #[error("invalid model: {0}")]
    InvalidModel(String),

    /// The requested device is unavailable in this build or on this machine.
    #[error("{0}")]
    Device(String),

    /// The progress callback asked to stop.
    #[error("cancelled by the caller")]
    Cancelled,

    /// An error raised by candle inside a tensor operation.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias used throughout pegan.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds an [`Error::InvalidArgument`] from anything printable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    /// Builds an [`Error::TooLarge`] from anything printable.
    pub fn too_large(message: impl Into<String>) -> Self {
        Error::TooLarge(message.into())
    }

    /// Builds an [`Error::InvalidModel`] from anything printable.
    pub fn model(message: impl Into<String>) -> Self {
        Error::InvalidModel(message.into())
    }

    /// Builds an [`Error::Read`] for `path`.
    pub fn read(path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        Error::Read { path: path.into(), reason: reason.to_string() }
    }

    /// Builds an [`Error::Write`] for `path`.
    pub fn write(path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        Error::Write { path: path.into(), reason: reason.to_string() }
    }
}
