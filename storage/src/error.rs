//! The crate's error type.

use std::io;

use crate::codec::CodecError;

/// A storage failure. Refused commands are not errors (see
/// [`crate::Response::Refused`]); these are I/O problems, corruption or a
/// snapshot that does not match its description.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// sled failed (I/O, corruption, lock held by another process…).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A file operation failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// A stored value could not be decoded or a value could not be encoded.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// Stored data violates an invariant (e.g. a key that is not UTF-8).
    #[error("corrupt state: {0}")]
    Corrupt(String),
    /// A snapshot file is malformed, truncated or fails its checksum.
    #[error("bad snapshot: {0}")]
    BadSnapshot(String),
    /// A background task (blocking pool) died.
    #[error("background task failed: {0}")]
    Task(String),
}

impl From<StorageError> for io::Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Io(e) => e,
            StorageError::Sled(sled::Error::Io(e)) => e,
            StorageError::BadSnapshot(_) | StorageError::Codec(_) | StorageError::Corrupt(_) => {
                io::Error::new(io::ErrorKind::InvalidData, e)
            }
            other => io::Error::other(other),
        }
    }
}

impl From<tokio::task::JoinError> for StorageError {
    fn from(e: tokio::task::JoinError) -> Self {
        StorageError::Task(e.to_string())
    }
}
