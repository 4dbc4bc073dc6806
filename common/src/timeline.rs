//! The wall-clock phases of one daemon's start, for summaries from many nodes to line up.
//!
//! ```text
//!  mount_called ─► ready ─► first_read ─► … ─► replay_done ─► last_stall ─► unmount
//!  (mark: first time wins)                        (mark_last: latest wins)
//!  summary JSON: "timeline": { "host", "kind", "source", "events": [{phase, unix_ms}, …] }
//! ```
//!
//! One daemon process serves one mount, so the timeline is process-wide ([`global`]): the mount
//! lifecycle marks `mount_called`, `ready` and `unmount`; the filesystem logic marks reads
//! (`first_read`, and `last_stall` for a read that had to wait for the network, whose wait also
//! adds to `stalled_ms`: wall-clock time with a read waiting, overlapping reads counted once);
//! the session marks `replay_done`. Marking is a short mutex and a `SystemTime::now()`: cheap next to a
//! FUSE round trip, and done once per phase except `last_stall` (once per slow read).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// `mount` was called (the process started its mount).
pub const MOUNT_CALLED: &str = "mount_called";
/// The mount answers (the waiting parent was told).
pub const READY: &str = "ready";
/// The first read of file data.
pub const FIRST_READ: &str = "first_read";
/// The stored trace has been replayed.
pub const REPLAY_DONE: &str = "replay_done";
/// The end of the latest read that waited on the network.
pub const LAST_STALL: &str = "last_stall";
/// The mount went away.
pub const UNMOUNT: &str = "unmount";
/// Phases in the order a start goes through them.
pub const PHASES: &[&str] = &[MOUNT_CALLED, READY, FIRST_READ, REPLAY_DONE, LAST_STALL, UNMOUNT];

/// A read slower than this waited on something other than memory (a fetch, a disk-cache read
/// behind one): cached reads answer in microseconds.
pub const STALL: Duration = Duration::from_millis(2);

/// One phase and when it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// One of [`PHASES`] (or a filesystem's own).
    pub phase: String,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: f64,
}

/// The timeline of one daemon, as its summary carries it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// The host the daemon ran on.
    pub host: String,
    /// What it serves: `image`, `deps`, `ckpt`.
    pub kind: String,
    /// What it mounted (a reference or URL).
    pub source: String,
    /// Phases in the order they happened.
    pub events: Vec<Event>,
    /// Wall-clock milliseconds during which at least one read of file data waited longer than
    /// [`STALL`] (reads waiting at the same time count once): what the job waited on this
    /// mount after it was ready. 0 in summaries written before it existed.
    #[serde(default)]
    pub stalled_ms: f64,
}

impl Timeline {
    /// When `phase` happened, if it did.
    pub fn at(&self, phase: &str) -> Option<f64> {
        self.events.iter().find(|e| e.phase == phase).map(|e| e.unix_ms)
    }
}

/// The process's timeline, and the end of the stall time already counted in `stalled_ms`.
struct State {
    timeline: Timeline,
    counted_until_ms: f64,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let timeline = Timeline { host: hostname(), ..Timeline::default() };
        Mutex::new(State { timeline, counted_until_ms: 0.0 })
    })
}

/// This host's name (from the kernel), `unknown` if unreadable.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1e3
}

/// Names what this process serves; call once at mount.
pub fn describe(kind: &str, source: &str) {
    if let Ok(mut s) = state().lock() {
        let t = &mut s.timeline;
        t.kind = kind.to_string();
        t.source = source.to_string();
    }
}

/// Records `phase` now, unless it was recorded before (the first time wins).
pub fn mark(phase: &str) {
    let at = now_ms();
    if let Ok(mut s) = state().lock()
        && s.timeline.at(phase).is_none()
    {
        s.timeline.events.push(Event { phase: phase.to_string(), unix_ms: at });
    }
}

/// Records `phase` now, replacing an earlier record (the latest wins).
pub fn mark_last(phase: &str) {
    let at = now_ms();
    if let Ok(mut s) = state().lock() {
        last(&mut s.timeline, phase, at);
    }
}

fn last(t: &mut Timeline, phase: &str, at: f64) {
    t.events.retain(|e| e.phase != phase);
    t.events.push(Event { phase: phase.to_string(), unix_ms: at });
}

/// Marks [`FIRST_READ`] and, when the read took longer than [`STALL`], [`LAST_STALL`]: call
/// when a read of file data is answered, with how long it took.
pub fn read_done(took: Duration) {
    // Every FUSE read calls this: after the first, a fast read costs one relaxed load, no lock.
    static FIRST_READ_SEEN: AtomicBool = AtomicBool::new(false);
    if !FIRST_READ_SEEN.load(Ordering::Relaxed) && !FIRST_READ_SEEN.swap(true, Ordering::Relaxed) {
        mark(FIRST_READ);
    }
    if took >= STALL {
        let end = now_ms();
        let start = end - took.as_secs_f64() * 1e3;
        if let Ok(mut s) = state().lock() {
            // Reads end in about the order they are answered: each adds the part of its wait
            // that no read answered before it covered (a gap between two earlier waits that
            // a later long one spans is missed, so this errs low).
            let from = start.max(s.counted_until_ms);
            s.timeline.stalled_ms += (end - from).max(0.0);
            s.counted_until_ms = s.counted_until_ms.max(end);
            last(&mut s.timeline, LAST_STALL, end);
        }
    }
}

/// The timeline so far, events in time order.
pub fn global() -> Timeline {
    let mut t = state().lock().map(|s| s.timeline.clone()).unwrap_or_default();
    t.events.sort_by(|a, b| a.unix_ms.total_cmp(&b.unix_ms));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_mark_wins_and_last_stall_moves() {
        describe("image", "file:///s/a:v1");
        mark(MOUNT_CALLED);
        mark(READY);
        let ready = global().at(READY).expect("ready");
        mark(READY);
        assert_eq!(global().at(READY), Some(ready), "a second mark moved READY");
        read_done(Duration::from_micros(10));
        assert!(global().at(FIRST_READ).is_some());
        assert!(global().at(LAST_STALL).is_none(), "a fast read counted as a stall");
        read_done(Duration::from_millis(50));
        let first = global().at(LAST_STALL).expect("stall");
        std::thread::sleep(Duration::from_millis(5));
        read_done(Duration::from_millis(50));
        assert!(global().at(LAST_STALL).expect("stall") > first, "the latest stall did not win");
        // Two 50 ms waits 5+ ms apart overlap by at most 45 ms: 55–100 ms of wall time.
        let stalled = global().stalled_ms;
        assert!((55.0..=100.0).contains(&stalled), "stalled {stalled} ms");
        read_done(Duration::from_millis(1));
        assert_eq!(global().stalled_ms, stalled, "a fast read added stall time");
        let t = global();
        assert_eq!((t.kind.as_str(), t.host.is_empty()), ("image", false));
        assert!(t.events.windows(2).all(|w| w[0].unix_ms <= w[1].unix_ms));
    }
}
