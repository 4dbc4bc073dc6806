//! [`LayerSession`]: one mount's life outside FUSE — load, replay, record, store the trace, and
//! summarize.
//!
//! ```text
//!  open:   store::open ─► index ─► metadata blob (digest + frame checked) ─► LayerFs
//!          stored trace = KEY merged with every per-mount recording KEY.r.* (merge on read)
//!          trace mode auto|replay and a stored trace ─► ReplayPlan ─► tokio task: replay(plan,
//!          CachePrefetcher) at Priority::Replay, stoppable
//!  window: (optional) after `trace_window`, Recorder::finish ─► put KEY.r.<host>-<pid>-<rand>, early
//!  finish: stop replay ─► Recorder::finish (unless the window did) ─► put KEY.r.<host>-<pid>-<rand> (auto|record)
//!          ─► MountSummary (JSON)
//! ```
//!
//! Sync/async bridge: the session's futures run on the caller's tokio runtime; the FUSE adapter
//! `block_on`s the same runtime's handle from fuser's threads (never from a runtime thread).

use std::collections::HashSet;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::{BlockCache, CacheConfig, CacheStats, DynSource, Priority};
use crate::digest::Digest;
use crate::store::{self, DynStore, OpenOptions, StoreError};
use crate::trace::{
    self, DEFAULT_MAX_RECORDS, PlanOptions, PrefetchError, Prefetcher, Recorder, ReplayOptions,
    ReplayPlan, ReplayStats, Trace,
};
use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::layer::build::put_index;
use crate::layer::error::{LayerError, Result};
use crate::layer::format::{Descriptor, Index, Metadata, media};
use crate::layer::fs::LayerFs;
use crate::layer::reference::LayerRef;

/// The memory tier's default budget when a disk tier is there: the disk tier (and the kernel's
/// page cache over it) holds the blocks, so memory only needs the blocks being read right now
/// and those a replay fetched a little ahead; disk-tier hits are read straight from the file
/// into the reply, not kept. On a Python start reading ~350 MB of a 716 MB site-packages tree,
/// the daemon's peak RSS on a warm start fell from 470 MiB (512 MiB default) to 57 MiB.
pub const MEMORY_WITH_DISK: u64 = 32 << 20;
/// The memory tier's default budget without a disk tier: then it is the only cache, sized to
/// hold a typical start's hot set (LESSONS: 15–100 MB of multi-GB images) several times over.
pub const MEMORY_WITHOUT_DISK: u64 = 512 << 20;

/// Largest image index accepted (an index names a few blobs; this is generous).
const MAX_INDEX_BYTES: u64 = 4 << 20;
/// Largest metadata blob accepted before decoding (see `format::MAX_METADATA_BODY`).
const MAX_METADATA_BYTES: u64 = 1 << 30;
/// Trace records in flight to the writer thread before accesses are dropped (and counted):
/// 64k records is ~2 MiB, far more than a writer thread falls behind by.
const RECORDER_CAPACITY: usize = 1 << 16;

/// What a mount does with traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceMode {
    /// Replay a stored trace if there is one; record and store (merged) at unmount.
    #[default]
    Auto,
    /// Record and store at unmount (readers merge it with the other recordings), never replay.
    Record,
    /// Replay a stored trace, do not store.
    Replay,
    /// Neither.
    Off,
}

/// How an image is mounted (everything but the FUSE side).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Persistent block cache directory (`None`: memory only).
    pub cache_dir: Option<PathBuf>,
    /// Bytes the disk cache may hold.
    pub cache_size: u64,
    /// Bytes of blocks kept in memory; `None`: [`MEMORY_WITH_DISK`] with a cache directory,
    /// [`MEMORY_WITHOUT_DISK`] without one.
    pub memory: Option<u64>,
    /// Trace mode.
    pub trace: TraceMode,
    /// Workload name the trace is stored under.
    pub workload: String,
    /// Store options (timeouts, retries, insecure registries).
    pub open: OpenOptions,
    /// Replay window (requests in flight).
    pub replay_window: usize,
    /// Store the trace this long after mount instead of at unmount: a job that runs for days
    /// and is killed never unmounts cleanly, and its start is what matters. `None`: at unmount.
    pub trace_window: Option<Duration>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        let cache = CacheConfig::default();
        Self {
            cache_dir: None,
            cache_size: cache.disk_bytes,
            memory: None,
            trace: TraceMode::Auto,
            workload: "default".into(),
            open: OpenOptions::default(),
            replay_window: ReplayOptions::default().window,
            trace_window: None,
        }
    }
}

/// Replay through the cache at [`Priority::Replay`].
#[derive(Debug)]
struct CachePrefetcher {
    cache: BlockCache,
    sources: Vec<DynSource>,
}

#[async_trait]
impl Prefetcher for CachePrefetcher {
    async fn prefetch(&self, blob: &str, blocks: Range<u64>) -> Result<(), PrefetchError> {
        let source = self
            .sources
            .iter()
            .find(|s| s.id() == blob)
            .ok_or_else(|| format!("blob {blob} is not part of this image"))?;
        self.cache.prefetch(source, blocks, Priority::Replay).await?;
        Ok(())
    }
}

/// Reads a whole small object, refusing ones over `max` bytes.
async fn read_all(store: &DynStore, key: &str, max: u64) -> Result<Bytes> {
    let meta = store.stat(key).await.map_err(|e| LayerError::store(key, e))?;
    if meta.len > max {
        return Err(LayerError::malformed(
            "index",
            format!("{key} is {} bytes (max {max})", meta.len),
        ));
    }
    let data = store.read_range(key, 0..meta.len).await.map_err(|e| LayerError::store(key, e))?;
    if data.len() as u64 != meta.len {
        return Err(LayerError::malformed("index", format!("{key}: short read")));
    }
    Ok(data)
}

/// Reads blob `desc`, checking its digest.
async fn read_blob(store: &DynStore, desc: &Descriptor, max: u64) -> Result<Bytes> {
    let key = format!("blobs/{}", desc.digest);
    if desc.size > max {
        return Err(LayerError::malformed(
            "index",
            format!("{key} is {} bytes (max {max})", desc.size),
        ));
    }
    let data =
        store.read_range(&key, 0..desc.size).await.map_err(|e| LayerError::store(&key, e))?;
    let actual = Digest::of(&data).to_string();
    if actual != desc.digest || data.len() as u64 != desc.size {
        return Err(LayerError::malformed(
            "blob",
            format!("{key}: content hashes to {actual} ({} bytes), not to its name", data.len()),
        ));
    }
    Ok(data)
}

/// Loads the index of `image` from `store` (checked to be a bootseer layer).
/// A missing index says which is missing: the store itself (a `file://` directory that does not
/// exist) or the image in it. The error stays a [`LayerError::Store`] with
/// [`StoreError::NotFound`] (callers tell "not there" from "cannot answer" by it).
pub async fn load_index(store: &DynStore, image: &LayerRef) -> Result<Index> {
    let key = image.index_key();
    let data = match read_all(store, &key, MAX_INDEX_BYTES).await {
        Err(LayerError::Store { source: source @ StoreError::NotFound { .. }, .. }) => {
            let local_root = crate::store::local::LocalStore::open(&image.store_url)
                .ok()
                .map(|s| s.root().to_path_buf());
            let what = match local_root {
                Some(root) if !root.is_dir() => {
                    format!("store {} does not exist", image.store_url)
                }
                _ => format!("no image {}:{} in store {}", image.name, image.tag, image.store_url),
            };
            return Err(LayerError::store(what, source));
        }
        other => other?,
    };
    Index::decode(&data, media::ARTIFACT)
}

/// Loads the metadata of `image` from `store`.
pub async fn load_metadata(store: &DynStore, image: &LayerRef) -> Result<Metadata> {
    let index = load_index(store, image).await?;
    let meta_desc = &index.layers[0];
    if meta_desc.media_type != media::METADATA {
        return Err(LayerError::malformed(
            "index",
            format!("first layer is {:?}, not metadata", meta_desc.media_type),
        ));
    }
    let data = read_blob(store, meta_desc, MAX_METADATA_BYTES).await?;
    Metadata::decode(&data)
}

/// Per-mount recordings of the trace under `KEY` are stored as `KEY.r.ID` (a file beside the
/// trace, or a tag beside the image's in a registry).
const RECORDING_INFIX: &str = ".r.";
/// At most this many per-mount recordings are merged on read, in key order: each is small, but
/// a store that is never compacted should not make every mount read thousands.
const MAX_RECORDINGS_READ: usize = 256;

/// The key this mount stores its own recording of `key` under: host, pid and a random part, so
/// concurrent mounts on one host or many never write the same object.
fn recording_key(key: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    // The key must stay a registry tag: [A-Za-z0-9_.-], short.
    let host: String = host
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .take(24)
        .collect();
    let host = if host.is_empty() { "host".to_string() } else { host };
    format!("{key}{RECORDING_INFIX}{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// Loads one stored trace object (`key`), if it exists.
async fn load_one(store: &DynStore, image: &LayerRef, key: &str) -> Result<Option<Trace>> {
    let data = if image.registry {
        let index = match read_all(store, key, MAX_INDEX_BYTES).await {
            Ok(d) => Index::decode(&d, media::TRACE_ARTIFACT)?,
            Err(LayerError::Store { source: StoreError::NotFound { .. }, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        read_blob(store, &index.layers[0], MAX_METADATA_BYTES).await?
    } else {
        match read_all(store, key, MAX_METADATA_BYTES).await {
            Ok(d) => d,
            Err(LayerError::Store { source: StoreError::NotFound { .. }, .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
    };
    Trace::decode(&data)
        .map(Some)
        .map_err(|source| LayerError::Trace { key: key.to_string(), source })
}

/// Loads the trace under `key`, if any: the trace stored there (by earlier versions, or a
/// compaction) merged with every per-mount recording `KEY.r.*`. Mounts store only their own
/// recording, so N concurrent mounts of one image lose none (the last writer no longer wins).
/// A damaged recording is skipped with a warning; a damaged trace at `key` is an error.
pub async fn load_trace(store: &DynStore, image: &LayerRef, key: &str) -> Result<Option<Trace>> {
    let mut traces: Vec<Trace> = load_one(store, image, key).await?.into_iter().collect();
    let prefix = format!("{key}{RECORDING_INFIX}");
    let listed = match store.list(&prefix).await {
        Ok(listed) => listed,
        Err(StoreError::Unsupported { .. }) => Vec::new(),
        Err(e) => return Err(LayerError::store(format!("listing {prefix}*"), e)),
    };
    if listed.len() > MAX_RECORDINGS_READ {
        tracing::warn!(
            key,
            recordings = listed.len(),
            read = MAX_RECORDINGS_READ,
            "many trace recordings; reading the first"
        );
    }
    for object in listed.iter().take(MAX_RECORDINGS_READ) {
        match load_one(store, image, &object.key).await {
            Ok(Some(t)) => traces.push(t),
            Ok(None) => {}
            Err(e) => tracing::warn!(key = %object.key, error = %e, "skipping a trace recording"),
        }
    }
    Ok(match traces.len() {
        0 => None,
        1 => traces.pop(),
        _ => Some(Trace::merge(traces.iter(), DEFAULT_MAX_RECORDS)),
    })
}

/// Stores `trace` under `key`.
pub async fn store_trace(
    store: &DynStore,
    image: &LayerRef,
    key: &str,
    trace: &Trace,
) -> Result<()> {
    let data = Bytes::from(trace.encode());
    if image.registry {
        let desc = Descriptor {
            media_type: media::TRACE.into(),
            digest: Digest::of(&data).to_string(),
            size: data.len() as u64,
        };
        let blob_key = format!("blobs/{}", desc.digest);
        store.put(&blob_key, data).await.map_err(|e| LayerError::store(&blob_key, e))?;
        put_index(store, true, key, &Index::new(media::TRACE_ARTIFACT, vec![desc])).await
    } else {
        store.put(key, data).await.map_err(|e| LayerError::store(key, e))
    }
}

/// Stores this mount's recording `new` of the trace under `key` as a recording of its own
/// ([`recording_key`]); readers merge it with the others ([`load_trace`]).
async fn persist(store: &DynStore, image: &LayerRef, key: &str, new: &Trace) -> Result<()> {
    store_trace(store, image, &recording_key(key), new).await
}

/// A recording finished early by the trace window, kept for the summary at unmount.
type EarlyRecording = Arc<std::sync::Mutex<Option<(Trace, bool)>>>;

/// Cache counters in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct CacheSummary {
    /// Lookups answered from memory.
    pub hits_memory: u64,
    /// Lookups answered from disk.
    pub hits_disk: u64,
    /// Lookups that joined a fetch under way.
    pub joined: u64,
    /// Queued replay blocks a reader pulled forward.
    pub promoted: u64,
    /// Blocks fetched for waiting readers.
    pub blocks_on_demand: u64,
    /// Blocks fetched by replay.
    pub blocks_replay: u64,
    /// Bytes fetched for waiting readers.
    pub bytes_on_demand: u64,
    /// Bytes fetched by replay.
    pub bytes_replay: u64,
    /// Blocks fetched ahead of sequential readers (the mount's own window).
    pub blocks_ahead: u64,
    /// Bytes fetched ahead of sequential readers.
    pub bytes_ahead: u64,
    /// Blocks that failed to fetch.
    pub fetch_errors: u64,
    /// Blocks rejected by digest (fetched) or by CRC (disk tier).
    pub corrupt: u64,
    /// Blocks written to the disk tier.
    pub disk_written: u64,
    /// Blocks not written to the disk tier: its queue was full, or its filesystem was.
    pub disk_dropped: u64,
    /// Disk tier writes that failed otherwise.
    pub disk_failed: u64,
    /// Why the cache directory is not used, if it could not be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_unusable: Option<String>,
}

impl From<CacheStats> for CacheSummary {
    fn from(s: CacheStats) -> Self {
        Self {
            hits_memory: s.hits_memory,
            hits_disk: s.hits_disk,
            joined: s.joined,
            promoted: s.promoted,
            blocks_on_demand: s.fetched_demand,
            blocks_replay: s.fetched_replay,
            bytes_on_demand: s.bytes_demand,
            bytes_replay: s.bytes_replay,
            blocks_ahead: s.fetched_background,
            bytes_ahead: s.bytes_background,
            fetch_errors: s.fetch_errors,
            corrupt: s.corrupt,
            disk_written: s.disk_written,
            disk_dropped: s.disk_dropped,
            disk_failed: s.disk_failed,
            disk_unusable: s.disk_unusable,
        }
    }
}

/// What one mount did, written at unmount.
#[derive(Debug, Clone, Serialize)]
pub struct MountSummary {
    /// The image reference.
    pub image: String,
    /// Workload name.
    pub workload: String,
    /// Trace mode.
    pub trace_mode: TraceMode,
    /// Time to load the metadata and set up, in ms.
    pub load_ms: f64,
    /// Time from mount to the first read, in ms.
    pub first_read_ms: Option<f64>,
    /// Time mounted, in ms.
    pub mounted_ms: f64,
    /// Blocks in the stored trace found at mount (0: none).
    pub trace_blocks: u64,
    /// What the replay did.
    pub replay_requests: u64,
    /// Blocks the replay brought in (or found cached).
    pub replay_blocks: u64,
    /// Replay requests that failed.
    pub replay_failures: u64,
    /// Distinct blocks this start read.
    pub blocks_accessed: u64,
    /// Share of this start's blocks the stored trace covered (None without a stored trace).
    pub trace_coverage: Option<f64>,
    /// Key the merged trace was stored under.
    pub trace_stored: Option<String>,
    /// Cache counters.
    pub cache: CacheSummary,
    /// False for a summary taken while mounted (SIGUSR1): the recording and replay are still
    /// running, so `blocks_accessed` counts so far and coverage is not known yet.
    pub at_unmount: bool,
    /// Wall-clock phases of this mount (host, kind, events), for `report`.
    pub timeline: crate::timeline::Timeline,
}

/// One mount's image, cache, recorder and replay.
#[derive(Debug)]
pub struct LayerSession {
    image: LayerRef,
    config: SessionConfig,
    store: DynStore,
    fs: Arc<LayerFs>,
    recorder: Option<Arc<Recorder>>,
    stored: Option<Trace>,
    trace_key: String,
    replay: Option<(JoinHandle<ReplayStats>, oneshot::Sender<()>)>,
    replay_stats: Option<ReplayStats>,
    early: EarlyRecording,
    window_task: Option<JoinHandle<()>>,
    load: Duration,
    started: Instant,
}

impl LayerSession {
    /// Opens the store, loads the image and starts replay. Runs on a tokio runtime.
    pub async fn open(reference: &str, config: SessionConfig) -> Result<Self> {
        let image = LayerRef::parse(reference)?;
        let store = store::open(&image.store_url, &config.open)
            .await
            .map_err(|e| LayerError::store(&image.store_url, e))?;
        Self::open_with_store(image, store, config).await
    }

    /// As [`LayerSession::open`], over a store the caller built (tests wrap stores).
    pub async fn open_with_store(
        image: LayerRef,
        store: DynStore,
        config: SessionConfig,
    ) -> Result<Self> {
        let started = Instant::now();
        let trace_key = image.trace_key(&config.workload)?;
        let meta = load_metadata(&store, &image).await?;
        let cache_config = CacheConfig {
            memory_bytes: config.memory.unwrap_or(if config.cache_dir.is_some() {
                MEMORY_WITH_DISK
            } else {
                MEMORY_WITHOUT_DISK
            }),
            disk_dir: config.cache_dir.clone(),
            disk_bytes: config.cache_size,
            ..CacheConfig::default()
        };
        let cache = BlockCache::new(cache_config, tokio::runtime::Handle::current())?;
        let recorder = match config.trace {
            TraceMode::Auto | TraceMode::Record => Some(Arc::new(
                Recorder::new(RECORDER_CAPACITY).map_err(|e| LayerError::io("trace writer", e))?,
            )),
            TraceMode::Replay | TraceMode::Off => None,
        };
        let stored = match config.trace {
            TraceMode::Auto | TraceMode::Replay | TraceMode::Record => {
                match load_trace(&store, &image, &trace_key).await {
                    Ok(t) => t,
                    // A damaged trace must not stop the mount: it is replaced at unmount.
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring the stored trace");
                        None
                    }
                }
            }
            TraceMode::Off => None,
        };
        let fs = Arc::new(LayerFs::new(meta, store.clone(), cache.clone(), recorder.clone())?);
        let replay = match (&stored, config.trace) {
            (Some(trace), TraceMode::Auto | TraceMode::Replay) => {
                let plan = ReplayPlan::new(trace, &PlanOptions::default());
                let prefetcher =
                    CachePrefetcher { cache: cache.clone(), sources: fs.sources().to_vec() };
                let options = ReplayOptions { window: config.replay_window.max(1) };
                let (stop_tx, stop_rx) = oneshot::channel::<()>();
                // While the trace replays, it is the better guess of what comes next: the
                // sequential window would only compete with it for the link.
                let replaying = fs.replaying();
                let task = tokio::spawn(async move {
                    let stop = async move {
                        let _ = stop_rx.await;
                    };
                    let stats = trace::replay(&plan, &prefetcher, &options, stop).await;
                    crate::timeline::mark(crate::timeline::REPLAY_DONE);
                    replaying.stop();
                    stats
                });
                Some((task, stop_tx))
            }
            _ => None,
        };
        let early: EarlyRecording = Arc::default();
        let window_task = match (&recorder, config.trace_window) {
            (Some(rec), Some(window)) => {
                let (rec, early, store, image, key) =
                    (rec.clone(), early.clone(), store.clone(), image.clone(), trace_key.clone());
                Some(tokio::spawn(async move {
                    tokio::time::sleep(window).await;
                    let new = rec.finish();
                    let mut saved = false;
                    if !new.records.is_empty() {
                        match persist(&store, &image, &key, &new).await {
                            Ok(()) => saved = true,
                            Err(e) => tracing::warn!(error = %e, "storing the trace failed"),
                        }
                    }
                    tracing::info!(blocks = new.records.len(), saved, "trace window closed");
                    if let Ok(mut slot) = early.lock() {
                        *slot = Some((new, saved));
                    }
                }))
            }
            _ => None,
        };
        Ok(Self {
            image,
            config,
            store,
            fs,
            recorder,
            stored,
            trace_key,
            replay,
            replay_stats: None,
            early,
            window_task,
            load: started.elapsed(),
            started,
        })
    }

    /// The logic layer to hand to the FUSE adapter.
    pub fn fs(&self) -> Arc<LayerFs> {
        self.fs.clone()
    }

    /// Whether a stored trace was found.
    pub fn has_trace(&self) -> bool {
        self.stored.is_some()
    }

    /// Waits for the replay to finish (tests and benchmarks that want a settled cache).
    pub async fn wait_replay(&mut self) -> Option<ReplayStats> {
        if let Some((task, _stop)) = self.replay.take() {
            self.replay_stats = task.await.ok();
        }
        self.replay_stats.clone()
    }

    /// Stops replay, stores the trace (per mode) and returns the summary. Call after unmount.
    pub async fn finish(mut self) -> Result<MountSummary> {
        if let Some((task, stop)) = self.replay.take() {
            let _ = stop.send(());
            self.replay_stats = task.await.ok();
        }
        if let Some(task) = self.window_task.take() {
            if task.is_finished() {
                let _ = task.await;
            } else {
                task.abort();
            }
        }
        let early = self.early.lock().ok().and_then(|mut e| e.take());
        let (recording, stored_early) = match early {
            Some((trace, saved)) => (Some(trace), saved),
            None => (self.recorder.as_ref().map(|r| r.finish()), false),
        };
        let coverage = match (&self.stored, &recording) {
            (Some(stored), Some(new)) if !new.records.is_empty() => {
                let known: HashSet<(&str, u64)> = stored
                    .records
                    .iter()
                    .filter_map(|r| {
                        stored.blobs.get(r.blob as usize).map(|b| (b.id.as_str(), r.block))
                    })
                    .collect();
                let hit = new
                    .records
                    .iter()
                    .filter(|r| {
                        new.blobs
                            .get(r.blob as usize)
                            .is_some_and(|b| known.contains(&(b.id.as_str(), r.block)))
                    })
                    .count();
                Some(hit as f64 / new.records.len() as f64)
            }
            _ => None,
        };
        let mut trace_stored = stored_early.then(|| self.trace_key.clone());
        if !stored_early
            && let Some(new) = &recording
            && !new.records.is_empty()
        {
            persist(&self.store, &self.image, &self.trace_key, new).await?;
            trace_stored = Some(self.trace_key.clone());
        }
        let accessed = recording.as_ref().map_or(0, |t| t.records.len() as u64);
        Ok(self.summary(accessed, coverage, trace_stored, true))
    }

    /// The summary so far, while mounted (for SIGUSR1).
    pub fn snapshot(&self) -> MountSummary {
        let accessed = self.recorder.as_ref().map_or(0, |r| r.recorded());
        self.summary(accessed, None, None, false)
    }

    fn summary(
        &self,
        blocks_accessed: u64,
        trace_coverage: Option<f64>,
        trace_stored: Option<String>,
        at_unmount: bool,
    ) -> MountSummary {
        let rs = self.replay_stats.clone().unwrap_or_default();
        MountSummary {
            image: self.image.original.clone(),
            workload: self.config.workload.clone(),
            trace_mode: self.config.trace,
            load_ms: self.load.as_secs_f64() * 1e3,
            first_read_ms: self.fs.time_to_first_read().map(|d| d.as_secs_f64() * 1e3),
            mounted_ms: self.started.elapsed().as_secs_f64() * 1e3,
            trace_blocks: self.stored.as_ref().map_or(0, |t| t.records.len() as u64),
            replay_requests: rs.requests,
            replay_blocks: rs.blocks,
            replay_failures: rs.failures,
            blocks_accessed,
            trace_coverage,
            trace_stored,
            cache: self.fs.cache().stats().into(),
            at_unmount,
            timeline: crate::timeline::global(),
        }
    }
}
