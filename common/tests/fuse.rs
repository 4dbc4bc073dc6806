//! The shared FUSE plumbing against the real kernel: a one-file filesystem served through the
//! block cache from a local store is mounted with `MountConfig`, read with `std::fs`, compared by
//! sha256 with the original, and unmounted by the guard. Needs /dev/fuse (root in CI).

use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bootseer_common::cache::{BlockCache, CacheConfig, DynSource, StoreBlocks};
use bootseer_common::digest::Digest;
use bootseer_common::mount::{MountConfig, is_mounted, raise_read_ahead, read_ahead_kb};
use bootseer_common::store::{DynStore, local::LocalStore};
use bootseer_common::testing::{fuse::MountGuard, mem::pattern, require_real};
use bytes::Bytes;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, INodeNo, KernelConfig, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, Request,
};

const BLOCK: u64 = 64 * 1024;
const FILE_INO: INodeNo = INodeNo(2);

struct OneFile {
    cache: BlockCache,
    source: DynSource,
    len: u64,
    runtime: tokio::runtime::Handle,
    mount: MountConfig,
}

impl OneFile {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, perm, size) = if ino == FILE_INO {
            (FileType::RegularFile, 0o644, self.len)
        } else {
            (FileType::Directory, 0o755, 0)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn read_at(
        &self,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>, bootseer_common::cache::CacheError> {
        let end = (offset + size).min(self.len);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let index = pos / BLOCK;
            let block = self.runtime.block_on(self.cache.get(&self.source, index))?;
            let start = (pos - index * BLOCK) as usize;
            let take = ((end - pos) as usize).min(block.len() - start);
            out.extend_from_slice(&block[start..start + take]);
            pos += take as u64;
        }
        Ok(out)
    }
}

const TTL: Duration = Duration::from_secs(3600);

impl Filesystem for OneFile {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.mount.kernel_init(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == "data.bin" {
            reply.entry(&TTL, &self.attr(FILE_INO), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&TTL, &self.attr(ino));
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
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        match self.read_at(offset, u64::from(size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(bootseer_common::errno::fuse_error("read", &e)),
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
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, "data.bin"),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

#[test]
fn a_real_mount_serves_the_stores_bytes_and_unmounts_on_drop() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = pattern(7, (5 * BLOCK + 1234) as usize);
    let store: DynStore = Arc::new(LocalStore::new(dir.path()));
    runtime.block_on(store.put("data.bin", Bytes::from(data.clone()))).expect("put");
    let cache = BlockCache::new(CacheConfig::default(), runtime.handle().clone()).expect("cache");
    let source: DynSource =
        Arc::new(StoreBlocks::new("data@1", store, "data.bin", data.len() as u64, BLOCK));
    let config = MountConfig { threads: 2, ..MountConfig::default() };
    let fs = OneFile {
        cache: cache.clone(),
        source,
        len: data.len() as u64,
        runtime: runtime.handle().clone(),
        mount: config.clone(),
    };

    let Some(mount) = require_real("FUSE", MountGuard::mount(fs, &config)) else { return };
    let path = mount.path().join("data.bin");

    let md = std::fs::metadata(&path).expect("stat");
    assert_eq!(md.len(), data.len() as u64);
    let read = std::fs::read(&path).expect("read");
    assert_eq!(Digest::of(&read), Digest::of(&data), "bytes through the mount differ");

    // Unaligned reads across a block boundary, through a fresh open.
    let mut f = std::fs::File::open(&path).expect("open");
    let mut buf = vec![0u8; 5000];
    f.seek(SeekFrom::Start(BLOCK - 17)).expect("seek");
    f.read_exact(&mut buf).expect("read");
    assert_eq!(&buf[..], &data[(BLOCK - 17) as usize..(BLOCK - 17) as usize + 5000]);
    drop(f);
    assert_eq!(std::fs::read_dir(mount.path()).expect("readdir").count(), 1);
    assert_eq!(
        std::fs::metadata(mount.path().join("nope")).map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::NotFound)
    );

    // Every block was fetched once, however many kernel reads asked for it.
    let stats = cache.stats();
    assert_eq!(stats.fetched_demand, 6, "{stats:?}");

    // Writing the mount's sysfs read-ahead needs root (CI runs as root).
    let root =
        if nix::unistd::geteuid().is_root() { Ok(()) } else { Err(anyhow::anyhow!("not root")) };
    if require_real("root (the mount's sysfs read-ahead)", root).is_some() {
        raise_read_ahead(mount.path(), 8192).expect("sysfs read-ahead");
        assert_eq!(read_ahead_kb(mount.path()).expect("read back"), 8192);
    }

    let mountpoint = mount.path().to_path_buf();
    drop(mount);
    assert!(!is_mounted(&mountpoint), "the guard must unmount on drop");
}
