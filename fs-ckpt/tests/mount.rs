//! Reads through a real FUSE mount of a real HDFS (MiniDFS: 3 DataNodes, 1 MiB blocks), compared
//! with sha256 of the bytes written. One cluster serves every case in this binary: the cases run
//! in one test, one after another. DataNode faults live in `faults.rs` with their own cluster.

mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{BLOCK, Env, bytes, sha};

fn read_all(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Maps `path` read-only and hashes the mapping.
fn mmap_sha(path: &Path) -> String {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("open for mmap");
    let len = file.metadata().expect("stat").len() as usize;
    assert!(len > 0);
    // SAFETY: a fresh read-only private mapping of an open file, `len` bytes; unmapped below
    // and never used after.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(ptr, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    // SAFETY: `ptr` maps `len` readable bytes until the munmap below.
    let slice = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    let digest = sha(slice);
    // SAFETY: unmapping exactly what was mapped; `slice` is dead past this point.
    unsafe { libc::munmap(ptr, len) };
    digest
}

#[test]
fn reads_through_the_mount_equal_the_source() {
    let Some(dfs) = support::start_dfs() else { return };
    let b = BLOCK as usize;
    let sizes: Vec<(String, usize)> = [0, 1, b - 1, b, b + 1, 6 * b + 12_345, 3 * b - 777]
        .iter()
        .map(|&n| (format!("size-{n}.bin"), n))
        .collect();
    let mut files: Vec<(String, Vec<u8>)> =
        sizes.iter().enumerate().map(|(i, (k, n))| (k.clone(), bytes(i as u64 + 1, *n))).collect();
    files.push(("sub/dir/nested.bin".into(), bytes(99, 2 * b + 5)));
    files.push(("swap.bin".into(), bytes(1000, 2 * b + 3)));
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(k, d)| (k.as_str(), d.as_slice())).collect();
    let Some(env) = support::setup(dfs, &refs, support::test_config()) else { return };
    let root = env.mount.path().to_path_buf();

    // Directory tree, sizes and kinds.
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = sizes.iter().map(|(k, _)| k.clone()).collect();
    want.extend(["sub".to_string(), "swap.bin".to_string()]);
    want.sort();
    assert_eq!(names, want);
    assert!(std::fs::metadata(root.join("sub/dir")).expect("stat dir").is_dir());
    for (key, data) in &files {
        let md = std::fs::metadata(root.join(key)).expect("stat");
        assert_eq!(md.len(), data.len() as u64, "{key}");
        assert!(md.is_file());
    }
    assert_eq!(
        std::fs::metadata(root.join("nope")).map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::NotFound)
    );
    assert!(std::fs::File::create(root.join("new")).is_err(), "the mount is read-only");

    // Whole-file sha256 for every size (swap.bin stays unread until `replaced_file`).
    let (swap, files) = files.split_last().expect("files");
    for (key, data) in files {
        assert_eq!(sha(&read_all(&root.join(key))), sha(data), "{key}");
    }

    // Thousands of random preads on a multi-block file, through one handle.
    let (key, data) = &files[5];
    let file = std::fs::File::open(root.join(key)).expect("open");
    let mut rng = 0x1234_5678u64;
    let mut next = |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let len = data.len() as u64;
    for _ in 0..3000 {
        let offset = next(len + 10);
        let big = next(10) == 0;
        let size = 1 + next(if big { 3 * BLOCK } else { 64 << 10 });
        let end = (offset + size).min(len);
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        file.read_exact_at(&mut buf, offset)
            .unwrap_or_else(|e| panic!("pread {offset}+{size}: {e}"));
        if offset < len {
            assert!(buf[..] == data[offset as usize..end as usize], "pread {offset}+{size}");
        }
    }
    drop(file);

    // mmap, as safetensors loads.
    for (key, data) in files.iter().filter(|(_, d)| !d.is_empty()) {
        assert_eq!(mmap_sha(&root.join(key)), sha(data), "mmap {key}");
    }

    // Concurrent readers: four of one file, one each of three others, at once.
    std::thread::scope(|s| {
        let mut jobs = Vec::new();
        for i in [5usize, 5, 5, 5, 6, 7, 4] {
            let (key, data) = &files[i];
            let path = root.join(key);
            jobs.push(s.spawn(move || assert_eq!(sha(&read_all(&path)), sha(data), "{key}")));
        }
        for j in jobs {
            j.join().expect("reader thread");
        }
    });
    let summary = env.fs.summary();
    assert!(summary.stripes_fetched > 0 && summary.bytes_read > 0, "{summary:?}");
    assert_eq!(summary.stripes_failed, 0, "{summary:?}");

    safetensors_loads_through_the_mount(&env);
    logic_layer_fetches_each_stripe_once(&env, &files[5].1);
    random_preads_fetch_what_they_read(&env);
    a_sequential_reader_gets_the_next_shard_queued(&env);
    prefetch_at_mount_takes_tensors_in_key_order(&env);
    key_order_loaders_get_the_next_tensors_by_name(&env);
    memory_budget_holds_with_64_readers(&env);
    replaced_file(&env, &swap.1);
    replaced_by_a_longer_file_within_the_ttl(&env);
    cli_mounts_in_daemon_form(&env, &files[5], Form::Helper);
    if Path::new("/sbin/mount.fuse3").exists() || Path::new("/usr/sbin/mount.fuse3").exists() {
        cli_mounts_in_daemon_form(&env, &files[5], Form::MountFuse3);
    } else {
        bootseer_common::testing::require_real(
            "mount.fuse3 (package fuse3)",
            Err::<(), _>(anyhow::anyhow!("not installed")),
        );
    }
    a_directory_of_10000_files_is_listed_lazily_and_blocks_no_read(&env, &files[5]);

    let mountpoint = root.clone();
    drop(env);
    support::assert_nothing_leaked(&mountpoint);
}

/// A real loader: Python's `safetensors` (numpy backend, mmap) loads a checkpoint written by the
/// same library, through the mount; every tensor's sha256, shape and dtype match the original.
/// Needs python3 with safetensors + numpy (`.ci/run` installs them); skipped only when real
/// components are not required.
fn safetensors_loads_through_the_mount(env: &Env) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/safetensors_check.py");
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("model.safetensors");
    let run = |mode: &str, path: &Path| {
        std::process::Command::new("python3").arg(&script).arg(mode).arg(path).output()
    };
    let written = match run("write", &local) {
        Ok(out) if out.status.success() => out.stdout,
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            let started: anyhow::Result<()> = Err(anyhow::anyhow!("python3 + safetensors: {why}"));
            bootseer_common::testing::require_real("safetensors", started);
            return;
        }
    };
    let data = std::fs::read(&local).expect("read written model");
    assert!(data.len() as u64 > 4 * BLOCK, "the model must span several HDFS blocks");
    env.put("model/model.safetensors", data);
    std::thread::sleep(env.fs.config().metadata_ttl + Duration::from_millis(200));
    let through_mount = env.mount.path().join("model/model.safetensors");
    let out = run("load", &through_mount).expect("run python3");
    assert!(out.status.success(), "load failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&written),
        "tensors loaded through the mount differ from the ones written"
    );
}

/// Straight through `CkptFs` (no kernel): several handles of one version share one fetch per
/// chunk and release it once all have read it; opening a file fetches nothing, and a handle
/// that reads in order gets the rest of the file prefetched without further reads.
fn logic_layer_fetches_each_stripe_once(env: &Env, like: &[u8]) {
    let data = bytes(4242, like.len());
    let len = data.len() as u64;
    for key in ["logic.bin", "large.bin"] {
        env.put(key, data.clone());
    }
    std::thread::sleep(env.fs.config().metadata_ttl + Duration::from_millis(200));
    let fs = env.fs.clone();
    let chunks = bootseer_ckpt::stripe::StripePlan::new(len, BLOCK, fs.config().chunk()).count();
    let before = fs.summary();
    let reads = env.runtime.block_on(async {
        let ino = fs.lookup(bootseer_ckpt::fs::ROOT_INO, "logic.bin").await.expect("lookup").ino;
        let mut tasks = Vec::new();
        // All three open before any reads: a chunk is released once every open handle has
        // been served it, so a handle opened later may fetch it again.
        let mut fhs = Vec::new();
        for _ in 0..3 {
            fhs.push(fs.open(ino).await.expect("open").fh);
        }
        for (reader, fh) in fhs.into_iter().enumerate() {
            let fs = fs.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                // Each handle reads in its own uneven steps.
                let step = 100_000 + reader as u32 * 77_777;
                while (out.len() as u64) < len {
                    let chunk = fs.read(fh, out.len() as u64, step).await.expect("read");
                    assert!(!chunk.is_empty(), "a short read before EOF");
                    out.extend_from_slice(&chunk);
                }
                assert!(fs.read(fh, len, 10).await.expect("read at EOF").is_empty());
                fs.release(fh).expect("release");
                out
            }));
        }
        futures::future::join_all(tasks).await
    });
    for read in reads {
        assert_eq!(sha(&read.expect("reader task")), sha(&data));
    }
    let after = fs.summary();
    assert_eq!(after.bytes_fetched - before.bytes_fetched, len, "each byte once: {after:?}");
    // Consumed by all three, every chunk left memory at once rather than by LRU.
    assert_eq!(after.cache.released - before.cache.released, chunks, "{after:?}");

    // large.bin: an open alone fetches nothing; reading its first `sequential_after` bytes in
    // order prefetches as far ahead again without further reads, and reading on to the end
    // fetches every byte once.
    let ino = env
        .runtime
        .block_on(fs.lookup(bootseer_ckpt::fs::ROOT_INO, "large.bin"))
        .expect("lookup")
        .ino;
    let fh = env.runtime.block_on(fs.open(ino)).expect("open").fh;
    // An open queues nothing: the first read finds its chunks neither queued (promoted), nor in
    // flight (joined), nor held (a memory hit), and fetches them on demand.
    let opened = fs.summary();
    let step = 128 << 10;
    let got = env.runtime.block_on(fs.read(fh, 0, step)).expect("first read");
    assert!(got[..] == data[..got.len()], "bytes of the first read");
    let first = fs.summary();
    let (c0, c1) = (&opened.cache, &first.cache);
    assert_eq!(
        (c1.promoted, c1.joined, c1.hits_memory, c1.fetched_background),
        (c0.promoted, c0.joined, c0.hits_memory, c0.fetched_background),
        "an open must fetch nothing: {first:?}"
    );
    assert!(c1.fetched_demand > c0.fetched_demand, "{first:?}");
    let mut offset = got.len() as u64;
    let read_to = |offset: &mut u64, to: u64| {
        while *offset < to {
            let got = env.runtime.block_on(fs.read(fh, *offset, step)).expect("read");
            assert!(got[..] == data[*offset as usize..*offset as usize + got.len()]);
            *offset += got.len() as u64;
        }
    };
    let run = fs.config().sequential_after;
    read_to(&mut offset, run);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs.summary().bytes_fetched - after.bytes_fetched < 2 * run {
        assert!(Instant::now() < deadline, "no prefetch ahead of a reader: {:?}", fs.summary());
        std::thread::sleep(Duration::from_millis(50));
    }
    read_to(&mut offset, len);
    let done = fs.summary();
    assert_eq!(done.bytes_fetched - after.bytes_fetched, len, "each byte once: {done:?}");
    fs.release(fh).expect("release");
    assert!(matches!(fs.release(fh), Err(bootseer_ckpt::CkptError::BadHandle(_))));
}

/// Shards read one after another: a reader that reads `a.bin` in order to its end gets the
/// next file of the directory with the same suffix (`b.bin`, not `c.txt`) queued while it reads,
/// so that `b.bin` is in memory before anyone opens it, and reading it then fetches nothing.
fn a_sequential_reader_gets_the_next_shard_queued(env: &Env) {
    let a = bytes(7001, 18 * BLOCK as usize + 5);
    let b = bytes(7002, 3 * BLOCK as usize + 7);
    let c = bytes(7003, BLOCK as usize);
    env.put("shards/a.bin", a.clone());
    env.put("shards/b.bin", b.clone());
    env.put("shards/c.txt", c.clone());
    std::thread::sleep(env.fs.config().metadata_ttl + Duration::from_millis(200));
    let dir = env.mount.path().join("shards");
    let before = env.fs.summary();
    assert_eq!(sha(&read_all(&dir.join("a.bin"))), sha(&a), "a.bin");
    let (a_len, b_len) = (a.len() as u64, b.len() as u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    let fetched = || env.fs.summary().bytes_fetched - before.bytes_fetched;
    while fetched() < a_len + b_len {
        let s = env.fs.summary();
        assert!(Instant::now() < deadline, "b.bin was not fetched ahead of its open: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let queued = env.fs.summary();
    assert_eq!(
        queued.next_file_bytes_queued - before.next_file_bytes_queued,
        b_len,
        "the whole of b.bin (shorter than the spill) is queued: {queued:?}"
    );
    let opened = env.fs.summary();
    assert_eq!(sha(&read_all(&dir.join("b.bin"))), sha(&b), "b.bin");
    let done = env.fs.summary();
    assert_eq!(
        done.bytes_fetched - before.bytes_fetched,
        a_len + b_len,
        "b.bin is served from what was queued, c.txt is left alone: {done:?}"
    );
    assert_eq!(done.cache.fetched_demand, opened.cache.fetched_demand, "{done:?}");
}

/// Random preads on a fresh mount fetch about what they are served: chunk-aligned misses, no
/// whole-file prefetch for a reader that never reads in order. Four threads, one handle each,
/// 1 MiB preads at random offsets of a 24 MiB file (default chunk and sequential settings).
fn random_preads_fetch_what_they_read(env: &Env) {
    let data = bytes(5151, 24 * BLOCK as usize + 4321);
    env.put("random.bin", data.clone());
    let d = bootseer_ckpt::CkptConfig::default();
    let config = bootseer_ckpt::CkptConfig {
        chunk_size: d.chunk_size,
        sequential_after: d.sequential_after,
        prefetch_threshold: d.prefetch_threshold,
        stripe_size: d.stripe_size,
        ..support::test_config()
    };
    let (fs, mount) = support::mount_again(env, config);
    let path = mount.path().join("random.bin");
    let len = data.len() as u64;
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (path, data) = (&path, &data);
            s.spawn(move || {
                let file = std::fs::File::open(path).expect("open");
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                let mut buf = vec![0u8; 1 << 20];
                for _ in 0..12 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let offset = rng % (len - buf.len() as u64);
                    file.read_exact_at(&mut buf, offset).expect("pread");
                    let at = offset as usize;
                    assert!(buf[..] == data[at..at + buf.len()], "pread at {offset}");
                }
            });
        }
    });
    let summary = fs.summary();
    let ratio = summary.bytes_fetched as f64 / summary.bytes_read as f64;
    eprintln!(
        "random preads: served {} B, fetched {} B ({ratio:.3}x), stall {:.2} s",
        summary.bytes_read, summary.bytes_fetched, summary.stall_secs
    );
    // Some preads overlap pages the kernel already holds; most reach the daemon.
    assert!(summary.bytes_read >= 12 << 20, "{summary:?}");
    assert!(ratio <= 1.1, "random preads fetched {ratio:.3} x what they were served: {summary:?}");
    drop(mount);
}

/// A safetensors file of 20 tensors of 128 KiB whose names sort in another order than their
/// bytes lie (the file's first tensor is the last by name), and the tensors' byte ranges in the
/// file by name, as the writer placed them.
fn shuffled_safetensors(seed: u64) -> (Vec<u8>, Vec<(String, std::ops::Range<u64>)>) {
    safetensors_laid_out(seed, 128 << 10, |i| N_TENSORS - 1 - (7 * i) % N_TENSORS)
}

const N_TENSORS: usize = 20;

/// A safetensors file of [`N_TENSORS`] tensors of `SIZE` bytes, the `i`-th in the file named
/// `t.{name(i)}`, and the tensors' byte ranges in the file by name.
fn safetensors_laid_out(
    seed: u64,
    size: u64,
    name_of: impl Fn(usize) -> usize,
) -> (Vec<u8>, Vec<(String, std::ops::Range<u64>)>) {
    let name = |i: usize| format!("t.{:02}", name_of(i));
    let at = |i: usize| i as u64 * size..(i as u64 + 1) * size;
    let mut header = serde_json::Map::new();
    for i in 0..N_TENSORS {
        let (a, b) = (at(i).start, at(i).end);
        let entry = serde_json::json!({"dtype": "U8", "shape": [size], "data_offsets": [a, b]});
        header.insert(name(i), entry);
    }
    let mut json = serde_json::to_vec(&header).expect("json");
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(b' ');
    }
    let base = 8 + json.len() as u64;
    let mut data = (json.len() as u64).to_le_bytes().to_vec();
    data.extend_from_slice(&json);
    data.extend(bytes(seed, N_TENSORS * size as usize));
    let mut ranges: Vec<(String, std::ops::Range<u64>)> =
        (0..N_TENSORS).map(|i| (name(i), base + at(i).start..base + at(i).end)).collect();
    ranges.sort_by(|a, b| a.0.cmp(&b.0));
    (data, ranges)
}

/// `--prefetch 'warm/*.safetensors'` at mount, on a budget that holds 60 % of the file: the
/// tensors a loader reads first (by name) are fetched before any read, so reading them fetches
/// nothing more; the tensor that lies first in the file but sorts last was not taken; no byte
/// is fetched twice and every byte read equals the one written. Other files are left alone.
fn prefetch_at_mount_takes_tensors_in_key_order(env: &Env) {
    let (data, tensors) = shuffled_safetensors(777);
    let len = data.len() as u64;
    env.put("warm/model.safetensors", data.clone());
    let other = bytes(778, 2 * BLOCK as usize);
    env.put("warm/other.bin", other);
    let config = bootseer_ckpt::CkptConfig {
        // 4 MiB: 3 MiB for cached chunks, half of it (6 stripes of 256 KiB) for prefetch.
        memory_bytes: 4 << 20,
        // No reader's own window: what gets fetched ahead here is the mount's prefetch alone.
        sequential_after: u64::MAX,
        // One fetch at a time, so the prefetch is still queued when a handle comes and goes.
        concurrency: 1,
        // (model/model.safetensors of an earlier case is not under warm/.)
        prefetch: vec!["warm/*.safetensors".into(), "warm/nothing-*".into()],
        ..support::test_config()
    };
    let budget = config.max_window() * config.stripe_size;
    assert_eq!(budget, 6 * (256 << 10), "the budget this test is written for");
    let fs = bootseer_ckpt::CkptFs::new(env.store.clone(), config, env.runtime.handle().clone())
        .expect("fs");
    let (files, queued) = env.runtime.block_on(fs.warm());
    assert_eq!(files, 1, "only the safetensors file matches");
    assert!(queued > budget / 2 && queued <= budget, "queued {queued} of a {budget} budget");
    // A loader's metadata probe: open and close at once. The last handle's close cancels a
    // handle's queued prefetch, but not the mount's.
    let dir = env.runtime.block_on(fs.lookup(bootseer_ckpt::fs::ROOT_INO, "warm")).expect("dir");
    let ino = env.runtime.block_on(fs.lookup(dir.ino, "model.safetensors")).expect("file").ino;
    let probe = env.runtime.block_on(fs.open(ino)).expect("open").fh;
    fs.release(probe).expect("release");
    assert_eq!(fs.summary().cache.cancelled, 0, "the probe's close cancelled the prefetch");
    let waited = Instant::now();
    while fs.summary().bytes_fetched < queued {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "prefetch never came: {:?}",
            fs.summary()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nothing more is running or queued, so nothing more will be fetched.
    let waited = Instant::now();
    while fs.cache().fetches_pending() > 0 {
        assert!(waited.elapsed() < Duration::from_secs(30), "prefetch never settled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let warmed = fs.summary().bytes_fetched;
    assert!(warmed <= budget + (64 << 10), "fetched {warmed} for a {budget} budget");

    let read = |fh: u64, r: &std::ops::Range<u64>| {
        let got =
            env.runtime.block_on(fs.read(fh, r.start, (r.end - r.start) as u32)).expect("read");
        assert!(got[..] == data[r.start as usize..r.end as usize], "bytes of {r:?}");
    };
    let fh = env.runtime.block_on(fs.open(ino)).expect("open").fh;
    // A loader's first steps: the length prefix and the header, then tensors by name. Each
    // tensor spans at most 3 chunks of 64 KiB: at least (budget - header chunk) / 192 KiB of
    // them were taken whole.
    let header_end = tensors.iter().map(|(_, r)| r.start).min().expect("tensors");
    read(fh, &(0..header_end));
    assert_eq!(fs.summary().bytes_fetched, warmed, "reading the header fetched more");
    let sure = ((budget - (64 << 10)) / (192 << 10)) as usize;
    for (name, range) in &tensors[..sure] {
        read(fh, range);
        assert_eq!(fs.summary().bytes_fetched, warmed, "reading {name} fetched more");
    }
    let (last_name, first_in_file) = tensors.iter().min_by_key(|(_, r)| r.start).expect("tensors");
    assert_eq!(last_name, &tensors.last().expect("tensors").0, "the layout this test needs");
    read(fh, first_in_file);
    assert!(fs.summary().bytes_fetched > warmed, "the file's first tensor was prefetched");
    for (_, range) in &tensors[sure..tensors.len() - 1] {
        read(fh, range);
    }
    let s = fs.summary();
    fs.release(fh).expect("release");
    assert_eq!((s.prefetched_at_mount_files, s.prefetched_at_mount_bytes), (1, queued));
    // The cache (3 MiB) holds the whole file: each chunk was fetched once (hedges aside).
    let hedged = s.stripes_hedged * (256 << 10);
    assert!(
        s.bytes_fetched <= len + hedged,
        "fetched {} of a {len} B file: {s:?}",
        s.bytes_fetched
    );
    assert_eq!(s.stripes_failed, 0, "{s:?}");
}

/// Issue 9 item 2 at an ordinary open (no `--prefetch`, no byte window: `sequential_after` off):
/// the mount reads a `.safetensors` header when the file is opened; a handle that reads
/// tensors by name, jumping about the file, gets the next tensors by name queued after its
/// second jump, not before (one could be chance); a handle reading the same file in byte order
/// never does; the whole load fetches each chunk once and every byte equals the one written.
/// And a rank that reads scattered tensors whole gets no byte window past a tensor's end.
fn key_order_loaders_get_the_next_tensors_by_name(env: &Env) {
    // 1 MiB tensors, t.{3i mod 20}: the next by name lies 7 tensors on (or 13 back), further
    // than kernel read-ahead reorders reads, so each step by name is a jump in bytes.
    let (data, tensors) = safetensors_laid_out(779, 1 << 20, |i| (3 * i) % N_TENSORS);
    let len = data.len() as u64;
    env.put("keys/model.safetensors", data.clone());
    let header_end = tensors.iter().map(|(_, r)| r.start).min().expect("tensors");
    // A mount of its own (an empty cache) and the file opened, its header read.
    let mount_and_open = |sequential_after: u64| {
        let config = bootseer_ckpt::CkptConfig { sequential_after, ..support::test_config() };
        let handle = env.runtime.handle().clone();
        let fs = bootseer_ckpt::CkptFs::new(env.store.clone(), config, handle).expect("fs");
        let root = bootseer_ckpt::fs::ROOT_INO;
        let dir = env.runtime.block_on(fs.lookup(root, "keys")).expect("dir").ino;
        let ino = env.runtime.block_on(fs.lookup(dir, "model.safetensors")).expect("file").ino;
        let fh = env.runtime.block_on(fs.open(ino)).expect("open").fh;
        let waited = Instant::now();
        while fs.summary().safetensors_headers_indexed < 1 {
            assert!(waited.elapsed() < Duration::from_secs(10), "the header was never read");
            std::thread::sleep(Duration::from_millis(10));
        }
        (fs, fh)
    };
    let read = |fs: &bootseer_ckpt::CkptFs, fh: u64, r: &std::ops::Range<u64>| {
        let got =
            env.runtime.block_on(fs.read(fh, r.start, (r.end - r.start) as u32)).expect("read");
        assert!(got[..] == data[r.start as usize..r.end as usize], "bytes of {r:?}");
    };

    // In byte order: no key-order prefetch, whatever is read.
    let (fs, fh) = mount_and_open(u64::MAX);
    let mut by_bytes = tensors.clone();
    by_bytes.sort_by_key(|(_, r)| r.start);
    read(&fs, fh, &(0..header_end));
    for (_, range) in &by_bytes {
        read(&fs, fh, range);
    }
    fs.release(fh).expect("release");
    assert_eq!(fs.summary().key_order_bytes_queued, 0, "a byte-order reader got key order");
    drop(fs);

    // By name.
    let (fs, fh) = mount_and_open(u64::MAX);
    read(&fs, fh, &(0..header_end));
    read(&fs, fh, &tensors[0].1);
    read(&fs, fh, &tensors[1].1);
    assert_eq!(fs.summary().key_order_bytes_queued, 0, "queued after one jump");
    read(&fs, fh, &tensors[2].1);
    let queued = fs.summary().key_order_bytes_queued;
    assert!(queued >= tensors[3].1.end - tensors[3].1.start, "nothing queued after two jumps");
    for (_, range) in &tensors[3..] {
        read(&fs, fh, range);
    }
    let s = fs.summary();
    fs.release(fh).expect("release");
    assert!(s.cache.bytes_background > 0, "the queued tensors were never fetched ahead: {s:?}");
    // The cache (64 MiB) holds the file: each chunk fetched once (hedges aside).
    let hedged = s.stripes_hedged * (256 << 10);
    assert!(s.bytes_fetched <= len + hedged, "fetched {} of {len} B: {s:?}", s.bytes_fetched);
    assert_eq!(s.stripes_failed, 0, "{s:?}");
    drop(fs);

    // A rank picking every 6th tensor (none next to another, by bytes or by name, nor within
    // 2 MiB after the last read), each read whole in one read past `sequential_after`, then
    // 2 MiB past its end (what the kernel's read-ahead asks for after a pread, here across two
    // tensor boundaries): its byte window stops at the tensor's end, and the read-ahead does
    // not make it a sequential reader.
    let (fs, fh) = mount_and_open(64 << 10);
    read(&fs, fh, &(0..header_end));
    let picked: Vec<std::ops::Range<u64>> = by_bytes
        .iter()
        .step_by(6)
        .flat_map(|(_, r)| [r.clone(), r.end..(r.end + (2 << 20)).min(len)])
        .collect();
    for range in &picked {
        read(&fs, fh, range);
    }
    let s = fs.summary();
    fs.release(fh).expect("release");
    const CHUNK: u64 = 64 << 10;
    let chunks: std::collections::BTreeSet<u64> = std::iter::once(0..header_end)
        .chain(picked)
        .flat_map(|r| r.start / CHUNK..r.end.div_ceil(CHUNK))
        .collect();
    let most = chunks.len() as u64 * CHUNK + s.stripes_hedged * (256 << 10);
    assert!(s.bytes_fetched <= most, "fetched {} past the tensors read: {s:?}", s.bytes_fetched);
    assert_eq!(s.key_order_bytes_queued, 0, "{s:?}");
}

/// The daemon binary with `--memory 32M` on a 64 MiB file, and with `--memory 256M` (issue 9
/// item 3's figure) on a 512 MiB one, so the cache keeps evicting: 64 threads doing random
/// 1 MiB O_DIRECT preads for 6 s (in 16 MiB HDFS blocks, default 8 MiB stripes). The daemon's
/// RSS, sampled every 50 ms, stays under the budget plus a fixed 64 MiB for the process itself
/// (runtime, HDFS client, FUSE buffers) and the replies being assembled.
fn memory_budget_holds_with_64_readers(env: &Env) {
    memory_budget_holds(env, "32M", 64 << 20);
    memory_budget_holds(env, "256M", 512 << 20);
}

fn memory_budget_holds(env: &Env, memory: &str, file_len: usize) {
    let budget = bootseer_ckpt::config::parse_size(memory).expect("a size");
    const OVERHEAD: u64 = 64 << 20;
    let key = format!("rss-{memory}.bin");
    let data = bytes(6464, file_len);
    support::put_retrying(&env.runtime, &env.store, &key, data.clone().into(), Some(16 << 20));
    let dir = tempfile::tempdir().expect("tempdir");
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).expect("mkdir");
    let summary = dir.path().join("summary.json");
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_bootseer-ckpt"))
        .arg("mount")
        .arg(&env.url)
        .arg(&mountpoint)
        .args(["-f", "--memory", memory, "--conf-dir"])
        .arg(env.dfs.conf_dir())
        .arg("--summary")
        .arg(&summary)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the daemon");
    let started = Instant::now();
    while !bootseer_common::mount::is_mounted(&mountpoint) {
        if started.elapsed() > Duration::from_secs(30) || daemon.try_wait().ok().flatten().is_some()
        {
            let _ = daemon.kill();
            let _ = daemon.wait();
            panic!("the daemon did not mount within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss = |pid: u32| -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb << 10)
    };
    let pid = daemon.id();
    let path = mountpoint.join(&key);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (samples, mut latencies) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                samples.extend(rss(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        let readers: Vec<_> = (0..64u64)
            .map(|t| {
                let (path, data) = (&path, &data);
                s.spawn(move || {
                    use std::os::unix::fs::OpenOptionsExt;
                    // O_DIRECT: every pread reaches the daemon, not the page cache.
                    let file = std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_DIRECT)
                        .open(path)
                        .expect("open O_DIRECT");
                    let mut rng = 0xD1B5_4A32_D192_ED03u64 ^ (t * 7 + 1);
                    let mut backing = vec![0u8; (1 << 20) + 4096];
                    let skew = backing.as_ptr().align_offset(4096);
                    let buf = &mut backing[skew..skew + (1 << 20)];
                    let mut took = Vec::new();
                    let end = Instant::now() + Duration::from_secs(6);
                    while Instant::now() < end {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let offset = rng % (data.len() - buf.len()) as u64 / 4096 * 4096;
                        let t0 = Instant::now();
                        file.read_exact_at(buf, offset).expect("pread");
                        took.push(t0.elapsed());
                        let at = offset as usize;
                        assert!(buf[..] == data[at..at + buf.len()], "pread at {offset}");
                    }
                    took
                })
            })
            .collect();
        let latencies: Vec<Duration> =
            readers.into_iter().flat_map(|r| r.join().expect("reader")).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (sampler.join().expect("sampler"), latencies)
    });
    let umount = std::process::Command::new("umount").arg(&mountpoint).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = daemon.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = daemon.wait();
    assert!(umount.is_ok_and(|s| s.success()), "umount failed");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).expect("summary")).expect("json");
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let max_rss = samples.iter().copied().max().unwrap_or(0);
    let mut sorted = samples.clone();
    sorted.sort();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "64 readers, --memory {memory}: {} preads, p50 {:?} p99 {:?} max {:?}; RSS median {:.0} MiB, \
         max {:.0} MiB ({} samples); served {} fetched {} ({:.3}x)",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or_default(),
        mib(sorted.get(sorted.len() / 2).copied().unwrap_or(0)),
        mib(max_rss),
        samples.len(),
        json["bytes_read"],
        json["bytes_fetched"],
        json["fetched_per_served"].as_f64().unwrap_or(0.0),
    );
    assert!(samples.len() > 50, "too few RSS samples: {}", samples.len());
    assert!(
        max_rss <= budget + OVERHEAD,
        "daemon RSS reached {:.0} MiB with --memory {memory} (allowed {:.0} MiB)",
        mib(max_rss),
        mib(budget + OVERHEAD)
    );
}

/// An open handle never mixes versions: after the file is replaced it reads old bytes or EIO;
/// a new open sees the new bytes.
fn replaced_file(env: &Env, old: &[u8]) {
    let path = env.mount.path().join("swap.bin");
    // Nothing of this file was read before: touch only its first stripe before the swap.
    let handle = std::fs::File::open(&path).expect("open old");
    let mut head = vec![0u8; 1000];
    handle.read_exact_at(&mut head, 0).expect("read head");
    assert!(head[..] == old[..1000]);

    let new = bytes(2000, old.len());
    env.put("swap.bin", new.clone());
    std::thread::sleep(env.fs.config().metadata_ttl + Duration::from_millis(300));

    let mut old_ok = 0;
    let mut eio = 0;
    for offset in (0..old.len() as u64).step_by(100_003) {
        let mut buf = vec![0u8; 4096.min(old.len() - offset as usize)];
        match handle.read_exact_at(&mut buf, offset) {
            Ok(()) => {
                assert!(
                    buf[..] == old[offset as usize..offset as usize + buf.len()],
                    "an open handle served bytes that are not its version's at {offset}"
                );
                old_ok += 1;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "at {offset}: {e}");
                eio += 1;
            }
        }
    }
    eprintln!("replaced file: old handle read {old_ok} old chunks, {eio} EIO");
    // Only the first stripes were read or prefetched before the swap; the rest must be refused.
    assert!(eio > 0, "stripes fetched after the swap must fail, not serve another version");
    drop(handle);
    assert_eq!(sha(&read_all(&path)), sha(&new), "a new open must see the new version");
}

/// A file replaced in HDFS by a longer one and opened at once, while the listing (and, on the
/// old code, the kernel's attributes) still hold the old length: the read is the new version
/// whole, never its bytes cut at the old length; and `stat` then shows the new length. Many
/// rounds, each replacing the file right after the kernel looked at it.
fn replaced_by_a_longer_file_within_the_ttl(env: &Env) {
    // A TTL far longer than the test: nothing here may depend on it running out.
    let config = bootseer_ckpt::CkptConfig {
        metadata_ttl: Duration::from_secs(120),
        ..support::test_config()
    };
    let mut old = bytes(3000, 300_000);
    env.put("grow.bin", old.clone());
    let (_fs, mount) = support::mount_again(env, config);
    let path = mount.path().join("grow.bin");
    for round in 1..=8u64 {
        let md = std::fs::metadata(&path).expect("stat");
        assert_eq!(md.len(), old.len() as u64, "round {round}: the length the mount knows");
        let new = bytes(3000 + round, old.len() + 150_000 + round as usize * 1_111);
        env.put("grow.bin", new.clone());
        let got = std::fs::read(&path).expect("read the replaced file");
        assert!(
            got == old || got == new,
            "round {round}: read {} bytes that are neither version (old {}, new {}){}",
            got.len(),
            old.len(),
            new.len(),
            if got[..] == new[..got.len().min(new.len())] { ": the new one cut short" } else { "" }
        );
        let md = std::fs::metadata(&path).expect("stat after the open");
        assert_eq!(md.len(), got.len() as u64, "round {round}: stat after reading");
        old = got;
    }
    drop(mount);
}

/// Files counted by the mount's statfs: what it has listed so far.
fn files_known(root: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(root.as_os_str().as_bytes()).expect("path");
    // SAFETY: `c` is a NUL-terminated path and `st` a statvfs the call fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs");
    st.f_files
}

/// A directory of 10,000 files beside a checkpoint: a new mount lists its root only (statfs
/// counts what it has listed), the first `ls` of the big directory shows every name written,
/// with sizes, and while that listing and its refreshes run (TTL 1 s), `stat` and reads of a
/// file already read answer from memory without waiting for them.
fn a_directory_of_10000_files_is_listed_lazily_and_blocks_no_read(
    env: &Env,
    (key, data): &(String, Vec<u8>),
) {
    use bootseer_common::store::Store;
    use bytes::Bytes;
    use futures::StreamExt;
    const N: usize = 10_000;
    let name = |i: usize| format!("f-{i:05}");
    // Every 1,000th file holds its own index as bytes, the rest are empty.
    let body = |i: usize| if i % 1000 == 7 { vec![7u8; i] } else { Vec::new() };
    let started = Instant::now();
    let puts = futures::stream::iter(0..N)
        .map(|i| {
            let store = env.store.clone();
            let body = Bytes::from(body(i));
            async move { (i, store.put(&format!("many/{}", name(i)), body).await) }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>();
    let failed: Vec<usize> = env
        .runtime
        .block_on(puts)
        .into_iter()
        .filter_map(|(i, r)| r.err().map(|e| eprintln!("put {}: {e}", name(i))).map(|()| i))
        .collect();
    for i in failed {
        env.put(&format!("many/{}", name(i)), body(i));
    }
    eprintln!("10,000 files written in {:.1} s", started.elapsed().as_secs_f64());

    let (fs, mount) = support::mount_again(env, support::test_config());
    let root = mount.path().to_path_buf();
    let known = files_known(&root);
    assert!(known < 100, "a new mount lists its root only, yet statfs counts {known} entries");
    let path = root.join(key);
    let file = std::fs::File::open(&path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    file.read_exact_at(&mut buf, 0).expect("first read");
    assert!(buf[..] == data[..buf.len()]);

    // Readers of the cached head and `stat`s, while the first listing and refreshes run.
    let listing_done = std::sync::atomic::AtomicBool::new(false);
    let (slowest, ops) = std::thread::scope(|s| {
        let lister = s.spawn(|| {
            let mut rounds = Vec::new();
            let until = Instant::now() + Duration::from_secs(4);
            while rounds.is_empty() || Instant::now() < until {
                let t = Instant::now();
                let mut names: Vec<String> = std::fs::read_dir(root.join("many"))
                    .expect("ls many")
                    .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                assert_eq!(names.len(), N, "names listed");
                assert!(names.iter().enumerate().all(|(i, n)| *n == name(i)), "names listed");
                rounds.push(t.elapsed());
            }
            listing_done.store(true, std::sync::atomic::Ordering::Release);
            rounds
        });
        let (mut slowest, mut ops) = (Duration::ZERO, 0);
        while !listing_done.load(std::sync::atomic::Ordering::Acquire) {
            let t = Instant::now();
            let md = std::fs::metadata(&path).expect("stat during the listing");
            let mut head = vec![0u8; 64 << 10];
            file.read_exact_at(&mut head, 4096).expect("cached read during the listing");
            slowest = slowest.max(t.elapsed());
            ops += 1;
            assert_eq!(md.len(), data.len() as u64);
            assert!(head[..] == data[4096..4096 + head.len()]);
        }
        let rounds = lister.join().expect("lister");
        eprintln!(
            "ls of {N} files: first {:?}, then {} more (slowest {:?}); {ops} stat + read pairs meanwhile, slowest {slowest:?}",
            rounds[0],
            rounds.len() - 1,
            rounds[1..].iter().max().copied().unwrap_or_default()
        );
        (slowest, ops)
    });
    assert!(ops > 0);
    assert!(slowest < Duration::from_millis(250), "a stat + cached read took {slowest:?}");
    for i in (7..N).step_by(1000) {
        let md = std::fs::metadata(root.join("many").join(name(i))).expect("stat");
        assert_eq!(md.len(), i as u64, "{}", name(i));
    }
    let known = files_known(&root);
    assert!(known > N as u64, "statfs counts {known} entries after the big directory was listed");
    let summary = fs.summary();
    assert!(summary.dirs_listed >= 2, "{summary:?}");
    drop(file);
    drop(mount);
}

#[derive(Debug, Clone, Copy)]
enum Form {
    /// `bootseer-ckpt SOURCE MOUNTPOINT -o …`, run directly.
    Helper,
    /// `mount.fuse3 SOURCE MOUNTPOINT -t bootseer-ckpt -o …`: what `mount -t fuse.bootseer-ckpt`
    /// runs, which calls the helper form with the binary found on PATH.
    MountFuse3,
}

/// The JSON in `path` once it exists and parses, within `limit`.
fn wait_json(path: &Path, limit: Duration) -> Option<serde_json::Value> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(v) = std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The built binary in mount-helper form daemonizes, serves, writes its summary on SIGUSR1,
/// and exits after `umount`.
fn cli_mounts_in_daemon_form(env: &Env, (key, data): &(String, Vec<u8>), form: Form) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).expect("mkdir");
    let summary = dir.path().join("summary.json");
    let log = dir.path().join("daemon.log");
    // `-o read_ahead=` in one form; the mount's own (smaller than the image mounts') in the other.
    let (read_ahead, expect_kb) = match form {
        Form::Helper => (",read_ahead=256k", 256),
        Form::MountFuse3 => ("", bootseer_ckpt::cli::READ_AHEAD_KB),
    };
    let options = format!(
        "ro,stripe_size=512K,readers=2,metadata_ttl=1s{read_ahead},conf_dir={},summary={},log={}",
        env.dfs.conf_dir().display(),
        summary.display(),
        log.display()
    );
    let started = Instant::now();
    let binary = Path::new(env!("CARGO_BIN_EXE_bootseer-ckpt"));
    let mut command = match form {
        Form::Helper => std::process::Command::new(binary),
        Form::MountFuse3 => {
            // mount(8) resets PATH for its helpers, so call the helper it would run.
            let mut c = std::process::Command::new("mount.fuse3");
            let dir = binary.parent().expect("binary dir");
            let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
            c.env("PATH", path);
            c
        }
    };
    command.arg(&env.url).arg(&mountpoint);
    if let Form::MountFuse3 = form {
        command.args(["-t", "bootseer-ckpt"]);
    }
    let mut helper = command.args(["-o", &options]).spawn().expect("run the mount command");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    // The helper must return once the mount is ready, not when the daemon ends.
    let status = loop {
        if let Some(status) = helper.try_wait().expect("wait for the helper") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = helper.kill();
            let _ = helper.wait();
            let _ = std::process::Command::new("umount").arg(&mountpoint).status();
            panic!("the mount helper did not return within 60 s\n{}", log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "mount helper failed: {status}\n{}", log_text());
    assert!(bootseer_common::mount::is_mounted(&mountpoint), "not mounted after exit 0");
    eprintln!("{form:?}: daemon mount ready after {:?}", started.elapsed());
    // The kernel's own record of the mount's read-ahead (its backing device in sysfs).
    let kb = bootseer_common::mount::read_ahead_kb(&mountpoint);
    let read = std::fs::read(mountpoint.join(key));
    // SIGUSR1: the summary so far, written while the mount keeps serving.
    let mp = mountpoint.to_string_lossy().into_owned();
    // The daemon only: fusermount3 (auto_unmount) also names the mountpoint.
    let pattern = format!("bootseer-ckpt .*{mp}");
    let signalled = std::process::Command::new("pkill").args(["-USR1", "-f", &pattern]).status();
    let snapshot = wait_json(&summary, Duration::from_secs(10));
    let still_mounted = bootseer_common::mount::is_mounted(&mountpoint);
    // Unmount before asserting, so a failure leaves no mount behind.
    bootseer_common::testing::fuse::umount_now(&mountpoint);
    assert!(signalled.is_ok_and(|s| s.success()), "no daemon for {mp} to signal");
    let snapshot = snapshot.unwrap_or_else(|| panic!("no summary on SIGUSR1\n{}", log_text()));
    assert!(still_mounted, "SIGUSR1 must not end the mount");
    assert!(snapshot["bytes_read"].as_u64().unwrap_or(0) >= data.len() as u64, "{snapshot}");
    std::fs::remove_file(&summary).expect("remove the SIGUSR1 summary");
    let read = read.expect("read through the daemon's mount");
    assert_eq!(sha(&read), sha(data));
    assert_eq!(kb.expect("read_ahead_kb in sysfs"), expect_kb, "{form:?}: kernel read-ahead");
    // The daemon writes its summary after the session ends, then exits.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mp = mountpoint.to_string_lossy().into_owned();
    loop {
        let running = std::process::Command::new("pgrep")
            .args(["-f", &mp])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !running && summary.exists() {
            break;
        }
        assert!(Instant::now() < deadline, "daemon still running after umount\n{}", log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary")).expect("json");
    assert!(json["bytes_read"].as_u64().unwrap_or(0) >= data.len() as u64, "{json}");
    assert!(json["stripes_fetched"].as_u64().unwrap_or(0) > 0, "{json}");
}
