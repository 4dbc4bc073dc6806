//! The mount half of `bootseer-image`: `mount` (also the mount-helper form) and `trace show`.
//! Plain config structs in, `anyhow` out; `main.rs` only parses. The lazy tree, the session and
//! the daemon lifecycle live in `bootseer_common` (`layer`, `mount`); this module only says
//! which image, which options, and where the summary goes.

use std::path::PathBuf;

use bootseer_common::layer::reference::LayerRef;
use bootseer_common::layer::serve::{self, LAYER_KEYS, LayerMount, READ_AHEAD_KB};
use bootseer_common::layer::session::{self, SessionConfig};
use bootseer_common::mount::{self, DaemonOptions, MountArgs, MountConfig};
use bootseer_common::store::{self, OpenOptions};

/// `mount` options, from either calling form.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Image reference.
    pub reference: String,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Cache, trace and store settings.
    pub session: SessionConfig,
    /// Standard flags and daemon keys (`-o`), the CLI flags folded in.
    pub parsed: mount::ParsedOptions,
}

/// Parses `10G`, `512M`, `64k` or plain bytes (the parser every bootseer binary uses).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    bootseer_common::units::parse_size(s).map_err(anyhow::Error::msg)
}

/// Folds `-o` options (either calling form) into `o`: standard flags, daemon keys and the layer
/// keys; an unknown key is an error naming it.
pub fn apply_options(o: &mut MountOptions, options: &[(String, String)]) -> anyhow::Result<()> {
    let parsed = mount::options::parse(options, LAYER_KEYS)?;
    for (k, v) in &parsed.own {
        serve::apply_layer_option(&mut o.session, k, v)?;
    }
    let daemon = &mut o.parsed.daemon;
    daemon.foreground |= parsed.daemon.foreground;
    daemon.log = parsed.daemon.log.clone().or(daemon.log.take());
    daemon.summary = parsed.daemon.summary.clone().or(daemon.summary.take());
    daemon.threads = parsed.daemon.threads.or(daemon.threads);
    daemon.read_ahead_kb = parsed.daemon.read_ahead_kb.or(daemon.read_ahead_kb);
    daemon.pidfile = parsed.daemon.pidfile.clone().or(daemon.pidfile.take());
    daemon.metrics_addr = parsed.daemon.metrics_addr.or(daemon.metrics_addr);
    o.parsed.flags = parsed.flags;
    Ok(())
}

/// The options of the mount-helper form (`mount -t fuse.bootseer-image SRC DIR -o …`).
pub fn helper_options(args: &MountArgs) -> anyhow::Result<MountOptions> {
    let mut o = MountOptions {
        reference: args.source.clone(),
        mountpoint: args.mountpoint.clone(),
        ..MountOptions::default()
    };
    apply_options(&mut o, &args.options)?;
    Ok(o)
}

/// `trace show REF`: the summary of the stored trace, as JSON-able text.
pub fn trace_show(reference: &str, workload: &str) -> anyhow::Result<String> {
    let image = LayerRef::parse(reference)?;
    let key = image.trace_key(workload)?;
    let rt = serve::runtime("bootseer-image")?;
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
    let daemon = &options.parsed.daemon;
    let mut config = MountConfig {
        subtype: "bootseer-image".into(),
        read_ahead_kb: READ_AHEAD_KB,
        ..MountConfig::default()
    };
    config.apply(&options.parsed);
    let layer = LayerMount {
        reference: options.reference.clone(),
        mountpoint: options.mountpoint.clone(),
        session: options.session.clone(),
        mount: config,
        summary: daemon.summary.clone(),
        print_summary: daemon.foreground,
    }
    .absolute();
    let run = DaemonOptions {
        foreground: daemon.foreground,
        log: daemon.log.clone(),
        log_filter: "bootseer_image=info,bootseer_common=info",
        pidfile: daemon.pidfile.clone(),
        metrics_addr: daemon.metrics_addr,
    };
    mount::run_daemon(&run, |ready, signals| serve::serve_layer(&layer, ready, signals))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootseer_common::layer::TraceMode;

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
                ("suid".into(), String::new()),
                ("x-systemd.automount".into(), String::new()),
                ("metrics_addr".into(), "127.0.0.1:9464".into()),
            ],
        };
        let o = helper_options(&args).expect("options");
        assert_eq!(o.session.trace, TraceMode::Replay);
        assert_eq!(o.session.memory, Some(1 << 30));
        assert_eq!(o.session.cache_dir, Some(PathBuf::from("/c")));
        assert!(o.parsed.flags.suid && !o.parsed.flags.dev && !o.parsed.flags.allow_other);
        assert_eq!(o.parsed.daemon.metrics_addr, "127.0.0.1:9464".parse().ok());
        let typo = MountArgs { options: vec![("cache-dir".into(), "/c".into())], ..args };
        let e = helper_options(&typo).expect_err("unknown key");
        assert!(e.to_string().contains("cache-dir"), "{e}");
    }
}
