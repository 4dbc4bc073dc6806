//! Benchmark driver behind `scripts/bench/ckpt-read`: reads the same checkpoint-like files from a
//! local MiniDFS three ways, in one run, repeated, and prints medians and ratios:
//!
//! - `single-stream`: one hdfs-native reader, sequential 64 MiB `read_range` calls (what a naive
//!   loader does; hdfs-native reads a call's blocks one after another);
//! - `striped-lib`: `CkptFs` without FUSE (fresh cache per repetition), 1 MiB reads in order;
//! - `hadoop-cat`: Hadoop's own Java client, `FsShell -cat` (what `hadoop fs -cat` runs), JVM
//!   start included, as users pay it;
//! - `mount-read`: the same through a real FUSE mount, `std::fs` reads of 1 MiB;
//! - `mount-cat`: `cat FILE > /dev/null` on a fresh mount;
//! - `mount-fio`: fio running `scripts/fio/ckpt-seq.fio` (one sequential 1 MiB reader), on a
//!   fresh mount. After the repetitions, `scripts/fio/ckpt-rand.fio` (4 random 128 KiB readers,
//!   10 s) runs once per repetition on a fresh mount and its MB/s is printed beside the table.
//!
//! `--dn-mbit N` gives each DataNode its own `tc htb` class of N Mbit/s on `lo`, matched on its
//! transfer port, so DataNodes behave like hosts with their own NICs. `scripts/bench/ckpt-read`
//! runs this driver in a private network namespace so the shaping touches only the benchmark.
//! Without shaping every DataNode shares loopback and the machine's cores, so the ratios show
//! overheads and parallelism on this host, not a cluster's multi-NIC speedup.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
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

fn sh(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(cmd).args(args).status()?;
    anyhow::ensure!(status.success(), "{cmd} {} failed: {status}", args.join(" "));
    Ok(())
}

/// One htb class of `mbit` per DataNode on `lo`, matched on its transfer port as source port
/// (DataNode → reader is the direction a read waits for); all other traffic is unshaped.
fn shape_datanodes(ports: &[u16], mbit: u64) -> anyhow::Result<()> {
    let _ = Command::new("tc")
        .args(["qdisc", "del", "dev", "lo", "root"])
        .stderr(Stdio::null())
        .status();
    sh("tc", &["qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "99"])?;
    sh(
        "tc",
        &["class", "add", "dev", "lo", "parent", "1:", "classid", "1:99", "htb", "rate", "100gbit"],
    )?;
    for (i, port) in ports.iter().enumerate() {
        let class = format!("1:{}", 10 + i);
        let rate = format!("{mbit}mbit");
        sh(
            "tc",
            &[
                "class", "add", "dev", "lo", "parent", "1:", "classid", &class, "htb", "rate",
                &rate, "ceil", &rate,
            ],
        )?;
        let port = port.to_string();
        sh(
            "tc",
            &[
                "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "sport", &port, "0xffff", "flowid", &class,
            ],
        )?;
    }
    Ok(())
}

/// Hadoop's Java client reading every file to /dev/null, as `hadoop fs -cat` does.
fn hadoop_cat(dfs: &MiniDfs, url: &str, keys: &[String]) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/minidfs/target");
    let classpath = std::fs::read_to_string(root.join("classpath.txt"))?;
    let cp = format!("{}:{}", dfs.conf_dir().display(), classpath.trim());
    let mut args = vec![
        "-Xmx1g".to_string(),
        "-cp".into(),
        cp,
        "org.apache.hadoop.fs.FsShell".into(),
        "-cat".into(),
    ];
    args.extend(keys.iter().map(|k| format!("{url}/{k}")));
    let status =
        Command::new("java").args(&args).stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    anyhow::ensure!(status.success(), "FsShell -cat failed: {status}");
    Ok(())
}

fn mounted<T>(
    store: &HdfsStore,
    config: &CkptConfig,
    runtime: &tokio::runtime::Runtime,
    read: impl FnOnce(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<(Duration, T)> {
    let fs = Arc::new(CkptFs::new(store.clone(), config.clone(), runtime.handle().clone())?);
    let mount_config = MountConfig::default();
    let adapter = CkptFuse::new(fs.clone(), runtime.handle().clone(), mount_config.clone());
    let mount = MountGuard::mount(adapter, &mount_config)?;
    if nix::unistd::geteuid().is_root() {
        let _ = bootseer_common::mount::raise_read_ahead(mount.path(), 4096);
    }
    let t = Instant::now();
    let out = read(mount.path())?;
    let took = t.elapsed();
    drop(mount);
    eprintln!("  mount summary: {}", serde_json::to_string(&fs.summary())?);
    Ok((took, out))
}

fn main() -> anyhow::Result<()> {
    let files = arg("--files", 2) as usize;
    let size_mib = arg("--size-mib", 128);
    let reps = arg("--reps", 3) as usize;
    let datanodes = arg("--datanodes", 4) as usize;
    let block_mib = arg("--block-mib", 16);
    let dn_mbit = arg("--dn-mbit", 0);
    let len = size_mib << 20;

    eprintln!("starting MiniDFS: {datanodes} DataNodes, {block_mib} MiB blocks");
    let dfs = MiniDfs::start(MiniDfsConfig {
        datanodes,
        block_size: block_mib << 20,
        replication: Some(3.min(datanodes)),
    })?;
    if dn_mbit > 0 {
        let ports: Vec<u16> = dfs
            .datanode_addrs()
            .iter()
            .filter_map(|a| a.rsplit(':').next()?.parse().ok())
            .collect();
        anyhow::ensure!(ports.len() == datanodes, "DataNode ports: {:?}", dfs.datanode_addrs());
        shape_datanodes(&ports, dn_mbit)?;
        eprintln!("shaped DataNode ports {ports:?} to {dn_mbit} Mbit/s each");
    }
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

    let defaults = CkptConfig::default();
    let config = CkptConfig {
        readers: arg("--readers", defaults.readers as u64) as usize,
        concurrency: arg("--concurrency", defaults.concurrency as u64) as usize,
        stripe_size: arg("--stripe-mib", defaults.stripe_size >> 20) << 20,
        ..defaults
    };
    let have_fio = Command::new("fio").arg("--version").stdout(Stdio::null()).status().is_ok();
    let mut results: Vec<(&str, Vec<Duration>)> = vec![
        ("single-stream", vec![]),
        ("hadoop-cat", vec![]),
        ("striped-lib", vec![]),
        ("mount-read", vec![]),
        ("mount-cat", vec![]),
    ];
    if have_fio {
        results.push(("mount-fio", vec![]));
    }
    for rep in 0..reps {
        // single stream
        let t = Instant::now();
        for key in &keys {
            let reader = runtime.block_on(store.open_reader(key))?;
            let mut off = 0;
            while off < len {
                let chunk =
                    runtime.block_on(reader.read_range(off..(off + (64 << 20)).min(len)))?;
                anyhow::ensure!(!chunk.is_empty(), "empty read at {off}");
                off += chunk.len() as u64;
            }
        }
        results[0].1.push(t.elapsed());

        let t = Instant::now();
        hadoop_cat(&dfs, &url, &keys)?;
        results[1].1.push(t.elapsed());

        // striped, as a library: the ceiling for the mount
        let fs = CkptFs::new(store.clone(), config.clone(), runtime.handle().clone())?;
        let t = Instant::now();
        for key in &keys {
            let ino = runtime.block_on(fs.lookup(bootseer_ckpt::fs::ROOT_INO, key))?.ino;
            let fh = runtime.block_on(fs.open(ino))?.fh;
            let mut off = 0;
            while off < len {
                let chunk = runtime.block_on(fs.read(fh, off, 1 << 20))?;
                anyhow::ensure!(!chunk.is_empty(), "short read at {off}");
                off += chunk.len() as u64;
            }
            fs.release(fh)?;
        }
        results[2].1.push(t.elapsed());
        drop(fs);

        let (took, ()) = mounted(&store, &config, &runtime, |root| {
            let mut buf = vec![0u8; 1 << 20];
            for key in &keys {
                let mut f = std::fs::File::open(root.join(key))?;
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
            Ok(())
        })?;
        results[3].1.push(took);

        let (took, ()) = mounted(&store, &config, &runtime, |root| {
            let paths: Vec<_> = keys.iter().map(|k| root.join(k)).collect();
            let status = Command::new("cat").args(&paths).stdout(Stdio::null()).status()?;
            anyhow::ensure!(status.success(), "cat failed");
            Ok(())
        })?;
        results[4].1.push(took);

        if have_fio {
            let (took, ()) = mounted(&store, &config, &runtime, |root| {
                // The job file users run (scripts/fio/ckpt-seq.fio), its one-reader section.
                let status = Command::new("fio")
                    .args(["--readonly", "--section=seq-1job", "scripts/fio/ckpt-seq.fio"])
                    .env("DIR", root)
                    .env("FILES", keys.join(":"))
                    .stdout(Stdio::null())
                    .status()?;
                anyhow::ensure!(status.success(), "fio failed");
                Ok(())
            })?;
            results[5].1.push(took);
        }
        eprintln!("rep {} done", rep + 1);
    }

    // Random 128 KiB preads (scripts/fio/ckpt-rand.fio), a fresh mount per repetition.
    let mut rand_mbps = Vec::new();
    if have_fio {
        for _ in 0..reps {
            let (_, mbps) = mounted(&store, &config, &runtime, |root| {
                let out = Command::new("fio")
                    .args(["--readonly", "--output-format=json", "scripts/fio/ckpt-rand.fio"])
                    .env("DIR", root)
                    .env("FILES", keys.join(":"))
                    .env("RUNTIME", "10")
                    .output()?;
                anyhow::ensure!(out.status.success(), "fio failed");
                let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                Ok(json["jobs"][0]["read"]["bw_bytes"].as_f64().unwrap_or(0.0) / 1e6)
            })?;
            rand_mbps.push(mbps);
        }
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
    if !rand_mbps.is_empty() {
        rand_mbps.sort_by(f64::total_cmp);
        let all: Vec<String> = rand_mbps.iter().map(|m| format!("{m:.1}")).collect();
        println!(
            "mount-fio-rand: median {:.1} MB/s (4 random 128 KiB readers, 10 s; runs {})",
            rand_mbps[rand_mbps.len() / 2],
            all.join(" ")
        );
    }
    println!(
        "\n{files} files × {size_mib} MiB, {datanodes} DataNodes ({}), {block_mib} MiB blocks, stripe {} MiB, concurrency {}, readers {}",
        if dn_mbit > 0 { format!("{dn_mbit} Mbit/s each") } else { "unshaped".into() },
        config.stripe_size >> 20,
        config.concurrency,
        config.readers
    );
    Ok(())
}
