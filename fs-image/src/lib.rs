//! `bootseer-image`: a container image mounted lazily over FUSE, with hot-block record and
//! replay.
//!
//! ```text
//!  convert: dir: | oci: | docker:// ──► convert ──► format::{Metadata, data blobs, Index} ──► Store
//!  mount:   Store ──► session::ImageSession ──► fs::ImageFs ──► fuse::ImageFuse ──► kernel
//!                         │  load metadata (all local)   │ reads: BlockCache ◄─ source::ImageBlob
//!                         │  replay stored trace ────────┘        (Priority::Replay prefetch)
//!                         └─ at unmount: Recorder ─► merge ─► traces/NAME/TAG/WORKLOAD + summary
//! ```
//!
//! Parts: [`reference`] (REF parsing, keys), [`format`] (metadata and index, self-checking),
//! [`convert`] (with [`oci`] for image layers, [`registry`] for `docker://` sources, [`progress`]
//! for the terminal line), [`source`] (per-blob `BlockSource`), [`fs`] (logic, no fuser types),
//! [`fuse`] (adapter), [`session`] (load, replay, record, summary), [`run`] (what the binary
//! calls), [`error`] (one error type, one errno mapping).
//!
//! Sync/async bridge: fuser's threads `block_on` the runtime handle for each read (short work:
//! a few block lookups); replay and prefetch run as tokio tasks inside the cache.

pub mod convert;
pub mod error;
pub mod format;
pub mod fs;
pub mod fuse;
pub mod oci;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod run;
pub mod session;
pub mod source;

pub use error::ImageError;
pub use fs::ImageFs;
pub use fuse::ImageFuse;
pub use reference::ImageRef;
pub use session::{ImageSession, MountSummary, SessionConfig, TraceMode};
