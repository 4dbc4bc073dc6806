//! [`StripeSource`]: one pinned version of one HDFS file, cut into stripes, as a
//! [`BlockSource`] for the shared [`BlockCache`](bootseer_common::cache::BlockCache).
//!
//! ```text
//!   cache.fetch(stripes a..b)
//!     └─ version check (at most once per metadata TTL: stat → same len and mtime, else EIO)
//!     └─ per stripe, up to `concurrency` at once:
//!          reader[round-robin] .read_range(stripe)       (clamped at the pinned length)
//!            ├─ full length            → done
//!            └─ error / attempt timeout → backoff → fresh reader (open + verify version)
//!                                        → again, until the stripe's deadline → error (EIO)
//! ```
//!
//! [`StripePlan`] maps stripes to bytes: each HDFS block is cut into `stripe_size` pieces (the
//! last piece of a block may be short), so no stripe ever crosses a block and each read talks to
//! one DataNode. Readers are opened independently because the NameNode shuffles equal replicas
//! per open; a reader that failed is replaced by a fresh one (new locations, new tokens), since
//! hdfs-native never re-asks the NameNode once every replica it knows of failed.
//!
//! Version pinning: every reader this source uses was verified to see the pinned (len, mtime),
//! and a fresh reader is opened *before* the stat that verifies it, so a reader opened on a later
//! version can never pass. A stripe therefore only ever carries bytes of the pinned version.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bootseer_common::cache::{BlockSource, CacheError};
use bootseer_common::digest::Digest;
use bootseer_common::store::hdfs::{HdfsReader, HdfsStore};
use bootseer_common::store::{RetryConfig, Store, StoreError};
use bytes::Bytes;
use futures::StreamExt;

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
    /// Attempts re-issued because they passed `attempt_timeout` (stalled DataNode).
    pub reissued_slow: AtomicU64,
    /// Stripes that failed for good.
    pub failed: AtomicU64,
    /// Fresh readers opened after a failure.
    pub reopened: AtomicU64,
    /// Fetches refused because the file changed or vanished.
    pub version_changed: AtomicU64,
}

/// One version of one HDFS file, read in stripes over several independent readers.
#[derive(Debug)]
pub struct StripeSource {
    id: String,
    store: HdfsStore,
    key: String,
    version: Version,
    plan: StripePlan,
    config: CkptConfig,
    readers: Mutex<Vec<Arc<HdfsReader>>>,
    next_reader: AtomicUsize,
    /// When the version was last confirmed against the NameNode.
    verified_at: Mutex<Instant>,
    counters: Arc<StripeCounters>,
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
    ) -> Result<Self, StoreError> {
        let plan = StripePlan::new(version.len, block_size, config.stripe_size);
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
        let source = Self {
            id,
            store,
            key: key.to_string(),
            version,
            plan,
            config: config.clone(),
            readers: Mutex::new(readers),
            next_reader: AtomicUsize::new(0),
            verified_at: Mutex::new(Instant::now()),
            counters,
        };
        // Opened before this stat: if the stat still shows the pinned version, so did they.
        source.verify().await?;
        Ok(source)
    }

    /// The stripe layout.
    pub fn plan(&self) -> &StripePlan {
        &self.plan
    }

    /// The pinned version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Confirms the file still has the pinned version.
    async fn verify(&self) -> Result<(), StoreError> {
        let info = match self.store.file_info(&self.key).await {
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
    async fn verify_if_stale(&self) -> Result<(), StoreError> {
        if lock(&self.verified_at).elapsed() < self.config.metadata_ttl {
            return Ok(());
        }
        self.verify().await
    }

    /// A fresh reader, verified to see the pinned version.
    async fn fresh_reader(&self) -> Result<Arc<HdfsReader>, StoreError> {
        self.counters.reopened.fetch_add(1, Ordering::Relaxed);
        let reader = self.store.open_reader(&self.key).await?;
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

    /// Fetches one stripe: full length or an error, within the stripe deadline.
    async fn fetch_stripe(&self, index: u64) -> Result<Bytes, StoreError> {
        let range = self.plan.range(index);
        let want = range.end - range.start;
        let started = Instant::now();
        let deadline = started + self.config.stripe_deadline;
        let backoff = RetryConfig {
            // 100 ms first, doubling to 2 s: a DataNode restart is seconds, a deadline a minute.
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            ..RetryConfig::default()
        };
        let slot = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let mut reader = self.reader(slot);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = left.min(self.config.attempt_timeout);
            let result = match &reader {
                None => Err(StoreError::Transient {
                    op: "read_range",
                    key: self.key.clone(),
                    message: "no reader could be opened".into(),
                }),
                Some(r) => match tokio::time::timeout(timeout, r.read_range(range.clone())).await {
                    Ok(Ok(bytes)) if bytes.len() as u64 == want => Ok(bytes),
                    Ok(Ok(bytes)) => Err(StoreError::BadReply {
                        op: "read_range",
                        key: self.key.clone(),
                        message: format!("{} bytes for stripe {range:?}", bytes.len()),
                    }),
                    Ok(Err(e)) => Err(e),
                    Err(_) => {
                        self.counters.reissued_slow.fetch_add(1, Ordering::Relaxed);
                        Err(StoreError::Timeout {
                            op: "read_range",
                            key: self.key.clone(),
                            after: timeout,
                        })
                    }
                },
            };
            let err = match result {
                Ok(bytes) => {
                    self.counters.fetched.fetch_add(1, Ordering::Relaxed);
                    self.counters.bytes.fetch_add(want, Ordering::Relaxed);
                    return Ok(bytes);
                }
                Err(err) => err,
            };
            let pause = backoff.backoff(attempt);
            if !retryable(&err) || Instant::now() + pause >= deadline {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %self.key, stripe = index, attempt, elapsed = ?started.elapsed(), error = %err, "stripe failed");
                return Err(err);
            }
            self.counters.retried.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = %self.key, stripe = index, attempt, error = %err, "retrying stripe on a fresh reader");
            tokio::time::sleep(pause).await;
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.fresh_reader()).await {
                Ok(Ok(fresh)) => {
                    {
                        let mut readers = lock(&self.readers);
                        let n = readers.len();
                        if n > 0 {
                            readers[slot % n] = fresh.clone();
                        }
                    }
                    reader = Some(fresh);
                }
                Ok(Err(e)) if !retryable(&e) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                // The NameNode is unreachable for now: try again with the reader we have.
                Ok(Err(_)) | Err(_) => {}
            }
        }
    }
}

fn retryable(err: &StoreError) -> bool {
    err.is_retryable()
}

fn changed(key: &str) -> StoreError {
    StoreError::Other {
        op: "read",
        key: key.to_string(),
        message: "the file changed or vanished since it was opened".into(),
    }
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
        if let Err(e) = self.verify_if_stale().await {
            if matches!(e, StoreError::Other { .. }) {
                self.counters.version_changed.fetch_add(1, Ordering::Relaxed);
            }
            return Err(fail(blocks.start, e));
        }
        let results: Vec<(u64, Result<Bytes, StoreError>)> =
            futures::stream::iter(blocks.map(|i| async move { (i, self.fetch_stripe(i).await) }))
                .buffered(self.config.concurrency.max(1))
                .collect()
                .await;
        let mut out = Vec::with_capacity(results.len());
        for (index, result) in results {
            out.push(result.map_err(|e| fail(index, e))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                pos = r.end;
            }
            assert_eq!(pos, len, "{plan:?}");
            assert_eq!(plan.stripe_of(len), plan.count());
        }
    }
}
