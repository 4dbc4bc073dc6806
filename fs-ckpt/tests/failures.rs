//! Bounded failures, on a real MiniDFS (3 DataNodes, 1 MiB blocks) in a private network
//! namespace, so `tc` silences only its ports:
//!
//! - mount time, through the built binary in daemon form: a path that does not exist, or a
//!   file, fails the mount with a clear message and a non-zero exit, nothing mounted; a NameNode
//!   port that refuses, and one that accepts and never answers, fail it within
//!   `--connect-timeout`;
//! - during a mount (CkptFs behind a real FUSE mount): the NameNode silenced → `ls` and `stat`
//!   answer from what the mount knows within the connect timeout, an open handle keeps reading,
//!   a new open fails within the connect timeout, and the mount serves again once the NameNode
//!   answers; every DataNode silenced → a read gets EIO within the stripe deadline once (not
//!   once more for the kernel's re-request), and reads again once they answer; every DataNode
//!   slowed so that a stripe takes longer than the attempt timeout (a herd on a shared link) →
//!   the read is slow, not EIO.

mod support;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bootseer_common::testing::netns::NetNs;
use bootseer_common::testing::require_real;
use support::{BLOCK, Env, bytes, sha};

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("a port")
}

#[test]
fn failures_are_bounded_clear_and_recover() {
    let Some(ns) = require_real("network namespace", NetNs::create()) else { return };
    require_real("network namespace", ns.enter()).expect("entered");
    let Some(dfs) = support::start_dfs() else { return };
    let a = bytes(21, 6 * BLOCK as usize + 11);
    let b = bytes(22, 3 * BLOCK as usize + 7);
    let c = bytes(23, 4 * BLOCK as usize + 5);
    let d = bytes(24, BLOCK as usize / 2 + 3);
    let config = bootseer_ckpt::CkptConfig {
        // No prefetch beyond the reader: what is read is what the test asks for.
        prefetch_threshold: u64::MAX,
        initial_window: 1,
        connect_timeout: Duration::from_secs(2),
        stripe_deadline: Duration::from_secs(6),
        attempt_timeout: Duration::from_secs(3),
        ..support::test_config()
    };
    let e = bytes(25, 1000);
    let files = [
        ("a.bin", a.as_slice()),
        ("b.bin", b.as_slice()),
        ("c.bin", c.as_slice()),
        ("d.bin", &d),
        // Never looked into before the NameNode goes silent: listed by nobody.
        ("sub/e.bin", &e),
    ];
    let Some(env) = support::setup(dfs, &files, config) else { return };

    mount_time_failures(&env);
    datanodes_slow(&env, &ns, &d);
    namenode_silent(&env, &ns, &a, &b);
    datanodes_silent(&env, &ns, &c);

    let mountpoint = env.mount.path().to_path_buf();
    drop(env);
    support::assert_nothing_leaked(&mountpoint);
}

/// `bootseer-ckpt mount URL DIR --connect-timeout 3s` (daemon form) for URLs that must not
/// mount: each fails within the timeout (plus start-up slack) with a message that says why,
/// nothing is mounted, and no daemon stays behind.
fn mount_time_failures(env: &Env) {
    let connect_timeout = Duration::from_secs(3);
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    // Accepts connections and never answers a byte.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            match conn {
                Ok(conn) => held.push(conn),
                Err(_) => break,
            }
        }
    });
    let cases = [
        (format!("{}/no-such-dir", env.dfs.uri()), "no such file or directory"),
        (format!("{}/a.bin", env.url), "not a directory"),
        (format!("hdfs://127.0.0.1:{refused}/ckpt"), ""),
        (format!("hdfs://127.0.0.1:{silent_port}/ckpt"), "timed out"),
    ];
    let binary = Path::new(env!("CARGO_BIN_EXE_bootseer-ckpt"));
    for (url, why) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("mkdir");
        let started = Instant::now();
        let out = Command::new(binary)
            .arg("mount")
            .arg(&url)
            .arg(&mountpoint)
            .args(["--connect-timeout", "3s", "--conf-dir"])
            .arg(env.dfs.conf_dir())
            .output()
            .expect("run bootseer-ckpt");
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mounted = bootseer_common::mount::is_mounted(&mountpoint);
        if mounted {
            let _ = Command::new("umount").arg(&mountpoint).status();
        }
        eprintln!("mount {url}: {:?} after {took:?}: {}", out.status.code(), stderr.trim());
        assert!(!mounted, "{url} was mounted");
        assert!(!out.status.success(), "mounting {url} succeeded");
        assert!(stderr.contains(why), "mounting {url}: the error does not say {why:?}: {stderr}");
        assert!(took < connect_timeout + Duration::from_secs(5), "{url} failed after {took:?}");
        // The daemon that reported the failure exits too.
        let mp = mountpoint.to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Command::new("pgrep").args(["-f", &mp]).output().is_ok_and(|o| o.status.success()) {
            assert!(Instant::now() < deadline, "a daemon for {url} is still running");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The NameNode's port silenced mid-mount, then answering again.
fn namenode_silent(env: &Env, ns: &NetNs, a: &[u8], b: &[u8]) {
    let root = env.mount.path();
    let timeout = env.fs.config().connect_timeout;
    let ttl = env.fs.config().metadata_ttl;
    let mut handle = std::fs::File::open(root.join("a.bin")).expect("open a.bin");
    let mut got = vec![0u8; BLOCK as usize];
    handle.read_exact(&mut got).expect("first MiB of a.bin");
    assert_eq!(std::fs::read_dir(root).expect("ls").count(), 5);

    ns.silence_port(port_of(env.dfs.uri())).expect("silence the NameNode");
    std::thread::sleep(ttl + Duration::from_millis(200));

    // One call waits for the NameNode (up to the connect timeout); calls meanwhile are answered
    // from what the mount knows, at once.
    std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            let started = Instant::now();
            let names = std::fs::read_dir(root).expect("ls with the NameNode silent").count();
            (names, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let md = std::fs::metadata(root.join("c.bin")).expect("stat beside a waiting ls");
        let took = started.elapsed();
        eprintln!("NameNode silent: stat beside a waiting ls in {took:?}");
        assert_eq!(md.len(), 4 * BLOCK + 5);
        assert!(took < Duration::from_secs(1), "a stat waited {took:?} behind a refresh");
        let (names, took) = waiting.join().expect("ls thread");
        assert_eq!(names, 5);
        assert!(took < timeout + Duration::from_secs(2), "ls took {took:?}");
    });
    std::thread::sleep(ttl + Duration::from_millis(200));
    // Listings and attributes: from what the mount knows, within the connect timeout.
    for round in 0..2 {
        let started = Instant::now();
        let names = std::fs::read_dir(root).expect("ls with the NameNode silent").count();
        let md = std::fs::metadata(root.join("b.bin")).expect("stat with the NameNode silent");
        let took = started.elapsed();
        eprintln!("NameNode silent: ls + stat #{round} in {took:?}");
        assert_eq!((names, md.len()), (5, b.len() as u64));
        assert!(took < timeout + Duration::from_secs(2), "ls + stat took {took:?}");
    }

    // The open handle keeps reading from the DataNodes.
    let started = Instant::now();
    handle.read_to_end(&mut got).expect("rest of a.bin with the NameNode silent");
    let took = started.elapsed();
    eprintln!("NameNode silent: rest of an open file in {took:?}");
    assert_eq!(sha(&got), sha(a), "bytes of an open handle while the NameNode is silent");
    assert!(took < timeout * 3 + Duration::from_secs(2), "reading on took {took:?}");
    drop(handle);

    // A new open fails within the connect timeout (nothing of b.bin is open).
    let started = Instant::now();
    let err = std::fs::File::open(root.join("b.bin")).expect_err("open needs the NameNode");
    let took = started.elapsed();
    eprintln!("NameNode silent: open failed after {took:?}: {err}");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(took < timeout * 2 + Duration::from_secs(2), "the open failed after {took:?}");

    // A directory the mount has not listed yet needs the NameNode: EIO within the timeout.
    let started = Instant::now();
    let err = std::fs::read_dir(root.join("sub")).and_then(|d| d.collect::<Result<Vec<_>, _>>());
    let took = started.elapsed();
    eprintln!("NameNode silent: ls of a directory not listed yet failed after {took:?}: {err:?}");
    assert_eq!(err.expect_err("ls sub needs the NameNode").raw_os_error(), Some(libc::EIO));
    assert!(took < timeout + Duration::from_secs(2), "ls of sub failed after {took:?}");

    // A process whose call waits on the NameNode is killable: fuser 0.18 ignores FUSE_INTERRUPT,
    // so the kernel waits for the daemon's answer, and every such answer is bounded by the
    // connect timeout (an `ls` sent SIGKILL once stayed in D state for 139 s).
    let cat = format!("cat {}", root.join("b.bin").display());
    let ls = format!("ls {}", root.join("sub").display());
    for shell in [cat, ls] {
        killed_while_waiting(&shell, timeout);
    }

    // Answering again: the same mount opens and reads (TCP retransmits may take a while).
    ns.clear().expect("un-silence");
    let started = Instant::now();
    let read = loop {
        match std::fs::read(root.join("b.bin")) {
            Ok(read) => break read,
            Err(e) if started.elapsed() < Duration::from_secs(40) => {
                eprintln!("NameNode back, not yet served: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("the mount did not serve again after the NameNode came back: {e}"),
        }
    };
    eprintln!("NameNode back: served again after {:?}", started.elapsed());
    assert_eq!(sha(&read), sha(b));
}

/// Runs `shell` (a call that waits on the silent NameNode), sends it SIGKILL once it is
/// waiting, and checks that it is gone within the connect timeout (plus slack).
fn killed_while_waiting(shell: &str, timeout: Duration) {
    let mut child = Command::new("sh").args(["-c", &format!("exec {shell}")]).spawn().expect("sh");
    std::thread::sleep(Duration::from_millis(300));
    let state = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    let state = state.rsplit(')').next().and_then(|s| s.split_whitespace().next()).unwrap_or("?");
    let waiting = child.try_wait().expect("try_wait").is_none();
    assert!(waiting, "`{shell}` finished before the kill: nothing was waiting");
    let started = Instant::now();
    child.kill().expect("SIGKILL");
    while child.try_wait().expect("try_wait").is_none() {
        let took = started.elapsed();
        assert!(took < timeout + Duration::from_secs(2), "`{shell}` alive {took:?} after SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "NameNode silent: `{shell}` (state {state}) gone {:?} after SIGKILL",
        started.elapsed()
    );
}

/// Every DataNode's port held to 400 kbit/s: a 256 KiB stripe takes about 5 s, more than the
/// 3 s attempt timeout, and its retries would pass the 6 s stripe deadline. Bytes keep
/// arriving, so the read is whole and right, only slow; timeouts counted from the start of an
/// attempt would fail it with EIO (what a herd on a shared link did to a loader's mmap: SIGBUS).
fn datanodes_slow(env: &Env, ns: &NetNs, d: &[u8]) {
    let root = env.mount.path();
    for addr in env.dfs.datanode_addrs() {
        ns.limit_port(port_of(addr), 400).expect("slow a DataNode");
    }
    let started = Instant::now();
    let read = std::fs::read(root.join("d.bin"));
    let took = started.elapsed();
    ns.clear().expect("unshape");
    eprintln!("DataNodes slow: read took {took:?}");
    let read = read.expect("a slow link is not an error");
    assert_eq!(sha(&read), sha(d));
    let config = env.fs.config();
    assert!(took > config.attempt_timeout, "{took:?}: the link was not slow enough to test this");
}

/// Every DataNode's port silenced: one EIO within the stripe deadline; then served again.
fn datanodes_silent(env: &Env, ns: &NetNs, c: &[u8]) {
    let root = env.mount.path();
    let deadline = env.fs.config().stripe_deadline;
    let file = std::fs::File::open(root.join("c.bin")).expect("open c.bin (the NameNode is up)");
    for addr in env.dfs.datanode_addrs() {
        ns.silence_port(port_of(addr)).expect("silence a DataNode");
    }
    let started = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let err = file.read_exact_at(&mut buf, 0).expect_err("every DataNode is silent");
    let took = started.elapsed();
    eprintln!("DataNodes silent: EIO after {took:?}");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // One stripe deadline (the kernel's re-request of the page fails at once), not two.
    assert!(took < deadline + deadline / 2, "EIO after {took:?}, deadline {deadline:?}");
    assert!(took >= deadline / 2, "EIO after {took:?}: the stripe was not tried");
    drop(file);

    ns.clear().expect("un-silence");
    let started = Instant::now();
    let read = loop {
        match std::fs::read(root.join("c.bin")) {
            Ok(read) => break read,
            Err(e) if started.elapsed() < Duration::from_secs(40) => {
                eprintln!("DataNodes back, not yet served: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("the mount did not serve again after the DataNodes came back: {e}"),
        }
    };
    eprintln!("DataNodes back: served again after {:?}", started.elapsed());
    assert_eq!(sha(&read), sha(c));
}
