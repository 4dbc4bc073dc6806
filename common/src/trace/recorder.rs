//! [`Recorder`]: notes the first access of each block after a mount, off the request path.
//!
//! ```text
//!  register_blob(id) ─► BlobSlot { index, atomic bitmap }      (mount/open time, takes a lock)
//!  intern_file(path) ─► FileId                                  (open time, takes a lock)
//!  record(&slot, block, file)                                   (every read, FUSE threads)
//!     └─ bit already set? ─► return            one relaxed atomic load: the common case
//!     └─ fetch_or wins the bit ─► try_send(Access) ═bounded channel═► writer thread: Vec<Access>
//!                                   └─ full ─► dropped += 1, metrics TRACE_DROPPED
//!  finish() ─► Stop message, join writer ─► sort by time, canonical tables ─► Trace
//! ```
//!
//! `record` never blocks and never allocates: it touches one bitmap word and, once per block,
//! reads the clock and offers a 32-byte message to the channel. A block whose message was dropped
//! keeps its bit, so it is lost from this trace rather than retried on every later read (which
//! under overload would multiply the drops). The `dropped` count says how many blocks were lost.
//!
//! Locks: one mutex (`tables`) guards the blob and file tables; `record` never takes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{BlobEntry, Record, Trace};
use crate::metrics::TRACE_DROPPED;

/// Blocks per blob the recorder tracks. The bitmap costs one bit per block, so this bounds one
/// blob's bitmap at 2 MiB (16 TiB of 1 MiB blocks); blocks past it are not recorded.
pub const MAX_TRACKED_BLOCKS: u64 = 1 << 24;

/// A file path interned by [`Recorder::intern_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId(pub u32);

/// A blob registered with [`Recorder::register_blob`]: cheap to clone, shared by every reader
/// of the blob. Only meaningful with the recorder that made it.
#[derive(Debug, Clone)]
pub struct BlobSlot {
    inner: Arc<SlotInner>,
}

#[derive(Debug)]
struct SlotInner {
    index: u32,
    tracked: u64,
    /// Bit `b` is set once block `b` has been offered to the writer.
    bits: Box<[AtomicU64]>,
}

impl BlobSlot {
    /// The blob's index in the recorder's table.
    pub fn index(&self) -> u32 {
        self.inner.index
    }
}

#[derive(Debug)]
enum Msg {
    Access(Record),
    Stop,
    /// Test hook: the writer acknowledges, then waits until `resume` disconnects.
    #[cfg(feature = "test-support")]
    Stall {
        ack: Sender<()>,
        resume: Receiver<()>,
    },
}

/// Keeps the writer thread stalled while alive (see [`Recorder::stall_writer`]).
#[cfg(feature = "test-support")]
#[derive(Debug)]
pub struct WriterStall {
    _resume: Sender<()>,
}

#[derive(Debug, Default)]
struct Tables {
    blobs: Vec<BlobEntry>,
    slots: HashMap<String, BlobSlot>,
    files: Vec<String>,
    file_ids: HashMap<String, u32>,
}

/// Records first block accesses from many threads through one bounded channel into one writer
/// thread. Share it as `Arc<Recorder>`; see the module doc for the flow.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    tx: Sender<Msg>,
    tables: Mutex<Tables>,
    writer: Mutex<Option<JoinHandle<Vec<Record>>>>,
    sent: AtomicU64,
    dropped: AtomicU64,
}

impl Recorder {
    /// Starts the writer thread behind a channel of `capacity` messages (at least 1). Time in
    /// records counts from this call. Fails only if the thread cannot be spawned.
    pub fn new(capacity: usize) -> std::io::Result<Recorder> {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let writer = std::thread::Builder::new()
            .name("bootseer-trace".into())
            .spawn(move || write_loop(rx))?;
        Ok(Recorder {
            start: Instant::now(),
            tx,
            tables: Mutex::new(Tables::default()),
            writer: Mutex::new(Some(writer)),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// The slot for blob `id`, registering it on first use; registering an id again returns the
    /// same slot (so first-access tracking is per blob, whichever file reads it). `block_size` is
    /// kept in the trace (0 if unknown); `block_count` bounds the blocks recorded.
    pub fn register_blob(&self, id: &str, block_size: u32, block_count: u64) -> BlobSlot {
        let mut t = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = t.slots.get(id) {
            return slot.clone();
        }
        let tracked = block_count.min(MAX_TRACKED_BLOCKS);
        let words = tracked.div_ceil(64) as usize;
        let slot = BlobSlot {
            inner: Arc::new(SlotInner {
                // Past u32::MAX blobs the index saturates; such a trace fails validation rather
                // than aliasing another blob. Nobody mounts four billion blobs.
                index: u32::try_from(t.blobs.len()).unwrap_or(u32::MAX),
                tracked,
                bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            }),
        };
        t.blobs.push(BlobEntry { id: id.to_owned(), block_size, block_count });
        t.slots.insert(id.to_owned(), slot.clone());
        slot
    }

    /// The id for `path`, interning it on first use.
    pub fn intern_file(&self, path: &str) -> FileId {
        let mut t = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&id) = t.file_ids.get(path) {
            return FileId(id);
        }
        let id = u32::try_from(t.files.len()).unwrap_or(u32::MAX);
        t.files.push(path.to_owned());
        t.file_ids.insert(path.to_owned(), id);
        FileId(id)
    }

    /// Notes an access of `block` of the blob in `slot`, read through `file`. Only the first
    /// access of each block after [`Recorder::new`] is sent to the writer; later ones cost one
    /// atomic load. Never blocks: if the channel is full the access is dropped and counted.
    #[inline]
    pub fn record(&self, slot: &BlobSlot, block: u64, file: FileId) {
        let s = &*slot.inner;
        if block >= s.tracked {
            return;
        }
        let Some(word) = s.bits.get((block / 64) as usize) else {
            return;
        };
        let mask = 1u64 << (block % 64);
        // Relaxed is enough: the bit only deduplicates; the record itself travels by channel.
        if word.load(Ordering::Relaxed) & mask != 0 {
            return;
        }
        if word.fetch_or(mask, Ordering::Relaxed) & mask != 0 {
            return; // another thread won this block
        }
        let at_us = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let rec = Record { blob: s.index, block, at_us, file: file.0, seen: 1 };
        match self.tx.try_send(Msg::Access(rec)) {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                ::metrics::counter!(TRACE_DROPPED).increment(1);
            }
            // After `finish`: the recording is over, late reads are not part of it.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Test hook: stalls the writer thread until the returned guard is dropped, so the channel
    /// fills deterministically. Returns once the writer is stalled.
    #[cfg(feature = "test-support")]
    pub fn stall_writer(&self) -> WriterStall {
        let (ack, ack_rx) = crossbeam_channel::bounded(1);
        let (resume_tx, resume) = crossbeam_channel::bounded(0);
        if self.tx.send(Msg::Stall { ack, resume }).is_ok() {
            let _ = ack_rx.recv();
        }
        WriterStall { _resume: resume_tx }
    }

    /// Blocks whose first access was dropped because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Blocks whose first access reached the channel.
    pub fn recorded(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the writer and returns the recording: records sorted by time (ties in arrival
    /// order), tables holding only referenced blobs and files in order of first reference.
    /// Accesses after this are ignored; a second call returns an empty trace.
    pub fn finish(&self) -> Trace {
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(writer) = writer else {
            return Trace::default();
        };
        // Not the hot path: waiting here for room is fine, the writer is draining.
        let _ = self.tx.send(Msg::Stop);
        let mut records = match writer.join() {
            Ok(r) => r,
            Err(_) => {
                tracing::error!("trace writer thread panicked; the recording is lost");
                Vec::new()
            }
        };
        records.sort_by_key(|r| r.at_us);
        let t = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let mut trace =
            Trace { recordings: 1, blobs: t.blobs.clone(), files: t.files.clone(), records };
        drop(t);
        trace.canonicalize_tables();
        trace
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = self.tx.send(Msg::Stop);
            let _ = writer.join();
        }
    }
}

fn write_loop(rx: Receiver<Msg>) -> Vec<Record> {
    let mut records = Vec::new();
    for msg in rx.iter() {
        match msg {
            Msg::Access(r) => records.push(r),
            Msg::Stop => break,
            #[cfg(feature = "test-support")]
            Msg::Stall { ack, resume } => {
                let _ = ack.send(());
                let _ = resume.recv();
            }
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_past_the_count_are_ignored() {
        let rec = Recorder::new(16).expect("recorder");
        let slot = rec.register_blob("b", 0, 3);
        let f = rec.intern_file("/f");
        rec.record(&slot, 3, f);
        rec.record(&slot, u64::MAX, f);
        rec.record(&slot, 2, f);
        let t = rec.finish();
        assert_eq!(t.records.len(), 1);
        assert_eq!(t.records[0].block, 2);
        assert!(t.validate().is_ok());
    }

    #[test]
    fn registering_twice_shares_the_slot() {
        let rec = Recorder::new(16).expect("recorder");
        let a = rec.register_blob("b", 0, 10);
        let b = rec.register_blob("b", 0, 10);
        assert_eq!(a.index(), b.index());
        assert_eq!(rec.intern_file("/x"), rec.intern_file("/x"));
        let f = rec.intern_file("/x");
        rec.record(&a, 1, f);
        rec.record(&b, 1, f);
        assert_eq!(rec.finish().records.len(), 1);
    }

    #[test]
    fn finish_twice_and_record_after_finish_are_harmless() {
        let rec = Recorder::new(4).expect("recorder");
        let s = rec.register_blob("b", 0, 10);
        let f = rec.intern_file("/x");
        rec.record(&s, 0, f);
        assert_eq!(rec.finish().records.len(), 1);
        rec.record(&s, 1, f);
        assert_eq!(rec.finish(), Trace::default());
        assert_eq!(rec.dropped(), 0);
    }
}
