//! [`LayerError`]: everything that can go wrong in `bootseer-image`, and its one errno mapping.

use crate::cache::CacheError;
use crate::errno::ToErrno;
use crate::store::StoreError;
use crate::trace::TraceError;

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A reference or name that cannot be used (bad form, unsafe characters).
    #[error("reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    /// A store call failed; `what` says which object and why we wanted it.
    #[error("{}", store_message(what, source))]
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

/// `what: source`, or only `source` when it already starts with `what` (a store error names
/// its key; `images/a/v1: images/a/v1: not found` says nothing twice).
fn store_message(what: &str, source: &StoreError) -> String {
    let source = source.to_string();
    if source.starts_with(what) { source } else { format!("{what}: {source}") }
}

impl LayerError {
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

impl ToErrno for LayerError {
    fn errno(&self) -> i32 {
        match self {
            LayerError::Reference { .. } => libc::EINVAL,
            // A store failure under a mounted tree is an I/O error, whatever its kind.
            LayerError::Store { .. } => libc::EIO,
            LayerError::Cache(e) => e.errno(),
            LayerError::Malformed { .. } => libc::EIO,
            LayerError::Trace { .. } => libc::EIO,
            LayerError::Convert { .. } => libc::EINVAL,
            LayerError::Io { source, .. } => source.errno(),
            LayerError::NotFound => libc::ENOENT,
            LayerError::NotDir => libc::ENOTDIR,
            LayerError::IsDir => libc::EISDIR,
            LayerError::NotSymlink => libc::EINVAL,
            LayerError::NoXattr => libc::ENODATA,
            LayerError::TooSmall => libc::ERANGE,
        }
    }
}

/// Result alias.
pub type Result<T, E = LayerError> = std::result::Result<T, E>;
