//! bootseer-ckpt: a read-only FUSE view of an HDFS directory whose files are read by many
//! concurrent striped range reads, so a checkpoint loads at the speed of several DataNodes
//! instead of one stream.
//!
//! ```text
//!   fuse::CkptFuse (fuser callbacks) ──► fs::CkptFs (listings, handles, windows)
//!        │  answered on the FUSE thread: what the mount knows (listing, memory)
//!        │  answered from a task: what waits on HDFS (a read's misses, opens)
//!        └── BlockCache (memory budget, single-flight, prefetch queue)
//!               └── stripe::StripeSource (pinned version, N readers, per-stripe retries)
//!                      └── HdfsStore / HdfsReader (hdfs-native)
//! ```
//!
//! - [`config`]: [`CkptConfig`] and the size/duration parsers of the CLI.
//! - [`stripe`]: stripe planning (never across an HDFS block) and fetching with deadlines.
//! - [`fs`]: [`CkptFs`], the logic layer, without fuser types.
//! - [`fuse`]: [`CkptFuse`], the adapter.
//! - [`warm`]: prefetch at mount (`--prefetch GLOB`), safetensors header and tensor order, and
//!   the key-order run of a handle ([`warm::KeyRun`]) that queues the next tensors by name.
//! - [`cli`]: the `bootseer-ckpt` command line; `main` only calls [`run`].
//!
//! **Sync/async bridge**: one multi-threaded tokio runtime per mount owns the HDFS client (its
//! connection tasks live on the runtime that created it), the cache's fetch and prefetch tasks,
//! and every stripe read. fuser's worker threads are plain threads and never `block_on`: each
//! callback answers from what the mount holds ([`CkptFs::read_now`], [`CkptFs::lookup_now`]
//! and the other `*_now` calls, which take only short leaf locks), or hands its reply to a task
//! on the runtime that answers when HDFS has ([`CkptFs::read_pending`], [`CkptFs::open`]).
//! Those tasks are bounded (see [`fuse`]); nothing calls `block_on` from a runtime thread.

pub mod cli;
pub mod config;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod stripe;
pub mod warm;

pub use cli::run;
pub use config::CkptConfig;
pub use error::CkptError;
pub use fs::CkptFs;
pub use fuse::CkptFuse;
