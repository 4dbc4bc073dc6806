//! Micro-benchmarks of `common::trace`: the recorder's hot path (a block already seen, a new
//! block), encoding and decoding a 100k-record trace, and planning it. Sized for 2 cores: small
//! samples and short measurement times.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bootseer_common::trace::{BlobEntry, PlanOptions, Record, Recorder, ReplayPlan, Trace};
use criterion::{Criterion, criterion_group, criterion_main};

/// 100k first accesses: eight files read in interleaved sequential runs over four blobs, the
/// shape an image start has.
fn synthetic_trace(records: u64) -> Trace {
    let blobs = 4u64;
    let per_blob = records.div_ceil(blobs);
    let mut out = Trace {
        recordings: 1,
        blobs: (0..blobs)
            .map(|i| BlobEntry {
                id: format!("sha256:{i:064x}"),
                block_size: 1 << 20,
                block_count: per_blob,
            })
            .collect(),
        files: (0..8)
            .map(|i| format!("/opt/conda/lib/python3.11/site-packages/pkg{i}/lib.so"))
            .collect(),
        records: Vec::with_capacity(records as usize),
    };
    let mut next = vec![0u64; blobs as usize];
    let mut at = 0u64;
    let mut i = 0u64;
    while (out.records.len() as u64) < records {
        // Runs of 1..=16 blocks, rotating over blobs and files.
        let blob = (i % blobs) as usize;
        let run = 1 + (i * 7) % 16;
        for _ in 0..run {
            if next[blob] >= per_blob || out.records.len() as u64 >= records {
                break;
            }
            at += 1 + (i % 50);
            out.records.push(Record {
                blob: blob as u32,
                block: next[blob],
                at_us: at,
                file: (i % 8) as u32,
                seen: 1,
            });
            next[blob] += 1;
        }
        i += 1;
    }
    out
}

fn recorder(c: &mut Criterion) {
    let mut g = c.benchmark_group("recorder");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));

    let rec = Recorder::new(1 << 16).expect("recorder");
    let slot = rec.register_blob("sha256:seen", 1 << 20, 1024);
    let file = rec.intern_file("/f");
    rec.record(&slot, 7, file);
    g.bench_function("record/seen_block", |b| {
        b.iter(|| rec.record(black_box(&slot), black_box(7), file))
    });

    // A fresh recorder per batch so every access is a first access and the writer's buffer
    // stays bounded; the writer drains concurrently, as in a mount. Drops (the writer falling
    // behind a 64Ki channel) are reported below.
    let (mut sent, mut dropped) = (0u64, 0u64);
    g.bench_function("record/new_block", |b| {
        b.iter_custom(|iters| {
            let rec = Recorder::new(1 << 16).expect("recorder");
            let slot = rec.register_blob("sha256:new", 1 << 20, iters);
            let file = rec.intern_file("/f");
            let start = Instant::now();
            for block in 0..iters {
                rec.record(black_box(&slot), block, file);
            }
            let elapsed = start.elapsed();
            sent += rec.recorded();
            dropped += rec.dropped();
            drop(rec.finish());
            elapsed
        })
    });
    g.finish();
    eprintln!("record/new_block: {sent} recorded, {dropped} dropped (channel full)");
}

fn format_and_plan(c: &mut Criterion) {
    let trace = synthetic_trace(100_000);
    let encoded = trace.encode();
    eprintln!(
        "100k-record trace: {} bytes encoded ({:.2} bytes/record)",
        encoded.len(),
        encoded.len() as f64 / 1e5
    );
    let plan = ReplayPlan::new(&trace, &PlanOptions::default());
    eprintln!("100k-record trace: {} requests at default plan options", plan.requests().len());

    let mut g = c.benchmark_group("trace_100k");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("encode", |b| b.iter(|| black_box(&trace).encode()));
    g.bench_function("decode", |b| {
        b.iter(|| Trace::decode(black_box(&encoded)).map(|t| t.records.len()))
    });
    g.bench_function("plan", |b| {
        b.iter(|| ReplayPlan::new(black_box(&trace), &PlanOptions::default()))
    });
    g.bench_function("merge_with_self", |b| b.iter(|| Trace::merge([&trace, &trace], usize::MAX)));
    g.finish();
}

criterion_group!(benches, recorder, format_and_plan);
criterion_main!(benches);
