//! Tests of `common::trace`: the recorder's first-access and drop behaviour, the binary format
//! against damage (every truncation, random byte flips, wrong magic/version), merge and planner
//! properties against simple reference models, and the replayer's window, failures and stop.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bootseer_common::trace::{
    BlobEntry, DEFAULT_MAX_RECORDS, FORMAT_VERSION, PlanOptions, PrefetchError, Prefetcher, Record,
    Recorder, ReplayOptions, ReplayPlan, Trace, TraceError, replay,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Recorder

#[test]
fn recorder_keeps_only_the_first_access() {
    let rec = Recorder::new(1024).expect("recorder");
    let blob = rec.register_blob("sha256:aa", 1 << 20, 100);
    let f1 = rec.intern_file("/usr/lib/a.so");
    let f2 = rec.intern_file("/usr/lib/b.so");
    rec.record(&blob, 5, f1);
    std::thread::sleep(Duration::from_millis(2));
    rec.record(&blob, 5, f2);
    rec.record(&blob, 6, f2);
    rec.record(&blob, 5, f1);
    rec.record(&blob, 6, f1);
    assert_eq!(rec.recorded(), 2);
    let t = rec.finish();
    t.validate().expect("valid");
    assert_eq!(t.recordings, 1);
    assert_eq!(
        t.blobs,
        vec![BlobEntry { id: "sha256:aa".into(), block_size: 1 << 20, block_count: 100 }]
    );
    assert_eq!(t.files, vec!["/usr/lib/a.so".to_string(), "/usr/lib/b.so".to_string()]);
    let got: Vec<(u64, u32)> = t.records.iter().map(|r| (r.block, r.file)).collect();
    assert_eq!(got, vec![(5, 0), (6, 1)]);
    assert!(t.records[1].at_us >= t.records[0].at_us + 1000, "time since start, in µs");
}

#[test]
fn concurrent_recording_loses_nothing_when_capacity_suffices() {
    const BLOBS: u64 = 4;
    const BLOCKS: u64 = 2000;
    let rec = Arc::new(Recorder::new((BLOBS * BLOCKS) as usize).expect("recorder"));
    let slots: Vec<_> =
        (0..BLOBS).map(|i| rec.register_blob(&format!("blob{i}"), 4096, BLOCKS)).collect();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let rec = Arc::clone(&rec);
            let slots = slots.clone();
            std::thread::spawn(move || {
                let file = rec.intern_file(&format!("/t{t}"));
                // Every thread touches every block, in a different order.
                for i in 0..BLOBS * BLOCKS {
                    let k = (i * (2 * t + 1) + t * 7919) % (BLOBS * BLOCKS);
                    rec.record(&slots[(k / BLOCKS) as usize], k % BLOCKS, file);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(rec.dropped(), 0);
    let t = rec.finish();
    t.validate().expect("valid");
    assert_eq!(t.records.len() as u64, BLOBS * BLOCKS);
    let keys: HashSet<(String, u64)> =
        t.records.iter().map(|r| (t.blobs[r.blob as usize].id.clone(), r.block)).collect();
    assert_eq!(keys.len() as u64, BLOBS * BLOCKS);
    assert!(t.records.windows(2).all(|w| w[0].at_us <= w[1].at_us), "sorted by time");
}

#[test]
fn a_full_channel_drops_and_counts_without_blocking() {
    const CAPACITY: u64 = 4;
    let rec = Recorder::new(CAPACITY as usize).expect("recorder");
    let file = rec.intern_file("/f");
    let slots: Vec<_> = (0..50).map(|i| rec.register_blob(&format!("blob{i}"), 0, 100)).collect();
    let stall = rec.stall_writer();
    let started = Instant::now();
    for s in &slots {
        for b in 0..100 {
            rec.record(s, b, file);
        }
    }
    assert!(started.elapsed() < Duration::from_secs(2), "record must not block on a full channel");
    assert_eq!(rec.recorded(), CAPACITY);
    assert_eq!(rec.dropped(), 50 * 100 - CAPACITY);
    drop(stall);
    let t = rec.finish();
    t.validate().expect("valid");
    assert_eq!(t.records.len() as u64, CAPACITY);
    // A dropped block stays marked: it is not retried on later reads.
    rec.record(&slots[49], 99, file);
    assert_eq!(rec.dropped(), 50 * 100 - CAPACITY);
}

#[test]
fn summary_names_sizes_span_and_top_files() {
    let rec = Recorder::new(64).expect("recorder");
    let b = rec.register_blob("sha256:bb", 1 << 20, 10);
    let big = rec.intern_file("/lib/libtorch.so");
    let small = rec.intern_file("/bin/python");
    rec.record(&b, 0, small);
    for i in 1..4 {
        rec.record(&b, i, big);
    }
    let t = rec.finish();
    let s = t.summary();
    assert_eq!((s.blobs, s.files, s.blocks, s.bytes), (1, 2, 4, Some(4 << 20)));
    assert_eq!(s.top_files[0], ("/lib/libtorch.so".to_string(), 3));
    let text = t.to_string();
    assert!(text.contains("blocks:     4 (4.0 MiB)"), "{text}");
    assert!(text.contains("/lib/libtorch.so"), "{text}");
    assert!(text.contains("time span:"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Generators

/// A valid trace: distinct blob ids, unique (blob, block), seen within 1..=recordings.
fn arb_trace() -> impl Strategy<Value = Trace> {
    let raw_record =
        (any::<u8>(), prop_oneof![0u64..64, any::<u64>()], any::<u32>(), any::<u8>(), any::<u8>());
    (
        1u32..5,
        prop::collection::vec(
            ("\\PC{0,6}", prop_oneof![Just(0u32), Just(4096), any::<u32>()]),
            1..4,
        ),
        prop::collection::vec("/\\PC{0,10}", 1..4),
        prop::collection::vec(raw_record, 0..80),
        any::<bool>(),
    )
        .prop_map(|(recordings, blob_specs, files, raw, sorted)| {
            let nb = blob_specs.len();
            let mut seen_keys = HashSet::new();
            let mut at = 0u64;
            let mut records = Vec::new();
            for (b, block, dt, f, s) in raw {
                let blob = u32::from(b) % nb as u32;
                let block = block.min(u64::MAX - 1);
                if !seen_keys.insert((blob, block)) {
                    continue;
                }
                at = if sorted { at.saturating_add(u64::from(dt)) } else { u64::from(dt) << 20 };
                let file = u32::from(f) % files.len() as u32;
                let seen = 1 + u32::from(s) % recordings;
                records.push(Record { blob, block, at_us: at, file, seen });
            }
            let blobs = blob_specs
                .into_iter()
                .enumerate()
                .map(|(i, (suffix, block_size))| {
                    let max =
                        records.iter().filter(|r| r.blob == i as u32).map(|r| r.block + 1).max();
                    BlobEntry {
                        id: format!("sha256:{i}{suffix}"),
                        block_size,
                        block_count: max.unwrap_or(1),
                    }
                })
                .collect();
            Trace { recordings, blobs, files, records }
        })
}

/// A recording over a shared pool of blobs, as `Recorder::finish` would give it.
fn arb_recording() -> impl Strategy<Value = Trace> {
    prop::collection::vec((0u32..3, 0u64..40, 0u64..1000, 0u32..3), 0..60).prop_map(|accesses| {
        let rec_blobs: Vec<BlobEntry> = (0..3)
            .map(|i| BlobEntry { id: format!("blob{i}"), block_size: 4096, block_count: 40 })
            .collect();
        let files: Vec<String> = (0..3).map(|i| format!("/f{i}")).collect();
        let mut seen = HashSet::new();
        let mut records: Vec<Record> = accesses
            .into_iter()
            .filter(|(b, blk, _, _)| seen.insert((*b, *blk)))
            .map(|(blob, block, at_us, file)| Record { blob, block, at_us, file, seen: 1 })
            .collect();
        records.sort_by_key(|r| r.at_us);
        // Canonical tables, the way the recorder produces them.
        Trace::merge([&Trace { recordings: 1, blobs: rec_blobs, files, records }], usize::MAX)
    })
}

fn keyed(t: &Trace) -> Vec<(String, u64)> {
    t.records.iter().map(|r| (t.blobs[r.blob as usize].id.clone(), r.block)).collect()
}

// ---------------------------------------------------------------------------------------------
// Format

fn sample_trace() -> Trace {
    let rec = Recorder::new(4096).expect("recorder");
    let a = rec.register_blob("sha256:0123", 1 << 20, 1000);
    let b = rec.register_blob("sha256:4567", 1 << 20, 1000);
    let f = rec.intern_file("/opt/conda/lib/python3.11/site-packages/torch/lib/libtorch_cuda.so");
    let g = rec.intern_file("/usr/bin/python3");
    for i in 0..100 {
        rec.record(&a, i, f);
        rec.record(&b, 999 - i, g);
    }
    rec.finish()
}

#[test]
fn every_truncation_of_a_valid_encoding_is_rejected() {
    let enc = sample_trace().encode();
    assert!(Trace::decode(&enc).is_ok());
    for len in 0..enc.len() {
        let err = Trace::decode(&enc[..len]).expect_err("a prefix must not decode");
        assert!(matches!(err, TraceError::Truncated { .. }), "prefix {len}: {err}");
    }
    let mut longer = enc.clone();
    longer.push(0);
    assert_eq!(Trace::decode(&longer), Err(TraceError::TrailingBytes { extra: 1 }));
}

#[test]
fn encoding_is_compact() {
    let t = sample_trace();
    let enc = t.encode();
    // 200 records plus ~100 bytes of tables: about four bytes a record.
    assert!(enc.len() < 200 * 5 + 200, "{} bytes", enc.len());
}

#[test]
fn wrong_magic_is_rejected_with_a_clear_message() {
    let mut enc = sample_trace().encode();
    enc[0] = b'X';
    let err = Trace::decode(&enc).expect_err("bad magic");
    assert!(matches!(err, TraceError::BadMagic { .. }));
    assert!(err.to_string().contains("not a bootseer trace"), "{err}");
    let err = Trace::decode(b"{\"json\": true}").expect_err("json is not a trace");
    assert!(err.to_string().contains("not a bootseer trace"), "{err}");
}

#[test]
fn wrong_version_is_rejected_with_a_clear_message() {
    let mut enc = sample_trace().encode();
    enc[8..10].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let err = Trace::decode(&enc).expect_err("future version");
    assert_eq!(
        err,
        TraceError::UnsupportedVersion { found: FORMAT_VERSION + 1, supported: FORMAT_VERSION }
    );
    assert!(err.to_string().contains("version 2 is not supported"), "{err}");
    // Even a truncated header reports the version once it has it.
    assert!(matches!(Trace::decode(&enc[..12]), Err(TraceError::UnsupportedVersion { .. })));
}

#[test]
fn checksum_mismatch_is_named() {
    let mut enc = sample_trace().encode();
    let mid = enc.len() / 2;
    enc[mid] ^= 0x40;
    let err = Trace::decode(&enc).expect_err("damaged");
    assert!(matches!(err, TraceError::ChecksumMismatch { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[test]
fn an_invalid_trace_encodes_but_does_not_decode() {
    let mut t = sample_trace();
    t.records[3].blob = 9;
    let err = Trace::decode(&t.encode()).expect_err("bad index");
    assert!(err.to_string().contains("blob index 9"), "{err}");
    let mut t = sample_trace();
    t.records[3].seen = 2;
    let err = Trace::decode(&t.encode()).expect_err("seen > recordings");
    assert!(err.to_string().contains("seen 2 outside 1..=1"), "{err}");
}

proptest! {
    #[test]
    fn encode_decode_round_trips(t in arb_trace()) {
        t.validate().expect("generator makes valid traces");
        let enc = t.encode();
        prop_assert_eq!(Trace::decode(&enc), Ok(t));
    }

    #[test]
    fn byte_flips_are_rejected_or_harmless(
        t in arb_trace(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let mut enc = t.encode();
        for (at, mask) in flips {
            let i = at.index(enc.len());
            enc[i] ^= mask;
        }
        match Trace::decode(&enc) {
            Ok(back) => prop_assert_eq!(back, t),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Trace::decode(&data);
        let mut framed = bootseer_common::trace::MAGIC.to_vec();
        framed.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        framed.extend_from_slice(&data);
        let _ = Trace::decode(&framed);
    }
}

// ---------------------------------------------------------------------------------------------
// Merge

proptest! {
    #[test]
    fn merge_is_the_union_with_summed_seen_and_earliest_time(
        traces in prop::collection::vec(arb_recording(), 1..4),
    ) {
        let merged = Trace::merge(&traces, DEFAULT_MAX_RECORDS);
        merged.validate().expect("valid");
        // Reference model: per (blob id, block), seen summed and the earliest time.
        let mut model: HashMap<(String, u64), (u32, u64)> = HashMap::new();
        for t in &traces {
            for r in &t.records {
                let e = model.entry((t.blobs[r.blob as usize].id.clone(), r.block)).or_insert((0, u64::MAX));
                e.0 += r.seen;
                e.1 = e.1.min(r.at_us);
            }
        }
        prop_assert_eq!(merged.records.len(), model.len());
        prop_assert_eq!(merged.recordings, traces.iter().map(|t| t.recordings).sum::<u32>());
        for r in &merged.records {
            let key = (merged.blobs[r.blob as usize].id.clone(), r.block);
            prop_assert_eq!(model.get(&key).copied(), Some((r.seen, r.at_us)));
        }
        prop_assert!(merged.records.windows(2).all(|w| w[0].at_us <= w[1].at_us));
    }

    #[test]
    fn merging_with_itself_keeps_the_order_and_doubles_seen(t in arb_recording()) {
        let once = Trace::merge([&t], usize::MAX);
        prop_assert_eq!(&once, &t);
        let twice = Trace::merge([&t, &t], usize::MAX);
        prop_assert_eq!(keyed(&twice), keyed(&t));
        prop_assert_eq!(twice.recordings, 2 * t.recordings);
        for (a, b) in twice.records.iter().zip(&t.records) {
            prop_assert_eq!((a.seen, a.at_us, a.file), (2 * b.seen, b.at_us, b.file));
        }
        prop_assert_eq!(&twice.files, &t.files);
        prop_assert_eq!(&twice.blobs, &t.blobs);
    }

    #[test]
    fn merge_cap_keeps_the_most_seen(traces in prop::collection::vec(arb_recording(), 1..4), cap in 0usize..40) {
        let full = Trace::merge(&traces, usize::MAX);
        let capped = Trace::merge(&traces, cap);
        capped.validate().expect("valid");
        prop_assert_eq!(capped.records.len(), cap.min(full.records.len()));
        let kept: HashSet<(String, u64)> = keyed(&capped).into_iter().collect();
        let min_kept = capped.records.iter().map(|r| r.seen).min().unwrap_or(u32::MAX);
        for (r, key) in full.records.iter().zip(keyed(&full)) {
            if !kept.contains(&key) {
                prop_assert!(r.seen <= min_kept, "dropped {:?} seen {} > kept {}", key, r.seen, min_kept);
            }
        }
        // The kept records keep the full trace's relative order.
        let order: Vec<_> = keyed(&full).into_iter().filter(|k| kept.contains(k)).collect();
        prop_assert_eq!(order, keyed(&capped));
    }
}

#[test]
fn merge_takes_the_earliest_time_and_its_file() {
    let mk = |file: &str, at: &[(u64, u64)]| Trace {
        recordings: 1,
        blobs: vec![BlobEntry { id: "x".into(), block_size: 4096, block_count: 10 }],
        files: vec![file.into()],
        records: at
            .iter()
            .map(|&(block, at_us)| Record { blob: 0, block, at_us, file: 0, seen: 1 })
            .collect(),
    };
    let a = mk("/a", &[(1, 10), (2, 20), (3, 30)]);
    let b = mk("/b", &[(3, 5), (4, 25)]);
    let m = Trace::merge([&a, &b], DEFAULT_MAX_RECORDS);
    let got: Vec<(u64, u64, &str, u32)> = m
        .records
        .iter()
        .map(|r| (r.block, r.at_us, m.files[r.file as usize].as_str(), r.seen))
        .collect();
    assert_eq!(got, vec![(3, 5, "/b", 2), (1, 10, "/a", 1), (2, 20, "/a", 1), (4, 25, "/b", 1)]);
    assert_eq!(m.recordings, 2);
}

#[test]
fn merge_drops_records_of_a_blob_whose_block_size_changed() {
    let mk = |block_size: u32, block: u64| Trace {
        recordings: 1,
        blobs: vec![BlobEntry { id: "x".into(), block_size, block_count: 100 }],
        files: vec!["/f".into()],
        records: vec![Record { blob: 0, block, at_us: 0, file: 0, seen: 1 }],
    };
    let m = Trace::merge([&mk(4096, 1), &mk(1 << 20, 2)], DEFAULT_MAX_RECORDS);
    assert_eq!(m.blobs[0].block_size, 1 << 20);
    assert_eq!(m.records.iter().map(|r| r.block).collect::<Vec<_>>(), vec![2]);
    m.validate().expect("valid");
}

#[test]
fn merge_of_invalid_input_is_valid() {
    let t = Trace {
        recordings: 0,
        blobs: vec![BlobEntry { id: "x".into(), block_size: 0, block_count: 5 }],
        files: vec!["/f".into()],
        records: vec![
            Record { blob: 0, block: 1, at_us: 0, file: 0, seen: 0 },
            Record { blob: 3, block: 1, at_us: 0, file: 0, seen: 1 },
            Record { blob: 0, block: 9, at_us: 0, file: 0, seen: 1 },
            Record { blob: 0, block: 2, at_us: 0, file: 7, seen: 1 },
        ],
    };
    let m = Trace::merge([&t, &t], 10);
    m.validate().expect("valid");
    assert_eq!(m.records.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Planner

proptest! {
    #[test]
    fn plan_requests_every_block_once_in_runs_without_gaps(
        t in arb_trace(),
        max_run_blocks in 1u64..10,
        lookahead in 0usize..20,
    ) {
        let plan = ReplayPlan::new(&t, &PlanOptions { max_run_blocks, lookahead });
        let position: HashMap<(u32, u64), usize> =
            t.records.iter().enumerate().map(|(i, r)| ((r.blob, r.block), i)).collect();
        let mut requested = HashSet::new();
        let mut prev_first = None;
        for req in plan.requests() {
            let len = req.blocks.end - req.blocks.start;
            prop_assert!(len >= 1 && len <= max_run_blocks, "{:?}", req);
            prop_assert_eq!(plan.blob_id(req.blob), Some(t.blobs[req.blob as usize].id.as_str()));
            let mut first = usize::MAX;
            let mut last = 0;
            for b in req.blocks.clone() {
                let p = position.get(&(req.blob, b));
                prop_assert!(p.is_some(), "request {:?} spans unrecorded block {}", req, b);
                let p = *p.unwrap_or(&0);
                first = first.min(p);
                last = last.max(p);
                prop_assert!(requested.insert((req.blob, b)), "block {} requested twice", b);
            }
            prop_assert!(last - first <= lookahead, "{:?} spans positions {}..={}", req, first, last);
            if let Some(prev) = prev_first {
                prop_assert!(first > prev, "requests out of first-access order");
            }
            prev_first = Some(first);
        }
        prop_assert_eq!(requested.len(), t.records.len());
        prop_assert_eq!(plan.block_count(), t.records.len() as u64);
    }
}

#[test]
fn a_sequential_trace_plans_to_few_large_requests() {
    let t = sample_trace();
    let plan = ReplayPlan::new(&t, &PlanOptions::default());
    assert_eq!(plan.block_count(), 200);
    assert_eq!(plan.requests().len(), 2 * 100_usize.div_ceil(8));
}

// ---------------------------------------------------------------------------------------------
// Replayer

/// Parks each request for a while, tracks how many are in flight, fails every `fail_every`-th.
#[derive(Default)]
struct Parking {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    calls: AtomicU64,
    dropped: AtomicU64,
    fail_every: u64,
    park: Duration,
    forever: bool,
    log: std::sync::Mutex<Vec<(String, Range<u64>)>>,
}

struct InFlight<'a>(&'a Parking, bool);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.1 {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Prefetcher for Parking {
    async fn prefetch(&self, blob: &str, blocks: Range<u64>) -> Result<(), PrefetchError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.log.lock().expect("log").push((blob.to_owned(), blocks));
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let mut guard = InFlight(self, false);
        if self.forever {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.park).await;
        guard.1 = true;
        if self.fail_every > 0 && n.is_multiple_of(self.fail_every) {
            return Err(format!("injected failure {n}").into());
        }
        Ok(())
    }
}

fn replay_trace(blocks: u64) -> Trace {
    // Every other block, so each is its own request.
    Trace {
        recordings: 1,
        blobs: vec![BlobEntry {
            id: "sha256:cc".into(),
            block_size: 4096,
            block_count: 2 * blocks,
        }],
        files: vec!["/f".into()],
        records: (0..blocks)
            .map(|i| Record { blob: 0, block: 2 * i, at_us: i, file: 0, seen: 1 })
            .collect(),
    }
}

#[tokio::test]
async fn replay_respects_the_window_and_keeps_order() {
    let plan = ReplayPlan::new(&replay_trace(40), &PlanOptions::default());
    let p = Parking { park: Duration::from_millis(3), ..Default::default() };
    let stats = replay(&plan, &p, &ReplayOptions { window: 4 }, std::future::pending()).await;
    assert_eq!(p.max_in_flight.load(Ordering::SeqCst), 4);
    assert_eq!(stats.max_in_flight, 4);
    assert_eq!((stats.requests, stats.blocks, stats.failures, stats.stopped), (40, 40, 0, false));
    let log = p.log.lock().expect("log").clone();
    let expected: Vec<_> =
        plan.requests().iter().map(|r| ("sha256:cc".to_string(), r.blocks.clone())).collect();
    assert_eq!(log, expected, "issued in plan order");
}

#[tokio::test]
async fn replay_continues_after_failures() {
    let plan = ReplayPlan::new(&replay_trace(30), &PlanOptions::default());
    let p = Parking { fail_every: 3, ..Default::default() };
    let stats = replay(&plan, &p, &ReplayOptions { window: 2 }, std::future::pending()).await;
    assert_eq!(
        (stats.requests, stats.failures, stats.blocks, stats.failed_blocks),
        (30, 10, 20, 10)
    );
}

#[tokio::test]
async fn replay_stops_when_told_and_drops_what_is_in_flight() {
    let plan = ReplayPlan::new(&replay_trace(30), &PlanOptions::default());
    let p = Parking { forever: true, ..Default::default() };
    let stats = replay(
        &plan,
        &p,
        &ReplayOptions { window: 3 },
        tokio::time::sleep(Duration::from_millis(20)),
    )
    .await;
    assert!(stats.stopped);
    assert_eq!(stats.requests, 0);
    assert_eq!(p.calls.load(Ordering::SeqCst), 3);
    assert_eq!(p.dropped.load(Ordering::SeqCst), 3, "in-flight requests are cancelled");
    assert_eq!(p.in_flight.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn dropping_a_spawned_replay_cancels_it() {
    let plan = Arc::new(ReplayPlan::new(&replay_trace(10), &PlanOptions::default()));
    let p = Arc::new(Parking { forever: true, ..Default::default() });
    let task = tokio::spawn({
        let (plan, p) = (Arc::clone(&plan), Arc::clone(&p));
        async move { replay(&plan, &*p, &ReplayOptions { window: 2 }, std::future::pending()).await }
    });
    while p.calls.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    assert_eq!(p.dropped.load(Ordering::SeqCst), 2);
    assert_eq!(p.in_flight.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn recorded_trace_replays_end_to_end() {
    let t = sample_trace();
    let back =
        Trace::decode(&Trace::merge([&t, &t], DEFAULT_MAX_RECORDS).encode()).expect("decodes");
    let plan = ReplayPlan::new(&back, &PlanOptions::default());
    let p = Parking::default();
    let stats = replay(&plan, &p, &ReplayOptions::default(), std::future::pending()).await;
    assert_eq!(stats.blocks, 200);
    assert!(stats.max_in_flight <= ReplayOptions::default().window);
}
