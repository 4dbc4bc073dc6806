//! Block cache behaviour, checked by operation counters of the store doubles (not by timing):
//! single-flight, on-demand before prefetch, bounded prefetch, memory budget, disk-tier reuse
//! across restarts, and corrupt blocks never served from either tier.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bootseer_common::cache::{
    BlockCache, BlockSource, CacheConfig, CacheError, DynSource, Priority, StoreBlocks,
};
use bootseer_common::digest::Digest;
use bootseer_common::store::{DynStore, RetryConfig, RetryStore, Store, StoreError};
use bootseer_common::testing::mem::{FailingStore, Fault, MemStore, pattern};
use bytes::Bytes;

const BLOCK: u64 = 4096;

/// Fixed-size blocks of a store object, with the digests of the original bytes.
#[derive(Debug)]
struct Digested {
    inner: StoreBlocks,
    digests: Vec<Digest>,
}

#[async_trait]
impl BlockSource for Digested {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn block_count(&self) -> u64 {
        self.inner.block_count()
    }
    fn block_digest(&self, index: u64) -> Option<Digest> {
        self.digests.get(index as usize).copied()
    }
    async fn fetch(&self, blocks: Range<u64>) -> Result<Vec<Bytes>, CacheError> {
        self.inner.fetch(blocks).await
    }
}

struct Fixture {
    mem: Arc<MemStore>,
    failing: Arc<FailingStore>,
    data: Vec<u8>,
}

impl Fixture {
    fn new(key: &str, len: usize) -> Self {
        let mem = Arc::new(MemStore::new());
        let data = pattern(len as u64, len);
        mem.insert(key, data.clone());
        let failing = Arc::new(FailingStore::new(mem.clone()));
        Self { mem, failing, data }
    }

    fn source(&self, key: &str, digests: bool) -> DynSource {
        let store: DynStore = self.failing.clone();
        let inner =
            StoreBlocks::new(format!("id-{key}"), store, key, self.data.len() as u64, BLOCK);
        if !digests {
            return Arc::new(inner);
        }
        let digests = self.data.chunks(BLOCK as usize).map(Digest::of).collect();
        Arc::new(Digested { inner, digests })
    }

    fn block(&self, i: u64) -> &[u8] {
        let start = (i * BLOCK) as usize;
        &self.data[start..(start + BLOCK as usize).min(self.data.len())]
    }
}

fn cache(config: CacheConfig) -> BlockCache {
    BlockCache::new(config, tokio::runtime::Handle::current()).expect("cache")
}

async fn until(mut cond: impl FnMut() -> bool) {
    // Polls a counter the test waits on; the deadline only guards against a hang.
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached in 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_on_one_block_are_one_fetch() {
    let fx = Fixture::new("blob", 10 * BLOCK as usize);
    let source = fx.source("blob", true);
    let cache = cache(CacheConfig::default());
    fx.failing.set("blob", Fault::Stall, u64::MAX);
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (cache, source) = (cache.clone(), source.clone());
            tokio::spawn(async move { cache.get(&source, 3).await })
        })
        .collect();
    until(|| fx.failing.faults.load(std::sync::atomic::Ordering::Relaxed) >= 1).await;
    until(|| cache.stats().joined == 15).await;
    fx.failing.release();
    for r in readers {
        assert_eq!(&r.await.expect("join").expect("read")[..], fx.block(3));
    }
    assert_eq!(fx.mem.read_count(), 1, "16 readers of one block must cause one fetch");
    assert_eq!(&cache.get(&source, 3).await.expect("hit")[..], fx.block(3));
    assert_eq!(fx.mem.read_count(), 1);
    assert_eq!(cache.stats().hits_memory, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_demand_read_jumps_the_prefetch_queue_and_is_fetched_once() {
    let fx = Fixture::new("blob", 16 * BLOCK as usize);
    let slow = Fixture { mem: fx.mem.clone(), failing: fx.failing.clone(), data: fx.data.clone() };
    fx.mem.insert("slow", fx.data.clone());
    let source = fx.source("blob", true);
    let slow_source = slow.source("slow", false);
    let cache = cache(CacheConfig { prefetch_concurrency: 1, ..CacheConfig::default() });

    // The only prefetch worker is stuck on the slow blob; blob's blocks wait in the queue.
    fx.failing.set("slow", Fault::Stall, u64::MAX);
    cache.spawn_prefetch(&slow_source, 0..1, Priority::Background);
    until(|| fx.failing.faults.load(std::sync::atomic::Ordering::Relaxed) == 1).await;
    // Registers queued flights for all 16 blocks, synchronously.
    cache.spawn_prefetch(&source, 0..16, Priority::Replay);
    assert_eq!(fx.mem.reads_overlapping("blob", 0..u64::MAX), 0);

    // A reader of block 9 does not wait for the worker.
    let got = tokio::time::timeout(Duration::from_secs(10), cache.get(&source, 9))
        .await
        .expect("on-demand read waited behind prefetch")
        .expect("read");
    assert_eq!(&got[..], fx.block(9));
    assert_eq!(fx.mem.reads_overlapping("blob", 0..u64::MAX), 1, "only block 9 fetched so far");
    assert_eq!(cache.stats().promoted, 1);

    fx.failing.release();
    cache.prefetch(&source, 0..16, Priority::Replay).await.expect("prefetch");
    for i in 0..16 {
        let range = i * BLOCK..(i + 1) * BLOCK;
        assert_eq!(fx.mem.reads_overlapping("blob", range), 1, "block {i} fetched once");
        assert!(cache.contains("id-blob", i));
    }
    let stats = cache.stats();
    assert_eq!(stats.fetched_demand, 1);
    assert_eq!(stats.fetched_replay, 15);
    // The slow blob, block 9 on demand, then the queued blocks as two runs: 0..9 and 10..16.
    assert_eq!(stats.fetch_calls, 4, "neighbours are fetched in runs: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_prefetch_is_never_fetched_and_released_blocks_free_memory() {
    let fx = Fixture::new("blob", 8 * BLOCK as usize);
    let source = fx.source("blob", true);
    let cache = cache(CacheConfig { prefetch_concurrency: 1, ..CacheConfig::default() });
    // The only worker is stuck on block 0; blocks 1..8 wait in the queue.
    fx.failing.set("blob", Fault::Stall, u64::MAX);
    cache.spawn_prefetch(&source, 0..1, Priority::Background);
    until(|| fx.failing.faults.load(std::sync::atomic::Ordering::Relaxed) == 1).await;
    // The first poll queues the blocks and then waits for them.
    let mut waiter = Box::pin(cache.prefetch(&source, 1..8, Priority::Background));
    assert!(futures::poll!(&mut waiter).is_pending());

    assert_eq!(cache.cancel_queued("id-blob"), 7, "block 0 is running, 1..8 are queued");
    let err = waiter.await.expect_err("a cancelled prefetch is not a success");
    assert!(matches!(err, CacheError::Abandoned { .. }), "{err}");
    // A control job of another blob, queued behind the cancelled one in the same FIFO lane: the
    // only worker pops the cancelled job first, so once the control is fetched the cancelled
    // job has been dealt with (no sleep that a slow machine could outlast).
    fx.mem.insert("control", fx.data.clone());
    let control = fx.source("control", false);
    let mut control_done = Box::pin(cache.prefetch(&control, 0..1, Priority::Background));
    assert!(futures::poll!(&mut control_done).is_pending(), "the control is queued");
    fx.failing.release();
    control_done.await.expect("the control prefetch");
    assert!(cache.contains("id-blob", 0));
    let blob_reads = || fx.mem.reads().iter().filter(|(key, _)| key == "blob").count();
    assert_eq!(blob_reads(), 1, "only the running block 0 was fetched: {:?}", fx.mem.reads());

    // A cancelled block is fetched afresh when a reader wants it.
    assert_eq!(&cache.get(&source, 5).await.expect("read")[..], fx.block(5));
    assert_eq!(blob_reads(), 2);
    assert!(cache.release("id-control", 0), "the control block is in memory");
    assert_eq!(cache.stats().memory_bytes, 2 * BLOCK);
    assert!(cache.release("id-blob", 5));
    assert!(!cache.release("id-blob", 5), "released once");
    assert!(!cache.contains("id-blob", 5));
    let stats = cache.stats();
    assert_eq!((stats.memory_bytes, stats.released, stats.cancelled), (BLOCK, 2, 7), "{stats:?}");
}

// One thread, so "every other task had its turn" is a count of scheduler turns, not a wait: a
// woken task runs before a task that yields after it was woken.
#[tokio::test(flavor = "current_thread")]
async fn prefetch_concurrency_is_bounded() {
    let fx = Fixture::new("blob", 32 * BLOCK as usize);
    let source = fx.source("blob", false);
    let cache = cache(CacheConfig { prefetch_concurrency: 3, ..CacheConfig::default() });
    fx.failing.set("blob", Fault::Stall, u64::MAX);
    let faults = || fx.failing.faults.load(std::sync::atomic::Ordering::Relaxed);
    // Every other block: 16 separate runs, none can merge.
    let waits: Vec<_> = (0..16)
        .map(|i| {
            let (cache, source) = (cache.clone(), source.clone());
            tokio::spawn(async move {
                cache.prefetch(&source, 2 * i..2 * i + 1, Priority::Background).await
            })
        })
        .collect();
    until(|| faults() >= 3).await;
    // The control: an on-demand read of a block nobody queued reaches the store (and stalls
    // there too) in the same scheduler turns in which a fourth prefetch worker, woken when its
    // job was queued, would have reached it before.
    let control = tokio::spawn({
        let (cache, source) = (cache.clone(), source.clone());
        async move { cache.get(&source, 1).await }
    });
    let mut turns = 0;
    while faults() < 4 {
        assert!(turns < 1000, "the control read never reached the store");
        tokio::task::yield_now().await;
        turns += 1;
    }
    for _ in 0..turns + 10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(faults(), 4, "3 prefetches and the control at the store, no fourth prefetch");
    fx.failing.release();
    for w in waits {
        w.await.expect("join").expect("prefetch");
    }
    assert_eq!(&control.await.expect("join").expect("control")[..], fx.block(1));
    assert_eq!(fx.mem.read_count(), 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_budget_holds_under_load() {
    let fx = Fixture::new("blob", 256 * BLOCK as usize);
    let source = fx.source("blob", true);
    let budget = 10 * BLOCK;
    let cache = cache(CacheConfig { memory_bytes: budget, ..CacheConfig::default() });
    let readers: Vec<_> = (0..8)
        .map(|t| {
            let (cache, source) = (cache.clone(), source.clone());
            tokio::spawn(async move {
                let mut max = 0;
                for i in 0..256u64 {
                    let b = (i * 7 + t * 31) % 256;
                    cache.get(&source, b).await.expect("read");
                    max = max.max(cache.stats().memory_bytes);
                }
                max
            })
        })
        .collect();
    cache.spawn_prefetch(&source, 0..256, Priority::Background);
    for r in readers {
        assert!(r.await.expect("join") <= budget);
    }
    assert!(cache.stats().memory_bytes <= budget);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_tier_is_reused_after_restart_and_corrupt_entries_are_refetched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::new("blob", 20 * BLOCK as usize + 100);
    let source = fx.source("blob", true);
    let config = CacheConfig { disk_dir: Some(dir.path().to_path_buf()), ..CacheConfig::default() };
    {
        let cache = cache(config.clone());
        cache.prefetch(&source, 0..21, Priority::Replay).await.expect("prefetch");
        until(|| cache.disk().expect("disk").len() == 21).await;
    }
    let reads_before = fx.mem.read_count();
    let cache2 = cache(config.clone());
    for i in 0..21 {
        assert_eq!(&cache2.get(&source, i).await.expect("read")[..], fx.block(i));
    }
    assert_eq!(fx.mem.read_count(), reads_before, "a restart must reuse the disk tier");
    assert_eq!(cache2.stats().hits_disk, 21);
    drop(cache2);

    // Damage one entry's payload: it is detected, dropped, and the block refetched.
    let key = bootseer_common::cache::disk::disk_key("id-blob", 4);
    let path = bootseer_common::cache::DiskTier::open(dir.path(), 1 << 30)
        .expect("open the tier")
        .entry_path(&key);
    let mut bytes = std::fs::read(&path).expect("entry exists");
    let n = bytes.len();
    bytes[n - 10] ^= 0x55;
    std::fs::write(&path, bytes).expect("write");
    let cache3 = cache(config);
    assert_eq!(&cache3.get(&source, 4).await.expect("read")[..], fx.block(4));
    assert_eq!(cache3.stats().corrupt, 1);
    assert_eq!(fx.mem.read_count(), reads_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_block_with_the_wrong_digest_is_an_error_never_data() {
    let fx = Fixture::new("blob", 8 * BLOCK as usize);
    let source = fx.source("blob", true);
    let cache = cache(CacheConfig::default());
    fx.failing.set("blob", Fault::Corrupt, 1);
    match cache.get(&source, 2).await {
        Err(CacheError::Corrupt { block: 2, .. }) => {}
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(!cache.contains("id-blob", 2), "a corrupt block must not be cached");
    assert_eq!(&cache.get(&source, 2).await.expect("clean refetch")[..], fx.block(2));
    assert_eq!(cache.stats().corrupt, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_fetch_answers_every_waiter_and_the_next_read_retries() {
    let fx = Fixture::new("blob", 8 * BLOCK as usize);
    let source = fx.source("blob", false);
    let cache = cache(CacheConfig::default());
    fx.failing.set("blob", Fault::Permanent, 1);
    let (a, b) = tokio::join!(cache.get(&source, 1), cache.get(&source, 1));
    assert!(matches!(a, Err(CacheError::Fetch { .. })), "{a:?}");
    assert!(matches!(b, Err(CacheError::Fetch { .. })), "{b:?}");
    assert_eq!(&cache.get(&source, 1).await.expect("retry")[..], fx.block(1));
    assert!(matches!(cache.get(&source, 8).await, Err(CacheError::OutOfRange { .. })));
}

fn quick_retries() -> RetryConfig {
    RetryConfig {
        op_timeout: Duration::from_millis(200),
        max_attempts: 4,
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        total_deadline: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn retry_store_retries_transient_faults_only() {
    let fx = Fixture::new("blob", 100);
    let store = RetryStore::new(fx.failing.clone(), quick_retries());
    fx.failing.set("blob", Fault::Transient, 3);
    assert_eq!(&store.read_range("blob", 0..100).await.expect("4th attempt")[..], &fx.data[..]);
    assert_eq!(fx.mem.read_count(), 1, "three faults, then one real read");

    fx.failing.set("blob", Fault::Transient, u64::MAX);
    assert!(matches!(store.read_range("blob", 0..1).await, Err(StoreError::Transient { .. })));
    assert_eq!(fx.failing.faults.load(std::sync::atomic::Ordering::Relaxed), 3 + 4);

    fx.failing.set("blob", Fault::Permanent, u64::MAX);
    assert!(matches!(store.read_range("blob", 0..1).await, Err(StoreError::Other { .. })));
    assert_eq!(fx.failing.faults.load(std::sync::atomic::Ordering::Relaxed), 3 + 4 + 1);
}

#[tokio::test]
async fn retry_store_bounds_a_stalled_backend() {
    let fx = Fixture::new("blob", 100);
    let store = RetryStore::new(fx.failing.clone(), quick_retries());
    fx.failing.set("blob", Fault::Stall, u64::MAX);
    let started = std::time::Instant::now();
    let result = store.read_range("blob", 0..10).await;
    assert!(matches!(result, Err(StoreError::Timeout { .. })), "{result:?}");
    // 4 attempts × 200 ms plus backoff, cut by the 2 s total deadline; generous bound.
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}
