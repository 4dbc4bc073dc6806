//! FUSE mount plumbing shared by the three binaries: one lifecycle, one option parser.
//!
//! ```text
//!  main ─► run_daemon: daemonize (unless foreground) ─► ServeSignals::block ─► telemetry::init
//!            └─ body(&mut Ready, ServeSignals): open the filesystem's session
//!                 └─ mount_and_serve: mountpoint checked ─► fuser::spawn_mount ─► read-ahead
//!                      ─► Ready::ready (the waiting parent exits 0) ─► serve until SIGTERM/umount
//!                         (SIGUSR1 ─► report) ─► the body writes its summary
//!            an error anywhere ─► Ready::failed (the parent prints it, exits 1), nothing mounted
//! ```
//!
//! - [`metrics`]: `--metrics-addr`, the Prometheus endpoint [`run_daemon`] starts in the daemon.
//! - [`options`]: the `-o` parser every binary uses (safe defaults, fstab keys, unknown keys are
//!   errors naming the key).
//! - [`MountConfig`] → [`MountConfig::fuser_config`]: read-only, fsname/subtype, threads with
//!   cloned fds, `nosuid,nodev` and no `allow_other` unless asked, `auto_unmount` when
//!   `fusermount3` exists (a killed daemon then leaves no stuck mount).
//! - [`MountConfig::kernel_init`]: called from each filesystem's `init`; raises
//!   `max_background` (the kernel's default of 12 serializes prefetch-heavy readers) and asks
//!   for the largest read-ahead the kernel allows at init.
//! - [`raise_read_ahead`]: read-ahead can only be *lowered* at FUSE init; raising it past the
//!   kernel's default means writing `/sys/class/bdi/<major>:<minor>/read_ahead_kb` as root after
//!   the mount is up.
//! - [`MountArgs::parse_helper`]: the `mount -t fuse.NAME SOURCE DIR -o k=v,…` calling form.
//! - [`daemonize`]: forks before any thread exists; the parent returns only once the child says
//!   the mount is ready (exit 0) or failed (its message, exit 1), as `mount(8)` expects.
//! - [`serve`]: keeps a mounted session until SIGTERM/SIGINT (then unmounts cleanly; SIGHUP
//!   reopens the log file, SIGUSR1 writes the summary so far) or until
//!   someone else unmounts it.

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fuser::{Config, KernelConfig, MountOption, SessionACL};

pub mod metrics;
pub mod options;

pub use options::{DaemonKeys, MountFlags, OptionError, ParsedOptions};

/// How a bootseer filesystem is mounted.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Name shown as the mount's source in /proc/mounts.
    pub fsname: String,
    /// Filesystem subtype (`fuse.<subtype>` in /proc/mounts).
    pub subtype: String,
    /// FUSE worker threads.
    pub threads: usize,
    /// Give each worker thread its own /dev/fuse fd (Linux 4.5+).
    pub clone_fd: bool,
    /// `allow_other`, `suid`, `dev`, `exec` (safe defaults: see [`MountFlags`]).
    pub flags: MountFlags,
    /// Have `fusermount3` unmount when the daemon dies (used when it is installed).
    pub auto_unmount: bool,
    /// Pending background requests the kernel may queue (readahead, async reads).
    pub max_background: u16,
    /// Read-ahead to set through sysfs after mount, in KiB (0: leave the kernel's).
    pub read_ahead_kb: u32,
}

impl Default for MountConfig {
    fn default() -> Self {
        Self {
            fsname: "bootseer".into(),
            subtype: "bootseer".into(),
            // Two cores serve CI; production hosts have many. 8 threads keep several cold
            // reads in flight without per-thread buffers adding up (each holds 1 MiB+).
            threads: 8,
            clone_fd: true,
            flags: MountFlags::default(),
            auto_unmount: true,
            // DESIGN: ≥ 64 so read-ahead and parallel readers are not throttled by the kernel.
            max_background: 64,
            // 4 MiB of read-ahead turns sequential 128 KiB FUSE reads into few large ones.
            read_ahead_kb: 4096,
        }
    }
}

/// The search path of a process started without `PATH`, as `/bin/sh` and execvp use it.
/// mount(8) runs its helpers (mount.fuse3, then the daemon) without one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether `fusermount3` is installed (required for `auto_unmount`): on `PATH`, or on the
/// default search path when `PATH` is unset (fuser finds it there too). Without it fuser mounts
/// with mount(2) itself, which loses `auto_unmount` and the subtype (`fuse`, not
/// `fuse.bootseer-image`, in /proc/mounts).
pub fn have_fusermount3() -> bool {
    let paths = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&paths).any(|dir| dir.join("fusermount3").is_file())
}

impl MountConfig {
    /// The fuser session configuration for this mount.
    pub fn fuser_config(&self) -> Config {
        let mut options = vec![
            MountOption::RO,
            MountOption::FSName(self.fsname.clone()),
            MountOption::Subtype(self.subtype.clone()),
            MountOption::NoAtime,
            MountOption::DefaultPermissions,
        ];
        options.push(if self.flags.dev { MountOption::Dev } else { MountOption::NoDev });
        options.push(if self.flags.suid { MountOption::Suid } else { MountOption::NoSuid });
        options.push(if self.flags.exec { MountOption::Exec } else { MountOption::NoExec });
        let auto_unmount = self.auto_unmount && have_fusermount3();
        if auto_unmount {
            options.push(MountOption::AutoUnmount);
        }
        let mut config = Config::default();
        config.mount_options = options;
        config.acl = if self.flags.allow_other {
            SessionACL::All
        } else if auto_unmount {
            // auto_unmount needs allow_root or allow_other (fusermount's rule).
            SessionACL::RootAndOwner
        } else {
            SessionACL::Owner
        };
        config.n_threads = Some(self.threads.max(1));
        config.clone_fd = self.clone_fd && self.threads > 1;
        config
    }

    /// Applies the kernel-side settings; call from `Filesystem::init`.
    pub fn kernel_init(&self, kernel: &mut KernelConfig) {
        if let Err(max) = kernel.set_max_background(self.max_background) {
            let _ = kernel.set_max_background(max);
        }
        // The kernel only lets init lower read-ahead; ask for the most it allows here and raise
        // it further through sysfs once mounted.
        if let Err(max) = kernel.set_max_readahead(u32::MAX) {
            let _ = kernel.set_max_readahead(max);
        }
        // Lookups and listings in one directory may run at once (the kernel otherwise holds the
        // directory's lock across each round trip); every bootseer filesystem answers them
        // from shared, read-only state.
        let _ = kernel.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
    }
}

/// Sets the read-ahead of the FUSE mount at `mountpoint` through its backing-device entry in
/// sysfs. Needs root; returns the path written.
pub fn raise_read_ahead(mountpoint: &Path, kb: u32) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mountpoint)?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let path = PathBuf::from(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"));
    std::fs::write(&path, kb.to_string())?;
    Ok(path)
}

/// The read-ahead (KiB) the kernel uses for the mount at `mountpoint`.
pub fn read_ahead_kb(mountpoint: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mountpoint)?.dev();
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    std::fs::read_to_string(path)?
        .trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Whether `path` is a mount point listed in /proc/self/mounts.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(canonical) = path.canonicalize().or_else(|_| Ok::<_, ()>(path.to_path_buf())) else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            line.split(' ').nth(1).is_some_and(|p| Path::new(&unescape_mount_path(p)) == canonical)
        })
    })
}

fn unescape_mount_path(p: &str) -> String {
    // /proc/mounts escapes space, tab, newline and backslash as \ooo octal.
    let bytes = p.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&p[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How [`unmount`] got a mount off its mount point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// Gone; the FUSE session's threads end now.
    Fully,
    /// Detached while busy (`MNT_DETACH`): the kernel keeps the filesystem until its last open
    /// file closes, and the session's threads wait until then.
    Lazily,
}

/// Unmounts `path`: a plain unmount first, a lazy one (`MNT_DETACH`) if it is busy, and
/// `fusermount3 -u -z` when not root.
pub fn unmount(path: &Path) -> std::io::Result<Unmounted> {
    use nix::mount::{MntFlags, umount2};
    match umount2(path, MntFlags::empty()) {
        Ok(()) => Ok(Unmounted::Fully),
        Err(nix::errno::Errno::EBUSY) => {
            umount2(path, MntFlags::MNT_DETACH).map(|()| Unmounted::Lazily).map_err(Into::into)
        }
        Err(e) => {
            let status =
                std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(path).status();
            match status {
                Ok(s) if s.success() => Ok(Unmounted::Lazily),
                _ => Err(e.into()),
            }
        }
    }
}

/// Arguments in the mount-helper form `BINARY SOURCE MOUNTPOINT [-o opt[,opt…]]`, which is how
/// `mount -t fuse.NAME` (through `mount.fuse3`) and systemd `.mount` units call a binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountArgs {
    /// What to mount (a store reference).
    pub source: String,
    /// Where.
    pub mountpoint: PathBuf,
    /// `-o` options in order: `key=value` or bare `flag` (value empty).
    pub options: Vec<(String, String)>,
}

impl MountArgs {
    /// Parses the helper form; `None` if `args` (without the program name) are not in it.
    pub fn parse_helper(args: &[OsString]) -> Option<Self> {
        let mut positional = Vec::new();
        let mut options = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let arg = arg.to_str()?;
            if arg == "-o" {
                options.extend(split_options(it.next()?.to_str()?));
            } else if let Some(rest) = arg.strip_prefix("-o") {
                options.extend(split_options(rest));
            } else if arg.starts_with('-') {
                // Flags mount(8) may pass (-n, -s, -v): accepted and ignored.
                continue;
            } else {
                positional.push(arg.to_string());
            }
        }
        let [source, mountpoint] = <[String; 2]>::try_from(positional).ok()?;
        drop_mount_fuse_tail(&mut options);
        Some(Self { source, mountpoint: mountpoint.into(), options })
    }

    /// The value of option `key`, if given.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Drops the `dev`/`suid` that `mount.fuse3` appends on its own.
///
/// `mount.fuse3` (what `mount -t fuse.NAME`, fstab and systemd units run) gives root mounts
/// mount(8)'s defaults by appending `dev` unless `nodev` was given and then `suid` unless
/// `nosuid` was given. That tail is not the user asking for setuid binaries or devices, and
/// bootseer's defaults are `nosuid,nodev` (DESIGN "Production defaults"), so a list ending in
/// exactly that tail loses it. `suid`/`dev` written anywhere before it still count (an fstab
/// `suid` arrives as `suid,…,dev,suid`). Called directly, a list that happens to end in the same
/// tail (`-o dev,suid`) loses it too: the mistake falls on the safe side.
pub(crate) fn drop_mount_fuse_tail(options: &mut Vec<(String, String)>) {
    let flag = |(k, v): &(String, String), name: &str| k == name && v.is_empty();
    // What mount.fuse3 appends, in its order, and the option that stops it.
    const TAIL: [(&str, &str); 2] = [("dev", "nodev"), ("suid", "nosuid")];
    // Try the longest tail mount.fuse3 could have written first: the prefix before it decides
    // which flags it appended.
    for take in [2usize, 1] {
        if options.len() < take {
            continue;
        }
        let (prefix, end) = options.split_at(options.len() - take);
        let expected: Vec<&str> = TAIL
            .iter()
            .filter(|(_, negation)| !prefix.iter().any(|o| flag(o, negation)))
            .map(|(name, _)| *name)
            .collect();
        if !expected.is_empty()
            && expected.len() == take
            && end.iter().zip(&expected).all(|(o, name)| flag(o, name))
        {
            options.truncate(prefix.len());
            return;
        }
    }
}

pub(crate) fn split_options(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter(|o| !o.is_empty())
        .map(|o| match o.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (o.to_string(), String::new()),
        })
        .collect()
}

/// How the daemon child tells its waiting parent the mount is ready (or why it is not).
#[derive(Debug)]
pub struct Ready {
    pipe: Option<std::fs::File>,
}

impl Ready {
    /// A notifier that tells nobody (foreground mode).
    pub fn foreground() -> Self {
        Self { pipe: None }
    }

    /// The mount is up: the parent exits 0.
    pub fn ready(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"OK\n");
        }
    }

    /// The mount failed: the parent prints `message` and exits 1.
    pub fn failed(&mut self, message: &str) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(format!("ERR {message}\n").as_bytes());
        }
    }
}

/// The daemon's log file, once [`daemonize`] opened it (for [`reopen_log`]).
static LOG_PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Reopens the daemon's log file onto stderr (SIGHUP, after logrotate moved it away). Does
/// nothing for a daemon without a log file or in the foreground.
pub fn reopen_log() -> std::io::Result<()> {
    let Some(path) = LOG_PATH.get() else { return Ok(()) };
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    // SAFETY: dup2 onto fd 2, which the process owns as its stderr; writers holding the old
    // description finish their write on it, later writes go to the new file.
    if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Forks into the background. Call before any thread or runtime exists.
///
/// In the parent this never returns: it waits for the child's [`Ready`] message and exits 0, or
/// prints the child's error and exits 1. In the child it returns the notifier, after `setsid`,
/// with stdin and stdout on /dev/null and stderr on `log` (or /dev/null).
pub fn daemonize(log: Option<&Path>) -> std::io::Result<Ready> {
    // Close-on-exec: fusermount3 (exec'd by the child for auto_unmount) lives as long as the
    // mount and must not inherit the write end, or the parent would wait for its EOF forever.
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    // SAFETY: called before any other thread exists (documented precondition), so the child
    // has a consistent copy of the address space and may run arbitrary code.
    match unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(write);
            // One line is the whole answer; never wait for EOF.
            let mut reply = String::new();
            let _ = std::io::BufReader::new(std::fs::File::from(read)).read_line(&mut reply);
            match reply.lines().next() {
                Some("OK") => std::process::exit(0),
                Some(line) => {
                    eprintln!("{}", line.strip_prefix("ERR ").unwrap_or(line));
                    std::process::exit(1)
                }
                None => {
                    eprintln!("the mount daemon exited before the mount was ready");
                    std::process::exit(1)
                }
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(read);
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            // A daemon must not hold the directory it was started from busy (an unmount of it,
            // a deleted build tree): its paths are absolute from here on.
            nix::unistd::chdir("/").map_err(std::io::Error::from)?;
            let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
            let err: OwnedFd = match log {
                Some(path) => {
                    let _ = LOG_PATH.set(path.to_path_buf());
                    std::fs::OpenOptions::new().create(true).append(true).open(path)?.into()
                }
                // Started by systemd (a .mount unit, a service's ExecStart): stderr is the
                // journal, and stays so.
                None if stderr_is_journal() => std::io::stderr().as_fd().try_clone_to_owned()?,
                None => null.try_clone()?.into(),
            };
            for (fd, target) in [(null.as_raw_fd(), 0), (null.as_raw_fd(), 1), (err.as_raw_fd(), 2)]
            {
                // SAFETY: dup2 on fds we own onto the standard descriptors; no Rust object
                // owns 0–2 in a way that a replaced descriptor could break.
                if unsafe { libc::dup2(fd, target) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // SAFETY: `write` is an open fd we own; the File takes over closing it.
            let pipe =
                unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(write)) };
            Ok(Ready { pipe: Some(pipe) })
        }
    }
}

/// Whether stderr is the journal stream systemd gave this process: `JOURNAL_STREAM` names the
/// device and inode of the journal's socket (see systemd.exec(5)), which must be what fd 2 is,
/// not merely inherited from a parent whose stderr it was.
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.split_once(':') else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    nix::sys::stat::fstat(std::io::stderr()).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// Writes `data` to `path` through a temporary file and a rename, so a reader of the summary
/// file never sees half of one.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Encodes `summary` as pretty JSON, logs it as `event`, and writes it atomically to `path`
/// when one is given: the one way both daemons publish a summary, at unmount and on SIGUSR1.
/// Returns the JSON.
pub fn publish_summary(
    summary: &impl serde::Serialize,
    path: Option<&Path>,
    event: &str,
) -> std::io::Result<String> {
    let json = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    tracing::info!(summary = %json, "{event}");
    if let Some(path) = path {
        write_atomic(path, json.as_bytes())?;
    }
    Ok(json)
}

/// The signals [`serve`] acts on, blocked in every thread of the daemon.
///
/// A process-directed signal goes to any thread that does not block it, and the default action
/// of SIGTERM or SIGUSR1 kills the whole process (no unmount, no summary). So they must be
/// blocked before the first thread (tokio runtime, FUSE session) is spawned, which inherits the
/// mask; [`serve`] then takes them with `sigwait` in a thread of its own.
#[derive(Debug)]
pub struct ServeSignals(nix::sys::signal::SigSet);

impl ServeSignals {
    /// Blocks SIGTERM, SIGINT, SIGHUP and SIGUSR1 in the calling thread. Call it in the main
    /// thread before any other thread exists (right after [`daemonize`]).
    pub fn block() -> std::io::Result<Self> {
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGUSR1] {
            set.add(sig);
        }
        set.thread_block().map_err(std::io::Error::from)?;
        Ok(Self(set))
    }
}

/// Keeps `session` mounted at `mountpoint` until SIGTERM or SIGINT (then unmounts and
/// joins) or until the mount goes away by other means (`umount`, `fusermount3 -u`). SIGUSR1
/// calls `report` and keeps serving: the filesystem's summary on demand
/// (`pkill -USR1 -f 'bootseer-… .*MOUNTPOINT'`).
pub fn serve(
    session: fuser::BackgroundSession,
    mountpoint: &Path,
    signals: ServeSignals,
    report: impl Fn(),
) -> std::io::Result<()> {
    use nix::sys::signal::Signal;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("bootseer-signals".into()).spawn(move || {
        let mask = signals.0;
        let _ = mask.thread_block();
        while let Ok(sig) = mask.wait() {
            if tx.send(sig).is_err() {
                break;
            }
        }
    })?;
    loop {
        if session.guard.is_finished() {
            tracing::info!(mountpoint = %mountpoint.display(), "unmounted externally");
            return session.join();
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Signal::SIGUSR1) => report(),
            // logrotate's signal: a new log file, the mount keeps serving.
            Ok(Signal::SIGHUP) => match reopen_log() {
                Ok(()) => tracing::info!("log reopened (SIGHUP)"),
                Err(e) => tracing::warn!(error = %e, "reopening the log (SIGHUP)"),
            },
            Ok(sig) => {
                tracing::info!(?sig, mountpoint = %mountpoint.display(), "unmounting");
                // Our own unmount, not fuser's: with auto_unmount, fuser leaves the kernel mount
                // to fusermount3 and its worker threads would wait on /dev/fuse forever.
                if unmount(mountpoint)? == Unmounted::Lazily {
                    tracing::warn!(mountpoint = %mountpoint.display(), "busy: detached lazily");
                }
                return session.join();
            }
            Err(_) => {}
        }
    }
}

/// Makes glibc's malloc give every buffer of 256 KiB or more its own mapping, returned to the
/// kernel when freed. Its default raises that threshold as large blocks are freed, after which
/// block and stripe buffers (64 KiB – 8 MiB) are carved from per-thread arenas that keep the
/// memory: a daemon's RSS then grows past `--memory` although what it holds stays within it.
/// Call it before any thread exists. It costs every such allocation its page faults: on
/// bootseer-image's read path (1 MiB blocks) fio's sequential reads fell from 305 to 195 MiB/s
/// cold and 309 to 223 MiB/s over a filled cache dir, so only bootseer-ckpt, whose 64-reader
/// memory budget test needs it, calls it.
pub fn return_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc tunable; called before any other thread exists, and
    // any value is valid for M_MMAP_THRESHOLD up to 32 MiB.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Makes glibc's malloc keep one arena for every thread. By default it makes up to 8 per core,
/// each keeping what its threads freed, so a daemon's RSS past `--memory` grows with the host's
/// core count rather than with what it holds: bootseer-image's 16 MiB-budget full-disk test
/// peaked at 61–70 MiB with 2 tokio workers, 78–85 MiB with 8–16 (as on a larger CI host), and
/// 37 MiB with one arena. One arena costs the read path nothing measurable (image-fio, 256 MiB,
/// 3 runs: cold sequential 848 → 874 MiB/s, warm 1,506 → 1,515 MiB/s): small allocations come
/// from per-thread caches without the arena's lock. Safe at any time (it bounds arenas not yet
/// made); call it before the runtime's threads exist.
pub fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc tunable, and 1 is a valid M_ARENA_MAX.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// `path` made absolute against the current directory (not resolving symlinks), for paths a
/// daemon uses after it has changed to `/`. A path that cannot be made absolute is kept.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// How a binary runs as a mount daemon (from its CLI or `-o` keys).
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Stay in the foreground (no fork; errors go to the terminal).
    pub foreground: bool,
    /// The daemon's log file (stderr of the daemon; `None`: the journal's stream or socket, else
    /// /dev/null once daemonized; see [`crate::telemetry::Output::for_daemon`]).
    pub log: Option<PathBuf>,
    /// Default log filter when `BOOTSEER_LOG` is unset (e.g. `bootseer_image=info,…`).
    pub log_filter: &'static str,
    /// Write the daemon's pid here (removed when `body` returns): what `umount` helpers and
    /// init systems wait on to know the summary and trace are written.
    pub pidfile: Option<PathBuf>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` ([`metrics::install`], in the daemon
    /// after the fork, before `body`).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// The one mount lifecycle of every bootseer binary: daemonizes unless `foreground` (before any
/// thread exists), blocks the serve signals (so every later thread inherits the mask), starts
/// logging, starts the metrics endpoint when asked, then runs `body`. Call it first in `main`,
/// before any thread exists. An error from `body` (or a metrics address that cannot be bound)
/// is handed to the waiting parent (which prints it and exits 1) and returned.
pub fn run_daemon(
    options: &DaemonOptions,
    body: impl FnOnce(&mut Ready, ServeSignals) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    crate::timeline::mark(crate::timeline::MOUNT_CALLED);
    // mount(8) runs helpers (mount.fuse3 → us) with no PATH at all: fusermount3 would not be
    // found, the mount would go through fuser's direct mount() — type `fuse` without our
    // subtype, no auto_unmount. Give the daemon the standard one.
    if std::env::var_os("PATH").is_none() {
        // SAFETY: run_daemon runs first in main, before any thread exists (its documented
        // precondition, the same as daemonize's), so nothing reads the environment meanwhile.
        unsafe { std::env::set_var("PATH", DEFAULT_PATH) };
    }
    // The daemon changes to `/` once forked: a relative path given on the command line must be
    // taken from where the user ran it, now.
    let options = &DaemonOptions {
        log: options.log.as_deref().map(absolute),
        pidfile: options.pidfile.as_deref().map(absolute),
        ..options.clone()
    };
    let mut ready = if options.foreground {
        Ready::foreground()
    } else {
        daemonize(options.log.as_deref()).context("daemonizing")?
    };
    let signals = ServeSignals::block().context("blocking signals")?;
    // The log file, the journal's stream or the terminal; else journald's socket, if any.
    let stderr_chosen = options.foreground || options.log.is_some() || stderr_is_journal();
    let output = crate::telemetry::Output::for_daemon(stderr_chosen);
    crate::telemetry::init_daemon(options.log_filter, output);
    if let Some(p) = &options.pidfile
        && let Err(e) = write_atomic(p, format!("{}\n", std::process::id()).as_bytes())
    {
        let e = anyhow::anyhow!("writing the pidfile {}: {e}", p.display());
        ready.failed(&error_chain(&e));
        return Err(e);
    }
    if let Some(addr) = options.metrics_addr
        && let Err(e) = metrics::install(addr)
    {
        if let Some(p) = &options.pidfile {
            let _ = std::fs::remove_file(p);
        }
        ready.failed(&error_chain(&e));
        return Err(e);
    }
    let result = body(&mut ready, signals);
    if let Some(p) = &options.pidfile {
        let _ = std::fs::remove_file(p);
    }
    if let Err(e) = &result {
        tracing::error!(error = %error_chain(e), "the daemon stops");
    }
    crate::telemetry::flush();
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            ready.failed(&error_chain(&e));
            Err(e)
        }
    }
}

/// `e` and its causes as one line (`outer: inner: …`), leaving out a cause whose text the line
/// already holds: error types that print their source in their own message would otherwise
/// repeat it.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Refuses a mount point that is not an existing directory, before anything is mounted (a
/// mount on a regular file would "succeed" and answer EIO to everything).
pub fn check_mountpoint(mountpoint: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(mountpoint) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => anyhow::bail!("mount point {} is not a directory", mountpoint.display()),
        Err(e) => anyhow::bail!("mount point {}: {e}", mountpoint.display()),
    }
}

/// Mounts `fs` at `mountpoint` and starts its session threads.
///
/// With `fusermount3` (auto_unmount), or as a user, fuser mounts. As root without it, fuser's
/// own mount(2) names the type `fuse` and drops the subtype, so `findmnt -t fuse.NAME` would
/// miss the mount: then this mounts with type `fuse.<subtype>` itself and hands fuser the
/// /dev/fuse descriptor (the session unmounts nothing on drop; [`serve`] and [`unmount`] do).
pub fn spawn_session<FS: fuser::Filesystem + Send + 'static>(
    fs: FS,
    mountpoint: &Path,
    config: &MountConfig,
) -> std::io::Result<fuser::BackgroundSession> {
    use nix::mount::MsFlags;
    use std::os::unix::fs::MetadataExt;
    let fuser_config = config.fuser_config();
    if fuser_config.mount_options.contains(&MountOption::AutoUnmount)
        || !nix::unistd::geteuid().is_root()
    {
        return fuser::spawn_mount(fs, mountpoint, &fuser_config);
    }
    // Read-write open of the device; Rust opens it close-on-exec.
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},default_permissions",
        dev.as_raw_fd(),
        std::fs::metadata(mountpoint)?.mode(),
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    if config.flags.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = MsFlags::MS_RDONLY | MsFlags::MS_NOATIME;
    for (on, flag) in [
        (config.flags.suid, MsFlags::MS_NOSUID),
        (config.flags.dev, MsFlags::MS_NODEV),
        (config.flags.exec, MsFlags::MS_NOEXEC),
    ] {
        if !on {
            flags |= flag;
        }
    }
    let fstype = format!("fuse.{}", config.subtype);
    nix::mount::mount(
        Some(config.fsname.as_str()),
        mountpoint,
        Some(fstype.as_str()),
        flags,
        Some(data.as_str()),
    )
    .map_err(std::io::Error::from)?;
    let acl = fuser_config.acl;
    match fuser::Session::from_fd(fs, OwnedFd::from(dev), acl, fuser_config)
        .and_then(fuser::Session::spawn)
    {
        Ok(session) => Ok(session),
        Err(e) => {
            let _ = unmount(mountpoint);
            Err(e)
        }
    }
}

/// Mounts `fs` at `mountpoint` with `config`, raises read-ahead (root only), tells the parent
/// the mount is ready, and serves until unmount or a signal ([`serve`]; SIGUSR1 calls
/// `report`). Returns once the session has ended; the caller then writes its summary.
pub fn mount_and_serve<FS: fuser::Filesystem + Send + 'static>(
    fs: FS,
    mountpoint: &Path,
    config: &MountConfig,
    ready: &mut Ready,
    signals: ServeSignals,
    report: impl Fn(),
) -> anyhow::Result<()> {
    use anyhow::Context;
    check_mountpoint(mountpoint)?;
    let bg = spawn_session(fs, mountpoint, config)
        .with_context(|| format!("mounting at {}", mountpoint.display()))?;
    if nix::unistd::geteuid().is_root()
        && config.read_ahead_kb > 0
        && let Err(e) = raise_read_ahead(mountpoint, config.read_ahead_kb)
    {
        tracing::warn!(error = %e, "could not raise read-ahead");
    }
    tracing::info!(source = %config.fsname, mountpoint = %mountpoint.display(), "mounted");
    ready.ready();
    crate::timeline::mark(crate::timeline::READY);
    let served = serve(bg, mountpoint, signals, report).context("serving");
    crate::timeline::mark(crate::timeline::UNMOUNT);
    served
}

impl MountConfig {
    /// Applies parsed `-o` flags and daemon keys (threads, read-ahead) to this config.
    pub fn apply(&mut self, parsed: &ParsedOptions) {
        self.flags = parsed.flags;
        if let Some(t) = parsed.daemon.threads {
            self.threads = t;
        }
        if let Some(kb) = parsed.daemon.read_ahead_kb {
            self.read_ahead_kb = kb;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn helper_form_parses() {
        let a =
            MountArgs::parse_helper(&args("file:///s/img:v1 /mnt -o ro,cache_dir=/c,trace=auto"))
                .expect("helper form");
        assert_eq!(a.source, "file:///s/img:v1");
        assert_eq!(a.mountpoint, PathBuf::from("/mnt"));
        assert_eq!(a.option("cache_dir"), Some("/c"));
        assert_eq!(a.option("ro"), Some(""));
        assert_eq!(a.option("nope"), None);
        assert!(MountArgs::parse_helper(&args("only-one")).is_none());
        assert!(MountArgs::parse_helper(&args("a b c")).is_none());
        let b = MountArgs::parse_helper(&args("src /m -n -oro")).expect("compact -o");
        assert_eq!(b.options, vec![("ro".to_string(), String::new())]);
    }

    #[test]
    fn the_dev_suid_tail_of_mount_fuse3_is_not_a_request() {
        let keys = |s: &str| -> Vec<String> {
            MountArgs::parse_helper(&args(&format!("src /m -o {s}")))
                .expect("helper form")
                .options
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        // What mount.fuse3 passes for `-o ro`, `-o ro,nosuid`, `-o ro,nodev`, `-o suid`,
        // `-o nosuid,nodev`.
        assert_eq!(keys("ro,trace=off,dev,suid"), ["ro", "trace"]);
        assert_eq!(keys("ro,nosuid,dev"), ["ro", "nosuid"]);
        assert_eq!(keys("ro,nodev,suid"), ["ro", "nodev"]);
        assert_eq!(keys("suid,allow_other,dev,suid"), ["suid", "allow_other"]);
        assert_eq!(keys("ro,nosuid,nodev"), ["ro", "nosuid", "nodev"]);
        // Called directly: flags the user wrote stay.
        assert_eq!(keys("suid,allow_other"), ["suid", "allow_other"]);
        assert_eq!(keys("allow_other,suid"), ["allow_other", "suid"]);
        assert_eq!(keys("dev"), ["dev"]);
        // A value is not mount.fuse3's bare flag.
        assert_eq!(keys("dev=1,suid=1"), ["dev", "suid"]);
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "images/a/v1: not found");
        let e = anyhow::Error::new(inner)
            .context("no image a:v1 in store file:///s: images/a/v1: not found")
            .context("loading file:///s/a:v1");
        assert_eq!(
            error_chain(&e),
            "loading file:///s/a:v1: no image a:v1 in store file:///s: images/a/v1: not found"
        );
    }

    #[test]
    fn mount_paths_unescape() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount_path(r"/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/end\04"), r"/end\04");
    }
}
