//! Every metric name bootseer emits, in one place (dot names, `metrics` facade).
//!
//! Binaries install a recorder (or none); libraries only increment. Counters that a mount's JSON
//! summary reports are also kept in plain atomics by the component that owns them, so a summary
//! never depends on which recorder is installed.

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
/// FUSE operations that returned an error (label `op`).
pub const FUSE_ERRORS: &str = "fuse.errors";
/// Latency of FUSE reads, in seconds.
pub const FUSE_READ_LATENCY: &str = "fuse.read.latency";
