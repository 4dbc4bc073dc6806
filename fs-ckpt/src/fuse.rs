//! [`CkptFuse`]: the only module that touches fuser. Each callback is a `tracing` span, one call
//! into [`CkptFs`] and one reply; errors go through [`fuse_error`].
//!
//! No FUSE worker waits on the network (DESIGN, production defaults). What the mount already knows
//! is answered on the worker thread: lookups, attributes, listings and statfs from the directory
//! listings it holds (a stale one is refreshed in the background, see [`CkptFs::lookup_now`]), and
//! a read whose chunks are all in memory ([`CkptFs::read_now`]). Everything that may wait on HDFS —
//! a read that misses memory, an open (it asks the NameNode), a call into a directory not listed
//! yet, and a lookup of a name a stale listing lacks — is handed with its reply to a task on the runtime
//! (fuser replies are `Send`), which answers when done; the worker goes back to the kernel
//! meanwhile. So cold reads on stalled DataNodes hold up no cached read and no `stat`.
//!
//! What bounds the tasks: a read task waits for one of [`crate::fs::MISS_READS`] (64) slots before
//! it touches the cache, so at most 64 reads hold chunks and reply copies outside the cache's
//! budget (≤ 2⅛ MiB each at 64 KiB chunks, see there), however many readers wait; a waiting task
//! holds only its reply handle, and the kernel bounds those (one per reader thread blocked in a
//! read, plus `max_background` read-ahead). Range reads in flight are bounded by the budget's
//! in-flight share ([`crate::stripe`]); open tasks and listing refreshes by the connect timeout,
//! one refresh of a directory at a time.
//!
//! Kernel caching: entry TTLs and directory attribute TTLs equal the metadata TTL. A file's
//! attributes have TTL 0: the kernel cuts reads at the size it holds and asks again only when
//! that has expired, so a file replaced by a longer one and opened within a TTL would read as
//! the new bytes cut at the old length. With TTL 0 the kernel asks (at EOF, on `stat`) and gets
//! the length the handle pinned, from memory, never a NameNode call. No `direct_io`, so the
//! page cache serves `mmap`; keep-cache only when a file is opened at the same version as its
//! previous open, so a new version's open drops the old pages.
//!
//! Each read's reply is timed into `fuse.read.latency{origin}`, from the request to the reply
//! (a task's wait for its slot included): `memory` when every chunk it needed was held and it
//! was answered on the worker thread, `demand` when it went to a task.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bootseer_common::errno::fuse_error;
use bootseer_common::metrics::ReadOrigin;
use bootseer_common::mount::MountConfig;
use bytes::Bytes;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use tokio::runtime::Handle;
use tracing::Instrument;

use crate::error::CkptError;
use crate::fs::{Attr, CkptFs, DirEntry, Kind, Opened, ReadNow};

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

/// How long the kernel may keep `a`'s attributes: see the module doc.
fn attr_ttl(a: &Attr, ttl: Duration) -> Duration {
    match a.kind {
        Kind::Directory => ttl,
        Kind::File => Duration::ZERO,
    }
}

fn reply_entry(result: Result<Attr, CkptError>, ttl: Duration, reply: ReplyEntry) {
    match result {
        Ok(attr) => {
            reply.entry_with_ttls(&attr_ttl(&attr, ttl), &ttl, &file_attr(&attr), Generation(0))
        }
        Err(e) => reply.error(fuse_error("lookup", &e)),
    }
}

fn reply_attr(result: Result<Attr, CkptError>, ttl: Duration, reply: ReplyAttr) {
    match result {
        Ok(attr) => reply.attr(&attr_ttl(&attr, ttl), &file_attr(&attr)),
        Err(e) => reply.error(fuse_error("getattr", &e)),
    }
}

fn reply_dir(
    result: Result<Vec<DirEntry>, CkptError>,
    ino: u64,
    offset: u64,
    mut reply: ReplyDirectory,
) {
    match result {
        Ok(entries) => {
            let dots = [(ino, Kind::Directory, "."), (ino, Kind::Directory, "..")];
            let all =
                dots.into_iter().chain(entries.iter().map(|e| (e.ino, e.kind, e.name.as_str())));
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

fn reply_statfs(result: Result<u64, CkptError>, reply: ReplyStatfs) {
    match result {
        Ok(files) => reply.statfs(0, 0, 0, files, 0, BLKSIZE, NAME_MAX, BLKSIZE),
        Err(e) => reply.error(fuse_error("statfs", &e)),
    }
}

fn reply_open(result: Result<Opened, CkptError>, reply: ReplyOpen) {
    match result {
        Ok(opened) => {
            let flags =
                if opened.keep_cache { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
            reply.opened(FileHandle(opened.fh), flags)
        }
        Err(e) => reply.error(fuse_error("open", &e)),
    }
}

/// Answers a read and records it: the timeline's wait and `fuse.read.latency{origin}`.
fn reply_read(
    result: Result<Bytes, CkptError>,
    origin: ReadOrigin,
    started: Instant,
    reply: ReplyData,
) {
    let served = result.as_ref().ok().map(Bytes::len);
    match result {
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(fuse_error("read", &e)),
    }
    let elapsed = started.elapsed();
    bootseer_common::timeline::read_done(elapsed);
    bootseer_common::metrics::read_served(origin, elapsed, served);
}

impl Filesystem for CkptFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.mount.kernel_init(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let span = tracing::debug_span!("lookup", parent = parent.0, ?name);
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT); // HDFS names are UTF-8
        };
        let ttl = self.ttl;
        match span.in_scope(|| self.fs.lookup_now(parent.0, name)) {
            Some(result) => reply_entry(result, ttl, reply),
            None => {
                let (fs, name) = (self.fs.clone(), name.to_string());
                let task = async move { reply_entry(fs.lookup(parent.0, &name).await, ttl, reply) };
                self.runtime.spawn(task.instrument(span));
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let span = tracing::debug_span!("getattr", ino = ino.0);
        let (ttl, fh) = (self.ttl, fh.map(|fh| fh.0));
        match span.in_scope(|| self.fs.getattr_now(ino.0, fh)) {
            Some(result) => reply_attr(result, ttl, reply),
            None => {
                let fs = self.fs.clone();
                let task = async move { reply_attr(fs.getattr(ino.0, fh).await, ttl, reply) };
                self.runtime.spawn(task.instrument(span));
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let span = tracing::debug_span!("readdir", ino = ino.0, offset);
        match span.in_scope(|| self.fs.readdir_now(ino.0)) {
            Some(result) => reply_dir(result, ino.0, offset, reply),
            None => {
                let fs = self.fs.clone();
                let task = async move { reply_dir(fs.readdir(ino.0).await, ino.0, offset, reply) };
                self.runtime.spawn(task.instrument(span));
            }
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let span = tracing::debug_span!("open", ino = ino.0);
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            let e = CkptError::ReadOnly(format!("inode {}", ino.0));
            return reply.error(fuse_error("open", &e));
        }
        // An open pins the file's current version: a NameNode call, so always a task.
        let fs = self.fs.clone();
        self.runtime.spawn(async move { reply_open(fs.open(ino.0).await, reply) }.instrument(span));
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
        let span = tracing::debug_span!("read", ino = ino.0, fh = fh.0, offset, size);
        let started = Instant::now();
        match span.in_scope(|| self.fs.read_now(fh.0, offset, size)) {
            ReadNow::Served(result) => {
                let origin = if result.is_ok() { ReadOrigin::Memory } else { ReadOrigin::Demand };
                reply_read(result, origin, started, reply)
            }
            ReadNow::Pending(pending) => {
                // Chunks must come from HDFS: the reply is sent from a task, and this thread
                // goes back to serving the kernel (cached reads, stats) meanwhile.
                let fs = self.fs.clone();
                let task = async move {
                    let result = fs.read_pending(pending).await;
                    reply_read(result, ReadOrigin::Demand, started, reply)
                };
                self.runtime.spawn(task.instrument(span));
            }
        }
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
        let span = tracing::debug_span!("statfs");
        match span.in_scope(|| self.fs.entry_count_now()) {
            Some(files) => reply_statfs(Ok(files), reply),
            None => {
                let fs = self.fs.clone();
                let task = async move { reply_statfs(fs.entry_count().await, reply) };
                self.runtime.spawn(task.instrument(span));
            }
        }
    }
}
