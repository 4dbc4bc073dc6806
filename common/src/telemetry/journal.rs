//! journald's native protocol, for a daemon that has no `--log` file and no journal stream but
//! runs on a host with a journal: each log line one datagram of fields to
//! `/run/systemd/journal/socket` (or [`SOCKET_ENV`]), sent by the log writer thread.
//!
//! ```text
//!  caller's thread: event ─► filter ─► JournalLayer::on_event ─► Limiter (BURST per site)
//!      ─► Entry { PRIORITY, CODE_FILE, CODE_LINE, TARGET, MESSAGE, event fields } ─► queue
//!  "bootseer-log" thread: Entry ─► encode ("KEY=value\n", or KEY\n + u64 LE length + value + \n
//!      for a value with a newline) ─► Socket::send: one non-blocking sendto
//!        EMSGSIZE ─► values cut to TRUNCATE_STEPS with a marker, sent again
//!        EAGAIN / ENOBUFS / anything else ─► dropped, counted (`log.dropped{reason=journal}`)
//! ```
//!
//! - Written here rather than with `tracing-journald`: that crate sends on the thread that
//!   logged (a FUSE worker would wait on journald, which is what the log thread exists to
//!   prevent), has no rate limit and no drop counts, and its socket path is fixed, so no test
//!   can stand in for journald. The protocol is a few lines (systemd's `JOURNAL_NATIVE_PROTOCOL`
//!   document), and `UnixDatagram` speaks it.
//! - `MESSAGE` reads like the stderr line without its time and level (journald keeps those):
//!   the spans, the message, then `key=value` for each field; each field is also a journal
//!   field of its own, upper-cased (`error` ─► `ERROR`; a name journald would refuse, or one of
//!   ours, gets an `F_` prefix).
//! - The socket is unbound and each datagram is addressed to the path (`sendto`), so a journald
//!   that restarted (and bound a new socket at the same path) keeps getting lines.
//! - A line too large for one datagram is truncated with a marker, not passed through a memfd
//!   as `sd_journal_send` does: a log line that large is a summary or a dump, and its file (the
//!   summary JSON) holds it whole.

use std::fmt::Write as _;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::{Limiter, Msg, Queue, Verdict};

/// The environment variable naming the journal's socket instead of [`SOCKET`] (tests bind
/// their own; an empty value turns the journal off).
pub const SOCKET_ENV: &str = "BOOTSEER_JOURNAL_SOCKET";

/// Where journald listens for native-protocol datagrams.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// The caps a value is cut to, in turn, when a datagram is too large to send (EMSGSIZE): the
/// socket's send buffer (`net.core.wmem_default`, 208 KiB by default) bounds a datagram, so
/// 16 KiB per value fits unless a line has a dozen huge fields, and 1 KiB always does.
const TRUNCATE_STEPS: [usize; 2] = [16 << 10, 1 << 10];

/// Names of the fields every entry carries; an event field with one of them gets `F_`.
const OURS: [&str; 6] =
    ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "TARGET"];

/// journald's socket, if there is one that takes a connection: [`SOCKET_ENV`] when set (empty:
/// none), else [`SOCKET`].
pub fn socket() -> Option<PathBuf> {
    let path = match std::env::var_os(SOCKET_ENV) {
        Some(p) if p.is_empty() => return None,
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(SOCKET),
    };
    let probe = UnixDatagram::unbound().ok()?;
    probe.connect(&path).ok()?;
    Some(path)
}

/// The syslog priority of a tracing level (`PRIORITY=`): error 3, warning 4, info 6, debug
/// and trace 7 (syslog has nothing below debug).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// One log line, as the fields it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Syslog priority ([`priority`]).
    pub priority: u8,
    /// The source file of the call site.
    pub file: Option<String>,
    /// Its line.
    pub line: Option<u32>,
    /// The event's target (`bootseer_common::cache`).
    pub target: String,
    /// The text journalctl shows.
    pub message: String,
    /// The event's own fields, names already journal field names.
    pub fields: Vec<(String, String)>,
}

impl Entry {
    /// The datagram: `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER`, `CODE_FILE`, `CODE_LINE`,
    /// `TARGET` and the event's fields. With `cap`, every value longer than `cap` bytes is cut
    /// (at a character boundary) and ends with a marker saying how long it was.
    pub fn encode(&self, identifier: &str, cap: Option<usize>) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.message.len());
        let mut put = |key: &str, value: &str| match cap {
            Some(cap) if value.len() > cap => {
                put_field(&mut out, key, truncated(value, cap).as_bytes())
            }
            _ => put_field(&mut out, key, value.as_bytes()),
        };
        put("MESSAGE", &self.message);
        put("PRIORITY", &self.priority.to_string());
        put("SYSLOG_IDENTIFIER", identifier);
        if let Some(file) = &self.file {
            put("CODE_FILE", file);
        }
        if let Some(line) = self.line {
            put("CODE_LINE", &line.to_string());
        }
        put("TARGET", &self.target);
        for (key, value) in &self.fields {
            put(key, value);
        }
        out
    }
}

/// Appends one field in the native protocol: `KEY=value\n`, or, when the value holds a
/// newline, `KEY\n`, its length as a little-endian u64, the value and `\n`.
pub fn put_field(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// `value` cut to at most `cap` bytes at a character boundary, with a marker.
fn truncated(value: &str, cap: usize) -> String {
    let mut end = cap.min(value.len());
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [truncated: {end} of {} bytes]", &value[..end], value.len())
}

/// An event field's name as a journal field name: upper-cased, characters other than `A-Z`,
/// `0-9` and `_` made `_`, at most 64 bytes; `F_` in front of a name journald refuses from a
/// client (a leading `_` or digit) or one [`Entry::encode`] sets itself.
pub fn field_name(name: &str) -> String {
    let mut key: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect();
    if key.is_empty()
        || key.starts_with(|c: char| c == '_' || c.is_ascii_digit())
        || OURS.contains(&key.as_str())
    {
        key.insert_str(0, "F_");
    }
    key.truncate(64);
    key
}

/// The non-blocking socket the writer thread sends on, and the name entries carry.
#[derive(Debug)]
pub struct Socket {
    sock: UnixDatagram,
    path: PathBuf,
    identifier: String,
}

impl Socket {
    /// An unbound, non-blocking socket that sends to `path` as `identifier`
    /// (`SYSLOG_IDENTIFIER`).
    pub fn new(path: &Path, identifier: &str) -> io::Result<Self> {
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(Self { sock, path: path.to_path_buf(), identifier: identifier.to_string() })
    }

    /// Sends `entry` as one datagram, cut down ([`TRUNCATE_STEPS`]) if it is too large.
    /// Never waits: a journal that is behind (EAGAIN, ENOBUFS) is an error, the line lost.
    pub fn send(&self, entry: &Entry) -> io::Result<()> {
        let mut result = self.sock.send_to(&entry.encode(&self.identifier, None), &self.path);
        for cap in TRUNCATE_STEPS {
            match &result {
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    result =
                        self.sock.send_to(&entry.encode(&self.identifier, Some(cap)), &self.path);
                }
                _ => break,
            }
        }
        result.map(drop)
    }
}

/// The name this process logs as: its argv\[0\] without the directory (what syslog uses).
pub fn identifier() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "bootseer".to_string())
}

/// The [`Layer`] that turns events into [`Entry`]s on the log queue (rate-limited as the stderr
/// lines are).
pub(super) struct JournalLayer {
    pub(super) limiter: Limiter,
    pub(super) queue: Queue,
}

/// A span's fields as `key=value` text, kept in its extensions for the lines inside it.
struct SpanFields(String);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for JournalLayer {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.text.trim_start().to_string()));
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        if let Some(span) = ctx.span(id)
            && let Some(kept) = span.extensions_mut().get_mut::<SpanFields>()
        {
            kept.0.push_str(&fields.text);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let note = match self.limiter.admit(event.metadata()) {
            Verdict::Write { note } => note,
            Verdict::LeaveOut => return,
        };
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut message = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                message.push_str(span.name());
                if let Some(f) = span.extensions().get::<SpanFields>()
                    && !f.0.is_empty()
                {
                    let _ = write!(message, "{{{}}}", f.0);
                }
                message.push_str(": ");
            }
        }
        message.push_str(&fields.message);
        message.push_str(if fields.message.is_empty() {
            fields.text.trim_start()
        } else {
            &fields.text
        });
        let entry = |message: String, fields: Vec<(String, String)>| Entry {
            priority: priority(*meta.level()),
            file: meta.file().map(str::to_string),
            line: meta.line(),
            target: meta.target().to_string(),
            message,
            fields,
        };
        if let Some(note) = note {
            self.queue.offer(Msg::Entry(entry(note, Vec::new())));
        }
        self.queue.offer(Msg::Entry(entry(message, fields.pairs)));
    }
}

/// What a visit of an event's (or span's) fields collects.
#[derive(Default)]
struct Fields {
    /// The `message` field.
    message: String,
    /// ` key=value` for every other field, as the stderr line writes them.
    text: String,
    /// (journal name, value) for every other field.
    pairs: Vec<(String, String)>,
}

impl Fields {
    fn add(&mut self, field: &Field, text: std::fmt::Arguments<'_>, value: String) {
        // The `log` bridge's own fields: already the entry's target, file and line.
        if field.name().starts_with("log.") {
            return;
        }
        let _ = write!(self.text, " {}={text}", field.name());
        self.pairs.push((field_name(field.name()), value));
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.add(field, format_args!("{value:?}"), value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let value = format!("{value:?}");
            self.add(field, format_args!("{value}"), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Splits a datagram into (key, value) by the protocol, independently of the encoder.
    fn parse(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n').expect("a field ends with \\n");
            let (head, rest) = (&data[..nl], &data[nl + 1..]);
            if let Some(eq) = head.iter().position(|&b| b == b'=') {
                out.push((
                    String::from_utf8(head[..eq].to_vec()).expect("key"),
                    head[eq + 1..].to_vec(),
                ));
                data = rest;
            } else {
                let len = u64::from_le_bytes(rest[..8].try_into().expect("length")) as usize;
                out.push((
                    String::from_utf8(head.to_vec()).expect("key"),
                    rest[8..8 + len].to_vec(),
                ));
                assert_eq!(rest[8 + len], b'\n', "a binary value ends with \\n");
                data = &rest[9 + len..];
            }
        }
        out
    }

    fn entry(message: &str) -> Entry {
        Entry {
            priority: 4,
            file: Some("common/src/cache/mod.rs".into()),
            line: Some(957),
            target: "bootseer_common::cache".into(),
            message: message.into(),
            fields: vec![
                ("SUMMARY".into(), "{\n  \"a\": 1\n}".into()),
                ("BLOB".into(), "x=y".into()),
            ],
        }
    }

    #[test]
    fn a_multi_line_value_round_trips_through_the_binary_form() {
        let e = entry("block fetch failed\nsecond line");
        let fields = parse(&e.encode("bootseer-image", None));
        let get = |k: &str| {
            let v = fields
                .iter()
                .find(|(key, _)| key == k)
                .unwrap_or_else(|| panic!("{k}: {fields:?}"));
            String::from_utf8(v.1.clone()).expect("utf8")
        };
        assert_eq!(get("MESSAGE"), "block fetch failed\nsecond line");
        assert_eq!(get("SUMMARY"), "{\n  \"a\": 1\n}");
        assert_eq!(get("BLOB"), "x=y", "only the first = splits");
        assert_eq!(get("PRIORITY"), "4");
        assert_eq!(get("SYSLOG_IDENTIFIER"), "bootseer-image");
        assert_eq!(get("CODE_FILE"), "common/src/cache/mod.rs");
        assert_eq!(get("CODE_LINE"), "957");
        assert_eq!(get("TARGET"), "bootseer_common::cache");
        assert_eq!(fields.len(), 8, "{fields:?}");
        // A value with a newline is never sent in the KEY=value form.
        let raw = e.encode("x", None);
        assert!(!raw.windows(8).any(|w| w == b"MESSAGE="), "{}", String::from_utf8_lossy(&raw));
    }

    #[test]
    fn a_capped_value_is_cut_at_a_character_boundary_with_a_marker() {
        let long = "é".repeat(100); // 200 bytes
        let fields = parse(&entry(&long).encode("x", Some(51)));
        let message = String::from_utf8(fields[0].1.clone()).expect("still UTF-8");
        assert_eq!(message, format!("{}… [truncated: 50 of 200 bytes]", "é".repeat(25)));
        assert_eq!(fields[1].1, b"4", "short values are kept");
    }

    #[test]
    fn field_names_are_ones_journald_takes() {
        assert_eq!(field_name("error"), "ERROR");
        assert_eq!(field_name("log.target"), "LOG_TARGET");
        assert_eq!(field_name("_secret"), "F__SECRET");
        assert_eq!(field_name("2nd"), "F_2ND");
        assert_eq!(field_name("message"), "F_MESSAGE");
        assert_eq!(field_name(&"a".repeat(80)).len(), 64);
    }

    #[test]
    fn a_datagram_too_large_for_the_socket_arrives_truncated() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("journal");
        let server = UnixDatagram::bind(&path).expect("bind");
        let socket = Socket::new(&path, "bootseer-test").expect("socket");
        nix::sys::socket::setsockopt(&socket.sock, nix::sys::socket::sockopt::SndBuf, &(32 << 10))
            .expect("SO_SNDBUF");
        socket.send(&entry(&"x".repeat(1 << 20))).expect("sent, cut down");
        let mut buf = vec![0; 2 << 20];
        let n = server.recv(&mut buf).expect("recv");
        let fields = parse(&buf[..n]);
        let message = String::from_utf8(fields[0].1.clone()).expect("utf8");
        assert!(
            message.ends_with(&format!("[truncated: 16384 of {} bytes]", 1 << 20)),
            "{}",
            &message[16000..]
        );
    }

    #[test]
    fn events_become_entries_with_their_spans_and_fields_and_are_rate_limited() {
        use tracing_subscriber::layer::SubscriberExt;
        let (tx, rx) = crossbeam_channel::bounded(64);
        let layer =
            JournalLayer { limiter: Limiter::new(3, Duration::from_secs(60)), queue: Queue(tx) };
        let subscriber = tracing_subscriber::registry().with(layer);
        let left_out = super::super::dropped(super::super::Dropped::RateLimited);
        tracing::subscriber::with_default(subscriber, || {
            let _span = tracing::info_span!("read", ino = 7).entered();
            tracing::info!(path = "a/b", n = 3, "opened");
            for i in 0..5 {
                tracing::warn!(block = i, "fetch failed");
            }
        });
        let entries: Vec<Entry> = rx
            .try_iter()
            .map(|m| match m {
                Msg::Entry(e) => e,
                _ => panic!("a text line from the journal layer"),
            })
            .collect();
        assert_eq!(entries.len(), 4, "1 info + 3 warnings: {entries:#?}");
        let opened = &entries[0];
        assert_eq!(opened.message, r#"read{ino=7}: opened path="a/b" n=3"#);
        assert_eq!(opened.priority, 6);
        assert_eq!(opened.fields, vec![("PATH".into(), "a/b".into()), ("N".into(), "3".into())]);
        assert!(opened.file.as_deref().is_some_and(|f| f.ends_with("journal.rs")), "{opened:?}");
        assert_eq!(entries[3].message, "read{ino=7}: fetch failed block=2");
        assert_eq!(entries[3].priority, 4);
        let counted = super::super::dropped(super::super::Dropped::RateLimited) - left_out;
        assert!(counted >= 2, "the 2 warnings left out are counted ({counted})");
    }
}
