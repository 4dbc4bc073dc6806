//! The commands: `run` (hit: mount; miss: build, publish, mount), `key`, `mount`, `umount`,
//! `ls`, `rm`, `explain`. Plain option structs in, reports out; `main.rs` only parses.
//!
//! ```text
//!  run:  target checked ─► platform, base identity ─► every step's Manifest and key (all before
//!        anything is mounted) ─► Stack::create (bind base) ─► per step, in order:
//!          lookup ─ Hit ─────────────────────────────────────────────► mount_layer(step)
//!                 ─ Miss ─► try_lock ─ ours ─► run_captured ─► publish ─► mount_layer(step)
//!                                     ─ busy ─► wait_for (deadline) ─ Hit ─► mount_layer(step)
//!                 ─ Corrupt ─► say why, build as on a miss (without waiting)
//!        ─► final overlay on DIR ─► report (hit/miss per step, keys, seconds)
//!        any failure ─► Stack::teardown: nothing left mounted; a failed CMD publishes nothing
//!        and `run` exits with its status
//! ```
//!
//! Sync/async bridge: the store calls run on a small current-thread runtime owned by the
//! command; the layer daemons are separate processes (this binary in mount-helper form), so
//! nothing here serves FUSE.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bootseer_common::store::{OpenOptions, RetryConfig};
use serde::Serialize;

use crate::capture::run_captured;
use crate::catalog::{Catalog, Listed, Lookup, hostname};
use crate::key::{self, Manifest, Platform, Step};
use crate::stack::{self, Layer, Stack};

/// What `run` and `key` need to compute keys.
#[derive(Debug, Clone, Default)]
pub struct KeyOptions {
    /// Snapshot set name.
    pub name: String,
    /// The directory the steps change.
    pub target: PathBuf,
    /// Steps, in order.
    pub steps: Vec<Step>,
    /// Run each command chrooted into the target.
    pub chroot: bool,
    /// Operator's salt.
    pub salt: String,
    /// `key=value` platform overrides.
    pub platform: Vec<String>,
    /// The interpreter whose version and ABI go into the key (`None`: detected).
    pub python: Option<PathBuf>,
    /// Identity of what the target holds (`None`: computed from its tree).
    pub base_digest: Option<String>,
}

/// What `run` and `mount` need beyond the keys.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Store URL (`file:///…`, `docker://HOST/REPO`, `hdfs://…`).
    pub store: String,
    /// Persistent block cache of the layer daemons.
    pub cache_dir: Option<PathBuf>,
    /// Root of the per-target state directories.
    pub state_root: PathBuf,
    /// Deadline of every store operation (retries included).
    pub store_timeout: Duration,
    /// How long to wait for another node building the same key.
    pub wait: Duration,
    /// Where the run's JSON summary goes; layer daemons write theirs beside it.
    pub summary: Option<PathBuf>,
    /// Trace workload name of the layer mounts.
    pub workload: String,
    /// On a store failure, install without publishing instead of failing.
    pub fallback_install: bool,
    /// Extra `-o` options for the layer daemons (`allow_other`, `memory=…`).
    pub layer_options: Vec<(String, String)>,
    /// Bytes of file data per block of a published snapshot.
    pub block_size: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            store: String::new(),
            cache_dir: None,
            state_root: stack::DEFAULT_STATE_ROOT.into(),
            store_timeout: Duration::from_secs(30),
            wait: Duration::from_secs(600),
            summary: None,
            workload: "default".into(),
            fallback_install: false,
            layer_options: Vec::new(),
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
}

/// One step's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Step number, from 1.
    pub step: usize,
    /// Its key.
    pub key: String,
    /// `hit`, `miss` (built and published), `waited` (another node built it), `rebuilt` (the
    /// stored one was corrupt) or `unpublished` (built; the store failed; --fallback-install).
    pub outcome: String,
    /// Seconds spent on the step (build or mount).
    pub seconds: f64,
    /// The snapshot's reference.
    pub reference: String,
}

/// What `run` did: printed and written as its JSON summary.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The host that ran it.
    pub host: String,
    /// The target.
    pub target: PathBuf,
    /// Per step.
    pub steps: Vec<StepReport>,
    /// Seconds from the command to the target showing the result.
    pub total_seconds: f64,
    /// Seconds to compute the keys (reading inputs, detecting the platform, the base digest).
    pub key_seconds: f64,
}

/// Why `run` failed with a status of its own.
#[derive(Debug, thiserror::Error)]
#[error("step {step}: the command failed ({status}); nothing was published")]
pub struct CommandFailed {
    /// The step.
    pub step: usize,
    /// Its status.
    pub status: std::process::ExitStatus,
}

/// Block size of published snapshots. Smaller than an image's 1 MiB: an `import` touches many
/// small files spread over a site-packages tree and pages of big shared objects, so every
/// block fetched for them carries neighbours nobody reads (measured with
/// scripts/bench/deps-restore: see the README).
pub const DEFAULT_BLOCK_SIZE: u32 = 256 << 10;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn open_options(timeout: Duration) -> OpenOptions {
    OpenOptions {
        retry: RetryConfig {
            op_timeout: timeout.min(Duration::from_secs(30)),
            total_deadline: timeout,
            ..RetryConfig::default()
        },
        ..OpenOptions::default()
    }
}

fn check_target(target: &Path) -> anyhow::Result<PathBuf> {
    let md = std::fs::metadata(target).with_context(|| format!("target {}", target.display()))?;
    if !md.is_dir() {
        bail!("target {} is not a directory", target.display());
    }
    target.canonicalize().with_context(|| format!("target {}", target.display()))
}

/// Every step's manifest, step 1 first.
pub fn manifests(o: &KeyOptions) -> anyhow::Result<Vec<Manifest>> {
    if o.steps.is_empty() {
        bail!("no steps: give a command after `--` or --steps FILE");
    }
    let target = check_target(&o.target)?;
    let mut platform: Platform = key::detect_platform(&target, o.chroot, o.python.as_deref());
    key::override_platform(&mut platform, &o.platform)?;
    let mut base = match &o.base_digest {
        Some(d) => format!("given:{d}"),
        None => key::tree_digest(&target)?,
    };
    let mut out = Vec::new();
    for (i, step) in o.steps.iter().enumerate() {
        let m = Manifest::build(&o.name, i + 1, &base, step, o.chroot, &platform, &o.salt)?;
        base = m.key();
        out.push(m);
    }
    Ok(out)
}

fn layer_options(s: &StoreOptions, state: &Path, step: usize) -> Vec<(String, String)> {
    let mut o = vec![
        ("workload".to_string(), s.workload.clone()),
        ("pidfile".to_string(), pidfile(state, step).display().to_string()),
    ];
    if let Some(c) = &s.cache_dir {
        o.push(("cache_dir".into(), c.display().to_string()));
    }
    if let Some(p) = &s.summary {
        o.push(("summary".into(), layer_summary(p, step).display().to_string()));
    }
    o.extend(s.layer_options.iter().cloned());
    o
}

fn pidfile(state: &Path, step: usize) -> PathBuf {
    state.join(format!("layer-{step}.pid"))
}

/// Where step `step`'s layer daemon writes its summary, beside the run's.
pub fn layer_summary(run_summary: &Path, step: usize) -> PathBuf {
    let mut s = run_summary.as_os_str().to_owned();
    s.push(format!(".step-{step}.json"));
    PathBuf::from(s)
}

/// `run`: see the module doc.
pub fn run(k: &KeyOptions, s: &StoreOptions) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let manifests = manifests(k)?;
    let key_seconds = started.elapsed().as_secs_f64();
    let target = check_target(&k.target)?;
    let rt = runtime()?;
    let catalog = rt.block_on(Catalog::open(&s.store, &k.name, &open_options(s.store_timeout)))?;
    let mut stack = Stack::create(&s.state_root, &target)?;
    let mut steps = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for (i, m) in manifests.iter().enumerate() {
            let step = i + 1;
            let t0 = Instant::now();
            let key = m.key();
            let reference = catalog.reference(&key);
            let outcome = stack_step(&rt, &catalog, &mut stack, s, k.chroot, m, step)?;
            eprintln!(
                "bootseer-deps: step {step}: {outcome} {key} ({:.2} s)",
                t0.elapsed().as_secs_f64()
            );
            steps.push(StepReport {
                step,
                key,
                outcome,
                seconds: t0.elapsed().as_secs_f64(),
                reference,
            });
        }
        stack.mount_overlay()
    })();
    if let Err(e) = result {
        if let Err(t) = stack.teardown() {
            tracing::error!(error = %format!("{t:#}"), "teardown after a failed run");
            eprintln!("bootseer-deps: teardown after the failure: {t:#}");
        }
        return Err(e);
    }
    let report = RunReport {
        host: hostname(),
        target,
        steps,
        total_seconds: started.elapsed().as_secs_f64(),
        key_seconds,
    };
    if let Some(p) = &s.summary {
        let json = serde_json::to_vec_pretty(&report)?;
        bootseer_common::mount::write_atomic(p, &json)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(report)
}

/// Starts the layer daemon of the stored snapshot `key` as step `step` and pushes it on `stack`
/// (what a hit, a published miss and `mount` all do).
fn mount_stored(
    stack: &mut Stack,
    catalog: &Catalog,
    s: &StoreOptions,
    key: &str,
    step: usize,
) -> anyhow::Result<()> {
    let reference = catalog.reference(key);
    let dir = stack.state.join(format!("layer-{step}"));
    let options = layer_options(s, &stack.state, step);
    stack::mount_layer(&reference, &dir, &options, s.store_timeout * 2)?;
    stack.layers.push(Layer {
        step,
        key: key.to_string(),
        reference: Some(reference),
        path: dir,
        summary: s.summary.as_deref().map(|p| layer_summary(p, step)),
        pidfile: Some(pidfile(&stack.state, step)),
    });
    stack.save()
}

/// One step of `run`: leaves the step's layer at the top of `stack`; returns its outcome.
fn stack_step(
    rt: &tokio::runtime::Runtime,
    catalog: &Catalog,
    stack: &mut Stack,
    s: &StoreOptions,
    chroot: bool,
    m: &Manifest,
    step: usize,
) -> anyhow::Result<String> {
    let key = m.key();
    let mount_it = |stack: &mut Stack| mount_stored(stack, catalog, s, &key, step);
    let lookup = match rt.block_on(catalog.lookup(&key)) {
        Ok(l) => l,
        Err(e) if s.fallback_install => {
            eprintln!("bootseer-deps: step {step}: store unusable ({e:#}); installing without it");
            return build_local(stack, chroot, m, step);
        }
        Err(e) => return Err(e),
    };
    let mut outcome = "miss";
    match lookup {
        Lookup::Hit(_) => {
            mount_it(stack)?;
            return Ok("hit".into());
        }
        Lookup::Corrupt(why) => {
            eprintln!(
                "bootseer-deps: step {step}: stored snapshot {key} is unusable ({why}); rebuilding"
            );
            outcome = "rebuilt";
        }
        Lookup::Miss => {
            if !rt.block_on(catalog.try_lock(&key, s.wait))? {
                eprintln!(
                    "bootseer-deps: step {step}: another node is building {key}; waiting up to {:?}",
                    s.wait
                );
                if let Lookup::Hit(_) = rt.block_on(catalog.wait_for(&key, s.wait))? {
                    mount_it(stack)?;
                    return Ok("waited".into());
                }
                eprintln!("bootseer-deps: step {step}: no snapshot after waiting; building");
            }
        }
    }
    let capture_dir = stack.state.join(format!("capture-{step}"));
    // Ok(true): published; Ok(false): built but kept local (--fallback-install).
    let built = (|| -> anyhow::Result<bool> {
        let captured =
            run_captured(&m.command, &stack.target, &stack.lowers(), &capture_dir, chroot)?;
        if !captured.status.success() {
            return Err(CommandFailed { step, status: captured.status }.into());
        }
        match rt.block_on(catalog.publish(&captured.upper, m, s.block_size)) {
            Ok(_) => Ok(true),
            Err(e) if s.fallback_install => {
                eprintln!(
                    "bootseer-deps: step {step}: publishing failed ({e:#}); keeping it local"
                );
                Ok(false)
            }
            Err(e) => Err(e),
        }
    })();
    rt.block_on(catalog.unlock(&key));
    match built {
        Ok(true) => {
            let _ = std::fs::remove_dir_all(&capture_dir);
            mount_it(stack)?;
            Ok(outcome.into())
        }
        Ok(false) => {
            push_local(stack, step, &key, capture_dir.join("upper"))?;
            Ok("unpublished".into())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&capture_dir);
            Err(e)
        }
    }
}

/// --fallback-install with the store down: run the step and keep its capture as a local layer.
fn build_local(
    stack: &mut Stack,
    chroot: bool,
    m: &Manifest,
    step: usize,
) -> anyhow::Result<String> {
    let capture_dir = stack.state.join(format!("capture-{step}"));
    let captured = run_captured(&m.command, &stack.target, &stack.lowers(), &capture_dir, chroot)?;
    if !captured.status.success() {
        return Err(CommandFailed { step, status: captured.status }.into());
    }
    push_local(stack, step, &m.key(), captured.upper)?;
    Ok("unpublished".into())
}

fn push_local(stack: &mut Stack, step: usize, key: &str, upper: PathBuf) -> anyhow::Result<()> {
    stack.layers.push(Layer {
        step,
        key: key.to_string(),
        reference: None,
        path: upper,
        summary: None,
        pidfile: None,
    });
    stack.save()
}

/// `mount`: stacks the stored snapshots `keys` (step 1 first) over `target`, without running
/// anything; every key must be stored.
pub fn mount(target: &Path, name: &str, keys: &[String], s: &StoreOptions) -> anyhow::Result<()> {
    let target = check_target(target)?;
    let rt = runtime()?;
    let catalog = rt.block_on(Catalog::open(&s.store, name, &open_options(s.store_timeout)))?;
    for key in keys {
        match rt.block_on(catalog.lookup(key))? {
            Lookup::Hit(_) => {}
            Lookup::Miss => bail!("{} is not stored", catalog.reference(key)),
            Lookup::Corrupt(why) => bail!("{} is unusable: {why}", catalog.reference(key)),
        }
    }
    let mut stack = Stack::create(&s.state_root, &target)?;
    let result = (|| -> anyhow::Result<()> {
        for (i, key) in keys.iter().enumerate() {
            mount_stored(&mut stack, &catalog, s, key, i + 1)?;
        }
        stack.mount_overlay()
    })();
    if let Err(e) = result {
        let _ = stack.teardown();
        return Err(e);
    }
    Ok(())
}

/// `umount DIR`: everything `run` or `mount` stacked on it, in reverse order.
pub fn umount(target: &Path, state_root: &Path) -> anyhow::Result<()> {
    let target = target.canonicalize().unwrap_or_else(|_| target.to_path_buf());
    Stack::load(state_root, &target)?.teardown()
}

/// `ls`: the stored snapshots of a set.
pub fn list(store: &str, name: &str, timeout: Duration) -> anyhow::Result<Vec<Listed>> {
    let rt = runtime()?;
    rt.block_on(async {
        let catalog = Catalog::open(store, name, &open_options(timeout)).await?;
        catalog.list().await
    })
}

/// `rm KEY…`.
pub fn remove(store: &str, name: &str, keys: &[String], timeout: Duration) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let catalog = Catalog::open(store, name, &open_options(timeout)).await?;
        for key in keys {
            catalog.remove(key).await?;
        }
        anyhow::Ok(())
    })
}

/// What `explain` says about one step.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// Step number.
    pub step: usize,
    /// Its key.
    pub key: String,
    /// Whether it is stored.
    pub hit: bool,
    /// The nearest stored snapshot of the same step (fewest differences), when it missed.
    pub nearest: Option<String>,
    /// What differs from the nearest, one line each.
    pub differences: Vec<String>,
}

/// `explain`: for each step, hit or the nearest stored snapshot and what differs.
pub fn explain(k: &KeyOptions, store: &str, timeout: Duration) -> anyhow::Result<Vec<Explanation>> {
    let manifests = manifests(k)?;
    let stored = list(store, &k.name, timeout)?;
    let mut out = Vec::new();
    for m in &manifests {
        let key = m.key();
        if stored.iter().any(|l| l.key == key && l.manifest.is_some()) {
            out.push(Explanation {
                step: m.step,
                key,
                hit: true,
                nearest: None,
                differences: vec![],
            });
            continue;
        }
        let nearest = stored
            .iter()
            .filter_map(|l| l.manifest.as_ref().map(|om| (l, key::differences(om, m))))
            // Prefer the same step position, then the fewest differences.
            .min_by_key(|(l, d)| {
                (l.manifest.as_ref().is_some_and(|om| om.step != m.step), d.len())
            });
        let (nearest, differences) = match nearest {
            Some((l, d)) => (Some(l.key.clone()), d),
            None => (None, vec!["no snapshot of this set is stored".into()]),
        };
        out.push(Explanation { step: m.step, key, hit: false, nearest, differences });
    }
    Ok(out)
}
