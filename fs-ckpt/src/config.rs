//! [`CkptConfig`]: every knob of a checkpoint mount, plain data with defaults, plus the parsers
//! for the human forms the CLI and `-o` options accept (`8M`, `1GiB`, `30s`, `500ms`).

use std::time::Duration;

/// How a checkpoint mount reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CkptConfig {
    /// Bytes per stripe: the most one prefetch range read asks for; never across an HDFS block.
    pub stripe_size: u64,
    /// Bytes per chunk, the unit the mount caches and the alignment of a read that misses: it
    /// fetches the chunks it touches, no more (at most `stripe_size`).
    pub chunk_size: u64,
    /// Stripe fetches in flight at once, per fetch call and for the prefetch workers.
    pub concurrency: usize,
    /// Independently opened HDFS readers per file version (the NameNode shuffles replicas per
    /// open, so more readers spread stripes over more DataNodes).
    pub readers: usize,
    /// The mount's one memory budget for file data, in bytes: a quarter (at least a stripe)
    /// for range reads in flight, hedges and chunk copies included; the rest for cached chunks.
    pub memory_bytes: u64,
    /// No longer used: prefetch follows each handle's sequential run (`sequential_after`), for
    /// files of every size. Kept so existing `--prefetch-threshold` options still parse.
    pub prefetch_threshold: u64,
    /// Stripes a sequential reader prefetches ahead at first; the window then grows with the
    /// run (as far ahead as the run is long), up to the handle's share of half the budget.
    pub initial_window: u64,
    /// Bytes a handle must read in order before the mount prefetches ahead of it, so random
    /// readers of smaller pieces (tensors picked from a shard) fetch only what they read.
    pub sequential_after: u64,
    /// How long a read waits, retries included, while no DataNode sends the mount anything,
    /// before it fails with EIO (and never longer than 4 × this, however busy the mount).
    pub stripe_deadline: Duration,
    /// How long one attempt of a stripe may go without receiving bytes before it is re-issued
    /// on a fresh reader.
    pub attempt_timeout: Duration,
    /// The least time an attempt waits for a reply before a hedge read on a fresh reader
    /// (another replica) joins it; the mount uses 4 × its average stripe time when longer.
    pub hedge_after: Duration,
    /// How long listings and a handle's version check are trusted (also the kernel's entry TTL).
    pub metadata_ttl: Duration,
    /// How long the mount waits for the NameNode when it starts, and the bound of every later
    /// NameNode call (listing, stat, reader open, version check).
    pub connect_timeout: Duration,
    /// Files to start fetching as soon as the mount is up (globs over paths in the mount, see
    /// [`crate::warm`]), within one reader's window of the budget: what a job start will read
    /// crosses the network while the job still imports its packages.
    pub prefetch: Vec<String>,
    /// Read a `.safetensors` file's header when it is opened, and prefetch the next tensors
    /// by name for a handle that reads them in name order (see [`crate::warm::KeyRun`]).
    pub key_order: bool,
}

impl Default for CkptConfig {
    fn default() -> Self {
        Self {
            // DESIGN: 8 MiB stripes; large enough that per-request overhead is small, and 16 of
            // them divide a 128 MiB HDFS block.
            stripe_size: 8 << 20,
            // 64 KiB: a random 1 MiB read at any offset fetches at most 1.125 MiB (1.06 on
            // average), and one chunk is still a few thousand times one RPC's overhead in bytes.
            chunk_size: 64 << 10,
            // 16 × 8 MiB in flight keeps several DataNodes busy at 10 Gbit/s each.
            concurrency: 16,
            // Four opens give four independent replica shuffles at the cost of four RPCs.
            readers: 4,
            // 1 GiB: 128 stripes, room for a deep window without daemons growing into GBs.
            memory_bytes: 1 << 30,
            // Files of 64 MiB and more are checkpoint shards that loaders read start to end.
            prefetch_threshold: 64 << 20,
            // Two stripes ahead costs little for a reader that stops early.
            initial_window: 2,
            // Four 1 MiB tensors in a row: more than random readers read at one place.
            sequential_after: 4 << 20,
            // Half a minute rides out a DataNode restart; a FUSE reader must not wait longer.
            stripe_deadline: Duration::from_secs(30),
            // A DataNode sends a packet (64 KiB) every few ms; 10 s without one means a
            // stalled DataNode, and leaves the deadline room for two more attempts.
            attempt_timeout: Duration::from_secs(10),
            // HDFS's own hedged reads default to 500 ms; a stripe is 8 MiB, not one packet.
            hedge_after: Duration::from_secs(1),
            // Checkpoint directories change when a new checkpoint lands, not second by second.
            metadata_ttl: Duration::from_secs(5),
            // A NameNode answers an RPC in milliseconds; 10 s is one failing over or gone, and
            // a mount or `ls` should say so rather than hang.
            connect_timeout: Duration::from_secs(10),
            // Nothing unless asked: which files a job reads first is the operator's knowledge.
            prefetch: Vec::new(),
            // Loaders read tensors by name; knowing the header costs nothing they do not read.
            key_order: true,
        }
    }
}

impl CkptConfig {
    /// The part of the memory budget range reads in flight may hold (see `memory_bytes`).
    pub fn inflight_bytes(&self) -> u64 {
        (self.memory_bytes / 4).max(self.stripe_size).min(self.memory_bytes / 2).max(1 << 20)
    }

    /// The part of the memory budget cached chunks may hold.
    pub fn cache_bytes(&self) -> u64 {
        self.memory_bytes.saturating_sub(self.inflight_bytes())
    }

    /// The chunk size as used: at least 1, at most a stripe.
    pub fn chunk(&self) -> u64 {
        self.chunk_size.clamp(1, self.stripe_size.max(1))
    }

    /// Stripes the prefetch window may reach ahead of a reader: half the cache's budget, so
    /// prefetched stripes do not evict the ones being read.
    pub fn max_window(&self) -> u64 {
        (self.cache_bytes() / 2 / self.stripe_size.max(1)).max(1)
    }
}

pub use bootseer_common::units::{parse_duration, parse_size};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_window_is_half_the_budget() {
        let c = CkptConfig::default();
        assert_eq!((c.inflight_bytes(), c.cache_bytes()), (256 << 20, 768 << 20));
        assert_eq!(c.max_window(), 48);
        let small = CkptConfig { memory_bytes: 32 << 20, ..c };
        assert_eq!((small.inflight_bytes(), small.cache_bytes()), (8 << 20, 24 << 20));
    }
}
