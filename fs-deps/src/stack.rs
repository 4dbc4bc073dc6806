//! What `run` and `mount` stack on a target directory, and how `umount` takes it down.
//!
//! ```text
//!  STATE = /var/lib/bootseer-deps/stacks/<sha256(DIR)[..16]>/
//!    base/          bind mount of DIR as it was (the lowest layer; DIR itself gets covered)
//!    layer-N/       FUSE mount of step N's snapshot (one bootseer-deps daemon each), or a plain
//!                   capture dir when the snapshot could not be published (--fallback-install)
//!    capture-N/     overlay upper + work while step N's command runs (removed after publish)
//!    top/upper, top/work   the writable top of the final overlay (the job's writes)
//!    state.json     the Stack below: what to take down, in order
//!  DIR = overlay(lowerdir=layer-N:…:layer-1:base, upperdir=top/upper)
//! ```
//!
//! Overlay options: `index=off,metacopy=off,redirect_dir=off` (DESIGN: the upper of a capture
//! must be portable — no file handles, no metacopy stubs, no redirects — and the same options
//! on the final mount keep a FUSE lower acceptable to the kernel), `xino=off`.
//! Teardown order is the reverse of setup: DIR's overlay, then each layer daemon (which writes
//! its summary and stores its trace as it exits), then the base bind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use bootseer_common::mount::{Unmounted, is_mounted, unmount};
use nix::mount::{MsFlags, mount};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Options of every overlay bootseer-deps mounts.
pub const OVERLAY_OPTIONS: &str = "index=off,metacopy=off,redirect_dir=off,xino=off";

/// Default root of the per-target state directories.
pub const DEFAULT_STATE_ROOT: &str = "/var/lib/bootseer-deps/stacks";

/// One layer of a stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Layer {
    /// Step number, from 1.
    pub step: usize,
    /// The snapshot's key.
    pub key: String,
    /// Its layer reference (`None`: a local capture dir, not published).
    pub reference: Option<String>,
    /// Where it is mounted (or the capture dir).
    pub path: PathBuf,
    /// Where its daemon writes its JSON summary.
    pub summary: Option<PathBuf>,
    /// Its daemon's pidfile (teardown waits for the daemon to exit: its summary and trace are
    /// written by then).
    #[serde(default)]
    pub pidfile: Option<PathBuf>,
}

/// Everything stacked on one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stack {
    /// The target directory.
    pub target: PathBuf,
    /// Its state directory.
    pub state: PathBuf,
    /// Layers, step 1 first.
    pub layers: Vec<Layer>,
    /// Whether the final overlay is on the target.
    pub overlay: bool,
}

/// The state directory of `target` under `root`.
pub fn state_dir(root: &Path, target: &Path) -> PathBuf {
    let id = hex::encode(Sha256::digest(target.as_os_str().as_encoded_bytes()));
    root.join(&id[..16])
}

impl Stack {
    /// A new, empty stack: creates the state directory and binds the target's current tree to
    /// `base` (refuses a target that already carries a stack).
    pub fn create(root: &Path, target: &Path) -> anyhow::Result<Self> {
        let state = state_dir(root, target);
        if state.join("state.json").exists() {
            bail!(
                "{} already carries a bootseer-deps stack (state in {}): `bootseer-deps umount {}` first",
                target.display(),
                state.display(),
                target.display()
            );
        }
        let base = state.join("base");
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        mount(Some(target), &base, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("binding {} to {}", target.display(), base.display()))?;
        let stack =
            Self { target: target.to_path_buf(), state, layers: Vec::new(), overlay: false };
        stack.save()?;
        Ok(stack)
    }

    /// Loads the stack of `target`.
    pub fn load(root: &Path, target: &Path) -> anyhow::Result<Self> {
        let path = state_dir(root, target).join("state.json");
        let data = std::fs::read(&path).with_context(|| {
            format!(
                "{} carries no bootseer-deps stack ({} missing)",
                target.display(),
                path.display()
            )
        })?;
        serde_json::from_slice(&data).with_context(|| format!("reading {}", path.display()))
    }

    /// Writes `state.json` atomically.
    pub fn save(&self) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        bootseer_common::mount::write_atomic(&self.state.join("state.json"), &json)
            .with_context(|| format!("writing the state of {}", self.target.display()))
    }

    /// The bind of the original tree.
    pub fn base(&self) -> PathBuf {
        self.state.join("base")
    }

    /// Lower dirs, top first: every layer, then the base.
    pub fn lowers(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.layers.iter().rev().map(|l| l.path.clone()).collect();
        v.push(self.base());
        v
    }

    /// Mounts the final overlay on the target with a fresh writable top.
    pub fn mount_overlay(&mut self) -> anyhow::Result<()> {
        let top = self.state.join("top");
        let (upper, work) = (top.join("upper"), top.join("work"));
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // The merged root takes its attributes from the upper: make them the top layer's, or
        // DIR would show our mkdir's mode and time instead of what the command left.
        let lowers = self.lowers();
        copy_dir_attrs(&lowers[0], &upper)?;
        mount_overlay(&self.target, &lowers, &upper, &work)?;
        self.overlay = true;
        self.save()
    }

    /// Takes everything down in reverse order and removes the state directory's mount points
    /// (summaries the layers wrote elsewhere stay). Keeps going past errors and reports them
    /// all at the end, so one busy mount does not strand the rest.
    pub fn teardown(mut self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        if self.overlay {
            match unmount(&self.target) {
                Ok(Unmounted::Fully) => {}
                Ok(Unmounted::Lazily) => {
                    tracing::warn!(target = %self.target.display(), "busy: overlay detached lazily")
                }
                Err(e) => errors.push(format!("unmounting {}: {e}", self.target.display())),
            }
            self.overlay = false;
        }
        while let Some(layer) = self.layers.pop() {
            if layer.reference.is_some() && is_mounted(&layer.path) {
                if let Err(e) = unmount(&layer.path) {
                    errors.push(format!("unmounting {}: {e}", layer.path.display()));
                    continue;
                }
                wait_unmounted(&layer.path);
            }
            if let Some(p) = &layer.pidfile {
                wait_daemon_exit(p);
            }
            if let Err(e) = remove_tree(&layer.path) {
                errors.push(format!("removing {}: {e}", layer.path.display()));
            }
        }
        let base = self.base();
        if is_mounted(&base)
            && let Err(e) = unmount(&base)
        {
            errors.push(format!("unmounting {}: {e}", base.display()));
        }
        if errors.is_empty() {
            // Only plain directories are left; never recurse into something still mounted.
            for d in ["top", "base"] {
                let _ = remove_tree(&self.state.join(d));
            }
            let _ = std::fs::remove_file(self.state.join("state.json"));
            let _ = std::fs::remove_dir_all(&self.state);
            Ok(())
        } else {
            let _ = self.save();
            bail!("{}", errors.join("; "))
        }
    }
}

/// Gives directory `to` the mode, owner and times of directory `from`.
pub fn copy_dir_attrs(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(from).with_context(|| format!("stat {}", from.display()))?;
    std::os::unix::fs::chown(to, Some(md.uid()), Some(md.gid()))
        .with_context(|| format!("chown {}", to.display()))?;
    std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(md.mode() & 0o7777))
        .with_context(|| format!("chmod {}", to.display()))?;
    let ts = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        to,
        &ts(md.atime(), md.atime_nsec()),
        &ts(md.mtime(), md.mtime_nsec()),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .with_context(|| format!("utimensat {}", to.display()))?;
    Ok(())
}

/// Removes a directory tree that holds no mounts (refuses one that does).
fn remove_tree(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if is_mounted(path) {
        return Err(std::io::Error::other("still mounted"));
    }
    std::fs::remove_dir_all(path)
}

/// Waits briefly for a FUSE daemon to let go of its mount point after unmount (its session
/// ends once the kernel drops the connection).
fn wait_unmounted(path: &Path) {
    for _ in 0..100 {
        if !is_mounted(path) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to a minute: storing a trace is a few store puts) for the daemon whose pid is in
/// `pidfile` to exit.
fn wait_daemon_exit(pidfile: &Path) {
    let Some(pid) =
        std::fs::read_to_string(pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    for _ in 0..3000 {
        if nix::sys::signal::kill(pid, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(pid = %pid, "layer daemon still running a minute after unmount");
}

/// Mounts a kernel overlay on `target`: `lowers` top first, `upper` and `work` on one local
/// filesystem.
pub fn mount_overlay(
    target: &Path,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> anyhow::Result<()> {
    for p in lowers.iter().map(PathBuf::as_path).chain([upper, work]) {
        let s = p.to_string_lossy();
        if s.contains([':', ',', '\\']) {
            bail!("overlay path {s:?} contains ':', ',' or '\\'");
        }
    }
    let lowerdir = lowers.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>();
    let data = format!(
        "lowerdir={},upperdir={},workdir={},{OVERLAY_OPTIONS}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    mount(Some("bootseer-deps"), target, Some("overlay"), MsFlags::empty(), Some(data.as_str()))
        .with_context(|| format!("mounting overlay on {} ({data})", target.display()))
}

/// Starts a layer daemon (this binary in mount-helper form) serving `reference` at
/// `mountpoint`; returns once it is mounted, or its error.
pub fn mount_layer(
    reference: &str,
    mountpoint: &Path,
    options: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(mountpoint)
        .with_context(|| format!("creating {}", mountpoint.display()))?;
    let exe = std::env::current_exe().context("finding this binary")?;
    let opts = options
        .iter()
        .map(|(k, v)| if v.is_empty() { k.clone() } else { format!("{k}={v}") })
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new(exe);
    cmd.arg(reference).arg(mountpoint);
    if !opts.is_empty() {
        cmd.arg("-o").arg(&opts);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting the layer daemon")?;
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            if status.success() {
                return Ok(());
            }
            bail!("mounting {reference}: {}", err.trim());
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            if is_mounted(mountpoint) {
                let _ = unmount(mountpoint);
            }
            bail!("mounting {reference}: not ready after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
