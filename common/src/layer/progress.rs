//! Conversion progress: [`Progress`] counts what `convert` has done, [`ProgressLine`] draws it.
//!
//! ```text
//!  convert (build: layers, files, bytes; push: blobs, bytes) ──atomic adds──► Progress
//!  ProgressLine thread: every INTERVAL ─► snapshot ─► render ─► "\r<line>\x1b[K" on stderr
//!                       on finish/drop ─► one last line, then "\n"
//! ```
//!
//! The converter only adds to counters (relaxed atomics, no locks, no I/O), so counting costs the
//! same whether anything is drawn or not. Drawing happens on its own thread, never on a runtime
//! thread, at most once per [`INTERVAL`] and only when the line changed. The binary starts a
//! [`ProgressLine`] only when stderr is a terminal and `--json` is not given.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Time between redraws: 10 a second reads as live without costing anything measurable.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// What a conversion has done so far. Every field only grows.
#[derive(Debug, Default)]
pub struct Progress {
    /// Source layers in the image (0 for a plain directory).
    pub layers_total: AtomicU64,
    /// Layers applied.
    pub layers_done: AtomicU64,
    /// Layer bytes read or downloaded (compressed, as stored).
    pub layer_bytes: AtomicU64,
    /// Regular files converted.
    pub files: AtomicU64,
    /// File bytes converted (uncompressed).
    pub file_bytes: AtomicU64,
    /// Blobs to push (data blobs and the metadata blob); 0 until the push starts.
    pub blobs_total: AtomicU64,
    /// Blobs pushed.
    pub blobs_pushed: AtomicU64,
    /// Blob bytes pushed (as stored).
    pub pushed_bytes: AtomicU64,
}

/// A copy of [`Progress`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// See [`Progress::layers_total`].
    pub layers_total: u64,
    /// See [`Progress::layers_done`].
    pub layers_done: u64,
    /// See [`Progress::layer_bytes`].
    pub layer_bytes: u64,
    /// See [`Progress::files`].
    pub files: u64,
    /// See [`Progress::file_bytes`].
    pub file_bytes: u64,
    /// See [`Progress::blobs_total`].
    pub blobs_total: u64,
    /// See [`Progress::blobs_pushed`].
    pub blobs_pushed: u64,
    /// See [`Progress::pushed_bytes`].
    pub pushed_bytes: u64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Progress {
    /// A regular file of `bytes` was converted.
    pub fn file(&self, bytes: u64) {
        add(&self.files, 1);
        add(&self.file_bytes, bytes);
    }

    /// `n` more layer bytes arrived.
    pub fn layer_bytes(&self, n: u64) {
        add(&self.layer_bytes, n);
    }

    /// One layer was applied.
    pub fn layer_done(&self) {
        add(&self.layers_done, 1);
    }

    /// The image has `n` layers.
    pub fn set_layers(&self, n: u64) {
        self.layers_total.store(n, Ordering::Relaxed);
    }

    /// The push of `n` blobs starts.
    pub fn set_blobs(&self, n: u64) {
        self.blobs_total.store(n, Ordering::Relaxed);
    }

    /// One blob of `bytes` was pushed.
    pub fn blob_pushed(&self, bytes: u64) {
        add(&self.blobs_pushed, 1);
        add(&self.pushed_bytes, bytes);
    }

    /// The counters now. Each is read on its own; a line may mix two adjacent moments.
    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            layers_total: get(&self.layers_total),
            layers_done: get(&self.layers_done),
            layer_bytes: get(&self.layer_bytes),
            files: get(&self.files),
            file_bytes: get(&self.file_bytes),
            blobs_total: get(&self.blobs_total),
            blobs_pushed: get(&self.blobs_pushed),
            pushed_bytes: get(&self.pushed_bytes),
        }
    }
}

/// `1536` → `1.5 KiB`: binary units, one decimal, plain bytes below 1 KiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The progress line (no control characters): elapsed time, then the parts that have started.
pub fn render(s: &Snapshot, elapsed: Duration) -> String {
    let mut parts = vec![format!("{:.1}s", elapsed.as_secs_f64())];
    if s.layers_total > 0 {
        // The layer being applied is done + 1, until all are.
        let current = (s.layers_done + 1).min(s.layers_total);
        parts.push(format!(
            "layer {current}/{} ({} in)",
            s.layers_total,
            human_bytes(s.layer_bytes)
        ));
    }
    parts.push(format!("{} files ({})", s.files, human_bytes(s.file_bytes)));
    if s.blobs_total > 0 {
        parts.push(format!(
            "pushed {}/{} blobs ({})",
            s.blobs_pushed,
            s.blobs_total,
            human_bytes(s.pushed_bytes)
        ));
    }
    parts.join(" · ")
}

/// Lets a draw through at most once per interval.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
}

impl Throttle {
    /// A throttle that lets the first call through.
    pub fn new(interval: Duration) -> Self {
        Self { interval, last: None }
    }

    /// Whether a draw at `now` is allowed; if so, `now` becomes the last draw.
    pub fn ready(&mut self, now: Instant) -> bool {
        let ok = self.last.is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if ok {
            self.last = Some(now);
        }
        ok
    }
}

/// Draws a [`Progress`] in place on a terminal from its own thread until finished or dropped.
#[derive(Debug)]
pub struct ProgressLine {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ProgressLine {
    /// Starts drawing `progress` to `out` (stderr, in the binary).
    pub fn start(progress: Arc<Progress>, out: Box<dyn Write + Send>) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("convert-progress".into())
            .spawn(move || draw_loop(&progress, out, &rx))
            .ok();
        Self { stop: Some(tx), thread }
    }

    /// Draws the final state, ends the line and stops the thread.
    pub fn finish(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        // Dropping the sender wakes the thread at once.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn draw_loop(progress: &Progress, mut out: Box<dyn Write + Send>, stop: &mpsc::Receiver<()>) {
    let started = Instant::now();
    let mut throttle = Throttle::new(INTERVAL);
    let mut shown = None;
    loop {
        let last = !matches!(stop.recv_timeout(INTERVAL), Err(mpsc::RecvTimeoutError::Timeout));
        let snapshot = progress.snapshot();
        if last || (shown != Some(snapshot) && throttle.ready(Instant::now())) {
            let line = render(&snapshot, started.elapsed());
            // `\r` back to column 0, `ESC [K` clears what a longer earlier line left behind.
            let _ = write!(out, "\r{line}\x1b[K{}", if last { "\n" } else { "" });
            let _ = out.flush();
            shown = Some(snapshot);
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_print_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn lines_show_only_the_parts_that_started() {
        let mut s = Snapshot { files: 3, file_bytes: 2048, ..Snapshot::default() };
        assert_eq!(render(&s, Duration::from_millis(1250)), "1.2s · 3 files (2.0 KiB)");
        s.layers_total = 4;
        s.layers_done = 1;
        s.layer_bytes = 3 << 20;
        assert_eq!(
            render(&s, Duration::from_secs(2)),
            "2.0s · layer 2/4 (3.0 MiB in) · 3 files (2.0 KiB)"
        );
        s.layers_done = 4;
        s.blobs_total = 5;
        s.blobs_pushed = 2;
        s.pushed_bytes = 10;
        assert_eq!(
            render(&s, Duration::from_secs(3)),
            "3.0s · layer 4/4 (3.0 MiB in) · 3 files (2.0 KiB) · pushed 2/5 blobs (10 B)"
        );
    }

    #[test]
    fn the_throttle_lets_one_draw_through_per_interval() {
        let t0 = Instant::now();
        let mut t = Throttle::new(INTERVAL);
        let at = |ms| t0 + Duration::from_millis(ms);
        let allowed: Vec<u64> = (0..=1000).step_by(10).filter(|&ms| t.ready(at(ms))).collect();
        assert_eq!(allowed, (0..=1000).step_by(100).collect::<Vec<u64>>());
        // A clock that goes backwards (another thread's `now`) is not a reason to draw.
        assert!(!t.ready(at(500)));
    }

    #[test]
    fn the_line_redraws_in_place_at_most_ten_times_a_second_and_ends_with_the_totals() {
        let progress = Arc::new(Progress::default());
        let out = crate::test_writer::Shared::default();
        let started = Instant::now();
        let line = ProgressLine::start(progress.clone(), Box::new(out.clone()));
        for i in 0..60u64 {
            progress.file(1 + i);
            std::thread::sleep(Duration::from_millis(5));
        }
        line.finish();
        let elapsed = started.elapsed();
        let text = out.text();
        let draws = text.matches('\r').count() as u128;
        // One per interval that passed, plus the final one.
        assert!(draws >= 1 && draws <= elapsed.as_millis() / INTERVAL.as_millis() + 1, "{text:?}");
        assert!(text.ends_with("60 files (1.8 KiB)\x1b[K\n"), "{text:?}");
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
    }
}
