//! Benchmark driver behind `scripts/bench/ckpt-read`: reads the same checkpoint-like files from a
//! local MiniDFS three ways, in one run, repeated, and prints medians and ratios:
//!
//! - `single-stream`: one hdfs-native reader, sequential 64 MiB `read_range` calls (what a naive
//!   loader does; hdfs-native reads a call's blocks one after another);
//! - `striped-lib`: `CkptFs` without FUSE (fresh cache per repetition), 1 MiB reads in order;
//! - `mount`: the same through a real FUSE mount, `std::fs` reads of 1 MiB.
//!
//! Without network namespaces every DataNode shares loopback and the machine's cores, so the
//! ratios show overheads and parallelism on this host, not the multi-NIC speedup of a cluster.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bootseer_ckpt::{CkptConfig, CkptFs, CkptFuse};
use bootseer_common::mount::MountConfig;
use bootseer_common::store::Store;
use bootseer_common::store::hdfs::{HdfsOptions, HdfsStore};
use bootseer_common::testing::fuse::MountGuard;
use bootseer_common::testing::minidfs::{MiniDfs, MiniDfsConfig};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let files = arg("--files", 2) as usize;
    let size_mib = arg("--size-mib", 128);
    let reps = arg("--reps", 3) as usize;
    let datanodes = arg("--datanodes", 4) as usize;
    let block_mib = arg("--block-mib", 16);
    let len = size_mib << 20;

    eprintln!("starting MiniDFS: {datanodes} DataNodes, {block_mib} MiB blocks");
    let dfs = MiniDfs::start(MiniDfsConfig {
        datanodes,
        block_size: block_mib << 20,
        replication: Some(3.min(datanodes)),
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let url = format!("{}/bench", dfs.uri());
    let options =
        HdfsOptions { config_dir: Some(dfs.conf_dir().to_path_buf()), ..Default::default() };
    let store = runtime.block_on(HdfsStore::open_with(&url, &options))?;
    let keys: Vec<String> = (0..files).map(|i| format!("shard-{i:03}.bin")).collect();
    for (i, key) in keys.iter().enumerate() {
        let data: Vec<u8> =
            (0..len).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8)).collect();
        runtime.block_on(store.put(key, data.into()))?;
    }
    let total = len * files as u64;
    eprintln!("wrote {files} × {size_mib} MiB");

    let config = CkptConfig::default();
    let mut results: Vec<(&str, Vec<Duration>)> =
        vec![("single-stream", vec![]), ("striped-lib", vec![]), ("mount", vec![])];
    for rep in 0..reps {
        // single stream
        let t = Instant::now();
        for key in &keys {
            let reader = runtime.block_on(store.open_reader(key))?;
            let mut off = 0;
            while off < len {
                let chunk = runtime.block_on(reader.read_range(off..off + (64 << 20)))?;
                off += chunk.len() as u64;
            }
        }
        results[0].1.push(t.elapsed());

        // striped, as a library
        let fs = CkptFs::new(store.clone(), config.clone(), runtime.handle().clone())?;
        let t = Instant::now();
        for key in &keys {
            let ino = runtime.block_on(fs.lookup(bootseer_ckpt::fs::ROOT_INO, key))?.ino;
            let fh = runtime.block_on(fs.open(ino))?.fh;
            let mut off = 0;
            while off < len {
                let chunk = runtime.block_on(fs.read(fh, off, 1 << 20))?;
                off += chunk.len() as u64;
            }
            fs.release(fh)?;
        }
        results[1].1.push(t.elapsed());
        drop(fs);

        // through the mount
        let fs = Arc::new(CkptFs::new(store.clone(), config.clone(), runtime.handle().clone())?);
        let mount_config = MountConfig::default();
        let adapter = CkptFuse::new(fs.clone(), runtime.handle().clone(), mount_config.clone());
        let mount = MountGuard::mount(adapter, &mount_config)?;
        if nix::unistd::geteuid().is_root() {
            let _ = bootseer_common::mount::raise_read_ahead(mount.path(), 4096);
        }
        let t = Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        for key in &keys {
            let mut f = std::fs::File::open(mount.path().join(key))?;
            let mut n = 0u64;
            loop {
                let got = f.read(&mut buf)?;
                if got == 0 {
                    break;
                }
                n += got as u64;
            }
            anyhow::ensure!(n == len, "short read through the mount: {n} of {len}");
        }
        results[2].1.push(t.elapsed());
        drop(mount);
        eprintln!("rep {} done; mount summary: {}", rep + 1, serde_json::to_string(&fs.summary())?);
    }

    let base = median(results[0].1.clone());
    println!("\n{:<14} {:>10} {:>9} {:>8}  runs (s)", "case", "median s", "MB/s", "× single");
    for (name, runs) in &results {
        let m = median(runs.clone());
        let mbps = total as f64 / 1e6 / m.as_secs_f64();
        let ratio = base.as_secs_f64() / m.as_secs_f64();
        let all: Vec<String> = runs.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect();
        println!(
            "{name:<14} {:>10.3} {mbps:>9.1} {ratio:>8.2}  {}",
            m.as_secs_f64(),
            all.join(" ")
        );
    }
    println!(
        "\n{files} files × {size_mib} MiB, {datanodes} DataNodes, {block_mib} MiB blocks, stripe {} MiB, concurrency {}, readers {}",
        config.stripe_size >> 20,
        config.concurrency,
        config.readers
    );
    Ok(())
}
