//! The disk tier: one file per block under the cache directory, surviving restarts and shared by
//! every daemon that names the same directory, and [`DiskWriter`], the one thread that writes it.
//!
//! Layout: `<dir>/v2/<hh>/<32 hex>`, where the name is the first 16 bytes of
//! sha256(blob id ‖ 0 ‖ block index) and `<hh>` its first byte (keeps directories small).
//! A file is a fixed header, a CRC table, then the block's bytes:
//!
//! ```text
//!   header = magic "BSBLOCK2" | index u64 | len u64 | key hash [16] | crc32 of all before u32
//!            (all integers little-endian; 44 bytes)
//!   table  = crc32 of each CHUNK (32 KiB) of the payload, u32 each, ceil(len / CHUNK) of them
//!   payload
//! ```
//!
//! **Verification.** A block is checked against its sha256 once, when it is fetched (by the
//! [`BlockCache`](super::BlockCache), before it is served or written here). What this tier wrote
//! it guards with CRC-32s of its 32 KiB chunks: a load checks the header (magic, crc, key hash,
//! index, length, file size) and the CRC of every chunk it returns, which catches bit rot, torn
//! and truncated files and entries of another block at memory speed, instead of hashing every
//! disk hit with sha256 again. [`DiskTier::load_range`] reads and checks only the chunks a read
//! needs, so a 4 KiB file in a 1 MiB block costs one chunk, not the block; the last
//! [`OPEN_ENTRIES`] entries loaded stay open with their header checked, so a warm read is one
//! `pread` and the file's kernel read-ahead state survives between requests. For an open entry
//! whose bytes the page cache holds, [`DiskTier::load_range_now`] does that `pread` with
//! `RWF_NOWAIT`, so a FUSE thread serves a warm read itself; [`DiskTier::warm`] opens an entry
//! and has the kernel read it into the page cache ahead of a sequential reader. Any mismatch
//! deletes the file and reports [`Load::Corrupt`] so the caller refetches. Writes go to a
//! temporary file renamed into place, so a crash leaves either the old state or a whole entry.
//!
//! **Sharing.** Several daemons may use one directory (`bootseer-deps` runs one per snapshot
//! layer with the same `cache_dir`; ranks on one host share an image's). Entries are named by
//! content and written by rename, so every process may load every entry, and one that another
//! process removed is a miss, never wrong data. A load does not need the entry in this process's
//! index (it opens the file; one that another process wrote is then indexed). Each process keeps
//! an index (name → size, least recently used first) and evicts from it; the budget holds for the
//! directory as a whole because the writer rescans it every quarter budget written (at most
//! [`RESCAN_EVERY`]): under `flock` on `<dir>/v2/lock` it re-reads names and sizes, adds what
//! others wrote (behind its own entries, oldest mtime first), drops what vanished, and evicts
//! to the budget.
//!
//! **Pressure.** [`DiskWriter`] takes blocks through a queue bounded in bytes; when the disk is
//! slower than the network the queue fills and further blocks are dropped and counted (they cost
//! a refetch on a later start, never a read now). ENOSPC or EDQUOT lowers the budget to nine
//! tenths of what the tier holds, evicts to it and says so once; below [`MIN_BUDGET`] the writer
//! stops writing and says so once (the mount keeps its memory tier and what is on disk).
//!
//! The index is rebuilt at start from a directory walk of names and sizes only, oldest mtime
//! first, so start-up cost does not grow with block size. All [`DiskTier`] methods do blocking
//! I/O: call them from a blocking thread.
//!
//! Lock order: the writer's rescan holds the `flock` while it takes the index lock; nothing
//! takes the `flock` while holding the index lock.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lru::LruCache;
use sha2::{Digest as _, Sha256};

const MAGIC: &[u8; 8] = b"BSBLOCK2";
const HEADER_LEN: usize = 8 + 8 + 8 + 16 + 4;
/// Payload bytes per CRC: small enough that a small file's read checks little more than itself,
/// large enough that the table stays a few hundred bytes for a 1 MiB block.
pub const CHUNK: usize = 32 << 10;

/// Bytes before the payload of a `len`-byte block.
fn prefix_len(len: u64) -> u64 {
    HEADER_LEN as u64 + 4 * len.div_ceil(CHUNK as u64)
}
/// The directory of this format; older formats' directories are removed at open.
const FORMAT_DIR: &str = "v2";
const OLD_FORMAT_DIRS: &[&str] = &["v1"];
/// Most bytes written between rescans of a shared directory (a quarter of the budget when that
/// is less): often enough that N daemons on one directory overshoot the budget by at most N ×
/// this, rarely enough that the walk (names and sizes of every entry) costs nothing next to the
/// writes.
pub const RESCAN_EVERY: u64 = 256 << 20;
/// Below this budget (after ENOSPC lowered it) the tier stops writing: a cache this small on a
/// full disk evicts what it just wrote.
pub const MIN_BUDGET: u64 = 16 << 20;
/// Bytes [`DiskTier::warm`] asks the kernel to read per `POSIX_FADV_WILLNEED` call: the smallest
/// read-ahead window a disk has by default, which caps what one call reads.
const WILLNEED_STEP: u64 = 128 << 10;

/// A temporary file older than this belongs to a write that crashed (a live write renames its
/// file within milliseconds), so the next open removes it.
const STALE_TMP: Duration = Duration::from_secs(600);

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
    /// A block whose header and CRC check out.
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
    /// The budget; ENOSPC lowers it (see the module note).
    max_bytes: AtomicU64,
    /// Name → file size, least recently used first. Lock held only for index updates, never
    /// across file I/O.
    index: Mutex<Index>,
    /// `<dir>/v2/lock`, `flock`ed for rescans.
    lock_file: std::fs::File,
    /// Entries whose header and CRC table checked out, kept open (least recently used closed
    /// first): a warm read of a block costs one `pread` of its chunks, not an open, a stat and
    /// a header read, and the kernel's read-ahead state of the file lives on between the
    /// 128 KiB requests of a sequential reader. Never held with the index lock.
    open: Mutex<LruCache<DiskKey, Arc<OpenEntry>>>,
}

/// Entries kept open by one tier: a few hundred descriptors, far below a daemon's limit.
const OPEN_ENTRIES: usize = 256;

/// An entry whose header and CRC table checked out, open for reads. Entries are immutable once
/// renamed into place, so an open one stays right even if another process removes its name
/// (it then reads the removed file until closed); every read still checks its chunks' CRCs.
#[derive(Debug)]
struct OpenEntry {
    file: std::fs::File,
    index: u64,
    len: usize,
    prefix: u64,
    table: Box<[u8]>,
    file_len: u64,
}

impl OpenEntry {
    /// This entry, if it holds block `index`: two blocks whose keys collide in the file name
    /// are told apart by the index the header records.
    fn of_block(self: Arc<Self>, index: u64) -> Result<Arc<Self>, String> {
        match self.index == index {
            true => Ok(self),
            false => Err("entry belongs to another block".into()),
        }
    }

    /// Checks `file`'s header (magic, crc, key hash, length, file size) and reads its CRC table.
    fn check(file: std::fs::File, key: &DiskKey) -> Result<Self, String> {
        use std::os::unix::fs::FileExt;
        let file_len = file.metadata().map_err(|e| format!("stat: {e}"))?.len();
        // The header and, for blocks up to 2 MiB, the whole CRC table in one read.
        let mut head = vec![0u8; (HEADER_LEN + 256).min(file_len as usize)];
        file.read_exact_at(&mut head, 0).map_err(|e| format!("header: {e}"))?;
        if head.len() < HEADER_LEN {
            return Err(format!("file is {file_len} bytes, shorter than a header"));
        }
        let crc_at = HEADER_LEN - 4;
        let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or([0; 8]));
        if crc32fast::hash(&head[..crc_at]) != crc_word(&head, crc_at) {
            return Err("header checksum mismatch".into());
        }
        if &head[..8] != MAGIC {
            return Err("bad magic".into());
        }
        if head[24..40] != key[..] {
            return Err("entry belongs to another block".into());
        }
        let len = word(16);
        let prefix = prefix_len(len);
        if Some(file_len) != prefix.checked_add(len) {
            return Err(format!("file is {file_len} bytes, header says {len} + {prefix}"));
        }
        let table = if head.len() >= prefix as usize {
            head[HEADER_LEN..prefix as usize].into()
        } else {
            let mut t = vec![0u8; (prefix as usize) - HEADER_LEN];
            file.read_exact_at(&mut t, HEADER_LEN as u64).map_err(|e| format!("table: {e}"))?;
            t.into()
        };
        let len = usize::try_from(len).map_err(|_| format!("length {len} does not fit"))?;
        Ok(Self { file, index: word(8), len, prefix, table, file_len })
    }

    /// The bytes `within` the payload (clamped), reading and checking only their chunks.
    fn read(&self, within: std::ops::Range<usize>) -> Result<Bytes, String> {
        use std::os::unix::fs::FileExt;
        self.read_with(within, |buf, at| {
            self.file.read_exact_at(buf, at).map(|()| true).map_err(|e| format!("payload: {e}"))
        })
        .map(|read| read.unwrap_or_default())
    }

    /// [`Self::read`] only if the kernel has every byte in its page cache: one `preadv2` with
    /// `RWF_NOWAIT`, which never waits on the device. `Ok(None)`: some of it is not cached (or
    /// the filesystem cannot say), nothing was checked; read it with [`Self::read`] off this
    /// thread.
    fn read_now(&self, within: std::ops::Range<usize>) -> Result<Option<Bytes>, String> {
        use std::os::fd::AsRawFd;
        self.read_with(within, |buf, at| {
            let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
            let at = libc::off_t::try_from(at).map_err(|_| format!("offset {at}"))?;
            // SAFETY: one iovec over `buf`, writable for its whole length while the call runs;
            // the descriptor is this entry's open file.
            let n = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
            // Short (part cached), EAGAIN (not cached), EOPNOTSUPP (no RWF_NOWAIT here) or
            // any other error: not now; the blocking read says what is wrong, if anything is.
            Ok(usize::try_from(n) == Ok(buf.len()))
        })
    }

    /// The bytes `within` the payload through `fill(buf, file_offset)` (`Ok(false)`: it could
    /// not fill `buf` now), with each chunk's CRC checked.
    fn read_with(
        &self,
        within: std::ops::Range<usize>,
        fill: impl FnOnce(&mut [u8], u64) -> Result<bool, String>,
    ) -> Result<Option<Bytes>, String> {
        let (from, to) = (within.start.min(self.len), within.end.min(self.len));
        if from >= to {
            return Ok(Some(Bytes::new()));
        }
        let (first, last) = (from / CHUNK, (to - 1) / CHUNK);
        let span = first * CHUNK..((last + 1) * CHUNK).min(self.len);
        let mut data = vec![0u8; span.end - span.start];
        if !fill(&mut data, self.prefix + span.start as u64)? {
            return Ok(None);
        }
        for (k, chunk) in data.chunks(CHUNK).enumerate() {
            if crc32fast::hash(chunk) != crc_word(&self.table, 4 * (first + k)) {
                return Err(format!("chunk {} checksum mismatch", first + k));
            }
        }
        let data = Bytes::from(data);
        Ok(Some(data.slice(from - span.start..to - span.start)))
    }
}

/// The little-endian u32 at `at` of `b` (a CRC in a header or table).
fn crc_word(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

fn lock_open(
    open: &Mutex<LruCache<DiskKey, Arc<OpenEntry>>>,
) -> std::sync::MutexGuard<'_, LruCache<DiskKey, Arc<OpenEntry>>> {
    // Only a cache of checked entries: a panic mid-update loses at most one.
    open.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
struct Index {
    entries: LruCache<DiskKey, u64>,
    bytes: u64,
}

/// One entry found by a directory walk.
struct Found {
    mtime: SystemTime,
    key: DiskKey,
    len: u64,
}

/// Walks the tier's directory: entries, and removes temporary files older than [`STALE_TMP`].
fn walk(root: &Path) -> std::io::Result<Vec<Found>> {
    let mut found = Vec::new();
    for shard in std::fs::read_dir(root)? {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        let entries = match std::fs::read_dir(shard.path()) {
            Ok(e) => e,
            // Another process may remove an empty shard between the two reads.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let Ok(md) = entry.metadata() else { continue }; // removed meanwhile
            let mtime = md.modified().unwrap_or(std::time::UNIX_EPOCH);
            let name = entry.file_name();
            let mut key = [0u8; 16];
            let parsed = name.to_str().map(|n| hex::decode_to_slice(n, &mut key).is_ok());
            if parsed != Some(true) {
                let age = SystemTime::now().duration_since(mtime).unwrap_or_default();
                if age > STALE_TMP {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            }
            found.push(Found { mtime, key, len: md.len() });
        }
    }
    found.sort_by_key(|f| (f.mtime, f.key));
    Ok(found)
}

impl DiskTier {
    /// Opens (creating if needed) the tier in `dir`, indexing what earlier runs and other
    /// processes left, and removing the directories of older formats.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let root = dir.join(FORMAT_DIR);
        std::fs::create_dir_all(&root)?;
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(root.join("lock"))?;
        // A directory we cannot write is unusable: find out now, not at the first block.
        let probe = root.join(format!(".tmp-probe-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::write(&probe, b"")?;
        let _ = std::fs::remove_file(&probe);
        for old in OLD_FORMAT_DIRS {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
        let tier = Self {
            dir: root,
            max_bytes: AtomicU64::new(max_bytes),
            index: Mutex::new(Index { entries: LruCache::unbounded(), bytes: 0 }),
            lock_file,
            open: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(OPEN_ENTRIES).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        };
        tier.rescan()?;
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

    /// Whether an entry for `key` is indexed here (another process may have written one this
    /// process has not seen yet; a load finds those too).
    pub fn contains(&self, key: &DiskKey) -> bool {
        self.lock().entries.contains(key)
    }

    /// Bytes this process counts in the tier, headers included.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// The budget now (lowered by ENOSPC).
    pub fn budget(&self) -> u64 {
        self.max_bytes.load(Ordering::Relaxed)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the tier is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads and checks block `index` of a blob with disk key `key`.
    pub fn load(&self, key: &DiskKey, index: u64) -> Load {
        self.load_range(key, index, 0..usize::MAX)
    }

    /// Loads and checks bytes `within` (clamped to the block) of block `index`: only the chunks
    /// they fall in are read and checked.
    pub fn load_range(&self, key: &DiskKey, index: u64, within: std::ops::Range<usize>) -> Load {
        match self.read_checked(key, index, within) {
            Ok(Some((bytes, total))) => {
                self.touch(key, total);
                Load::Hit(bytes)
            }
            Ok(None) => {
                self.forget(key);
                Load::Miss
            }
            Err(why) => {
                self.remove(key);
                Load::Corrupt(why)
            }
        }
    }

    /// [`Self::load_range`] without waiting on anything: only for an entry that is already open
    /// and bytes the page cache holds (see [`OpenEntry::read_now`]), so a FUSE thread may call
    /// it. `None`: not now (not open, not cached); load it off the thread. A corrupt entry is
    /// removed and reported as on the blocking path.
    pub fn load_range_now(
        &self,
        key: &DiskKey,
        index: u64,
        within: std::ops::Range<usize>,
    ) -> Option<Load> {
        let entry = lock_open(&self.open).get(key).cloned()?;
        match entry.of_block(index).and_then(|entry| Ok((entry.read_now(within)?, entry))) {
            Ok((Some(bytes), entry)) => {
                self.touch(key, entry.file_len);
                Some(Load::Hit(bytes))
            }
            Ok((None, _)) => None,
            Err(why) => {
                self.remove(key);
                Some(Load::Corrupt(why))
            }
        }
    }

    /// Readies block `index` (entry `key`) for reads that cannot wait: opens the entry (its
    /// header checked, kept among the open entries) and asks the kernel to read its payload
    /// into the page cache (`POSIX_FADV_WILLNEED`, asynchronous). Blocks on the device: call
    /// it off the FUSE and async threads. Whether the entry is there; a corrupt one is removed
    /// and reported (its readers then fetch the block).
    pub fn warm(&self, key: &DiskKey, index: u64) -> Result<bool, String> {
        use std::os::fd::AsRawFd;
        match self.open_entry(key).and_then(|e| e.map(|e| e.of_block(index)).transpose()) {
            Ok(Some(entry)) => {
                // The kernel reads at most one read-ahead window per WILLNEED call (Linux caps
                // it at max(read_ahead_kb, the device's io size), 128 KiB on most disks), so one
                // call over a 1 MiB block left seven eighths of it cold: ask window by window.
                let (fd, end) = (entry.file.as_raw_fd(), entry.prefix + entry.len as u64);
                for at in (entry.prefix..end).step_by(WILLNEED_STEP as usize) {
                    let len = WILLNEED_STEP.min(end - at);
                    // SAFETY: advice on the entry's open descriptor; no memory is involved.
                    let _ = unsafe {
                        libc::posix_fadvise(
                            fd,
                            at as libc::off_t,
                            len as libc::off_t,
                            libc::POSIX_FADV_WILLNEED,
                        )
                    };
                }
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(why) => {
                self.remove(key);
                Err(why)
            }
        }
    }

    /// Marks `key` (an entry of `total` bytes) used now, for eviction order; indexes it if
    /// another process wrote it since our last walk.
    fn touch(&self, key: &DiskKey, total: u64) {
        let mut idx = self.lock();
        if idx.entries.get(key).is_none() {
            idx.entries.put(*key, total);
            idx.bytes += total;
        }
    }

    /// The checked bytes `within` the block and the entry's file size; `None`: no entry.
    fn read_checked(
        &self,
        key: &DiskKey,
        index: u64,
        within: std::ops::Range<usize>,
    ) -> Result<Option<(Bytes, u64)>, String> {
        let Some(entry) = self.open_entry(key)? else { return Ok(None) };
        let entry = entry.of_block(index)?;
        entry.read(within).map(|bytes| Some((bytes, entry.file_len)))
    }

    /// The open entry for `key`: from the open-entry cache, or opened and its header and CRC
    /// table checked (and cached). `None`: no entry.
    fn open_entry(&self, key: &DiskKey) -> Result<Option<Arc<OpenEntry>>, String> {
        if let Some(entry) = lock_open(&self.open).get(key) {
            return Ok(Some(entry.clone()));
        }
        let file = match std::fs::File::open(self.path(key)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("open: {e}")),
        };
        let entry = Arc::new(OpenEntry::check(file, key)?);
        lock_open(&self.open).put(*key, entry.clone());
        Ok(Some(entry))
    }

    /// Stores a block (already verified by the caller), evicting older entries to stay within
    /// the budget. Blocks larger than the whole budget are not stored; an entry that exists is
    /// not written again.
    pub fn store(&self, key: &DiskKey, index: u64, data: &[u8]) -> std::io::Result<()> {
        let total = prefix_len(data.len() as u64) + data.len() as u64;
        if total > self.budget() || self.lock().entries.contains(key) {
            return Ok(());
        }
        let path = self.path(key);
        if path.exists() {
            // Another process wrote it: index it, do not write it again.
            let mut idx = self.lock();
            if idx.entries.put(*key, total).is_none() {
                idx.bytes += total;
            }
            return Ok(());
        }
        let mut header = Vec::with_capacity(prefix_len(data.len() as u64) as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&index.to_le_bytes());
        header.extend_from_slice(&(data.len() as u64).to_le_bytes());
        header.extend_from_slice(key);
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        for chunk in data.chunks(CHUNK) {
            header.extend_from_slice(&crc32fast::hash(chunk).to_le_bytes());
        }
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
        self.evict_to(self.budget());
        Ok(())
    }

    /// Drops `key` from the index (its file is gone).
    fn forget(&self, key: &DiskKey) {
        lock_open(&self.open).pop(key);
        let mut index = self.lock();
        if let Some(len) = index.entries.pop(key) {
            index.bytes -= len;
        }
    }

    fn remove(&self, key: &DiskKey) {
        self.forget(key);
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
            lock_open(&self.open).pop(&victim);
            let _ = std::fs::remove_file(self.path(&victim));
        }
    }

    /// Re-reads the directory under its `flock`: entries other processes wrote join the index
    /// behind this process's own (oldest first), vanished ones leave it, and the whole directory
    /// is evicted to the budget.
    pub fn rescan(&self) -> std::io::Result<()> {
        let fd = self.lock_file.as_raw_fd();
        // SAFETY: flock on a descriptor this struct owns; it only changes the lock's state.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let result = walk(&self.dir).map(|found| {
            let mut index = self.lock();
            let on_disk: std::collections::HashMap<DiskKey, u64> =
                found.iter().map(|f| (f.key, f.len)).collect();
            let mut rebuilt = LruCache::unbounded();
            let mut bytes = 0;
            // Others' entries first (least recently used end), then ours in our LRU order.
            for f in &found {
                if !index.entries.contains(&f.key) {
                    rebuilt.put(f.key, f.len);
                    bytes += f.len;
                }
            }
            for (key, _) in index.entries.iter().rev() {
                if let Some(&len) = on_disk.get(key) {
                    rebuilt.put(*key, len);
                    bytes += len;
                }
            }
            *index = Index { entries: rebuilt, bytes };
            drop(index);
            // Entries another process removed: close them, so their space is freed.
            lock_open(&self.open).retain(|key, _| on_disk.contains_key(key));
        });
        if result.is_ok() {
            self.evict_to(self.budget());
        }
        // SAFETY: as above.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        result
    }

    /// After ENOSPC/EDQUOT: lowers the budget to nine tenths of what is held and evicts to it.
    /// Returns the new budget.
    pub fn shrink_after_full(&self) -> u64 {
        let held = self.bytes();
        let budget = (held / 10 * 9).min(self.budget());
        self.max_bytes.store(budget, Ordering::Relaxed);
        self.evict_to(budget);
        budget
    }

    /// The file holding `key`, for tests that damage entries on purpose.
    pub fn entry_path(&self, key: &DiskKey) -> PathBuf {
        self.path(key)
    }
}

/// Counters of a [`DiskWriter`].
#[derive(Debug, Default)]
pub struct WriterCounters {
    /// Blocks written.
    pub written: AtomicU64,
    /// Blocks dropped because the queue was full or writing had stopped.
    pub dropped: AtomicU64,
    /// Writes that failed (other than a full disk).
    pub failed: AtomicU64,
    /// Bytes queued now.
    pub queued_bytes: AtomicU64,
}

struct WriteJob {
    key: DiskKey,
    index: u64,
    data: Bytes,
}

/// The one thread that writes blocks into a [`DiskTier`], behind a queue bounded in bytes.
#[derive(Debug)]
pub struct DiskWriter {
    tx: Option<crossbeam_channel::Sender<WriteJob>>,
    limit: u64,
    counters: Arc<WriterCounters>,
    stopped: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WriteJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteJob(block {}, {} bytes)", self.index, self.data.len())
    }
}

fn disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl DiskWriter {
    /// Starts the writer of `tier`, queueing at most `limit` bytes.
    pub fn start(tier: Arc<DiskTier>, limit: u64) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<WriteJob>();
        let counters = Arc::new(WriterCounters::default());
        let stopped = Arc::new(AtomicBool::new(false));
        let (c, s) = (counters.clone(), stopped.clone());
        let thread = std::thread::Builder::new()
            .name("bootseer-disk-writer".into())
            .spawn(move || write_loop(&tier, &rx, &c, &s))?;
        Ok(Self { tx: Some(tx), limit, counters, stopped, thread: Some(thread) })
    }

    /// Queues block `index` (key `key`) for writing; `false` if it was dropped (queue full or
    /// writing stopped). Never blocks.
    pub fn submit(&self, key: DiskKey, index: u64, data: Bytes) -> bool {
        let len = data.len() as u64;
        let c = &self.counters;
        let queued = c.queued_bytes.load(Ordering::Relaxed);
        let Some(tx) = &self.tx else { return false };
        if self.stopped.load(Ordering::Relaxed) || queued + len > self.limit {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            ::metrics::counter!(crate::metrics::CACHE_DISK_DROPPED).increment(1);
            return false;
        }
        c.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if tx.send(WriteJob { key, index, data }).is_err() {
            c.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The counters.
    pub fn counters(&self) -> &WriterCounters {
        &self.counters
    }

    /// Whether writing stopped (the disk stayed full).
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Waits until everything queued so far is written (or dropped). For tests and shutdown.
    pub fn flush(&self) {
        while self.counters.queued_bytes.load(Ordering::Relaxed) > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        // Closing the channel ends the thread once the queue (bounded in bytes) is written, so
        // the next start finds what this one fetched.
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(
    tier: &DiskTier,
    rx: &crossbeam_channel::Receiver<WriteJob>,
    c: &WriterCounters,
    stopped: &AtomicBool,
) {
    let mut since_rescan = 0u64;
    let mut said_full = false;
    let mut said_failed = false;
    for job in rx {
        let len = job.data.len() as u64;
        if !stopped.load(Ordering::Relaxed) {
            match tier.store(&job.key, job.index, &job.data) {
                Ok(()) => {
                    c.written.fetch_add(1, Ordering::Relaxed);
                    since_rescan += len;
                }
                Err(e) if disk_full(&e) => {
                    c.dropped.fetch_add(1, Ordering::Relaxed);
                    let budget = tier.shrink_after_full();
                    if budget < MIN_BUDGET {
                        stopped.store(true, Ordering::Relaxed);
                        tracing::warn!(
                            dir = %tier.dir.display(),
                            error = %e,
                            "disk cache is full and holds less than {} MiB; no more blocks are \
                             written to it (reads keep using what it holds)",
                            MIN_BUDGET >> 20
                        );
                    } else if !said_full {
                        said_full = true;
                        tracing::warn!(
                            dir = %tier.dir.display(),
                            error = %e,
                            budget_mib = budget >> 20,
                            "disk cache filled its filesystem; its budget is lowered to what fits"
                        );
                    }
                }
                Err(e) => {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                    if !said_failed {
                        said_failed = true;
                        tracing::warn!(dir = %tier.dir.display(), error = %e,
                            "disk cache write failed (later failures are counted, not logged)");
                    }
                }
            }
        } else {
            c.dropped.fetch_add(1, Ordering::Relaxed);
        }
        c.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        if since_rescan >= (tier.budget() / 4).clamp(1 << 20, RESCAN_EVERY) {
            since_rescan = 0;
            if let Err(e) = tier.rescan() {
                tracing::debug!(error = %e, "disk cache rescan failed");
            }
        }
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
        assert!(matches!(tier.load(&key, 3), Load::Hit(b) if &b[..] == b"hello block"));
        assert!(matches!(tier.load(&key, 4), Load::Corrupt(_)), "wrong index must not load");
        tier.store(&key, 3, b"hello block").expect("store");
        let path = tier.entry_path(&key);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(tier.load(&key, 3), Load::Corrupt(_)), "payload damage is caught");
        assert!(matches!(tier.load(&key, 3), Load::Miss), "corrupt entry is dropped");
        tier.store(&key, 3, b"hello block").expect("store");
        std::fs::write(&path, &std::fs::read(&path).expect("read")[..HEADER_LEN + 3])
            .expect("truncate");
        assert!(matches!(tier.load(&key, 3), Load::Corrupt(_)), "a truncated entry is caught");
    }

    #[test]
    fn a_range_load_reads_and_checks_only_its_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tier = DiskTier::open(dir.path(), 1 << 30).expect("open");
        let block: Vec<u8> = (0..(5 * CHUNK + 100) as u32).map(|i| (i % 251) as u8).collect();
        let key = disk_key("blob", 7);
        tier.store(&key, 7, &block).expect("store");
        for range in [0..10, CHUNK - 3..CHUNK + 3, 2 * CHUNK..4 * CHUNK, 5 * CHUNK..usize::MAX] {
            let want = &block[range.start..range.end.min(block.len())];
            assert!(
                matches!(tier.load_range(&key, 7, range.clone()), Load::Hit(b) if b[..] == *want)
            );
        }
        // Damage chunk 4: a read of chunks 0–1 still loads, one that touches chunk 4 does not.
        let path = tier.entry_path(&key);
        let mut bytes = std::fs::read(&path).expect("read");
        let at = prefix_len(block.len() as u64) as usize + 4 * CHUNK + 9;
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(tier.load_range(&key, 7, 0..2 * CHUNK), Load::Hit(_)));
        assert!(matches!(tier.load_range(&key, 7, 4 * CHUNK..4 * CHUNK + 1), Load::Corrupt(_)));
        assert!(matches!(tier.load(&key, 7), Load::Miss), "the damaged entry was removed");
    }

    #[test]
    fn a_load_that_cannot_wait_takes_only_open_entries_in_the_page_cache() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().expect("tempdir");
        let tier = DiskTier::open(dir.path(), 1 << 30).expect("open");
        let block: Vec<u8> = (0..(3 * CHUNK + 7) as u32).map(|i| (i % 241) as u8).collect();
        let key = disk_key("blob", 5);
        tier.store(&key, 5, &block).expect("store");
        let range = CHUNK - 5..2 * CHUNK + 5;
        assert!(tier.load_range_now(&key, 5, range.clone()).is_none(), "not open yet");
        assert!(matches!(tier.load_range(&key, 5, range.clone()), Load::Hit(_)));
        let now = tier.load_range_now(&key, 5, range.clone());
        assert!(
            matches!(&now, Some(Load::Hit(b)) if b[..] == block[range.clone()]),
            "an open entry in the page cache loads without waiting"
        );
        // Out of the page cache (written back first: DONTNEED drops only clean pages, and
        // may leave a page under writeback or in use for a moment, so ask again until they
        // are gone): not without waiting.
        let path = tier.entry_path(&key);
        let file = std::fs::File::open(&path).expect("open entry");
        let evicted = (0..50).any(|_| {
            file.sync_all().expect("fsync");
            // SAFETY: advice on an open descriptor; no memory is involved.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0);
            let gone = tier.load_range_now(&key, 5, range.clone()).is_none();
            if !gone {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            gone
        });
        assert!(evicted, "bytes out of the page cache must not load without waiting");
        assert!(
            matches!(tier.load_range(&key, 5, range.clone()), Load::Hit(b) if b[..] == block[range.clone()])
        );
        // Damage under the open entry (same inode): caught, and the entry removed.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[prefix_len(block.len() as u64) as usize + CHUNK + 1] ^= 0x10;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(tier.load_range_now(&key, 5, range), Some(Load::Corrupt(_))));
        assert!(matches!(tier.load(&key, 5), Load::Miss), "the damaged entry was removed");
    }

    #[test]
    fn warming_opens_an_entry_for_loads_that_cannot_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tier = DiskTier::open(dir.path(), 1 << 30).expect("open");
        let block: Vec<u8> = (0..(2 * CHUNK) as u32).map(|i| (i % 239) as u8).collect();
        let (key, other) = (disk_key("blob", 1), disk_key("blob", 2));
        tier.store(&key, 1, &block).expect("store");
        tier.store(&other, 2, &block).expect("store");
        assert!(tier.load_range_now(&key, 1, 0..10).is_none(), "not open yet");
        assert_eq!(tier.warm(&key, 1), Ok(true));
        assert!(
            matches!(tier.load_range_now(&key, 1, 0..10), Some(Load::Hit(b)) if b[..] == block[..10])
        );
        assert_eq!(tier.warm(&disk_key("blob", 3), 3), Ok(false), "no entry");
        // An entry asked for as another block's: refused, and removed.
        let third = disk_key("blob", 4);
        tier.store(&third, 4, &block).expect("store");
        let refused = tier.warm(&third, 5);
        assert!(refused.as_ref().is_err_and(|why| why.contains("another block")), "{refused:?}");
        assert!(matches!(tier.load(&third, 4), Load::Miss), "the mismatched entry was removed");
        // A damaged header: not warmed, and removed.
        let path = tier.entry_path(&other);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[9] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        assert!(tier.warm(&other, 2).is_err(), "a damaged header is reported");
        assert!(matches!(tier.load(&other, 2), Load::Miss), "the damaged entry was removed");
    }

    /// Whether the page of `file` at `offset` is in the page cache, as `mincore(2)` reports it.
    fn resident(file: &std::fs::File, offset: usize) -> bool {
        use std::os::fd::AsRawFd;
        let page = 4096;
        let at = offset / page * page;
        // SAFETY: a fresh read-only shared mapping of one page of an open file, unmapped below
        // and never dereferenced; mincore only reports on it.
        unsafe {
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                at as libc::off_t,
            );
            assert_ne!(ptr, libc::MAP_FAILED, "mmap");
            let mut vec = [0u8; 1];
            assert_eq!(libc::mincore(ptr, page, vec.as_mut_ptr()), 0, "mincore");
            libc::munmap(ptr, page);
            vec[0] & 1 == 1
        }
    }

    #[test]
    fn warming_reads_the_payload_into_the_page_cache() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().expect("tempdir");
        let tier = DiskTier::open(dir.path(), 1 << 30).expect("open");
        // Large enough that the last page lies far past what the header read's own read-ahead
        // brings in.
        let block: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
        let key = disk_key("blob", 1);
        tier.store(&key, 1, &block).expect("store");
        let file = std::fs::File::open(tier.entry_path(&key)).expect("open entry");
        let last = file.metadata().expect("stat").len() as usize - 1;
        // Out of the page cache first (written back: DONTNEED drops only clean pages; ask again
        // until the kernel has let them go).
        let evicted = (0..50).any(|_| {
            file.sync_all().expect("fsync");
            // SAFETY: advice on an open descriptor; no memory is involved.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0);
            let gone = !resident(&file, last);
            if !gone {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            gone
        });
        assert!(evicted, "the entry's last page stayed in the page cache");
        assert_eq!(tier.warm(&key, 1), Ok(true));
        // WILLNEED starts the read asynchronously: the last page arrives soon after.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !resident(&file, last) {
            assert!(std::time::Instant::now() < deadline, "warming never read the payload in");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn stays_within_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = 10 * (prefix_len(1000) + 1000);
        let tier = DiskTier::open(dir.path(), budget).expect("open");
        for i in 0..50u64 {
            tier.store(&disk_key("b", i), i, &[i as u8; 1000]).expect("store");
            assert!(tier.bytes() <= budget);
        }
        assert_eq!(tier.len(), 10);
        assert!(matches!(tier.load(&disk_key("b", 49), 49), Load::Hit(_)));
        assert!(matches!(tier.load(&disk_key("b", 0), 0), Load::Miss));
        drop(tier);
        let tier = DiskTier::open(dir.path(), budget / 2).expect("reopen smaller");
        assert!(tier.bytes() <= budget / 2);
        assert_eq!(tier.len(), 5);
    }

    #[test]
    fn two_tiers_on_one_directory_share_entries_and_one_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entry = prefix_len(1000) + 1000;
        let budget = 10 * entry;
        let a = DiskTier::open(dir.path(), budget).expect("open a");
        let b = DiskTier::open(dir.path(), budget).expect("open b");
        for i in 0..8u64 {
            a.store(&disk_key("a", i), i, &[1; 1000]).expect("store a");
            b.store(&disk_key("b", i), i, &[2; 1000]).expect("store b");
        }
        // Each sees the other's entries without having indexed them.
        assert!(matches!(b.load(&disk_key("a", 7), 7), Load::Hit(d) if d[..] == [1; 1000]));
        assert!(matches!(a.load(&disk_key("b", 7), 7), Load::Hit(d) if d[..] == [2; 1000]));
        // 16 entries on disk, budget 10: a rescan holds the directory's budget.
        a.rescan().expect("rescan");
        let on_disk = walk(&dir.path().join(FORMAT_DIR)).expect("walk");
        assert!(on_disk.iter().map(|f| f.len).sum::<u64>() <= budget, "{} entries", on_disk.len());
        // What a evicted, b now misses (and forgets), never serves wrongly.
        for i in 0..8u64 {
            match b.load(&disk_key("b", i), i) {
                Load::Hit(d) => assert_eq!(d[..], [2; 1000]),
                Load::Miss => {}
                Load::Corrupt(why) => panic!("block {i}: {why}"),
            }
        }
    }

    #[test]
    fn the_writer_drops_what_does_not_fit_its_queue_and_writes_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tier = Arc::new(DiskTier::open(dir.path(), 1 << 30).expect("open"));
        let writer = DiskWriter::start(tier.clone(), 10_000).expect("writer");
        let mut accepted = 0;
        for i in 0..100u64 {
            if writer.submit(disk_key("w", i), i, Bytes::from(vec![i as u8; 4000])) {
                accepted += 1;
            }
        }
        writer.flush();
        let c = writer.counters();
        let (written, dropped) =
            (c.written.load(Ordering::Relaxed), c.dropped.load(Ordering::Relaxed));
        assert_eq!(written, accepted);
        assert_eq!(written + dropped, 100);
        assert_eq!(tier.len() as u64, written);
    }
}
