//! Shared test helpers: an awkward source tree, an independent walker that describes a tree in
//! plain `std::fs` terms, and image setup. Not every test binary uses every helper.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bootseer_common::digest::Digest;
use bootseer_common::store::{DynStore, local::LocalStore};
use bootseer_common::testing::mem::pattern;
use bootseer_common::testing::require_real;
use bootseer_image::LayerRef;
use bootseer_image::convert::{self, ConvertConfig};

/// Test block size: small so that modest files span many blocks.
pub const BLOCK: u32 = 64 << 10;

/// Everything a comparison looks at for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub rdev: u64,
    pub link: Option<PathBuf>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub sha256: Option<Digest>,
}

/// A tree: entries by relative path, and hardlink groups (paths sharing an inode, 2+ members).
#[derive(Debug, PartialEq, Eq)]
pub struct TreeView {
    pub entries: BTreeMap<PathBuf, Described>,
    pub hardlinks: BTreeSet<BTreeSet<PathBuf>>,
}

/// Describes the tree at `root` with plain std calls (lstat, readlink, llistxattr, read).
pub fn describe(root: &Path) -> TreeView {
    let mut entries = BTreeMap::new();
    let mut inos: HashMap<u64, BTreeSet<PathBuf>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let md = std::fs::symlink_metadata(&path).expect("lstat");
        let ft = md.file_type();
        let mut xattrs = BTreeMap::new();
        for name in xattr::list(&path).expect("listxattr") {
            let value = xattr::get(&path, &name).expect("getxattr").unwrap_or_default();
            xattrs.insert(name.to_string_lossy().into_owned(), value);
        }
        let sha256 = ft.is_file().then(|| Digest::of(&std::fs::read(&path).expect("read")));
        let link = ft.is_symlink().then(|| std::fs::read_link(&path).expect("readlink"));
        if !ft.is_dir() {
            inos.entry(md.ino()).or_default().insert(rel.clone());
        }
        entries.insert(
            rel.clone(),
            Described {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                size: if ft.is_dir() { 0 } else { md.len() },
                mtime: (md.mtime(), md.mtime_nsec()),
                rdev: md.rdev(),
                link,
                xattrs,
                sha256,
            },
        );
        if ft.is_dir() {
            for e in std::fs::read_dir(&path).expect("readdir") {
                stack.push(rel.join(e.expect("entry").file_name()));
            }
        }
    }
    let hardlinks = inos.into_values().filter(|g| g.len() > 1).collect();
    TreeView { entries, hardlinks }
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    let times = [
        libc::timespec { tv_sec: sec, tv_nsec: nsec },
        libc::timespec { tv_sec: sec, tv_nsec: nsec },
    ];
    // SAFETY: `c` is a valid NUL-terminated path and `times` two valid timespecs for the call.
    let rc = unsafe {
        libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    };
    assert_eq!(rc, 0, "utimensat {}: {}", path.display(), std::io::Error::last_os_error());
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Builds the awkward tree: hardlinks, symlinks (dangling, absolute, relative), user xattrs,
/// setuid/setgid/sticky, a fifo and (as root) a char device and foreign owners, empty, large and
/// sparse files, deep and wide directories, unicode names, ns mtimes.
pub fn awkward_tree(root: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, data).expect("write");
    };
    w("etc/hostname", b"bootseer\n");
    w("empty", b"");
    w("large.bin", &pattern(1, 20 * BLOCK as usize + 777));
    w("ünïcødé-名前.txt", "grüße".as_bytes());
    w("emoji-🚀/inside", b"x");
    // Sparse: a 5-block hole, then data, then a hole at the end.
    let sparse = std::fs::File::create(root.join("sparse.img")).expect("sparse");
    sparse.set_len(9 * u64::from(BLOCK)).expect("set_len");
    std::os::unix::fs::FileExt::write_at(&sparse, b"middle", 5 * u64::from(BLOCK))
        .expect("write_at");
    drop(sparse);
    // Hardlinks: three names, one inode, across directories.
    w("links/h1", b"shared bytes");
    std::fs::create_dir_all(root.join("other")).expect("mkdir");
    std::fs::hard_link(root.join("links/h1"), root.join("links/h2")).expect("link");
    std::fs::hard_link(root.join("links/h1"), root.join("other/h3")).expect("link");
    std::os::unix::fs::symlink("nowhere/at/all", root.join("links/dangling")).expect("symlink");
    std::os::unix::fs::symlink("/etc/passwd", root.join("links/absolute")).expect("symlink");
    std::os::unix::fs::symlink("../etc/hostname", root.join("links/relative")).expect("symlink");
    // Modes.
    w("bin/suid", b"#!/bin/sh\n");
    std::fs::set_permissions(root.join("bin/suid"), std::fs::Permissions::from_mode(0o4755))
        .expect("chmod");
    std::fs::create_dir_all(root.join("tmp")).expect("mkdir");
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod");
    std::fs::create_dir_all(root.join("shared")).expect("mkdir");
    std::fs::set_permissions(root.join("shared"), std::fs::Permissions::from_mode(0o2750))
        .expect("chmod");
    w("private", b"secret");
    std::fs::set_permissions(root.join("private"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    // Xattrs on a file and a directory, one with a binary value.
    xattr::set(root.join("etc/hostname"), "user.origin", b"test").expect("setxattr");
    xattr::set(root.join("etc/hostname"), "user.bin", &[0, 1, 2, 255]).expect("setxattr");
    xattr::set(root.join("etc"), "user.dir", b"yes").expect("setxattr");
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640))
        .expect("mkfifo");
    // Deep and wide.
    let mut deep = root.join("deep");
    for i in 0..24 {
        deep = deep.join(format!("d{i}"));
    }
    std::fs::create_dir_all(&deep).expect("deep");
    std::fs::write(deep.join("leaf"), b"leaf").expect("leaf");
    for i in 0..300 {
        w(&format!("wide/f{i:03}"), format!("file {i}\n").as_bytes());
    }
    if is_root() {
        nix::sys::stat::mknod(
            &root.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .expect("mknod");
        std::os::unix::fs::lchown(root.join("private"), Some(1234), Some(5678)).expect("chown");
        std::os::unix::fs::lchown(root.join("links/absolute"), Some(42), Some(43)).expect("lchown");
        std::os::unix::fs::chown(root.join("wide"), Some(7), Some(8)).expect("chown");
        // chown clears setuid; set it again.
        std::os::unix::fs::chown(root.join("bin/suid"), Some(0), Some(0)).expect("chown");
        std::fs::set_permissions(root.join("bin/suid"), std::fs::Permissions::from_mode(0o4755))
            .expect("chmod");
    }
    // Distinct ns mtimes everywhere, children before parents so directories keep theirs.
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        all.push(p.clone());
        if std::fs::symlink_metadata(&p).expect("lstat").is_dir() {
            for e in std::fs::read_dir(&p).expect("readdir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_600_000_000 + i as i64 * 17, (i as i64 * 7_919_123) % 1_000_000_000);
    }
}

/// Converts `src` into the local store at `store_dir` as `NAME:TAG`; returns the reference.
pub fn convert_into(src: &Path, store_dir: &Path, name_tag: &str) -> (String, DynStore) {
    let reference = format!("file://{}/{name_tag}", store_dir.display());
    let image = LayerRef::parse(&reference).expect("reference");
    let (meta, blobs) = convert::build_from_dir(
        src,
        &ConvertConfig { block_size: BLOCK, level: 3, ..Default::default() },
    )
    .expect("build");
    let store: DynStore = Arc::new(LocalStore::new(store_dir));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(convert::push(&store, &image, &meta, blobs)).expect("push");
    (reference, store)
}

/// Flips one byte at `at` (a fraction of its length) of the largest file in `store_dir/blobs`,
/// the data blob of an image [`convert_into`] wrote: the block holding it fails verification.
pub fn corrupt_data_blob(store_dir: &Path, at: f64) {
    let blob = std::fs::read_dir(store_dir.join("blobs"))
        .expect("blobs")
        .map(|e| e.expect("entry").path())
        .max_by_key(|p| std::fs::metadata(p).expect("stat").len())
        .expect("a blob");
    let mut bytes = std::fs::read(&blob).expect("read blob");
    let at = (bytes.len() as f64 * at) as usize;
    bytes[at] ^= 0x5a;
    std::fs::write(&blob, &bytes).expect("write blob");
}

/// Root, /dev/fuse and `tools` (looked up in the standard bin dirs); `None`: skipped (a
/// failure with `BOOTSEER_REQUIRE_REAL=1`).
pub fn require_root_fuse(tools: &[&str]) -> Option<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(t).exists())
        })
        .collect();
    require_real(
        "FUSE as root",
        if !Path::new("/dev/fuse").exists() || !is_root() {
            Err(anyhow::anyhow!("needs root and /dev/fuse"))
        } else if !missing.is_empty() {
            Err(anyhow::anyhow!("needs {missing:?} (packages util-linux, fuse3)"))
        } else {
            Ok(())
        },
    )
}

/// Polls `f` every 20 ms for up to 10 s; panics naming `what` if it never holds.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}
