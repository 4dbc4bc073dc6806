//! [`ReplayPlan`]: turns a trace into coalesced prefetch requests, in first-access order.
//!
//! ```text
//!  records (first-access order) ──► walk in order; each unplanned block seeds a run
//!     seed (blob, b) at position i ──► grow forward b+1, b+2 … then backward b-1 …
//!                                      while each block is in the trace, unplanned, and first
//!                                      accessed at most `lookahead` positions after i,
//!                                      up to `max_run_blocks`
//!                                  ──► PrefetchRequest { blob, blocks: lo..hi }
//! ```
//!
//! Guarantees (tested in `tests/trace.rs`): every valid recorded block is requested exactly once;
//! a request covers only recorded blocks of one blob (it never spans a gap); no request exceeds
//! `max_run_blocks`; requests come in the order of their earliest-accessed block. Records with an
//! out-of-range blob or block, and repeats, are skipped.

use std::collections::HashMap;
use std::ops::Range;

use super::Trace;

/// How a trace is turned into requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// Most blocks in one request (at least 1).
    pub max_run_blocks: u64,
    /// How many positions past a run's first block another block may be first accessed and
    /// still join the run (0: no coalescing).
    pub lookahead: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        // 8 blocks = 8 MiB at the default block size: large enough to amortise a registry or
        // HDFS round trip, small enough that one request does not hold up the next. A lookahead
        // of 64 is about what a window of 8 such requests has in flight anyway, so pulling a
        // block forward by that much does not fetch it before it would have been fetched.
        Self { max_run_blocks: 8, lookahead: 64 }
    }
}

/// One prefetch: a run of consecutive blocks of one blob.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrefetchRequest {
    /// Index into [`ReplayPlan::blobs`] (the trace's blob table).
    pub blob: u32,
    /// Block indexes, never empty.
    pub blocks: Range<u64>,
}

/// The requests to replay a trace, in order, and the blob ids they refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayPlan {
    blobs: Vec<String>,
    requests: Vec<PrefetchRequest>,
}

impl ReplayPlan {
    /// Plans `trace` (see the module doc for the rule).
    pub fn new(trace: &Trace, options: &PlanOptions) -> ReplayPlan {
        let max_run = options.max_run_blocks.max(1);
        let n = trace.records.len();
        // Valid first occurrences only; `None` marks a record the plan skips.
        let mut entries: Vec<Option<(u32, u64)>> = Vec::with_capacity(n);
        let mut position: HashMap<(u32, u64), usize> = HashMap::with_capacity(n);
        for (i, r) in trace.records.iter().enumerate() {
            let valid = trace.blobs.get(r.blob as usize).is_some_and(|b| r.block < b.block_count);
            let first = valid && !position.contains_key(&(r.blob, r.block));
            if first {
                position.insert((r.blob, r.block), i);
            }
            entries.push(first.then_some((r.blob, r.block)));
        }

        let mut done = vec![false; n];
        let mut requests = Vec::new();
        for i in 0..n {
            let Some((blob, block)) = entries[i] else {
                continue;
            };
            if done[i] {
                continue;
            }
            done[i] = true;
            let limit = i.saturating_add(options.lookahead);
            // Every position before `i` is already planned or skipped, so a joinable block is
            // always after `i`.
            let joins = |b: u64, done: &mut [bool]| match position.get(&(blob, b)) {
                Some(&j) if j <= limit && !done[j] => {
                    done[j] = true;
                    true
                }
                _ => false,
            };
            let (mut lo, mut hi) = (block, block + 1);
            while hi - lo < max_run && joins(hi, &mut done) {
                hi += 1;
            }
            while hi - lo < max_run && lo > 0 && joins(lo - 1, &mut done) {
                lo -= 1;
            }
            requests.push(PrefetchRequest { blob, blocks: lo..hi });
        }
        ReplayPlan { blobs: trace.blobs.iter().map(|b| b.id.clone()).collect(), requests }
    }

    /// The requests, in the order to issue them.
    pub fn requests(&self) -> &[PrefetchRequest] {
        &self.requests
    }

    /// Blob ids, indexed by [`PrefetchRequest::blob`].
    pub fn blobs(&self) -> &[String] {
        &self.blobs
    }

    /// The id of blob `index`, if the plan has it.
    pub fn blob_id(&self, index: u32) -> Option<&str> {
        self.blobs.get(index as usize).map(String::as_str)
    }

    /// Blocks over all requests.
    pub fn block_count(&self) -> u64 {
        self.requests.iter().map(|r| r.blocks.end - r.blocks.start).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{BlobEntry, Record};

    fn trace(blocks: &[(u32, u64)]) -> Trace {
        Trace {
            recordings: 1,
            blobs: vec![
                BlobEntry { id: "a".into(), block_size: 0, block_count: 100 },
                BlobEntry { id: "b".into(), block_size: 0, block_count: 100 },
            ],
            files: vec!["/f".into()],
            records: blocks
                .iter()
                .enumerate()
                .map(|(i, &(blob, block))| Record {
                    blob,
                    block,
                    at_us: i as u64,
                    file: 0,
                    seen: 1,
                })
                .collect(),
        }
    }

    fn plan(
        blocks: &[(u32, u64)],
        max_run_blocks: u64,
        lookahead: usize,
    ) -> Vec<(u32, Range<u64>)> {
        ReplayPlan::new(&trace(blocks), &PlanOptions { max_run_blocks, lookahead })
            .requests()
            .iter()
            .map(|r| (r.blob, r.blocks.clone()))
            .collect()
    }

    #[test]
    fn sequential_reads_coalesce_up_to_the_run_limit() {
        let seq: Vec<_> = (0..10).map(|b| (0, b)).collect();
        assert_eq!(plan(&seq, 4, 64), vec![(0, 0..4), (0, 4..8), (0, 8..10)]);
    }

    #[test]
    fn interleaved_files_coalesce_per_blob() {
        let seq = [(0, 0), (1, 5), (0, 1), (1, 6), (0, 2)];
        assert_eq!(plan(&seq, 8, 64), vec![(0, 0..3), (1, 5..7)]);
    }

    #[test]
    fn lookahead_limits_how_far_a_block_is_pulled_forward() {
        let seq = [(0, 0), (1, 1), (1, 2), (0, 1)];
        assert_eq!(plan(&seq, 8, 2), vec![(0, 0..1), (1, 1..3), (0, 1..2)]);
        assert_eq!(plan(&seq, 8, 3), vec![(0, 0..2), (1, 1..3)]);
        assert_eq!(plan(&seq, 8, 0), vec![(0, 0..1), (1, 1..2), (1, 2..3), (0, 1..2)]);
    }

    #[test]
    fn backward_reads_coalesce_too() {
        let seq = [(0, 9), (0, 8), (0, 7)];
        assert_eq!(plan(&seq, 8, 64), vec![(0, 7..10)]);
    }

    #[test]
    fn invalid_and_repeated_records_are_skipped() {
        let seq = [(0, 1), (7, 1), (0, 1), (0, 100), (1, 3)];
        assert_eq!(plan(&seq, 8, 64), vec![(0, 1..2), (1, 3..4)]);
    }
}
