//! What bootseer's three filesystems (`fs-image`, `fs-deps`, `fs-ckpt`) stand on.
//!
//! Data flows in one direction, and each part only knows the one below it:
//!
//! ```text
//!   FUSE adapter (per filesystem) ──► filesystem logic ──► cache::BlockCache ──► store::Store
//!                                          │                     ▲
//!                                          └─► trace::Recorder   └── trace::ReplayPlan (prefetch)
//! ```
//!
//! - [`store`]: one narrow async trait for immutable, addressable bytes, with a local directory,
//!   an OCI registry and HDFS behind it, and one wrapper that owns timeouts and retries.
//! - [`cache`]: fixed-size blocks keyed by (blob, index); memory tier over a persistent disk tier,
//!   single-flight misses, priorities (on-demand > replay > background), digest verification.
//! - [`trace`]: the first access of each block after a mount, recorded off the request path, and
//!   the replay planner that turns a stored trace into coalesced prefetch requests.
//! - [`layer`]: the block format images and dependency snapshots share, built from a directory
//!   and mounted lazily (read-only tree, FUSE adapter, record/replay session).
//! - [`report`]: where the time of a job start went, from many nodes' summaries.
//! - [`timeline`]: the wall-clock phases of a start (mount called, ready, first read, replay done,
//!   last stall, unmount) every summary carries, so that summaries from many nodes line up.
//! - [`telemetry`], [`metrics`], [`errno`], [`mount`], [`units`]: logging, counter names, one
//!   error-to-errno mapping, the fuser mount plumbing and the option parsers every binary shares.
//! - [`testing`] (feature `test-support`): in-memory store doubles and the guards that start the
//!   real components tests run against (MiniDFS, docker-registry, FUSE mounts).

pub mod cache;
pub mod digest;
pub mod errno;
pub mod layer;
pub mod metrics;
pub mod mount;
pub mod report;
pub mod store;
pub mod telemetry;
pub mod timeline;
pub mod trace;
pub mod units;

#[cfg(feature = "test-support")]
pub mod testing;

/// A writer unit tests can read back (what a progress line or a log wrote).
#[cfg(test)]
pub(crate) mod test_writer {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub(crate) struct Shared(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl Shared {
        /// Everything written so far, as text.
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf8")
        }
    }

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Shared {
        type Writer = Shared;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }
}
