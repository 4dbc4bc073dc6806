//! [`CkptFs`]: the filesystem logic of a checkpoint mount, with no fuser types.
//!
//! ```text
//!   lookup/getattr/readdir ──► Dirs: one listing per directory (one level, HDFS list_status),
//!              made the first time something looks into that directory (the mount lists only
//!              its root before it is ready), trusted for metadata_ttl; stable inode numbers by
//!              path across refreshes
//!              └─ *_now (FUSE threads): the directory's listing held, whatever its age; a stale
//!                 one starts one refresh of that directory on the runtime and is served until
//!                 it lands. Waited for (on a task): a directory's first listing, and a fresh
//!                 one for a name a stale listing lacks (a file written since must not read as
//!                 missing).
//!   open  ──► stat (fresh, within the connect timeout) → pinned Version → StripeSource
//!              (shared by handles of that version); nothing is fetched yet
//!   read_now (FUSE thread, never waits) ─► window noted; every chunk under
//!              [offset, offset+size) in memory (BlockCache::peek_many) → the reply's bytes
//!              └─ else PendingRead ─► read_pending (a task): one of MISS_READS slots →
//!                 BlockCache::get_many (OnDemand: the missing chunks as one range read,
//!                 queued ones promoted) → one full-length reply
//!              └─ window: a handle whose reads continue one run for `sequential_after` bytes
//!                 gets chunks queued ahead (Background, stripe-sized jobs), as far ahead as
//!                 the run is long, capped at half the memory budget split over open handles;
//!                 a read away from the run starts a new one and drops what was queued;
//!                 a sure sequential window past the file's end queues the start of the next
//!                 file of the directory (same suffix, by name; `queue_next_file`)
//!              └─ a chunk every open handle has been served is released from memory at once,
//!                 and never queued for prefetch again
//!   warm (--prefetch GLOB, at mount) ─► matched files opened as for a handle, their chunks
//!              queued (Background) in read order within one window; see [`crate::warm`]
//!   release ─► handle dropped (its source stays while other handles or the cache need it);
//!              the last handle of a version cancels that version's queued prefetch
//! ```
//!
//! A directory of 10,000 files costs its first `ls` ten NameNode RPCs (1,000 names a page) and
//! nothing else: no other directory waits for it, and a mount over a deep tree is ready after
//! one listing of its root. Dot-names (temporary files of puts in progress) are hidden; files are
//! shown 0444 and directories 0555, the mount being read-only. Lock order: a directory's listing
//! lock (async) → `dirs` → `inodes`; `dirs`, `handles`, `sources` and a handle's `window` are
//! never held across an await.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use bootseer_common::cache::{BlockCache, CacheConfig, CacheStats, DynSource, Priority};
use bootseer_common::metrics::ReadOrigin;
use bootseer_common::store::hdfs::{HdfsStore, is_not_a_directory};
use bootseer_common::store::{Store, StoreError};
use bytes::Bytes;
use serde::Serialize;
use tokio::runtime::Handle;

use crate::config::CkptConfig;
use crate::error::CkptError;
use crate::stripe::{InflightBudget, StripeCounters, StripePlan, StripeSource, Version, bounded};

/// Inode number of the mount's root.
pub const ROOT_INO: u64 = 1;

/// What kind of entry an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Directory,
    /// A regular file.
    File,
}

/// Attributes of one entry, as the adapter turns them into a `FileAttr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// File or directory.
    pub kind: Kind,
    /// Length in bytes (0 for directories).
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Permission bits.
    pub perm: u16,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// File or directory.
    pub kind: Kind,
    /// Name within the directory.
    pub name: String,
}

/// What [`CkptFs::open`] hands back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The handle to pass to reads.
    pub fh: u64,
    /// Whether the kernel may keep pages cached from earlier opens (same version as before).
    pub keep_cache: bool,
}

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    size: u64,
    mtime: SystemTime,
}

/// One directory's listing, as the NameNode gave it (one level).
#[derive(Debug)]
struct Dir {
    fetched: Instant,
    /// Name → entry.
    entries: BTreeMap<String, Node>,
}

/// The listings of the directories the mount has been asked about, and who is fetching them.
#[derive(Debug, Default)]
struct Dirs {
    /// Directory path (relative, "" for the root) → its listing. A directory is listed the
    /// first time something looks into it, never before.
    listed: HashMap<String, Arc<Dir>>,
    /// Directories a background refresh is listing (one at a time each).
    refreshing: HashSet<String>,
    /// One lock per directory, held by the caller that lists it.
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// `name` in directory `dir` ("" for the root).
fn child_path(dir: &str, name: &str) -> String {
    match dir.is_empty() {
        true => name.to_string(),
        false => format!("{dir}/{name}"),
    }
}

/// `path`'s parent directory and name ("" and "" for the root).
fn split_path(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// `path` as errors and logs show it: "/" for the root.
fn display_path(path: &str) -> String {
    match path.is_empty() {
        true => "/".to_string(),
        false => path.to_string(),
    }
}

#[derive(Debug, Default)]
struct Inodes {
    by_path: HashMap<String, u64>,
    paths: Vec<String>,
}

impl Inodes {
    fn ino(&mut self, path: &str) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            return ino;
        }
        self.paths.push(path.to_string());
        let ino = self.paths.len() as u64; // the root, pushed first, gets 1
        self.by_path.insert(path.to_string(), ino);
        ino
    }
}

/// One handle's read pattern, which decides its prefetch.
#[derive(Debug, Default)]
struct Window {
    /// End of the furthest read of the current sequential run, in bytes.
    run_end: u64,
    /// Bytes the current run has advanced by (a re-read behind its end adds nothing).
    run_bytes: u64,
    /// Chunks before this index are queued (or were read) in this run.
    queued_end: u64,
    /// A read of this run started more than [`RUN_GAP`] past its end (bytes skipped).
    gapped: bool,
    /// The run in tensor-name order, for a `.safetensors` file whose header is read.
    key: crate::warm::KeyRun,
    /// Bytes of the next file in the directory queued for this run ([`CkptFs::queue_next_file`]).
    next_queued: u64,
}

/// How far behind the run's end a read may start and still belong to it: the kernel's
/// read-ahead sends a window's requests at once over several FUSE threads, so they arrive out
/// of order by up to that window.
const RUN_BEHIND: u64 = 8 << 20;
/// How far past the run's end a read may start and still continue it (requests of one
/// read-ahead window overtaking each other).
const RUN_AHEAD: u64 = 2 << 20;
/// How far past the run's end a read may start without its run counting as one that skipped
/// bytes: one FUSE read (the kernel's largest is 1 MiB) overtaking the one before it.
const RUN_GAP: u64 = 1 << 20;
/// How far a run must read on, skipping nothing, to be taken for a sequential reader (of a
/// `.safetensors` file whose header is known: this far past the end of its first tensor):
/// further than the kernel's read-ahead asks for after one pread (up to two windows of the
/// read-ahead, 4 MiB at most with `-o read_ahead=4M`, and the window it was in).
const SURE_SEQUENTIAL: u64 = 16 << 20;
/// How close to a tensor's first byte a read that starts a run must begin for the rest of the
/// tensor to be queued with it: the page the kernel rounds a pread's offset down to.
const TENSOR_START_SLACK: u64 = 4096;
/// The most of the next file in a directory a sequential reader's window queues past the end
/// of the file it reads ([`CkptFs::queue_next_file`]): four 8 MiB stripes cover the next
/// handle's open and ramp (header, then [`SURE_SEQUENTIAL`] before it gets its whole share),
/// and cost a rank that reads one shard only that much.
const NEXT_FILE_AHEAD: u64 = 32 << 20;

#[derive(Debug)]
struct OpenFile {
    /// The inode this handle was opened on.
    ino: u64,
    source: Arc<StripeSource>,
    dyn_source: DynSource,
    window: Mutex<Window>,
}

/// A read [`CkptFs::read_now`] could not answer from memory: finish it with
/// [`CkptFs::read_pending`].
#[derive(Debug)]
pub struct PendingRead {
    file: Arc<OpenFile>,
    /// The bytes to serve, already clamped at the pinned length (never empty).
    range: std::ops::Range<u64>,
}

/// What [`CkptFs::read_now`] made of a read.
#[derive(Debug)]
pub enum ReadNow {
    /// Answered without waiting: from memory, at EOF, or failed (a handle that is not open).
    Served(Result<Bytes, CkptError>),
    /// Needs chunks that are not in memory.
    Pending(PendingRead),
}

/// Counters of one mount, for its JSON summary.
#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    bytes_read: AtomicU64,
    stall_ns: AtomicU64,
    opens: AtomicU64,
    read_errors: AtomicU64,
    warm_files: AtomicU64,
    warm_bytes: AtomicU64,
    headers_indexed: AtomicU64,
    key_order_bytes: AtomicU64,
    tensor_rest_bytes: AtomicU64,
    next_file_bytes: AtomicU64,
    dirs_listed: AtomicU64,
}

/// What a mount did, written as JSON at unmount.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The HDFS directory mounted.
    pub source: String,
    /// Seconds since the mount started.
    pub uptime_secs: f64,
    /// File opens.
    pub opens: u64,
    /// Read requests served.
    pub reads: u64,
    /// Bytes returned to readers.
    pub bytes_read: u64,
    /// Reads that failed.
    pub read_errors: u64,
    /// Time reads spent waiting for stripes not yet cached (and for a slot to ask for them),
    /// in seconds, summed over reads (the kernel issues several at once, so this can exceed
    /// the wall time).
    pub stall_secs: f64,
    /// Range reads from HDFS (a chunk on demand, up to a stripe of chunks for prefetch).
    pub stripes_fetched: u64,
    /// Bytes fetched from HDFS.
    pub bytes_fetched: u64,
    /// `bytes_fetched / bytes_read`: 1.0 when every byte fetched was served once; more is read
    /// amplification (prefetch nobody read, chunk alignment), less is bytes served twice.
    pub fetched_per_served: f64,
    /// Stripe attempts that failed or stalled and were re-issued on a fresh reader.
    pub stripes_retried: u64,
    /// Of those, attempts re-issued because they passed the attempt timeout.
    pub stripes_reissued_slow: u64,
    /// Hedge reads started on a fresh reader because an attempt was slow.
    pub stripes_hedged: u64,
    /// Stripes whose bytes came from a hedge read (the first replica was the slow one).
    pub hedge_wins: u64,
    /// Moving average of one stripe attempt, in seconds.
    pub avg_stripe_secs: f64,
    /// Stripes that failed for good (their reads got EIO).
    pub stripes_failed: u64,
    /// Fresh readers opened after failures.
    pub readers_reopened: u64,
    /// Fetches refused because the file changed or vanished under an open handle.
    pub version_changed: u64,
    /// Files `--prefetch` matched and queued at mount.
    pub prefetched_at_mount_files: u64,
    /// Bytes of them queued at mount (within one reader's window of the budget).
    pub prefetched_at_mount_bytes: u64,
    /// `.safetensors` headers read (once per file version, at open or by `--prefetch`), for
    /// key-order prefetch.
    pub safetensors_headers_indexed: u64,
    /// Bytes of tensors queued ahead of key-order loaders (the next tensors by name).
    pub key_order_bytes_queued: u64,
    /// Bytes queued as the rest of a tensor whose first page a read began at (a loader's
    /// pread of one whole tensor), spread over every reader.
    pub tensor_rest_bytes_queued: u64,
    /// Bytes of the next file of a directory (by name, the same suffix) queued while a
    /// sequential reader's window ran past the end of the file before it (shards read one
    /// after another).
    pub next_file_bytes_queued: u64,
    /// Directory listings fetched from the NameNode (one level each: a directory is listed
    /// when something first looks into it, and again once its listing is older than the
    /// metadata TTL).
    pub dirs_listed: u64,
    /// The block cache's counters.
    pub cache: CacheStats,
    /// Wall-clock phases of this mount (host, kind, events), for `report`.
    pub timeline: bootseer_common::timeline::Timeline,
}

/// The filesystem logic of a checkpoint mount.
#[derive(Debug)]
pub struct CkptFs {
    store: HdfsStore,
    config: CkptConfig,
    cache: BlockCache,
    started: Instant,
    dirs: Mutex<Dirs>,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    /// Sources by id, so handles of one version share readers and stripes.
    sources: Mutex<HashMap<String, Weak<StripeSource>>>,
    /// The version each file inode was last opened at (decides keep-cache).
    last_open: Mutex<HashMap<u64, Version>>,
    stripes: Arc<StripeCounters>,
    /// Range reads in flight, against their part of the memory budget.
    inflight: Arc<InflightBudget>,
    /// Versions `--prefetch` opened at mount, kept so the job's open finds the warmed chunks.
    warm: Mutex<Vec<Arc<StripeSource>>>,
    counters: Arc<Counters>,
    /// The runtime the mount's tasks run on (background listing refreshes).
    runtime: Handle,
    /// Reads that missed memory and may wait on HDFS at once (see [`MISS_READS`]).
    miss_reads: tokio::sync::Semaphore,
    /// The file a sequential reader's window ran into past the end of the one before it
    /// ([`CkptFs::queue_next_file`]): its version is held open until a handle opens it (or the
    /// next such file replaces it), so that handle finds the chunks queued for it.
    next_file: Mutex<Option<(String, Arc<StripeSource>)>>,
    /// This filesystem, for tasks that read and prefetch in the background.
    me: Weak<CkptFs>,
}

/// Reads past memory that may run at once; more wait for a slot, holding nothing but their reply
/// handle, before they ask the cache. What a running one holds beyond the budget: the chunks it was
/// handed (≤ its length + 2 chunks; beyond the budget only once the cache has evicted them under
/// it) and its reply's copy (≤ its length, at most 1 MiB: the kernel's largest FUSE read). So
/// however many readers wait, these hold at most 64 × 2⅛ MiB (136 MiB, 64 KiB chunks) outside
/// `--memory`, and far less in practice: the 64-reader test measures the daemon's RSS under
/// `--memory 32M` and `256M`. 64: the mount's `max_background`, the read-ahead requests the kernel
/// keeps in flight, so a sequential reader's read-ahead is never held back by its own slots.
pub const MISS_READS: usize = 64;

/// Prefetch jobs for `chunks` (ascending): runs of consecutive chunks within one stripe of one
/// HDFS block (each becomes one range read), in the order the prefetch queue should fetch them:
/// round-robin over the HDFS blocks (1st stripe of each block, then the 2nd of each, …).
/// Fetched in file order, the `concurrency` stripes in flight would all lie in one block, whose
/// 3 replicas are 3 DataNodes however many the cluster has; interleaved, they reach the replicas
/// of several blocks. A reader waiting for a chunk does not wait for this order: its read
/// promotes it.
fn prefetch_jobs(
    plan: &StripePlan,
    chunks_per_stripe: u64,
    chunks: impl Iterator<Item = u64>,
) -> Vec<std::ops::Range<u64>> {
    let per_stripe = chunks_per_stripe.max(1);
    let block_size = plan.block_size.max(1);
    let chunk = plan.stripe_size.max(1);
    // (nth stripe of its block among the jobs, block, stripe within the block, chunks)
    let mut jobs: Vec<(u64, u64, u64, std::ops::Range<u64>)> = Vec::new();
    let mut per_block: HashMap<u64, u64> = HashMap::new();
    for i in chunks {
        let start = plan.range(i).start;
        let (block, stripe) = (start / block_size, (start % block_size) / chunk / per_stripe);
        match jobs.last_mut() {
            Some((_, b, s, run)) if *b == block && *s == stripe && run.end == i => run.end += 1,
            _ => {
                let nth = per_block.entry(block).or_default();
                jobs.push((*nth, block, stripe, i..i + 1));
                *nth += 1;
            }
        }
    }
    jobs.sort_unstable_by_key(|(nth, block, stripe, _)| (*nth, *block, *stripe));
    jobs.into_iter().map(|(_, _, _, run)| run).collect()
}

/// The first chunk of the stripe that holds chunk `index` (stripes are `stripe_size` bytes of
/// chunks from the start of each HDFS block); `plan.count()` at or past the end.
fn stripe_start(plan: &StripePlan, stripe_size: u64, index: u64) -> u64 {
    if index >= plan.count() {
        return plan.count();
    }
    let chunk = plan.stripe_size.max(1);
    let per_stripe = (stripe_size / chunk).max(1);
    let within = (plan.range(index).start % plan.block_size.max(1)) / chunk;
    index - within % per_stripe
}

/// The bytes `want` of a file from its consecutive chunks starting at chunk `first`: a slice
/// of one chunk when it holds them all, else one copy. A chunk shorter than the plan says is
/// an error, never short or shifted bytes.
fn assemble(
    plan: &StripePlan,
    first: u64,
    chunks: &[Bytes],
    want: std::ops::Range<u64>,
    blob: &str,
) -> Result<Bytes, CkptError> {
    let (offset, end) = (want.start, want.end);
    if let [only] = chunks {
        let base = plan.range(first).start;
        let (from, to) = ((offset - base) as usize, (end - base) as usize);
        if to <= only.len() {
            return Ok(only.slice(from..to));
        }
    }
    let mut out = Vec::with_capacity((end - offset) as usize);
    for (i, chunk) in (first..).zip(chunks) {
        let r = plan.range(i);
        let from = offset.max(r.start) - r.start;
        let to = end.min(r.end) - r.start;
        let piece = chunk.get(from as usize..to as usize).ok_or_else(|| {
            CkptError::Cache(bootseer_common::cache::CacheError::Malformed {
                blob: blob.to_string(),
                block: i,
                message: format!("chunk has {} bytes, expected {}", chunk.len(), r.end - r.start),
            })
        })?;
        out.extend_from_slice(piece);
    }
    Ok(Bytes::from(out))
}

/// The safetensors header of `source`'s version: read through `cache` the first time it is
/// asked for (one over `budget` bytes is not read), then kept with the version, so the mount's
/// prefetch and every handle share one read. A header that does not parse is asked for again
/// by the next open.
async fn tensor_index<'a>(
    cache: &BlockCache,
    counters: &Counters,
    source: &'a Arc<StripeSource>,
    budget: u64,
) -> Result<&'a crate::warm::TensorIndex, String> {
    let (plan, dyn_source): (&StripePlan, DynSource) = (source.plan(), source.clone());
    let dyn_source = &dyn_source;
    let read = |range: std::ops::Range<u64>| async move {
        let covering = plan.covering(range.clone());
        let first = covering.start;
        let chunks = cache.get_many(dyn_source, covering).await.map_err(|e| e.to_string())?;
        assemble(plan, first, &chunks, range, dyn_source.id()).map_err(|e| e.to_string())
    };
    let init = || async {
        if plan.len < 8 {
            return Err(format!("{} bytes, shorter than a safetensors length prefix", plan.len));
        }
        let len = crate::warm::header_len(&read(0..8).await?, plan.len)?;
        if 8 + len > budget {
            return Err(format!("a header of {len} bytes is more than the prefetch budget"));
        }
        let tensors = crate::warm::tensor_ranges(&read(8..8 + len).await?, plan.len)?;
        counters.headers_indexed.fetch_add(1, Ordering::Relaxed);
        Ok(crate::warm::TensorIndex::new(8 + len, &tensors))
    };
    source.tensors().get_or_try_init(init).await
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every section under these locks leaves its data consistent; a poisoned lock is used as is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CkptFs {
    /// A filesystem over `store` whose fetches run on `runtime` (the runtime the store was
    /// created on: hdfs-native's connection tasks live there).
    pub fn new(
        store: HdfsStore,
        config: CkptConfig,
        runtime: Handle,
    ) -> Result<Arc<Self>, CkptError> {
        let cache = BlockCache::new(
            CacheConfig {
                memory_bytes: config.cache_bytes(),
                disk_dir: None,
                disk_bytes: 0,
                prefetch_concurrency: config.concurrency.max(1),
            },
            runtime.clone(),
        )?;
        let inflight = Arc::new(InflightBudget::new(config.inflight_bytes()));
        let mut inodes = Inodes::default();
        inodes.ino("");
        Ok(Arc::new_cyclic(|me| Self {
            store,
            config,
            cache,
            started: Instant::now(),
            dirs: Mutex::new(Dirs::default()),
            inodes: Mutex::new(inodes),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            sources: Mutex::new(HashMap::new()),
            last_open: Mutex::new(HashMap::new()),
            stripes: Arc::new(StripeCounters::default()),
            inflight,
            warm: Mutex::new(Vec::new()),
            counters: Arc::default(),
            runtime,
            miss_reads: tokio::sync::Semaphore::new(MISS_READS),
            next_file: Mutex::new(None),
            me: me.clone(),
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &CkptConfig {
        &self.config
    }

    /// The shared block cache.
    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    /// The listing of directory `path` ("" for the root): the one held while it is younger than
    /// the metadata TTL, else a fresh one from the NameNode (one level, [`HdfsStore::list_dir`]).
    /// One caller lists a directory at a time; while it waits, the others are answered from the
    /// listing held (a slow NameNode then holds up one call per directory, not every one). When
    /// the NameNode cannot list it within the connect timeout, the listing held is served
    /// (logged) and trusted for another TTL, so while the NameNode is away one call per
    /// directory pays that timeout at most once per TTL. A directory the NameNode says is gone
    /// is forgotten.
    async fn dir(&self, path: &str) -> Result<Arc<Dir>, CkptError> {
        let held = || lock(&self.dirs).listed.get(path).cloned();
        let fresh = |d: &Option<Arc<Dir>>| d.as_ref().filter(|d| !self.is_stale(d)).cloned();
        let stale = held();
        if let Some(dir) = fresh(&stale) {
            return Ok(dir);
        }
        let gate = self.listing_lock(path);
        let _listing = match gate.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => match stale {
                Some(stale) => return Ok(stale),
                None => gate.lock_owned().await,
            },
        };
        let stale = held();
        if let Some(dir) = fresh(&stale) {
            return Ok(dir);
        }
        let limit = self.config.connect_timeout;
        match bounded(limit, "list", path, self.store.list_dir(path)).await {
            Ok(entries) => {
                let entries = entries
                    .into_iter()
                    .map(|e| {
                        let kind = if e.is_dir { Kind::Directory } else { Kind::File };
                        (e.name, Node { kind, size: e.len, mtime: e.mtime })
                    })
                    .collect();
                let dir = Arc::new(Dir { fetched: Instant::now(), entries });
                lock(&self.dirs).listed.insert(path.to_string(), dir.clone());
                self.counters.dirs_listed.fetch_add(1, Ordering::Relaxed);
                Ok(dir)
            }
            Err(StoreError::NotFound { .. }) => {
                lock(&self.dirs).listed.remove(path);
                Err(CkptError::NotFound(display_path(path)))
            }
            Err(e) if is_not_a_directory(&e) => Err(CkptError::NotADirectory(display_path(path))),
            Err(err) => match stale {
                Some(stale) => {
                    tracing::warn!(dir = %display_path(path), error = %err, "listing failed; serving the previous listing");
                    let entries = stale.entries.clone();
                    let kept = Arc::new(Dir { fetched: Instant::now(), entries });
                    lock(&self.dirs).listed.insert(path.to_string(), kept.clone());
                    Ok(kept)
                }
                None => Err(err.into()),
            },
        }
    }

    /// Checks that the mounted source is a directory the NameNode answers for, and lists it
    /// (its top level only), all within the connect timeout: what a mount does before it tells
    /// the kernel it is ready.
    pub async fn check_source(&self) -> Result<(), CkptError> {
        let url = self.store.url();
        let limit = self.config.connect_timeout;
        let check = async {
            match self.store.check_root().await {
                Ok(()) => {}
                Err(StoreError::NotFound { .. }) => {
                    return Err(CkptError::NotFound(format!("{url} (the HDFS directory)")));
                }
                Err(e) if is_not_a_directory(&e) => {
                    return Err(CkptError::NotADirectory(url.clone()));
                }
                Err(e) => return Err(e.into()),
            }
            self.dir("").await.map(|_| ())
        };
        match tokio::time::timeout(limit, check).await {
            Ok(result) => result,
            Err(_) => Err(CkptError::Store(StoreError::Timeout {
                op: "reaching the NameNode for",
                key: url.clone(),
                after: limit,
            })),
        }
    }

    fn path_of(&self, ino: u64) -> Result<String, CkptError> {
        let inodes = lock(&self.inodes);
        ino.checked_sub(1)
            .and_then(|i| inodes.paths.get(i as usize))
            .cloned()
            .ok_or_else(|| CkptError::NotFound(format!("inode {ino}")))
    }

    fn attr_of(&self, path: &str, node: &Node) -> Attr {
        let ino = lock(&self.inodes).ino(path);
        let perm = match node.kind {
            Kind::Directory => 0o555,
            Kind::File => 0o444,
        };
        Attr { ino, kind: node.kind, size: node.size, mtime: node.mtime, perm }
    }

    /// The listing of directory `path` the mount holds, whatever its age, for answers that must
    /// not wait on the NameNode: `None` when the directory has not been listed yet (then await
    /// [`CkptFs::dir`], on a task). A listing older than the metadata TTL starts one refresh of
    /// that directory on the runtime, and callers get this listing until that refresh lands
    /// (one that fails keeps it, see [`CkptFs::dir`]).
    fn known_dir(self: &Arc<Self>, path: &str) -> Option<Arc<Dir>> {
        let mut dirs = lock(&self.dirs);
        let dir = dirs.listed.get(path).cloned()?;
        if self.is_stale(&dir) && dirs.refreshing.insert(path.to_string()) {
            let (fs, path) = (self.clone(), path.to_string());
            self.runtime.spawn(async move {
                if let Err(e) = fs.dir(&path).await {
                    tracing::warn!(dir = %display_path(&path), error = %e, "listing refresh failed");
                }
                lock(&fs.dirs).refreshing.remove(&path);
            });
        }
        Some(dir)
    }

    /// The listing of `path`, no older than the metadata TTL: waits for a listing under way (or
    /// makes one). Only for a name the held listing lacks, which may have landed since.
    async fn fresh_dir(&self, path: &str) -> Result<Arc<Dir>, CkptError> {
        drop(self.listing_lock(path).lock().await);
        self.dir(path).await
    }

    /// The lock held by whoever lists directory `path`.
    fn listing_lock(&self, path: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.dirs).locks.entry(path.to_string()).or_default().clone()
    }

    fn is_stale(&self, dir: &Dir) -> bool {
        dir.fetched.elapsed() >= self.config.metadata_ttl
    }

    /// The path of directory `ino`; refused when the listing of its parent says it is a file.
    fn dir_path(&self, ino: u64) -> Result<String, CkptError> {
        let path = self.path_of(ino)?;
        let (parent, name) = split_path(&path);
        let dirs = lock(&self.dirs);
        match dirs.listed.get(parent).and_then(|d| d.entries.get(name)) {
            Some(node) if node.kind == Kind::File => Err(CkptError::NotADirectory(path)),
            _ => Ok(path),
        }
    }

    /// The entry `name` in directory `parent`. A name a listing older than the TTL lacks is
    /// looked up again in a fresh one (a file written since must not read as missing).
    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Attr, CkptError> {
        let dir = self.dir_path(parent)?;
        let listing = self.dir(&dir).await?;
        match self.entry_in(&listing, &dir, name) {
            Err(CkptError::NotFound(_)) if self.is_stale(&listing) => {
                self.entry_in(&*self.fresh_dir(&dir).await?, &dir, name)
            }
            found => found,
        }
    }

    /// [`CkptFs::lookup`] answered from the listing the mount holds, never waiting on HDFS;
    /// `None` when it cannot say (then await [`CkptFs::lookup`]): for a directory not listed
    /// yet, and for a name a listing older than the TTL lacks.
    pub fn lookup_now(
        self: &Arc<Self>,
        parent: u64,
        name: &str,
    ) -> Option<Result<Attr, CkptError>> {
        let dir = match self.dir_path(parent) {
            Ok(dir) => dir,
            Err(e) => return Some(Err(e)),
        };
        let listing = self.known_dir(&dir)?;
        match self.entry_in(&listing, &dir, name) {
            Err(CkptError::NotFound(_)) if self.is_stale(&listing) => None,
            found => Some(found),
        }
    }

    fn entry_in(&self, listing: &Dir, dir: &str, name: &str) -> Result<Attr, CkptError> {
        let path = child_path(dir, name);
        match listing.entries.get(name) {
            Some(node) => Ok(self.attr_of(&path, node)),
            None => Err(CkptError::NotFound(path)),
        }
    }

    /// The attributes of `path` from `parent`, the listing of its parent directory (the root's
    /// own for the root, which is a directory as new as the newest entry of its listing).
    fn attr_in(&self, parent: &Dir, path: &str) -> Result<Attr, CkptError> {
        if path.is_empty() {
            let newest = parent.entries.values().map(|n| n.mtime).max();
            let mtime = newest.unwrap_or(SystemTime::UNIX_EPOCH);
            return Ok(self.attr_of("", &Node { kind: Kind::Directory, size: 0, mtime }));
        }
        let (dir, name) = split_path(path);
        self.entry_in(parent, dir, name)
    }

    /// Attributes of `ino`; with the handle `fh` the kernel read through, the length and mtime
    /// that handle pinned (what its reads serve), whatever the listing says. Anything else comes
    /// from the listing of its parent.
    pub async fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr, CkptError> {
        let path = self.path_of(ino)?;
        if let Some(attr) = self.pinned_attr(&path, ino, fh) {
            return Ok(attr);
        }
        self.attr_in(&*self.dir(split_path(&path).0).await?, &path)
    }

    /// [`CkptFs::getattr`] answered from the pinned handle or the listing the mount holds,
    /// never waiting on HDFS; `None` when the parent has not been listed yet.
    pub fn getattr_now(
        self: &Arc<Self>,
        ino: u64,
        fh: Option<u64>,
    ) -> Option<Result<Attr, CkptError>> {
        let path = match self.path_of(ino) {
            Ok(path) => path,
            Err(e) => return Some(Err(e)),
        };
        if let Some(attr) = self.pinned_attr(&path, ino, fh) {
            return Some(Ok(attr));
        }
        Some(self.attr_in(&*self.known_dir(split_path(&path).0)?, &path))
    }

    fn pinned_attr(&self, path: &str, ino: u64, fh: Option<u64>) -> Option<Attr> {
        let file = fh.and_then(|fh| lock(&self.handles).get(&fh).cloned())?;
        if file.ino != ino {
            return None;
        }
        let v = file.source.version();
        Some(self.attr_of(path, &Node { kind: Kind::File, size: v.len, mtime: v.mtime }))
    }

    /// Entries of directory `ino` (without `.` and `..`), sorted by name.
    pub async fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, CkptError> {
        let dir = self.dir_path(ino)?;
        Ok(self.entries_of(&*self.dir(&dir).await?, &dir))
    }

    /// [`CkptFs::readdir`] answered from the listing the mount holds, never waiting on HDFS;
    /// `None` when the directory has not been listed yet.
    pub fn readdir_now(self: &Arc<Self>, ino: u64) -> Option<Result<Vec<DirEntry>, CkptError>> {
        let dir = match self.dir_path(ino) {
            Ok(dir) => dir,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(self.entries_of(&*self.known_dir(&dir)?, &dir)))
    }

    fn entries_of(&self, listing: &Dir, dir: &str) -> Vec<DirEntry> {
        let mut inodes = lock(&self.inodes);
        listing
            .entries
            .iter()
            .map(|(name, node)| {
                let ino = inodes.ino(&child_path(dir, name));
                DirEntry { ino, kind: node.kind, name: name.clone() }
            })
            .collect()
    }

    /// Opens file `ino`: pins its current version and plans its stripes. The NameNode calls
    /// share one connect timeout; when the NameNode does not answer, a version of this file that
    /// handles still hold open is opened again (its readers need no NameNode), else the open
    /// fails within that timeout.
    pub async fn open(&self, ino: u64) -> Result<Opened, CkptError> {
        let path = self.path_of(ino)?;
        if path.is_empty() {
            return Err(CkptError::IsADirectory("/".into()));
        }
        let deadline = Instant::now() + self.config.connect_timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let source = match bounded(left(), "stat", &path, self.store.file_info(&path)).await {
            Ok(info) => self.source_within(&path, &info, left()).await?,
            Err(StoreError::NotFound { .. }) => {
                let (parent, name) = split_path(&path);
                let listing = self.dir(parent).await?;
                return Err(match listing.entries.get(name).map(|n| n.kind) {
                    Some(Kind::Directory) => CkptError::IsADirectory(path),
                    _ => CkptError::NotFound(path),
                });
            }
            Err(e) if e.is_retryable() => match self.live_source(&path) {
                Some(source) => {
                    tracing::warn!(key = %path, error = %e, "NameNode unavailable; opening the version already open");
                    source
                }
                None => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        let version = source.version();
        source.handle_opened();
        {
            // A handle holds it now; the next sequential reader's spill may take the slot.
            let mut next = lock(&self.next_file);
            if next.as_ref().is_some_and(|(p, s)| *p == path && Arc::ptr_eq(s, &source)) {
                *next = None;
            }
        }
        let dyn_source: DynSource = source.clone();
        self.note_opened_version(&path, version);
        if self.config.key_order && path.ends_with(".safetensors") {
            self.index_tensors(&path, &source);
        }
        let file =
            Arc::new(OpenFile { ino, source, dyn_source, window: Mutex::new(Window::default()) });
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, file);
        self.counters.opens.fetch_add(1, Ordering::Relaxed);
        let keep_cache = lock(&self.last_open).insert(ino, version) == Some(version);
        Ok(Opened { fh, keep_cache })
    }

    /// An open saw `version` of `path`: where the listing says otherwise (the file was replaced
    /// within the metadata TTL), the listing takes the open's word, so a `stat` after this open
    /// shows the length its reads serve (the kernel cuts reads at the length it was told).
    fn note_opened_version(&self, path: &str, version: Version) {
        let (parent, name) = split_path(path);
        let mut dirs = lock(&self.dirs);
        let Some(listing) = dirs.listed.get(parent) else { return };
        let stale = listing.entries.get(name).is_some_and(|n| {
            n.kind == Kind::File && (n.size != version.len || n.mtime != version.mtime)
        });
        if stale {
            let mut entries = listing.entries.clone();
            let node = Node { kind: Kind::File, size: version.len, mtime: version.mtime };
            entries.insert(name.to_string(), node);
            let fresh = Dir { fetched: listing.fetched, entries };
            dirs.listed.insert(parent.to_string(), Arc::new(fresh));
            tracing::debug!(key = %path, len = version.len, "listing updated from an open");
        }
    }

    /// A version of `path` that open handles still hold, for opens while the NameNode is away.
    fn live_source(&self, path: &str) -> Option<Arc<StripeSource>> {
        let prefix = format!("{path}\0");
        lock(&self.sources)
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .find_map(|(_, source)| source.upgrade())
    }

    /// The source of `path` at the version `info` shows (shared with handles already on it),
    /// its readers opened within `within`.
    async fn source_within(
        &self,
        path: &str,
        info: &bootseer_common::store::hdfs::HdfsFileInfo,
        within: Duration,
    ) -> Result<Arc<StripeSource>, CkptError> {
        let version = Version { len: info.len, mtime: info.mtime };
        match tokio::time::timeout(within, self.source_for(path, version, info.block_size)).await {
            Ok(source) => source,
            Err(_) => {
                let after = self.config.connect_timeout;
                Err(StoreError::Timeout { op: "open", key: path.into(), after }.into())
            }
        }
    }

    async fn source_for(
        &self,
        path: &str,
        version: Version,
        block_size: u64,
    ) -> Result<Arc<StripeSource>, CkptError> {
        let plan = StripePlan::new(version.len, block_size, self.config.chunk());
        let wanted = |s: &Arc<StripeSource>| s.version() == version && *s.plan() == plan;
        let key = format!("{path}\0{version:?}");
        if let Some(source) = lock(&self.sources).get(&key).and_then(Weak::upgrade)
            && wanted(&source)
        {
            return Ok(source);
        }
        let source = StripeSource::open(
            self.store.clone(),
            path,
            version,
            block_size,
            &self.config,
            self.stripes.clone(),
            self.inflight.clone(),
        )
        .await?;
        let mut sources = lock(&self.sources);
        sources.retain(|_, s| s.strong_count() > 0);
        sources.insert(key, Arc::downgrade(&source));
        Ok(source)
    }

    /// Bytes one handle may prefetch ahead: the memory budget's prefetch half split over all
    /// open handles, so many open shards cannot queue more than the cache can hold (chunks
    /// prefetched only to be evicted unread).
    fn window_share(&self) -> u64 {
        let handles = self.open_handles().max(1) as u64;
        let stripes = (self.config.max_window() / handles)
            .max(self.config.initial_window.min(self.config.max_window()));
        stripes.saturating_mul(self.config.stripe_size)
    }

    /// Notes a read of `[offset, end)` on `file` and queues prefetch ahead of it when the
    /// handle reads in order. A read far from the current run starts a new one and stops the
    /// prefetch (queued chunks of the file are dropped when this is its only handle); once the
    /// run reached `sequential_after` bytes, chunks up to the window ahead of its end are
    /// queued. Chunks every reader has consumed are never queued again.
    ///
    /// A `.safetensors` handle whose header is read has a second run, in tensor-name order
    /// ([`crate::warm::KeyRun`]): once it shows a key-order loader, the window is the next
    /// tensors by name instead of the next bytes (as far ahead as the run is long, within the
    /// same share), and a jump in bytes that continues it stops nothing.
    fn advance_window(&self, file: &OpenFile, offset: u64, end: u64) {
        use crate::warm::KeyStep;
        let plan = file.source.plan();
        let share = self.window_share();
        let first = self.config.initial_window.saturating_mul(self.config.stripe_size);
        let index = file.source.tensors().get();
        let mut next = 0..0;
        let (range, tensors, rest, stopped) = {
            let mut w = lock(&file.window);
            let continues = w.run_bytes > 0
                && offset <= w.run_end.saturating_add(RUN_AHEAD)
                && end.saturating_add(RUN_BEHIND) > w.run_end;
            let byte_stopped = !continues && w.queued_end > plan.stripe_of(w.run_end);
            if continues {
                w.gapped |= offset > w.run_end.saturating_add(RUN_GAP);
                w.run_bytes += end.saturating_sub(w.run_end);
                w.run_end = w.run_end.max(end);
            } else {
                let (key, next_queued) = (std::mem::take(&mut w.key), w.next_queued);
                let run_bytes = end - offset;
                *w = Window {
                    run_end: end,
                    run_bytes,
                    queued_end: 0,
                    gapped: false,
                    key,
                    next_queued,
                };
            }
            let (mut key_order, mut key_stopped, mut tensors) = (false, false, 0..0);
            if let Some(index) = index {
                let was_key_order = w.key.is_key_order();
                // A step leaves the run as it was but for Continues (it may turn key order)
                // and Restarts (a key-order run that restarts is stopped).
                let step = w.key.step(index, offset, end, continues);
                key_order = w.key.is_key_order() && (step != KeyStep::Outside || continues);
                key_stopped = step == KeyStep::Restarts && was_key_order;
                if key_order && let Some(current) = w.key.current() {
                    let ahead = w.key.bytes.max(first).min(share);
                    let (mut last, mut lead) =
                        (current, index.range(current).end.saturating_sub(end));
                    while last + 1 < index.len() && lead < ahead {
                        last += 1;
                        let r = index.range(last);
                        lead += r.end - r.start;
                    }
                    tensors = w.key.queued.max(current)..last + 1;
                    w.key.queued = w.key.queued.max(last + 1);
                }
            }
            let range = if key_order || w.run_bytes < self.config.sequential_after {
                0..0
            } else {
                // With a known header, a run within one tensor (the header before it aside)
                // stops at its end: reading a tensor whole says nothing of the one that lies
                // after it (a rank picking its slice). A run no more than [`SURE_SEQUENTIAL`]
                // past its first tensor's end gets nothing more: the kernel's read-ahead reads
                // that far past a tensor read whole. A run further on that skipped no bytes is
                // a sequential reader's, sure enough to get its whole share at once.
                let run_start = w.run_end.saturating_sub(w.run_bytes);
                let last = w.run_end.saturating_sub(1);
                let (cap, sure) = match index {
                    Some(i) => match i.first_start_after(run_start.max(i.data_start())) {
                        Some(b) if b <= last && w.run_end - b > SURE_SEQUENTIAL => {
                            (None, !w.gapped)
                        }
                        Some(b) if b <= last => (Some(plan.stripe_of(w.run_end)), false),
                        _ => (i.at(last).map(|k| plan.covering(i.range(k)).end), false),
                    },
                    // Without an index, the same test without tensors: a run further than
                    // the kernel's read-ahead ever reaches that skipped nothing.
                    None => (None, !w.gapped && w.run_bytes > SURE_SEQUENTIAL),
                };
                // Otherwise as far ahead as the run is long: a sequential reader's window
                // doubles as it reads (to the whole file within its share), while a reader
                // that stops (a tensor read to its end) leaves at most its own length fetched
                // past it.
                let ahead = if sure { share } else { w.run_bytes.max(first).min(share) };
                // A sure window that runs past the file's end spills into the next file of the
                // directory (a loader reading shards one after another), up to
                // [`NEXT_FILE_AHEAD`] in whole stripes: enough to keep the links busy while the
                // next handle opens and ramps up, little for a rank that reads one shard only.
                if sure {
                    let stripe = self.config.stripe_size.max(1);
                    let over = w.run_end.saturating_add(ahead).saturating_sub(plan.len);
                    let want = over.min(NEXT_FILE_AHEAD.min(share)) / stripe * stripe;
                    if want > w.next_queued {
                        next = w.next_queued..want;
                        w.next_queued = want;
                    }
                }
                let start = w.queued_end.max(plan.stripe_of(w.run_end));
                let target = plan.stripe_of(w.run_end.saturating_add(ahead).min(plan.len));
                // Whole stripes only (but the last, and a tensor's end): a window that slides
                // by each read's length would otherwise queue read-sized jobs, one small range
                // read each.
                let stop = match cap {
                    Some(cap) if target >= cap => cap,
                    _ => stripe_start(plan, self.config.stripe_size, target),
                };
                w.queued_end = w.queued_end.max(stop);
                start..stop
            };
            // A read that starts a run at a tensor's first page (a loader's pread of one
            // tensor: `read_exact_at(buf, start)`) gets the rest of that tensor queued at once,
            // in spread-sized jobs that every reader takes a part of: the kernel would ask for
            // it one read-ahead request after another, each a round trip to one DataNode.
            // A run that merely crosses a tensor start (random preads, read-ahead spilling) does
            // not: only a read begun within a page of the start says "this tensor, whole".
            let mut rest = 0..0;
            if let Some(i) = index
                && !continues
                && !key_order
                && let Some(k) = i.begun_at(offset, TENSOR_START_SLACK)
            {
                let tensor = i.range(k);
                let tensor_end = tensor.end.min(end.saturating_add(share));
                rest = w.queued_end.max(plan.stripe_of(end))
                    ..plan.covering(tensor.start..tensor_end).end;
                w.queued_end = w.queued_end.max(rest.end);
            }
            (range, tensors, rest, (byte_stopped && !key_order) || key_stopped)
        };
        if stopped && file.source.handles() <= 1 && !self.is_warmed(&file.source) {
            let cancelled = self.cache.cancel_queued(file.dyn_source.id());
            tracing::debug!(source = file.dyn_source.id(), cancelled, "reads left the run");
        }
        let per_stripe = self.config.stripe_size / self.config.chunk();
        let queue = |chunks: &mut dyn Iterator<Item = u64>, per_job: u64| {
            self.queue_unconsumed(&file.source, &file.dyn_source, chunks, per_job);
        };
        if !range.is_empty() {
            queue(&mut range.into_iter(), per_stripe);
        }
        if !rest.is_empty() {
            self.counters.tensor_rest_bytes.fetch_add(
                plan.range(rest.end - 1).end - plan.range(rest.start).start,
                Ordering::Relaxed,
            );
            queue(&mut rest.into_iter(), (crate::stripe::SPREAD_MAX / self.config.chunk()).max(1));
        }
        // Tensor by tensor, in name order (the queue is FIFO).
        for k in tensors.filter_map(|k| index.map(|i| i.range(k))) {
            self.counters.key_order_bytes.fetch_add(k.end - k.start, Ordering::Relaxed);
            queue(&mut plan.covering(k), per_stripe);
        }
        if !next.is_empty()
            && let (Some(fs), Ok(path)) = (self.me.upgrade(), self.path_of(file.ino))
        {
            self.runtime.spawn(async move { fs.queue_next_file(&path, next).await });
        }
    }

    /// The file after `path` in its directory: the next name with the same suffix (`.bin`,
    /// `.safetensors`; or none) that is a file of some bytes, from the listing held.
    fn next_file_of(&self, path: &str) -> Option<String> {
        let (parent, name) = split_path(path);
        let suffix = |n: &str| n.rfind('.').map(|dot| n[dot..].to_string());
        let listing = lock(&self.dirs).listed.get(parent).cloned()?;
        listing
            .entries
            .range::<str, _>((std::ops::Bound::Excluded(name), std::ops::Bound::Unbounded))
            .find(|(n, node)| node.kind == Kind::File && node.size > 0 && suffix(n) == suffix(name))
            .map(|(n, _)| child_path(parent, n))
    }

    /// Queues `bytes` of the file after `path` in its directory ([`CkptFs::next_file_of`]) in
    /// the background, for a sequential reader whose window ran past `path`'s end: opened at
    /// its current version (held in `next_file` until a handle opens it), in file order. A
    /// file that cannot be opened is logged and left alone: its reader opens it as usual.
    async fn queue_next_file(&self, path: &str, bytes: std::ops::Range<u64>) {
        let Some(next) = self.next_file_of(path) else { return };
        let held =
            lock(&self.next_file).as_ref().filter(|(p, _)| *p == next).map(|(_, s)| s.clone());
        let source = match held {
            Some(source) => source,
            None => match self.open_current(&next).await {
                Ok(source) => {
                    *lock(&self.next_file) = Some((next.clone(), source.clone()));
                    source
                }
                Err(e) => {
                    tracing::debug!(key = %next, error = %e, "next file not prefetched");
                    return;
                }
            },
        };
        let plan = *source.plan();
        let mut chunks = plan.covering(bytes.start.min(plan.len)..bytes.end.min(plan.len));
        let per_stripe = self.config.stripe_size / self.config.chunk();
        let dyn_source: DynSource = source.clone();
        let queued = self.queue_unconsumed(&source, &dyn_source, &mut chunks, per_stripe);
        self.counters.next_file_bytes.fetch_add(queued, Ordering::Relaxed);
        tracing::debug!(after = %path, key = %next, queued, "next file queued");
    }

    /// Queues `chunks` of `source` for prefetch (Background) in jobs of at most `per_job` chunks
    /// ([`prefetch_jobs`]), leaving out chunks every handle has consumed. Returns the bytes queued.
    fn queue_unconsumed(
        &self,
        source: &StripeSource,
        dyn_source: &DynSource,
        chunks: &mut dyn Iterator<Item = u64>,
        per_job: u64,
    ) -> u64 {
        let plan = source.plan();
        let mut queued = 0;
        for job in prefetch_jobs(plan, per_job, chunks.filter(|&i| !source.is_consumed(i))) {
            queued += plan.range(job.end - 1).end - plan.range(job.start).start;
            self.cache.spawn_prefetch(dyn_source, job, Priority::Background);
        }
        queued
    }

    /// The source of `path` at its current version, as an open makes it (stat, then its
    /// readers), within one connect timeout each: for opens the mount makes on its own
    /// (`--prefetch`, the next file of a spill).
    async fn open_current(&self, path: &str) -> Result<Arc<StripeSource>, CkptError> {
        let limit = self.config.connect_timeout;
        let info = bounded(limit, "stat", path, self.store.file_info(path)).await?;
        self.source_within(path, &info, limit).await
    }

    /// Reads up to `size` bytes at `offset` of handle `fh`: full length unless at EOF.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, CkptError> {
        self.read_with_origin(fh, offset, size).await.0
    }

    /// [`CkptFs::read`], also saying where the bytes came from: [`ReadOrigin::Memory`] when
    /// every stripe it needed was held, [`ReadOrigin::Demand`] when it waited on HDFS (or
    /// failed before knowing).
    pub async fn read_with_origin(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> (Result<Bytes, CkptError>, ReadOrigin) {
        match self.read_now(fh, offset, size) {
            ReadNow::Served(result) => {
                let origin = if result.is_ok() { ReadOrigin::Memory } else { ReadOrigin::Demand };
                (result, origin)
            }
            ReadNow::Pending(pending) => (self.read_pending(pending).await, ReadOrigin::Demand),
        }
    }

    /// The part of a read that never waits, for a FUSE thread: notes the read in the handle's
    /// window (which may queue prefetch) and answers it when every chunk it covers is in
    /// memory, or it is at EOF, or the handle is not open. Otherwise hands back the read, for
    /// [`CkptFs::read_pending`] on the runtime.
    pub fn read_now(&self, fh: u64, offset: u64, size: u32) -> ReadNow {
        let Some(file) = lock(&self.handles).get(&fh).cloned() else {
            return ReadNow::Served(self.count_read(Err(CkptError::BadHandle(fh))));
        };
        let plan = *file.source.plan();
        let end = offset.saturating_add(u64::from(size)).min(plan.len);
        if offset >= end {
            return ReadNow::Served(self.count_read(Ok(Bytes::new())));
        }
        self.advance_window(&file, offset, end);
        let covering = plan.covering(offset..end);
        match self.cache.peek_many(&file.dyn_source, covering.clone()) {
            Some(chunks) => {
                let served = self.serve(&file, covering.start, &chunks, offset..end);
                ReadNow::Served(self.count_read(served))
            }
            None => ReadNow::Pending(PendingRead { file, range: offset..end }),
        }
    }

    /// Finishes a read [`CkptFs::read_now`] could not answer: waits for one of [`MISS_READS`]
    /// slots, then for the chunks (cached ones from memory, the rest fetched on demand as one
    /// range read, queued ones promoted). Full length or an error.
    pub async fn read_pending(&self, pending: PendingRead) -> Result<Bytes, CkptError> {
        let PendingRead { file, range } = pending;
        let started = Instant::now();
        // Never closed; a closed semaphore would only mean no bound, not a failed read.
        let _slot = self.miss_reads.acquire().await.ok();
        let plan = *file.source.plan();
        let covering = plan.covering(range.clone());
        let fetched = self.cache.get_many(&file.dyn_source, covering.clone()).await;
        self.counters.stall_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let served = match fetched {
            Ok(chunks) => self.serve(&file, covering.start, &chunks, range),
            Err(e) => Err(e.into()),
        };
        self.count_read(served)
    }

    /// The bytes `want` from `file`'s chunks starting at chunk `first`; chunks every handle
    /// has now been served are released from memory.
    fn serve(
        &self,
        file: &OpenFile,
        first: u64,
        chunks: &[Bytes],
        want: std::ops::Range<u64>,
    ) -> Result<Bytes, CkptError> {
        let plan = file.source.plan();
        let blob = file.dyn_source.id();
        for i in first..first + chunks.len() as u64 {
            let r = plan.range(i);
            if file.source.consumed(i, want.end.min(r.end) - want.start.max(r.start)) {
                self.cache.release(blob, i);
            }
        }
        assemble(plan, first, chunks, want, blob)
    }

    fn count_read(&self, result: Result<Bytes, CkptError>) -> Result<Bytes, CkptError> {
        match &result {
            Ok(bytes) => {
                self.counters.reads.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters.read_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Queues the files that match `config.prefetch` for fetching, without waiting for them:
    /// matched paths in order, each from its start (a `.safetensors` file: its header, then its
    /// tensors in name order), until one reader's window of the budget is taken. A file that
    /// cannot be opened is logged and skipped. Returns the files and bytes queued.
    pub async fn warm(&self) -> (u64, u64) {
        if self.config.prefetch.is_empty() {
            return (0, 0);
        }
        // Only the directories the patterns can reach are walked (recursively, once each: no
        // prefix left lies under another, so no path is listed twice).
        let mut prefixes: Vec<String> =
            self.config.prefetch.iter().map(|g| crate::warm::glob_prefix(g)).collect();
        prefixes.sort();
        prefixes.dedup_by(|later, earlier| later.starts_with(earlier.as_str()));
        let mut paths = Vec::new();
        for prefix in &prefixes {
            let limit = self.config.connect_timeout;
            match bounded(limit, "list", prefix, self.store.list(prefix)).await {
                Ok(listing) => paths.extend(listing.into_iter().map(|m| m.key).filter(|path| {
                    self.config.prefetch.iter().any(|g| crate::warm::glob_match(g, path))
                })),
                Err(e) => tracing::warn!(prefix, error = %e, "prefetch at mount: listing failed"),
            }
        }
        paths.sort();
        let mut budget = self.config.max_window().saturating_mul(self.config.stripe_size);
        let (mut files, mut bytes) = (0, 0);
        for path in paths {
            if budget == 0 {
                break;
            }
            match self.warm_file(&path, budget).await {
                Ok(queued) => {
                    (files, bytes, budget) = (files + 1, bytes + queued, budget - queued);
                    // Counted as each file is queued: a summary written meanwhile shows it.
                    self.counters.warm_files.fetch_add(1, Ordering::Relaxed);
                    self.counters.warm_bytes.fetch_add(queued, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(key = %path, error = %e, "prefetch at mount: skipped"),
            }
        }
        tracing::info!(files, bytes, "prefetch at mount queued");
        (files, bytes)
    }

    /// Opens `path` at its current version and queues up to `budget` bytes of it.
    async fn warm_file(&self, path: &str, budget: u64) -> Result<u64, CkptError> {
        let source = self.open_current(path).await?;
        let dyn_source: DynSource = source.clone();
        let plan = *source.plan();
        let whole: Vec<std::ops::Range<u64>> = std::iter::once(0..plan.len).collect();
        let order = match path.ends_with(".safetensors") {
            true => match tensor_index(&self.cache, &self.counters, &source, budget).await {
                Ok(index) => index.read_order(),
                Err(why) => {
                    tracing::warn!(key = %path, why, "not a readable safetensors header; warming from the start");
                    whole
                }
            },
            false => whole,
        };
        let (chunks, bytes) = crate::warm::chunks_in_order(&order, &plan, budget);
        // Queued range by range in read order (the queue is FIFO): the tensor a loader reads
        // first is fetched first; within a range, jobs interleave over its HDFS blocks.
        let mut left: std::collections::HashSet<u64> =
            chunks.into_iter().filter(|&i| !self.cache.contains(dyn_source.id(), i)).collect();
        let per_stripe = self.config.stripe_size / self.config.chunk();
        for range in &order {
            if left.is_empty() {
                break;
            }
            let group: Vec<u64> = plan.covering(range.clone()).filter(|i| left.remove(i)).collect();
            for job in prefetch_jobs(&plan, per_stripe, group.into_iter()) {
                self.cache.spawn_prefetch(&dyn_source, job, Priority::Background);
            }
        }
        lock(&self.warm).push(source);
        Ok(bytes)
    }

    /// Reads the header of `source`'s version in the background unless it is known already,
    /// for key-order prefetch ([`CkptFs::advance_window`]). A loader reads the header first,
    /// so this fetches nothing it would not (the loader's own read joins the same fetch); a
    /// header larger than one handle's window, or one that does not parse, leaves handles
    /// with their byte windows alone.
    fn index_tensors(&self, path: &str, source: &Arc<StripeSource>) {
        if source.tensors().initialized() {
            return;
        }
        let (cache, counters) = (self.cache.clone(), self.counters.clone());
        let (source, key, budget) = (source.clone(), path.to_string(), self.window_share());
        self.runtime.spawn(async move {
            if let Err(why) = tensor_index(&cache, &counters, &source, budget).await {
                tracing::debug!(key, why, "no key-order prefetch");
            }
        });
    }

    /// Closes handle `fh`. The last handle of a version cancels its prefetch that has not
    /// started, so a loader that stops early does not keep DataNodes busy for nothing.
    pub fn release(&self, fh: u64) -> Result<(), CkptError> {
        let file = lock(&self.handles).remove(&fh).ok_or(CkptError::BadHandle(fh))?;
        if file.source.handle_closed() == 0 && !self.is_warmed(&file.source) {
            let cancelled = self.cache.cancel_queued(file.dyn_source.id());
            if cancelled > 0 {
                tracing::debug!(source = file.dyn_source.id(), cancelled, "last handle closed");
            }
        }
        Ok(())
    }

    /// Whether `source` was queued by `--prefetch` at mount: its queue is the operator's, not
    /// one handle's, so a handle's jump or close does not cancel it (a loader's metadata probe
    /// opens and closes before the load; a key-order loader jumps between tensors).
    fn is_warmed(&self, source: &Arc<StripeSource>) -> bool {
        lock(&self.warm).iter().any(|s| Arc::ptr_eq(s, source))
    }

    /// Number of open handles.
    pub fn open_handles(&self) -> usize {
        lock(&self.handles).len()
    }

    /// Files and directories the mount has listed so far (the root and the entries of every
    /// directory looked into), for statfs: directories are listed lazily, so this grows as a
    /// job walks the tree.
    pub async fn entry_count(&self) -> Result<u64, CkptError> {
        self.dir("").await?;
        Ok(self.listed_entries())
    }

    /// [`CkptFs::entry_count`] without waiting on HDFS; `None` before the root is listed.
    pub fn entry_count_now(self: &Arc<Self>) -> Option<u64> {
        self.known_dir("")?;
        Some(self.listed_entries())
    }

    fn listed_entries(&self) -> u64 {
        1 + lock(&self.dirs).listed.values().map(|d| d.entries.len() as u64).sum::<u64>()
    }

    /// What the mount did so far.
    pub fn summary(&self) -> Summary {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stripes;
        Summary {
            source: self.store.url(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            opens: get(&self.counters.opens),
            reads: get(&self.counters.reads),
            bytes_read: get(&self.counters.bytes_read),
            read_errors: get(&self.counters.read_errors),
            stall_secs: Duration::from_nanos(get(&self.counters.stall_ns)).as_secs_f64(),
            stripes_fetched: get(&s.fetched),
            bytes_fetched: get(&s.bytes),
            fetched_per_served: match get(&self.counters.bytes_read) {
                0 => 0.0,
                read => get(&s.bytes) as f64 / read as f64,
            },
            stripes_retried: get(&s.retried),
            stripes_reissued_slow: get(&s.reissued_slow),
            stripes_hedged: get(&s.hedged),
            hedge_wins: get(&s.hedge_wins),
            avg_stripe_secs: Duration::from_nanos(get(&s.avg_attempt_ns)).as_secs_f64(),
            stripes_failed: get(&s.failed),
            readers_reopened: get(&s.reopened),
            version_changed: get(&s.version_changed),
            prefetched_at_mount_files: get(&self.counters.warm_files),
            prefetched_at_mount_bytes: get(&self.counters.warm_bytes),
            safetensors_headers_indexed: get(&self.counters.headers_indexed),
            key_order_bytes_queued: get(&self.counters.key_order_bytes),
            tensor_rest_bytes_queued: get(&self.counters.tensor_rest_bytes),
            next_file_bytes_queued: get(&self.counters.next_file_bytes),
            dirs_listed: get(&self.counters.dirs_listed),
            cache: self.cache.stats(),
            timeline: bootseer_common::timeline::global(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_order_takes_one_stripe_of_each_block_in_turn() {
        // Blocks of 4 chunks (the last block short), queued from the middle of block 0, one
        // chunk per stripe.
        let plan = StripePlan::new(4 * 1000 + 500, 1000, 250);
        let jobs = |per, chunks: std::ops::Range<u64>| -> Vec<(u64, u64)> {
            prefetch_jobs(&plan, per, chunks).into_iter().map(|r| (r.start, r.end)).collect()
        };
        let one: Vec<u64> = jobs(1, 2..18).into_iter().map(|(a, _)| a).collect();
        assert_eq!(one, vec![2, 4, 8, 12, 16, 3, 5, 9, 13, 17, 6, 10, 14, 7, 11, 15]);
        // Two chunks per stripe: jobs never cross a stripe or a block.
        assert_eq!(jobs(2, 1..11), vec![(1, 2), (4, 6), (8, 10), (2, 4), (6, 8), (10, 11)]);
        // Stripes of 2 chunks start at each block's chunk 0 and 2.
        let starts: Vec<u64> = (0..20).map(|i| stripe_start(&plan, 500, i)).collect();
        assert_eq!(
            starts,
            vec![0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12, 12, 14, 14, 16, 16, 18, 18]
        );
        // Every chunk exactly once, whatever the range, gaps included.
        for range in [0..0, 0..1, 0..18, 5..6, 7..13] {
            let mut got: Vec<u64> = prefetch_jobs(&plan, 3, range.clone().filter(|i| i % 5 != 1))
                .into_iter()
                .flatten()
                .collect();
            got.sort_unstable();
            assert_eq!(got, range.filter(|i| i % 5 != 1).collect::<Vec<_>>());
        }
    }
}
