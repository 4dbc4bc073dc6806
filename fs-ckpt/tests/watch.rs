//! `--metrics-addr` on a real checkpoint mount (the binary over a MiniDFS; CI runs it with
//! `BOOTSEER_REQUIRE_REAL=1`): the scrape's read histogram and served bytes agree with the JSON
//! summary the daemon writes at unmount (its own atomics, not the recorder).

mod support;

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use bootseer_common::mount::is_mounted;
use bootseer_common::testing::prom::{free_port, scrape};
use support::{BLOCK, bytes, sha};

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1500 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn metrics_addr_serves_ckpt_read_latency_and_agrees_with_the_summary() {
    let Some(dfs) = support::start_dfs() else { return };
    let data = bytes(7, 3 * BLOCK as usize + 99);
    let Some(env) = support::setup(dfs, &[("model.bin", &data)], support::test_config()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let summary = dir.path().join("summary.json");
    let addr = free_port().expect("port");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_bootseer-ckpt"))
        .args(["mount", &env.url])
        .arg(&mnt)
        .arg("--conf-dir")
        .arg(env.dfs.conf_dir())
        .arg("--summary")
        .arg(&summary)
        .args(["-f", "--metrics-addr", &addr.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for("the mount", || {
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("the daemon exited before mounting: {status}");
        }
        is_mounted(&mnt)
    });
    let path = mnt.join("model.bin");
    let read = std::fs::read(&path);
    // Page cache dropped: a second pass asks the mount again.
    if let Ok(f) = std::fs::File::open(&path) {
        // SAFETY: a valid open descriptor; DONTNEED only drops clean cached pages.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    let again = std::fs::read(&path);
    // A read's observation is recorded after its reply reaches the kernel, so the reader can
    // return before its last read is counted: scrape until two scrapes 100 ms apart agree.
    let reads = |m: &anyhow::Result<bootseer_common::testing::prom::Scrape>| {
        m.as_ref().ok().map(|m| m.sum("fuse_read_latency_count", &[]))
    };
    let mut m = scrape(addr);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let next = scrape(addr);
        let settled = reads(&next).is_some() && reads(&next) == reads(&m);
        m = next;
        if settled {
            break;
        }
    }
    bootseer_common::testing::fuse::umount_now(&mnt);
    let status = daemon.wait().expect("wait");
    assert!(status.success(), "daemon {status}");
    assert_eq!(sha(&read.expect("read")), sha(&data));
    assert_eq!(sha(&again.expect("read again")), sha(&data));
    let m = m.expect("scrape");
    wait_for("the summary", || std::fs::metadata(&summary).is_ok_and(|m| m.len() > 0));
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).expect("summary")).expect("json");
    let num = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("{k} in {s}"));

    let count = |o: &str| m.sum("fuse_read_latency_count", &[("origin", o)]);
    assert!(count("demand") >= 1.0, "no read waited on HDFS");
    assert_eq!(count("disk"), 0.0, "a checkpoint mount has no disk tier");
    // Every read the daemon answered is one observation and its bytes, as the summary counts.
    assert_eq!(num("read_errors"), 0.0, "{s}");
    assert_eq!(m.sum("fuse_read_latency_count", &[]), num("reads"), "{s}");
    assert_eq!(m.sum("fuse_read_bytes", &[]), num("bytes_read"), "{s}");
    assert!(num("bytes_read") >= 2.0 * data.len() as f64, "{s}");
}
