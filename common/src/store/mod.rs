//! Stores: where bootseer's bytes live.
//!
//! [`Store`] is the one trait every backend implements: immutable objects named by a `/`-separated
//! key, read by byte range. Backends:
//!
//! | URL                               | type                  | keys map to                          |
//! | --------------------------------- | --------------------- | ------------------------------------ |
//! | `file:///abs/dir`                 | [`local::LocalStore`] | files under the directory            |
//! | `docker://host[:port]/repo`       | [`oci::OciStore`]     | `blobs/<digest>` → blobs, `manifests/<tag-or-digest>` → manifests |
//! | `hdfs://host:port/dir`, `hdfs://ns/dir` | [`hdfs::HdfsStore`] | files under the HDFS directory   |
//!
//! Backends are thin: they translate one call into one backend request and classify failures into
//! [`StoreError`]. Timeouts, retries with backoff and jitter live in one place,
//! [`retry::RetryStore`], which [`open`] wraps around every backend it builds.

pub mod hdfs;
pub mod local;
pub mod oci;
pub mod retry;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

pub use retry::{RetryConfig, RetryStore};

/// What a store knows of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key, relative to the store's root.
    pub key: String,
    /// Length in bytes.
    pub len: u64,
    /// Last modification time, where the backend keeps one.
    pub mtime: Option<SystemTime>,
}

/// Why a store operation failed. Every backend maps its own failures onto these.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object has this key.
    #[error("{key}: not found")]
    NotFound { key: String },
    /// The key is not valid for this store (empty, `..`, wrong form for a registry).
    #[error("{key}: invalid key: {reason}")]
    InvalidKey { key: String, reason: String },
    /// The operation did not finish within its deadline.
    #[error("{op} {key}: timed out after {after:?}")]
    Timeout { op: &'static str, key: String, after: Duration },
    /// A failure that may pass: connection refused or reset, 5xx, 429, a DataNode gone.
    #[error("{op} {key}: {message}")]
    Transient { op: &'static str, key: String, message: String },
    /// The backend refused our credentials.
    #[error("{op} {key}: not authorized: {message}")]
    Unauthorized { op: &'static str, key: String, message: String },
    /// The backend answered something that breaks its protocol or our contract (a short body,
    /// a wrong digest, an unparsable reply). Retrying may help if a proxy garbled it.
    #[error("{op} {key}: bad reply: {message}")]
    BadReply { op: &'static str, key: String, message: String },
    /// The backend cannot do this at all (listing blobs in a registry, say).
    #[error("{op} {key}: not supported by this store")]
    Unsupported { op: &'static str, key: String },
    /// Any other failure that will not pass by retrying.
    #[error("{op} {key}: {message}")]
    Other { op: &'static str, key: String, message: String },
    /// A local I/O error.
    #[error("{op} {key}: {source}")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether retrying the same operation could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Transient { .. } | Self::BadReply { .. })
    }
}

/// Convenience alias for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// Immutable, addressable bytes.
///
/// Contracts every implementation keeps:
/// - Objects are immutable once put: two reads of the same key and range return the same bytes
///   (or the second fails). A `put` of an existing key with other bytes is the caller's bug.
/// - Methods never panic on any input or any backend reply; they return [`StoreError`].
/// - A backend makes one attempt per call. Timeouts and retries belong to [`RetryStore`].
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The URL this store was opened from, for logs and errors.
    fn url(&self) -> String;

    /// Length (and mtime where known) of `key`. [`StoreError::NotFound`] if absent.
    async fn stat(&self, key: &str) -> StoreResult<ObjectMeta>;

    /// Bytes `range` of `key`.
    ///
    /// The reply is exactly `range.end - range.start` bytes, except where the range reaches past
    /// the end of the object: then it holds the bytes up to the end (empty if `range.start` is at
    /// or past the end). It is never short for any other reason: a backend that got fewer bytes
    /// returns [`StoreError::BadReply`]. An empty or inverted range returns empty bytes.
    async fn read_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes>;

    /// Stores `data` under `key`, atomically: readers see all of it or none of it.
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()>;

    /// Stores bytes `0..len` of `file` under `key`, atomically like [`Store::put`].
    ///
    /// Reads `file` only with positional reads (its cursor means nothing and is left alone), so
    /// a retry may call it again with the same file. Backends that can stream send it in
    /// pieces of at most [`PUT_PIECE`] bytes and hold one piece at a time; a file shorter than
    /// `len` is an error ([`StoreError::Io`]). The default reads the whole range into memory and
    /// calls `put`: right only for stores that keep objects in memory (test doubles).
    async fn put_file(&self, key: &str, file: &std::fs::File, len: u64) -> StoreResult<()> {
        let data = read_piece("put_file", key, file, 0, len).await?;
        self.put(key, data).await
    }

    /// Objects whose key starts with `prefix`, sorted by key. Backends that cannot list a
    /// namespace (a registry's blobs) return [`StoreError::Unsupported`].
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>>;

    /// Removes `key`. [`StoreError::NotFound`] if absent; [`StoreError::Unsupported`] where the
    /// backend cannot delete (the default).
    async fn delete(&self, key: &str) -> StoreResult<()> {
        Err(StoreError::Unsupported { op: "delete", key: key.to_string() })
    }

    /// Stores `data` under `key` only if no object has that key, atomically against every other
    /// caller: `Ok(true)` if this call created it, `Ok(false)` if it existed. Backends without an
    /// exclusive create return [`StoreError::Unsupported`] (the default). Used as a lock (one
    /// node builds a snapshot while the others wait), so it is never retried blindly.
    async fn create_new(&self, key: &str, data: Bytes) -> StoreResult<bool> {
        let _ = data;
        Err(StoreError::Unsupported { op: "create_new", key: key.to_string() })
    }
}

/// Largest piece of a file that [`Store::put_file`] holds in memory: few enough requests for a
/// multi-GB blob (one per 4 MiB), small enough that several uploads at once stay cheap.
pub const PUT_PIECE: u64 = 4 << 20;

/// Bytes `offset..offset + len` of `file`, read with one positional read loop on tokio's
/// blocking pool (the file is local; the read still must not stall a runtime thread). Short:
/// [`StoreError::Io`] with `UnexpectedEof`.
pub async fn read_piece(
    op: &'static str,
    key: &str,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> StoreResult<Bytes> {
    let io = |source| StoreError::Io { op, key: key.to_string(), source };
    let size = usize::try_from(len).map_err(|_| {
        io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "piece larger than memory"))
    })?;
    let file = file.try_clone().map_err(io)?;
    let read = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; size];
        file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    });
    match read.await {
        Ok(result) => result.map_err(io),
        Err(join) => Err(StoreError::Other { op, key: key.to_string(), message: join.to_string() }),
    }
}

/// The pieces `(offset, len)` that cover `0..len`, each at most [`PUT_PIECE`].
pub fn pieces(len: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..len.div_ceil(PUT_PIECE)).map(move |i| {
        let offset = i * PUT_PIECE;
        (offset, PUT_PIECE.min(len - offset))
    })
}

/// A shared, dynamically chosen store.
pub type DynStore = Arc<dyn Store>;

/// Rejects keys that are empty, absolute, or climb out of the store (`..`, empty components).
pub fn check_key(key: &str) -> StoreResult<()> {
    let bad = |reason: &str| {
        Err(StoreError::InvalidKey { key: key.to_string(), reason: reason.to_string() })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.starts_with('/') {
        return bad("absolute");
    }
    if key.contains('\0') {
        return bad("contains NUL");
    }
    if key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("empty, '.' or '..' component");
    }
    Ok(())
}

/// Clamps `range` to an object of length `len`: the bytes a [`Store::read_range`] must return.
pub fn clamp_range(range: Range<u64>, len: u64) -> Range<u64> {
    let start = range.start.min(len);
    let end = range.end.min(len).max(start);
    start..end
}

pub use oci::INSECURE_REGISTRIES_ENV;

/// Options for [`open`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Timeouts and retries wrapped around the backend.
    pub retry: RetryConfig,
    /// Registry hosts reached over plain `http` besides loopback hosts and those
    /// [`INSECURE_REGISTRIES_ENV`] names (which [`oci::OciStore::open`] always adds).
    pub insecure_registries: Vec<String>,
    /// HDFS client configuration beyond `HADOOP_CONF_DIR`.
    pub hdfs: hdfs::HdfsOptions,
}

/// Opens the store a URL names, wrapped in [`RetryStore`].
///
/// `file:///abs/dir`, `docker://host[:port]/repo[/more]` (also `oci://`), `hdfs://host:port/dir`
/// or `hdfs://nameservice/dir` (resolved through `HADOOP_CONF_DIR`).
pub async fn open(url: &str, options: &OpenOptions) -> StoreResult<DynStore> {
    let bad = |reason: String| StoreError::InvalidKey { key: url.to_string(), reason };
    let (scheme, _) = url
        .split_once("://")
        .ok_or_else(|| bad("not a URL: expected file://, docker:// or hdfs://".into()))?;
    let inner: DynStore = match scheme {
        "file" => Arc::new(local::LocalStore::open(url)?),
        "docker" | "oci" => Arc::new(oci::OciStore::open(url, &options.insecure_registries)?),
        "hdfs" | "viewfs" => Arc::new(hdfs::HdfsStore::open_with(url, &options.hdfs).await?),
        other => {
            return Err(bad(format!("unknown scheme {other:?}: expected file, docker or hdfs")));
        }
    };
    Ok(Arc::new(RetryStore::new(inner, options.retry.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_escape_are_refused() {
        for key in ["", "/abs", "a//b", "a/../b", "..", "./a", "a/", "a\0b"] {
            assert!(check_key(key).is_err(), "{key:?} accepted");
        }
        for key in ["a", "a/b", "blobs/sha256:00ff", "refs/x:y", "...", "a..b"] {
            assert!(check_key(key).is_ok(), "{key:?} refused");
        }
    }

    #[test]
    fn pieces_cover_the_file() {
        assert_eq!(pieces(0).count(), 0);
        assert_eq!(pieces(1).collect::<Vec<_>>(), [(0, 1)]);
        assert_eq!(pieces(PUT_PIECE).collect::<Vec<_>>(), [(0, PUT_PIECE)]);
        assert_eq!(
            pieces(2 * PUT_PIECE + 3).collect::<Vec<_>>(),
            [(0, PUT_PIECE), (PUT_PIECE, PUT_PIECE), (2 * PUT_PIECE, 3)]
        );
    }

    #[test]
    fn clamp_matches_the_contract() {
        assert_eq!(clamp_range(0..10, 5), 0..5);
        assert_eq!(clamp_range(7..10, 5), 5..5);
        #[allow(clippy::reversed_empty_ranges)] // an inverted range is part of the contract
        let inverted = 3..1;
        assert_eq!(clamp_range(inverted, 5), 3..3);
        assert_eq!(clamp_range(2..4, 5), 2..4);
        assert_eq!(clamp_range(0..u64::MAX, u64::MAX), 0..u64::MAX);
    }
}
