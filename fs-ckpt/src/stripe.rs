//! [`StripeSource`]: one pinned version of one HDFS file, cut into chunks, as a
//! [`BlockSource`] for the shared [`BlockCache`](bootseer_common::cache::BlockCache).
//!
//! ```text
//!   cache.fetch(chunks a..b)
//!     └─ version check (at most once per metadata TTL, in a task beside the fetch: a changed
//!        file makes later fetches fail; a NameNode that does not answer delays none)
//!     └─ pieces: consecutive chunks of one HDFS block, at most a stripe each (one range read);
//!        up to `concurrency` pieces at once, one *attempt* at a time:
//!          slot    = the reader whose path to this HDFS block has the best measured
//!                    bytes/s per read in flight (see `choose_slot`); a small fetch
//!                    (≤ SPREAD_MAX: a FUSE read that missed, a tensor queued ahead) is cut into
//!                    SPREAD_PIECEs that wait for a free place on any reader and take the
//!                    least busy one (work stealing, see `spread_slot`)
//!          attempt = reader[slot].read_range_cut(piece)       (clamped at the pinned length;
//!                    │                                   packets land in chunk buffers)
//!                    └─ too slow (see below) → the same read on a fresh reader, again
//!                       while no byte comes (≤ MAX_HEDGES); first full reply wins
//!            ├─ full length                    → the chunks (a winning fresh reader takes
//!            │                                   the slot)
//!            └─ error / no bytes for           → backoff → fresh reader (open + verify version)
//!               attempt_timeout                  → again, until the deadline → EIO, and the
//!                                                piece's chunks fail at once for FAILED_MEMORY
//! ```
//!
//! The deadline is one per fetch call, and it counts from the mount's last received bytes
//! (see [`Deadline`]): `stripe_deadline` of silence from every DataNode fails a read, a read
//! that is slow because a herd shares the link does not (it is capped at `DEADLINE_CAP` ×).
//!
//! The hedge delay is `max(hedge_after, 4 × the mount's moving average stripe time)`, and an
//! attempt past it is hedged only if, at the pace its bytes arrive, it would not be done within
//! another half delay. Sooner, an attempt is hedged only if it crawls: no byte yet at a quarter
//! of `hedge_after`, or at `hedge_after` a pace that ends past twice the delay. So a link that
//! is merely busy (every stripe slow, bytes flowing) does not add to its own load, while a
//! stalled or crawling DataNode (one stripe far slower than its peers) costs a quarter of
//! `hedge_after` per replica tried, not a hedge delay (several seconds on a loaded mount) or
//! an attempt timeout; and at most `hedge_cap`
//! hedges per mount hold a slot at once (a hedge gives its slot back after one delay, so
//! hedges stuck on the stalled replica too block no others). hdfs-native reads a block from
//! the first replica the NameNode listed, and the NameNode shuffles equal replicas per open,
//! so a fresh reader is the way to ask another one.
//!
//! [`StripePlan`] maps chunks to bytes: each HDFS block is cut into `chunk_size` pieces (the
//! last piece of a block may be short; the plan's `stripe_size` field is that piece size), so no
//! chunk, and no range read, ever crosses a block and each read talks to one DataNode. Readers are opened independently because the NameNode shuffles equal replicas
//! per open; a reader that failed is replaced by a fresh one (new locations, new tokens), since
//! hdfs-native never re-asks the NameNode once every replica it knows of failed.
//!
//! Version pinning: every reader this source uses was verified to see the pinned (len, mtime),
//! and a fresh reader is opened *before* the stat that verifies it, so a reader opened on a later
//! version can never pass. A stripe therefore only ever carries bytes of the pinned version.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bootseer_common::cache::{BlockSource, CacheError};
use bootseer_common::digest::Digest;
use bootseer_common::store::hdfs::{HdfsReader, HdfsStore};
use bootseer_common::store::{RetryConfig, Store, StoreError};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use crate::config::CkptConfig;

/// Where each stripe of a file lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripePlan {
    /// File length in bytes.
    pub len: u64,
    /// HDFS block size of the file.
    pub block_size: u64,
    /// Stripe size, at most `block_size`.
    pub stripe_size: u64,
}

impl StripePlan {
    /// A plan for a file of `len` bytes in HDFS blocks of `block_size`, with stripes of at most
    /// `stripe_size` bytes.
    pub fn new(len: u64, block_size: u64, stripe_size: u64) -> Self {
        let block_size = block_size.max(1);
        Self { len, block_size, stripe_size: stripe_size.clamp(1, block_size) }
    }

    fn per_block(&self) -> u64 {
        self.block_size.div_ceil(self.stripe_size)
    }

    /// Number of stripes.
    pub fn count(&self) -> u64 {
        if self.len == 0 {
            return 0;
        }
        let blocks = self.len.div_ceil(self.block_size);
        let last_block_len = self.len - (blocks - 1) * self.block_size;
        (blocks - 1) * self.per_block() + last_block_len.div_ceil(self.stripe_size)
    }

    /// The bytes stripe `index` covers (empty past the end).
    pub fn range(&self, index: u64) -> Range<u64> {
        let per = self.per_block();
        let block_start = (index / per).saturating_mul(self.block_size);
        let start = block_start.saturating_add((index % per) * self.stripe_size);
        let end = start
            .saturating_add(self.stripe_size)
            .min(block_start.saturating_add(self.block_size))
            .min(self.len);
        start.min(self.len)..end
    }

    /// The stripes holding any byte of `bytes` (clamped to the file; empty for an empty range).
    pub fn covering(&self, bytes: Range<u64>) -> Range<u64> {
        let end = bytes.end.min(self.len);
        if bytes.start >= end {
            return 0..0;
        }
        self.stripe_of(bytes.start)..self.stripe_of(end - 1) + 1
    }

    /// The stripe holding byte `offset` (may be `count()` at or past the end).
    pub fn stripe_of(&self, offset: u64) -> u64 {
        if offset >= self.len {
            return self.count();
        }
        let within = offset % self.block_size;
        (offset / self.block_size) * self.per_block() + within / self.stripe_size
    }
}

/// The (length, mtime) a handle pinned at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// Length in bytes.
    pub len: u64,
    /// Modification time as the NameNode reports it.
    pub mtime: SystemTime,
}

/// Counters shared by every source of a mount, for its summary.
#[derive(Debug, Default)]
pub struct StripeCounters {
    /// Stripes fetched successfully.
    pub fetched: AtomicU64,
    /// Bytes fetched from HDFS.
    pub bytes: AtomicU64,
    /// Attempts that failed or timed out and were re-issued.
    pub retried: AtomicU64,
    /// Attempts re-issued because no bytes came for `attempt_timeout` (stalled DataNode).
    pub reissued_slow: AtomicU64,
    /// Hedge reads started because an attempt passed the hedge delay.
    pub hedged: AtomicU64,
    /// Stripes whose bytes came from a hedge read.
    pub hedge_wins: AtomicU64,
    /// Hedge reads running now (capped: see `hedge_cap`).
    pub hedges_running: AtomicU64,
    /// Moving average of a successful attempt's time, in ns (weight 1/8 per sample).
    pub avg_attempt_ns: AtomicU64,
    /// When the mount last received bytes from a DataNode, in ns since [`epoch`] (0: never).
    pub progress_ns: AtomicU64,
    /// Stripes that failed for good.
    pub failed: AtomicU64,
    /// Fresh readers opened after a failure.
    pub reopened: AtomicU64,
    /// Fetches refused because the file changed or vanished.
    pub version_changed: AtomicU64,
}

/// The clock [`StripeCounters::progress_ns`] counts from.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl StripeCounters {
    fn note_progress(&self) {
        self.progress_ns.fetch_max(since_epoch(Instant::now()), Ordering::Relaxed);
    }

    fn last_progress(&self) -> Option<Instant> {
        match self.progress_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(epoch() + Duration::from_nanos(ns)),
        }
    }
}

/// `at` in ns since [`epoch`] (at least 1, so 0 can mean "never").
fn since_epoch(at: Instant) -> u64 {
    at.duration_since(epoch()).as_nanos().clamp(1, u128::from(u64::MAX)) as u64
}

/// When one [`BlockSource::fetch`] call gives up: `stripe_deadline` after the later of its
/// start and the last bytes the *mount* received, and never later than [`DEADLINE_CAP`] times
/// that after its start. "Nothing answers" is what fails a read: on a link shared by a herd
/// of nodes a stripe may take long, queued behind the mount's other reads or slow in its own
/// right, and still arrive; EIO there would kill the job (a loader's mmap gets SIGBUS) for a
/// read that was working. A stalled DataNode on its own is the attempt's idle timeout's and
/// the hedges' business, and the cap bounds a read whose own path never recovers while others
/// keep the mount busy.
struct Deadline<'a> {
    start: Instant,
    idle: Duration,
    counters: &'a StripeCounters,
}

/// A fetch call gives up at most this many stripe deadlines after it started, however busy the
/// mount is meanwhile.
const DEADLINE_CAP: u32 = 4;

impl Deadline<'_> {
    fn at(&self) -> Instant {
        let since = self.counters.last_progress().map_or(self.start, |p| p.max(self.start));
        (since + self.idle).min(self.start + self.idle * DEADLINE_CAP)
    }

    fn left(&self) -> Duration {
        self.at().saturating_duration_since(Instant::now())
    }

    /// `fut`'s output, or `None` once the deadline passed. The deadline may move on while
    /// `fut` runs (the mount receiving bytes), so a timer that fires is checked again rather
    /// than believed; `fut` is polled on, never restarted (a queued permit keeps its place).
    async fn wait<F: std::future::Future>(&self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            match tokio::time::timeout(self.left(), &mut fut).await {
                Ok(out) => return Some(out),
                Err(_) if self.left().is_zero() => return None,
                Err(_) => continue,
            }
        }
    }
}

/// The mount's bytes of range reads in flight, hedges included. A read holds permits for the
/// chunk buffers it fills (its length, at most the whole budget) from before it is sent until
/// its chunks are handed to the cache, whose own budget counts them from then on; a read that
/// finds the budget spent waits (within its deadline), and a hedge that finds it spent is not
/// started.
#[derive(Debug)]
pub struct InflightBudget {
    permits: tokio::sync::Semaphore,
    total: u64,
}

impl InflightBudget {
    /// A budget of `bytes` (at least 1 MiB, so a chunk read always fits).
    pub fn new(bytes: u64) -> Self {
        let total = bytes.clamp(1 << 20, u64::from(u32::MAX));
        Self { permits: tokio::sync::Semaphore::new(total as usize), total }
    }

    fn permits_for(&self, bytes: u64) -> u32 {
        bytes.min(self.total) as u32
    }

    /// Bytes of the budget in use now.
    pub fn in_use(&self) -> u64 {
        self.total - self.permits.available_permits() as u64
    }
}

/// One (reader, HDFS block) pair. A reader reads a block from the first replica the NameNode
/// listed when it was opened, so this is one DataNode's speed as this file sees it.
#[derive(Debug, Default)]
struct PathStats {
    /// Moving average of bytes per second of finished reads (0: not measured yet).
    rate: AtomicU64,
    /// Reads running now.
    inflight: AtomicU64,
}

/// `piece` cut into pieces of at most `per` chunks.
fn split_piece(piece: Range<u64>, per: u64) -> impl Iterator<Item = Range<u64>> {
    let per = per.max(1);
    (piece.start..piece.end).step_by(per as usize).map(move |i| i..(i + per).min(piece.end))
}

/// One of the mount's running hedge reads, released on drop.
struct HedgeSlot<'a>(&'a StripeCounters);

impl<'a> HedgeSlot<'a> {
    fn take(counters: &'a StripeCounters, cap: u64) -> Option<Self> {
        let running = &counters.hedges_running;
        running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1))
            .ok()
            .map(|_| Self(counters))
    }
}

impl Drop for HedgeSlot<'_> {
    fn drop(&mut self) {
        self.0.hedges_running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a read in `counter` while it runs, however it ends (done, failed or dropped): a
/// path's reads ([`PathStats::inflight`]) and a slot's small-fetch pieces
/// ([`StripeSource::spread_inflight`]).
struct Inflight<'a>(&'a AtomicU64);

impl<'a> Inflight<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One version of one HDFS file, read in stripes over several independent readers.
#[derive(Debug)]
pub struct StripeSource {
    /// This source, for the version check that runs beside fetches.
    me: Weak<StripeSource>,
    id: String,
    store: HdfsStore,
    key: String,
    version: Version,
    plan: StripePlan,
    config: CkptConfig,
    readers: Mutex<Vec<Arc<HdfsReader>>>,
    next_reader: AtomicUsize,
    /// Per (reader slot, HDFS block): what reading that block through that reader has shown.
    paths: Vec<PathStats>,
    /// Reader slots (fixed at open; a slot's reader may be replaced).
    slots: usize,
    /// Reads of small fetches ([`SPREAD_MAX`]) in flight at once: [`SPREAD_DEPTH`] per slot.
    spread_permits: tokio::sync::Semaphore,
    /// Per slot: reads of small fetches running on it now.
    spread_inflight: Vec<AtomicU64>,
    /// Handles the filesystem has open on this version now.
    handles: AtomicUsize,
    /// Handles ever opened on this version.
    opened: AtomicU64,
    /// Bytes of each stripe handed to readers, to release a stripe once it was consumed.
    served: Vec<AtomicU64>,
    /// When the version was last confirmed against the NameNode.
    verified_at: Mutex<Instant>,
    /// Stripes that failed for good: when, and why (see [`FAILED_MEMORY`]).
    failed: Mutex<HashMap<u64, (Instant, String)>>,
    /// The mount's budget for range reads in flight.
    budget: Arc<InflightBudget>,
    /// Set once a check found the file changed or gone: no fetch of this version succeeds after.
    changed: std::sync::atomic::AtomicBool,
    counters: Arc<StripeCounters>,
    /// A `.safetensors` version's header, read once for every handle and the mount's prefetch
    /// (see [`crate::fs::CkptFs`]'s key-order window).
    tensors: tokio::sync::OnceCell<crate::warm::TensorIndex>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Sections under these locks only swap whole values; a poisoned lock holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StripeSource {
    /// Opens `key` at `version` with `config.readers` readers (fewer for files of few stripes),
    /// verifying that each sees the pinned version.
    pub async fn open(
        store: HdfsStore,
        key: &str,
        version: Version,
        block_size: u64,
        config: &CkptConfig,
        counters: Arc<StripeCounters>,
        budget: Arc<InflightBudget>,
    ) -> Result<Arc<Self>, StoreError> {
        let plan = StripePlan::new(version.len, block_size, config.chunk());
        let mtime_ns =
            version.mtime.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let id = format!("{}/{key}@{mtime_ns}:{}", store.url().trim_end_matches('/'), version.len);
        let n = (config.readers.max(1) as u64).min(plan.count().max(1)) as usize;
        let opened = futures::future::join_all((0..n).map(|_| store.open_reader(key))).await;
        let mut readers = Vec::with_capacity(n);
        for reader in opened {
            let reader = reader?;
            if reader.len() != version.len {
                return Err(changed(key));
            }
            readers.push(Arc::new(reader));
        }
        let source = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            id,
            store,
            key: key.to_string(),
            version,
            plan,
            config: config.clone(),
            readers: Mutex::new(readers),
            next_reader: AtomicUsize::new(0),
            paths: (0..n as u64 * plan.len.div_ceil(plan.block_size).max(1))
                .map(|_| PathStats::default())
                .collect(),
            slots: n,
            spread_permits: tokio::sync::Semaphore::new(n * SPREAD_DEPTH),
            spread_inflight: (0..n).map(|_| AtomicU64::new(0)).collect(),
            handles: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            served: (0..plan.count()).map(|_| AtomicU64::new(0)).collect(),
            verified_at: Mutex::new(Instant::now()),
            failed: Mutex::new(HashMap::new()),
            budget,
            changed: std::sync::atomic::AtomicBool::new(false),
            counters,
            tensors: tokio::sync::OnceCell::new(),
        });
        // Opened before this stat: if the stat still shows the pinned version, so did they.
        source.verify().await?;
        Ok(source)
    }

    /// The stripe layout.
    pub fn plan(&self) -> &StripePlan {
        &self.plan
    }

    /// The version's safetensors header, once read (set through [`crate::fs`]).
    pub fn tensors(&self) -> &tokio::sync::OnceCell<crate::warm::TensorIndex> {
        &self.tensors
    }

    /// The pinned version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Counts a handle opened on this version.
    pub fn handle_opened(&self) {
        self.handles.fetch_add(1, Ordering::Relaxed);
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a handle closed; returns how many stay open.
    pub fn handle_closed(&self) -> usize {
        let before = self.handles.fetch_sub(1, Ordering::Relaxed);
        before.saturating_sub(1)
    }

    /// Handles open on this version now.
    pub fn handles(&self) -> usize {
        self.handles.load(Ordering::Relaxed)
    }

    /// Whether chunk `index` was served in full to every handle ever opened on this version
    /// (so it was released, and no reader of this version needs it fetched ahead again).
    pub fn is_consumed(&self, index: u64) -> bool {
        let Some(served) = self.served.get(index as usize) else { return true };
        let range = self.plan.range(index);
        let readers = self.opened.load(Ordering::Relaxed).max(1);
        served.load(Ordering::Relaxed) >= (range.end - range.start).saturating_mul(readers)
    }

    /// Notes that `bytes` of stripe `index` went to a reader. True once the stripe's bytes
    /// were handed out as many times as handles were ever opened on this version: then every
    /// reader has had it (a reader that closes early only keeps it to LRU), so its memory can
    /// go before LRU would. A handle opened after that fetches it again. Overlapping kernel
    /// reads may count twice; that only releases a stripe early, never serves wrong bytes.
    pub fn consumed(&self, index: u64, bytes: u64) -> bool {
        let Some(served) = self.served.get(index as usize) else { return false };
        let range = self.plan.range(index);
        let total = served.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let readers = self.opened.load(Ordering::Relaxed).max(1);
        let threshold = (range.end - range.start).saturating_mul(readers);
        // Only the read that crosses the threshold releases; later ones find nothing to free.
        total >= threshold && total - bytes < threshold
    }

    /// Confirms the file still has the pinned version.
    async fn verify(&self) -> Result<(), StoreError> {
        let limit = self.config.connect_timeout;
        let info = match bounded(limit, "stat", &self.key, self.store.file_info(&self.key)).await {
            Ok(info) => info,
            Err(StoreError::NotFound { .. }) => return Err(changed(&self.key)),
            Err(e) => return Err(e),
        };
        if info.len != self.version.len || info.mtime != self.version.mtime {
            return Err(changed(&self.key));
        }
        *lock(&self.verified_at) = Instant::now();
        Ok(())
    }

    /// [`Self::verify`], at most once per metadata TTL.
    /// [`Self::verify`], at most once per metadata TTL, in a task of its own: no fetch waits
    /// for the NameNode. That is safe because every reader was verified to see the pinned
    /// version when it was opened, and HDFS blocks never change under a reader: what a reader
    /// returns is the pinned version's bytes or an error (a replaced file's blocks are deleted).
    /// The check only makes a changed file fail early: once it saw the file changed or gone,
    /// every fetch of this version fails.
    fn verify_if_stale(&self) -> Result<(), StoreError> {
        if self.changed.load(Ordering::Relaxed) {
            return Err(changed(&self.key));
        }
        {
            let mut at = lock(&self.verified_at);
            if at.elapsed() < self.config.metadata_ttl {
                return Ok(());
            }
            *at = Instant::now();
        }
        if let Some(me) = self.me.upgrade() {
            tokio::spawn(async move {
                match me.verify().await {
                    Ok(()) => {}
                    Err(e) if is_changed(&e) => {
                        me.counters.version_changed.fetch_add(1, Ordering::Relaxed);
                        me.changed.store(true, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(key = %me.key, error = %e, "version check failed"),
                }
            });
        }
        Ok(())
    }

    /// A fresh reader, verified to see the pinned version.
    async fn fresh_reader(&self) -> Result<Arc<HdfsReader>, StoreError> {
        self.counters.reopened.fetch_add(1, Ordering::Relaxed);
        let limit = self.config.connect_timeout;
        let reader = bounded(limit, "open", &self.key, self.store.open_reader(&self.key)).await?;
        if reader.len() != self.version.len {
            return Err(changed(&self.key));
        }
        self.verify().await?;
        Ok(Arc::new(reader))
    }

    fn reader(&self, slot: usize) -> Option<Arc<HdfsReader>> {
        let readers = lock(&self.readers);
        readers.get(slot % readers.len().max(1)).cloned()
    }

    fn path(&self, slot: usize, block: u64) -> Option<&PathStats> {
        self.paths.get(block as usize * self.slots + slot % self.slots.max(1))
    }

    /// The reader slot for the next stripe of HDFS block `block`: the one whose path promises
    /// the most bytes per second per read already on it. Which reader reads a stripe decides
    /// which DataNode serves it, so choosing blindly (round-robin) leaves each DataNode a fixed,
    /// random share of the file and the file waits for the busiest; choosing by measured speed
    /// moves work off a DataNode that is behind. Paths not measured yet count at the block's
    /// mean measured rate (at first all are equal, so the round-robin start spreads them).
    fn choose_slot(&self, block: u64) -> usize {
        self.best_slot_among(block, |_| true)
    }

    /// The slot for a piece of a small fetch: the one with the fewest such reads on it now, by
    /// measured speed among those.
    fn spread_slot(&self, block: u64) -> usize {
        let count = |slot: usize| self.spread_inflight[slot].load(Ordering::Relaxed);
        let least = (0..self.slots).map(count).min().unwrap_or(0);
        self.best_slot_among(block, |slot| count(slot) == least)
    }

    /// [`best_slot`] over the paths of `block` through the slots `keep` allows, in round-robin
    /// preference order (the round-robin start when it allows none).
    fn best_slot_among(&self, block: u64, keep: impl Fn(usize) -> bool) -> usize {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let n = self.slots.max(1);
        let stats: Vec<(usize, u64, u64)> = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&slot| keep(slot))
            .filter_map(|slot| {
                let p = self.path(slot, block)?;
                Some((slot, p.rate.load(Ordering::Relaxed), p.inflight.load(Ordering::Relaxed)))
            })
            .collect();
        best_slot(&stats).unwrap_or(start % n)
    }

    /// Notes a read of `bytes` on `slot` for `block` that took `took`.
    fn note_path(&self, slot: usize, block: u64, took: Duration, bytes: u64) {
        let Some(p) = self.path(slot, block) else { return };
        let sample = ((bytes as f64 / took.as_secs_f64().max(1e-6)) as u64).max(1);
        let old = p.rate.load(Ordering::Relaxed);
        // Weight 1/2: DataNode load changes stripe by stripe; stale speeds misroute.
        p.rate.store(if old == 0 { sample } else { (old + sample) / 2 }, Ordering::Relaxed);
    }

    /// Hedge reads the mount lets run at once: a quarter of the stripe concurrency (at least
    /// 2), so hedges route around a stalled replica without doubling a busy link's load.
    fn hedge_cap(&self) -> u64 {
        (self.config.concurrency as u64 / 4).max(2)
    }

    /// How long an attempt may go without a reply before a hedge read starts.
    fn hedge_delay(&self) -> Duration {
        let avg = Duration::from_nanos(self.counters.avg_attempt_ns.load(Ordering::Relaxed));
        self.config.hedge_after.max(avg * 4)
    }

    fn note_attempt_time(&self, took: Duration) {
        let sample = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        let avg = &self.counters.avg_attempt_ns;
        let old = avg.load(Ordering::Relaxed);
        // Races between stripes lose a sample now and then, which a moving average tolerates.
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        avg.store(new, Ordering::Relaxed);
    }

    /// The bytes chunks `piece` cover.
    fn piece_range(&self, piece: &Range<u64>) -> Range<u64> {
        self.plan.range(piece.start).start..self.plan.range(piece.end - 1).end
    }

    /// One read of the chunks `piece` on `reader`, each chunk its own buffer: all of them or an
    /// error (no bytes for `attempt_timeout` is one). `got` counts the bytes as they arrive.
    async fn read_once(
        &self,
        reader: &HdfsReader,
        piece: Range<u64>,
        got: &AtomicU64,
    ) -> Result<Vec<Bytes>, StoreError> {
        let cuts: Vec<u64> =
            piece.clone().map(|i| self.plan.range(i)).map(|r| r.end - r.start).collect();
        let idle = self.config.attempt_timeout;
        let progress = |n| {
            self.counters.note_progress();
            got.fetch_add(n, Ordering::Relaxed);
        };
        reader.read_range_cut(self.piece_range(&piece), &cuts, idle, progress).await
    }

    /// One attempt at `range`: a read on the slot's reader, hedged by reads on fresh readers
    /// when it is slow (see the module note). An error is returned once no read is left.
    async fn hedged_attempt(
        &self,
        slot: usize,
        piece: Range<u64>,
    ) -> Result<Vec<Bytes>, StoreError> {
        type Read<'a> = futures::future::BoxFuture<
            'a,
            (Result<Vec<Bytes>, StoreError>, Option<Arc<HdfsReader>>),
        >;
        let range = self.piece_range(&piece);
        let started = Instant::now();
        let Some(primary) = self.reader(slot) else {
            return Err(StoreError::Transient {
                op: "read_range",
                key: self.key.clone(),
                message: "no reader could be opened".into(),
            });
        };
        // Bytes this attempt's reads received (declared before `reads`, which borrows it).
        let got = AtomicU64::new(0);
        let got = &got;
        let mut reads: FuturesUnordered<Read<'_>> = FuturesUnordered::new();
        let first = piece.clone();
        let block = range.start / self.plan.block_size.max(1);
        let _inflight = self.path(slot, block).map(|p| Inflight::new(&p.inflight));
        let want = range.end - range.start;
        reads.push(
            async move {
                let result = self.read_once(&primary, first, got).await;
                if result.is_ok() {
                    self.note_path(slot, block, started.elapsed(), want);
                }
                (result, None)
            }
            .boxed(),
        );
        let delay = self.hedge_delay();
        // The first look comes at a quarter of `hedge_after`, long before the whole delay: a
        // DataNode sends its first packet within milliseconds, so a read with no byte by then
        // is on a stalled or crawling replica, and so is one whose pace at `hedge_after` would
        // take more than twice the delay. Waiting out 4 × the average stripe for it made one
        // crawling DataNode cost a shard 3 × its healthy time, and a 1 s wait each for the
        // small reads that open a file (a loader's header) cost most of the rest.
        // (`delay` is never below `hedge_after`.)
        let first_look = self.config.hedge_after / 4;
        let hedge_timer = tokio::time::sleep(first_look);
        tokio::pin!(hedge_timer);
        let mut hedges = 0;
        // When the last hedge started, and the bytes received by then.
        let mut last_hedge: Option<(tokio::time::Instant, u64)> = None;
        loop {
            tokio::select! {
                Some((result, fresh)) = reads.next() => match result {
                    Ok(bytes) => {
                        match fresh {
                            Some(fresh) => {
                                self.counters.hedge_wins.fetch_add(1, Ordering::Relaxed);
                                self.replace_reader(slot, fresh);
                            }
                            // Only first reads feed the average: a hedge's time starts late,
                            // and a stalled replica's time says nothing about the link.
                            None => self.note_attempt_time(started.elapsed()),
                        }
                        return Ok(bytes);
                    }
                    Err(err) if reads.is_empty() => return Err(err),
                    Err(err) => {
                        tracing::debug!(key = %self.key, ?range, error = %err, "one of the hedged reads failed");
                    }
                },
                () = &mut hedge_timer, if hedges < MAX_HEDGES => {
                    // At the pace its bytes arrive, will the attempt be done within half the
                    // delay (twice the mount's average stripe)? Then it is as slow as the link
                    // makes stripes now, a fresh read would not be done sooner, and a hedge
                    // would only add to the link's load; look again in a while.
                    let received = got.load(Ordering::Relaxed);
                    let elapsed = started.elapsed();
                    let total = elapsed.mul_f64(want as f64 / received.max(1) as f64);
                    if received > 0 && total.saturating_sub(elapsed) < delay / 2 {
                        hedge_timer.as_mut().reset(tokio::time::Instant::now() + delay / 2);
                        continue;
                    }
                    // Bytes are coming: their pace is judged at `hedge_after`, not sooner.
                    let pace_at = self.config.hedge_after;
                    if elapsed < pace_at && received > 0 {
                        hedge_timer.as_mut().reset(tokio::time::Instant::now() + (pace_at - elapsed));
                        continue;
                    }
                    // Before the delay, only a crawl is hedged: bytes flowing at a pace that
                    // ends within twice the delay may be a busy link's, so look again then.
                    if elapsed < delay && received > 0 && total <= delay * 2 {
                        hedge_timer.as_mut().reset(tokio::time::Instant::now() + (delay - elapsed));
                        continue;
                    }
                    // Bytes came since the last hedge started at a pace that ends the read
                    // within the delay: it (or the first read) is moving, so it gets a whole
                    // delay before another joins. A trickle (the hedge, too, landed on the
                    // crawling replica) is not moving.
                    if let Some((at, before)) = last_hedge
                        && received > before
                        && at.elapsed() < delay
                    {
                        let since = at.elapsed().as_secs_f64().max(1e-3);
                        let pace = (received - before) as f64 / since;
                        let left = (want.saturating_sub(received)) as f64 / pace.max(1.0);
                        if left < delay.as_secs_f64() {
                            hedge_timer.as_mut().reset(at + delay);
                            continue;
                        }
                    }
                    // No slot or no memory for a hedge now: look again soon, not after a
                    // whole delay (a crawler waiting out 4 × the average stripe for a slot
                    // ran into the attempt timeout).
                    hedge_timer.as_mut().reset(tokio::time::Instant::now() + first_look);
                    let Some(slot_guard) = HedgeSlot::take(&self.counters, self.hedge_cap()) else {
                        // Enough hedges run already: on a saturated link more would only
                        // compete with first reads.
                        continue;
                    };
                    let need = self.budget.permits_for(range.end - range.start);
                    let Ok(memory) = self.budget.permits.try_acquire_many(need) else {
                        // The in-flight budget is spent: a hedge would hold a second buffer.
                        continue;
                    };
                    hedges += 1;
                    // A fresh reader lands on the crawling replica again a third of the time
                    // (3 replicas): look again as soon as at first, and if no read has sent a
                    // byte since, hedge once more.
                    let now = tokio::time::Instant::now();
                    hedge_timer.as_mut().reset(now + first_look);
                    last_hedge = Some((now, received));
                    self.counters.hedged.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(key = %self.key, ?range, after = ?started.elapsed(), "hedging a slow stripe on a fresh reader");
                    let piece = piece.clone();
                    reads.push(
                        async move {
                            let reader = match self.fresh_reader().await {
                                Ok(r) => r,
                                Err(e) => return (Err(e), None),
                            };
                            // A hedge that lands on the stalled replica too gives its slot
                            // back after one delay (and keeps reading), so hedges stuck there
                            // cannot keep other stripes from hedging.
                            let result = {
                                let read = self.read_once(&reader, piece, got);
                                tokio::pin!(read);
                                match tokio::time::timeout(delay, &mut read).await {
                                    Ok(result) => result,
                                    Err(_) => {
                                        drop(slot_guard);
                                        read.await
                                    }
                                }
                            };
                            drop(memory);
                            (result, Some(reader))
                        }
                        .boxed(),
                    );
                }
            }
        }
    }

    fn replace_reader(&self, slot: usize, fresh: Arc<HdfsReader>) {
        {
            let mut readers = lock(&self.readers);
            let n = readers.len();
            if n > 0 {
                readers[slot % n] = fresh;
            }
        }
        // A new reader has its own replica order: what the old one measured no longer holds.
        for block in 0..(self.paths.len() / self.slots.max(1)) as u64 {
            if let Some(p) = self.path(slot, block) {
                p.rate.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Fetches the chunks `piece` (consecutive, in one HDFS block) with one range read: full
    /// length or an error, by `deadline`. A piece with a chunk that failed for good moments ago
    /// fails again at once (see [`FAILED_MEMORY`]).
    async fn fetch_piece(
        &self,
        piece: Range<u64>,
        deadline: &Deadline<'_>,
        spread: bool,
    ) -> Result<Vec<Bytes>, StoreError> {
        let range = self.piece_range(&piece);
        let want = range.end - range.start;
        let started = Instant::now();
        if let Some(err) = piece.clone().find_map(|i| self.failed_recently(i)) {
            return Err(err);
        }
        // A piece of a small fetch waits for one of the slots' few places, then takes the slot
        // with the fewest such reads on it (see [`SPREAD_MAX`]).
        let spread_slot = match spread {
            false => None,
            true => {
                let Some(Ok(permit)) = deadline.wait(self.spread_permits.acquire()).await else {
                    let (op, key) = ("a reader slot", self.key.clone());
                    return Err(StoreError::Timeout { op, key, after: started.elapsed() });
                };
                let block = range.start / self.plan.block_size.max(1);
                let slot = self.spread_slot(block);
                Some((slot, Inflight::new(&self.spread_inflight[slot]), permit))
            }
        };
        let need = self.budget.permits_for(want);
        // Waiting for memory is waiting on the mount's other reads: while they receive bytes,
        // the deadline moves on.
        let Some(Ok(_permit)) = deadline.wait(self.budget.permits.acquire_many(need)).await else {
            let (op, key) = ("memory for read_range", self.key.clone());
            return Err(StoreError::Timeout { op, key, after: started.elapsed() });
        };
        let slot = spread_slot.as_ref().map(|&(slot, _, _)| slot);
        let result = self.fetch_stripe_until(piece.clone(), deadline, slot).await;
        match &result {
            Ok(_) => {
                self.counters.fetched.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes.fetch_add(want, Ordering::Relaxed);
            }
            Err(err) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %self.key, chunks = ?piece, elapsed = ?started.elapsed(), error = %err, "stripe failed");
                let mut failed = lock(&self.failed);
                for i in piece {
                    failed.insert(i, (Instant::now(), err.to_string()));
                }
            }
        }
        result
    }

    /// `run` cut into pieces for one range read each: consecutive chunks of one HDFS block, at
    /// most a stripe's worth (`stripe_size`) per piece.
    fn pieces(&self, run: Range<u64>) -> Vec<Range<u64>> {
        let per_stripe = (self.config.stripe_size / self.plan.stripe_size.max(1)).max(1);
        let block_of = |i: u64| self.plan.range(i).start / self.plan.block_size.max(1);
        let mut out: Vec<Range<u64>> = Vec::new();
        for i in run {
            match out.last_mut() {
                Some(p) if block_of(p.start) == block_of(i) && i - p.start < per_stripe => {
                    p.end = i + 1
                }
                _ => out.push(i..i + 1),
            }
        }
        out
    }

    /// The error to answer at once for a chunk that failed within [`FAILED_MEMORY`].
    fn failed_recently(&self, index: u64) -> Option<StoreError> {
        let mut failed = lock(&self.failed);
        failed.retain(|_, (at, _)| at.elapsed() < FAILED_MEMORY);
        failed.get(&index).map(|(at, message)| StoreError::Transient {
            op: "read_range",
            key: self.key.clone(),
            message: format!("failed {:.1} s ago: {message}", at.elapsed().as_secs_f64()),
        })
    }

    async fn fetch_stripe_until(
        &self,
        piece: Range<u64>,
        deadline: &Deadline<'_>,
        slot: Option<usize>,
    ) -> Result<Vec<Bytes>, StoreError> {
        let (index, range) = (piece.start, self.piece_range(&piece));
        let backoff = RetryConfig {
            // 100 ms first, doubling to 2 s: a DataNode restart is seconds, a deadline a minute.
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            ..RetryConfig::default()
        };
        let slot =
            slot.unwrap_or_else(|| self.choose_slot(range.start / self.plan.block_size.max(1)));
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // Each of the attempt's reads fails after `attempt_timeout` without bytes; the whole
            // attempt runs until the deadline, which moves on while the mount receives bytes, so
            // a stripe that arrives slowly completes and one that nothing answers does not.
            let result = deadline.wait(self.hedged_attempt(slot, piece.clone())).await;
            let result = result.unwrap_or_else(|| {
                let (op, key) = ("read_range", self.key.clone());
                Err(StoreError::Timeout { op, key, after: deadline.start.elapsed() })
            });
            let err = match result {
                Ok(chunks) => return Ok(chunks),
                Err(err) => err,
            };
            if matches!(err, StoreError::Timeout { .. }) {
                self.counters.reissued_slow.fetch_add(1, Ordering::Relaxed);
            }
            let pause = backoff.backoff(attempt);
            if !retryable(&err) || Instant::now() + pause >= deadline.at() {
                return Err(err);
            }
            self.counters.retried.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = %self.key, stripe = index, attempt, error = %err, "retrying stripe on a fresh reader");
            tokio::time::sleep(pause).await;
            match tokio::time::timeout(deadline.left(), self.fresh_reader()).await {
                Ok(Ok(fresh)) => self.replace_reader(slot, fresh),
                Ok(Err(e)) if !retryable(&e) => return Err(e),
                // The NameNode is unreachable for now: try again with the reader we have.
                Ok(Err(_)) | Err(_) => {}
            }
        }
    }
}

/// The slot with the most measured bytes/s per read in flight among `(slot, rate, inflight)`
/// (in order of preference on ties); a rate of 0 (not measured) counts as the mean of the
/// measured ones, or as equal to all others when none is measured.
fn best_slot(stats: &[(usize, u64, u64)]) -> Option<usize> {
    let known: Vec<u64> = stats.iter().map(|s| s.1).filter(|&r| r > 0).collect();
    let mean = match known.len() {
        0 => 1.0,
        k => known.iter().sum::<u64>() as f64 / k as f64,
    };
    let mut best: Option<(usize, f64)> = None;
    for &(slot, rate, inflight) in stats {
        let rate = if rate == 0 { mean } else { rate as f64 };
        let score = rate / (inflight + 1) as f64;
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((slot, score));
        }
    }
    best.map(|(slot, _)| slot)
}

/// Fetches of at most this many bytes (what a FUSE read that missed asks for: a tensor's piece,
/// a random pread; also a small prefetch job, such as a tensor queued ahead of a key-order
/// loader) are spread over the readers by work stealing rather than by assignment. Each
/// reader reads a block from one replica, and several readers often share one: a 1 MiB read per
/// reader then finishes when the most shared DataNode has sent its share (measured on 4
/// DataNodes at 200 Mbit/s: 20 tensors at 26 MB/s, one reader 19, where a sequential read gets
/// 63). Cut into [`SPREAD_PIECE`]s with [`SPREAD_DEPTH`] places per reader, the next piece
/// goes to whichever reader freed a place first, so a DataNode serving two readers takes half
/// as many pieces and every replica the readers reach stays busy until the fetch is done.
pub(crate) const SPREAD_MAX: u64 = 2 << 20;
/// The piece a small fetch is cut into (a DataNode packet is 64 KiB; 4 of them per read keep
/// the per-read setup small beside the bytes).
const SPREAD_PIECE: u64 = 256 << 10;
/// Small-fetch pieces one reader runs at once.
const SPREAD_DEPTH: usize = 2;

/// Hedge reads one attempt may add to its first read, one per hedge delay. A fresh reader
/// lands on the stalled replica again with probability 1/replication, so a few are needed to
/// be sure of another replica; the attempt timeout bounds the rest.
const MAX_HEDGES: u32 = 8;

/// `call` within `limit`, else [`StoreError::Timeout`] for `op` on `key`: every NameNode call
/// goes through this, so a NameNode that accepts and never answers costs a bounded wait.
pub(crate) async fn bounded<T>(
    limit: Duration,
    op: &'static str,
    key: &str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Timeout { op, key: key.to_string(), after: limit }),
    }
}

/// How long a stripe that failed for good fails again at once, without a new attempt. The
/// kernel asks again for a range whose read-ahead failed (the page itself, synchronously) right
/// after the EIO; without this, that second request would wait a whole stripe deadline again.
/// Short, so a mount whose DataNodes come back serves within seconds.
const FAILED_MEMORY: Duration = Duration::from_secs(5);

fn retryable(err: &StoreError) -> bool {
    err.is_retryable()
}

const CHANGED: &str = "the file changed or vanished since it was opened";

fn changed(key: &str) -> StoreError {
    StoreError::Other { op: "read", key: key.to_string(), message: CHANGED.into() }
}

fn is_changed(err: &StoreError) -> bool {
    matches!(err, StoreError::Other { message, .. } if message == CHANGED)
}

#[async_trait]
impl BlockSource for StripeSource {
    fn id(&self) -> &str {
        &self.id
    }

    fn block_count(&self) -> u64 {
        self.plan.count()
    }

    fn block_digest(&self, _index: u64) -> Option<Digest> {
        // HDFS checksums every chunk on the DataNode side; the version pin covers identity.
        None
    }

    async fn fetch(&self, blocks: Range<u64>) -> Result<Vec<Bytes>, CacheError> {
        let fail = |block: u64, e: StoreError| CacheError::Fetch {
            blob: self.id.clone(),
            block,
            source: Arc::new(e),
        };
        // One deadline for the whole call: a reader waiting on these chunks gets bytes, or EIO
        // once nothing reached the mount for the stripe deadline (see [`Deadline`]).
        let deadline = Deadline {
            start: Instant::now(),
            idle: self.config.stripe_deadline,
            counters: &self.counters,
        };
        let deadline = &deadline;
        if let Err(e) = self.verify_if_stale() {
            return Err(fail(blocks.start, e));
        }
        let bytes = (!blocks.is_empty()).then(|| self.piece_range(&blocks));
        let spread = self.slots > 1 && bytes.is_some_and(|b| b.end - b.start <= SPREAD_MAX);
        let mut pieces = self.pieces(blocks.clone());
        if spread {
            let per = (SPREAD_PIECE / self.plan.stripe_size.max(1)).max(1);
            pieces = pieces.into_iter().flat_map(|p| split_piece(p, per)).collect();
        }
        let results: Vec<(Range<u64>, Result<Vec<Bytes>, StoreError>)> = futures::stream::iter(
            pieces
                .into_iter()
                .map(|p| async move { (p.clone(), self.fetch_piece(p, deadline, spread).await) }),
        )
        .buffered(self.config.concurrency.max(1))
        .collect()
        .await;
        let mut out = Vec::with_capacity((blocks.end - blocks.start) as usize);
        for (piece, result) in results {
            // Each chunk its own buffer (read_range_cut), so a cached chunk keeps no more alive
            // than itself, and the memory budget's count of chunks is the memory held.
            out.extend(result.map_err(|e| fail(piece.start, e))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_fetch_is_cut_into_spread_pieces() {
        let cut = |p: Range<u64>, per| split_piece(p, per).collect::<Vec<_>>();
        assert_eq!(cut(3..13, 4), vec![3..7, 7..11, 11..13]);
        assert_eq!(cut(0..4, 4), vec![0..4]);
        assert_eq!(cut(5..6, 0), vec![5..6]);
        assert!(cut(2..2, 4).is_empty());
    }

    #[test]
    fn the_slot_choice_moves_reads_off_a_slow_path() {
        // Nothing measured: the first in preference order (the round-robin start).
        assert_eq!(best_slot(&[(2, 0, 0), (0, 0, 0), (1, 0, 0)]), Some(2));
        // Busy paths are passed over while nothing is measured.
        assert_eq!(best_slot(&[(2, 0, 1), (0, 0, 0), (1, 0, 1)]), Some(0));
        // A path four times slower gets a read only when the fast one has 4+ in flight.
        assert_eq!(best_slot(&[(0, 10, 0), (1, 40, 2)]), Some(1));
        assert_eq!(best_slot(&[(0, 10, 0), (1, 40, 4)]), Some(0));
        // An unmeasured path counts at the mean of the measured ones: (10 + 40) / 2 = 25.
        assert_eq!(best_slot(&[(0, 10, 0), (1, 40, 1), (2, 0, 0)]), Some(2));
        assert_eq!(best_slot(&[]), None);
    }

    #[test]
    fn stripes_tile_the_file_without_crossing_blocks() {
        for (len, block, stripe) in [
            (0u64, 1024u64, 256u64),
            (1, 1024, 256),
            (1023, 1024, 256),
            (1024, 1024, 256),
            (1025, 1024, 256),
            (5000, 1024, 300),
            (5000, 1024, 5000),
            (10_000, 1000, 7),
        ] {
            let plan = StripePlan::new(len, block, stripe);
            let mut pos = 0;
            for i in 0..plan.count() {
                let r = plan.range(i);
                assert_eq!(r.start, pos, "{plan:?} stripe {i}");
                assert!(!r.is_empty() && r.end - r.start <= plan.stripe_size, "{plan:?} {i}");
                assert_eq!(r.start / block, (r.end - 1) / block, "{plan:?} {i} crosses a block");
                assert_eq!(plan.stripe_of(r.start), i);
                assert_eq!(plan.stripe_of(r.end - 1), i);
                assert_eq!(plan.covering(r.clone()), i..i + 1);
                pos = r.end;
            }
            assert_eq!(pos, len, "{plan:?}");
            assert_eq!(plan.stripe_of(len), plan.count());
        }
    }
}
