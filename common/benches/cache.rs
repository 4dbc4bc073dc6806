//! Micro-benchmarks of the block cache's hot path: a memory-tier hit, a miss that fetches from
//! an in-memory store, and 16 concurrent misses on one block collapsing into one fetch
//! (single-flight). Sized for 2 cores: small samples, short measurement times.

use std::sync::Arc;
use std::time::Duration;

use bootseer_common::cache::{BlockCache, CacheConfig, DynSource, StoreBlocks};
use bootseer_common::store::DynStore;
use bootseer_common::testing::mem::{MemStore, pattern};
use criterion::{Criterion, criterion_group, criterion_main};

const BLOCK: u64 = 1 << 20;
const BLOCKS: u64 = 64;

fn setup(runtime: &tokio::runtime::Runtime) -> (BlockCache, DynSource) {
    let mem = Arc::new(MemStore::new());
    mem.insert("blob", pattern(1, (BLOCK * BLOCKS) as usize));
    let store: DynStore = mem;
    let source: DynSource =
        Arc::new(StoreBlocks::new("blob@1", store, "blob", BLOCK * BLOCKS, BLOCK));
    let cache = BlockCache::new(CacheConfig::default(), runtime.handle().clone()).expect("cache");
    (cache, source)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("cache");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));

    let (cache, source) = setup(&runtime);
    runtime.block_on(cache.get(&source, 0)).expect("warm");
    group.bench_function("hit_memory_1MiB", |b| {
        b.iter(|| runtime.block_on(cache.get(&source, 0)).expect("hit"));
    });

    // Every iteration uses a fresh cache so each get is a miss served by the store.
    group.bench_function("miss_fetch_1MiB", |b| {
        b.iter_batched(
            || setup(&runtime),
            |(cache, source)| runtime.block_on(cache.get(&source, 7)).expect("miss"),
            criterion::BatchSize::SmallInput,
        );
    });

    group.bench_function("miss_16_concurrent_readers_single_flight", |b| {
        b.iter_batched(
            || setup(&runtime),
            |(cache, source)| {
                runtime.block_on(async {
                    let readers: Vec<_> = (0..16)
                        .map(|_| {
                            let (cache, source) = (cache.clone(), source.clone());
                            tokio::spawn(async move { cache.get(&source, 3).await })
                        })
                        .collect();
                    for r in readers {
                        r.await.expect("join").expect("read");
                    }
                    assert_eq!(cache.stats().fetch_calls, 1);
                })
            },
            criterion::BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
