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
//!   10 s) runs once per repetition on a fresh mount and its MB/s is printed beside the table;
//! - `cat-1-dn-slow` (`--slow-dn-kbit K`, with `--dn-mbit`): `mount-cat` again with the first
//!   DataNode's link cut to K kbit/s, and its time ÷ the healthy `mount-cat`.
//!
//! `--loader` runs the loader cases instead (see [`loader`]): safetensors shards read as ML
//! loaders read them, each case beside the same reads of a local copy from a cold page cache.
//!
//! `--dn-mbit N` gives each DataNode its own `tc htb` class of N Mbit/s on `lo`, matched on its
//! transfer port, so DataNodes behave like hosts with their own NICs. `scripts/bench/ckpt-read`
//! runs this driver in a private network namespace so the shaping touches only the benchmark.
//! Without shaping every DataNode shares loopback and the machine's cores, so the ratios show
//! overheads and parallelism on this host, not a cluster's multi-NIC speedup.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bootseer_ckpt::{CkptConfig, CkptFs, CkptFuse};
use bootseer_common::mount::MountConfig;
use bootseer_common::store::Store;
use bootseer_common::store::hdfs::{HdfsOptions, HdfsStore};
use bootseer_common::testing::fuse::MountGuard;
use bootseer_common::testing::minidfs::{MiniDfs, MiniDfsConfig};

/// The value after `name` on the command line, if any.
fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn arg(name: &str, default: u64) -> u64 {
    arg_str(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `--read-ahead-kb` (default: what bootseer-ckpt sets), as `-o read_ahead=` would set it.
fn read_ahead_kb() -> u32 {
    arg("--read-ahead-kb", bootseer_ckpt::cli::READ_AHEAD_KB.into()) as u32
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
) -> anyhow::Result<(Duration, (T, bootseer_ckpt::fs::Summary))> {
    let fs = CkptFs::new(store.clone(), config.clone(), runtime.handle().clone())?;
    let mount_config = MountConfig::default();
    let adapter = CkptFuse::new(fs.clone(), runtime.handle().clone(), mount_config.clone());
    let mount = MountGuard::mount(adapter, &mount_config)?;
    if nix::unistd::geteuid().is_root() {
        let _ = bootseer_common::mount::raise_read_ahead(mount.path(), read_ahead_kb());
    }
    let t = Instant::now();
    let out = read(mount.path())?;
    let took = t.elapsed();
    drop(mount);
    let summary = fs.summary();
    eprintln!("  mount summary: {}", serde_json::to_string(&summary)?);
    Ok((took, (out, summary)))
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
    if std::env::args().any(|a| a == "--loader") {
        let defaults = CkptConfig::default();
        let config = CkptConfig {
            readers: arg("--readers", defaults.readers as u64) as usize,
            concurrency: arg("--concurrency", defaults.concurrency as u64) as usize,
            stripe_size: arg("--stripe-mib", defaults.stripe_size >> 20) << 20,
            ..defaults
        };
        let shape = format!(
            "{files} shards × {size_mib} MiB, {datanodes} DataNodes ({}), {block_mib} MiB blocks",
            if dn_mbit > 0 { format!("{dn_mbit} Mbit/s each") } else { "unshaped".into() },
        );
        return loader::run(&store, &config, &runtime, files, len, reps, &shape);
    }
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
    let cat_all = |root: &Path| {
        let paths: Vec<_> = keys.iter().map(|k| root.join(k)).collect();
        let status = Command::new("cat").args(&paths).stdout(Stdio::null()).status()?;
        anyhow::ensure!(status.success(), "cat failed");
        Ok(())
    };
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

        let (took, ((), _)) = mounted(&store, &config, &runtime, |root| {
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

        let (took, ((), _)) = mounted(&store, &config, &runtime, cat_all)?;
        results[4].1.push(took);

        if have_fio {
            let (took, ((), _)) = mounted(&store, &config, &runtime, |root| {
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
            let (_, (mbps, _)) = mounted(&store, &config, &runtime, |root| {
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

    // `--slow-dn-kbit K` (with `--dn-mbit`): the first DataNode's class cut to K kbit/s (a
    // crawling host: bytes still trickle, so its reads neither fail nor time out), then the same
    // `cat` on a fresh mount per repetition; the healthy `mount-cat` above is the baseline. Last
    // of all cases: `tc class change` back to the old rate keeps the burst computed for K kbit/s,
    // so the DataNode stays throttled for whatever runs after.
    let slow_kbit = arg("--slow-dn-kbit", 0);
    let mut slow_runs = Vec::new();
    if slow_kbit > 0 && dn_mbit > 0 {
        let rate = format!("{slow_kbit}kbit");
        sh(
            "tc",
            &[
                "class", "change", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate",
                &rate, "ceil", &rate,
            ],
        )?;
        for _ in 0..reps {
            let (took, ((), s)) = mounted(&store, &config, &runtime, cat_all)?;
            eprintln!(
                "  one DataNode slow: {took:?}, {} hedged, {} hedge wins",
                s.stripes_hedged, s.hedge_wins
            );
            slow_runs.push(took);
        }
        results.push(("cat-1-dn-slow", slow_runs.clone()));
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
    if !slow_runs.is_empty() {
        let healthy = median(results[4].1.clone()).as_secs_f64();
        println!(
            "cat-1-dn-slow ÷ mount-cat: {:.2} (one DataNode at {slow_kbit} kbit/s, the rest at {dn_mbit} Mbit/s)",
            median(slow_runs).as_secs_f64() / healthy
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

/// The loader cases (`--loader`): `--files` safetensors shards of `--size-mib` each, written by
/// this driver (F32 tensors of 0.25–6 MiB whose names sort in another order than their bytes
/// lie), read on a fresh mount per case and per repetition:
///
/// - `sequential`: every shard start to end, 1 MiB reads (the links' sequential speed);
/// - `random-20`: the headers, then 20 tensors picked at random (a tensor-parallel rank's
///   slice), each one `pread` of the whole tensor;
/// - `key-order`: the headers, then every tensor in key order (not file order);
/// - `key-no-idx`: the same with the mount's key-order prefetch off (`--no-key-order`: what
///   reads the size asked and a byte window alone do);
/// - `preads-64`: 64 threads of random 1 MiB O_DIRECT preads for 10 s (latency p50/p99).
///
/// Each prints MB/s, bytes fetched ÷ bytes served (the mount's summary, which counts what the
/// kernel's read-ahead asked for too), bytes fetched ÷ bytes the loader asked for, and the same
/// reads of a local copy after `posix_fadvise(DONTNEED)` (cold page cache).
mod loader {
    use std::collections::BTreeMap;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use bootseer_ckpt::CkptConfig;
    use bootseer_common::store::Store;
    use bootseer_common::store::hdfs::HdfsStore;

    /// One tensor of a shard: (shard, name, byte range in the file).
    type Tensor = (usize, String, std::ops::Range<u64>);

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// A safetensors file of about `len` bytes and its tensors' ranges.
    fn shard(seed: u64, len: u64) -> (Vec<u8>, Vec<(String, std::ops::Range<u64>)>) {
        let mut rng = seed * 0x9E37_79B9 + 1;
        let mut sizes = Vec::new();
        let mut total = 0;
        while total < len {
            let elems = (64 << 10) + xorshift(&mut rng) % ((1536 << 10) - (64 << 10));
            sizes.push(elems);
            total += elems * 4;
        }
        // Names sort in another order than the bytes lie: key order jumps around the file.
        let n = sizes.len();
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        let mut ranges = Vec::new();
        for (i, elems) in sizes.iter().enumerate() {
            let name = format!("layers.{:04}.weight", (i * 7919) % n);
            let end = offset + elems * 4;
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": "F32", "shape": [elems], "data_offsets": [offset, end]}),
            );
            ranges.push((name, offset..end));
            offset = end;
        }
        let mut json = serde_json::to_vec(&header).expect("json");
        while !(8 + json.len()).is_multiple_of(8) {
            json.push(b' ');
        }
        let base = 8 + json.len() as u64;
        let mut data = Vec::with_capacity((base + offset) as usize);
        data.extend_from_slice(&(json.len() as u64).to_le_bytes());
        data.extend_from_slice(&json);
        data.extend((0..offset).map(|j| (j as u8).wrapping_mul(31).wrapping_add(seed as u8)));
        let ranges = ranges.into_iter().map(|(n, r)| (n, r.start + base..r.end + base)).collect();
        (data, ranges)
    }

    /// A shard's tensors as a loader finds them: the 8-byte length, the JSON header.
    fn read_header(path: &Path, shard: usize) -> anyhow::Result<Vec<Tensor>> {
        let file = std::fs::File::open(path)?;
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 0)?;
        let len = u64::from_le_bytes(len);
        let mut json = vec![0u8; len as usize];
        file.read_exact_at(&mut json, 8)?;
        let header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&json)?;
        let base = 8 + len;
        let mut out = Vec::new();
        for (name, v) in header {
            let offsets = &v["data_offsets"];
            let (a, b) = (offsets[0].as_u64(), offsets[1].as_u64());
            let (Some(a), Some(b)) = (a, b) else { continue };
            out.push((shard, name, base + a..base + b));
        }
        Ok(out)
    }

    fn read_tensors(paths: &[PathBuf], tensors: &[Tensor]) -> anyhow::Result<u64> {
        let files: Vec<std::fs::File> =
            paths.iter().map(std::fs::File::open).collect::<Result<_, _>>()?;
        let mut bytes = 0;
        let verbose = std::env::var_os("BOOTSEER_BENCH_VERBOSE").is_some();
        for (shard, _, range) in tensors {
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            let t = Instant::now();
            files[*shard].read_exact_at(&mut buf, range.start)?;
            if verbose {
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let mb = buf.len() as f64 / 1e6;
                eprintln!(
                    "  tensor {shard}@{}: {mb:.2} MB in {ms:.1} ms ({:.1} MB/s)",
                    range.start,
                    mb / ms * 1e3
                );
            }
            bytes += buf.len() as u64;
        }
        Ok(bytes)
    }

    /// What one case read: bytes the reader got, and the latencies of its reads (preads only).
    struct Outcome {
        bytes: u64,
        latencies: Vec<Duration>,
    }

    fn case(name: &str, paths: &[PathBuf], seed: u64) -> anyhow::Result<Outcome> {
        let t = Instant::now();
        let headers: Vec<Tensor> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| read_header(p, i))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        eprintln!("  {name}: headers read in {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        let none = Vec::new();
        match name {
            "sequential" => {
                let mut bytes = 0;
                let mut buf = vec![0u8; 1 << 20];
                for p in paths {
                    let mut f = std::fs::File::open(p)?;
                    loop {
                        let n = std::io::Read::read(&mut f, &mut buf)?;
                        if n == 0 {
                            break;
                        }
                        bytes += n as u64;
                    }
                }
                Ok(Outcome { bytes, latencies: none })
            }
            "random-20" => {
                let mut rng = seed * 2 + 1; // odd (xorshift needs a non-zero state), one per seed
                let mut picked = Vec::new();
                while picked.len() < 20.min(headers.len()) {
                    let t = &headers[(xorshift(&mut rng) % headers.len() as u64) as usize];
                    if !picked.iter().any(|p: &Tensor| p.1 == t.1 && p.0 == t.0) {
                        picked.push(t.clone());
                    }
                }
                Ok(Outcome { bytes: read_tensors(paths, &picked)?, latencies: none })
            }
            "key-order" => {
                let mut all = headers;
                all.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
                Ok(Outcome { bytes: read_tensors(paths, &all)?, latencies: none })
            }
            "preads-64" => {
                let lens: Vec<u64> = paths
                    .iter()
                    .map(|p| std::fs::metadata(p).map(|m| m.len()))
                    .collect::<Result<_, _>>()?;
                let results = std::thread::scope(|s| {
                    let jobs: Vec<_> = (0..64u64)
                        .map(|t| {
                            let (paths, lens) = (paths, &lens);
                            s.spawn(move || -> anyhow::Result<(u64, Vec<Duration>)> {
                                let files: Vec<std::fs::File> = paths
                                    .iter()
                                    .map(|p| {
                                        std::fs::OpenOptions::new()
                                            .read(true)
                                            .custom_flags(libc::O_DIRECT)
                                            .open(p)
                                    })
                                    .collect::<Result<_, _>>()?;
                                let mut backing = vec![0u8; (1 << 20) + 4096];
                                let skew = backing.as_ptr().align_offset(4096);
                                let buf = &mut backing[skew..skew + (1 << 20)];
                                let mut rng = (seed ^ (t + 1)).wrapping_mul(0x2545_F491) | 1;
                                let (mut bytes, mut took) = (0, Vec::new());
                                let end = Instant::now() + Duration::from_secs(10);
                                while Instant::now() < end {
                                    let i = (xorshift(&mut rng) % files.len() as u64) as usize;
                                    let span = lens[i].saturating_sub(1 << 20).max(1);
                                    let off = xorshift(&mut rng) % span / 4096 * 4096;
                                    let t0 = Instant::now();
                                    files[i].read_exact_at(buf, off)?;
                                    took.push(t0.elapsed());
                                    bytes += buf.len() as u64;
                                }
                                Ok((bytes, took))
                            })
                        })
                        .collect();
                    jobs.into_iter().map(|j| j.join().expect("reader")).collect::<Vec<_>>()
                });
                let mut out = Outcome { bytes: 0, latencies: Vec::new() };
                for r in results {
                    let (bytes, took) = r?;
                    out.bytes += bytes;
                    out.latencies.extend(took);
                }
                Ok(out)
            }
            other => anyhow::bail!("unknown case {other}"),
        }
    }

    fn drop_page_cache(paths: &[PathBuf]) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd;
        for p in paths {
            let f = std::fs::File::open(p)?;
            f.sync_all()?;
            // SAFETY: an advisory call on an fd we own for the whole file; no memory is passed.
            let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            anyhow::ensure!(rc == 0, "posix_fadvise: {rc}");
        }
        Ok(())
    }

    pub fn run(
        store: &HdfsStore,
        config: &CkptConfig,
        runtime: &tokio::runtime::Runtime,
        files: usize,
        len: u64,
        reps: usize,
        shape: &str,
    ) -> anyhow::Result<()> {
        let local =
            tempfile::Builder::new().prefix("bootseer-bench-local-").tempdir_in("/var/tmp")?;
        let mut keys = Vec::new();
        let mut local_paths = Vec::new();
        let mut tensors = 0;
        for i in 0..files {
            let (data, ranges) = shard(i as u64 + 1, len);
            tensors += ranges.len();
            let key = format!("model-{:05}-of-{files:05}.safetensors", i + 1);
            std::fs::write(local.path().join(&key), &data)?;
            local_paths.push(local.path().join(&key));
            runtime.block_on(store.put(&key, data.into()))?;
            keys.push(key);
        }
        eprintln!("wrote {files} safetensors shards, {tensors} tensors");
        println!(
            "\ncase             MB/s     local   fetched/   fetched/     mount        p50        p99  runs"
        );
        println!(
            "                mount      cold     served      asked        MB                         (MB/s)"
        );
        // `--cases a,b`: only these (default all), e.g. to look into one case.
        let all = ["sequential", "random-20", "key-order", "key-no-idx", "preads-64"];
        let only = super::arg_str("--cases");
        let only: Vec<&str> = only.as_deref().map_or(all.to_vec(), |o| o.split(',').collect());
        if let Some(bad) = only.iter().find(|c| !all.contains(c)) {
            anyhow::bail!("unknown case {bad}; the cases are {}", all.join(", "));
        }
        for name in all.into_iter().filter(|c| only.contains(c)) {
            let (config, reads) = match name {
                "key-no-idx" => (&CkptConfig { key_order: false, ..config.clone() }, "key-order"),
                _ => (config, name),
            };
            let (mut mbps, mut local_mbps, mut ratios, mut asked, mut served) =
                (vec![], vec![], vec![], vec![], vec![]);
            let mut latencies = Vec::new();
            for rep in 0..reps {
                let seed = 0xC0FFEE + rep as u64;
                let (took, (outcome, summary)) = super::mounted(store, config, runtime, |root| {
                    let paths: Vec<PathBuf> = keys.iter().map(|k| root.join(k)).collect();
                    case(reads, &paths, seed)
                })?;
                mbps.push(outcome.bytes as f64 / 1e6 / took.as_secs_f64());
                ratios.push(summary.bytes_fetched as f64 / summary.bytes_read.max(1) as f64);
                asked.push(summary.bytes_fetched as f64 / outcome.bytes.max(1) as f64);
                served.push(summary.bytes_read as f64 / 1e6);
                latencies.extend(outcome.latencies);
                drop_page_cache(&local_paths)?;
                let t = Instant::now();
                let local_outcome = case(reads, &local_paths, seed)?;
                local_mbps.push(local_outcome.bytes as f64 / 1e6 / t.elapsed().as_secs_f64());
            }
            let med = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let runs: Vec<String> = mbps.iter().map(|m| format!("{m:.1}")).collect();
            latencies.sort();
            let pct = |p: f64| match latencies.len() {
                0 => "-".to_string(),
                n => format!(
                    "{:.1} ms",
                    latencies[((n - 1) as f64 * p) as usize].as_secs_f64() * 1e3
                ),
            };
            println!(
                "{name:<11} {:>9.1} {:>9.1} {:>10.3} {:>10.3} {:>9.1} {:>10} {:>10}  {}",
                med(mbps),
                med(local_mbps),
                med(ratios),
                med(asked),
                med(served),
                pct(0.5),
                pct(0.99),
                runs.join(" ")
            );
        }
        println!(
            "\n{shape}; medians of {reps}; stripe {} MiB, chunk {} KiB, --memory {} MiB, kernel read-ahead {} KiB",
            config.stripe_size >> 20,
            config.chunk_size >> 10,
            config.memory_bytes >> 20,
            super::read_ahead_kb()
        );
        Ok(())
    }
}
