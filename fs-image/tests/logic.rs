//! The logic layer without a kernel: laziness measured on a counting store, malformed images
//! refused at mount with named errors, and a block whose digest does not match served as EIO.

mod common;

use std::sync::Arc;

use bootseer_common::digest::Digest;
use bootseer_common::errno::ToErrno;
use bootseer_common::store::DynStore;
use bootseer_common::testing::mem::{MemStore, pattern};
use bootseer_image::convert::{self, ConvertConfig};
use bootseer_image::format::{Index, Metadata, media};
use bootseer_image::{LayerRef, LayerSession, SessionConfig, TraceMode};
use bytes::Bytes;
use common::BLOCK;

fn image_in_mem(
    files: &[(&str, usize, u64)],
) -> (tempfile::TempDir, Arc<MemStore>, LayerRef, Metadata) {
    let src = tempfile::tempdir().expect("src");
    for (name, len, seed) in files {
        std::fs::write(src.path().join(name), pattern(*seed, *len)).expect("write");
    }
    let (meta, blobs) = convert::build_from_dir(
        src.path(),
        &ConvertConfig { block_size: BLOCK, level: 3, ..Default::default() },
    )
    .expect("build");
    let mem = Arc::new(MemStore::new());
    let store: DynStore = mem.clone();
    let image = LayerRef::parse("file:///mem/lazy:v1").expect("ref");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(convert::push(&store, &image, &meta, blobs)).expect("push");
    (src, mem, image, meta)
}

fn config() -> SessionConfig {
    SessionConfig { trace: TraceMode::Off, ..SessionConfig::default() }
}

#[test]
fn reading_one_file_fetches_only_its_blocks() {
    // Sizes are whole blocks, so "a" is exactly blocks 0..3 of the blob and "b" blocks 3..8.
    let b = BLOCK as usize;
    let (_src, mem, image, meta) = image_in_mem(&[("a", 3 * b, 1), ("b", 5 * b, 2)]);
    let blob_key = format!("blobs/{}", meta.blobs[0].digest);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let store: DynStore = mem.clone();
        let session = LayerSession::open_with_store(image, store, config()).await.expect("open");
        let fs = session.fs();
        let a = fs.lookup(1, "a").expect("lookup");
        let before = mem.reads_overlapping(&blob_key, 0..u64::MAX);
        assert_eq!(before, 0, "mount must not read data blobs");
        let data = fs.read(a.ino, 0, (3 * b) as u32).await.expect("read");
        assert_eq!(Digest::of(&data), Digest::of(&pattern(1, 3 * b)));
        let stats = fs.cache().stats();
        assert_eq!(stats.fetched_demand, 3, "{stats:?}");
        // No read touched b's compressed bytes.
        let b_start = meta.blobs[0].blocks[3].offset;
        assert_eq!(mem.reads_overlapping(&blob_key, b_start..u64::MAX), 0, "{:?}", mem.reads());
        session.finish().await.expect("finish");
    });
}

#[test]
fn sequential_reads_queue_the_next_blocks_of_the_file_and_jumps_do_not() {
    // "seq" is blocks 0..12 of the blob, "tail" blocks 12..14.
    let b = BLOCK as usize;
    let (_src, mem, image, meta) = image_in_mem(&[("seq", 12 * b, 3), ("tail", 2 * b, 4)]);
    let blob_key = format!("blobs/{}", meta.blobs[0].digest);
    let blob = meta.blobs[0].digest.clone();
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let store: DynStore = mem.clone();
        let session = LayerSession::open_with_store(image, store, config()).await.expect("open");
        let fs = session.fs();
        let seq = fs.lookup(1, "seq").expect("lookup").ino;
        let chunk = 128 << 10;
        // A random reader: blocks 7, then 2, then 9 (jumps) queue nothing.
        for block in [7u64, 2, 9] {
            fs.read(seq, block * u64::from(BLOCK), chunk).await.expect("read");
        }
        assert_eq!(fs.cache().stats().fetched_background, 0, "a jump must not prefetch");
        // Not merely "not yet": a window is queued inside the read that grows it, so the block
        // after each jump's two blocks is fetched afresh by a reader (had a jump queued it, the
        // reader would promote, join or hit it). Block 9 after 7..=8 is itself read on demand.
        for next in [4u64, 11] {
            let before = fs.cache().stats();
            fs.cache().get(&fs.sources()[0], next).await.expect("the block after a jump");
            let after = fs.cache().stats();
            let delta = |f: fn(&bootseer_common::cache::CacheStats) -> u64| f(&after) - f(&before);
            assert_eq!(
                [delta(|s| s.fetched_demand), delta(|s| s.promoted), delta(|s| s.joined)],
                [1, 0, 0],
                "block {next} was queued by a jump: {after:?}"
            );
            assert_eq!(delta(|s| s.hits_memory), 0, "block {next} was fetched by a jump");
        }
        // A stream from the start: 128 KiB reads through blocks 0 and 1.
        let mut got = Vec::new();
        for i in 0..16u64 {
            got.extend(fs.read(seq, i * u64::from(chunk), chunk).await.expect("read"));
        }
        assert_eq!(Digest::of(&got), Digest::of(&pattern(3, 12 * b)[..got.len()]));
        // The blocks ahead of it, up to the file's last block, arrive without being read.
        for _ in 0..200 {
            if (2..12).all(|i| fs.cache().contains(&blob, i)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!((2..12).all(|i| fs.cache().contains(&blob, i)), "{:?}", fs.cache().stats());
        let stats = fs.cache().stats();
        assert!(stats.fetched_background > 0, "{stats:?}");
        // Never past the file: the next file's blocks were not fetched.
        let tail_start = meta.blobs[0].blocks[12].offset;
        assert_eq!(mem.reads_overlapping(&blob_key, tail_start..u64::MAX), 0, "{:?}", mem.reads());
        session.finish().await.expect("finish");
    });
}

#[test]
fn a_window_fetches_only_for_a_file_the_caches_did_not_hold() {
    // "seq" is blocks 0..8. A first mount puts blocks 0 and 1 on disk (read out of order, so
    // no window); a second mount on the same cache directory then streams through them: a
    // stream answered by the caches fetches nothing ahead, until one of its reads needs a
    // block they lack (block 2), after which its window fetches the rest of the file.
    let b = BLOCK as usize;
    let (_src, mem, image, meta) = image_in_mem(&[("seq", 8 * b, 11)]);
    let blob = meta.blobs[0].digest.clone();
    let cache = tempfile::tempdir().expect("cache");
    let config = || SessionConfig { cache_dir: Some(cache.path().to_path_buf()), ..config() };
    // Reads of half a block, as the kernel's (128 KiB) are of a few blocks of 1 MiB.
    let chunk = BLOCK / 2;
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let store: DynStore = mem.clone();
        let session = LayerSession::open_with_store(image.clone(), store.clone(), config())
            .await
            .expect("open");
        let fs = session.fs();
        let seq = fs.lookup(1, "seq").expect("lookup").ino;
        for block in [1u64, 0] {
            fs.read(seq, block * u64::from(BLOCK), chunk).await.expect("read");
        }
        fs.cache().flush_disk();
        assert_eq!(fs.cache().stats().fetched_background, 0);
        session.finish().await.expect("finish");

        let session = LayerSession::open_with_store(image, store, config()).await.expect("reopen");
        let fs = session.fs();
        let want = pattern(11, 8 * b);
        let per_block = u64::from(BLOCK / chunk);
        for i in 0..2 * per_block {
            let at = i * u64::from(chunk);
            let got = fs.read(seq, at, chunk).await.expect("read");
            assert!(got[..] == want[at as usize..at as usize + got.len()], "bytes at {at}");
        }
        // A window queues its blocks in the read that grows it, so the fetches these reads
        // asked for are queued, running or done by now. Block 7, the file's last, is in the
        // window those reads reached: a reader finds it queued (promoted), in flight (joined)
        // or held (a hit) if they asked for it, and fetches it afresh if not.
        let before = fs.cache().stats();
        let got = fs.cache().get(&fs.sources()[0], 7).await.expect("block 7");
        assert!(got[..] == want[7 * b..], "bytes of block 7");
        let stats = fs.cache().stats();
        assert_eq!(
            (stats.fetched_demand - before.fetched_demand, stats.promoted, stats.joined),
            (1, before.promoted, before.joined),
            "a stream the caches served fetched ahead: {stats:?}"
        );
        assert_eq!(stats.hits_memory, before.hits_memory, "{stats:?}");
        assert_eq!(stats.fetched_background, 0, "{stats:?}");
        assert!(
            !fs.cache().contains(&blob, 2),
            "block 2 was fetched before anyone read it: {stats:?}"
        );
        // Into block 2, which neither tier holds: the window now fetches ahead.
        for i in 2 * per_block..3 * per_block {
            let at = i * u64::from(chunk);
            let got = fs.read(seq, at, chunk).await.expect("read");
            assert!(got[..] == want[at as usize..at as usize + got.len()], "bytes at {at}");
        }
        for _ in 0..200 {
            if (3..8).all(|i| fs.cache().contains(&blob, i)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let stats = fs.cache().stats();
        assert!(stats.fetched_background > 0, "{stats:?}");
        assert!((3..8).all(|i| fs.cache().contains(&blob, i)), "{stats:?}");
        session.finish().await.expect("finish");
    });
}

#[test]
fn a_block_with_the_wrong_digest_is_eio() {
    let (_src, mem, image, mut meta) = image_in_mem(&[("f", 2 * BLOCK as usize, 5)]);
    // Re-publish the image with block 1's digest changed: the store's bytes no longer match.
    meta.blobs[0].blocks[1].digest = Digest::of(b"something else").to_string();
    let store: DynStore = mem.clone();
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let blobs = vec![]; // data blob already stored; push only rewrites metadata and index
        let _ = convert::push(&store, &image, &meta, blobs).await.expect("push");
        let session = LayerSession::open_with_store(image, store, config()).await.expect("open");
        let fs = session.fs();
        let f = fs.lookup(1, "f").expect("lookup");
        assert_eq!(fs.read(f.ino, 0, 100).await.expect("block 0 is fine").len(), 100);
        let err = fs.read(f.ino, u64::from(BLOCK), 100).await.expect_err("block 1 is corrupt");
        assert_eq!(err.errno(), libc::EIO, "{err}");
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert_eq!(fs.cache().stats().corrupt, 1);
    });
}

#[test]
fn malformed_images_fail_at_mount_with_a_named_error() {
    let (_src, mem, image, meta) = image_in_mem(&[("f", 10, 1)]);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let open = |mem: &Arc<MemStore>| {
        let store: DynStore = mem.clone();
        rt.block_on(LayerSession::open_with_store(image.clone(), store, config()))
            .expect_err("must fail")
            .to_string()
    };
    let index_key = image.index_key();
    let good_index = rt.block_on(async {
        let store: DynStore = mem.clone();
        store.read_range(&index_key, 0..1 << 20).await.expect("index")
    });
    let index = Index::decode(&good_index, media::ARTIFACT).expect("index");

    // An index that is not JSON.
    mem.insert(&index_key, Bytes::from_static(b"garbage"));
    assert!(open(&mem).contains("not a bootseer index"));

    // A metadata blob with a bad magic (correctly named by its digest).
    let mut bad = meta.encode().expect("encode");
    bad[0] = b'X';
    let publish = |blob: Vec<u8>| {
        let digest = Digest::of(&blob).to_string();
        mem.insert(&format!("blobs/{digest}"), blob.clone());
        let mut idx = index.clone();
        idx.layers[0].digest = digest;
        idx.layers[0].size = blob.len() as u64;
        mem.insert(&index_key, serde_json::to_vec(&idx).expect("json"));
    };
    publish(bad);
    let e = open(&mem);
    assert!(e.contains("malformed image metadata") && e.contains("magic"), "{e}");

    // A metadata blob that is well framed but whose tree is broken.
    let mut broken = meta.clone();
    broken.inodes[0].kind = bootseer_image::format::Kind::Fifo;
    // encode() does not validate, so a bad tree can be framed correctly.
    publish(broken.encode().expect("encode"));
    let e = open(&mem);
    assert!(e.contains("does not fit") || e.contains("not a directory"), "{e}");

    // A metadata blob whose bytes do not hash to its name.
    let good = meta.encode().expect("encode");
    let digest = Digest::of(&good).to_string();
    let mut tampered = good.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    mem.insert(&format!("blobs/{digest}"), tampered);
    let mut idx = index.clone();
    idx.layers[0].digest = digest;
    mem.insert(&index_key, serde_json::to_vec(&idx).expect("json"));
    let e = open(&mem);
    assert!(e.contains("hashes to"), "{e}");

    // No image at all.
    mem.insert(&index_key, Bytes::new());
    let e = open(&mem);
    assert!(e.contains("index"), "{e}");
}

#[test]
fn a_trace_window_stores_the_trace_before_unmount() {
    let (_src, mem, image, _meta) = image_in_mem(&[("f", 3 * BLOCK as usize, 8)]);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let store: DynStore = mem.clone();
        let key = image.trace_key("w").expect("key");
        let config = SessionConfig {
            trace: TraceMode::Auto,
            workload: "w".into(),
            trace_window: Some(std::time::Duration::from_millis(300)),
            ..SessionConfig::default()
        };
        let session = LayerSession::open_with_store(image.clone(), store.clone(), config)
            .await
            .expect("open");
        let fs = session.fs();
        let f = fs.lookup(1, "f").expect("lookup");
        fs.read(f.ino, 0, 10).await.expect("read");
        let load = || bootseer_common::layer::session::load_trace(&store, &image, &key);
        assert!(load().await.expect("load").is_none(), "stored before the window closed");
        // The window closes 300 ms after the mount; poll for the stored trace past that.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let stored = loop {
            if let Some(stored) = load().await.expect("load") {
                break stored;
            }
            assert!(std::time::Instant::now() < deadline, "the window never stored the trace");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(stored.records.len(), 1);
        // Reads after the window are not part of the recording.
        fs.read(f.ino, 2 * u64::from(BLOCK), 10).await.expect("read");
        let s = session.finish().await.expect("finish");
        assert_eq!(s.trace_stored.as_deref(), Some(key.as_str()));
        assert_eq!(s.blocks_accessed, 1, "{s:?}");
    });
}

/// Issue 10 item 7: several mounts of one image record at once, each reading other files; the
/// stored trace afterwards holds every one of their recordings (it used to be the last
/// writer's "trace loaded at mount + mine").
#[test]
fn concurrent_mounts_lose_no_recording() {
    let b = BLOCK as usize;
    let names = ["r0", "r1", "r2", "r3"];
    let files: Vec<(&str, usize, u64)> =
        names.iter().enumerate().map(|(i, n)| (*n, 2 * b, i as u64 + 10)).collect();
    let (_src, mem, image, _meta) = image_in_mem(&files);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let record = SessionConfig {
            trace: TraceMode::Record,
            workload: "ranks".into(),
            ..SessionConfig::default()
        };
        // All open before any finishes: each loads the same (empty) stored trace.
        let mut sessions = Vec::new();
        for _ in names {
            let store: DynStore = mem.clone();
            sessions.push(
                LayerSession::open_with_store(image.clone(), store, record.clone())
                    .await
                    .expect("open"),
            );
        }
        for (session, name) in sessions.iter().zip(names) {
            let fs = session.fs();
            let ino = fs.lookup(1, name).expect("lookup").ino;
            fs.read(ino, 0, 4096).await.expect("read");
        }
        // Finished concurrently, as ranks unmounting together do.
        let finishing: Vec<_> = sessions.into_iter().map(|s| tokio::spawn(s.finish())).collect();
        for task in finishing {
            assert!(task.await.expect("join").expect("finish").trace_stored.is_some());
        }
        let store: DynStore = mem.clone();
        let key = image.trace_key("ranks").expect("key");
        let trace = bootseer_common::layer::session::load_trace(&store, &image, &key)
            .await
            .expect("load")
            .expect("a stored trace");
        assert_eq!(trace.recordings, names.len() as u32, "{trace}");
        let mut seen: Vec<&str> = trace.files.iter().map(|f| f.trim_start_matches('/')).collect();
        seen.sort_unstable();
        assert_eq!(seen, names, "recordings were lost");
    });
}
