//! [`NetNs`]: a private network namespace for tests that must shape or stall real traffic with
//! `tc` without touching the host's loopback (other tests keep running beside them).
//!
//! ```text
//!   let ns = NetNs::create()?;   // ip netns add bootseer-test-PID-N; lo up
//!   ns.enter()?;                 // this thread (and what it spawns from now on) is inside:
//!                                // a MiniDFS JVM, a tokio runtime, FUSE session threads
//!   ns.limit_port(port, 8)?;     // what local port `port` sends is held to 8 kbit/s
//!   ns.silence_port(port)?;      // … or dropped: a peer that accepts and never answers
//!   ns.clear()?;                 // every limit and silence lifted
//!   drop(ns);                    // ip netns del (the namespace lives on while used)
//! ```
//!
//! Only the network namespace changes: FUSE mounts made from inside stay visible to every
//! thread of the test. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN), `ip` and `tc` (iproute2) and
//! the `sch_htb` qdisc; without them [`NetNs::create`] fails and the test goes through
//! [`super::require_real`].

use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace named `bootseer-test-PID-N`, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// Classes added by [`NetNs::limit_port`] so far.
    classes: Mutex<u32>,
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is iproute2 installed?)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NetNs {
    /// Creates the namespace and brings its loopback up.
    pub fn create() -> anyhow::Result<Self> {
        let name = format!(
            "bootseer-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name])?;
        let ns = NetNs { name, classes: Mutex::new(0) };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec` / `nsenter --net=/run/netns/NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves the calling thread into the namespace. Threads and processes it starts afterwards
    /// inherit it; other threads of the process are not affected.
    pub fn enter(&self) -> anyhow::Result<()> {
        let path = format!("/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {path}"))?;
        Ok(())
    }

    /// Runs `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Holds what local TCP port `port` sends on the loopback to `kbit` kbit/s (a tc htb class
    /// matched on the source port); other traffic is not limited. A few kbit/s is a stalled
    /// peer: connections open, requests arrive, replies trickle.
    pub fn limit_port(&self, port: u16, kbit: u64) -> anyhow::Result<()> {
        self.shape_port(port, kbit, false)
    }

    /// Drops everything local TCP port `port` sends on the loopback (its SYN-ACKs, ACKs and
    /// replies): a server that is there and never answers. Other traffic is not touched.
    /// (The class's leaf is a `pfifo` of length 0, which drops every packet it is given; this
    /// needs no tc action modules.)
    pub fn silence_port(&self, port: u16) -> anyhow::Result<()> {
        self.shape_port(port, 8, true)
    }

    /// Lifts every limit and silence of this namespace.
    pub fn clear(&self) -> anyhow::Result<()> {
        let mut classes = self.classes.lock().unwrap_or_else(|p| p.into_inner());
        if *classes > 0 {
            self.exec(&["tc", "qdisc", "del", "dev", "lo", "root"])?;
            *classes = 0;
        }
        Ok(())
    }

    fn shape_port(&self, port: u16, kbit: u64, drop_all: bool) -> anyhow::Result<()> {
        let mut classes = self.classes.lock().unwrap_or_else(|p| p.into_inner());
        if *classes == 0 {
            // No default class: traffic no filter matches passes unshaped.
            self.exec(&["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb"])?;
        }
        *classes += 1;
        let classid = format!("1:{}", 10 + *classes);
        let rate = format!("{kbit}kbit");
        self.exec(&[
            "tc", "class", "add", "dev", "lo", "parent", "1:", "classid", &classid, "htb", "rate",
            &rate, "ceil", &rate, "quantum", "1514",
        ])?;
        if drop_all {
            let handle = format!("{}:", 100 + *classes);
            self.exec(&[
                "tc", "qdisc", "add", "dev", "lo", "parent", &classid, "handle", &handle, "pfifo",
                "limit", "0",
            ])?;
        }
        let port = port.to_string();
        self.exec(&[
            "tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1",
            "u32", "match", "ip", "sport", &port, "0xffff", "flowid", &classid,
        ])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(err) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("leaving network namespace {}: {err:#}", self.name);
        }
    }
}
