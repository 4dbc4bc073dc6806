//! `bootseer-demo`: the foundation end to end on embedded defaults, no setup needed beyond
//! `scripts/minidfs/build.sh`.
//!
//! 1. A local `file://` store (the embedded default) and a local MiniDFS (3 DataNodes) each get
//!    the same checkpoint-like shard.
//! 2. The shard is read back two ways from each store: one sequential stream of range reads
//!    (what a plain client does), and through the block cache with every block prefetched
//!    concurrently (what the filesystems build on).
//! 3. Every read is checked by sha256 against the original; the table shows time and MB/s.
//!
//! `BOOTSEER_DEMO_MB` sets the shard size (default 64).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, ensure};
use bootseer_common::cache::{BlockCache, CacheConfig, DynSource, Priority, StoreBlocks};
use bootseer_common::digest::Digest;
use bootseer_common::store::{self, DynStore, OpenOptions};
use bootseer_common::testing::mem::pattern;
use bootseer_common::testing::minidfs::{MiniDfs, MiniDfsConfig};
use bytes::Bytes;

const BLOCK: u64 = 1 << 20;

async fn sequential(store: &DynStore, key: &str, len: u64) -> anyhow::Result<Digest> {
    let mut all = Vec::with_capacity(len as usize);
    let mut pos = 0;
    while pos < len {
        let chunk = store.read_range(key, pos..(pos + BLOCK).min(len)).await?;
        ensure!(!chunk.is_empty(), "short read at {pos}");
        pos += chunk.len() as u64;
        all.extend_from_slice(&chunk);
    }
    Ok(Digest::of(&all))
}

async fn through_cache(store: &DynStore, key: &str, len: u64, id: &str) -> anyhow::Result<Digest> {
    let cache = BlockCache::new(
        CacheConfig {
            memory_bytes: len + BLOCK,
            prefetch_concurrency: 8,
            ..CacheConfig::default()
        },
        tokio::runtime::Handle::current(),
    )?;
    let source: DynSource = Arc::new(StoreBlocks::new(id, store.clone(), key, len, BLOCK));
    let blocks = source.block_count();
    // Individual prefetch requests so the eight workers each take one block at a time.
    for i in 0..blocks {
        cache.spawn_prefetch(&source, i..i + 1, Priority::Background);
    }
    let mut all = Vec::with_capacity(len as usize);
    for i in 0..blocks {
        all.extend_from_slice(&cache.get(&source, i).await?);
    }
    Ok(Digest::of(&all))
}

async fn run_store(name: &str, store: DynStore, data: &Bytes) -> anyhow::Result<()> {
    let key = "ckpt/shard-00000.bin";
    let started = Instant::now();
    store.put(key, data.clone()).await.with_context(|| format!("writing to {name}"))?;
    let put = started.elapsed();
    let want = Digest::of(data);
    let len = data.len() as u64;
    let mb = len as f64 / 1e6;
    println!(
        "{name:<8} put        {:>8.2} s {:>9.1} MB/s",
        put.as_secs_f64(),
        mb / put.as_secs_f64()
    );
    for (how, which) in [("stream", 0), ("cached", 1)] {
        let started = Instant::now();
        let got = if which == 0 {
            sequential(&store, key, len).await?
        } else {
            through_cache(&store, key, len, &format!("{name}/{key}")).await?
        };
        let took = started.elapsed().as_secs_f64();
        ensure!(got == want, "{name} {how}: sha256 {got} differs from the original {want}");
        println!("{name:<8} {how:<10} {took:>8.2} s {:>9.1} MB/s  sha256 ok", mb / took);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bootseer_common::telemetry::init("warn");
    let mb: usize =
        std::env::var("BOOTSEER_DEMO_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let data = Bytes::from(pattern(42, mb << 20));
    println!("shard: {mb} MiB, blocks of {} KiB", BLOCK >> 10);

    let dir = tempfile::tempdir()?;
    let local =
        store::open(&format!("file://{}", dir.path().display()), &OpenOptions::default()).await?;
    run_store("file://", local, &data).await?;

    let started = Instant::now();
    let dfs = MiniDfs::start(MiniDfsConfig::default()).context("starting MiniDFS")?;
    println!("MiniDFS  ready in {:.1} s at {}", started.elapsed().as_secs_f64(), dfs.uri());
    let url = format!("{}/demo", dfs.uri().trim_end_matches('/'));
    let hdfs = store::open(&url, &OpenOptions::default()).await?;
    run_store("hdfs://", hdfs, &data).await?;
    Ok(())
}
