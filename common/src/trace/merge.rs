//! [`Trace::merge`]: folds several recordings of the same workload into one trace.
//!
//! ```text
//!  traces ──► blob choice per id (block size of the last trace naming it)
//!         ──► per (blob id, block): earliest at_us, its file, seen summed
//!         ──► cap: keep the most seen, then earliest
//!         ──► order by (earliest at_us, which trace, position in it) ──► canonical tables
//! ```
//!
//! **Order rule.** A block's merged time is the *minimum* of its first-access times over the
//! recordings, each measured from its own recording's start. The minimum (rather than, say,
//! the median) errs towards fetching early: a block fetched a little early costs cache space for
//! a moment, a block fetched late stalls the job. Ties go to the earlier trace in the argument
//! list, then to the earlier position within it, so merging a trace with itself keeps its order,
//! and merging is deterministic.
//!
//! **Blobs.** Traces are matched by blob id. Block indexes only mean something for one block
//! size: if traces disagree on a blob's block size, the last trace that names the blob wins and
//! records of that blob with another block size are dropped. `block_count` is the largest seen.

use std::collections::HashMap;

use super::{BlobEntry, Record, Trace};

/// Records a merged trace keeps by default. At 1 MiB blocks this covers 256 GiB of first
/// accesses, far beyond any start we have seen, while the encoded trace stays near 1 MiB.
pub const DEFAULT_MAX_RECORDS: usize = 1 << 18;

struct Acc {
    at_us: u64,
    /// (trace index, position) of the record that gave `at_us`: the tie-break.
    src: (usize, usize),
    file: u32,
    seen: u32,
}

impl Trace {
    /// Merges `traces` (see the [module doc](self) for the rules) and keeps at most
    /// `max_records` records: the most seen, then the earliest. `seen` and `recordings` are
    /// summed. Records with out-of-range indexes are skipped, so any input gives a valid trace.
    pub fn merge<'a>(traces: impl IntoIterator<Item = &'a Trace>, max_records: usize) -> Trace {
        let traces: Vec<&Trace> = traces.into_iter().collect();

        // Blob table: one entry per id; the last trace naming it decides the block size.
        let mut blobs: Vec<BlobEntry> = Vec::new();
        let mut blob_ids: HashMap<&str, u32> = HashMap::new();
        for t in traces.iter().rev() {
            for b in &t.blobs {
                if !blob_ids.contains_key(b.id.as_str()) {
                    blob_ids.insert(&b.id, blobs.len() as u32);
                    blobs.push(BlobEntry {
                        id: b.id.clone(),
                        block_size: b.block_size,
                        block_count: 0,
                    });
                }
            }
        }
        for t in &traces {
            for b in &t.blobs {
                let e = &mut blobs[blob_ids[b.id.as_str()] as usize];
                if e.block_size == b.block_size {
                    e.block_count = e.block_count.max(b.block_count);
                }
            }
        }

        let mut files: Vec<String> = Vec::new();
        let mut file_ids: HashMap<&str, u32> = HashMap::new();
        let mut acc: HashMap<(u32, u64), Acc> = HashMap::new();
        let mut recordings = 0u32;
        for (ti, t) in traces.iter().enumerate() {
            recordings = recordings.saturating_add(t.recordings);
            // This trace's blob index → merged index, or None when its block size lost.
            let map: Vec<Option<u32>> = t
                .blobs
                .iter()
                .map(|b| {
                    let nb = blob_ids[b.id.as_str()];
                    (blobs[nb as usize].block_size == b.block_size).then_some(nb)
                })
                .collect();
            for (pos, r) in t.records.iter().enumerate() {
                let Some(Some(nb)) = map.get(r.blob as usize) else {
                    continue;
                };
                let Some(path) = t.files.get(r.file as usize) else {
                    continue;
                };
                let nf = *file_ids.entry(path.as_str()).or_insert_with(|| {
                    files.push(path.clone());
                    (files.len() - 1) as u32
                });
                let seen = r.seen.max(1);
                acc.entry((*nb, r.block))
                    .and_modify(|a| {
                        a.seen = a.seen.saturating_add(seen);
                        // Traces and positions are visited in increasing order, so a strictly
                        // earlier time is the only way to win the tie-break.
                        if r.at_us < a.at_us {
                            a.at_us = r.at_us;
                            a.src = (ti, pos);
                            a.file = nf;
                        }
                    })
                    .or_insert(Acc { at_us: r.at_us, src: (ti, pos), file: nf, seen });
            }
        }

        let mut merged: Vec<(Record, (usize, usize))> = acc
            .into_iter()
            .filter(|((blob, block), _)| *block < blobs[*blob as usize].block_count)
            .map(|((blob, block), a)| {
                (Record { blob, block, at_us: a.at_us, file: a.file, seen: a.seen }, a.src)
            })
            .collect();
        if merged.len() > max_records {
            merged.sort_by(|(a, asrc), (b, bsrc)| {
                b.seen.cmp(&a.seen).then(a.at_us.cmp(&b.at_us)).then(asrc.cmp(bsrc))
            });
            merged.truncate(max_records);
        }
        merged.sort_by(|(a, asrc), (b, bsrc)| a.at_us.cmp(&b.at_us).then(asrc.cmp(bsrc)));

        // Inputs that broke `seen <= recordings` (or had 0 recordings) are clamped back into it.
        let recordings = if merged.is_empty() { recordings } else { recordings.max(1) };
        let records = merged
            .into_iter()
            .map(|(mut r, _)| {
                r.seen = r.seen.min(recordings);
                r
            })
            .collect();
        let mut out = Trace { recordings, blobs, files, records };
        out.canonicalize_tables();
        out
    }
}
