//! Test support (feature `test-support`): store doubles for fast unit tests, and guards that start
//! the real components tests must also run against.
//!
//! - [`mem`]: `MemStore` (deterministic, counts operations), `FailingStore` (injects failures and
//!   stalls), `ThrottledStore` (bandwidth limit).
//! - [`minidfs`]: a real HDFS (Hadoop MiniDFSCluster) started from `scripts/minidfs/`.
//! - [`registry`]: a real OCI registry (Debian `docker-registry`) on 127.0.0.1.
//! - [`fuse`]: a FUSE mount guard that unmounts and joins on drop.
//! - [`fuzz`]: a deterministic mutation fuzzer for the decoders of untrusted input.
//! - [`netns`]: a private network namespace whose loopback `tc` can shape or stall per port.
//! - [`prom`]: a Prometheus scrape (`GET /metrics`) parsed into samples, for `--metrics-addr`.
//!
//! Real-component guards return an error when their component cannot start. Tests pass that to
//! [`require_real`], which skips the test, or fails it when `BOOTSEER_REQUIRE_REAL=1` (as in CI).

pub mod fuse;
pub mod fuzz;
pub mod mem;
pub mod minidfs;
pub mod netns;
pub mod prom;
pub mod registry;

/// Set to `1` to make a real-component test fail, not skip, when its component cannot run.
pub const REQUIRE_REAL_ENV: &str = "BOOTSEER_REQUIRE_REAL";

/// Unwraps a started real component. On error: panics if `BOOTSEER_REQUIRE_REAL=1`, else prints
/// why and returns `None` so the test can return early.
pub fn require_real<T>(component: &str, started: anyhow::Result<T>) -> Option<T> {
    match started {
        Ok(value) => Some(value),
        Err(err) => {
            if std::env::var(REQUIRE_REAL_ENV).is_ok_and(|v| v == "1") {
                panic!(
                    "{component} is required ({REQUIRE_REAL_ENV}=1) but could not start: {err:#}"
                );
            }
            eprintln!("SKIPPED: {component} could not start: {err:#}");
            None
        }
    }
}
