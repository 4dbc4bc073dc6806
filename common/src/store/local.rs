//! [`LocalStore`]: a directory on the local file system (`file:///abs/dir`), the embedded default.
//!
//! Keys are relative paths under the root. `put` writes a temporary file beside the target and
//! renames it into place, so readers never see half an object. Blocking file I/O runs on tokio's
//! blocking pool.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, Store, StoreError, StoreResult, check_key, clamp_range};

/// A store in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens `file:///abs/dir`. The directory is created on the first `put`.
    pub fn open(url: &str) -> StoreResult<Self> {
        let path = url.strip_prefix("file://").ok_or_else(|| StoreError::InvalidKey {
            key: url.to_string(),
            reason: "expected file:///absolute/path".into(),
        })?;
        if !path.starts_with('/') {
            return Err(StoreError::InvalidKey {
                key: url.to_string(),
                reason: "file:// store paths must be absolute (file:///abs/dir)".into(),
            });
        }
        Ok(Self::new(path))
    }

    /// A store rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> StoreResult<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

/// A list prefix is a key, or the start of one: empty, or a key with an optional trailing `/`
/// or partial last component. Absolute prefixes and `.`/`..` components would walk outside the
/// store's root and are refused like keys are.
fn check_prefix(prefix: &str) -> StoreResult<()> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() && !prefix.starts_with('/') {
        return Ok(());
    }
    check_key(trimmed).map_err(|_| StoreError::InvalidKey {
        key: prefix.to_string(),
        reason: "unsafe list prefix (absolute, empty, '.' or '..' component)".into(),
    })
}

fn io_error(op: &'static str, key: &str, source: std::io::Error) -> StoreError {
    if source.kind() == std::io::ErrorKind::NotFound {
        StoreError::NotFound { key: key.to_string() }
    } else {
        StoreError::Io { op, key: key.to_string(), source }
    }
}

async fn blocking<T: Send + 'static>(
    op: &'static str,
    key: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> StoreResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| io_error(op, key, e)),
        Err(join) => Err(StoreError::Other { op, key: key.to_string(), message: join.to_string() }),
    }
}

/// Writes `path` whole or not at all: `fill` writes a temp name beside it, which is synced and
/// renamed over `path`, or removed if anything failed.
fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))?;
    let tmp = temp_name(path);
    let write = || -> std::io::Result<()> {
        let mut out = std::fs::File::create(&tmp)?;
        fill(&mut out)?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    let result = write();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A hidden, unique name beside `path` for an object being written.
fn temp_name(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("/"));
    dir.join(format!(
        ".{}.tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("object"),
        std::process::id(),
        fastrand::u64(..)
    ))
}

fn meta(key: String, md: &std::fs::Metadata) -> ObjectMeta {
    ObjectMeta { key, len: md.len(), mtime: md.modified().ok() }
}

#[async_trait]
impl Store for LocalStore {
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn stat(&self, key: &str) -> StoreResult<ObjectMeta> {
        let path = self.path(key)?;
        let owned = key.to_string();
        let md = blocking("stat", key, move || std::fs::metadata(path)).await?;
        if !md.is_file() {
            return Err(StoreError::NotFound { key: owned });
        }
        Ok(meta(owned, &md))
    }

    async fn read_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        let path = self.path(key)?;
        blocking("read_range", key, move || {
            let mut file = std::fs::File::open(path)?;
            let range = clamp_range(range, file.metadata()?.len());
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            file.seek(SeekFrom::Start(range.start))?;
            file.read_exact(&mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let path = self.path(key)?;
        blocking("put", key, move || {
            write_atomically(&path, |out| std::io::Write::write_all(out, &data))
        })
        .await
    }

    async fn put_file(&self, key: &str, file: &std::fs::File, len: u64) -> StoreResult<()> {
        let path = self.path(key)?;
        let source = file.try_clone().map_err(|e| io_error("put_file", key, e))?;
        blocking("put_file", key, move || {
            write_atomically(&path, |out| {
                use std::os::unix::fs::FileExt;
                // Positional reads in pieces: the source's cursor stays where it is, and
                // only one piece is in memory.
                let mut buf = vec![0u8; (super::PUT_PIECE).min(len) as usize];
                for (offset, n) in super::pieces(len) {
                    let piece = &mut buf[..n as usize];
                    source.read_exact_at(piece, offset)?;
                    std::io::Write::write_all(out, piece)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let path = self.path(key)?;
        let owned = key.to_string();
        match blocking("delete", key, move || std::fs::remove_file(path)).await {
            Err(StoreError::NotFound { .. }) => Err(StoreError::NotFound { key: owned }),
            other => other,
        }
    }

    async fn create_new(&self, key: &str, data: Bytes) -> StoreResult<bool> {
        let path = self.path(key)?;
        blocking("create_new", key, move || {
            let dir = path.parent().unwrap_or(Path::new("/"));
            std::fs::create_dir_all(dir)?;
            // O_EXCL: exactly one caller creates it, on one host or many sharing the directory.
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    std::io::Write::write_all(&mut file, &data)?;
                    Ok(true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        check_prefix(prefix)?;
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let key = prefix.clone();
        blocking("list", &key, move || {
            let mut out = Vec::new();
            // Walk only the directory that holds the prefix, not the whole store.
            let start_rel = match prefix.rfind('/') {
                Some(i) => &prefix[..i],
                None => "",
            };
            let mut stack = vec![root.join(start_rel)];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let entry = entry?;
                    let path = entry.path();
                    let Ok(rel) = path.strip_prefix(&root) else { continue };
                    let Some(rel) = rel.to_str() else { continue };
                    let name = entry.file_name();
                    if name.to_string_lossy().starts_with('.') {
                        continue; // temporary files of puts in progress
                    }
                    let ft = entry.file_type()?;
                    if ft.is_dir() {
                        if prefix.starts_with(&format!("{rel}/")) || rel.starts_with(&prefix) {
                            stack.push(path);
                        }
                    } else if ft.is_file() && rel.starts_with(&prefix) {
                        out.push(meta(rel.to_string(), &entry.metadata()?));
                    }
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_ranges_and_listing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        store.put("blobs/a", Bytes::from(data.clone())).await.expect("put");
        store.put("blobs/b/c", Bytes::from_static(b"xyz")).await.expect("put");
        store.put("other", Bytes::from_static(b"1")).await.expect("put");
        assert_eq!(store.stat("blobs/a").await.expect("stat").len, 10_000);
        for (s, e) in [(0, 1), (4095, 4097), (9_999, 10_000), (9_990, 20_000), (10_000, 10_010)] {
            let got = store.read_range("blobs/a", s..e).await.expect("read");
            let want = &data[(s as usize).min(10_000)..(e as usize).min(10_000)];
            assert_eq!(&got[..], want, "range {s}..{e}");
        }
        let keys: Vec<_> =
            store.list("blobs/").await.expect("list").into_iter().map(|m| m.key).collect();
        assert_eq!(keys, ["blobs/a", "blobs/b/c"]);
        let keys: Vec<_> =
            store.list("blobs/b").await.expect("list").into_iter().map(|m| m.key).collect();
        assert_eq!(keys, ["blobs/b/c"]);
        assert!(matches!(store.stat("nope").await, Err(StoreError::NotFound { .. })));
        assert!(matches!(store.read_range("../x", 0..1).await, Err(StoreError::InvalidKey { .. })));
    }

    /// Issue 10 item 10: a list prefix cannot walk out of the store.
    #[tokio::test]
    async fn list_prefixes_that_escape_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().join("store"));
        store.put("blobs/a", Bytes::from_static(b"1")).await.expect("put");
        std::fs::write(dir.path().join("secret"), b"outside").expect("write");
        for prefix in ["../", "../secret", "/", "/etc/", "blobs/../../", "./blobs", "a//b"] {
            let got = store.list(prefix).await;
            assert!(matches!(got, Err(StoreError::InvalidKey { .. })), "{prefix:?}: {got:?}");
        }
        for (prefix, want) in [("", 1), ("blobs/", 1), ("blobs", 1), ("blo", 1), ("nope/", 0)] {
            assert_eq!(store.list(prefix).await.expect(prefix).len(), want, "{prefix:?}");
        }
    }
}
