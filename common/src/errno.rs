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

/// The one way an error becomes a FUSE reply: logs it, counts it under `op`, and returns the
/// errno to reply with. `ENOENT` from lookups is routine and logged at trace level only.
pub fn fuse_error<E: ToErrno + std::fmt::Display>(op: &'static str, err: &E) -> fuser::Errno {
    let errno = err.errno();
    if errno == libc::ENOENT {
        tracing::trace!(op, error = %err, "fuse op failed");
    } else {
        ::metrics::counter!(crate::metrics::FUSE_ERRORS, "op" => op).increment(1);
        tracing::warn!(op, errno, error = %err, "fuse op failed");
    }
    fuser::Errno::from_i32(errno)
}
