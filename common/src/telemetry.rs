//! Logging for every binary: one `tracing` subscriber filtered by `BOOTSEER_LOG`, `log` records
//! (fuser logs through `log`) bridged into it, and a panic hook that logs before unwinding.
//!
//! ```text
//!  any thread ─► event ─► filter ─► RateLimited (warn/error: BURST per call site per WINDOW)
//!                                     │
//!              [init]        stderr ◄─┤ (the calling thread writes)
//!              [init_daemon] queue ◄──┘ ─► "bootseer-log" thread ─► stderr (file, journal, pipe)
//! ```
//!
//! - A mount daemon ([`init_daemon`]) never writes a line on the thread that logged it: FUSE
//!   workers and runtime threads hand lines to a bounded queue, and one thread writes them. A
//!   stderr that blocks (a pipe nobody reads, a journal that fell behind, a log file on a
//!   stalled disk) then costs log lines, never a read; the lines dropped are counted and said
//!   at [`flush`]. Call [`flush`] before the daemon exits, or the last lines may be lost.
//! - Warnings and errors are rate-limited per call site: a store that went away makes every
//!   read fail the same way, and thousands of identical lines would bury the first one (and
//!   fill the disk). After [`BURST`] lines from one site within [`WINDOW`], the rest are
//!   counted, and the site's next line after the window says how many were left out. `info`
//!   and below are not limited (`BOOTSEER_LOG=debug` asks for every line).
//! - stderr is where the daemon's log goes: the `--log` file, the journal when systemd started
//!   the process (its `JOURNAL_STREAM`, see [`crate::mount::daemonize`]), or the terminal in the
//!   foreground.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The environment variable that holds the log filter (`info`, `bootseer_common=debug`, …).
pub const LOG_ENV: &str = "BOOTSEER_LOG";

/// Warnings and errors one call site may write within [`WINDOW`] before the rest are counted.
pub const BURST: u32 = 10;

/// The window of [`BURST`].
pub const WINDOW: Duration = Duration::from_secs(10);

/// Lines a daemon's log queue holds before new ones are dropped (and counted).
const QUEUE_LINES: usize = 16_384;

/// The daemon's log writer thread: its guard (dropped by [`flush`] to drain the queue) and its
/// count of dropped lines.
static WRITER: Mutex<Option<(tracing_appender::non_blocking::WorkerGuard, DroppedLines)>> =
    Mutex::new(None);

type DroppedLines = tracing_appender::non_blocking::ErrorCounter;

/// Installs logging once per process, writing on the calling thread (for commands that are not
/// mount daemons); later calls do nothing. Logs go to stderr.
pub fn init(default_filter: &str) {
    install(default_filter, false);
}

/// Installs logging once per process for a mount daemon: lines go to stderr through the log
/// writer thread, so no thread that serves reads waits on it. Call after forking (the thread
/// does not survive a fork) and [`flush`] before exiting.
pub fn init_daemon(default_filter: &str) {
    install(default_filter, true);
}

/// Drains the daemon's log queue (waits for its writer thread to write what is queued) and says
/// how many lines were dropped, if any. Later lines are lost; call it last.
pub fn flush() {
    let writer = WRITER.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((guard, dropped)) = writer {
        drop(guard);
        let n = dropped.dropped_lines();
        if n > 0 {
            let _ = writeln!(
                std::io::stderr(),
                "bootseer: {n} log lines dropped: the log writer fell behind"
            );
        }
    }
}

fn install(default_filter: &str, queued: bool) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter =
            EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default_filter));
        let _ = tracing_log::LogTracer::init();
        // Colours only on a terminal: a daemon's log file or journald gets plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let builder =
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_target(true);
        if queued {
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(true)
                .buffered_lines_limit(QUEUE_LINES)
                .thread_name("bootseer-log")
                .finish(std::io::stderr());
            let dropped = writer.error_counter();
            *WRITER.lock().unwrap_or_else(|p| p.into_inner()) = Some((guard, dropped));
            let _ = builder.with_writer(RateLimited::new(writer, BURST, WINDOW)).try_init();
        } else {
            let _ =
                builder.with_writer(RateLimited::new(std::io::stderr, BURST, WINDOW)).try_init();
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Not flushed here: a panic caught on a worker (hdfs-native's, see the store
            // layer) must not end the daemon's logging; the default hook prints it to stderr.
            tracing::error!(panic = %info, "panic");
            previous(info);
        }));
    });
}

/// One call site's lines in the current window.
#[derive(Debug)]
struct Site {
    since: Instant,
    written: u32,
    left_out: u64,
}

/// A [`MakeWriter`] that lets at most `burst` warnings and errors per call site through per
/// `window` (see the module doc); other levels pass.
#[derive(Debug)]
pub struct RateLimited<W> {
    inner: W,
    burst: u32,
    window: Duration,
    sites: Mutex<HashMap<Identifier, Site>>,
}

impl<W> RateLimited<W> {
    /// `inner`, limited to `burst` warnings and errors per call site per `window`.
    pub fn new(inner: W, burst: u32, window: Duration) -> Self {
        Self { inner, burst, window, sites: Mutex::new(HashMap::new()) }
    }
}

/// A line's writer: the inner one (after a note of the lines left out before it), or none.
#[derive(Debug)]
pub enum Gate<W> {
    /// Write the line.
    Open(W, Option<String>),
    /// Count it, write nothing.
    Shut,
}

impl<W: Write> Write for Gate<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Gate::Open(w, note) => {
                if let Some(note) = note.take() {
                    w.write_all(note.as_bytes())?;
                }
                w.write(buf)
            }
            Gate::Shut => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Gate::Open(w, _) => w.flush(),
            Gate::Shut => Ok(()),
        }
    }
}

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for RateLimited<W> {
    type Writer = Gate<W::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Gate::Open(self.inner.make_writer(), None)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        if *meta.level() > Level::WARN {
            return Gate::Open(self.inner.make_writer_for(meta), None);
        }
        let now = Instant::now();
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let site =
            sites.entry(meta.callsite()).or_insert(Site { since: now, written: 0, left_out: 0 });
        let mut note = None;
        if now.duration_since(site.since) >= self.window {
            if site.left_out > 0 {
                let at = match (meta.file(), meta.line()) {
                    (Some(file), Some(line)) => format!("{file}:{line}"),
                    _ => meta.target().to_string(),
                };
                note = Some(format!(
                    "{} more {} lines from {at} were left out in the {:?} before this one\n",
                    site.left_out,
                    meta.level(),
                    now.duration_since(site.since)
                ));
            }
            *site = Site { since: now, written: 0, left_out: 0 };
        }
        if site.written >= self.burst {
            site.left_out += 1;
            return Gate::Shut;
        }
        site.written += 1;
        drop(sites);
        Gate::Open(self.inner.make_writer_for(meta), note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_writer::Shared;

    #[test]
    fn repeated_warnings_are_counted_not_written_and_said_after_the_window() {
        let buffer = Shared::default();
        let window = Duration::from_millis(300);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(RateLimited::new(buffer.clone(), 3, window))
            .finish();
        let lines = || buffer.text();
        tracing::subscriber::with_default(subscriber, || {
            let fail = |i: u32| tracing::warn!(block = i, "fetch failed");
            for i in 0..50 {
                fail(i);
                tracing::info!(i, "progress");
            }
            tracing::error!("another site");
            let text = lines();
            assert_eq!(text.matches("fetch failed").count(), 3, "{text}");
            assert_eq!(text.matches("progress").count(), 50, "info is not limited");
            assert_eq!(text.matches("another site").count(), 1, "limits are per call site");
            assert!(!text.contains("left out"), "{text}");
            std::thread::sleep(window + Duration::from_millis(50));
            fail(99);
            let text = lines();
            assert_eq!(text.matches("fetch failed").count(), 4, "{text}");
            let note = text.lines().find(|l| l.contains("left out")).expect("a note");
            assert!(note.starts_with("47 more WARN lines from "), "{note}");
            assert!(note.contains("telemetry.rs:"), "the call site: {note}");
            let (note_at, line_at) = (text.find(note).expect("note"), text.rfind("block=99"));
            assert!(line_at.is_some_and(|at| at > note_at), "the note comes first: {text}");
        });
    }
}
