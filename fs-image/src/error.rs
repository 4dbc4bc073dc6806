//! [`ImageError`]: everything that can go wrong in `bootseer-image`, and its one errno mapping.

use bootseer_common::cache::CacheError;
use bootseer_common::errno::ToErrno;
use bootseer_common::store::StoreError;
use bootseer_common::trace::TraceError;

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A reference or name that cannot be used (bad form, unsafe characters).
    #[error("reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    /// A store call failed; `what` says which object and why we wanted it.
    #[error("{what}: {source}")]
    Store {
        what: String,
        #[source]
        source: StoreError,
    },
    /// A block could not be served (fetch failed, digest mismatch, bad compression).
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The metadata blob or image index is malformed.
    #[error("malformed image {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// A stored trace could not be read.
    #[error("trace {key}: {source}")]
    Trace {
        key: String,
        #[source]
        source: TraceError,
    },
    /// A source entry cannot be converted (unsupported type, unsafe name, escape).
    #[error("convert {path}: {reason}")]
    Convert { path: String, reason: String },
    /// Local I/O while converting or setting up.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// No such entry (lookup of a missing name, an unknown inode).
    #[error("no such entry")]
    NotFound,
    /// A directory operation on a non-directory.
    #[error("not a directory")]
    NotDir,
    /// A file operation on a directory.
    #[error("is a directory")]
    IsDir,
    /// Not a symlink (readlink).
    #[error("not a symbolic link")]
    NotSymlink,
    /// The inode has no extended attribute of that name.
    #[error("no such extended attribute")]
    NoXattr,
    /// The caller's buffer is too small for the answer (xattr size protocol).
    #[error("buffer too small")]
    TooSmall,
}

impl ImageError {
    /// A malformed-image error.
    pub fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Malformed { what, reason: reason.into() }
    }

    /// A store error with what we were doing.
    pub fn store(what: impl Into<String>, source: StoreError) -> Self {
        Self::Store { what: what.into(), source }
    }

    /// A conversion error naming the entry.
    pub fn convert(path: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Self::Convert { path: path.to_string(), reason: reason.into() }
    }

    /// An I/O error naming the path.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io { path: path.as_ref().display().to_string(), source }
    }
}

impl ToErrno for ImageError {
    fn errno(&self) -> i32 {
        match self {
            ImageError::Reference { .. } => libc::EINVAL,
            // A store failure under a mounted tree is an I/O error, whatever its kind.
            ImageError::Store { .. } => libc::EIO,
            ImageError::Cache(e) => e.errno(),
            ImageError::Malformed { .. } => libc::EIO,
            ImageError::Trace { .. } => libc::EIO,
            ImageError::Convert { .. } => libc::EINVAL,
            ImageError::Io { source, .. } => source.errno(),
            ImageError::NotFound => libc::ENOENT,
            ImageError::NotDir => libc::ENOTDIR,
            ImageError::IsDir => libc::EISDIR,
            ImageError::NotSymlink => libc::EINVAL,
            ImageError::NoXattr => libc::ENODATA,
            ImageError::TooSmall => libc::ERANGE,
        }
    }
}

/// Result alias.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
