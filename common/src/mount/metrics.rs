//! `--metrics-addr HOST:PORT` (`-o metrics_addr=…`): a Prometheus scrape endpoint in the daemon.
//!
//! ```text
//!  run_daemon (after the fork, signals blocked) ─► install(addr)
//!     ─► PrometheusBuilder: recorder set as the `metrics` global, HTTP listener bound now
//!        (a port in use fails the mount, told to the waiting parent)
//!     ─► thread `metrics-exporter-prometheus-http-listener`: its own current-thread runtime
//!        answers GET /metrics; upkeep drains the histograms
//!  every `metrics::counter!`/`histogram!` in the crates ─► the recorder ─► text format, dots
//!  made underscores (`cache.miss` ─► `cache_miss`)
//! ```
//!
//! Installed before the filesystem exists, so the read handles of
//! [`crate::metrics::read_served`] bind to it, and on its own thread, so a busy runtime never
//! holds up a scrape. The latency histogram gets explicit buckets (rendered as a Prometheus
//! histogram with `_bucket`/`_sum`/`_count`, not a summary) spanning a page-cache-speed answer
//! to a stalled fetch.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Bucket bounds of `fuse_read_latency`, in seconds: 10 µs (a memory hit) to 10 s (a store
/// fetch retried through a stall).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the Prometheus recorder as the global one and starts its HTTP listener on `addr`,
/// on a thread of its own. Call once, in the daemon (after any fork), before the filesystem is
/// built. Errors: the address cannot be bound, or a recorder is already installed.
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full(crate::metrics::FUSE_READ_LATENCY.replace('.', "_")),
            LATENCY_BUCKETS,
        )?
        .install()
        .map_err(|e| anyhow::anyhow!("metrics endpoint on {addr}: {e}"))?;
    crate::metrics::describe();
    // Logging started before the recorder existed.
    crate::telemetry::publish_dropped();
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(())
}
