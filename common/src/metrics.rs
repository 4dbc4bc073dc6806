//! Every metric name bootseer emits, in one place (dot names, `metrics` facade).
//!
//! Binaries install a recorder (or none: `--metrics-addr` installs the Prometheus one, see
//! [`crate::mount::metrics`]); libraries only increment. Counters that a mount's JSON summary
//! reports are also kept in plain atomics by the component that owns them, so a summary never
//! depends on which recorder is installed. Each name, with its dots made underscores, is a valid
//! Prometheus name (`[a-z_][a-z0-9_]*`); [`describe`] gives each one its help text and unit.
//!
//! The per-read histogram and byte counters ([`read_served`]) keep their handles in a
//! `OnceLock`, taken at the first read: a read then costs an atomic load and the recorder's own
//! lock-free update, no registry lookup. So the recorder must be installed before the first read
//! (`mount::run_daemon` installs it before the filesystem exists).

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{Counter, Histogram, Unit, describe_counter, describe_histogram};

/// Store operations that failed after their last attempt (label `op`).
pub const STORE_ERRORS: &str = "store.errors";
/// Store attempts that were retried (label `op`).
pub const STORE_RETRIES: &str = "store.retries";
/// Bytes returned by store range reads.
pub const STORE_READ_BYTES: &str = "store.read.bytes";
/// Block lookups answered from the memory tier.
pub const CACHE_HIT_MEMORY: &str = "cache.hit.memory";
/// Block lookups answered from the disk tier.
pub const CACHE_HIT_DISK: &str = "cache.hit.disk";
/// Block lookups that had to fetch (label `priority`).
pub const CACHE_MISS: &str = "cache.miss";
/// Bytes fetched from a store into the cache (label `priority`).
pub const FETCH_BYTES: &str = "fetch.bytes";
/// Blocks that failed verification against their digest (label `tier`).
pub const CACHE_CORRUPT: &str = "cache.corrupt";
/// Blocks evicted from the memory tier.
pub const CACHE_EVICT_MEMORY: &str = "cache.evict.memory";
/// Blocks evicted from the disk tier.
pub const CACHE_EVICT_DISK: &str = "cache.evict.disk";
/// Blocks not written to the disk tier: its writer's queue was full, or the disk stayed full.
pub const CACHE_DISK_DROPPED: &str = "cache.disk.dropped";
/// Trace records dropped because the writer's channel was full.
pub const TRACE_DROPPED: &str = "trace.dropped";
/// Log lines lost (label `reason`: `queue_full`, `rate_limited`, `journal`; see
/// [`crate::telemetry::Dropped`]).
pub const LOG_DROPPED: &str = "log.dropped";
/// FUSE operations that returned an error (labels `op`, `errno`).
pub const FUSE_ERRORS: &str = "fuse.errors";
/// Latency of FUSE reads, in seconds, from the request to the reply (label `origin`).
pub const FUSE_READ_LATENCY: &str = "fuse.read.latency";
/// Bytes answered to FUSE reads (label `origin`).
pub const FUSE_READ_BYTES: &str = "fuse.read.bytes";

/// Every name above with its kind, unit and help text: what [`describe`] registers and what a
/// test checks the exporter's output against.
pub const ALL: &[(&str, Kind, Unit, &str)] = &[
    (STORE_ERRORS, Kind::Counter, Unit::Count, "Store operations failed after the last attempt"),
    (STORE_RETRIES, Kind::Counter, Unit::Count, "Store attempts retried"),
    (STORE_READ_BYTES, Kind::Counter, Unit::Bytes, "Bytes returned by store range reads"),
    (CACHE_HIT_MEMORY, Kind::Counter, Unit::Count, "Block lookups answered from memory"),
    (CACHE_HIT_DISK, Kind::Counter, Unit::Count, "Block lookups answered from the disk tier"),
    (CACHE_MISS, Kind::Counter, Unit::Count, "Block lookups that had to fetch"),
    (FETCH_BYTES, Kind::Counter, Unit::Bytes, "Bytes fetched from a store into the cache"),
    (CACHE_CORRUPT, Kind::Counter, Unit::Count, "Blocks that failed digest verification"),
    (CACHE_EVICT_MEMORY, Kind::Counter, Unit::Count, "Blocks evicted from memory"),
    (CACHE_EVICT_DISK, Kind::Counter, Unit::Count, "Blocks evicted from the disk tier"),
    (CACHE_DISK_DROPPED, Kind::Counter, Unit::Count, "Blocks not written to the disk tier"),
    (TRACE_DROPPED, Kind::Counter, Unit::Count, "Trace records dropped (writer behind)"),
    (LOG_DROPPED, Kind::Counter, Unit::Count, "Log lines lost by reason"),
    (FUSE_ERRORS, Kind::Counter, Unit::Count, "FUSE operations answered with an error"),
    (FUSE_READ_LATENCY, Kind::Histogram, Unit::Seconds, "FUSE read latency by origin"),
    (FUSE_READ_BYTES, Kind::Counter, Unit::Bytes, "Bytes answered to FUSE reads by origin"),
];

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A distribution of observations.
    Histogram,
}

/// Registers the help text and unit of every name in [`ALL`] with the installed recorder.
pub fn describe() {
    for &(name, kind, unit, help) in ALL {
        match kind {
            Kind::Counter => describe_counter!(name, unit, help),
            Kind::Histogram => describe_histogram!(name, unit, help),
        }
    }
}

/// Where a FUSE read's bytes came from (label `origin`): the slowest source any part of it
/// needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReadOrigin {
    /// Everything was in the memory tier (or held stripes).
    Memory,
    /// Some of it was read from the disk tier, none fetched.
    Disk,
    /// Some of it waited on a store fetch.
    Demand,
}

impl ReadOrigin {
    /// Every origin, in label order.
    pub const ALL: [ReadOrigin; 3] = [ReadOrigin::Memory, ReadOrigin::Disk, ReadOrigin::Demand];

    /// The `origin` label value.
    pub fn label(self) -> &'static str {
        match self {
            ReadOrigin::Memory => "memory",
            ReadOrigin::Disk => "disk",
            ReadOrigin::Demand => "demand",
        }
    }
}

struct ReadHandles {
    latency: [Histogram; 3],
    bytes: [Counter; 3],
}

static READ_HANDLES: OnceLock<ReadHandles> = OnceLock::new();

/// Records one answered FUSE read: its latency (request to reply) and, when it succeeded, the
/// bytes it answered, both under `origin`.
pub fn read_served(origin: ReadOrigin, latency: Duration, bytes: Option<usize>) {
    let h = READ_HANDLES.get_or_init(|| ReadHandles {
        latency: ReadOrigin::ALL
            .map(|o| ::metrics::histogram!(FUSE_READ_LATENCY, "origin" => o.label())),
        bytes: ReadOrigin::ALL.map(|o| ::metrics::counter!(FUSE_READ_BYTES, "origin" => o.label())),
    });
    let i = origin as usize;
    h.latency[i].record(latency.as_secs_f64());
    if let Some(n) = bytes {
        h.bytes[i].increment(n as u64);
    }
}

/// The symbolic name of `errno` (the `errno` label of [`FUSE_ERRORS`]): the errors a bootseer
/// mount answers with, `other` for the rest (a label must stay a small set).
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EIO => "EIO",
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EINVAL => "EINVAL",
        libc::ENOTSUP => "ENOTSUP",
        libc::ENOSYS => "ENOSYS",
        libc::EISDIR => "EISDIR",
        libc::ENOTDIR => "ENOTDIR",
        libc::EBADF => "EBADF",
        libc::ENODATA => "ENODATA",
        libc::ERANGE => "ERANGE",
        libc::EROFS => "EROFS",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::ENOSPC => "ENOSPC",
        libc::ESTALE => "ESTALE",
        libc::EFBIG => "EFBIG",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_a_prometheus_name_once_dots_are_underscores() {
        let mut seen = std::collections::HashSet::new();
        for &(name, ..) in ALL {
            let prom = name.replace('.', "_");
            let mut chars = prom.chars();
            assert!(chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_'), "{name}");
            assert!(chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
            assert!(seen.insert(prom), "{name} collides with another name");
        }
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::EIO), "EIO");
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(12345), "other");
    }
}
