//! Running one step's command over an empty overlay upper, so that the upper ends up holding
//! exactly what the command changed: new and changed files, deletions (whiteouts: 0/0
//! character devices) and replaced directories (`trusted.overlay.opaque=y`). The kernel writes
//! that format; `catalog::publish` converts it like any directory.
//!
//! ```text
//!  capture-N/upper, capture-N/work ─► overlay(lowerdir = layers so far : base) on DIR
//!     --chroot: /proc, /dev (rbind), /etc/resolv.conf (bind, when DIR has one), tmpfs on /tmp
//!     CMD (inherits stdio; cwd as given; in DIR's root with --chroot) ─► exit status
//!     chroot binds undone ─► overlay unmounted ─► upper is the capture
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{Context, bail};
use bootseer_common::mount::unmount;
use nix::mount::{MsFlags, mount};

use crate::stack::mount_overlay;

/// A finished capture: the command's status and its upper directory.
#[derive(Debug)]
pub struct Captured {
    /// How the command ended.
    pub status: ExitStatus,
    /// The overlay upper holding what it changed.
    pub upper: PathBuf,
}

/// Runs `command` with `target` showing `lowers` (top first) under an empty upper in `dir`.
pub fn run_captured(
    command: &[String],
    target: &Path,
    lowers: &[PathBuf],
    dir: &Path,
    chroot: bool,
) -> anyhow::Result<Captured> {
    let (program, args) = command.split_first().context("no command")?;
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // The upper's root starts as the merged root is now; the kernel moves its mtime when the
    // command changes DIR's top level, and the capture records exactly that.
    crate::stack::copy_dir_attrs(&lowers[0], &upper)?;
    mount_overlay(target, lowers, &upper, &work)?;
    let mut binds: Vec<PathBuf> = Vec::new();
    let result = (|| -> anyhow::Result<ExitStatus> {
        let mut cmd = if chroot {
            binds = chroot_binds(target)?;
            let mut c = Command::new("chroot");
            c.arg(target).arg(program).args(args);
            c
        } else {
            let mut c = Command::new(program);
            c.args(args);
            c
        };
        match cmd.status() {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("command not found: {program}")
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("running {program}"))),
        }
    })();
    for b in binds.iter().rev() {
        if let Err(e) = nix::mount::umount2(b, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(path = %b.display(), error = %e, "undoing a chroot mount");
        }
    }
    unmount(target)
        .with_context(|| format!("unmounting the capture overlay on {}", target.display()))?;
    Ok(Captured { status: result?, upper })
}

/// What a chroot needs from the host: /proc, /dev, name resolution, a private /tmp (so that a
/// tool's scratch files are not captured). Returns what it mounted, in mount order.
fn chroot_binds(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    for (src, rel, flags) in [
        ("/proc", "proc", MsFlags::MS_BIND | MsFlags::MS_REC),
        ("/dev", "dev", MsFlags::MS_BIND | MsFlags::MS_REC),
    ] {
        let dst = root.join(rel);
        if !dst.is_dir() {
            bail!("--chroot: {} has no /{rel} directory", root.display());
        }
        mount(Some(src), &dst, None::<&str>, flags, None::<&str>)
            .with_context(|| format!("binding {src} into {}", dst.display()))?;
        done.push(dst);
    }
    let resolv = root.join("etc/resolv.conf");
    if resolv.is_file() && Path::new("/etc/resolv.conf").exists() {
        mount(Some("/etc/resolv.conf"), &resolv, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .context("binding /etc/resolv.conf")?;
        done.push(resolv);
    }
    let tmp = root.join("tmp");
    if tmp.is_dir() {
        mount(Some("tmpfs"), &tmp, Some("tmpfs"), MsFlags::empty(), Some("mode=1777"))
            .context("mounting a tmpfs on /tmp")?;
        done.push(tmp);
    }
    Ok(done)
}
