//! Error type of the loader: every message names the file and, where there is one, the tensor.

use std::path::PathBuf;

/// Errors raised while opening weight files or reading tensors from them.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file's structure is invalid (bad magic, truncated header, ...).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// One tensor of an otherwise readable file cannot be used.
    #[error("{path}: tensor '{name}': {msg}")]
    Tensor {
        path: PathBuf,
        name: String,
        msg: String,
    },
    #[error("tensor '{0}' not found in the weight store")]
    NotFound(String),
    #[error("tensor '{name}' is in both {first} and {second}")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{path}: tensor '{name}': {source}")]
    Candle {
        path: PathBuf,
        name: String,
        #[source]
        source: Box<candle_core::Error>,
    },
    #[error("{0}")]
    Other(String),
}

impl LoadError {
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        LoadError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        name: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        LoadError::Tensor {
            path: path.into(),
            name: name.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LoadError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<LoadError> for candle_core::Error {
    fn from(e: LoadError) -> Self {
        candle_core::Error::Msg(e.to_string())
    }
}

pub type Result<T, E = LoadError> = std::result::Result<T, E>;
