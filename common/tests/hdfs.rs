//! `HdfsStore` against a real HDFS (MiniDFS: 3 DataNodes, 1 MiB blocks).
//!
//! Two clusters, started in parallel by the test harness: one for the plain round trips (one
//! test walks through them, so a single cluster start serves them all), one for DataNode faults.
//! Each test skips when Java/Maven are missing, and fails then under `BOOTSEER_REQUIRE_REAL=1`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bootseer_common::store::hdfs::{HdfsOptions, HdfsStore};
use bootseer_common::store::{RetryConfig, RetryStore, Store, StoreError};
use bootseer_common::testing::minidfs::{MiniDfs, MiniDfsConfig};
use bootseer_common::testing::require_real;
use bytes::Bytes;
use sha2::{Digest, Sha256};

const BLOCK: u64 = 1 << 20;

/// 7.5 MiB of bytes that differ from block to block and within blocks.
fn file_bytes() -> Vec<u8> {
    bootseer_common::testing::mem::pattern(0x9e37, 7 * BLOCK as usize + BLOCK as usize / 2)
}

fn start(config: MiniDfsConfig) -> Option<MiniDfs> {
    require_real("MiniDFS", MiniDfs::start(config))
}

fn options(dfs: &MiniDfs) -> HdfsOptions {
    HdfsOptions { config_dir: Some(dfs.conf_dir().to_path_buf()), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_block_boundaries_listing_and_nameservice() {
    let Some(dfs) = start(MiniDfsConfig::default()) else {
        return;
    };
    let url = format!("{}/bootseer/store", dfs.uri());
    let store = HdfsStore::open_with(&url, &options(&dfs)).await.expect("open");
    let data = file_bytes();
    let len = data.len() as u64;

    // put / stat / file_info
    store.put("ckpt/model.bin", Bytes::from(data.clone())).await.expect("put");
    store.put("ckpt/sub/opt.bin", Bytes::from_static(b"optimizer")).await.expect("put");
    store.put("ckpt/empty", Bytes::new()).await.expect("put empty");
    store.put("other", Bytes::from_static(b"1")).await.expect("put");
    let meta = store.stat("ckpt/model.bin").await.expect("stat");
    assert_eq!(meta.len, len);
    let age = meta.mtime.expect("mtime").elapsed().unwrap_or_default();
    assert!(age < Duration::from_secs(300), "mtime {age:?} ago");
    let info = store.file_info("ckpt/model.bin").await.expect("file_info");
    assert_eq!((info.len, info.block_size), (len, BLOCK));
    assert_eq!(store.stat("ckpt/empty").await.expect("stat").len, 0);

    // A put over an existing key replaces it whole.
    store.put("other", Bytes::from_static(b"22")).await.expect("put again");
    assert_eq!(&store.read_range("other", 0..10).await.expect("read")[..], b"22");

    // read_range at block boundaries, EOF and empty/inverted ranges.
    let cases = [
        (0, 1),
        (0, BLOCK),
        (1, BLOCK + 1),
        (BLOCK - 1, BLOCK + 1),
        (BLOCK, BLOCK + 1),
        (BLOCK + 1, 3 * BLOCK + 7),
        (5 * BLOCK - 3, 6 * BLOCK + 3),
        (len - 1, len),
        (len - 10, len + 10),
        (len, len + 1),
        (len + 5, len + 100),
        (0, u64::MAX),
        (100, 100),
        (200, 100),
    ];
    for (s, e) in cases {
        let got = store.read_range("ckpt/model.bin", s..e).await.expect("read_range");
        let want = &data[(s.min(len) as usize)..(e.min(len).max(s.min(len)) as usize)];
        assert_eq!(got.len(), want.len(), "range {s}..{e}");
        assert!(got[..] == *want, "bytes differ in range {s}..{e}");
    }
    assert!(store.read_range("ckpt/empty", 0..10).await.expect("read empty").is_empty());

    // The whole file read back in uneven ranges hashes to the original.
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    for step in [1u64, 4095, 700_001, 1 << 20, 3, 2_500_000].iter().cycle() {
        if offset >= len {
            break;
        }
        let chunk = store.read_range("ckpt/model.bin", offset..offset + step).await.expect("read");
        assert_eq!(chunk.len() as u64, step.min(&(len - offset)).to_owned());
        hasher.update(&chunk);
        offset += chunk.len() as u64;
    }
    assert_eq!(hasher.finalize()[..], Sha256::digest(&data)[..]);

    // Several independent readers of one file, reading concurrently.
    let readers =
        futures::future::try_join_all((0..3).map(|_| store.open_reader("ckpt/model.bin")))
            .await
            .expect("open readers");
    let parts = futures::future::try_join_all(
        readers
            .iter()
            .enumerate()
            .map(|(i, r)| r.read_range(i as u64 * BLOCK..(i as u64 + 2) * BLOCK)),
    )
    .await
    .expect("concurrent reads");
    for (i, part) in parts.iter().enumerate() {
        assert!(part[..] == data[i * BLOCK as usize..(i + 2) * BLOCK as usize], "reader {i}");
    }

    // read_range_cut: a range over a block boundary cut into uneven buffers, each holding the
    // bytes of the file at its place; cuts that do not add up are refused, not guessed at.
    let reader = &readers[0];
    let (start, cuts) = (BLOCK - 1000, [1u64, 65_536, 1_000_000, 333]);
    let end = start + cuts.iter().sum::<u64>();
    let mut seen = 0;
    let got = reader
        .read_range_cut(start..end, &cuts, Duration::from_secs(10), |n| seen += n)
        .await
        .expect("cut read");
    assert_eq!(got.iter().map(|b| b.len() as u64).collect::<Vec<_>>(), cuts);
    assert!(got.concat() == data[start as usize..end as usize], "cut read bytes");
    assert_eq!(seen, end - start, "progress counts every byte once");
    let bad = reader.read_range_cut(0..10, &[4, 4], Duration::from_secs(10), |_| {}).await;
    assert!(matches!(bad, Err(StoreError::BadReply { .. })), "{bad:?}");
    let past = reader.read_range_cut(len - 4..len + 4, &[8], Duration::from_secs(10), |_| {}).await;
    assert!(matches!(past, Err(StoreError::BadReply { .. })), "{past:?}");

    // list: recursive under the prefix's directory, sorted, files only, no temporaries.
    let keys = |metas: Vec<bootseer_common::store::ObjectMeta>| {
        metas.into_iter().map(|m| (m.key, m.len)).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(store.list("ckpt/").await.expect("list")),
        [("ckpt/empty".into(), 0), ("ckpt/model.bin".into(), len), ("ckpt/sub/opt.bin".into(), 9)]
    );
    assert_eq!(keys(store.list("ckpt/m").await.expect("list")), [("ckpt/model.bin".into(), len)]);
    assert_eq!(keys(store.list("").await.expect("list")).len(), 4);
    assert!(store.list("nothing/here/").await.expect("list").is_empty());

    // list_dir: one level, directories included, against what `list` found under it.
    let level = |entries: Vec<bootseer_common::store::hdfs::HdfsDirEntry>| {
        entries.into_iter().map(|e| (e.name, e.is_dir, e.len)).collect::<Vec<_>>()
    };
    assert_eq!(
        level(store.list_dir("ckpt").await.expect("list_dir")),
        [("empty".into(), false, 0), ("model.bin".into(), false, len), ("sub".into(), true, 0)]
    );
    assert_eq!(
        level(store.list_dir("ckpt/sub").await.expect("list_dir")),
        [("opt.bin".into(), false, 9)]
    );
    let top: Vec<String> = store.list("").await.expect("list").into_iter().map(|m| m.key).collect();
    let mut firsts: Vec<String> =
        top.iter().map(|k| k.split('/').next().expect("a name").to_string()).collect();
    firsts.dedup();
    let names: Vec<String> =
        store.list_dir("").await.expect("list_dir root").into_iter().map(|e| e.name).collect();
    assert_eq!(names, firsts, "the root's names are the first parts of every key");
    let missing = store.list_dir("nothing/here").await;
    assert!(matches!(missing, Err(StoreError::NotFound { .. })), "{missing:?}");
    let file = store.list_dir("ckpt/model.bin").await;
    assert!(
        matches!(&file, Err(StoreError::Other { message, .. }) if message.contains("not a directory")),
        "{file:?}"
    );
    assert!(matches!(store.list_dir("../x").await, Err(StoreError::InvalidKey { .. })));

    // NotFound, for files and for directories (keys name files).
    for key in ["missing", "ckpt/missing.bin", "ckpt/sub"] {
        assert!(matches!(store.stat(key).await, Err(StoreError::NotFound { .. })), "stat {key}");
        assert!(
            matches!(store.read_range(key, 0..1).await, Err(StoreError::NotFound { .. })),
            "read_range {key}"
        );
    }
    assert!(matches!(store.stat("../x").await, Err(StoreError::InvalidKey { .. })));

    // An HA nameservice (with one NameNode) resolves through configuration alone, ...
    let port = dfs.uri().rsplit(':').next().expect("port");
    let ha = vec![
        ("dfs.nameservices".to_string(), "bootseer-ns".to_string()),
        ("dfs.ha.namenodes.bootseer-ns".to_string(), "nn1".to_string()),
        ("dfs.namenode.rpc-address.bootseer-ns.nn1".to_string(), format!("127.0.0.1:{port}")),
    ];
    let store_ns = HdfsStore::open_with(
        "hdfs://bootseer-ns/bootseer/store",
        &HdfsOptions { config: ha.clone(), ..Default::default() },
    )
    .await
    .expect("open nameservice");
    assert_eq!(
        &store_ns.read_range("ckpt/sub/opt.bin", 0..100).await.expect("read")[..],
        b"optimizer"
    );
    // ... and through a conf dir with hdfs-site.xml, as HADOOP_CONF_DIR users have it.
    let conf = tempfile::tempdir().expect("tempdir");
    let props: String = ha
        .iter()
        .map(|(k, v)| format!("<property><name>{k}</name><value>{v}</value></property>\n"))
        .collect();
    std::fs::write(
        conf.path().join("hdfs-site.xml"),
        format!("<?xml version=\"1.0\"?>\n<configuration>\n{props}</configuration>\n"),
    )
    .expect("write hdfs-site.xml");
    std::fs::write(
        conf.path().join("core-site.xml"),
        "<?xml version=\"1.0\"?>\n<configuration><property><name>fs.defaultFS</name>\
         <value>hdfs://bootseer-ns</value></property></configuration>\n",
    )
    .expect("write core-site.xml");
    let store_dir = HdfsStore::open_with(
        "hdfs:///bootseer/store",
        &HdfsOptions { config_dir: Some(conf.path().to_path_buf()), ..Default::default() },
    )
    .await
    .expect("open defaultFS");
    assert_eq!(store_dir.stat("ckpt/model.bin").await.expect("stat").len, len);

    put_file_uploads_in_pieces_and_leaves_nothing_on_failure(&store, &dfs).await;
}

/// `put_file` on HDFS (what `convert` and snapshot captures upload from disk): more than two
/// pieces, not a multiple of one, read back equal; the file's cursor left where it was; a
/// second upload over the first fine; a file shorter than the length given is an error that
/// stores nothing and leaves no temporary file in the directory (listed by a plain hdfs-native
/// client, which shows the dot-names the store hides).
async fn put_file_uploads_in_pieces_and_leaves_nothing_on_failure(
    store: &HdfsStore,
    dfs: &MiniDfs,
) {
    use std::io::{Seek, SeekFrom, Write};
    let file_of = |data: &[u8]| {
        let mut file = bootseer_common::layer::blob::temp_file(&std::env::temp_dir()).expect("tmp");
        file.write_all(data).expect("write");
        file.seek(SeekFrom::Start(17)).expect("seek");
        file
    };
    let piece = bootseer_common::store::PUT_PIECE as usize;
    let data = bootseer_common::testing::mem::pattern(11, 2 * piece + 12_345);
    let mut file = file_of(&data);
    store.put_file("up/blob", &file, data.len() as u64).await.expect("put_file");
    let stored = store.read_range("up/blob", 0..u64::MAX).await.expect("read back");
    assert!(stored == data, "put_file stored other bytes");
    assert_eq!(file.stream_position().expect("cursor"), 17, "put_file moved the cursor");
    store.put_file("up/blob", &file, data.len() as u64).await.expect("second put_file");
    assert_eq!(store.stat("up/blob").await.expect("stat").len, data.len() as u64);

    let short = b"only these bytes";
    let err = store
        .put_file("up/short", &file_of(short), short.len() as u64 + 1)
        .await
        .expect_err("a short file must fail");
    assert!(!err.is_retryable(), "a short file is not worth retrying: {err}");
    assert!(matches!(store.stat("up/short").await, Err(StoreError::NotFound { .. })));
    let client = hdfs_native::ClientBuilder::new().with_url(dfs.uri()).build().expect("client");
    let dir = format!("{}/up", store.root());
    let names: Vec<String> = client
        .list_status(&dir, false)
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.path.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["blob"], "left in {dir}");
}

/// A retry policy short enough for a test: bounded by `total_deadline` plus one attempt.
fn short_retry() -> RetryConfig {
    RetryConfig {
        op_timeout: Duration::from_secs(5),
        max_attempts: 4,
        base_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        total_deadline: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datanode_faults_fail_in_bounded_time_and_recover() {
    let Some(dfs) = start(MiniDfsConfig::default()) else {
        return;
    };
    assert_eq!(dfs.datanode_addrs().len(), 3);
    let url = format!("{}/faults", dfs.uri());
    let hdfs = HdfsStore::open_with(&url, &options(&dfs)).await.expect("open");
    let store = RetryStore::new(Arc::new(hdfs.clone()), short_retry());
    let data = file_bytes();
    let len = data.len() as u64;
    store.put("model.bin", Bytes::from(data.clone())).await.expect("put");

    // Replication 3: one DataNode stopped mid-way still gives correct bytes, both through a
    // reader opened before the stop and through fresh reads.
    let reader = hdfs.open_reader("model.bin").await.expect("open reader");
    let half = len / 2;
    let first = reader.read_range(0..half).await.expect("first half");
    dfs.stop_datanode(1).expect("stop datanode 1");
    let second = reader.read_range(half..len).await.expect("second half after a stop");
    assert!(first[..] == data[..half as usize] && second[..] == data[half as usize..]);
    let whole = store.read_range("model.bin", 0..len).await.expect("read after a stop");
    assert!(whole[..] == data[..]);

    // Every DataNode holding the file stopped: an error within a bounded time, not a hang.
    dfs.stop_datanode(0).expect("stop datanode 0");
    dfs.stop_datanode(2).expect("stop datanode 2");
    let started = Instant::now();
    let result = store.read_range("model.bin", BLOCK - 10..BLOCK + 10).await;
    let took = started.elapsed();
    let err = result.expect_err("read with every replica down");
    assert!(err.is_retryable(), "a dead DataNode should be retryable, got {err}");
    // total_deadline (10 s) + one op_timeout (5 s) + slack for a loaded machine.
    assert!(took < Duration::from_secs(30), "failing took {took:?}");
    eprintln!("read with every DataNode down failed after {took:?}: {err}");

    // Back again: the same store reads correct bytes (fresh locations per attempt).
    for i in 0..3 {
        dfs.restart_datanode(i).expect("restart datanode");
    }
    let whole = store.read_range("model.bin", 0..len).await.expect("read after restart");
    assert!(whole[..] == data[..]);

    // A NameNode restart: the store reconnects on its own.
    dfs.restart_namenode().expect("restart namenode");
    let got =
        store.read_range("model.bin", BLOCK..BLOCK + 100).await.expect("read after NN restart");
    assert!(got[..] == data[BLOCK as usize..BLOCK as usize + 100]);
    assert_eq!(store.stat("model.bin").await.expect("stat").len, len);
}

#[test]
fn a_launcher_that_fails_reports_its_log() {
    let java = std::process::Command::new("java")
        .arg("-version")
        .output()
        .map(drop)
        .map_err(|e| anyhow::anyhow!("java -version: {e}"));
    if require_real("java (package openjdk-17-jdk-headless)", java).is_none() {
        return;
    }
    // HDFS block sizes must be multiples of 512: the launcher refuses this before Hadoop starts.
    let config = MiniDfsConfig { block_size: 1000, ..Default::default() };
    let started = Instant::now();
    let err = MiniDfs::start(config).expect_err("a bad block size must fail");
    let message = format!("{err:#}");
    assert!(message.contains("--block-size must be"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}
