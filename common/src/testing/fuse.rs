//! [`MountGuard`]: a test mount that cannot outlive its test. `Drop` unmounts (lazily if the
//! mount is busy) and joins the session thread, so a failed assertion never leaves a stale mount.
//! [`UnmountOnDrop`] does the same for a mount a command made (a daemon, mount(8)), and
//! [`umount_now`] unmounts as a user would, retrying a busy mount briefly.
//! Test bodies touch the mount only through `std::fs`, as users do.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::mount::{MountConfig, Unmounted, is_mounted, unmount};

/// A mounted filesystem, unmounted on drop.
#[derive(Debug)]
pub struct MountGuard {
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    _dir: Option<tempfile::TempDir>,
}

impl MountGuard {
    /// Mounts `fs` on a fresh temporary directory. Fails (for [`super::require_real`]) when
    /// /dev/fuse is missing or the mount is refused.
    pub fn mount<FS: fuser::Filesystem + Send + 'static>(
        fs: FS,
        config: &MountConfig,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("bootseer-mnt-").tempdir()?;
        let mut guard = Self::mount_at(fs, dir.path(), config)?;
        guard._dir = Some(dir);
        Ok(guard)
    }

    /// Mounts `fs` at `mountpoint` (an existing directory).
    pub fn mount_at<FS: fuser::Filesystem + Send + 'static>(
        fs: FS,
        mountpoint: &Path,
        config: &MountConfig,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(Path::new("/dev/fuse").exists(), "/dev/fuse does not exist");
        let session = fuser::spawn_mount(fs, mountpoint, &config.fuser_config())
            .with_context(|| format!("mounting FUSE at {}", mountpoint.display()))?;
        let guard =
            Self { mountpoint: mountpoint.to_path_buf(), session: Some(session), _dir: None };
        // The mount is ready once the kernel lists it and the root answers.
        for _ in 0..200 {
            if is_mounted(&guard.mountpoint) && std::fs::metadata(&guard.mountpoint).is_ok() {
                return Ok(guard);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        anyhow::bail!("{} did not become a mount within 2 s", mountpoint.display())
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        // Unmount first, then join: with auto_unmount, fuser's own unmount only hands the mount to
        // fusermount3's watcher, and its worker threads stay blocked on /dev/fuse until the
        // kernel tears the mount down.
        let mut lazily = false;
        if is_mounted(&self.mountpoint) {
            match unmount(&self.mountpoint) {
                Ok(how) => lazily = how == Unmounted::Lazily,
                Err(e) => eprintln!("unmount of {} failed: {e}", self.mountpoint.display()),
            }
        }
        if lazily {
            // Something still holds a file open: joining now would wait for it forever.
            eprintln!("{} was busy and is detached lazily", self.mountpoint.display());
            return;
        }
        if let Some(session) = self.session.take()
            && let Err(e) = session.join()
        {
            eprintln!("FUSE session at {} ended with {e}", self.mountpoint.display());
        }
    }
}

/// A mount a test made through a command (a daemon's `mount`, mount(8), a tmpfs), unmounted
/// lazily on drop if still mounted, so a failed assertion leaves no stale mount behind.
#[derive(Debug)]
pub struct UnmountOnDrop(pub PathBuf);

impl UnmountOnDrop {
    /// Unmounts now, as a user would ([`umount_now`]).
    pub fn unmount(self) {
        umount_now(&self.0);
    }
}

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Runs `umount PATH` as a user would, and panics (with umount's stderr) if it still fails after
/// retrying for up to 5 s. A busy mount right after a test closed its last file is a race, not a
/// bug under test: the kernel drops a closed file's last reference asynchronously (a parallel
/// test's short-lived child can hold it a moment too), and `umount` then says EBUSY.
pub fn umount_now(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = std::process::Command::new("umount").arg(path).output().expect("run umount");
        if out.status.success() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            panic!(
                "umount {} failed for 5 s: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
