//! The disk tier: one file per block under the cache directory, surviving restarts.
//!
//! Layout: `<dir>/v1/<hh>/<32 hex>`, where the name is the first 16 bytes of
//! sha256(blob id ‖ 0 ‖ block index) and `<hh>` its first byte (keeps directories small).
//! A file is a fixed header followed by the block's bytes:
//!
//! ```text
//!   magic "BSBLOCK1" | version u32 | index u64 | len u64 | key hash [16] | payload sha256 [32]
//!   | crc32 of everything before it u32        (all integers little-endian; 84 bytes)
//! ```
//!
//! A load checks the header (magic, version, crc, key hash, length) and the payload's sha256; any
//! mismatch deletes the file and reports [`Load::Corrupt`] so the caller refetches. Writes go to a
//! temporary file renamed into place, so a crash leaves either the old state or a whole entry.
//!
//! The index (name → size, in LRU order) is rebuilt at start from a directory walk of names and
//! sizes only, oldest mtime first, so start-up cost does not grow with block size. The tier is
//! bounded by `max_bytes`; inserting past it evicts least-recently-used entries. All methods do
//! blocking I/O: call them from a blocking thread.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use lru::LruCache;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

const MAGIC: &[u8; 8] = b"BSBLOCK1";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 16 + 32 + 4;

/// The on-disk name of a block: a 16-byte hash of (blob id, index).
pub type DiskKey = [u8; 16];

/// The disk key of block `index` of blob `blob`.
pub fn disk_key(blob: &str, index: u64) -> DiskKey {
    let mut h = Sha256::new();
    h.update(blob.as_bytes());
    h.update([0u8]);
    h.update(index.to_le_bytes());
    let full: [u8; 32] = h.finalize().into();
    let mut key = [0u8; 16];
    key.copy_from_slice(&full[..16]);
    key
}

/// What a load found.
#[derive(Debug)]
pub enum Load {
    /// A verified block.
    Hit(Bytes),
    /// No entry.
    Miss,
    /// An entry that failed verification; it has been removed.
    Corrupt(String),
}

/// A size-bounded directory of blocks.
#[derive(Debug)]
pub struct DiskTier {
    dir: PathBuf,
    max_bytes: u64,
    /// Name → file size, least recently used first. Lock held only for index updates, never
    /// across file I/O.
    index: Mutex<Index>,
}

#[derive(Debug)]
struct Index {
    entries: LruCache<DiskKey, u64>,
    bytes: u64,
}

impl DiskTier {
    /// Opens (creating if needed) the tier in `dir`, indexing what a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let root = dir.join("v1");
        std::fs::create_dir_all(&root)?;
        let mut found: Vec<(std::time::SystemTime, DiskKey, u64)> = Vec::new();
        for shard in std::fs::read_dir(&root)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name();
                let mut key = [0u8; 16];
                let parsed = name.to_str().map(|n| hex::decode_to_slice(n, &mut key).is_ok());
                if parsed != Some(true) {
                    // Temporary files of writes cut short by a crash.
                    let _ = std::fs::remove_file(entry.path());
                    continue;
                }
                let md = entry.metadata()?;
                found.push((md.modified().unwrap_or(std::time::UNIX_EPOCH), key, md.len()));
            }
        }
        found.sort();
        let mut index = Index { entries: LruCache::unbounded(), bytes: 0 };
        for (_, key, len) in found {
            index.entries.put(key, len);
            index.bytes += len;
        }
        let tier = Self { dir: root, max_bytes, index: Mutex::new(index) };
        tier.evict_to(max_bytes);
        Ok(tier)
    }

    fn path(&self, key: &DiskKey) -> PathBuf {
        let name = hex::encode(key);
        self.dir.join(&name[..2]).join(name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding this lock cannot leave the index inconsistent with disk in a way
        // that serves wrong data (every load verifies), so poisoning is ignored.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an entry for `key` is indexed (it may still fail verification on load).
    pub fn contains(&self, key: &DiskKey) -> bool {
        self.lock().entries.contains(key)
    }

    /// Bytes held, headers included.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the tier is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads and verifies block `index` of a blob with disk key `key`, against `expected` too
    /// where given.
    pub fn load(&self, key: &DiskKey, index: u64, expected: Option<Digest>) -> Load {
        if self.lock().entries.get(key).is_none() {
            return Load::Miss;
        }
        match self.read_verified(key, index, expected) {
            Ok(Some(bytes)) => Load::Hit(bytes),
            Ok(None) => {
                self.remove(key);
                Load::Miss
            }
            Err(why) => {
                self.remove(key);
                Load::Corrupt(why)
            }
        }
    }

    fn read_verified(
        &self,
        key: &DiskKey,
        index: u64,
        expected: Option<Digest>,
    ) -> Result<Option<Bytes>, String> {
        let mut file = match std::fs::File::open(self.path(key)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("open: {e}")),
        };
        let mut header = [0u8; HEADER_LEN];
        file.read_exact(&mut header).map_err(|e| format!("header: {e}"))?;
        let crc_at = HEADER_LEN - 4;
        let crc = u32::from_le_bytes(header[crc_at..].try_into().map_err(|_| "crc")?);
        if crc32fast::hash(&header[..crc_at]) != crc {
            return Err("header checksum mismatch".into());
        }
        if &header[..8] != MAGIC {
            return Err("bad magic".into());
        }
        let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
        let version = u32::from_le_bytes(header[8..12].try_into().map_err(|_| "version")?);
        if version != VERSION {
            return Err(format!("version {version}, expected {VERSION}"));
        }
        if word(12) != index || header[28..44] != key[..] {
            return Err("entry belongs to another block".into());
        }
        let len = word(20);
        let file_len = file.metadata().map_err(|e| format!("stat: {e}"))?.len();
        if file_len != HEADER_LEN as u64 + len {
            return Err(format!("file is {file_len} bytes, header says {len} + header"));
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact(&mut payload).map_err(|e| format!("payload: {e}"))?;
        let actual = Digest::of(&payload);
        if actual.0[..] != header[44..76] {
            return Err("payload checksum mismatch".into());
        }
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(format!("payload is {actual}, block must be {expected}"));
        }
        Ok(Some(Bytes::from(payload)))
    }

    /// Stores a block, evicting older entries to stay within the budget. Blocks larger than the
    /// whole budget are not stored.
    pub fn store(&self, key: &DiskKey, index: u64, data: &[u8]) -> std::io::Result<()> {
        let total = (HEADER_LEN + data.len()) as u64;
        if total > self.max_bytes || self.lock().entries.contains(key) {
            return Ok(());
        }
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&index.to_le_bytes());
        header.extend_from_slice(&(data.len() as u64).to_le_bytes());
        header.extend_from_slice(key);
        header.extend_from_slice(&Digest::of(data).0);
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), fastrand::u64(..)));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&header)?;
            f.write_all(data)?;
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return written;
        }
        {
            let mut index = self.lock();
            if let Some(old) = index.entries.put(*key, total) {
                index.bytes -= old;
            }
            index.bytes += total;
        }
        self.evict_to(self.max_bytes);
        Ok(())
    }

    fn remove(&self, key: &DiskKey) {
        {
            let mut index = self.lock();
            if let Some(len) = index.entries.pop(key) {
                index.bytes -= len;
            }
        }
        let _ = std::fs::remove_file(self.path(key));
    }

    fn evict_to(&self, budget: u64) {
        loop {
            let victim = {
                let mut index = self.lock();
                if index.bytes <= budget {
                    return;
                }
                match index.entries.pop_lru() {
                    Some((key, len)) => {
                        index.bytes -= len;
                        key
                    }
                    None => return,
                }
            };
            ::metrics::counter!(crate::metrics::CACHE_EVICT_DISK).increment(1);
            let _ = std::fs::remove_file(self.path(&victim));
        }
    }

    /// The file holding `key`, for tests that damage entries on purpose.
    pub fn entry_path(&self, key: &DiskKey) -> PathBuf {
        self.path(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_detects_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tier = DiskTier::open(dir.path(), 1 << 20).expect("open");
        let key = disk_key("blob", 3);
        tier.store(&key, 3, b"hello block").expect("store");
        drop(tier);
        let tier = DiskTier::open(dir.path(), 1 << 20).expect("reopen");
        assert!(
            matches!(tier.load(&key, 3, Some(Digest::of(b"hello block"))), Load::Hit(b) if &b[..] == b"hello block")
        );
        assert!(matches!(tier.load(&key, 4, None), Load::Corrupt(_)), "wrong index must not load");
        tier.store(&key, 3, b"hello block").expect("store");
        assert!(matches!(tier.load(&key, 3, Some(Digest::of(b"other"))), Load::Corrupt(_)));
        tier.store(&key, 3, b"hello block").expect("store");
        let path = tier.entry_path(&key);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).expect("write");
        assert!(matches!(tier.load(&key, 3, None), Load::Corrupt(_)));
        assert!(matches!(tier.load(&key, 3, None), Load::Miss), "corrupt entry is dropped");
    }

    #[test]
    fn stays_within_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = 10 * (HEADER_LEN as u64 + 1000);
        let tier = DiskTier::open(dir.path(), budget).expect("open");
        for i in 0..50u64 {
            tier.store(&disk_key("b", i), i, &[i as u8; 1000]).expect("store");
            assert!(tier.bytes() <= budget);
        }
        assert_eq!(tier.len(), 10);
        assert!(matches!(tier.load(&disk_key("b", 49), 49, None), Load::Hit(_)));
        assert!(matches!(tier.load(&disk_key("b", 0), 0, None), Load::Miss));
        drop(tier);
        let tier = DiskTier::open(dir.path(), budget / 2).expect("reopen smaller");
        assert!(tier.bytes() <= budget / 2);
        assert_eq!(tier.len(), 5);
    }
}
