//! [`CkptError`]: why a checkpoint-filesystem operation failed, and its one exhaustive mapping
//! to the errno a FUSE reply carries (through [`bootseer_common::errno::ToErrno`]).

use bootseer_common::cache::CacheError;
use bootseer_common::errno::ToErrno;
use bootseer_common::store::StoreError;

/// Why an operation of [`crate::CkptFs`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CkptError {
    /// No entry with this name, or an inode the mount never handed out.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// A directory operation on a file.
    #[error("{0}: not a directory")]
    NotADirectory(String),
    /// A file operation on a directory.
    #[error("{0}: is a directory")]
    IsADirectory(String),
    /// A file handle that is not open.
    #[error("file handle {0} is not open")]
    BadHandle(u64),
    /// An open for writing on a read-only mount.
    #[error("{0}: read-only filesystem")]
    ReadOnly(String),
    /// Listing or statting HDFS failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stripe could not be served (deadline passed, version changed, every replica gone).
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl ToErrno for CkptError {
    fn errno(&self) -> i32 {
        match self {
            CkptError::NotFound(_) => libc::ENOENT,
            CkptError::NotADirectory(_) => libc::ENOTDIR,
            CkptError::IsADirectory(_) => libc::EISDIR,
            CkptError::BadHandle(_) => libc::EBADF,
            CkptError::ReadOnly(_) => libc::EROFS,
            CkptError::Store(e) => e.errno(),
            CkptError::Cache(e) => e.errno(),
        }
    }
}
