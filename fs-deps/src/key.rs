//! The key of a snapshot: a sha256 over a canonical manifest of everything that decides what a
//! step's command writes, and nothing else.
//!
//! ```text
//!  Step { command, inputs (files), env (names) } ─┐
//!  base: parent step's key, or what DIR held     ├─► Manifest (sorted maps, fixed field order)
//!  Platform { arch, libc, python, abi, cuda }     │      ─► serde_json bytes ─► sha256 ─► key
//!  salt (disowns a poisoned set)                 ─┘
//! ```
//!
//! The manifest is stored with the snapshot (in its index's annotations), so that `explain`
//! can say which input of a miss differs from the nearest stored snapshot.
//!
//! What is deliberately *not* in the key: the target path's mount state, the time, the host
//! name, the store URL. What is: the bytes of each named input file (not its path's mtime), the
//! values of named environment variables (an unset variable is recorded as unset, which differs
//! from empty), the command line exactly, and the identity of DIR before step 1 (a digest of its
//! tree's names, types, modes, owners, sizes, mtimes and symlink targets, or a digest the user
//! names, e.g. the image digest it came from).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Version of the manifest layout; part of the key, so a layout change never hits old
/// snapshots by accident.
pub const MANIFEST_FORMAT: u32 = 1;

/// One step: a command and the inputs that decide what it writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The command line, exactly as run (argv).
    pub command: Vec<String>,
    /// Files whose bytes decide the result (requirements, lock files, setup scripts).
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
    /// Environment variables whose values decide the result (index URLs, build flags).
    #[serde(default)]
    pub env: Vec<String>,
}

/// Platform facts a result depends on. Each can be overridden (`--platform key=value`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// C library and version (`glibc 2.36`).
    pub libc: String,
    /// Python version of the interpreter the command uses (`3.11.7`), or `none`.
    pub python: String,
    /// Its ABI tag (`cpython-311-x86_64-linux-gnu`), or `none`.
    pub python_abi: String,
    /// NVIDIA driver version, or `none`.
    pub cuda_driver: String,
}

/// Everything that decides one step's result: hashed into its key, stored with its snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The snapshot set's name (`--name`).
    pub name: String,
    /// Position of the step, from 1.
    pub step: usize,
    /// The parent step's key, or for step 1 the identity of what DIR held before.
    pub base: String,
    /// The command line.
    pub command: Vec<String>,
    /// Whether the command ran chrooted into DIR.
    pub chroot: bool,
    /// Input file (as named) → `sha256:<hex>` of its bytes.
    pub inputs: BTreeMap<String, String>,
    /// Environment variable → value (`None`: unset).
    pub env: BTreeMap<String, Option<String>>,
    /// Platform facts.
    pub platform: Platform,
    /// Operator's salt: change it to disown every snapshot made under the old one.
    pub salt: String,
}

impl Manifest {
    /// The canonical bytes: serde_json of a struct with fixed field order and sorted maps.
    pub fn canonical(&self) -> Vec<u8> {
        // Serializing plain strings and maps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The key: hex sha256 of [`Manifest::canonical`] (64 characters, a valid OCI tag).
    pub fn key(&self) -> String {
        hex::encode(Sha256::digest(self.canonical()))
    }

    /// Builds the manifest of `step` on `base`: reads every input file and environment variable
    /// now. A missing input file is an error naming it.
    pub fn build(
        name: &str,
        index: usize,
        base: &str,
        step: &Step,
        chroot: bool,
        platform: &Platform,
        salt: &str,
    ) -> anyhow::Result<Self> {
        if step.command.is_empty() {
            bail!("step {index}: no command");
        }
        let mut inputs = BTreeMap::new();
        for path in &step.inputs {
            let digest = file_digest(path)
                .with_context(|| format!("step {index}: input file {}", path.display()))?;
            inputs.insert(path.display().to_string(), digest);
        }
        let env = step.env.iter().map(|k| (k.clone(), std::env::var(k).ok())).collect();
        Ok(Self {
            format: MANIFEST_FORMAT,
            name: name.to_string(),
            step: index,
            base: base.to_string(),
            command: step.command.clone(),
            chroot,
            inputs,
            env,
            platform: platform.clone(),
            salt: salt.to_string(),
        })
    }
}

/// `sha256:<hex>` of a file's bytes.
pub fn file_digest(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        bail!("not a regular file");
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Identity of a directory tree without reading file contents: sha256 over every entry's
/// relative path, type, mode, owner, size, mtime (ns) and symlink target, in name order.
/// A package manager that changes a file changes its size or mtime; reading gigabytes of a
/// rootfs on every start to be sure would cost more than the install it saves.
pub fn tree_digest(root: &Path) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    walk(root, Path::new(""), &mut h).with_context(|| format!("walking {}", root.display()))?;
    Ok(format!("tree:sha256:{}", hex::encode(h.finalize())))
}

fn walk(root: &Path, rel: &Path, h: &mut Sha256) -> std::io::Result<()> {
    let path = root.join(rel);
    let md = std::fs::symlink_metadata(&path)?;
    let ft = md.file_type();
    let size = if ft.is_dir() { 0 } else { md.size() };
    h.update(rel.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(
        format!(
            "{:o} {} {} {} {}.{} {}",
            md.mode(),
            md.uid(),
            md.gid(),
            size,
            md.mtime(),
            md.mtime_nsec(),
            md.rdev()
        )
        .as_bytes(),
    );
    if ft.is_symlink() {
        h.update(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
    }
    h.update([b'\n']);
    if ft.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            walk(root, &rel.join(name), h)?;
        }
    }
    Ok(())
}

/// The platform facts of this host, for a command that runs `python` (`None`: the one the
/// command would find: `DIR/bin/python3` for a venv target, else `python3` on the PATH; for a
/// chroot, `DIR/usr/bin/python3` run inside it).
pub fn detect_platform(target: &Path, chroot: bool, python: Option<&Path>) -> Platform {
    let (python, python_abi) = python_facts(target, chroot, python);
    Platform {
        arch: std::env::consts::ARCH.to_string(),
        libc: libc_version(),
        python,
        python_abi,
        cuda_driver: cuda_driver(),
    }
}

/// Applies `key=value` overrides (`arch`, `libc`, `python`, `python_abi`, `cuda_driver`).
pub fn override_platform(p: &mut Platform, overrides: &[String]) -> anyhow::Result<()> {
    for o in overrides {
        let (k, v) =
            o.split_once('=').with_context(|| format!("--platform {o}: expected KEY=VALUE"))?;
        let slot = match k {
            "arch" => &mut p.arch,
            "libc" => &mut p.libc,
            "python" => &mut p.python,
            "python_abi" => &mut p.python_abi,
            "cuda_driver" => &mut p.cuda_driver,
            _ => bail!("--platform {k}: expected arch, libc, python, python_abi or cuda_driver"),
        };
        *slot = v.to_string();
    }
    Ok(())
}

fn libc_version() -> String {
    // SAFETY: gnu_get_libc_version returns a pointer to a static NUL-terminated string.
    let v = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) };
    format!("glibc {}", v.to_string_lossy())
}

unsafe extern "C" {
    fn gnu_get_libc_version() -> *const libc::c_char;
}

fn cuda_driver() -> String {
    std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| {
                    l.split_whitespace().find(|w| {
                        w.chars().filter(|c| *c == '.').count() >= 1
                            && w.chars().all(|c| c.is_ascii_digit() || c == '.')
                    })
                })
                .map(str::to_string)
        })
        .unwrap_or_else(|| "none".into())
}

const PY_FACTS: &str = "import sys, sysconfig; print(sys.version.split()[0]); print(sysconfig.get_config_var('SOABI') or '')";

fn python_facts(target: &Path, chroot: bool, python: Option<&Path>) -> (String, String) {
    let mut cmd = if chroot {
        let mut c = std::process::Command::new("chroot");
        c.arg(target).arg(python.unwrap_or(Path::new("/usr/bin/python3")));
        c
    } else {
        let venv = target.join("bin/python3");
        let py = match python {
            Some(p) => p.to_path_buf(),
            None if venv.exists() => venv,
            None => PathBuf::from("python3"),
        };
        std::process::Command::new(py)
    };
    let out = cmd.arg("-c").arg(PY_FACTS).stderr(std::process::Stdio::null()).output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let mut lines = text.lines();
            let version = lines.next().unwrap_or("none").trim().to_string();
            let abi = lines.next().unwrap_or("").trim().to_string();
            (version, if abi.is_empty() { "none".into() } else { abi })
        }
        _ => ("none".into(), "none".into()),
    }
}

/// What differs between two manifests, one line per input, in words a user acts on.
pub fn differences(old: &Manifest, new: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |what: &str, a: &str, b: &str| {
        if a != b {
            out.push(format!("{what}: {a} → {b}"));
        }
    };
    field("format", &old.format.to_string(), &new.format.to_string());
    field("step", &old.step.to_string(), &new.step.to_string());
    field("base (parent step or what DIR held)", &old.base, &new.base);
    field("command", &shell_words(&old.command), &shell_words(&new.command));
    field("chroot", &old.chroot.to_string(), &new.chroot.to_string());
    field("arch", &old.platform.arch, &new.platform.arch);
    field("libc", &old.platform.libc, &new.platform.libc);
    field("python", &old.platform.python, &new.platform.python);
    field("python ABI", &old.platform.python_abi, &new.platform.python_abi);
    field("CUDA driver", &old.platform.cuda_driver, &new.platform.cuda_driver);
    field("salt", &old.salt, &new.salt);
    for (path, digest) in &new.inputs {
        match old.inputs.get(path) {
            None => out.push(format!("input file {path}: not an input before (now {digest})")),
            Some(d) if d != digest => out.push(format!("input file {path}: {d} → {digest}")),
            Some(_) => {}
        }
    }
    for path in old.inputs.keys().filter(|p| !new.inputs.contains_key(*p)) {
        out.push(format!("input file {path}: no longer an input"));
    }
    let show =
        |v: &Option<String>| v.as_deref().map_or("(unset)".to_string(), |s| format!("{s:?}"));
    for (k, v) in &new.env {
        match old.env.get(k) {
            None => out.push(format!("env {k}: not an input before (now {})", show(v))),
            Some(o) if o != v => out.push(format!("env {k} differs: {} → {}", show(o), show(v))),
            Some(_) => {}
        }
    }
    for k in old.env.keys().filter(|k| !new.env.contains_key(*k)) {
        out.push(format!("env {k}: no longer an input"));
    }
    out
}

/// A command line as one string, quoting where a shell would need it.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path) -> Manifest {
        std::fs::write(dir.join("requirements.txt"), "numpy==2.0\n").expect("write");
        manifest_from_existing(dir)
    }

    #[test]
    fn the_key_follows_every_input_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = manifest(dir.path());
        let key = m.key();
        assert_eq!(key.len(), 64);
        // Same inputs, built again: same key (nothing time- or host-dependent).
        assert_eq!(manifest(dir.path()).key(), key);
        // Each decisive input changes it, and explain names it.
        let mut changed = Vec::new();
        let mut salt = m.clone();
        salt.salt = "poisoned-2026-12".into();
        changed.push(("salt", salt));
        let mut py = m.clone();
        py.platform.python = "3.12.1".into();
        changed.push(("python", py));
        let mut base = m.clone();
        base.base = "tree:sha256:01".into();
        changed.push(("base", base));
        let mut env = m.clone();
        env.env.insert("BOOTSEER_TEST_UNSET_VAR".into(), Some(String::new()));
        changed.push(("env BOOTSEER_TEST_UNSET_VAR", env));
        for (what, other) in changed {
            assert_ne!(other.key(), key, "{what} did not change the key");
            let diff = differences(&m, &other);
            assert_eq!(diff.len(), 1, "{what}: {diff:?}");
            assert!(diff[0].starts_with(what), "{what}: {diff:?}");
        }
        // A changed requirements file changes the key and is named with both digests.
        let req = dir.path().join("requirements.txt");
        std::fs::write(&req, "numpy==2.1\n").expect("write");
        let m2 = manifest_from_existing(dir.path());
        assert_ne!(m2.key(), key);
        let diff = differences(&m, &m2);
        assert!(diff.iter().any(|d| d.contains("requirements.txt") && d.contains("→")), "{diff:?}");
    }

    fn manifest_from_existing(dir: &Path) -> Manifest {
        let req = dir.join("requirements.txt");
        let step = Step {
            command: vec!["pip".into(), "install".into(), "-r".into(), req.display().to_string()],
            inputs: vec![req],
            env: vec!["BOOTSEER_TEST_UNSET_VAR".into()],
        };
        let platform = Platform { arch: "x86_64".into(), ..Platform::default() };
        Manifest::build("deps", 1, "tree:sha256:00", &step, false, &platform, "").expect("manifest")
    }

    #[test]
    fn a_missing_input_names_the_file() {
        let step = Step {
            command: vec!["true".into()],
            inputs: vec!["/nonexistent/req.txt".into()],
            env: vec![],
        };
        let e = Manifest::build("d", 1, "b", &step, false, &Platform::default(), "")
            .expect_err("missing");
        assert!(format!("{e:#}").contains("/nonexistent/req.txt"), "{e:#}");
    }

    #[test]
    fn tree_digest_sees_content_changes_through_size_or_mtime() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join("a")).expect("mkdir");
        std::fs::write(dir.path().join("a/f"), b"one").expect("write");
        let d1 = tree_digest(dir.path()).expect("digest");
        assert_eq!(tree_digest(dir.path()).expect("digest"), d1);
        std::fs::write(dir.path().join("a/f"), b"four").expect("write");
        assert_ne!(tree_digest(dir.path()).expect("digest"), d1);
    }

    #[test]
    fn platform_overrides_apply_and_refuse_unknown_keys() {
        let mut p = Platform::default();
        override_platform(&mut p, &["python=3.12.0".into(), "cuda_driver=550.54".into()])
            .expect("ok");
        assert_eq!((p.python.as_str(), p.cuda_driver.as_str()), ("3.12.0", "550.54"));
        assert!(override_platform(&mut p, &["gpu=h100".into()]).is_err());
        let host = detect_platform(Path::new("/nonexistent"), false, None);
        assert!(host.libc.starts_with("glibc "), "{host:?}");
        assert_eq!(host.arch, std::env::consts::ARCH);
    }
}
