//! [`LayerFuse`]: the fuser adapter over [`LayerFs`] — the only file that touches `Reply*`.
//!
//! Every callback: a `tracing` span, one call into [`LayerFs`], one reply; errors go through
//! [`fuse_error`]. Metadata is all in memory, so lookups, attributes, listings and xattrs answer
//! on fuser's worker thread. A read is planned there too ([`LayerFs::plan_read`]) and answered
//! there when its blocks are in the memory tier, or in the disk tier's open entries with their
//! bytes in the page cache (a read that cannot wait on the device); otherwise the reply is
//! handed to a task on the session's runtime, which loads or fetches the blocks and replies
//! (fuser replies are `Send`).
//! So no FUSE worker ever waits on the disk or the network: 8 cold reads on a stalled store do
//! not hold up a cached read or a `stat`. The tree is immutable, so entries and attributes get
//! long TTLs and opened files keep the page cache across opens.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::errno::fuse_error;
use crate::mount::MountConfig;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEntry, ReplyOpen, ReplyXattr, Request,
};
use tracing::{Instrument, debug_span};

use crate::layer::error::LayerError;
use crate::layer::fs::{Attr, LayerFs};

/// Entry and attribute TTL: an image never changes under a mount, so a day is as good as forever
/// and still lets the kernel drop entries it does not use.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// The FUSE face of a mounted image.
#[derive(Debug)]
pub struct LayerFuse {
    fs: Arc<LayerFs>,
    runtime: tokio::runtime::Handle,
    mount: MountConfig,
}

impl LayerFuse {
    /// An adapter over `fs`, reading through `runtime`.
    pub fn new(fs: Arc<LayerFs>, runtime: tokio::runtime::Handle, mount: MountConfig) -> Self {
        Self { fs, runtime, mount }
    }

    /// Whether opens are zero-message: ENOSYS to OPEN/OPENDIR makes the kernel stop sending
    /// them (and RELEASE) for the mount and treat every open as FOPEN_KEEP_CACHE, directories
    /// as FOPEN_CACHE_DIR (fuse_do_open's default for no_open). A tree that never changes needs
    /// no per-open state, and a Python start saves two round trips for each of its thousands of
    /// files. Only with `allow_other`: otherwise the kernel lets every uid in (auto_unmount
    /// needs the mount made with allow_other) and fuser turns other users away at their
    /// LOOKUP/OPEN/OPENDIR, never at READ, so an open must keep reaching us to be refused.
    fn zero_message_open(&self) -> bool {
        self.mount.flags.allow_other
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// The kernel's 32-bit device encoding (`new_encode_dev`) of a userspace `dev_t`.
fn kernel_rdev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: UNIX_EPOCH,
        kind: kind(a.mode),
        // The low 12 bits: permissions plus setuid, setgid and sticky.
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: kernel_rdev(a.rdev),
        // 128 KiB: the unit the kernel reads a FUSE file in by default.
        blksize: 128 << 10,
        flags: 0,
    }
}

/// Directory `ino`'s listing as the kernel gets it: `.`, `..`, then `entries`, each as (inode,
/// mode, name) with the offset that resumes after it (1 after ".", 2 after "..", 3 + i after
/// entry i). The parent's inode is not tracked, so ".." names `ino` itself; the kernel answers
/// ".." lookups on its own.
fn listing(
    ino: u64,
    entries: &[crate::layer::fs::DirEntry],
) -> impl Iterator<Item = (u64, (u64, u32, &str))> {
    let dots = [(ino, libc::S_IFDIR, "."), (ino, libc::S_IFDIR, "..")];
    let all = dots.into_iter().chain(entries.iter().map(|e| (e.ino, e.mode, e.name.as_str())));
    (1..).zip(all)
}

/// What a negative entry carries: inode 0 (the kernel reads it as "no such entry").
fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn reply_read(result: Result<Vec<u8>, LayerError>, reply: ReplyData) {
    match result {
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(fuse_error("read", &e)),
    }
}

fn name_str(name: &OsStr) -> Result<&str, LayerError> {
    // Every name in an image is UTF-8; anything else cannot be in it.
    name.to_str().ok_or(LayerError::NotFound)
}

fn xattr_reply(value: &[u8], size: u32, reply: ReplyXattr, op: &'static str) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(fuse_error(op, &LayerError::TooSmall));
    } else {
        reply.data(value);
    }
}

impl Filesystem for LayerFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.mount.kernel_init(config);
        // Symlink targets never change under a mount: let the kernel keep them.
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        // Listings that carry attributes when lookups follow them (see `readdirplus`).
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = debug_span!("lookup", parent = parent.0, ?name).entered();
        match name_str(name).and_then(|n| self.fs.lookup(parent.0, n)) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            // A name that is not there never will be: an entry with inode 0 is a negative
            // dentry the kernel keeps for the TTL, so the loader's and Python's probes of
            // missing paths (and overlayfs's of lower layers) ask once.
            Err(LayerError::NotFound) => reply.entry(&TTL, &negative_entry(), Generation(0)),
            Err(e) => reply.error(fuse_error("lookup", &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = debug_span!("getattr", ino = ino.0).entered();
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(fuse_error("getattr", &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _span = debug_span!("readlink", ino = ino.0).entered();
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(fuse_error("readlink", &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = debug_span!("open", ino = ino.0).entered();
        match self.fs.open(ino.0) {
            Ok(()) if self.zero_message_open() => reply.error(Errno::ENOSYS),
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(fuse_error("open", &e)),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.zero_message_open() {
            // As for open: no OPENDIR/RELEASEDIR from now on, and FOPEN_CACHE_DIR implied, so
            // the kernel keeps each directory's listing in its page cache after the first one.
            reply.error(Errno::ENOSYS);
        } else {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let span = debug_span!("read", ino = ino.0, offset, size);
        let mut planned = match span.in_scope(|| self.fs.plan_read(ino.0, offset, size)) {
            Ok(Some(planned)) => planned,
            Ok(None) => return reply.data(&[]),
            Err(e) => return reply.error(fuse_error("read", &e)),
        };
        if let Some(done) = span.in_scope(|| self.fs.read_cached(&mut planned)) {
            return reply_read(done, reply);
        }
        // A block must come from disk or the store: the reply is sent from a task, and this
        // thread goes back to serving the kernel (cached reads, lookups) meanwhile.
        let fs = self.fs.clone();
        self.runtime.spawn(
            async move { reply_read(fs.read_planned(planned).await, reply) }.instrument(span),
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _span = debug_span!("readdir", ino = ino.0, offset).entered();
        let entries = match self.fs.readdir(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(fuse_error("readdir", &e)),
        };
        for (next, (child, mode, name)) in listing(ino.0, &entries).skip(offset as usize) {
            if reply.add(INodeNo(child), next, kind(mode), name) {
                break;
            }
        }
        reply.ok();
    }

    /// A listing with every entry's attributes, so the kernel makes the dentries as it lists:
    /// a Python import lists a package directory and then stats and opens names in it, which
    /// then need no LOOKUP each. With FUSE_READDIRPLUS_AUTO the kernel asks for this on a
    /// directory's first listing and while lookups follow its listings, plain READDIR
    /// otherwise.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _span = debug_span!("readdirplus", ino = ino.0, offset).entered();
        let entries = match self.fs.readdir(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(fuse_error("readdirplus", &e)),
        };
        for (next, (child, _, name)) in listing(ino.0, &entries).skip(offset as usize) {
            // "." and "..": the kernel links neither, and takes only their inode numbers.
            let attr = match self.fs.getattr(child) {
                Ok(a) => a,
                Err(e) => return reply.error(fuse_error("readdirplus", &e)),
            };
            if reply.add(INodeNo(child), next, name, &TTL, &file_attr(&attr), Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _span = debug_span!("getxattr", ino = ino.0, ?name).entered();
        let name = match name.to_str() {
            Some(n) => n,
            None => return reply.error(fuse_error("getxattr", &LayerError::NoXattr)),
        };
        match self.fs.getxattr(ino.0, name) {
            Ok(v) => xattr_reply(v, size, reply, "getxattr"),
            Err(e) => reply.error(fuse_error("getxattr", &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = debug_span!("listxattr", ino = ino.0).entered();
        match self.fs.listxattr(ino.0) {
            Ok(v) => xattr_reply(&v, size, reply, "listxattr"),
            Err(e) => reply.error(fuse_error("listxattr", &e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        let meta = self.fs.metadata();
        let bytes: u64 = meta.blobs.iter().map(|b| b.data_len).sum();
        // 4 KiB units; 255: the longest name Linux tools expect.
        reply.statfs(bytes.div_ceil(4096), 0, 0, meta.inodes.len() as u64, 0, 4096, 255, 4096);
    }

    fn access(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mask: fuser::AccessFlags,
        reply: fuser::ReplyEmpty,
    ) {
        // default_permissions makes the kernel check modes; anything reaching here is allowed.
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        assert_eq!(kernel_rdev(libc::makedev(1, 3)), (1 << 8) | 3);
        assert_eq!(
            kernel_rdev(libc::makedev(4, 300)),
            (4 << 8) | (300 & 0xff) | ((300 & !0xff) << 12)
        );
    }
}
