//! What the fs-deps tests share: running the real binary, an independent tree walk to compare
//! trees entry for entry, and the wheelhouse `.ci/run` fetches.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};

/// The built binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_bootseer-deps")
}

/// A scratch area whose state directory and targets are torn down on drop, even when an
/// assertion failed half-way (nothing stays mounted).
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self { dir: tempfile::Builder::new().prefix("bootseer-deps-test-").tempdir().expect("tmp") }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn state(&self) -> PathBuf {
        self.path("state")
    }

    /// `bootseer-deps ARGS…` with this scratch's state dir where the command takes one.
    pub fn deps(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin());
        cmd.args(args);
        cmd.output().expect("running bootseer-deps")
    }

    /// `run` with the scratch state dir; returns the output.
    pub fn run(&self, store: &str, target: &Path, extra: &[&str], command: &[&str]) -> Output {
        let state = self.state();
        let mut args: Vec<String> = vec![
            "run".into(),
            "--store".into(),
            store.into(),
            "--target".into(),
            target.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--".into());
        args.extend(command.iter().map(|s| s.to_string()));
        Command::new(bin()).args(&args).output().expect("running bootseer-deps run")
    }

    pub fn umount(&self, target: &Path) -> Output {
        Command::new(bin())
            .arg("umount")
            .arg(target)
            .arg("--state-dir")
            .arg(self.state())
            .output()
            .expect("umount")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Then anything else a failed test left mounted under the scratch dir (deepest first).
        let under = self.dir.path().display().to_string();
        let mut mounted: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
            .filter(|p| p.starts_with(&under) && !p.contains("/state/"))
            .collect();
        // Take down whatever a failed test left stacked under our state dir.
        if let Ok(entries) = std::fs::read_dir(self.state()) {
            for e in entries.flatten() {
                if let Ok(data) = std::fs::read(e.path().join("state.json"))
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data)
                    && let Some(t) = v["target"].as_str()
                {
                    let _ = self.umount(Path::new(t));
                }
            }
        }
        mounted.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in mounted {
            if bootseer_common::mount::is_mounted(Path::new(&p)) {
                let _ = bootseer_common::mount::unmount(Path::new(&p));
            }
        }
    }
}

/// Asserts a command succeeded, showing its output otherwise.
pub fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The outcome of each step from `run`'s JSON report.
pub fn outcomes(stdout: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(stdout).expect("run report JSON");
    v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["outcome"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The key of each step from `run`'s JSON report.
pub fn keys(stdout: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(stdout).expect("run report JSON");
    v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["key"].as_str().unwrap_or("").to_string())
        .collect()
}

/// One entry of a tree as a plain `lstat` + read sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub content: String,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Index of the first path in walk order sharing this inode (hardlinks), else None.
    pub link_group: Option<String>,
}

/// Walks `root` with std::fs only: every entry's type, mode, owner, size (not for directories:
/// their st_size is filesystem-specific), ns mtime, content digest or symlink target, xattrs,
/// and hardlink groups. The root's own entry is included under "".
pub fn walk(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    walk_into(root, Path::new(""), &mut out, &mut inodes);
    out
}

fn walk_into(
    root: &Path,
    rel: &Path,
    out: &mut BTreeMap<String, Entry>,
    inodes: &mut BTreeMap<(u64, u64), String>,
) {
    let path = root.join(rel);
    let md = std::fs::symlink_metadata(&path).expect("lstat");
    let ft = md.file_type();
    let name = rel.display().to_string();
    let (kind, content) = if ft.is_dir() {
        ("dir", String::new())
    } else if ft.is_symlink() {
        ("symlink", std::fs::read_link(&path).expect("readlink").display().to_string())
    } else if ft.is_file() {
        ("file", hex::encode(Sha256::digest(std::fs::read(&path).expect("read"))))
    } else {
        ("other", format!("rdev {}", md.rdev()))
    };
    let link_group = if ft.is_file() && md.nlink() > 1 {
        Some(inodes.entry((md.dev(), md.ino())).or_insert_with(|| name.clone()).clone())
    } else {
        None
    };
    let mut xattrs = BTreeMap::new();
    if let Ok(names) = xattr::list(&path) {
        for n in names {
            if let Ok(Some(v)) = xattr::get(&path, &n) {
                xattrs.insert(n.to_string_lossy().into_owned(), v);
            }
        }
    }
    out.insert(
        name,
        Entry {
            kind,
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: if ft.is_dir() { 0 } else { md.size() },
            mtime: (md.mtime(), md.mtime_nsec()),
            content,
            xattrs,
            link_group,
        },
    );
    if ft.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&path)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        for n in names {
            walk_into(root, &rel.join(n), out, inodes);
        }
    }
}

/// Compares two walks; returns the first few differences (empty: identical).
pub fn diff(a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, ea) in a {
        match b.get(k) {
            None => out.push(format!("{k:?}: only in the first tree")),
            Some(eb) if ea != eb => out.push(format!("{k:?}: {ea:?} vs {eb:?}")),
            Some(_) => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.push(format!("{k:?}: only in the second tree"));
    }
    out.truncate(10);
    out
}

/// The wheelhouse `.ci/run` (scripts/install-test-deps) fills: numpy, safetensors, tqdm, six
/// 1.16.0 and 1.17.0.
pub fn wheelhouse() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wheelhouse");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| anyhow::anyhow!("{}: {e} (run scripts/install-test-deps)", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for want in ["numpy-", "safetensors-", "tqdm-", "six-1.16.0", "six-1.17.0"] {
        anyhow::ensure!(
            names.iter().any(|n| n.starts_with(want)),
            "{want}* missing from {} (run scripts/install-test-deps)",
            dir.display()
        );
    }
    Ok(dir.canonicalize()?)
}

/// Whether FUSE and overlayfs mounts can run here (root, /dev/fuse).
pub fn can_mount() -> anyhow::Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "not root");
    anyhow::ensure!(Path::new("/dev/fuse").exists(), "no /dev/fuse");
    Ok(())
}

/// Every file under `dir` (relative paths), for "the writable top is empty".
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            if p.is_dir() && !p.is_symlink() {
                out.extend(
                    files_under(&p)
                        .into_iter()
                        .map(|c| format!("{}/{c}", e.file_name().to_string_lossy())),
                );
            }
        }
    }
    out
}

/// The state directory bootseer-deps uses for `target` under `root`.
pub fn state_of(root: &Path, target: &Path) -> PathBuf {
    bootseer_deps::stack::state_dir(root, &target.canonicalize().expect("canonical"))
}
