//! What the `bootseer-image` binary runs: `convert`, `mount` (also the mount-helper form) and
//! `trace show`. Plain config structs in, `anyhow` out; `main.rs` only parses.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bootseer_common::mount::{self, MountArgs, MountConfig, Ready};
use bootseer_common::store::{self, OpenOptions};

use crate::convert::{self, ConvertConfig};
use crate::fuse::ImageFuse;
use crate::progress::{Progress, ProgressLine};
use crate::reference::ImageRef;
use crate::session::{self, ImageSession, SessionConfig, TraceMode};

/// `mount` options.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Image reference.
    pub reference: String,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Cache, trace and store settings.
    pub session: SessionConfig,
    /// Stay in the foreground (no daemon).
    pub foreground: bool,
    /// Write the JSON summary here at unmount.
    pub summary: Option<PathBuf>,
    /// Daemon log file (stderr of the daemon).
    pub log: Option<PathBuf>,
    /// FUSE worker threads (0: the default).
    pub threads: usize,
    /// Kernel read-ahead in KiB (`None`: [`READ_AHEAD_KB`]).
    pub read_ahead_kb: Option<u32>,
}

/// Kernel read-ahead of an image mount, in KiB: small, because it is also mmap's fault-around
/// (see `fs.rs`: streams get their blocks ahead from the filesystem's own window). Measured with
/// scripts/bench/image-startup at 200 Mbit/s: 4 MiB fetched 48.7 MB for the Python start,
/// 128 KiB 37.1 MB.
pub const READ_AHEAD_KB: u32 = 128;

/// Parses a read-ahead size (`128K`, `4M`) into KiB.
pub fn parse_read_ahead(s: &str) -> anyhow::Result<u32> {
    u32::try_from(parse_size(s)? / 1024).context("read-ahead too large")
}

/// Parses `10G`, `512M`, `64k` or plain bytes (the parser every bootseer binary uses).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    bootseer_common::units::parse_size(s).map_err(anyhow::Error::msg)
}

/// The options of the mount-helper form (`-o cache_dir=…,trace=…`); standard mount flags
/// (`ro`, `nodev`, …) are accepted and ignored (the mount is always read-only).
pub fn helper_options(args: &MountArgs) -> anyhow::Result<MountOptions> {
    let mut o = MountOptions {
        reference: args.source.clone(),
        mountpoint: args.mountpoint.clone(),
        ..MountOptions::default()
    };
    for (k, v) in &args.options {
        match k.as_str() {
            "cache_dir" => o.session.cache_dir = Some(v.into()),
            "cache_size" => o.session.cache_size = parse_size(v)?,
            "memory" => o.session.memory = parse_size(v)?,
            "trace" => {
                o.session.trace = <TraceMode as clap::ValueEnum>::from_str(v, true)
                    .map_err(|e| anyhow::anyhow!("trace={v}: {e}"))?
            }
            "workload" => o.session.workload = v.clone(),
            "trace_window" => {
                o.session.trace_window = Some(std::time::Duration::from_secs(
                    v.parse().context("trace_window (seconds)")?,
                ))
            }
            "summary" => o.summary = Some(v.into()),
            "log" => o.log = Some(v.into()),
            "threads" => o.threads = v.parse().context("threads")?,
            "read_ahead" => o.read_ahead_kb = Some(parse_read_ahead(v)?),
            "foreground" => o.foreground = true,
            _ => {}
        }
    }
    Ok(o)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bootseer-image-rt")
        .build()
        .context("starting the tokio runtime")
}

/// `convert SOURCE DEST`: returns the report.
pub fn convert(
    source: &str,
    dest: &str,
    config: &ConvertConfig,
) -> anyhow::Result<convert::ConvertReport> {
    convert_with(source, dest, config, false)
}

/// [`convert`], drawing a progress line on stderr when `show_progress` is set and stderr is a
/// terminal (so never into a pipe, a log file or a test's captured output).
pub fn convert_with(
    source: &str,
    dest: &str,
    config: &ConvertConfig,
    show_progress: bool,
) -> anyhow::Result<convert::ConvertReport> {
    let dest = ImageRef::parse(dest)?;
    let progress = Arc::new(Progress::default());
    // Dropped on every return: an error message then starts on a line of its own.
    let line = (show_progress && std::io::stderr().is_terminal())
        .then(|| ProgressLine::start(progress.clone(), Box::new(std::io::stderr())));
    let (meta, blobs) = convert::build_with(source, config, &progress)?;
    let rt = runtime()?;
    let report = rt.block_on(async {
        let store = store::open(&dest.store_url, &OpenOptions::default())
            .await
            .with_context(|| format!("opening {}", dest.store_url))?;
        anyhow::Ok(convert::push_with(&store, &dest, &meta, blobs, &progress).await?)
    })?;
    if let Some(line) = line {
        line.finish();
    }
    Ok(report)
}

/// `trace show REF`: the summary of the stored trace, as JSON-able text.
pub fn trace_show(reference: &str, workload: &str) -> anyhow::Result<String> {
    let image = ImageRef::parse(reference)?;
    let key = image.trace_key(workload)?;
    let rt = runtime()?;
    rt.block_on(async {
        let store = store::open(&image.store_url, &OpenOptions::default()).await?;
        match session::load_trace(&store, &image, &key).await? {
            Some(t) => Ok(format!("{key}\n{}", t.summary())),
            None => anyhow::bail!("no trace stored under {key} in {}", image.store_url),
        }
    })
}

/// `mount`: daemonizes unless `foreground`, mounts, serves until unmount or a signal, then
/// stores the trace and writes the summary.
pub fn mount(options: MountOptions) -> anyhow::Result<()> {
    let mut ready = if options.foreground {
        Ready::foreground()
    } else {
        // Before any thread or runtime exists (daemonize's precondition).
        mount::daemonize(options.log.as_deref()).context("daemonizing")?
    };
    // Before any thread exists, so every thread inherits the mask (see ServeSignals).
    let signals = mount::ServeSignals::block().context("blocking signals")?;
    bootseer_common::telemetry::init("bootseer_image=info,bootseer_common=info");
    match mount_inner(&options, &mut ready, signals) {
        Ok(()) => Ok(()),
        Err(e) => {
            ready.failed(&format!("{e:#}"));
            Err(e)
        }
    }
}

fn mount_inner(
    options: &MountOptions,
    ready: &mut Ready,
    signals: mount::ServeSignals,
) -> anyhow::Result<()> {
    let rt = runtime()?;
    let session = rt
        .block_on(ImageSession::open(&options.reference, options.session.clone()))
        .with_context(|| format!("loading {}", options.reference))?;
    let root = nix::unistd::geteuid().is_root();
    let mut config = MountConfig {
        fsname: options.reference.clone(),
        subtype: "bootseer-image".into(),
        dev_suid: root,
        ..MountConfig::default()
    };
    if options.threads > 0 {
        config.threads = options.threads;
    }
    config.read_ahead_kb = options.read_ahead_kb.unwrap_or(READ_AHEAD_KB);
    let fuse = ImageFuse::new(session.fs(), rt.handle().clone(), config.clone());
    let bg = fuser::spawn_mount(fuse, &options.mountpoint, &config.fuser_config())
        .with_context(|| format!("mounting at {}", options.mountpoint.display()))?;
    if root
        && config.read_ahead_kb > 0
        && let Err(e) = mount::raise_read_ahead(&options.mountpoint, config.read_ahead_kb)
    {
        tracing::warn!(error = %e, "could not raise read-ahead");
    }
    tracing::info!(image = %options.reference, mountpoint = %options.mountpoint.display(),
        replay = session.has_trace(), "mounted");
    ready.ready();
    let summary_path = options.summary.as_deref();
    mount::serve(bg, &options.mountpoint, signals, || {
        // SIGUSR1: the summary so far, where the one at unmount goes.
        let event = "summary on request (SIGUSR1)";
        if let Err(e) = mount::publish_summary(&session.snapshot(), summary_path, event) {
            tracing::warn!(error = %e, "publishing the summary");
        }
    })
    .context("serving")?;
    let summary = rt.block_on(session.finish())?;
    let json = mount::publish_summary(&summary, summary_path, "unmounted")
        .context("writing the summary")?;
    if options.foreground {
        println!("{json}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512").expect("plain"), 512);
        assert_eq!(parse_size("64k").expect("k"), 64 << 10);
        assert_eq!(parse_size("10G").expect("G"), 10 << 30);
        assert!(parse_size("1x").is_err());
        assert!(parse_size("G").is_err());
    }

    #[test]
    fn helper_options_map() {
        let args = MountArgs {
            source: "file:///s/a:v1".into(),
            mountpoint: "/m".into(),
            options: vec![
                ("ro".into(), String::new()),
                ("cache_dir".into(), "/c".into()),
                ("trace".into(), "replay".into()),
                ("memory".into(), "1G".into()),
            ],
        };
        let o = helper_options(&args).expect("options");
        assert_eq!(o.session.trace, TraceMode::Replay);
        assert_eq!(o.session.memory, 1 << 30);
        assert_eq!(o.session.cache_dir, Some(PathBuf::from("/c")));
    }
}
