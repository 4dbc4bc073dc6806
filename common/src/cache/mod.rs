//! The block cache every bootseer filesystem reads through.
//!
//! Blocks are keyed by (blob id, block index); a [`BlockSource`] says how a blob's blocks are
//! fetched and what digest each must have. A lookup goes:
//!
//! ```text
//!   get(source, i, priority)
//!     ├─ memory tier (LRU, hard byte budget)          → hit
//!     ├─ flight for (blob, i) already queued/running  → wait for it (a queued prefetch is
//!     │                                                  promoted: fetched now, not in turn)
//!     └─ new flight → task: disk tier (CRC-checked) or source.fetch → blocking thread:
//!                      decode (decompress) + verify digest, once → memory + disk writer queue
//!   prefetch(source, blocks, Replay | Background)
//!     └─ flights registered as *queued* → prefetch queue (Replay before Background, FIFO)
//!        → `prefetch_concurrency` workers claim what is still queued and fill it in runs
//!   cancel_queued(blob)   queued (not running) flights of a blob → Abandoned; workers skip them
//!   release(blob, i)      drops a consumed block from memory before LRU would
//! ```
//!
//! Invariants:
//! - Single-flight: while a flight for a block exists, no second fetch of it starts. A flight is
//!   removed only after its block is in the memory tier (or it failed), and lookups that miss the
//!   memory tier re-check it under the flights lock, so no window lets two fetches race.
//! - On-demand reads never wait behind queued prefetch: they either join a running fetch or
//!   start their own. Prefetch holds at most `prefetch_concurrency` fetches at once.
//! - Nothing unverified is served: every fetched block is checked against
//!   [`BlockSource::block_digest`] before it is served or cached (a mismatch is
//!   [`CacheError::Corrupt`] and is never cached), and the disk tier only holds blocks that
//!   passed, each guarded by its own CRC (see [`disk`]).
//! - CPU work stays off the async workers: decoding and hashing a fetched run, and disk loads,
//!   run on tokio's blocking threads (one hop per run); disk writes on the [`DiskWriter`] thread,
//!   behind a queue bounded in bytes (full: dropped and counted, never waited on).
//! - The disk tier is optional at run time: a cache directory that cannot be used leaves the
//!   cache memory-only, with a warning and the reason in [`CacheStats::disk_unusable`].
//! - Every flight is completed exactly once, even if its task is dropped or panics (a guard
//!   completes leftovers with [`CacheError::Abandoned`]), so no reader waits forever.
//!
//! Lock order: `flights` → `mem`. The disk tier's own lock is never held with either.
//! The memory budget counts block lengths; a block that is a slice of a larger fetched run keeps
//! that run's buffer alive until all its slices are dropped, so runs are kept short (sources cap
//! them; prefetch requests name at most a few blocks).

pub mod disk;
pub mod source;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use lru::LruCache;
use tokio::runtime::Handle;
use tokio::sync::{Notify, watch};

pub use self::disk::{DiskTier, DiskWriter};
pub use self::source::{BlockSource, DynSource, StoreBlocks};
use crate::digest::Digest;
use crate::errno::ToErrno;
use crate::metrics as m;
use crate::store::StoreError;

/// Who is waiting for a block. Lower is more urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// A reader is blocked on it.
    OnDemand,
    /// A trace says the job will read it soon.
    Replay,
    /// Opportunistic fill.
    Background,
}

impl Priority {
    fn label(self) -> &'static str {
        match self {
            Priority::OnDemand => "demand",
            Priority::Replay => "replay",
            Priority::Background => "background",
        }
    }
}

/// Why a block could not be served. Cloneable: one failed fetch answers every waiter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The store failed (after its retries).
    #[error("block {block} of {blob}: {source}")]
    Fetch { blob: String, block: u64, source: Arc<StoreError> },
    /// The bytes do not have the block's digest.
    #[error("block {block} of {blob}: digest mismatch: got {actual}, expected {expected}")]
    Corrupt { blob: String, block: u64, expected: Digest, actual: Digest },
    /// The source got bytes it cannot make a block of (wrong length, bad compression).
    #[error("block {block} of {blob}: {message}")]
    Malformed { blob: String, block: u64, message: String },
    /// The block index is past the blob's end.
    #[error("block {block} of {blob}: out of range, the blob has {count} blocks")]
    OutOfRange { blob: String, block: u64, count: u64 },
    /// The fetch was dropped before it finished (runtime shutting down).
    #[error("block {block} of {blob}: fetch abandoned")]
    Abandoned { blob: String, block: u64 },
    /// The cache directory could not be opened.
    #[error("cache directory {path}: {source}")]
    Setup { path: String, source: Arc<std::io::Error> },
}

impl ToErrno for CacheError {
    fn errno(&self) -> i32 {
        match self {
            CacheError::Fetch { source, .. } => match source.errno() {
                // A blob the metadata names but the store lacks is an I/O failure, not ENOENT.
                libc::ENOENT => libc::EIO,
                errno => errno,
            },
            CacheError::Corrupt { .. } => libc::EIO,
            CacheError::Malformed { .. } => libc::EIO,
            CacheError::OutOfRange { .. } => libc::EINVAL,
            CacheError::Abandoned { .. } => libc::EIO,
            CacheError::Setup { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Sizes and concurrency of a [`BlockCache`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Bytes of blocks the memory tier may hold.
    pub memory_bytes: u64,
    /// Directory of the persistent disk tier; `None` keeps blocks in memory only.
    pub disk_dir: Option<PathBuf>,
    /// Bytes the disk tier may hold, headers included.
    pub disk_bytes: u64,
    /// Prefetch fetches in flight at once (on-demand fetches are not limited by this).
    pub prefetch_concurrency: usize,
}

/// Bounds of the disk writer's queue: half the memory budget, within these. A block dropped
/// from the queue and then evicted from memory is fetched again when read, so the queue must
/// absorb a replay's burst; a disk slower than the network for longer costs dropped writes,
/// not unbounded memory.
const WRITE_QUEUE_MIN: u64 = 16 << 20;
const WRITE_QUEUE_MAX: u64 = 64 << 20;

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            // 512 MiB holds a typical start's hot set (LESSONS: 15–100 MB of multi-GB images)
            // several times over without growing daemons into GBs.
            memory_bytes: 512 << 20,
            disk_dir: None,
            disk_bytes: 10 << 30,
            // Four runs of up to a few MiB each keep a 1–10 Gbit/s link busy without crowding
            // out on-demand reads.
            prefetch_concurrency: 4,
        }
    }
}

/// Counters of one cache, readable at any time for a mount's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Lookups answered from memory.
    pub hits_memory: u64,
    /// Lookups answered from disk.
    pub hits_disk: u64,
    /// Lookups that joined a fetch already under way.
    pub joined: u64,
    /// Queued prefetches an on-demand read pulled forward.
    pub promoted: u64,
    /// Blocks fetched from a source, by priority.
    pub fetched_demand: u64,
    /// See `fetched_demand`.
    pub fetched_replay: u64,
    /// See `fetched_demand`.
    pub fetched_background: u64,
    /// Bytes fetched from a source, by priority.
    pub bytes_demand: u64,
    /// See `bytes_demand`.
    pub bytes_replay: u64,
    /// See `bytes_demand`.
    pub bytes_background: u64,
    /// Source fetch calls (one call may bring several blocks).
    pub fetch_calls: u64,
    /// Blocks that failed to fetch.
    pub fetch_errors: u64,
    /// Blocks rejected by verification (fetched or on disk).
    pub corrupt: u64,
    /// Blocks dropped from memory by [`BlockCache::release`] (consumed, not evicted).
    pub released: u64,
    /// Queued prefetches dropped by [`BlockCache::cancel_queued`].
    pub cancelled: u64,
    /// Bytes now in the memory tier.
    pub memory_bytes: u64,
    /// Bytes now in the disk tier.
    pub disk_bytes: u64,
    /// Blocks written to the disk tier.
    pub disk_written: u64,
    /// Blocks not written to the disk tier (its queue was full, or the disk stayed full).
    pub disk_dropped: u64,
    /// Disk tier writes that failed otherwise.
    pub disk_failed: u64,
    /// Why the cache directory is not used, if one was asked for and could not be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_unusable: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    hits_memory: AtomicU64,
    hits_disk: AtomicU64,
    joined: AtomicU64,
    promoted: AtomicU64,
    fetched: [AtomicU64; 3],
    bytes: [AtomicU64; 3],
    fetch_calls: AtomicU64,
    fetch_errors: AtomicU64,
    corrupt: AtomicU64,
    released: AtomicU64,
    cancelled: AtomicU64,
}

/// A corrupt disk-tier entry was found (and removed): counted, exported and logged.
fn note_corrupt(inner: &Inner, blob: &str, index: u64, why: &str) {
    bump(&inner.counters.corrupt, 1);
    ::metrics::counter!(m::CACHE_CORRUPT, "tier" => "disk").increment(1);
    tracing::warn!(blob = %blob, block = index, why, "dropped corrupt disk cache entry");
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BlockKey {
    blob: Arc<str>,
    index: u64,
}

type Outcome = Option<Result<Bytes, CacheError>>;

#[derive(Debug)]
struct Flight {
    tx: watch::Sender<Outcome>,
    /// False while the block waits in the prefetch queue.
    running: bool,
}

#[derive(Debug)]
struct MemTier {
    blocks: LruCache<BlockKey, Bytes>,
    bytes: u64,
    budget: u64,
}

impl MemTier {
    fn insert(&mut self, key: BlockKey, data: Bytes) {
        let len = data.len() as u64;
        if len > self.budget {
            return;
        }
        if let Some(old) = self.blocks.put(key, data) {
            self.bytes -= old.len() as u64;
        }
        self.bytes += len;
        while self.bytes > self.budget {
            match self.blocks.pop_lru() {
                Some((_, evicted)) => {
                    self.bytes -= evicted.len() as u64;
                    ::metrics::counter!(m::CACHE_EVICT_MEMORY).increment(1);
                }
                None => break,
            }
        }
    }
}

#[derive(Debug)]
struct Job {
    source: DynSource,
    blocks: Vec<u64>,
    priority: Priority,
}

#[derive(Debug, Default)]
struct Queue {
    jobs: Mutex<[VecDeque<Job>; 2]>,
    notify: Notify,
    closed: AtomicBool,
}

impl Queue {
    fn push(&self, job: Job) {
        let lane = usize::from(job.priority != Priority::Replay);
        lock(&self.jobs)[lane].push_back(job);
        self.notify.notify_one();
    }

    async fn pop(&self) -> Option<Job> {
        loop {
            let notified = self.notify.notified();
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            {
                let mut lanes = lock(&self.jobs);
                if let Some(job) = lanes[0].pop_front().or_else(|| lanes[1].pop_front()) {
                    return Some(job);
                }
            }
            notified.await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No critical section here can leave its data half-updated in a way that serves wrong
    // bytes, so a poisoned lock (a panic elsewhere) is used as is.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
struct Inner {
    flights: Mutex<HashMap<BlockKey, Flight>>,
    mem: Mutex<MemTier>,
    disk: Option<Arc<DiskTier>>,
    writer: Option<DiskWriter>,
    disk_unusable: Option<String>,
    queue: Arc<Queue>,
    counters: Counters,
    runtime: Handle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Release);
        self.queue.notify.notify_waiters();
    }
}

/// A two-tier block cache with single-flight fetches and prioritized prefetch. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlockCache {
    inner: Arc<Inner>,
}

impl BlockCache {
    /// Builds a cache whose fetches and prefetch workers run on `runtime`.
    pub fn new(config: CacheConfig, runtime: Handle) -> Result<Self, CacheError> {
        let (mut disk, mut writer, mut disk_unusable) = (None, None, None);
        if let Some(dir) = &config.disk_dir {
            let opened = DiskTier::open(dir, config.disk_bytes).map(Arc::new).and_then(|tier| {
                let limit = (config.memory_bytes / 2).clamp(WRITE_QUEUE_MIN, WRITE_QUEUE_MAX);
                Ok((tier.clone(), DiskWriter::start(tier, limit)?))
            });
            match opened {
                Ok((tier, w)) => (disk, writer) = (Some(tier), Some(w)),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e,
                        "cache directory unusable; blocks are kept in memory only");
                    disk_unusable = Some(format!("{}: {e}", dir.display()));
                }
            }
        }
        let queue = Arc::new(Queue::default());
        let inner = Arc::new(Inner {
            flights: Mutex::new(HashMap::new()),
            mem: Mutex::new(MemTier {
                blocks: LruCache::unbounded(),
                bytes: 0,
                budget: config.memory_bytes,
            }),
            disk,
            writer,
            disk_unusable,
            queue: queue.clone(),
            counters: Counters::default(),
            runtime: runtime.clone(),
        });
        for _ in 0..config.prefetch_concurrency.max(1) {
            runtime.spawn(prefetch_worker(Arc::downgrade(&inner), queue.clone()));
        }
        Ok(Self { inner })
    }

    /// Block `index` of `source`, for a reader that waits for it.
    pub async fn get(&self, source: &DynSource, index: u64) -> Result<Bytes, CacheError> {
        self.get_with(source, index, Priority::OnDemand).await
    }

    /// Block `index` of `source` at `priority`.
    pub async fn get_with(
        &self,
        source: &DynSource,
        index: u64,
        priority: Priority,
    ) -> Result<Bytes, CacheError> {
        let inner = &self.inner;
        let count = source.block_count();
        if index >= count {
            return Err(CacheError::OutOfRange { blob: source.id().into(), block: index, count });
        }
        let key = BlockKey { blob: source.id().into(), index };
        if let Some(data) = lock(&inner.mem).blocks.get(&key) {
            bump(&inner.counters.hits_memory, 1);
            ::metrics::counter!(m::CACHE_HIT_MEMORY).increment(1);
            return Ok(data.clone());
        }
        let mut rx = {
            let mut flights = lock(&inner.flights);
            match flights.get_mut(&key) {
                Some(flight) => {
                    if !flight.running {
                        flight.running = true;
                        bump(&inner.counters.promoted, 1);
                        self.spawn_fill(source.clone(), vec![index], priority);
                    } else {
                        bump(&inner.counters.joined, 1);
                    }
                    flight.tx.subscribe()
                }
                None => {
                    if let Some(data) = lock(&inner.mem).blocks.get(&key) {
                        bump(&inner.counters.hits_memory, 1);
                        return Ok(data.clone());
                    }
                    let (tx, rx) = watch::channel(None);
                    flights.insert(key, Flight { tx, running: true });
                    self.spawn_fill(source.clone(), vec![index], priority);
                    rx
                }
            }
        };
        wait(&mut rx, source.id(), index).await
    }

    /// Blocks `blocks` of `source`, for a reader that waits for all of them: cached ones come
    /// from memory, ones under way are joined (queued prefetch is promoted), and the others are
    /// fetched on demand in one fill, so the source sees consecutive misses as one run (one
    /// request), not one call per block. The first failure is returned.
    pub async fn get_many(
        &self,
        source: &DynSource,
        blocks: std::ops::Range<u64>,
    ) -> Result<Vec<Bytes>, CacheError> {
        let inner = &self.inner;
        let count = source.block_count();
        if blocks.end > count {
            let block = blocks.end - 1;
            return Err(CacheError::OutOfRange { blob: source.id().into(), block, count });
        }
        let blob: Arc<str> = source.id().into();
        let mut slots: Vec<Result<Bytes, watch::Receiver<Outcome>>> = Vec::new();
        let mut to_fill = Vec::new();
        {
            let mut flights = lock(&inner.flights);
            for index in blocks.clone() {
                let key = BlockKey { blob: blob.clone(), index };
                if let Some(data) = lock(&inner.mem).blocks.get(&key) {
                    bump(&inner.counters.hits_memory, 1);
                    ::metrics::counter!(m::CACHE_HIT_MEMORY).increment(1);
                    slots.push(Ok(data.clone()));
                    continue;
                }
                match flights.get_mut(&key) {
                    Some(flight) => {
                        if flight.running {
                            bump(&inner.counters.joined, 1);
                        } else {
                            flight.running = true;
                            bump(&inner.counters.promoted, 1);
                            to_fill.push(index);
                        }
                        slots.push(Err(flight.tx.subscribe()));
                    }
                    None => {
                        let (tx, rx) = watch::channel(None);
                        flights.insert(key, Flight { tx, running: true });
                        to_fill.push(index);
                        slots.push(Err(rx));
                    }
                }
            }
        }
        if !to_fill.is_empty() {
            self.spawn_fill(source.clone(), to_fill, Priority::OnDemand);
        }
        let mut out = Vec::with_capacity(slots.len());
        for (index, slot) in blocks.zip(slots) {
            out.push(match slot {
                Ok(data) => data,
                Err(mut rx) => wait(&mut rx, source.id(), index).await?,
            });
        }
        Ok(out)
    }

    /// Queues `blocks` of `source` for prefetch at `priority` and waits until each is cached or
    /// failed; the first failure is returned. Blocks already cached (in memory or on disk) or
    /// under way are not fetched again. Dropping the future does not cancel the queued work.
    pub async fn prefetch(
        &self,
        source: &DynSource,
        blocks: std::ops::Range<u64>,
        priority: Priority,
    ) -> Result<(), CacheError> {
        let mut waiting = self.enqueue(source, blocks, priority);
        let mut first_error = None;
        for (index, rx) in &mut waiting {
            if let Err(e) = wait(rx, source.id(), *index).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Queues `blocks` of `source` for prefetch without waiting.
    pub fn spawn_prefetch(
        &self,
        source: &DynSource,
        blocks: std::ops::Range<u64>,
        priority: Priority,
    ) {
        drop(self.enqueue(source, blocks, priority));
    }

    /// Readies `blocks` of `source` for a sequential reader, without waiting: those the disk
    /// tier holds are opened and their bytes read into the kernel's page cache
    /// ([`DiskTier::warm`], on a blocking thread), so that the reader's next 128 KiB requests
    /// are answered on the FUSE thread ([`Self::load_disk_ranges_now`]) with nothing copied
    /// into the memory tier, which would cost the daemon resident memory for bytes the page
    /// cache holds anyway; the rest, if `fetch`, are queued at [`Priority::Background`] to be
    /// fetched.
    pub fn spawn_readahead(&self, source: &DynSource, blocks: std::ops::Range<u64>, fetch: bool) {
        let blocks = blocks.start..blocks.end.min(source.block_count());
        if let Some(tier) = self.inner.disk.clone() {
            let blob: Arc<str> = source.id().into();
            let on_disk: Vec<(disk::DiskKey, u64)> = {
                let mem = lock(&self.inner.mem);
                blocks
                    .clone()
                    .filter(|&index| !mem.blocks.contains(&BlockKey { blob: blob.clone(), index }))
                    .map(|i| (disk::disk_key(&blob, i), i))
                    .filter(|(key, _)| tier.contains(key))
                    .collect()
            };
            if !on_disk.is_empty() {
                let inner = self.inner.clone();
                drop(self.inner.runtime.spawn_blocking(move || {
                    for (key, index) in on_disk {
                        if let Err(why) = tier.warm(&key, index) {
                            note_corrupt(&inner, &blob, index, &why);
                        }
                    }
                }));
            }
        }
        if fetch {
            drop(self.enqueue(source, blocks, Priority::Background));
        }
    }

    /// Queues the blocks of `blocks` that are in neither tier nor in flight; gives a receiver
    /// for each block in flight or queued.
    fn enqueue(
        &self,
        source: &DynSource,
        blocks: std::ops::Range<u64>,
        priority: Priority,
    ) -> Vec<(u64, watch::Receiver<Outcome>)> {
        let inner = &self.inner;
        let blocks = blocks.start..blocks.end.min(source.block_count());
        let blob: Arc<str> = source.id().into();
        let mut waiting = Vec::new();
        let mut queued = Vec::new();
        {
            let mut flights = lock(&inner.flights);
            for index in blocks {
                let key = BlockKey { blob: blob.clone(), index };
                if let Some(flight) = flights.get(&key) {
                    waiting.push((index, flight.tx.subscribe()));
                } else if !lock(&inner.mem).blocks.contains(&key)
                    && !inner
                        .disk
                        .as_ref()
                        .is_some_and(|d| d.contains(&disk::disk_key(&blob, index)))
                {
                    // Not in memory and not on disk (a block on disk is local already: a
                    // replay would only copy it into memory, where readers do not need it).
                    let (tx, rx) = watch::channel(None);
                    flights.insert(key, Flight { tx, running: false });
                    waiting.push((index, rx));
                    queued.push(index);
                }
            }
        }
        if !queued.is_empty() {
            let priority = priority.max(Priority::Replay);
            inner.queue.push(Job { source: source.clone(), blocks: queued, priority });
        }
        waiting
    }

    /// Drops block `index` of `blob` from the memory tier, for a filesystem that knows its
    /// readers are done with it (the disk tier keeps its copy). Returns whether it was there.
    pub fn release(&self, blob: &str, index: u64) -> bool {
        let key = BlockKey { blob: blob.into(), index };
        let mut mem = lock(&self.inner.mem);
        match mem.blocks.pop(&key) {
            Some(data) => {
                mem.bytes -= data.len() as u64;
                bump(&self.inner.counters.released, 1);
                true
            }
            None => false,
        }
    }

    /// Cancels the prefetch of `blob` that has not started yet, for a filesystem whose last
    /// reader of the blob went away. Queued blocks complete with [`CacheError::Abandoned`] for
    /// whoever waits on the prefetch, and the workers skip them; fetches already running finish.
    /// A later `get` or prefetch of such a block starts afresh. Returns how many were cancelled.
    pub fn cancel_queued(&self, blob: &str) -> usize {
        let mut cancelled = Vec::new();
        {
            let mut flights = lock(&self.inner.flights);
            flights.retain(|key, flight| {
                let drop = !flight.running && &*key.blob == blob;
                if drop {
                    cancelled.push((key.index, flight.tx.clone()));
                }
                !drop
            });
        }
        for (index, tx) in &cancelled {
            let err = CacheError::Abandoned { blob: blob.to_string(), block: *index };
            tx.send_replace(Some(Err(err)));
        }
        bump(&self.inner.counters.cancelled, cancelled.len() as u64);
        cancelled.len()
    }

    /// Whether block `index` of the blob `blob` is in the memory or disk tier.
    pub fn contains(&self, blob: &str, index: u64) -> bool {
        let key = BlockKey { blob: blob.into(), index };
        lock(&self.inner.mem).blocks.contains(&key)
            || self.inner.disk.as_ref().is_some_and(|d| d.contains(&disk::disk_key(blob, index)))
    }

    /// Bytes `within` each block `index` of `source`, from the disk tier alone, reading and
    /// checking only the chunks they fall in and leaving the memory tier alone (the kernel's page
    /// cache over the disk tier holds them): `None` for a block the disk does not have, or whose
    /// entry failed its check (removed; the caller then fetches it). One hop to a blocking
    /// thread for all of them. Counts disk hits.
    pub async fn load_disk_ranges(
        &self,
        source: &DynSource,
        wanted: Vec<(u64, std::ops::Range<usize>)>,
    ) -> Vec<Option<Bytes>> {
        let Some(tier) = self.inner.disk.clone() else { return vec![None; wanted.len()] };
        let blob: Arc<str> = source.id().into();
        let n = wanted.len();
        let blob2 = blob.clone();
        let loads = self
            .inner
            .runtime
            .spawn_blocking(move || {
                wanted
                    .into_iter()
                    .map(|(i, within)| (i, tier.load_range(&disk::disk_key(&blob2, i), i, within)))
                    .collect::<Vec<_>>()
            })
            .await;
        match loads {
            Ok(loads) => {
                loads.into_iter().map(|(i, load)| self.disk_loaded(&blob, i, load)).collect()
            }
            Err(_) => vec![None; n],
        }
    }

    /// [`Self::load_disk_ranges`] on the calling thread, without waiting on anything: only if
    /// every range is in an entry already open whose bytes are in the page cache
    /// ([`DiskTier::load_range_now`]). So a FUSE thread answers a warm read itself instead of
    /// handing it to a task and a blocking thread (two thread hops, most of a warm read's
    /// time). Hits are counted only when every range is served, since the blocking path loads
    /// and counts them again otherwise. `None`: not all of them now (a corrupt entry is removed
    /// and counted); take the blocking path.
    pub fn load_disk_ranges_now(
        &self,
        source: &DynSource,
        wanted: &[(u64, std::ops::Range<usize>)],
    ) -> Option<Vec<Bytes>> {
        let tier = self.inner.disk.as_ref()?;
        let blob = source.id();
        let mut got = Vec::with_capacity(wanted.len());
        for (i, within) in wanted {
            match tier.load_range_now(&disk::disk_key(blob, *i), *i, within.clone())? {
                disk::Load::Hit(data) => got.push(data),
                other => {
                    let _ = self.disk_loaded(blob, *i, other);
                    return None;
                }
            }
        }
        self.count_disk_hits(got.len() as u64);
        Some(got)
    }

    fn count_disk_hits(&self, n: u64) {
        bump(&self.inner.counters.hits_disk, n);
        ::metrics::counter!(m::CACHE_HIT_DISK).increment(n);
    }

    /// Counts one disk-tier load and gives its bytes (`None`: missed, or corrupt and removed).
    fn disk_loaded(&self, blob: &str, index: u64, load: disk::Load) -> Option<Bytes> {
        match load {
            disk::Load::Hit(data) => {
                self.count_disk_hits(1);
                Some(data)
            }
            disk::Load::Corrupt(why) => {
                note_corrupt(&self.inner, blob, index, &why);
                None
            }
            disk::Load::Miss => None,
        }
    }

    /// Fetches running now (joined readers count once; queued prefetch not at all).
    pub fn fetches_running(&self) -> usize {
        lock(&self.inner.flights).values().filter(|f| f.running).count()
    }

    /// Fetches running or queued now (blocks; joined readers count once): 0 once everything
    /// asked for has been fetched, failed or cancelled.
    pub fn fetches_pending(&self) -> usize {
        lock(&self.inner.flights).len()
    }

    /// Counters so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits_memory: get(&c.hits_memory),
            hits_disk: get(&c.hits_disk),
            joined: get(&c.joined),
            promoted: get(&c.promoted),
            fetched_demand: get(&c.fetched[0]),
            fetched_replay: get(&c.fetched[1]),
            fetched_background: get(&c.fetched[2]),
            bytes_demand: get(&c.bytes[0]),
            bytes_replay: get(&c.bytes[1]),
            bytes_background: get(&c.bytes[2]),
            fetch_calls: get(&c.fetch_calls),
            fetch_errors: get(&c.fetch_errors),
            corrupt: get(&c.corrupt),
            released: get(&c.released),
            cancelled: get(&c.cancelled),
            memory_bytes: lock(&self.inner.mem).bytes,
            disk_bytes: self.inner.disk.as_ref().map_or(0, |d| d.bytes()),
            disk_written: self.writer_count(|w| &w.written),
            disk_dropped: self.writer_count(|w| &w.dropped),
            disk_failed: self.writer_count(|w| &w.failed),
            disk_unusable: self.inner.disk_unusable.clone(),
        }
    }

    fn writer_count(&self, f: impl Fn(&disk::WriterCounters) -> &AtomicU64) -> u64 {
        self.inner.writer.as_ref().map_or(0, |w| f(w.counters()).load(Ordering::Relaxed))
    }

    /// Waits until every block queued for the disk tier so far is written (or dropped).
    pub fn flush_disk(&self) {
        if let Some(w) = &self.inner.writer {
            w.flush();
        }
    }

    /// Block `index` of `source` if it is in the memory tier (counted as a hit).
    pub fn peek(&self, source: &DynSource, index: u64) -> Option<Bytes> {
        let key = BlockKey { blob: source.id().into(), index };
        let found = lock(&self.inner.mem).blocks.get(&key).cloned();
        if found.is_some() {
            bump(&self.inner.counters.hits_memory, 1);
            ::metrics::counter!(m::CACHE_HIT_MEMORY).increment(1);
        }
        found
    }

    /// Blocks `blocks` of `source` if every one is in the memory tier (counted as hits), else
    /// `None` (nothing counted): the answer a FUSE thread may give without waiting on anything.
    pub fn peek_many(
        &self,
        source: &DynSource,
        blocks: std::ops::Range<u64>,
    ) -> Option<Vec<Bytes>> {
        if blocks.end > source.block_count() {
            return None;
        }
        let blob: Arc<str> = source.id().into();
        let found: Option<Vec<Bytes>> = {
            let mut mem = lock(&self.inner.mem);
            blocks
                .map(|index| mem.blocks.get(&BlockKey { blob: blob.clone(), index }).cloned())
                .collect()
        };
        if let Some(found) = &found {
            bump(&self.inner.counters.hits_memory, found.len() as u64);
            ::metrics::counter!(m::CACHE_HIT_MEMORY).increment(found.len() as u64);
        }
        found
    }

    /// The disk tier, if there is one.
    pub fn disk(&self) -> Option<&DiskTier> {
        self.inner.disk.as_deref()
    }

    fn spawn_fill(&self, source: DynSource, blocks: Vec<u64>, priority: Priority) {
        let inner = self.inner.clone();
        self.inner.runtime.spawn(async move { fill(&inner, source, blocks, priority).await });
    }
}

async fn wait(
    rx: &mut watch::Receiver<Outcome>,
    blob: &str,
    block: u64,
) -> Result<Bytes, CacheError> {
    match rx.wait_for(Option::is_some).await {
        Ok(outcome) => match &*outcome {
            Some(result) => result.clone(),
            None => Err(CacheError::Abandoned { blob: blob.into(), block }),
        },
        Err(_) => Err(CacheError::Abandoned { blob: blob.into(), block }),
    }
}

async fn prefetch_worker(inner: Weak<Inner>, queue: Arc<Queue>) {
    while let Some(job) = queue.pop().await {
        let Some(inner) = inner.upgrade() else { return };
        let blob: Arc<str> = job.source.id().into();
        let claimed: Vec<u64> = {
            let mut flights = lock(&inner.flights);
            job.blocks
                .into_iter()
                .filter(|&index| {
                    let key = BlockKey { blob: blob.clone(), index };
                    match flights.get_mut(&key) {
                        Some(flight) if !flight.running => {
                            flight.running = true;
                            true
                        }
                        _ => false, // promoted by a reader, or already done
                    }
                })
                .collect()
        };
        if !claimed.is_empty() {
            fill(&inner, job.source, claimed, job.priority).await;
        }
    }
}

/// Completes every flight it was given exactly once, including when dropped mid-way.
struct Completer<'a> {
    inner: &'a Inner,
    blob: Arc<str>,
    pending: Vec<u64>,
}

impl Completer<'_> {
    fn complete(&mut self, index: u64, result: Result<Bytes, CacheError>) {
        self.pending.retain(|&i| i != index);
        let key = BlockKey { blob: self.blob.clone(), index };
        if let Ok(data) = &result {
            lock(&self.inner.mem).insert(key.clone(), data.clone());
        }
        if let Some(flight) = lock(&self.inner.flights).remove(&key) {
            flight.tx.send_replace(Some(result));
        }
    }
}

impl Drop for Completer<'_> {
    fn drop(&mut self) {
        for index in std::mem::take(&mut self.pending) {
            let err = CacheError::Abandoned { blob: self.blob.to_string(), block: index };
            self.complete(index, Err(err));
        }
    }
}

/// Fills the claimed `blocks` (sorted) from the disk tier or the source and completes them.
async fn fill(inner: &Arc<Inner>, source: DynSource, blocks: Vec<u64>, priority: Priority) {
    let blob: Arc<str> = source.id().into();
    let mut done = Completer { inner, blob: blob.clone(), pending: blocks.clone() };
    let mut missing = blocks;
    if let Some(tier) = inner.disk.clone() {
        // Every block is tried, indexed or not: another daemon on the same directory may have
        // written it (a miss costs one failed open, next to a network fetch). One hop to a
        // blocking thread for all of them, each completed as soon as it is loaded, so a reader
        // of the first block of a long read-ahead does not wait for the last. The loader stops
        // at the first send after this future is dropped.
        let candidates = missing.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let blob2 = blob.clone();
        inner.runtime.spawn_blocking(move || {
            for i in candidates {
                if tx.send((i, tier.load(&disk::disk_key(&blob2, i), i))).is_err() {
                    return;
                }
            }
        });
        while let Some((index, load)) = rx.recv().await {
            match load {
                disk::Load::Hit(data) => {
                    bump(&inner.counters.hits_disk, 1);
                    ::metrics::counter!(m::CACHE_HIT_DISK).increment(1);
                    missing.retain(|&i| i != index);
                    done.complete(index, Ok(data));
                }
                disk::Load::Corrupt(why) => note_corrupt(inner, &blob, index, &why),
                disk::Load::Miss => {}
            }
        }
    }
    for run in runs(&missing) {
        fetch_run(inner, &source, &mut done, run, priority).await;
    }
}

/// Splits sorted block indexes into runs of consecutive ones.
fn runs(blocks: &[u64]) -> Vec<std::ops::Range<u64>> {
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some(run) if run.end == b => run.end += 1,
            _ => out.push(b..b + 1),
        }
    }
    out
}

async fn fetch_run(
    inner: &Arc<Inner>,
    source: &DynSource,
    done: &mut Completer<'_>,
    run: std::ops::Range<u64>,
    priority: Priority,
) {
    let c = &inner.counters;
    let lane = priority as usize;
    bump(&c.fetch_calls, 1);
    ::metrics::counter!(m::CACHE_MISS, "priority" => priority.label())
        .increment(run.end - run.start);
    let fetched = match source.fetch(run.clone()).await {
        Ok(blocks) if blocks.len() as u64 == run.end - run.start => Ok(blocks),
        Ok(blocks) => Err(CacheError::Malformed {
            blob: source.id().into(),
            block: run.start,
            message: format!("source returned {} blocks for {run:?}", blocks.len()),
        }),
        Err(e) => Err(e),
    };
    let blocks = match fetched {
        Ok(blocks) => blocks,
        Err(e) => {
            bump(&c.fetch_errors, run.end - run.start);
            tracing::warn!(blob = source.id(), blocks = ?run, error = %e, "block fetch failed");
            for index in run {
                done.complete(index, Err(e.clone()));
            }
            return;
        }
    };
    let checked = decode_and_verify(inner, source, run.clone(), blocks).await;
    for (index, result) in run.zip(checked) {
        let data = match result {
            Ok(data) => data,
            Err(err) => {
                if let CacheError::Corrupt { .. } = err {
                    bump(&c.corrupt, 1);
                    ::metrics::counter!(m::CACHE_CORRUPT, "tier" => "fetch").increment(1);
                    tracing::error!(error = %err, "fetched block failed verification");
                } else {
                    bump(&c.fetch_errors, 1);
                    tracing::warn!(error = %err, "fetched block could not be decoded");
                }
                done.complete(index, Err(err));
                continue;
            }
        };
        bump(&c.fetched[lane], 1);
        bump(&c.bytes[lane], data.len() as u64);
        ::metrics::counter!(m::FETCH_BYTES, "priority" => priority.label())
            .increment(data.len() as u64);
        if let Some(writer) = &inner.writer {
            // Off the request path: a dropped write costs a refetch later, never a read.
            writer.submit(disk::disk_key(source.id(), index), index, data.clone());
        }
        done.complete(index, Ok(data));
    }
}

/// Decodes each fetched block and checks it against its digest: once per block, on a blocking
/// thread when there is work to do (decompression or hashing), inline otherwise.
async fn decode_and_verify(
    inner: &Arc<Inner>,
    source: &DynSource,
    run: std::ops::Range<u64>,
    fetched: Vec<Bytes>,
) -> Vec<Result<Bytes, CacheError>> {
    let check = |source: &DynSource, run: std::ops::Range<u64>, fetched: Vec<Bytes>| {
        run.zip(fetched)
            .map(|(index, raw)| {
                let data = source.decode(index, raw)?;
                if let Some(expected) = source.block_digest(index) {
                    let actual = Digest::of(&data);
                    if actual != expected {
                        let blob = source.id().into();
                        return Err(CacheError::Corrupt { blob, block: index, expected, actual });
                    }
                }
                Ok(data)
            })
            .collect::<Vec<_>>()
    };
    if !source.decodes() && source.block_digest(run.start).is_none() {
        return check(source, run, fetched);
    }
    let (source2, run2) = (source.clone(), run.clone());
    match inner.runtime.spawn_blocking(move || check(&source2, run2, fetched)).await {
        Ok(checked) => checked,
        Err(e) => run
            .map(|block| {
                Err(CacheError::Malformed {
                    blob: source.id().into(),
                    block,
                    message: format!("decoding failed: {e}"),
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_gaps() {
        assert_eq!(runs(&[1, 2, 3, 5, 7, 8]), vec![1..4, 5..6, 7..9]);
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn memory_tier_holds_its_budget() {
        let mut tier = MemTier { blocks: LruCache::unbounded(), bytes: 0, budget: 10 };
        for i in 0..20 {
            tier.insert(BlockKey { blob: "b".into(), index: i }, Bytes::from(vec![0u8; 3]));
            assert!(tier.bytes <= 10);
        }
        assert_eq!(tier.blocks.len(), 3);
        tier.insert(BlockKey { blob: "b".into(), index: 99 }, Bytes::from(vec![0u8; 11]));
        assert_eq!(tier.blocks.len(), 3, "a block over the whole budget is not kept");
    }
}
