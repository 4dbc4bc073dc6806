//! The `bootseer-ckpt` command line, in two calling forms:
//!
//! - `bootseer-ckpt mount hdfs://HOST:PORT/DIR MOUNTPOINT [--stripe-size 8M …] [-f]`
//! - `bootseer-ckpt SOURCE MOUNTPOINT -o stripe_size=8M,concurrency=16,…` (mount helper form,
//!   as `mount -t fuse.bootseer-ckpt` and systemd call it).
//!
//! Both go through [`MountOptions`] → [`mount`]: daemonize (unless foreground) before any
//! thread exists → logging → one tokio runtime → HDFS store on it → [`CkptFs`] → the source is
//! checked to be a directory and listed within `--connect-timeout` (so a bad URL or a dead
//! NameNode fails the mount, not the first `ls`) → fuser session → `Ready` → [`serve`]
//! until SIGTERM or unmount → JSON summary to the log and `--summary FILE`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bootseer_common::mount::{
    self, DaemonOptions, MountArgs, MountConfig, MountFlags, Ready, ServeSignals,
};
use bootseer_common::store::hdfs::{HdfsOptions, HdfsStore};
use clap::{Parser, Subcommand};

use crate::config::{CkptConfig, parse_duration, parse_size};
use crate::fs::CkptFs;
use crate::fuse::CkptFuse;

/// Read checkpoints on HDFS through a FUSE mount, with striped concurrent reads.
#[derive(Debug, Parser)]
#[command(name = "bootseer-ckpt", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount an HDFS directory read-only.
    Mount(MountCmd),
}

#[derive(Debug, clap::Args)]
struct MountCmd {
    /// `hdfs://HOST:PORT/DIR` or `hdfs://NAMESERVICE/DIR` (through HADOOP_CONF_DIR).
    source: String,
    /// An existing directory to mount on.
    mountpoint: PathBuf,
    /// Bytes per striped read (capped at the HDFS block size).
    #[arg(long, value_parser = parse_size)]
    stripe_size: Option<u64>,
    /// Bytes per cached chunk: the alignment of a read that misses.
    #[arg(long, value_parser = parse_size)]
    chunk_size: Option<u64>,
    /// Bytes a handle reads in order before the mount prefetches ahead of it.
    #[arg(long, value_parser = parse_size)]
    sequential_after: Option<u64>,
    /// Stripe reads in flight at once.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Independently opened readers per file.
    #[arg(long)]
    readers: Option<usize>,
    /// Memory budget for cached stripes.
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// No longer used (prefetch follows sequential readers); still accepted.
    #[arg(long, value_parser = parse_size)]
    prefetch_threshold: Option<u64>,
    /// How long a read waits while no DataNode sends the mount anything, retries included,
    /// before EIO (at most 4 × this in all).
    #[arg(long, value_parser = parse_duration)]
    stripe_deadline: Option<Duration>,
    /// How long one attempt of a stripe may go without bytes before it is re-issued on a fresh
    /// reader.
    #[arg(long, value_parser = parse_duration)]
    attempt_timeout: Option<Duration>,
    /// The least wait for a slow stripe before a hedge read on another replica joins it.
    #[arg(long, value_parser = parse_duration)]
    hedge_after: Option<Duration>,
    /// How long listings are trusted.
    #[arg(long, value_parser = parse_duration)]
    metadata_ttl: Option<Duration>,
    /// How long the mount waits for the NameNode, and the bound of each later NameNode call.
    #[arg(long, value_parser = parse_duration)]
    connect_timeout: Option<Duration>,
    /// Start fetching files matching GLOB at mount (repeatable; `*.safetensors`: header first,
    /// then tensors in the order loaders read them), within one reader's window of --memory.
    #[arg(long, value_name = "GLOB")]
    prefetch: Vec<String>,
    /// Do not read `.safetensors` headers at open to prefetch tensors in name order.
    #[arg(long)]
    no_key_order: bool,
    /// Directory with core-site.xml/hdfs-site.xml (default: $HADOOP_CONF_DIR).
    #[arg(long)]
    conf_dir: Option<PathBuf>,
    /// Write the JSON summary here at unmount.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Log file of the daemon (default: none).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Stay in the foreground.
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (read latency by origin, stripe
    /// cache hits and misses, fetched bytes, errors).
    #[arg(long, value_name = "HOST:PORT", value_parser = mount::options::parse_socket_addr)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Mount options as in fstab (`allow_other`, `noexec`, or any key of the mount-helper
    /// form); the defaults are nosuid,nodev and only the mounter may read.
    #[arg(short = 'o', value_name = "OPTS")]
    options: Vec<String>,
}

/// Everything a mount needs, from either calling form.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The HDFS directory URL.
    pub source: String,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Read policy.
    pub config: CkptConfig,
    /// Hadoop configuration directory.
    pub conf_dir: Option<PathBuf>,
    /// Where to write the JSON summary at unmount.
    pub summary: Option<PathBuf>,
    /// The daemon's log file.
    pub log: Option<PathBuf>,
    /// Stay in the foreground.
    pub foreground: bool,
    /// `allow_other`, `suid`, `dev`, `exec` (safe defaults).
    pub flags: MountFlags,
    /// FUSE worker threads (`None`: the default).
    pub threads: Option<usize>,
    /// Kernel read-ahead of the mount in KiB (`-o read_ahead=`; `None`: [`READ_AHEAD_KB`]).
    pub read_ahead_kb: Option<u32>,
    /// Serve Prometheus metrics here (`--metrics-addr`, `-o metrics_addr=`).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl MountCmd {
    fn into_options(self) -> anyhow::Result<MountOptions> {
        let d = CkptConfig::default();
        MountOptions {
            config: CkptConfig {
                stripe_size: self.stripe_size.unwrap_or(d.stripe_size),
                chunk_size: self.chunk_size.unwrap_or(d.chunk_size),
                sequential_after: self.sequential_after.unwrap_or(d.sequential_after),
                concurrency: self.concurrency.unwrap_or(d.concurrency),
                readers: self.readers.unwrap_or(d.readers),
                memory_bytes: self.memory.unwrap_or(d.memory_bytes),
                prefetch_threshold: self.prefetch_threshold.unwrap_or(d.prefetch_threshold),
                stripe_deadline: self.stripe_deadline.unwrap_or(d.stripe_deadline),
                attempt_timeout: self.attempt_timeout.unwrap_or(d.attempt_timeout),
                hedge_after: self.hedge_after.unwrap_or(d.hedge_after),
                metadata_ttl: self.metadata_ttl.unwrap_or(d.metadata_ttl),
                connect_timeout: self.connect_timeout.unwrap_or(d.connect_timeout),
                prefetch: self.prefetch,
                key_order: !self.no_key_order,
                ..d
            },
            source: self.source,
            mountpoint: self.mountpoint,
            conf_dir: self.conf_dir,
            summary: self.summary,
            log: self.log,
            foreground: self.foreground,
            flags: MountFlags::default(),
            threads: None,
            read_ahead_kb: None,
            metrics_addr: self.metrics_addr,
        }
        .with_options(&mount::options::split_all(&self.options))
    }
}

/// The kernel read-ahead a checkpoint mount sets, in KiB: 512, not the 4 MiB the image mounts
/// use. This daemon reads ahead itself, knowing what the kernel cannot: a sequential run's
/// window, the rest of a tensor a pread began (see `CkptFs::advance_window`), the next tensors
/// by name. The kernel's own read-ahead after a pread of one tensor asks for up to 8 MiB past
/// its end; on 4 DataNodes at 200 Mbit/s, fetching that spill cut 20 random tensors to 27–33
/// MB/s, where at 512 KiB they ran at 39–41 MB/s; a sequential read lost ≤ 5 % (63 vs 67 MB/s)
/// and a key-order load 7 % (62 vs 67). `-o read_ahead=` sets another.
pub const READ_AHEAD_KB: u32 = 512;

/// The `-o` keys of a checkpoint mount beyond the standard and daemon ones.
pub const CKPT_KEYS: &[&str] = &[
    "stripe_size",
    "chunk_size",
    "sequential_after",
    "concurrency",
    "readers",
    "memory",
    "prefetch_threshold",
    "stripe_deadline",
    "attempt_timeout",
    "hedge_after",
    "metadata_ttl",
    "connect_timeout",
    "conf_dir",
    "prefetch",
    "no_key_order",
];

/// Turns mount-helper arguments into [`MountOptions`] (the defaults, then `-o`).
pub fn helper_options(args: &MountArgs) -> anyhow::Result<MountOptions> {
    MountOptions {
        source: args.source.clone(),
        mountpoint: args.mountpoint.clone(),
        config: CkptConfig::default(),
        conf_dir: None,
        summary: None,
        log: None,
        foreground: false,
        flags: MountFlags::default(),
        threads: None,
        read_ahead_kb: None,
        metrics_addr: None,
    }
    .with_options(&args.options)
}

impl MountOptions {
    /// Folds `-o` options into these through the one parser every binary uses: standard flags,
    /// daemon keys, [`CKPT_KEYS`]; an unknown key is an error naming it.
    pub fn with_options(mut self, options: &[(String, String)]) -> anyhow::Result<Self> {
        let parsed = mount::options::parse(options, CKPT_KEYS)?;
        let size = |k: &str, v: &str| parse_size(v).map_err(|e| anyhow::anyhow!("-o {k}: {e}"));
        let dur = |k: &str, v: &str| parse_duration(v).map_err(|e| anyhow::anyhow!("-o {k}: {e}"));
        let num = |k: &str, v: &str| v.parse::<usize>().with_context(|| format!("-o {k}={v}"));
        for (k, v) in &parsed.own {
            let c = &mut self.config;
            match k.as_str() {
                "stripe_size" => c.stripe_size = size(k, v)?,
                "chunk_size" => c.chunk_size = size(k, v)?,
                "sequential_after" => c.sequential_after = size(k, v)?,
                "concurrency" => c.concurrency = num(k, v)?,
                "readers" => c.readers = num(k, v)?,
                "memory" => c.memory_bytes = size(k, v)?,
                "prefetch_threshold" => c.prefetch_threshold = size(k, v)?,
                "stripe_deadline" => c.stripe_deadline = dur(k, v)?,
                "attempt_timeout" => c.attempt_timeout = dur(k, v)?,
                "hedge_after" => c.hedge_after = dur(k, v)?,
                "metadata_ttl" => c.metadata_ttl = dur(k, v)?,
                "connect_timeout" => c.connect_timeout = dur(k, v)?,
                "conf_dir" => self.conf_dir = Some(v.into()),
                "prefetch" if !v.is_empty() => c.prefetch.push(v.clone()),
                "prefetch" => anyhow::bail!("-o prefetch needs a glob (prefetch=*.safetensors)"),
                "no_key_order" => c.key_order = false,
                other => anyhow::bail!("mount option {other:?} is listed but not handled"),
            }
        }
        self.flags = parsed.flags;
        self.foreground |= parsed.daemon.foreground;
        self.summary = parsed.daemon.summary.or(self.summary);
        self.log = parsed.daemon.log.or(self.log);
        self.threads = parsed.daemon.threads.or(self.threads);
        self.read_ahead_kb = parsed.daemon.read_ahead_kb.or(self.read_ahead_kb);
        self.metrics_addr = parsed.daemon.metrics_addr.or(self.metrics_addr);
        Ok(self)
    }
}

/// The binary's entry point: parses either calling form and mounts.
pub fn run() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let helper_form = args
        .first()
        .and_then(|a| a.to_str())
        .is_some_and(|a| a != "mount" && !a.starts_with('-') && a != "help");
    let options = if helper_form {
        let parsed = MountArgs::parse_helper(&args)
            .context("usage: bootseer-ckpt SOURCE MOUNTPOINT [-o k=v,…]")
            .and_then(|a| helper_options(&a));
        match parsed {
            Ok(o) => o,
            Err(e) => {
                eprintln!("bootseer-ckpt: {e:#}");
                return ExitCode::from(2);
            }
        }
    } else {
        let parsed = match Cli::parse().command {
            Command::Mount(cmd) => cmd.into_options(),
        };
        match parsed {
            Ok(o) => o,
            Err(e) => {
                eprintln!("bootseer-ckpt: {e:#}");
                return ExitCode::from(2);
            }
        }
    };
    match mount(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bootseer-ckpt: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Mounts and serves until unmounted; see the module doc for the order of steps.
pub fn mount(options: MountOptions) -> anyhow::Result<()> {
    // Range-read buffers (up to a stripe) must go back to the kernel when freed, and freed
    // memory must not be kept per arena, or RSS grows past --memory (with the host's core
    // count); first thing, before any thread exists.
    mount::return_freed_buffers();
    mount::one_malloc_arena();
    // The daemon changes to `/` once forked: relative paths are taken from where it was run.
    let options = MountOptions {
        mountpoint: mount::absolute(&options.mountpoint),
        summary: options.summary.as_deref().map(mount::absolute),
        conf_dir: options.conf_dir.as_deref().map(mount::absolute),
        ..options
    };
    let run = DaemonOptions {
        foreground: options.foreground,
        log: options.log.clone(),
        log_filter: "info",
        pidfile: None,
        metrics_addr: options.metrics_addr,
    };
    mount::run_daemon(&run, |ready, signals| serve_mount(&options, ready, signals))
}

fn serve_mount(
    options: &MountOptions,
    ready: &mut Ready,
    signals: ServeSignals,
) -> anyhow::Result<()> {
    mount::check_mountpoint(&options.mountpoint)?;
    bootseer_common::timeline::describe("ckpt", &options.source);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bootseer-ckpt-rt")
        .build()
        .context("starting the tokio runtime")?;
    let hdfs_options = HdfsOptions { config_dir: options.conf_dir.clone(), ..Default::default() };
    let store = runtime
        .block_on(HdfsStore::open_with(&options.source, &hdfs_options))
        .with_context(|| format!("opening {}", options.source))?;
    let fs = CkptFs::new(store, options.config.clone(), runtime.handle().clone())?;
    // The source must be a directory the NameNode answers for within the connect timeout: a
    // typo, a file or a dead NameNode fails the mount, never mounts an empty directory or hangs.
    runtime.block_on(fs.check_source()).with_context(|| format!("mounting {}", options.source))?;
    // Beside the mount, not before it: `Ready` does not wait for the NameNode opens this needs.
    if !options.config.prefetch.is_empty() {
        let fs = fs.clone();
        runtime.spawn(async move { fs.warm().await });
    }
    let mut config = MountConfig {
        fsname: options.source.clone(),
        subtype: "bootseer-ckpt".into(),
        flags: options.flags,
        read_ahead_kb: options.read_ahead_kb.unwrap_or(READ_AHEAD_KB),
        ..MountConfig::default()
    };
    if let Some(t) = options.threads {
        config.threads = t;
    }
    let adapter = CkptFuse::new(fs.clone(), runtime.handle().clone(), config.clone());
    let path = options.summary.as_deref();
    let served =
        mount::mount_and_serve(adapter, &options.mountpoint, &config, ready, signals, || {
            let event = "summary on request (SIGUSR1)";
            if let Err(e) = mount::publish_summary(&fs.summary(), path, event) {
                tracing::warn!(error = %e, "publishing the summary");
            }
        });
    mount::publish_summary(&fs.summary(), path, "unmounted").context("writing the summary")?;
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_options_parse_and_refuse_unknown_keys() {
        let args = MountArgs {
            source: "hdfs://nn:8020/ckpt".into(),
            mountpoint: "/mnt".into(),
            options: vec![
                ("ro".into(), String::new()),
                ("stripe_size".into(), "4M".into()),
                ("readers".into(), "8".into()),
                ("stripe_deadline".into(), "10s".into()),
                ("connect_timeout".into(), "3s".into()),
                ("prefetch".into(), "*.safetensors".into()),
                ("prefetch".into(), "run/**/*.pt".into()),
            ],
        };
        let o = helper_options(&args).expect("valid options");
        assert_eq!((o.config.stripe_size, o.config.readers), (4 << 20, 8));
        assert_eq!(o.config.stripe_deadline, Duration::from_secs(10));
        assert_eq!(o.config.connect_timeout, Duration::from_secs(3));
        assert_eq!(o.config.prefetch, ["*.safetensors", "run/**/*.pt"]);
        assert!(o.config.key_order, "key-order prefetch is on unless asked off");
        let off =
            MountArgs { options: vec![("no_key_order".into(), String::new())], ..args.clone() };
        assert!(!helper_options(&off).expect("no_key_order").config.key_order);
        let empty = MountArgs { options: vec![("prefetch".into(), String::new())], ..args.clone() };
        assert!(helper_options(&empty).is_err());
        let bad = MountArgs { options: vec![("bogus".into(), "1".into())], ..args };
        assert!(helper_options(&bad).is_err());
    }
}
