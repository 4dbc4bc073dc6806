//! `bootseer-image`: CLI glue over [`bootseer_image::convert`] and [`bootseer_image::mount`].

use std::ffi::OsString;
use std::path::PathBuf;

use bootseer_common::mount::MountArgs;
use bootseer_image::convert::{self, ConvertConfig};
use bootseer_image::mount::{self, MountOptions, parse_size};
use bootseer_image::{SessionConfig, TraceMode};
use clap::{Parser, Subcommand};

/// Lazy container images over FUSE with hot-block record and replay.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Converts SOURCE into a bootseer image at DEST (file:///STORE/NAME:TAG,
    /// docker://HOST/REPO:TAG). Shows progress on stderr when it is a terminal.
    Convert {
        /// dir:PATH (a root directory), oci:DIR[:TAG] (an OCI image layout) or
        /// docker://HOST[:PORT]/REPO:TAG or …/REPO@sha256:HEX (an image in a registry; from an
        /// index, the image for --platform).
        source: String,
        /// Destination reference.
        dest: String,
        /// Bytes of file data per block (k/M suffixes).
        #[arg(long, default_value = "1M")]
        block_size: String,
        /// Print only the result, as JSON (no progress line).
        #[arg(long)]
        json: bool,
        /// The image to take from a multi-platform index, OS/ARCH[/VARIANT] [default: this
        /// host's, e.g. linux/amd64].
        #[arg(long)]
        platform: Option<String>,
        /// Threads that compress blocks [default: one fewer than the CPUs]; the image is the same
        /// whatever the count.
        #[arg(long)]
        threads: Option<usize>,
        /// Directory for the unlinked temp files that hold layers and blobs while they are
        /// converted [default: $TMPDIR, else /var/tmp].
        #[arg(long)]
        tmp_dir: Option<PathBuf>,
    },
    /// Mounts REF at MOUNTPOINT; returns once the mount is ready.
    Mount {
        /// Image reference.
        reference: String,
        /// Mount point.
        mountpoint: PathBuf,
        /// Persistent block cache directory.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Disk cache size (k/M/G).
        #[arg(long, default_value = "10G")]
        cache_size: String,
        /// Memory budget for blocks (k/M/G); default 32M with --cache-dir (the disk tier holds
        /// the blocks), 512M without.
        #[arg(long)]
        memory: Option<String>,
        /// Trace mode: auto (replay a stored trace, record and store), record, replay, off.
        #[arg(long, default_value = "auto")]
        trace: TraceMode,
        /// Workload name the trace is kept under.
        #[arg(long, default_value = "default")]
        workload: String,
        /// Store the trace this many seconds after mount instead of at unmount.
        #[arg(long)]
        trace_window: Option<u64>,
        /// Stay in the foreground.
        #[arg(short, long)]
        foreground: bool,
        /// Write the JSON summary here at unmount.
        #[arg(long)]
        summary: Option<PathBuf>,
        /// Daemon log file.
        #[arg(long)]
        log: Option<PathBuf>,
        /// FUSE worker threads (0: default).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Kernel read-ahead (also mmap's fault-around) on the mount, e.g. 1M [default: 128K;
        /// sequential readers get blocks ahead from the mount's own window].
        #[arg(long)]
        read_ahead: Option<String>,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics (read latency by origin, cache
        /// hits and misses, fetched bytes, errors).
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
        /// Mount options as in fstab: suid, dev, noexec, allow_other, or any key of the
        /// mount-helper form (the defaults are nosuid,nodev and only the mounter may read).
        #[arg(short = 'o', value_name = "OPTS")]
        options: Vec<String>,
    },
    /// Where a job start's time went, from the summaries of many nodes (files or directories):
    /// phases p50/p90/max, each filesystem's share, stragglers.
    Report {
        /// Summary files or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Also draw the timeline of every node as an SVG.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Stored traces.
    Trace {
        #[command(subcommand)]
        command: TraceCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TraceCommand {
    /// Prints what the stored trace of REF holds.
    Show {
        /// Image reference.
        reference: String,
        /// Workload name.
        #[arg(long, default_value = "default")]
        workload: String,
    },
}

const SUBCOMMANDS: &[&str] =
    &["convert", "mount", "trace", "report", "help", "-h", "--help", "-V", "--version"];

fn main() -> anyhow::Result<()> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let is_sub = args.first().and_then(|a| a.to_str()).is_some_and(|a| SUBCOMMANDS.contains(&a));
    if !is_sub && let Some(helper) = MountArgs::parse_helper(&args) {
        return mount::mount(mount::helper_options(&helper)?);
    }
    match Cli::parse().command {
        Command::Convert { source, dest, block_size, json, platform, threads, tmp_dir } => {
            let block_size = u32::try_from(parse_size(&block_size)?)
                .map_err(|_| anyhow::anyhow!("block size too large"))?;
            let mut config = ConvertConfig { block_size, ..Default::default() };
            if let Some(platform) = platform {
                config.platform = platform;
            }
            if let Some(threads) = threads {
                anyhow::ensure!(threads > 0, "--threads must be at least 1");
                config.threads = threads;
            }
            config.tmp_dir = tmp_dir;
            // The progress line goes to stderr, and only when it is a terminal.
            let report = convert::convert_with(&source, &dest, &config, !json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let bytes: u64 = report.blobs.iter().map(|b| b.data_len).sum();
                let stored: u64 = report.blobs.iter().map(|b| b.size).sum();
                println!(
                    "{}: {} inodes, {bytes} bytes in {} blob(s) ({stored} stored), metadata {}",
                    report.reference,
                    report.inodes,
                    report.blobs.len(),
                    report.metadata_digest
                );
            }
            Ok(())
        }
        Command::Mount {
            reference,
            mountpoint,
            cache_dir,
            cache_size,
            memory,
            trace,
            workload,
            trace_window,
            foreground,
            summary,
            log,
            threads,
            read_ahead,
            metrics_addr,
            options,
        } => {
            let mut o = MountOptions {
                reference,
                mountpoint,
                session: SessionConfig {
                    cache_dir,
                    cache_size: parse_size(&cache_size)?,
                    memory: memory.as_deref().map(parse_size).transpose()?,
                    trace,
                    workload,
                    trace_window: trace_window.map(std::time::Duration::from_secs),
                    ..SessionConfig::default()
                },
                ..MountOptions::default()
            };
            let d = &mut o.parsed.daemon;
            d.foreground = foreground;
            d.summary = summary;
            d.log = log;
            d.threads = (threads > 0).then_some(threads);
            d.metrics_addr = metrics_addr
                .as_deref()
                .map(bootseer_common::mount::options::parse_socket_addr)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--metrics-addr: {e}"))?;
            d.read_ahead_kb = read_ahead
                .as_deref()
                .map(|r| anyhow::Ok(u32::try_from(parse_size(r)? / 1024)?))
                .transpose()?;
            mount::apply_options(&mut o, &bootseer_common::mount::options::split_all(&options))?;
            mount::mount(o)
        }
        Command::Report { paths, json, svg } => {
            println!("{}", bootseer_common::report::run(&paths, json, svg.as_deref())?);
            Ok(())
        }
        Command::Trace { command: TraceCommand::Show { reference, workload } } => {
            println!("{}", mount::trace_show(&reference, &workload)?);
            Ok(())
        }
    }
}
