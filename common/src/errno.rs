//! One mapping from bootseer's errors to the errno a FUSE reply carries.
//!
//! Every error type that can reach a FUSE callback implements [`ToErrno`] with an exhaustive
//! `match` (no wildcard arm), so a new variant cannot silently become `EIO`.

use crate::store::StoreError;

/// An error that knows which errno to answer a FUSE request with.
pub trait ToErrno {
    /// The errno (positive, as in `libc::EIO`).
    fn errno(&self) -> i32;
}

impl ToErrno for StoreError {
    fn errno(&self) -> i32 {
        match self {
            StoreError::NotFound { .. } => libc::ENOENT,
            StoreError::InvalidKey { .. } => libc::EINVAL,
            StoreError::Timeout { .. } => libc::EIO,
            StoreError::Transient { .. } => libc::EIO,
            StoreError::Unauthorized { .. } => libc::EACCES,
            StoreError::BadReply { .. } => libc::EIO,
            StoreError::Unsupported { .. } => libc::ENOTSUP,
            StoreError::Other { .. } => libc::EIO,
            StoreError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl ToErrno for std::io::Error {
    fn errno(&self) -> i32 {
        self.raw_os_error().unwrap_or(libc::EIO)
    }
}
