//! `--metrics-addr` on a real mount of the binary (needs root and /dev/fuse; CI runs it with
//! `BOOTSEER_REQUIRE_REAL=1`): the scrape a Prometheus server would take, checked against what
//! the reads did and against the JSON summary the daemon writes at unmount (an independent
//! source: plain atomics in the cache, not the recorder).
//!
//! ```text
//!  mount 1 (cold cache dir, trace off): read every file ─► demand; drop the page cache
//!     (fadvise DONTNEED), read again ─► memory; scrape; unmount ─► summary 1
//!  mount 2 (same cache dir, fresh memory): read every file ─► disk; scrape; unmount ─► summary 2
//! ```
//!
//! Then where a daemon's log goes (a pipe nobody reads, the journal's stream, journald's native
//! socket, `--log` before it), and `log_dropped` against the notes of the rate limit.

mod common;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bootseer_common::mount::is_mounted;
use bootseer_common::testing::fuse::{UnmountOnDrop, umount_now};
use bootseer_common::testing::mem::pattern;
use bootseer_common::testing::prom::{Scrape, free_port, scrape};
use common::{BLOCK, convert_into, require_root_fuse, wait_for};

/// A daemon started with `-f`: unmounted (lazily) and killed on drop if a test fails first.
struct Daemon {
    child: Child,
    mnt: PathBuf,
}

impl Daemon {
    /// Unmounts and waits for the daemon to exit (it writes its summary on the way out).
    fn stop(mut self) {
        umount_now(&self.mnt);
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "daemon exited with {status}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(reference: &str, mnt: &Path, cache: &Path, summary: &Path, addr: SocketAddr) -> Daemon {
    let child = Command::new(env!("CARGO_BIN_EXE_bootseer-image"))
        .args(["mount", reference])
        .arg(mnt)
        .arg("--cache-dir")
        .arg(cache)
        .args(["--trace", "off", "-f", "--summary"])
        .arg(summary)
        .args(["--metrics-addr", &addr.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut daemon = Daemon { child, mnt: mnt.to_path_buf() };
    wait_for("the mount", || {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("the daemon exited before mounting: {status}");
        }
        is_mounted(mnt)
    });
    daemon
}

/// Reads `path` whole, then drops its pages from the page cache, so the next read of it asks
/// the mount again.
fn read_and_forget(path: &Path) -> Vec<u8> {
    let data = std::fs::read(path).expect("read");
    let f = std::fs::File::open(path).expect("open");
    // SAFETY: a valid open descriptor; DONTNEED only drops clean cached pages.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "fadvise");
    data
}

/// Scrapes until the cache counters stop moving (the sequential window's background fetches
/// finish after the reads that queued them), so the scrape and the summary count the same.
fn settled_scrape(addr: SocketAddr) -> Scrape {
    let key = |s: &Scrape| {
        ["cache_miss", "cache_hit_memory", "cache_hit_disk", "fetch_bytes", "fuse_read_bytes"]
            .map(|n| s.sum(n, &[]))
    };
    let mut last = scrape(addr).expect("scrape");
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let next = scrape(addr).expect("scrape");
        if key(&next) == key(&last) {
            return next;
        }
        last = next;
    }
    panic!("the cache counters never settled");
}

fn summary_json(path: &Path) -> serde_json::Value {
    wait_for("the summary", || std::fs::metadata(path).is_ok_and(|m| m.len() > 0));
    serde_json::from_slice(&std::fs::read(path).expect("summary")).expect("summary JSON")
}

fn num(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The counters the scrape and the summary both carry must agree.
fn assert_matches_summary(m: &Scrape, s: &serde_json::Value) {
    let c = &s["cache"];
    let pairs = [
        (m.sum("cache_hit_memory", &[]), &c["hits_memory"], "hits_memory"),
        (m.sum("cache_hit_disk", &[]), &c["hits_disk"], "hits_disk"),
        (m.sum("cache_miss", &[("priority", "demand")]), &c["blocks_on_demand"], "on demand"),
        (m.sum("cache_miss", &[("priority", "background")]), &c["blocks_ahead"], "ahead"),
        (m.sum("fetch_bytes", &[("priority", "demand")]), &c["bytes_on_demand"], "bytes demand"),
        (m.sum("fetch_bytes", &[("priority", "background")]), &c["bytes_ahead"], "bytes ahead"),
    ];
    for (scraped, summarized, what) in pairs {
        assert_eq!(scraped, num(summarized), "{what}: scrape {scraped} vs summary {s}");
    }
    assert_eq!(num(&c["fetch_errors"]), 0.0, "{s}");
}

/// Every `origin`'s histogram: `_count` equals its `+Inf` bucket, and its `_sum` is a time.
fn assert_histogram_consistent(m: &Scrape) {
    assert_eq!(m.types.get("fuse_read_latency").map(String::as_str), Some("histogram"));
    for origin in ["memory", "disk", "demand"] {
        let count = m.sum("fuse_read_latency_count", &[("origin", origin)]);
        let inf = m.sum("fuse_read_latency_bucket", &[("origin", origin), ("le", "+Inf")]);
        assert_eq!(count, inf, "{origin}: _count vs le=+Inf");
        let sum = m.sum("fuse_read_latency_sum", &[("origin", origin)]);
        assert!(sum >= 0.0 && (count == 0.0 || sum < 60.0 * count), "{origin}: sum {sum}");
    }
}

#[test]
fn metrics_addr_serves_read_latency_by_origin_and_agrees_with_the_summary() {
    if require_root_fuse(&[]).is_none() {
        return;
    }
    let src = tempfile::tempdir().expect("src");
    // Whole blocks, so no two files share one: each file's first read is its own miss.
    let files: Vec<(String, Vec<u8>)> = (0..4u64)
        .map(|i| (format!("f{i}"), pattern(i + 40, (2 + i as usize % 2) * BLOCK as usize)))
        .collect();
    for (name, data) in &files {
        std::fs::write(src.path().join(name), data).expect("write");
    }
    let total: usize = files.iter().map(|(_, d)| d.len()).sum();
    let store_dir = tempfile::tempdir().expect("store");
    let (reference, _) = convert_into(src.path(), store_dir.path(), "watch:v1");
    let mnt = tempfile::tempdir().expect("mountpoint");
    let cache = tempfile::tempdir().expect("cache");
    let work = tempfile::tempdir().expect("work");

    // Mount 1: cold, then from memory.
    let (summary1, addr1) = (work.path().join("1.json"), free_port().expect("port"));
    let daemon = start(&reference, mnt.path(), cache.path(), &summary1, addr1);
    // Up before the first read (a metric shows once it has a sample).
    scrape(addr1).expect("scrape before any read");
    for (name, data) in &files {
        assert_eq!(&read_and_forget(&mnt.path().join(name)), data, "{name} cold");
    }
    for (name, data) in &files {
        assert_eq!(&read_and_forget(&mnt.path().join(name)), data, "{name} again");
    }
    let m = settled_scrape(addr1);
    daemon.stop();
    let s1 = summary_json(&summary1);
    assert_histogram_consistent(&m);
    for name in ["cache_miss", "fuse_read_latency", "fetch_bytes", "store_read_bytes"] {
        assert!(m.help.contains_key(name), "{name} has no HELP line");
    }
    let count = |o: &str| m.sum("fuse_read_latency_count", &[("origin", o)]);
    let bytes = |o: &str| m.sum("fuse_read_bytes", &[("origin", o)]);
    // Each cold file needed at least one read that waited on the store; each second read was
    // answered with every block in memory (32 MiB holds this image).
    assert!(count("demand") >= files.len() as f64, "demand reads: {}", count("demand"));
    assert!(count("memory") >= files.len() as f64, "memory reads: {}", count("memory"));
    assert!(
        m.sum("fuse_read_latency_count", &[]) >= 2.0 * files.len() as f64,
        "fewer replies than reads"
    );
    // Every byte read went through a reply at least once per pass (read-ahead may ask for more).
    assert!(bytes("memory") >= total as f64, "memory bytes {} < {total}", bytes("memory"));
    assert!(bytes("demand") + bytes("memory") >= 2.0 * total as f64);
    assert_eq!(count("disk"), 0.0, "nothing was on disk yet");
    assert!(m.sum("cache_miss", &[]) > 0.0, "a cold mount that never missed");
    assert!(m.sum("store_read_bytes", &[]) > 0.0);
    assert_eq!(m.sum("fuse_errors", &[]), 0.0);
    assert_matches_summary(&m, &s1);

    // Mount 2: the same cache directory once its disk tier holds every fetched block.
    let fetched = num(&s1["cache"]["blocks_on_demand"]) + num(&s1["cache"]["blocks_ahead"]);
    let persisted = || {
        let Ok(shards) = std::fs::read_dir(cache.path().join("v2")) else { return 0 };
        shards
            .filter_map(|d| std::fs::read_dir(d.ok()?.path()).ok())
            .flatten()
            .filter(|f| f.as_ref().is_ok_and(|f| f.file_name().len() == 32))
            .count()
    };
    wait_for("every fetched block on disk", || persisted() as f64 >= fetched);
    let (summary2, addr2) = (work.path().join("2.json"), free_port().expect("port"));
    let daemon = start(&reference, mnt.path(), cache.path(), &summary2, addr2);
    for (name, data) in &files {
        assert_eq!(&read_and_forget(&mnt.path().join(name)), data, "{name} from disk");
    }
    let m = settled_scrape(addr2);
    daemon.stop();
    let s2 = summary_json(&summary2);
    assert_histogram_consistent(&m);
    let count = |o: &str| m.sum("fuse_read_latency_count", &[("origin", o)]);
    assert!(count("disk") >= files.len() as f64, "disk reads: {}", count("disk"));
    assert_eq!(count("demand"), 0.0, "a warm disk tier still fetched");
    assert!(m.sum("cache_hit_disk", &[]) > 0.0);
    assert_eq!(m.sum("cache_miss", &[("priority", "demand")]), 0.0);
    assert_matches_summary(&m, &s2);
}

/// A metrics address that cannot be bound fails the mount with the reason, and nothing stays
/// mounted.
#[test]
fn a_metrics_addr_in_use_fails_the_mount() {
    if require_root_fuse(&[]).is_none() {
        return;
    }
    let src = tempfile::tempdir().expect("src");
    std::fs::write(src.path().join("f"), b"x").expect("write");
    let store_dir = tempfile::tempdir().expect("store");
    let (reference, _) = convert_into(src.path(), store_dir.path(), "busy:v1");
    let mnt = tempfile::tempdir().expect("mountpoint");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = Command::new(env!("CARGO_BIN_EXE_bootseer-image"))
        .arg(&reference)
        .arg(mnt.path())
        .args(["-o", &format!("trace=off,metrics_addr={addr}")])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted on a port in use");
    assert!(stderr.contains(&addr.to_string()), "{stderr}");
    assert!(!is_mounted(mnt.path()));
}

/// Issue 10 item 8: a daemon's log lines are written off the threads that serve reads. Its
/// stderr here is a pipe nobody reads, full after 64 KiB, and every FUSE request is logged
/// (`BOOTSEER_LOG=trace`): reads of a whole image still finish, and once the pipe is drained
/// the daemon unmounts and exits cleanly. (With lines written on the FUSE threads, the first
/// full pipe stops every reply.)
#[test]
fn a_log_pipe_nobody_reads_stops_no_read() {
    if require_root_fuse(&[]).is_none() {
        return;
    }
    let src = tempfile::tempdir().expect("src");
    // Many small files: every one costs a lookup, an open, a read, a release (~6 lines).
    let files: Vec<(String, Vec<u8>)> =
        (0..400u64).map(|i| (format!("f{i:03}"), pattern(i + 70, 8 << 10))).collect();
    for (name, data) in &files {
        std::fs::write(src.path().join(name), data).expect("write");
    }
    let store_dir = tempfile::tempdir().expect("store");
    let (reference, _) = convert_into(src.path(), store_dir.path(), "quietlog:v1");
    let (mnt, cache) = (tempfile::tempdir().expect("mnt"), tempfile::tempdir().expect("cache"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_bootseer-image"))
        .args(["mount", &reference])
        .arg(mnt.path())
        .arg("--cache-dir")
        .arg(cache.path())
        .args(["--trace", "off", "-f"])
        .env("BOOTSEER_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("the pipe");
    let mut daemon = Daemon { child, mnt: mnt.path().to_path_buf() };
    wait_for("the mount", || {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("the daemon exited before mounting: {status}");
        }
        is_mounted(mnt.path())
    });
    // The reads on their own thread, so a hang is a failure here, not a stuck test.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let root = mnt.path().to_path_buf();
    let reader = std::thread::spawn(move || {
        for (name, data) in &files {
            assert_eq!(&read_and_forget(&root.join(name)), data, "{name}");
            let _ = std::fs::metadata(root.join(name));
        }
        let _ = done_tx.send(());
    });
    let finished = done_rx.recv_timeout(Duration::from_secs(30));
    // Drain the pipe now: whatever happened, the daemon must be able to exit.
    let drained = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut text);
        text
    });
    assert!(finished.is_ok(), "reads stalled behind a full log pipe");
    reader.join().expect("the reads");
    daemon.stop();
    let log = drained.join().expect("drain");
    assert!(log.len() > 64 << 10, "the log did not fill the pipe ({} bytes): no test", log.len());
}

/// Issue 10 item 8: a daemon that systemd started (a `.mount` unit, a service) logs to the
/// journal: its stderr is the journal's stream, named by `JOURNAL_STREAM` (device:inode), and
/// stays its stderr when the daemon forks. Here a plain file stands in for the journal's
/// socket; the daemon must tell it from a stderr it merely inherited (another inode named:
/// /dev/null, as before).
#[test]
fn a_daemon_started_by_systemd_logs_to_its_journal_stream() {
    use std::os::unix::fs::MetadataExt;
    if require_root_fuse(&["umount"]).is_none() {
        return;
    }
    let src = tempfile::tempdir().expect("src");
    std::fs::write(src.path().join("f"), pattern(90, 4096)).expect("write");
    let store_dir = tempfile::tempdir().expect("store");
    let (reference, _) = convert_into(src.path(), store_dir.path(), "journal:v1");
    let work = tempfile::tempdir().expect("work");
    for (case, named_is_stderr) in [("journal", true), ("another", false)] {
        let journal = work.path().join(case);
        let file = std::fs::File::create(&journal).expect("journal file");
        let md = file.metadata().expect("stat");
        let ino = if named_is_stderr { md.ino() } else { md.ino() + 1 };
        let mnt = work.path().join(format!("mnt-{case}"));
        std::fs::create_dir(&mnt).expect("mnt");
        let status = Command::new(env!("CARGO_BIN_EXE_bootseer-image"))
            .args(["mount", &reference])
            .arg(&mnt)
            .args(["--trace", "off"])
            .env("JOURNAL_STREAM", format!("{}:{ino}", md.dev()))
            // No journald socket either (an empty path turns it off): /dev/null is what is left.
            .env("BOOTSEER_JOURNAL_SOCKET", "")
            .stdout(Stdio::null())
            .stderr(file)
            .status()
            .expect("mount");
        assert!(status.success(), "{case}: mount");
        let guard = UnmountOnDrop(mnt.clone());
        assert_eq!(std::fs::read(mnt.join("f")).expect("read"), pattern(90, 4096));
        guard.unmount();
        let text = || std::fs::read_to_string(&journal).unwrap_or_default();
        if named_is_stderr {
            wait_for("the daemon's last lines", || text().contains("unmounted"));
            assert!(text().contains("mounted source="), "{case}: {}", text());
        } else {
            // Gone when the mount is: its exit is what the summary-less daemon leaves.
            wait_for("the daemon to exit", || {
                !Command::new("pgrep")
                    .args(["-f", &format!("bootseer-image mount {reference} {}", mnt.display())])
                    .status()
                    .is_ok_and(|s| s.success())
            });
            assert_eq!(text(), "", "{case}: a stderr not named by JOURNAL_STREAM got lines");
        }
    }
}

/// Splits a journald native-protocol datagram into its fields (`KEY=value\n`, or `KEY\n`, a
/// little-endian u64 length, the value and `\n`), as journald reads it.
fn journal_fields(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let nl = data.iter().position(|&b| b == b'\n').expect("a field ends with \\n");
        let (head, rest) = (&data[..nl], &data[nl + 1..]);
        let key = |k: &[u8]| String::from_utf8(k.to_vec()).expect("a UTF-8 key");
        if let Some(eq) = head.iter().position(|&b| b == b'=') {
            out.push((key(&head[..eq]), head[eq + 1..].to_vec()));
            data = rest;
        } else {
            let len = u64::from_le_bytes(rest[..8].try_into().expect("length")) as usize;
            out.push((key(head), rest[8..8 + len].to_vec()));
            assert_eq!(rest[8 + len], b'\n', "a binary value ends with \\n");
            data = &rest[9 + len..];
        }
    }
    out
}

/// One received journal entry: field name ─► value (text).
type JournalEntry = std::collections::BTreeMap<String, String>;

/// Receives entries on `sock` until one that is `last` (or 10 s pass).
fn journal_entries_until(
    sock: &std::os::unix::net::UnixDatagram,
    what: &str,
    last: impl Fn(&JournalEntry) -> bool,
) -> Vec<JournalEntry> {
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut entries = Vec::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("no entry {what} within 10 s ({e}); got {entries:#?}"),
        };
        let entry: JournalEntry = journal_fields(&buf[..n])
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).expect("UTF-8 value")))
            .collect();
        let done = last(&entry);
        entries.push(entry);
        if done {
            return entries;
        }
    }
}

/// Issue 10 item 8: a daemon started from a shell on a systemd host (no `--log`, no
/// `JOURNAL_STREAM`) logs to journald's native socket. A socket the test binds stands in for
/// journald (`BOOTSEER_JOURNAL_SOCKET`); the datagrams are read as journald reads them. With
/// `--log`, the file wins and the socket gets nothing.
#[test]
fn a_daemon_started_from_a_shell_logs_to_journalds_socket() {
    if require_root_fuse(&["umount"]).is_none() {
        return;
    }
    let src = tempfile::tempdir().expect("src");
    std::fs::write(src.path().join("f"), pattern(91, 4096)).expect("write");
    let store_dir = tempfile::tempdir().expect("store");
    let (reference, _) = convert_into(src.path(), store_dir.path(), "native:v1");
    let work = tempfile::tempdir().expect("work");
    let path = work.path().join("journal.socket");
    let journal = std::os::unix::net::UnixDatagram::bind(&path).expect("bind the journal");
    let mount = |mnt: &Path, log: Option<&Path>| {
        std::fs::create_dir(mnt).expect("mnt");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bootseer-image"));
        cmd.args(["mount", &reference]).arg(mnt).args(["--trace", "off"]);
        if let Some(log) = log {
            cmd.arg("--log").arg(log);
        }
        let out = cmd
            .env("BOOTSEER_JOURNAL_SOCKET", &path)
            .env_remove("JOURNAL_STREAM")
            .env_remove("BOOTSEER_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        let guard = UnmountOnDrop(mnt.to_path_buf());
        assert_eq!(std::fs::read(mnt.join("f")).expect("read"), pattern(91, 4096));
        guard.unmount();
    };

    let mnt = work.path().join("mnt");
    mount(&mnt, None);
    // The summary is the daemon's last line.
    let entries =
        journal_entries_until(&journal, "with the summary", |e| e.contains_key("SUMMARY"));
    let mounted = entries
        .iter()
        .find(|e| e.get("MESSAGE").is_some_and(|m| m.starts_with("mounted ")))
        .unwrap_or_else(|| panic!("no `mounted` entry: {entries:#?}"));
    let field = |e: &JournalEntry, k: &str| e.get(k).cloned().unwrap_or_default();
    assert_eq!(field(mounted, "PRIORITY"), "6", "info: {mounted:?}");
    assert_eq!(field(mounted, "SYSLOG_IDENTIFIER"), "bootseer-image", "{mounted:?}");
    assert_eq!(field(mounted, "TARGET"), "bootseer_common::mount", "{mounted:?}");
    assert!(field(mounted, "CODE_FILE").ends_with("mount/mod.rs"), "{mounted:?}");
    assert!(field(mounted, "CODE_LINE").parse::<u32>().is_ok(), "{mounted:?}");
    assert_eq!(field(mounted, "MOUNTPOINT"), mnt.display().to_string(), "{mounted:?}");
    assert!(field(mounted, "MESSAGE").contains(&format!("mountpoint={}", mnt.display())));
    // The summary is many lines: it arrives whole, in the protocol's binary form.
    let unmounted = entries.last().expect("the last entry");
    let summary: serde_json::Value =
        serde_json::from_str(&field(unmounted, "SUMMARY")).expect("the SUMMARY field is JSON");
    assert!(summary["cache"].is_object(), "{summary}");
    assert!(field(unmounted, "SUMMARY").contains('\n'), "a pretty summary has newlines");

    // `--log FILE` comes first: every line in the file, none on the socket.
    let (mnt, log) = (work.path().join("mnt-log"), work.path().join("daemon.log"));
    mount(&mnt, Some(&log));
    wait_for("the daemon's last lines", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("unmounted"))
    });
    journal.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    let got = journal.recv(&mut buf);
    assert!(
        got.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "a daemon with --log also sent to the journal: {:?}",
        got.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
}

/// Issue 10 item 8: log lines the rate limit leaves out are counted in `log_dropped` by reason
/// on the metrics endpoint, and the count is the one the log's notes give. A corrupted block
/// makes every read of one file fail the same way (two warning sites per read); after the
/// window, one more read makes each site say how many of its lines were left out.
#[test]
fn log_lines_left_out_by_the_rate_limit_are_counted_on_the_metrics_endpoint() {
    if require_root_fuse(&["umount"]).is_none() {
        return;
    }
    let src = tempfile::tempdir().expect("src");
    std::fs::write(src.path().join("victim"), pattern(5, 2 * BLOCK as usize)).expect("write");
    let store_dir = tempfile::tempdir().expect("store");
    let (reference, _) = convert_into(src.path(), store_dir.path(), "noisy:v1");
    // One flipped byte in the data blob fails its verification.
    common::corrupt_data_blob(store_dir.path(), 0.25);
    let work = tempfile::tempdir().expect("work");
    let (mnt, log) = (work.path().join("mnt"), work.path().join("daemon.log"));
    std::fs::create_dir(&mnt).expect("mnt");
    let addr = free_port().expect("port");
    let out = Command::new(env!("CARGO_BIN_EXE_bootseer-image"))
        .args(["mount", &reference])
        .arg(&mnt)
        .args(["--trace", "off", "--metrics-addr", &addr.to_string(), "--log"])
        .arg(&log)
        .env_remove("BOOTSEER_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("mount");
    assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
    let guard = UnmountOnDrop(mnt.clone());
    let fail = || {
        let err = std::fs::read(mnt.join("victim")).expect_err("a corrupt block was served");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    };
    let before = scrape(addr).expect("scrape");
    assert_eq!(before.sum("log_dropped", &[("reason", "rate_limited")]), 0.0);
    assert!(before.has("log_dropped"), "the reasons show at 0 from the start");
    let started = std::time::Instant::now();
    for _ in 0..30 {
        fail();
    }
    let m = scrape(addr).expect("scrape");
    assert!(
        started.elapsed() < bootseer_common::telemetry::WINDOW,
        "the reads took longer than the window: no test"
    );
    let left_out = m.sum("log_dropped", &[("reason", "rate_limited")]);
    assert!(left_out > 0.0, "30 failing reads, nothing left out: {:?}", m.samples);
    assert_eq!(m.sum("log_dropped", &[("reason", "queue_full")]), 0.0);
    assert!(m.help.contains_key("log_dropped"), "no HELP line");

    std::thread::sleep(bootseer_common::telemetry::WINDOW + Duration::from_millis(200));
    fail();
    guard.unmount();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("the daemon's last lines", || text().contains("unmounted"));
    let text = text();
    let notes: Vec<&str> = text.lines().filter(|l| l.contains(" were left out in the ")).collect();
    let said: f64 = notes
        .iter()
        .map(|l| l.split(' ').next().and_then(|n| n.parse::<f64>().ok()).expect("N more …"))
        .sum();
    assert!(notes.len() >= 2, "a note from each failing site: {notes:#?}");
    assert_eq!(said, left_out, "the notes {notes:#?} vs the scrape");
}
