//! [`CkptFuse`]: the only module that touches fuser. Each callback is a `tracing` span, one call
//! into [`CkptFs`] (run with `block_on` on the runtime handle, since fuser threads are not
//! runtime threads), and one reply; errors go through [`fuse_error`].
//!
//! Kernel caching: entry TTLs and directory attribute TTLs equal the metadata TTL. A file's
//! attributes have TTL 0: the kernel cuts reads at the size it holds and asks again only when
//! that has expired, so a file replaced by a longer one and opened within a TTL would read as
//! the new bytes cut at the old length. With TTL 0 the kernel asks (at EOF, on `stat`) and gets
//! the length the handle pinned, from memory, never a NameNode call. No `direct_io`, so the
//! page cache serves `mmap`; keep-cache only when a file is opened at the same version as its
//! previous open, so a new version's open drops the old pages.
//!
//! Each read's reply is timed into `fuse.read.latency{origin}`: `memory` when every stripe it
//! needed was held, `demand` when it waited on HDFS.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use bootseer_common::errno::fuse_error;
use bootseer_common::mount::MountConfig;
use bytes::Bytes;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use tokio::runtime::Handle;

use crate::error::CkptError;
use crate::fs::{Attr, CkptFs, Kind};

/// Block size reported in attributes and statfs: the page size, so `st_blocks` is meaningful.
const BLKSIZE: u32 = 4096;
/// Longest name HDFS allows in a path component (`dfs.namenode.fs-limits.max-component-length`).
const NAME_MAX: u32 = 255;

/// The FUSE adapter of a checkpoint mount.
#[derive(Debug)]
pub struct CkptFuse {
    fs: Arc<CkptFs>,
    runtime: Handle,
    mount: MountConfig,
    ttl: Duration,
}

impl CkptFuse {
    /// An adapter serving `fs`, whose async calls run on `runtime`.
    pub fn new(fs: Arc<CkptFs>, runtime: Handle, mount: MountConfig) -> Self {
        let ttl = fs.config().metadata_ttl;
        Self { fs, runtime, mount, ttl }
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let kind = match a.kind {
        Kind::Directory => FileType::Directory,
        Kind::File => FileType::RegularFile,
    };
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind,
        perm: a.perm,
        nlink: if a.kind == Kind::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Directory => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

impl CkptFuse {
    /// How long the kernel may keep `a`'s attributes: see the module doc.
    fn attr_ttl(&self, a: &Attr) -> Duration {
        match a.kind {
            Kind::Directory => self.ttl,
            Kind::File => Duration::ZERO,
        }
    }
}

impl Filesystem for CkptFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.mount.kernel_init(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = tracing::debug_span!("lookup", parent = parent.0, ?name).entered();
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT); // HDFS names are UTF-8
        };
        match self.runtime.block_on(self.fs.lookup(parent.0, name)) {
            Ok(attr) => {
                let attr_ttl = self.attr_ttl(&attr);
                reply.entry_with_ttls(&attr_ttl, &self.ttl, &file_attr(&attr), Generation(0))
            }
            Err(e) => reply.error(fuse_error("lookup", &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = tracing::debug_span!("getattr", ino = ino.0).entered();
        match self.runtime.block_on(self.fs.getattr(ino.0, fh.map(|fh| fh.0))) {
            Ok(attr) => reply.attr(&self.attr_ttl(&attr), &file_attr(&attr)),
            Err(e) => reply.error(fuse_error("getattr", &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _span = tracing::debug_span!("readdir", ino = ino.0, offset).entered();
        match self.runtime.block_on(self.fs.readdir(ino.0)) {
            Ok(entries) => {
                let dots = [(ino.0, Kind::Directory, "."), (ino.0, Kind::Directory, "..")];
                let all = dots
                    .into_iter()
                    .chain(entries.iter().map(|e| (e.ino, e.kind, e.name.as_str())));
                for (i, (ino, kind, name)) in all.enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(ino), (i + 1) as u64, file_type(kind), name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(fuse_error("readdir", &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span = tracing::debug_span!("open", ino = ino.0).entered();
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            let e = CkptError::ReadOnly(format!("inode {}", ino.0));
            return reply.error(fuse_error("open", &e));
        }
        match self.runtime.block_on(self.fs.open(ino.0)) {
            Ok(opened) => {
                let flags = if opened.keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(opened.fh), flags)
            }
            Err(e) => reply.error(fuse_error("open", &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _span = tracing::debug_span!("read", ino = ino.0, fh = fh.0, offset, size).entered();
        let started = std::time::Instant::now();
        let (result, origin) = self.runtime.block_on(self.fs.read_with_origin(fh.0, offset, size));
        let served = result.as_ref().ok().map(Bytes::len);
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(fuse_error("read", &e)),
        }
        let elapsed = started.elapsed();
        bootseer_common::timeline::read_done(elapsed);
        bootseer_common::metrics::read_served(origin, elapsed, served);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _span = tracing::debug_span!("release", ino = ino.0, fh = fh.0).entered();
        match self.fs.release(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fuse_error("release", &e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _span = tracing::debug_span!("statfs").entered();
        match self.runtime.block_on(self.fs.entry_count()) {
            Ok(files) => reply.statfs(0, 0, 0, files, 0, BLKSIZE, NAME_MAX, BLKSIZE),
            Err(e) => reply.error(fuse_error("statfs", &e)),
        }
    }
}
