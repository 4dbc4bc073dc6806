//! Traces: the first access of each block after a mount, and how a later mount replays them.
//!
//! ```text
//!  FUSE threads ──record()──► Recorder ══bounded channel══► writer thread ──finish()──► Trace
//!                 (atomic bitmap: only a block's first access      (drops and counts        │
//!                  sends a message; never blocks)                   when full)               │
//!                                                                                            ▼
//!  stored trace ◄──encode()── Trace::merge(stored, new) ◄──────────────────────────── Trace
//!       │
//!       └──decode()──► Trace ──► ReplayPlan (coalesced runs, first-access order)
//!                                     └──► replay(plan, &dyn Prefetcher, window) ──► ReplayStats
//! ```
//!
//! Parts:
//! - this module: the data model ([`Trace`], [`BlobEntry`], [`Record`]), its invariants
//!   ([`Trace::validate`]), errors ([`TraceError`]) and the human summary ([`TraceSummary`]).
//! - [`recorder`]: [`Recorder`], [`BlobSlot`], [`FileId`] — the hot path.
//! - [`format`]: the versioned, self-checking binary encoding ([`Trace::encode`],
//!   [`Trace::decode`]).
//! - [`merge`]: folding several recordings into one trace ([`Trace::merge`]).
//! - [`plan`]: [`ReplayPlan`], turning a trace into coalesced [`PrefetchRequest`]s.
//! - [`replay`]: the [`Prefetcher`] trait the cache implements and the [`replay()`] driver that
//!   keeps a bounded window of requests in flight.
//!
//! A trace's record order *is* the replay order (first access first). `at_us` is kept so that
//! merging can place a block by when it was first needed, and for `trace show`.

pub mod format;
pub mod merge;
pub mod plan;
pub mod recorder;
pub mod replay;

use std::collections::{HashMap, HashSet};
use std::fmt;

pub use format::{FORMAT_VERSION, MAGIC};
pub use merge::DEFAULT_MAX_RECORDS;
pub use plan::{PlanOptions, PrefetchRequest, ReplayPlan};
#[cfg(feature = "test-support")]
pub use recorder::WriterStall;
pub use recorder::{BlobSlot, FileId, MAX_TRACKED_BLOCKS, Recorder};
pub use replay::{PrefetchError, Prefetcher, ReplayOptions, ReplayStats, replay};

/// One blob a trace refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobEntry {
    /// The blob's id, as the store names it (`sha256:…`).
    pub id: String,
    /// Bytes per block, or 0 when the recorder was not told. Block indexes only mean something
    /// for one block size.
    pub block_size: u32,
    /// Blocks in the blob; every record's block is below this.
    pub block_count: u64,
}

/// The first access of one block in a recording (or, after a merge, in several).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Record {
    /// Index into [`Trace::blobs`].
    pub blob: u32,
    /// Block index within the blob.
    pub block: u64,
    /// Microseconds from the start of the recording to the first access (after a merge, the
    /// earliest over the recordings that saw the block).
    pub at_us: u64,
    /// Index into [`Trace::files`]: the file whose read first touched the block.
    pub file: u32,
    /// In how many recordings the block was accessed (1 ..= [`Trace::recordings`]).
    pub seen: u32,
}

/// A recording of first block accesses, in first-access order.
///
/// Invariants (checked by [`Trace::validate`], guaranteed by [`Trace::decode`],
/// [`Recorder::finish`] and [`Trace::merge`]): every index is in range, each `(blob, block)`
/// appears once, `block < block_count`, and `1 <= seen <= recordings`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// How many recordings were merged into this trace (1 for a fresh one).
    pub recordings: u32,
    /// Blobs referred to by [`Record::blob`].
    pub blobs: Vec<BlobEntry>,
    /// File paths referred to by [`Record::file`].
    pub files: Vec<String>,
    /// First accesses, in replay order.
    pub records: Vec<Record>,
}

/// Why a trace could not be read. Each variant names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// The input does not start with [`MAGIC`]: not a trace at all.
    #[error("not a bootseer trace: magic is {found:02x?}, expected {expected:02x?}")]
    BadMagic { found: Vec<u8>, expected: Vec<u8> },
    /// A trace written by another version of the format.
    #[error("trace format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    /// The input ends before the part it is reading.
    #[error("trace truncated: {what} needs {needed} bytes, only {available} left")]
    Truncated { what: &'static str, needed: u64, available: u64 },
    /// Bytes follow the end the header announced.
    #[error("trace has {extra} unexpected bytes after its end")]
    TrailingBytes { extra: u64 },
    /// The stored CRC-32 does not match the content: the trace was damaged.
    #[error("trace checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    /// The content is well framed but breaks a rule of the format or a trace invariant.
    #[error("malformed trace: {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
}

impl TraceError {
    fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Malformed { what, reason: reason.into() }
    }
}

impl Trace {
    /// Checks the invariants listed on [`Trace`].
    pub fn validate(&self) -> Result<(), TraceError> {
        if u32::try_from(self.blobs.len()).is_err() || u32::try_from(self.files.len()).is_err() {
            return Err(TraceError::malformed("tables", "more than 2^32 entries"));
        }
        let mut ids = HashSet::with_capacity(self.blobs.len());
        for b in &self.blobs {
            if !ids.insert(b.id.as_str()) {
                return Err(TraceError::malformed(
                    "blob table",
                    format!("blob {:?} appears twice", b.id),
                ));
            }
        }
        if !self.records.is_empty() && self.recordings == 0 {
            return Err(TraceError::malformed("recordings", "0 recordings but records present"));
        }
        let mut seen_blocks = HashSet::with_capacity(self.records.len());
        for (i, r) in self.records.iter().enumerate() {
            let Some(blob) = self.blobs.get(r.blob as usize) else {
                return Err(TraceError::malformed(
                    "record",
                    format!("record {i}: blob index {} out of {} blobs", r.blob, self.blobs.len()),
                ));
            };
            if r.block >= blob.block_count {
                return Err(TraceError::malformed(
                    "record",
                    format!(
                        "record {i}: block {} of {:?} beyond its {} blocks",
                        r.block, blob.id, blob.block_count
                    ),
                ));
            }
            if r.file as usize >= self.files.len() {
                return Err(TraceError::malformed(
                    "record",
                    format!("record {i}: file index {} out of {} files", r.file, self.files.len()),
                ));
            }
            if r.seen == 0 || r.seen > self.recordings {
                return Err(TraceError::malformed(
                    "record",
                    format!("record {i}: seen {} outside 1..={}", r.seen, self.recordings),
                ));
            }
            if !seen_blocks.insert((r.blob, r.block)) {
                return Err(TraceError::malformed(
                    "record",
                    format!("record {i}: block {} of {:?} recorded twice", r.block, blob.id),
                ));
            }
        }
        Ok(())
    }

    /// Rewrites the blob and file tables to hold only referenced entries, in order of first
    /// reference by the records. Two traces with the same records in the same order then have
    /// identical tables, whatever order their recorders registered things in.
    /// Records whose indexes are out of range are dropped first.
    pub(crate) fn canonicalize_tables(&mut self) {
        let (nblobs, nfiles) = (self.blobs.len(), self.files.len());
        self.records.retain(|r| (r.blob as usize) < nblobs && (r.file as usize) < nfiles);
        let mut blob_map: HashMap<u32, u32> = HashMap::new();
        let mut file_map: HashMap<u32, u32> = HashMap::new();
        let mut blobs = Vec::new();
        let mut files = Vec::new();
        for r in &mut self.records {
            let nb = *blob_map.entry(r.blob).or_insert_with(|| {
                blobs.push(self.blobs[r.blob as usize].clone());
                (blobs.len() - 1) as u32
            });
            let nf = *file_map.entry(r.file).or_insert_with(|| {
                files.push(self.files[r.file as usize].clone());
                (files.len() - 1) as u32
            });
            r.blob = nb;
            r.file = nf;
        }
        self.blobs = blobs;
        self.files = files;
    }

    /// What `trace show` prints: sizes, time span and the files that touched most blocks.
    pub fn summary(&self) -> TraceSummary {
        let mut per_file: HashMap<u32, u64> = HashMap::new();
        let mut bytes = 0u64;
        let mut bytes_known = true;
        for r in &self.records {
            *per_file.entry(r.file).or_default() += 1;
            match self.blobs.get(r.blob as usize) {
                Some(b) if b.block_size > 0 => {
                    bytes = bytes.saturating_add(u64::from(b.block_size))
                }
                _ => bytes_known = false,
            }
        }
        let mut top: Vec<(String, u64)> = per_file
            .into_iter()
            .map(|(f, n)| {
                (self.files.get(f as usize).cloned().unwrap_or_else(|| format!("<file #{f}>")), n)
            })
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        // Ten lines is what fits next to the header on a terminal without scrolling.
        top.truncate(10);
        TraceSummary {
            recordings: self.recordings,
            blobs: self.blobs.len(),
            files: self.files.len(),
            blocks: self.records.len(),
            bytes: bytes_known.then_some(bytes),
            first_us: self.records.iter().map(|r| r.at_us).min(),
            last_us: self.records.iter().map(|r| r.at_us).max(),
            top_files: top,
        }
    }
}

/// A trace at a glance; its `Display` is the text `trace show` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSummary {
    /// Recordings merged into the trace.
    pub recordings: u32,
    /// Blobs referred to.
    pub blobs: usize,
    /// Files referred to.
    pub files: usize,
    /// Blocks recorded.
    pub blocks: usize,
    /// Bytes those blocks cover, when every blob's block size is known.
    pub bytes: Option<u64>,
    /// Earliest first access, µs from the start of the recording.
    pub first_us: Option<u64>,
    /// Latest first access, µs from the start of the recording.
    pub last_us: Option<u64>,
    /// Up to ten files that first touched the most blocks, most first.
    pub top_files: Vec<(String, u64)>,
}

impl fmt::Display for TraceSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "recordings: {}", self.recordings)?;
        writeln!(f, "blobs:      {}", self.blobs)?;
        writeln!(f, "files:      {}", self.files)?;
        match self.bytes {
            Some(b) => writeln!(
                f,
                "blocks:     {} ({:.1} MiB)",
                self.blocks,
                b as f64 / (1024.0 * 1024.0)
            )?,
            None => writeln!(f, "blocks:     {}", self.blocks)?,
        }
        match (self.first_us, self.last_us) {
            (Some(a), Some(b)) => writeln!(
                f,
                "time span:  {:.3} s .. {:.3} s ({:.3} s)",
                a as f64 / 1e6,
                b as f64 / 1e6,
                b.saturating_sub(a) as f64 / 1e6
            )?,
            _ => writeln!(f, "time span:  -")?,
        }
        if !self.top_files.is_empty() {
            writeln!(f, "top files by blocks:")?;
            for (name, n) in &self.top_files {
                writeln!(f, "  {n:>8}  {name}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.summary().fmt(f)
    }
}
