//! Serving one layer as a mount daemon: what `bootseer-image mount` and the per-snapshot
//! daemons of `bootseer-deps` both run.
//!
//! ```text
//!  LayerMount (reference, SessionConfig, MountConfig, summary)
//!    ─► runtime ─► LayerSession::open (index, metadata, stored trace ─► replay task)
//!    ─► LayerFuse ─► mount::mount_and_serve (ready ─► serve; SIGUSR1 ─► summary so far)
//!    ─► LayerSession::finish (stop replay, store the merged trace) ─► summary JSON
//! ```
//!
//! [`LAYER_KEYS`] and [`apply_layer_option`] are the `-o` keys of a layer mount, parsed after
//! `mount::options::parse` has taken the standard ones.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::layer::fuse::LayerFuse;
use crate::layer::session::{LayerSession, SessionConfig, TraceMode};
use crate::mount::{self, MountConfig, Ready, ServeSignals};

/// Kernel read-ahead of a layer mount, in KiB: small, because it is also mmap's fault-around
/// (see `fs.rs`: streams get their blocks ahead from the filesystem's own window). Measured with
/// scripts/bench/image-startup at 200 Mbit/s: 4 MiB fetched 48.7 MB for the Python start,
/// 128 KiB 37.1 MB.
pub const READ_AHEAD_KB: u32 = 128;

/// The `-o` keys of a layer mount beyond the standard and daemon ones.
pub const LAYER_KEYS: &[&str] =
    &["cache_dir", "cache_size", "memory", "trace", "workload", "trace_window"];

/// Applies one of [`LAYER_KEYS`] to `session`.
pub fn apply_layer_option(
    session: &mut SessionConfig,
    key: &str,
    value: &str,
) -> anyhow::Result<()> {
    let size = |v: &str| crate::units::parse_size(v).map_err(anyhow::Error::msg);
    match key {
        "cache_dir" => session.cache_dir = Some(value.into()),
        "cache_size" => session.cache_size = size(value).context("cache_size")?,
        "memory" => session.memory = Some(size(value).context("memory")?),
        "trace" => {
            session.trace = value.parse().map_err(|e| anyhow::anyhow!("trace={value}: {e}"))?
        }
        "workload" => session.workload = value.to_string(),
        "trace_window" => {
            session.trace_window =
                Some(Duration::from_secs(value.parse().context("trace_window (seconds)")?))
        }
        other => anyhow::bail!("not a layer mount option: {other}"),
    }
    Ok(())
}

/// One layer mount.
#[derive(Debug, Clone)]
pub struct LayerMount {
    /// Layer reference (`file:///STORE/NAME:TAG`, `docker://HOST/REPO:TAG`, …).
    pub reference: String,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Cache, trace and store settings.
    pub session: SessionConfig,
    /// FUSE side (fsname is set to the reference; subtype names the binary).
    pub mount: MountConfig,
    /// Where the JSON summary goes (at unmount and on SIGUSR1).
    pub summary: Option<PathBuf>,
    /// Print the summary on stdout at unmount (foreground runs).
    pub print_summary: bool,
}

impl LayerMount {
    /// The mount point, cache directory and summary made absolute: call before
    /// [`mount::run_daemon`], which changes to `/` (`bootseer-image mount REF mnt` must mount
    /// at `./mnt`, not `/mnt`).
    pub fn absolute(mut self) -> Self {
        self.mountpoint = mount::absolute(&self.mountpoint);
        self.summary = self.summary.as_deref().map(mount::absolute);
        self.session.cache_dir = self.session.cache_dir.as_deref().map(mount::absolute);
        self
    }
}

/// A multi-threaded runtime named after `what`.
pub fn runtime(what: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(format!("{what}-rt"))
        .build()
        .context("starting the tokio runtime")
}

/// Loads, mounts and serves `m` until unmount or a signal, then stores the trace and writes the
/// summary. Run inside [`mount::run_daemon`].
pub fn serve_layer(m: &LayerMount, ready: &mut Ready, signals: ServeSignals) -> anyhow::Result<()> {
    // Before the runtime's threads: RSS within the budget whatever the host's core count.
    mount::one_malloc_arena();
    mount::check_mountpoint(&m.mountpoint)?;
    let kind = m.mount.subtype.strip_prefix("bootseer-").unwrap_or(&m.mount.subtype);
    crate::timeline::describe(kind, &m.reference);
    let rt = runtime(&m.mount.subtype)?;
    let session = rt
        .block_on(LayerSession::open(&m.reference, m.session.clone()))
        .with_context(|| format!("loading {}", m.reference))?;
    let mut config = m.mount.clone();
    config.fsname = m.reference.clone();
    tracing::info!(layer = %m.reference, replay = session.has_trace(), "loaded");
    let fuse = LayerFuse::new(session.fs(), rt.handle().clone(), config.clone());
    let summary_path = m.summary.as_deref();
    mount::mount_and_serve(fuse, &m.mountpoint, &config, ready, signals, || {
        // SIGUSR1: the summary so far, where the one at unmount goes.
        let event = "summary on request (SIGUSR1)";
        if let Err(e) = mount::publish_summary(&session.snapshot(), summary_path, event) {
            tracing::warn!(error = %e, "publishing the summary");
        }
    })?;
    let summary = rt.block_on(session.finish())?;
    let json = mount::publish_summary(&summary, summary_path, "unmounted")
        .context("writing the summary")?;
    if m.print_summary {
        println!("{json}");
    }
    Ok(())
}

impl std::str::FromStr for TraceMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "record" => Ok(Self::Record),
            "replay" => Ok(Self::Replay),
            "off" => Ok(Self::Off),
            _ => Err("expected auto, record, replay or off".into()),
        }
    }
}
