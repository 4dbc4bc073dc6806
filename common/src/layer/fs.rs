//! [`LayerFs`]: the filesystem logic over a loaded image — no fuser types.
//!
//! ```text
//!  lookup/getattr/readdir/readlink/xattrs ──► Metadata (all in memory since mount)
//!  plan_read(ino, off, len) ──► file range in blob stream ──► blocks b0..bn (a PlannedRead)
//!        └─ per block: Recorder::record (first access only); sequential window (below)
//!  read_cached(planned) ──► every block in the memory tier, or in open disk-tier entries the
//!                           page cache holds (preadv2 RWF_NOWAIT)? bytes : None (never waits)
//!  read_planned(planned) ──► BlockCache::get_many (on demand; one fill for the missing run)
//!                         └─ miss: disk tier, or LayerBlob::fetch (one range read) → decode
//!                            (zstd, length) → digest check, on a blocking thread
//!        └─ a read that continues the file's previous one: ready the next blocks of the file,
//!           a window that doubles per sequential read (2 → 16): those on disk opened and read
//!           into the page cache (warm streams then answer on the FUSE thread), the others
//!           fetched at Background priority once a read of the file needed a block neither
//!           tier held; not while a trace replays (the trace knows better, and shares the link)
//!  each answer ──► timeline read latency + `fuse.read.latency{origin}`: memory (read_cached,
//!                  or every block in memory by the time the task looked), disk (some block
//!                  from the disk tier, none fetched; on the FUSE thread or a blocking one),
//!                  demand (some block waited on a fetch)
//! ```
//!
//! The sequential window is ours, not the kernel's: the mount keeps kernel read-ahead small
//! (128 KiB), because read-ahead is also the fault-around of mmap, and a Python start faults in
//! scattered pages of large shared libraries, where 4 MiB of read-around per fault fetched
//! (and recorded, and replayed) a quarter more blocks. Streams still get blocks ahead of them.
//!
//! Inode numbers are metadata indexes + 1 (the root is 1). Link counts are derived at load:
//! a non-directory has one link per entry naming it; a directory has 2 + its subdirectories.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cache::{BlockCache, DynSource};
use crate::metrics::ReadOrigin;
use crate::store::DynStore;
use crate::trace::{BlobSlot, FileId, Recorder};

use crate::layer::error::{LayerError, Result};
use crate::layer::format::{Inode, Kind, Metadata};
use crate::layer::source::LayerBlob;

/// Attributes of one inode, in plain terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number (index + 1).
    pub ino: u64,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (file length, symlink target length, 0 otherwise).
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Device number for devices.
    pub rdev: u64,
}

/// One directory entry for readdir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// `st_mode` of the entry (only its type bits matter).
    pub mode: u32,
    /// Name.
    pub name: String,
}

/// The logic layer of a mounted image.
#[derive(Debug)]
pub struct LayerFs {
    meta: Metadata,
    nlink: Vec<u32>,
    /// A path for each regular file, for trace records (`None` for other kinds).
    paths: Vec<Option<String>>,
    sources: Vec<DynSource>,
    cache: BlockCache,
    recorder: Option<Arc<Recorder>>,
    slots: Vec<Option<BlobSlot>>,
    file_ids: Vec<OnceLock<FileId>>,
    started: Instant,
    /// Microseconds from mount to the first read, +1 (0: no read yet).
    first_read_us: AtomicU64,
    /// Per file inode: where its last read ended, for the sequential window.
    streams: Mutex<HashMap<u64, Stream>>,
    /// Set while a trace replays: the window then only tracks, it queues nothing.
    replaying: Arc<AtomicBool>,
}

/// Marks a replay as running on an [`LayerFs`] until [`Replaying::stop`] (or drop).
#[derive(Debug)]
pub struct Replaying(Arc<AtomicBool>);

impl Replaying {
    /// The replay ended: sequential windows queue blocks again.
    pub fn stop(&self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Drop for Replaying {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A file's sequential-read state (blocks are blob block indexes).
#[derive(Debug, Clone, Copy)]
struct Stream {
    /// The block the last read ended in.
    last: u64,
    /// Blocks queued ahead of the reader so far (exclusive end).
    queued_end: u64,
    /// Blocks to keep queued ahead.
    window: u64,
    /// Whether a read of this file needed a block neither tier held: only then does its window
    /// fetch from the store (a file served from the caches so far only warms the disk tier).
    fetches: bool,
}

/// A read resolved against the metadata ([`LayerFs::plan_read`]): the blocks of one blob it
/// covers and where in the blob's byte stream it starts and stops. Owns what it needs, so a FUSE
/// callback can hand it to a task.
#[derive(Debug)]
pub struct PlannedRead {
    source: DynSource,
    /// Blob blocks, end exclusive.
    blocks: std::ops::Range<u64>,
    /// Offsets in the blob's uncompressed stream, end exclusive.
    start: u64,
    stop: u64,
    block_size: u64,
    /// When the read arrived (for the timeline's read latency).
    t0: Instant,
    /// The memory tier's blocks (`None` where it had none), once looked up: a read that
    /// [`LayerFs::read_cached`] could not finish hands them on, so they are counted once.
    held: Option<Vec<Option<(usize, bytes::Bytes)>>>,
}

impl PlannedRead {
    /// Records the answer to this read: the timeline's read latency, and the latency and bytes
    /// under `origin` ([`crate::metrics::read_served`]).
    fn done(&self, origin: ReadOrigin, out: &Result<Vec<u8>>) {
        let elapsed = self.t0.elapsed();
        crate::timeline::read_done(elapsed);
        crate::metrics::read_served(origin, elapsed, out.as_ref().ok().map(Vec::len));
    }

    /// The blocks `pieces` lacks, each with the bytes of it this read needs.
    fn missing(
        &self,
        pieces: &[Option<(usize, bytes::Bytes)>],
    ) -> Vec<(u64, std::ops::Range<usize>)> {
        self.blocks
            .clone()
            .zip(pieces)
            .filter(|(_, p)| p.is_none())
            .map(|(i, _)| (i, self.within(i)))
            .collect()
    }

    /// The bytes of block `index` this read needs, as offsets within the block.
    fn within(&self, index: u64) -> std::ops::Range<usize> {
        let base = index * self.block_size;
        (self.start.max(base) - base) as usize
            ..(self.stop.min(base + self.block_size) - base) as usize
    }

    /// Copies the read's bytes out of its pieces: `pieces[k]` holds block `self.blocks.start +
    /// k` from the offset it names (0 for a whole block; a disk range load starts later).
    fn assemble(&self, pieces: &[(usize, bytes::Bytes)]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity((self.stop - self.start) as usize);
        let mut pos = self.start;
        for (index, (base, block)) in self.blocks.clone().zip(pieces) {
            let within =
                ((pos - index * self.block_size) as usize).checked_sub(*base).ok_or_else(|| {
                    LayerError::malformed("block", format!("block {index}: piece starts late"))
                })?;
            let take = ((self.stop - pos) as usize).min(block.len().saturating_sub(within));
            if take == 0 {
                return Err(LayerError::malformed(
                    "block",
                    format!("block {index} shorter than its table says"),
                ));
            }
            out.extend_from_slice(&block[within..within + take]);
            pos += take as u64;
        }
        if pos != self.stop || pieces.len() as u64 != self.blocks.end - self.blocks.start {
            return Err(LayerError::malformed("block", "blocks end before the read".to_string()));
        }
        Ok(out)
    }
}

/// First and largest sequential window, in blocks.
const WINDOW_START: u64 = 2;
const WINDOW_MAX: u64 = 16;
/// Most files whose streams are tracked; past it the table starts over (a stream just restarts
/// its window).
const MAX_STREAMS: usize = 4096;

fn mtime(inode: &Inode) -> SystemTime {
    let ns = Duration::new(inode.mtime.unsigned_abs(), inode.mtime_ns);
    if inode.mtime >= 0 {
        UNIX_EPOCH + ns
    } else {
        // Before 1970: seconds go back, nanoseconds still count forward.
        UNIX_EPOCH - Duration::from_secs(inode.mtime.unsigned_abs())
            + Duration::from_nanos(u64::from(inode.mtime_ns))
    }
}

impl LayerFs {
    /// Builds the logic over validated `meta`, reading blobs from `store` through `cache` and
    /// recording first block accesses into `recorder` when given.
    pub fn new(
        meta: Metadata,
        store: DynStore,
        cache: BlockCache,
        recorder: Option<Arc<Recorder>>,
    ) -> Result<Self> {
        meta.validate()?;
        let n = meta.inodes.len();
        let mut nlink = vec![0u32; n];
        let mut paths: Vec<Option<String>> = vec![None; n];
        nlink[0] = 2;
        let mut stack = vec![(0usize, String::new())];
        while let Some((d, prefix)) = stack.pop() {
            let Kind::Dir { entries } = &meta.inodes[d].kind else { continue };
            for e in entries {
                let c = e.inode as usize;
                let path = format!("{prefix}/{}", e.name);
                match &meta.inodes[c].kind {
                    Kind::Dir { .. } => {
                        nlink[c] = 2;
                        nlink[d] = nlink[d].saturating_add(1);
                        stack.push((c, path));
                    }
                    Kind::File { .. } => {
                        nlink[c] = nlink[c].saturating_add(1);
                        if paths[c].is_none() {
                            paths[c] = Some(path);
                        }
                    }
                    _ => nlink[c] = nlink[c].saturating_add(1),
                }
            }
        }
        let sources = meta
            .blobs
            .iter()
            .map(|b| Ok(Arc::new(LayerBlob::new(store.clone(), b, meta.block_size)?) as DynSource))
            .collect::<Result<Vec<_>>>()?;
        let slots = meta
            .blobs
            .iter()
            .map(|b| {
                recorder
                    .as_ref()
                    .map(|r| r.register_blob(&b.digest, meta.block_size, b.blocks.len() as u64))
            })
            .collect();
        Ok(Self {
            nlink,
            paths,
            sources,
            cache,
            recorder,
            slots,
            file_ids: (0..n).map(|_| OnceLock::new()).collect(),
            started: Instant::now(),
            first_read_us: AtomicU64::new(0),
            streams: Mutex::new(HashMap::new()),
            replaying: Arc::new(AtomicBool::new(false)),
            meta,
        })
    }

    /// The image's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The block sources, one per data blob.
    pub fn sources(&self) -> &[DynSource] {
        &self.sources
    }

    /// The cache blocks are read through.
    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    /// Time from construction to the first `read`, if any happened.
    pub fn time_to_first_read(&self) -> Option<Duration> {
        match self.first_read_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us - 1)),
        }
    }

    fn inode(&self, ino: u64) -> Result<(usize, &Inode)> {
        let i = ino.checked_sub(1).ok_or(LayerError::NotFound)? as usize;
        self.meta.inodes.get(i).map(|n| (i, n)).ok_or(LayerError::NotFound)
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let (i, inode) = self.inode(ino)?;
        let (size, rdev) = match &inode.kind {
            Kind::File { size, .. } => (*size, 0),
            Kind::Symlink { target } => (target.len() as u64, 0),
            Kind::Device { rdev } => (0, *rdev),
            Kind::Dir { .. } => (inode.dir_size().unwrap_or(0), 0),
            Kind::Fifo | Kind::Socket => (0, 0),
        };
        Ok(Attr {
            ino,
            mode: inode.mode,
            nlink: self.nlink[i],
            uid: inode.uid,
            gid: inode.gid,
            size,
            mtime: mtime(inode),
            rdev,
        })
    }

    /// The entry `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr> {
        let (_, dir) = self.inode(parent)?;
        let Kind::Dir { entries } = &dir.kind else { return Err(LayerError::NotDir) };
        let found = entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .map_err(|_| LayerError::NotFound)?;
        self.getattr(u64::from(entries[found].inode) + 1)
    }

    /// Entries of directory `ino`, without `.` and `..`, in name order.
    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>> {
        let (_, dir) = self.inode(ino)?;
        let Kind::Dir { entries } = &dir.kind else { return Err(LayerError::NotDir) };
        Ok(entries
            .iter()
            .map(|e| DirEntry {
                ino: u64::from(e.inode) + 1,
                mode: self.meta.inodes[e.inode as usize].mode,
                name: e.name.clone(),
            })
            .collect())
    }

    /// Target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<&str> {
        match &self.inode(ino)?.1.kind {
            Kind::Symlink { target } => Ok(target),
            _ => Err(LayerError::NotSymlink),
        }
    }

    /// Value of extended attribute `name` of `ino`.
    pub fn getxattr(&self, ino: u64, name: &str) -> Result<&[u8]> {
        let (_, inode) = self.inode(ino)?;
        inode
            .xattrs
            .iter()
            .find(|x| x.name == name)
            .map(|x| x.value.as_slice())
            .ok_or(LayerError::NoXattr)
    }

    /// Names of the extended attributes of `ino`, each followed by a NUL (the listxattr form).
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let (_, inode) = self.inode(ino)?;
        let mut out = Vec::new();
        for x in &inode.xattrs {
            out.extend_from_slice(x.name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// Checks `ino` can be opened for reading as a file.
    pub fn open(&self, ino: u64) -> Result<()> {
        match &self.inode(ino)?.1.kind {
            Kind::File { .. } => Ok(()),
            Kind::Dir { .. } => Err(LayerError::IsDir),
            // Devices, fifos and sockets are opened by the kernel, never through us.
            _ => Err(LayerError::NotFound),
        }
    }

    /// Up to `size` bytes of file `ino` from `offset`; shorter only at end of file. The whole
    /// read in one call: [`LayerFs::plan_read`], then the memory tier or the fetch.
    pub async fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        match self.plan_read(ino, offset, size)? {
            None => Ok(Vec::new()),
            Some(mut planned) => match self.read_cached(&mut planned) {
                Some(done) => done,
                None => self.read_planned(planned).await,
            },
        }
    }

    /// Resolves a read against the metadata, without waiting on anything: which blocks it needs
    /// (recorded in the trace, first access only), and the next blocks of a sequential stream
    /// queued. `None`: nothing to read (at or past the end of the file).
    pub fn plan_read(&self, ino: u64, offset: u64, size: u32) -> Result<Option<PlannedRead>> {
        let t0 = Instant::now();
        if self.first_read_us.load(Ordering::Relaxed) == 0 {
            let us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
            let _ = self.first_read_us.compare_exchange(
                0,
                us + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        let (i, inode) = self.inode(ino)?;
        let (file_size, blob, file_off) = match &inode.kind {
            Kind::File { size, blob, offset } => (*size, *blob as usize, *offset),
            Kind::Dir { .. } => return Err(LayerError::IsDir),
            _ => return Err(LayerError::NotFound),
        };
        let end = offset.saturating_add(u64::from(size)).min(file_size);
        if offset >= end {
            crate::timeline::read_done(t0.elapsed());
            crate::metrics::read_served(ReadOrigin::Memory, t0.elapsed(), Some(0));
            return Ok(None);
        }
        let source = &self.sources[blob];
        let bs = u64::from(self.meta.block_size);
        let (start, stop) = (file_off + offset, file_off + end);
        let blocks = start / bs..(stop - 1) / bs + 1;
        self.stream_ahead(
            ino,
            source,
            blocks.start..blocks.end - 1,
            (file_off + file_size - 1) / bs,
        );
        if let (Some(rec), Some(Some(slot)), Some(file)) =
            (&self.recorder, self.slots.get(blob), self.file_id(i))
        {
            for index in blocks.clone() {
                rec.record(slot, index, file);
            }
        }
        Ok(Some(PlannedRead {
            source: source.clone(),
            blocks,
            start,
            stop,
            block_size: bs,
            t0,
            held: None,
        }))
    }

    /// The planned read from what is at hand without waiting, if every block it needs is: the
    /// memory tier, else the disk tier's open entries whose bytes the page cache holds (see
    /// [`BlockCache::load_disk_ranges_now`]). What a FUSE thread answers itself; a warm start
    /// is mostly these. `None`: some block must be loaded or fetched off the thread, by
    /// [`Self::read_planned`] (`planned` keeps what the memory tier gave).
    pub fn read_cached(&self, planned: &mut PlannedRead) -> Option<Result<Vec<u8>>> {
        // One look at the memory tier; what it lacks is tried on disk without waiting, and
        // whatever is still missing goes on with `planned` (so hits count once).
        let mut pieces = self.in_memory(planned);
        let wanted = planned.missing(&pieces);
        let origin = if wanted.is_empty() { ReadOrigin::Memory } else { ReadOrigin::Disk };
        if !wanted.is_empty() {
            let Some(loaded) = self.cache.load_disk_ranges_now(&planned.source, &wanted) else {
                planned.held = Some(pieces);
                return None;
            };
            for ((i, within), data) in wanted.into_iter().zip(loaded) {
                pieces[(i - planned.blocks.start) as usize] = Some((within.start, data));
            }
        }
        let pieces: Vec<(usize, bytes::Bytes)> = pieces.into_iter().flatten().collect();
        let out = planned.assemble(&pieces);
        planned.done(origin, &out);
        Some(out)
    }

    /// The planned read, with what the memory tier lacks taken from the disk tier (only the
    /// bytes the read needs, not kept in memory: the page cache over the disk tier holds them)
    /// or else fetched on demand (consecutive missing blocks in one fill, so neighbours are one
    /// store request).
    pub async fn read_planned(&self, mut planned: PlannedRead) -> Result<Vec<u8>> {
        let mut origin = ReadOrigin::Memory;
        let pieces = match planned.held.take() {
            Some(held) => held,
            None => self.in_memory(&planned),
        };
        let out = self
            .gather(&planned, pieces, &mut origin)
            .await
            .and_then(|pieces| planned.assemble(&pieces));
        planned.done(origin, &out);
        out
    }

    /// What the memory tier holds of `planned`'s blocks (counted as hits), `None` where not.
    fn in_memory(&self, planned: &PlannedRead) -> Vec<Option<(usize, bytes::Bytes)>> {
        planned
            .blocks
            .clone()
            .map(|i| self.cache.peek(&planned.source, i).map(|b| (0, b)))
            .collect()
    }

    /// `planned`'s pieces, the missing ones of `pieces` (from [`Self::in_memory`]) filled;
    /// `origin` ends as the slowest source any piece came from.
    async fn gather(
        &self,
        planned: &PlannedRead,
        mut pieces: Vec<Option<(usize, bytes::Bytes)>>,
        origin: &mut ReadOrigin,
    ) -> Result<Vec<(usize, bytes::Bytes)>> {
        let source = &planned.source;
        let wanted = planned.missing(&pieces);
        if !wanted.is_empty() {
            let loaded = self.cache.load_disk_ranges(source, wanted.clone()).await;
            for ((i, within), data) in wanted.into_iter().zip(loaded) {
                if let Some(data) = data {
                    *origin = ReadOrigin::Disk;
                    pieces[(i - planned.blocks.start) as usize] = Some((within.start, data));
                }
            }
        }
        // What neither tier had: fetched, one fill per run of consecutive blocks.
        let mut k = 0;
        while k < pieces.len() {
            if pieces[k].is_some() {
                k += 1;
                continue;
            }
            let run_end = (k..pieces.len()).find(|&j| pieces[j].is_some()).unwrap_or(pieces.len());
            let first = planned.blocks.start + k as u64;
            *origin = ReadOrigin::Demand;
            let fetched = self.cache.get_many(source, first..first + (run_end - k) as u64).await?;
            for (j, block) in (k..run_end).zip(fetched) {
                pieces[j] = Some((0, block));
            }
            k = run_end;
        }
        Ok(pieces.into_iter().flatten().collect())
    }

    /// Updates `ino`'s stream with a read of `blocks` (inclusive) and, if it continues the
    /// previous read, queues the next blocks up to the window (never past `last_block`, the
    /// file's last block). A jump resets the window: random readers get no prefetch.
    fn stream_ahead(
        &self,
        ino: u64,
        source: &DynSource,
        blocks: std::ops::Range<u64>,
        last_block: u64,
    ) {
        let (first, last) = (blocks.start, blocks.end);
        let (queue, fetch) = {
            let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            if streams.len() >= MAX_STREAMS && !streams.contains_key(&ino) {
                streams.clear();
            }
            let s = streams.entry(ino).or_insert(Stream {
                last: u64::MAX,
                queued_end: 0,
                window: 0,
                fetches: false,
            });
            // Asked only until the first block the caches lack, not on every read after it.
            if !s.fetches && !(first..=last).all(|i| self.cache.contains(source.id(), i)) {
                // Blocks queued so far were only warmed: queue them again, to be fetched.
                s.fetches = true;
                s.queued_end = s.queued_end.min(first);
            }
            let sequential = s.last != u64::MAX && (first == s.last || first == s.last + 1);
            if !sequential {
                *s = Stream { last, queued_end: last + 1, window: 0, fetches: s.fetches };
                return;
            }
            s.window = (s.window * 2).clamp(WINDOW_START, WINDOW_MAX);
            s.last = last;
            let end = (last + 1 + s.window).min(last_block + 1);
            let begin = s.queued_end.max(last + 1);
            s.queued_end = s.queued_end.max(end);
            (begin..end, s.fetches)
        };
        if !queue.is_empty() && !self.replaying.load(Ordering::Acquire) {
            // Blocks on disk are readied for the FUSE thread; the rest are fetched only for a
            // file one of whose reads needed a block the caches lacked. A warm start otherwise
            // fetched ~25 MB of blocks past what it read (and held them in memory): windows of
            // files whose every read so far came from the caches.
            self.cache.spawn_readahead(source, queue, fetch);
        }
    }

    /// Marks a trace replay as running: sequential windows queue nothing until it ends (the
    /// trace is the better guess, and window fetches would share the link with it).
    pub fn replaying(&self) -> Replaying {
        self.replaying.store(true, Ordering::Release);
        Replaying(self.replaying.clone())
    }

    fn file_id(&self, i: usize) -> Option<FileId> {
        let rec = self.recorder.as_ref()?;
        let path = self.paths.get(i)?.as_deref()?;
        Some(*self.file_ids[i].get_or_init(|| rec.intern_file(path)))
    }
}
