//! One `-o` parser for every bootseer binary (image, deps, ckpt), in both calling forms: the
//! mount-helper form (`mount -t fuse.NAME SRC DIR -o k=v,…`, fstab, systemd units) and `-o` on
//! each binary's `mount` subcommand.
//!
//! ```text
//!  "-o ro,allow_other,cache_dir=/c,x-systemd.after=net,nofail"
//!     ─► split ─► each key:
//!          standard FUSE/VFS key (ro, suid, dev, exec, allow_other, …) ─► MountFlags
//!          daemon key (foreground, log, summary, threads, read_ahead, pidfile,
//!                      metrics_addr)                                     ─► DaemonKeys
//!          for mount(8)/systemd only (_netdev, x-systemd.*, noauto, nofail, defaults, …) ─► ignored
//!          one of the filesystem's own keys ─► returned, in order, for it to parse
//!          anything else ─► OptionError::Unknown naming the key and the keys that exist
//! ```
//!
//! Safe defaults (DESIGN "Production defaults"): `nosuid`, `nodev`, no `allow_other`. A user
//! who wants an image's setuid binaries or device nodes honoured, or other users to read the
//! tree, says so (`suid`, `dev`, `allow_other`).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Mount flags every bootseer mount understands, with the safe defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountFlags {
    /// Let users other than the mounter use the tree (`allow_other`; default off).
    pub allow_other: bool,
    /// Honour setuid/setgid bits (`suid`; default `nosuid`).
    pub suid: bool,
    /// Honour device nodes (`dev`; default `nodev`).
    pub dev: bool,
    /// Allow executing files (`exec`, the default; `noexec` turns it off).
    pub exec: bool,
}

impl Default for MountFlags {
    fn default() -> Self {
        Self { allow_other: false, suid: false, dev: false, exec: true }
    }
}

/// Keys about the daemon rather than the tree, the same in every binary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonKeys {
    /// `foreground`: do not daemonize.
    pub foreground: bool,
    /// `log=FILE`: the daemon's log file.
    pub log: Option<PathBuf>,
    /// `summary=FILE`: where the JSON summary goes.
    pub summary: Option<PathBuf>,
    /// `threads=N`: FUSE worker threads.
    pub threads: Option<usize>,
    /// `read_ahead=SIZE`: kernel read-ahead of the mount, in KiB.
    pub read_ahead_kb: Option<u32>,
    /// `pidfile=FILE`: the daemon writes its pid here once mounted, removes it on exit.
    pub pidfile: Option<PathBuf>,
    /// `metrics_addr=HOST:PORT`: serve Prometheus metrics at `http://HOST:PORT/metrics`.
    pub metrics_addr: Option<SocketAddr>,
}

/// Everything parsed from a list of `-o` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedOptions {
    /// Standard mount flags.
    pub flags: MountFlags,
    /// Daemon keys.
    pub daemon: DaemonKeys,
    /// The filesystem's own keys, in the order given (`key`, `value`; value empty for a flag).
    pub own: Vec<(String, String)>,
}

/// Why an option list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// A key nobody knows.
    #[error("unknown mount option {key:?} (known: {known})")]
    Unknown { key: String, known: String },
    /// A known key with a value that does not parse.
    #[error("mount option {key}={value:?}: {reason}")]
    BadValue { key: String, value: String, reason: String },
    /// A key that would make the mount writable: bootseer trees are read-only.
    #[error("mount option {key:?}: bootseer mounts are read-only")]
    ReadWrite { key: String },
}

/// Standard keys that change the mount.
const FLAG_KEYS: &[&str] =
    &["ro", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "allow_other", "allow_root"];
/// Keys accepted and ignored: either meant for mount(8)/systemd, or what bootseer always does
/// (`default_permissions`, `noatime`).
const IGNORED_KEYS: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "comment",
    "default_permissions",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "async",
    "sync",
    "dirsync",
    "nosymfollow",
];
/// Daemon keys (see [`DaemonKeys`]).
const DAEMON_KEYS: &[&str] =
    &["foreground", "log", "summary", "threads", "read_ahead", "pidfile", "metrics_addr"];

fn ignored(key: &str) -> bool {
    IGNORED_KEYS.contains(&key) || key.starts_with("x-systemd.") || key.starts_with("x-")
}

/// Parses `options` (as [`super::MountArgs::options`] holds them): standard flags and daemon
/// keys are taken, keys for mount(8) ignored, `own_keys` returned for the filesystem to parse,
/// and anything else refused with an error naming it.
pub fn parse(
    options: &[(String, String)],
    own_keys: &[&str],
) -> Result<ParsedOptions, OptionError> {
    let mut out = ParsedOptions::default();
    for (key, value) in options {
        let k = key.as_str();
        let bad = |reason: String| OptionError::BadValue {
            key: key.clone(),
            value: value.clone(),
            reason,
        };
        match k {
            "ro" => {}
            "rw" => return Err(OptionError::ReadWrite { key: key.clone() }),
            "suid" => out.flags.suid = true,
            "nosuid" => out.flags.suid = false,
            "dev" => out.flags.dev = true,
            "nodev" => out.flags.dev = false,
            "exec" => out.flags.exec = true,
            "noexec" => out.flags.exec = false,
            // allow_root is narrower than allow_other; root can always reach a root daemon's
            // mount through auto_unmount's RootAndOwner, so both mean "let others in" here.
            "allow_other" | "allow_root" => out.flags.allow_other = true,
            "foreground" => out.daemon.foreground = true,
            "log" => out.daemon.log = Some(nonempty(value).map_err(bad)?.into()),
            "summary" => out.daemon.summary = Some(nonempty(value).map_err(bad)?.into()),
            "pidfile" => out.daemon.pidfile = Some(nonempty(value).map_err(bad)?.into()),
            "metrics_addr" => {
                out.daemon.metrics_addr = Some(parse_socket_addr(value).map_err(bad)?);
            }
            "threads" => {
                let n: usize = value.parse().map_err(|e| bad(format!("{e}")))?;
                if n == 0 || n > 1024 {
                    return Err(bad("between 1 and 1024".into()));
                }
                out.daemon.threads = Some(n);
            }
            "read_ahead" => {
                let bytes = crate::units::parse_size(value).map_err(bad)?;
                out.daemon.read_ahead_kb =
                    Some(u32::try_from(bytes / 1024).map_err(|_| bad("too large".into()))?);
            }
            _ if own_keys.contains(&k) => out.own.push((key.clone(), value.clone())),
            _ if ignored(k) => {}
            _ => {
                let mut known: Vec<&str> =
                    FLAG_KEYS.iter().chain(DAEMON_KEYS).chain(own_keys).copied().collect();
                known.sort_unstable();
                return Err(OptionError::Unknown { key: key.clone(), known: known.join(", ") });
            }
        }
    }
    Ok(out)
}

/// Parses `HOST:PORT` (an IP literal or a name that resolves, e.g. `localhost:9464`; `[::]:PORT`
/// for IPv6) into the first address it resolves to.
pub fn parse_socket_addr(value: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    value
        .to_socket_addrs()
        .map_err(|e| format!("expected HOST:PORT: {e}"))?
        .next()
        .ok_or_else(|| "resolves to no address".into())
}

fn nonempty(value: &str) -> Result<&str, String> {
    if value.is_empty() { Err("needs a value".into()) } else { Ok(value) }
}

/// Splits `-o` strings as given on a command line (`a=1,b`, several `-o` allowed).
pub fn split_all<S: AsRef<str>>(lists: &[S]) -> Vec<(String, String)> {
    lists.iter().flat_map(|l| super::split_options(l.as_ref())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Vec<(String, String)> {
        split_all(&[s])
    }

    #[test]
    fn defaults_are_safe() {
        let p = parse(&[], &[]).expect("empty");
        assert_eq!(p.flags, MountFlags { allow_other: false, suid: false, dev: false, exec: true });
    }

    #[test]
    fn fstab_options_are_taken_or_ignored_and_own_keys_returned() {
        let p = parse(
            &opts("ro,suid,dev,noexec,allow_other,_netdev,x-systemd.after=net.target,noauto,nofail,defaults,cache_dir=/c,summary=/s.json,threads=4,read_ahead=1M"),
            &["cache_dir"],
        )
        .expect("fstab line");
        assert_eq!(p.flags, MountFlags { allow_other: true, suid: true, dev: true, exec: false });
        assert_eq!(p.own, vec![("cache_dir".to_string(), "/c".to_string())]);
        assert_eq!(p.daemon.summary, Some(PathBuf::from("/s.json")));
        assert_eq!(p.daemon.threads, Some(4));
        assert_eq!(p.daemon.read_ahead_kb, Some(1024));
        let m = parse(&opts("metrics_addr=127.0.0.1:9464"), &[]).expect("metrics_addr");
        assert_eq!(m.daemon.metrics_addr, Some(SocketAddr::from(([127, 0, 0, 1], 9464))));
        // The later flag wins, as mount(8) does.
        assert!(!parse(&opts("suid,nosuid"), &[]).expect("flags").flags.suid);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = parse(&opts("cache_dri=/c"), &["cache_dir"]).expect_err("typo");
        let msg = e.to_string();
        assert!(msg.contains("\"cache_dri\"") && msg.contains("cache_dir"), "{msg}");
        assert!(matches!(parse(&opts("rw"), &[]), Err(OptionError::ReadWrite { .. })));
        assert!(parse(&opts("threads=0"), &[]).is_err());
        assert!(parse(&opts("threads=x"), &[]).is_err());
        assert!(parse(&opts("log="), &[]).is_err());
        assert!(parse(&opts("read_ahead=12Q"), &[]).is_err());
        assert!(parse(&opts("metrics_addr=nope"), &[]).is_err());
        assert!(parse(&opts("metrics_addr="), &[]).is_err());
        assert!(parse(&opts("metrics_adr=127.0.0.1:1"), &[]).is_err());
    }
}
