//! Logging for every binary: one `tracing` subscriber filtered by `BOOTSEER_LOG`, `log` records
//! (fuser logs through `log`) bridged into it, and a panic hook that logs before unwinding.
//!
//! ```text
//!  any thread ─► event ─► filter ─► Limiter (warn/error: BURST per call site per WINDOW)
//!                                     │
//!    [init]                  stderr ◄─┤ (the calling thread writes)
//!    [init_daemon] Stderr:    text ───┤
//!    [init_daemon] Journal:  Entry ───┴─► queue (QUEUE_LINES) ─► "bootseer-log" thread
//!                                           ─► stderr (file, journal stream, terminal, /dev/null)
//!                                           ─► journald's socket ([`journal`])
//!  lost lines ─► count_dropped(reason) ─► dropped() totals + `log.dropped{reason}`
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
//! - Where a daemon's lines go ([`Output::for_daemon`]): the `--log` file, else the journal's
//!   stream when systemd started the process (its `JOURNAL_STREAM`, see
//!   [`crate::mount::daemonize`]), else (a daemon started from a shell on a systemd host)
//!   journald's native socket when it exists and takes a connection, else /dev/null. In the
//!   foreground, the terminal.
//! - Every line lost is counted by reason ([`Dropped`]): the queue was full, the rate limit
//!   left it out, or the journal did not take it. The totals are kept here ([`dropped`]) and
//!   sent to the `metrics` recorder, which [`publish_dropped`] brings up to date when
//!   `--metrics-addr` installs it after logging started.

pub mod journal;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tracing::callsite::Identifier;
use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The environment variable that holds the log filter (`info`, `bootseer_common=debug`, …).
pub const LOG_ENV: &str = "BOOTSEER_LOG";

/// Warnings and errors one call site may write within [`WINDOW`] before the rest are counted.
pub const BURST: u32 = 10;

/// The window of [`BURST`].
pub const WINDOW: Duration = Duration::from_secs(10);

/// Lines a daemon's log queue holds before new ones are dropped (and counted).
const QUEUE_LINES: usize = 16_384;

/// How long [`flush`] waits for the writer thread to write what is queued: a stderr or journal
/// that stopped taking lines must not hold up the daemon's exit for long.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The daemon's log queue, taken by [`flush`].
static WRITER: Mutex<Option<Sender<Msg>>> = Mutex::new(None);

/// Why a log line was lost (the `reason` label of [`crate::metrics::LOG_DROPPED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The daemon's log queue was full: the writer thread fell behind.
    QueueFull,
    /// The call site's rate limit ([`BURST`] per [`WINDOW`]) left it out.
    RateLimited,
    /// journald's socket did not take it (full, gone, or still too large once truncated).
    Journal,
}

impl Dropped {
    /// Every reason, in label order.
    pub const ALL: [Dropped; 3] = [Dropped::QueueFull, Dropped::RateLimited, Dropped::Journal];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Dropped::QueueFull => "queue_full",
            Dropped::RateLimited => "rate_limited",
            Dropped::Journal => "journal",
        }
    }
}

/// Lines lost since the process started, by [`Dropped`] reason.
static DROPPED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Counts one lost line: in [`dropped`]'s totals first, then in the installed recorder.
fn count_dropped(why: Dropped) {
    DROPPED[why as usize].fetch_add(1, Ordering::Relaxed);
    ::metrics::counter!(crate::metrics::LOG_DROPPED, "reason" => why.label()).increment(1);
}

/// Lines lost for `why` since the process started.
pub fn dropped(why: Dropped) -> u64 {
    DROPPED[why as usize].load(Ordering::Relaxed)
}

/// Raises each reason's counter in the recorder just installed to the lines lost so far (and
/// shows reasons with none at 0). Counters only go up (`absolute` keeps the larger value), so
/// a line lost during this call is counted at most once more than it should be.
pub fn publish_dropped() {
    for why in Dropped::ALL {
        ::metrics::counter!(crate::metrics::LOG_DROPPED, "reason" => why.label())
            .absolute(dropped(why));
    }
}

/// Where a mount daemon's log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Text lines on stderr: the `--log` file, the journal's stream, the terminal, /dev/null.
    Stderr,
    /// Native-protocol datagrams to journald's socket at this path ([`journal`]).
    Journal(PathBuf),
}

impl Output {
    /// `Stderr` when stderr was chosen for the log (`stderr_chosen`: a `--log` file, the journal
    /// stream systemd gave, or the foreground's terminal); otherwise journald's socket when one
    /// takes a connection ([`journal::socket`]), else `Stderr` (/dev/null, once daemonized).
    pub fn for_daemon(stderr_chosen: bool) -> Self {
        if stderr_chosen {
            return Output::Stderr;
        }
        journal::socket().map_or(Output::Stderr, Output::Journal)
    }
}

/// Installs logging once per process, writing on the calling thread (for commands that are not
/// mount daemons); later calls do nothing. Logs go to stderr.
pub fn init(default_filter: &str) {
    install(default_filter, None);
}

/// Installs logging once per process for a mount daemon: lines go to `output` through the log
/// writer thread, so no thread that serves reads waits on it. Call after forking (the thread
/// does not survive a fork) and [`flush`] before exiting.
pub fn init_daemon(default_filter: &str, output: Output) {
    install(default_filter, Some(output));
}

/// Drains the daemon's log queue (waits, up to [`FLUSH_WAIT`], for its writer thread to write
/// what is queued) and has the writer say how many lines were lost, if any. Later lines are
/// lost; call it last.
pub fn flush() {
    let Some(queue) = WRITER.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
    let (done, wait) = crossbeam_channel::bounded(1);
    if queue.send_timeout(Msg::Flush(done), FLUSH_WAIT).is_ok() {
        let _ = wait.recv_timeout(FLUSH_WAIT);
    }
}

fn install(default_filter: &str, daemon: Option<Output>) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter =
            || EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default_filter));
        let _ = tracing_log::LogTracer::init();
        // Colours only on a terminal: a daemon's log file or journald gets plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let builder = || {
            tracing_subscriber::fmt().with_env_filter(filter()).with_ansi(ansi).with_target(true)
        };
        match daemon.map(|output| (spawn_writer(&output), output)) {
            Some((Ok(queue), Output::Journal(_))) => {
                let layer = journal::JournalLayer { limiter: Limiter::new(BURST, WINDOW), queue };
                let _ = tracing_subscriber::registry().with(filter()).with(layer).try_init();
            }
            Some((Ok(queue), Output::Stderr)) => {
                let _ = builder().with_writer(RateLimited::new(queue, BURST, WINDOW)).try_init();
            }
            // No writer thread (it could not be started): lines are written where they are
            // logged, as a command's are.
            Some((Err(_), _)) | None => {
                let _ = builder()
                    .with_writer(RateLimited::new(std::io::stderr, BURST, WINDOW))
                    .try_init();
            }
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

/// What the log queue carries to the writer thread.
enum Msg {
    /// Text for stderr (one formatted line, or a rate limit's note).
    Line(Vec<u8>),
    /// A line for journald's socket.
    Entry(journal::Entry),
    /// Write what came before, say what was lost, answer, and stop.
    Flush(Sender<()>),
}

/// The sending end of the daemon's log queue: never waits; a full queue drops and counts.
#[derive(Clone)]
struct Queue(Sender<Msg>);

impl Queue {
    fn offer(&self, msg: Msg) {
        if let Err(TrySendError::Full(_)) = self.0.try_send(msg) {
            count_dropped(Dropped::QueueFull);
        }
    }
}

impl Write for Queue {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.offer(Msg::Line(buf.to_vec()));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Queue {
    type Writer = Queue;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Starts the "bootseer-log" thread writing to `output` and keeps its queue for [`flush`].
fn spawn_writer(output: &Output) -> std::io::Result<Queue> {
    let journal = match output {
        Output::Journal(path) => Some(journal::Socket::new(path, &journal::identifier())?),
        Output::Stderr => None,
    };
    let (tx, rx) = crossbeam_channel::bounded(QUEUE_LINES);
    std::thread::Builder::new()
        .name("bootseer-log".into())
        .spawn(move || write_lines(&rx, journal))?;
    *WRITER.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
    Ok(Queue(tx))
}

/// The writer thread's loop, until [`Msg::Flush`] (or every sender is gone).
fn write_lines(rx: &Receiver<Msg>, journal: Option<journal::Socket>) {
    let send = |entry: &journal::Entry| {
        if journal.as_ref().is_none_or(|j| j.send(entry).is_err()) {
            count_dropped(Dropped::Journal);
        }
    };
    for msg in rx {
        match msg {
            // A stderr that fails (closed, full disk) has nowhere to say so.
            Msg::Line(line) => drop(std::io::stderr().write_all(&line)),
            Msg::Entry(entry) => send(&entry),
            Msg::Flush(done) => {
                let (queue, journal_lost) =
                    (dropped(Dropped::QueueFull), dropped(Dropped::Journal));
                let mut lost = Vec::new();
                if queue > 0 {
                    lost.push(format!("{queue} log lines dropped: the log writer fell behind"));
                }
                if journal_lost > 0 {
                    lost.push(format!("{journal_lost} log lines the journal did not take"));
                }
                for text in lost {
                    match &journal {
                        Some(_) => send(&journal::Entry {
                            priority: journal::priority(Level::WARN),
                            file: None,
                            line: None,
                            target: module_path!().to_string(),
                            message: text,
                            fields: Vec::new(),
                        }),
                        None => drop(writeln!(std::io::stderr(), "bootseer: {text}")),
                    }
                }
                let _ = done.send(());
                return;
            }
        }
    }
}

/// One call site's lines in the current window.
#[derive(Debug)]
struct Site {
    since: Instant,
    written: u32,
    left_out: u64,
}

/// At most `burst` warnings and errors per call site per `window` (see the module doc); other
/// levels pass. Each line it leaves out is counted ([`Dropped::RateLimited`]).
#[derive(Debug)]
pub struct Limiter {
    burst: u32,
    window: Duration,
    sites: Mutex<HashMap<Identifier, Site>>,
}

/// What [`Limiter::admit`] says of a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it, after the note of the lines left out before it (no trailing newline).
    Write {
        /// "N more WARN lines from FILE:LINE were left out in the … before this one".
        note: Option<String>,
    },
    /// Count it, write nothing.
    LeaveOut,
}

impl Limiter {
    /// `burst` warnings and errors per call site per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        Self { burst, window, sites: Mutex::new(HashMap::new()) }
    }

    /// Whether the line of the call site `meta` may be written now.
    pub fn admit(&self, meta: &Metadata<'_>) -> Verdict {
        if *meta.level() > Level::WARN {
            return Verdict::Write { note: None };
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
                    "{} more {} lines from {at} were left out in the {:?} before this one",
                    site.left_out,
                    meta.level(),
                    now.duration_since(site.since)
                ));
            }
            *site = Site { since: now, written: 0, left_out: 0 };
        }
        if site.written >= self.burst {
            site.left_out += 1;
            drop(sites);
            count_dropped(Dropped::RateLimited);
            return Verdict::LeaveOut;
        }
        site.written += 1;
        Verdict::Write { note }
    }
}

/// A [`MakeWriter`] whose lines pass a [`Limiter`] first.
#[derive(Debug)]
pub struct RateLimited<W> {
    inner: W,
    limiter: Limiter,
}

impl<W> RateLimited<W> {
    /// `inner`, limited to `burst` warnings and errors per call site per `window`.
    pub fn new(inner: W, burst: u32, window: Duration) -> Self {
        Self { inner, limiter: Limiter::new(burst, window) }
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
        match self.limiter.admit(meta) {
            Verdict::Write { note } => {
                Gate::Open(self.inner.make_writer_for(meta), note.map(|n| n + "\n"))
            }
            Verdict::LeaveOut => Gate::Shut,
        }
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

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (tx, rx) = crossbeam_channel::bounded(2);
        let mut queue = Queue(tx);
        let before = dropped(Dropped::QueueFull);
        let started = Instant::now();
        for i in 0..5 {
            writeln!(queue, "line {i}").expect("never fails");
        }
        assert!(started.elapsed() < Duration::from_secs(1), "a full queue waited");
        assert_eq!(rx.try_iter().count(), 2);
        // At least: other tests may count drops at the same time.
        assert!(dropped(Dropped::QueueFull) - before >= 3);
    }
}
