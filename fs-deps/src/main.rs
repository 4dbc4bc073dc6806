//! `bootseer-deps`: CLI glue over [`bootseer_deps::run`]; in mount-helper form
//! (`bootseer-deps REF DIR -o …`, as `mount -t fuse.bootseer-deps` calls it) it serves one
//! snapshot layer, which is also how `run` and `mount` start their layer daemons.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bootseer_common::layer::SessionConfig;
use bootseer_common::layer::serve::{self, LAYER_KEYS, LayerMount, READ_AHEAD_KB};
use bootseer_common::mount::{self, DaemonOptions, MountArgs, MountConfig};
use bootseer_deps::key::Step;
use bootseer_deps::run::{self, CommandFailed, KeyOptions, StoreOptions};
use bootseer_deps::stack::DEFAULT_STATE_ROOT;
use clap::{Args, Parser, Subcommand};

/// Dependency snapshots: run a setup once, mount its result on every later start.
#[derive(Debug, Parser)]
#[command(name = "bootseer-deps", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct KeyArgs {
    /// Snapshot set name ([a-z0-9][a-z0-9._-]*).
    #[arg(long, default_value = "deps")]
    name: String,
    /// The directory the command changes (a venv, /usr/local, site-packages, or a root).
    #[arg(long)]
    target: PathBuf,
    /// A file whose bytes decide the result (repeatable): requirements, lock files, scripts.
    #[arg(long = "input", value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// An environment variable whose value decides the result (repeatable).
    #[arg(long = "env", value_name = "NAME")]
    env: Vec<String>,
    /// A JSON file of steps: [{"command": [...], "inputs": [...], "env": [...]}, …]; each
    /// step's key includes its parent's, and the mount stacks them in order.
    #[arg(long)]
    steps: Option<PathBuf>,
    /// Run the command chrooted into the target (/proc, /dev, resolv.conf, a tmpfs /tmp set up).
    #[arg(long)]
    chroot: bool,
    /// Salt: change it to disown every snapshot made before.
    #[arg(long, default_value = "")]
    salt: String,
    /// Override a platform fact: arch, libc, python, python_abi, cuda_driver (KEY=VALUE).
    #[arg(long = "platform", value_name = "KEY=VALUE")]
    platform: Vec<String>,
    /// The Python interpreter the command uses (default: TARGET/bin/python3, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Identity of what the target holds (e.g. the image digest) instead of a tree digest.
    #[arg(long)]
    base_digest: Option<String>,
    /// The command (one step), after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct StoreArgs {
    /// Store URL: file:///DIR, docker://HOST[:PORT]/REPO or hdfs://NN[:PORT]/DIR.
    #[arg(long)]
    store: String,
    /// Persistent block cache directory of the snapshot mounts.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Where per-target state lives (mount points, the writable top).
    #[arg(long, default_value = DEFAULT_STATE_ROOT)]
    state_dir: PathBuf,
    /// Deadline of each store operation, retries included (e.g. 30s).
    #[arg(long, default_value = "30s")]
    store_timeout: String,
    /// How long to wait for another node that is building the same snapshot.
    #[arg(long, default_value = "10m")]
    wait: String,
    /// Write the JSON summary here (layer daemons write FILE.step-N.json at unmount).
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Trace workload name of the snapshot mounts.
    #[arg(long, default_value = "default")]
    workload: String,
    /// When the store is down, install without it (nothing published) instead of failing.
    #[arg(long)]
    fallback_install: bool,
    /// Mount options for the snapshot mounts (allow_other, memory=…).
    #[arg(short = 'o', value_name = "OPTS")]
    options: Vec<String>,
    /// Bytes of file data per block of the snapshots this run publishes (k/M suffixes).
    #[arg(long, default_value = "256K")]
    block_size: String,
    /// Serve the snapshot mount's Prometheus metrics at http://HOST:PORT/metrics (one step
    /// only: each layer daemon needs a port of its own; also `-o metrics_addr=…`).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Hit: mount the snapshot over TARGET. Miss: run the command, capture, publish, mount.
    Run {
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Build and publish what is not stored yet (as `run` on a miss), then take the stack down:
    /// for a build node that fills the store ahead of the job's starts.
    Capture {
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print each step's key and its canonical input manifest as JSON.
    Key {
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Say, per step, whether it is stored, and if not, what differs from the nearest snapshot.
    Explain {
        #[command(flatten)]
        key: KeyArgs,
        /// Store URL.
        #[arg(long)]
        store: String,
    },
    /// Stack stored snapshots (step 1 first) over TARGET without running anything.
    Mount {
        /// The directory to cover.
        #[arg(long)]
        target: PathBuf,
        /// Snapshot set name.
        #[arg(long, default_value = "deps")]
        name: String,
        /// Keys, step 1 first.
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Take down everything `run` or `mount` stacked on TARGET, in order.
    Umount {
        /// The covered directory.
        target: PathBuf,
        /// Where per-target state lives.
        #[arg(long, default_value = DEFAULT_STATE_ROOT)]
        state_dir: PathBuf,
    },
    /// List the stored snapshots of a set (JSON).
    Ls {
        /// Store URL.
        #[arg(long)]
        store: String,
        /// Snapshot set name.
        #[arg(long, default_value = "deps")]
        name: String,
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
    /// Remove stored snapshots.
    Rm {
        /// Store URL.
        #[arg(long)]
        store: String,
        /// Snapshot set name.
        #[arg(long, default_value = "deps")]
        name: String,
        /// Keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

const SUBCOMMANDS: &[&str] = &[
    "run",
    "key",
    "explain",
    "mount",
    "umount",
    "ls",
    "rm",
    "help",
    "-h",
    "--help",
    "-V",
    "--version",
];

fn duration(s: &str) -> anyhow::Result<Duration> {
    bootseer_common::units::parse_duration(s).map_err(anyhow::Error::msg)
}

fn key_options(a: KeyArgs) -> anyhow::Result<KeyOptions> {
    let mut steps = Vec::new();
    if let Some(path) = &a.steps {
        let data = std::fs::read(path).with_context(|| format!("--steps {}", path.display()))?;
        steps = serde_json::from_slice::<Vec<Step>>(&data).with_context(|| {
            format!(
                "--steps {}: expected [{{\"command\": [...], \"inputs\": [...], \"env\": [...]}}]",
                path.display()
            )
        })?;
    }
    if !a.command.is_empty() {
        steps.push(Step { command: a.command, inputs: a.inputs, env: a.env });
    } else if a.steps.is_none() {
        anyhow::bail!("no command: give one after `--`, or --steps FILE");
    }
    Ok(KeyOptions {
        name: a.name,
        target: a.target,
        steps,
        chroot: a.chroot,
        salt: a.salt,
        platform: a.platform,
        python: a.python,
        base_digest: a.base_digest,
    })
}

/// The store settings of a run over `steps` snapshot layers.
fn store_options(a: StoreArgs, steps: usize) -> anyhow::Result<StoreOptions> {
    let parsed = mount::options::parse(&mount::options::split_all(&a.options), LAYER_KEYS)?;
    let mut layer_options = parsed.own.clone();
    if parsed.flags.allow_other {
        layer_options.push(("allow_other".into(), String::new()));
    }
    let flag = a.metrics_addr.as_deref().map(mount::options::parse_socket_addr).transpose();
    let flag = flag.map_err(|e| anyhow::anyhow!("--metrics-addr: {e}"))?;
    if let Some(addr) = flag.or(parsed.daemon.metrics_addr) {
        // Every step's layer daemon gets the same options, and a second one could not bind the
        // port: refuse before anything runs rather than fail at step 2's mount.
        if steps > 1 {
            anyhow::bail!("--metrics-addr serves one layer daemon; this stack has {steps} steps");
        }
        layer_options.push(("metrics_addr".into(), addr.to_string()));
    }
    Ok(StoreOptions {
        store: a.store,
        cache_dir: a.cache_dir,
        state_root: a.state_dir,
        store_timeout: duration(&a.store_timeout)?,
        wait: duration(&a.wait)?,
        summary: a.summary,
        workload: a.workload,
        fallback_install: a.fallback_install,
        layer_options,
        block_size: u32::try_from(
            bootseer_common::units::parse_size(&a.block_size).map_err(anyhow::Error::msg)?,
        )
        .context("--block-size too large")?,
    })
}

/// The mount-helper form: serve one snapshot layer.
fn serve_helper(args: &MountArgs) -> anyhow::Result<()> {
    let parsed = mount::options::parse(&args.options, LAYER_KEYS)?;
    let mut session = SessionConfig::default();
    for (k, v) in &parsed.own {
        serve::apply_layer_option(&mut session, k, v)?;
    }
    let mut config = MountConfig {
        subtype: "bootseer-deps".into(),
        read_ahead_kb: READ_AHEAD_KB,
        ..MountConfig::default()
    };
    config.apply(&parsed);
    let layer = LayerMount {
        reference: args.source.clone(),
        mountpoint: args.mountpoint.clone(),
        session,
        mount: config,
        summary: parsed.daemon.summary.clone(),
        print_summary: parsed.daemon.foreground,
    }
    .absolute();
    let run = DaemonOptions {
        foreground: parsed.daemon.foreground,
        log: parsed.daemon.log.clone(),
        log_filter: "bootseer_deps=info,bootseer_common=info",
        pidfile: parsed.daemon.pidfile.clone(),
        metrics_addr: parsed.daemon.metrics_addr,
    };
    mount::run_daemon(&run, |ready, signals| serve::serve_layer(&layer, ready, signals))
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let is_sub = args.first().and_then(|a| a.to_str()).is_some_and(|a| SUBCOMMANDS.contains(&a));
    let result = if !is_sub && let Some(helper) = MountArgs::parse_helper(&args) {
        serve_helper(&helper)
    } else {
        bootseer_common::telemetry::init("bootseer_deps=warn,bootseer_common=warn");
        dispatch(Cli::parse().command)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bootseer-deps: {e:#}");
            // A failed command's own status is the run's status (as if it had run directly).
            match e.downcast_ref::<CommandFailed>().and_then(|f| f.status.code()) {
                Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Prints a line on stdout; a closed pipe (`| head`) ends the output quietly.
fn out(line: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { key, store } => {
            let key = key_options(key)?;
            let report = run::run(&key, &store_options(store, key.steps.len())?)?;
            out(serde_json::to_string_pretty(&report)?);
        }
        Command::Capture { key, store } => {
            let key = key_options(key)?;
            let store = store_options(store, key.steps.len())?;
            let report = run::run(&key, &store)?;
            run::umount(&key.target, &store.state_root)?;
            out(serde_json::to_string_pretty(&report)?);
        }
        Command::Key { key } => {
            let manifests = run::manifests(&key_options(key)?)?;
            let all: Vec<_> = manifests
                .iter()
                .map(|m| serde_json::json!({ "step": m.step, "key": m.key(), "manifest": m }))
                .collect();
            out(serde_json::to_string_pretty(&all)?);
        }
        Command::Explain { key, store } => {
            let all = run::explain(&key_options(key)?, &store, Duration::from_secs(30))?;
            for e in &all {
                if e.hit {
                    out(format!("step {}: hit {}", e.step, e.key));
                } else {
                    match &e.nearest {
                        Some(n) => {
                            out(format!("step {}: miss {} (nearest stored: {n})", e.step, e.key))
                        }
                        None => out(format!("step {}: miss {}", e.step, e.key)),
                    }
                    for d in &e.differences {
                        out(format!("  {d}"));
                    }
                }
            }
        }
        Command::Mount { target, name, keys, store } => {
            run::mount(&target, &name, &keys, &store_options(store, keys.len())?)?;
        }
        Command::Umount { target, state_dir } => run::umount(&target, &state_dir)?,
        Command::Ls { store, name } => {
            let all = run::list(&store, &name, Duration::from_secs(30))?;
            out(serde_json::to_string_pretty(&all)?);
        }
        Command::Report { paths, json, svg } => {
            out(bootseer_common::report::run(&paths, json, svg.as_deref())?);
        }
        Command::Rm { store, name, keys } => {
            run::remove(&store, &name, &keys, Duration::from_secs(30))?;
        }
    }
    Ok(())
}
