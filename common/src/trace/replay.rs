//! [`replay()`]: issues a [`ReplayPlan`] through a [`Prefetcher`] with a bounded window.
//!
//! ```text
//!  plan.requests() ──► up to `window` prefetch futures in flight (FuturesUnordered, one task)
//!                         └─ one completes (ok or error, counted) ─► the next request starts
//!  stop future resolves, or the replay future is dropped ─► in-flight futures are dropped
//! ```
//!
//! The replayer does not prioritise: it only keeps order and the window. The cache behind
//! [`Prefetcher`] runs these at replay priority, below on-demand reads. All requests run inside
//! the one future `replay` returns (nothing is spawned), so dropping it cancels everything.

use std::future::Future;
use std::ops::Range;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::ReplayPlan;

/// Why one prefetch failed; any error type converts into it with `?` or `.into()`.
pub type PrefetchError = Box<dyn std::error::Error + Send + Sync>;

/// What replay needs from the cache.
#[async_trait]
pub trait Prefetcher: Send + Sync {
    /// Brings `blocks` of blob `blob` into the cache at replay priority. Returns once they are
    /// cached (or were already), or with an error; replay counts the error and moves on, it
    /// never retries. Must not hold up on-demand reads. Dropping the future abandons the request.
    async fn prefetch(&self, blob: &str, blocks: Range<u64>) -> Result<(), PrefetchError>;
}

/// How replay runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Most requests in flight at once (at least 1).
    pub window: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        // 8 requests of 8 MiB keep 64 MiB in flight: enough to fill a fast link, few enough to
        // leave fetch slots and memory for on-demand reads on 2-core hosts.
        Self { window: 8 }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Requests that completed, successfully or not.
    pub requests: u64,
    /// Blocks in requests that succeeded.
    pub blocks: u64,
    /// Requests that failed.
    pub failures: u64,
    /// Blocks in requests that failed.
    pub failed_blocks: u64,
    /// Most requests that were in flight at once.
    pub max_in_flight: usize,
    /// Whether `stop` ended the replay before every request completed.
    pub stopped: bool,
    /// Time from start to end.
    pub elapsed: Duration,
}

/// Issues `plan`'s requests in order through `prefetcher`, at most `options.window` at a time,
/// counting and skipping failures, until all are done or `stop` resolves (pass
/// `std::future::pending()` to run to the end). Requests still in flight when `stop` resolves
/// are dropped and not counted.
pub async fn replay(
    plan: &ReplayPlan,
    prefetcher: &dyn Prefetcher,
    options: &ReplayOptions,
    stop: impl Future<Output = ()> + Send,
) -> ReplayStats {
    let started = Instant::now();
    let window = options.window.max(1);
    let mut stats = ReplayStats::default();
    let mut stop = std::pin::pin!(stop);
    let mut pending = plan.requests().iter();
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < window {
            let Some(req) = pending.next() else { break };
            let Some(blob) = plan.blob_id(req.blob) else {
                // A plan only refers to its own blobs; count rather than trust it.
                stats.requests += 1;
                stats.failures += 1;
                stats.failed_blocks += req.blocks.end - req.blocks.start;
                continue;
            };
            let blocks = req.blocks.clone();
            in_flight.push(async move {
                let n = blocks.end - blocks.start;
                (blob, blocks.clone(), n, prefetcher.prefetch(blob, blocks).await)
            });
            stats.max_in_flight = stats.max_in_flight.max(in_flight.len());
        }
        if in_flight.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            () = &mut stop => {
                stats.stopped = true;
                break;
            }
            Some((blob, blocks, n, result)) = in_flight.next() => {
                stats.requests += 1;
                match result {
                    Ok(()) => stats.blocks += n,
                    Err(e) => {
                        stats.failures += 1;
                        stats.failed_blocks += n;
                        tracing::debug!(blob, ?blocks, error = %e, "replay prefetch failed");
                    }
                }
            }
        }
    }
    stats.elapsed = started.elapsed();
    if stats.failures > 0 {
        tracing::info!(
            failures = stats.failures,
            requests = stats.requests,
            "trace replay had failures"
        );
    }
    stats
}
