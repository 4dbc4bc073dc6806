//! Layers: a read-only tree in bootseer's block format, built from a directory, kept in a store,
//! and mounted lazily. Images (fs-image) and dependency snapshots (fs-deps) are both layers.
//!
//! ```text
//!  build:  directory ──build::build_from_dir──► format::{Metadata, data blobs} ──push──► Store
//!          (fs-image's OCI converter feeds the same BlobWriter, one per image layer)
//!  mount:  Store ──session::LayerSession::open──► fs::LayerFs ──fuse::LayerFuse──► kernel
//!                    │ metadata loaded whole (all lookups local)   │ reads: BlockCache ◄─ source::LayerBlob
//!                    │ replay the stored trace ───────────────────┘        (Priority::Replay)
//!                    └─ at finish: Recorder ─► merge ─► traces/NAME/TAG/WORKLOAD + MountSummary
//! ```
//!
//! Parts: [`reference`] (`STORE/NAME:TAG` parsing, keys), [`format`] (metadata and index,
//! self-checking), [`build`] (directory → blobs, push), [`progress`] (counters and the terminal
//! line), [`source`] (per-blob `BlockSource`), [`fs`] (logic, no fuser types), [`fuse`]
//! (adapter), [`session`] (load, replay, record, summary), [`error`] (one error type, one errno
//! mapping).
//!
//! Sync/async bridge: fuser's threads `block_on` the runtime handle for each read (short work:
//! a few block lookups); replay and prefetch run as tokio tasks inside the cache.

pub mod blob;
pub mod build;
pub mod error;
pub mod format;
pub mod fs;
pub mod fuse;
pub mod progress;
pub mod reference;
pub mod serve;
pub mod session;
pub mod source;

pub use error::LayerError;
pub use fs::LayerFs;
pub use fuse::LayerFuse;
pub use reference::LayerRef;
pub use session::{LayerSession, MountSummary, SessionConfig, TraceMode};
