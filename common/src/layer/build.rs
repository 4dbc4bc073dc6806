//! Building a layer: a directory tree → metadata + data blobs → a store.
//!
//! ```text
//!  dir:PATH ──DirWalker (lstat, xattrs, readlink)──► inodes (hardlinks by (dev, ino))
//!                 └─ regular file bytes ──► BlobWriter: 1 block buffer → zstd → sha256 → blob bytes
//!  (fs-image's OCI converter drives one BlobWriter per image layer the same way)
//!  push: Metadata::encode ─► blobs/<digest>;  data blobs ─► blobs/<digest>;  Index ─► index key
//! ```
//!
//! [`build_from_dir_with`] and [`push_with`] count their work in a [`Progress`];
//! [`build_from_dir`] and [`push`] count into one nobody reads.
//!
//! Entries are visited in name order, so the same tree always gives the same blobs and digests.
//! File data is written in that order, back to back, so files read together in a directory share
//! blocks. Sparse files are stored with their holes as zeros (zstd makes them almost free).
//! Character devices 0/0 and `trusted.overlay.opaque` xattrs are kept as they are: that is how a
//! kernel overlayfs upper records deletions and replaced directories, and how a served layer
//! says the same to an overlayfs mounted over it (fs-deps snapshots rely on it).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::store::DynStore;
use bytes::Bytes;
use serde::Serialize;

use crate::layer::blob::{self, BlobFile, HashingWriter};
use crate::layer::error::{LayerError, Result};
use crate::layer::format::{
    BlobInfo, BlockInfo, DEFAULT_BLOCK_SIZE, Descriptor, EMPTY_CONFIG, Entry, Index, Inode, Kind,
    MAX_BLOCK_SIZE, Metadata, Xattr, media,
};
use crate::layer::progress::Progress;
use crate::layer::reference::LayerRef;

/// How a conversion runs.
#[derive(Debug, Clone)]
pub struct ConvertConfig {
    /// Bytes of file data per block.
    pub block_size: u32,
    /// zstd level for data blocks.
    pub level: i32,
    /// The directory is a kernel overlayfs upper: drop the overlay's private xattrs
    /// (`trusted.overlay.origin`, `impure`, …) and keep `trusted.overlay.opaque`, the one that
    /// says what the layer means. Whiteouts (0/0 character devices) are kept either way.
    pub overlay_upper: bool,
    /// The image picked from a multi-platform index, `OS/ARCH[/VARIANT]` as OCI names them
    /// (`linux/amd64`, `linux/arm64/v8`); default: this host's ([`host_platform`]).
    pub platform: String,
    /// Threads that compress data blocks (1: the converting thread does it); the output is the
    /// same whatever the count.
    pub threads: usize,
    /// Where blobs are spooled while they are built ([`blob::default_tmp_dir`] when `None`):
    /// unlinked files, freed on exit however it exits.
    pub tmp_dir: Option<PathBuf>,
}

impl ConvertConfig {
    /// The directory for temp files: `tmp_dir`, else [`blob::default_tmp_dir`].
    pub fn tmp_dir(&self) -> PathBuf {
        self.tmp_dir.clone().unwrap_or_else(blob::default_tmp_dir)
    }

    /// A blob writer into a temp file, as configured.
    pub fn spooled_writer(&self) -> Result<BlobWriter> {
        BlobWriter::spooled(self.block_size, self.level, self.threads.max(1), &self.tmp_dir())
    }
}

/// The threads to compress on: one fewer than the CPUs available (at least one), because the
/// converting thread itself reads, decompresses and walks the layers meanwhile. On 2 CPUs, a
/// 2 GiB image converted in 19.1 s with one compression thread and 25.9 s with two.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

impl Default for ConvertConfig {
    fn default() -> Self {
        // Level 3 is zstd's default: most of the ratio at a fraction of the cost of higher ones.
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
            level: 3,
            overlay_upper: false,
            platform: host_platform(),
            threads: default_threads(),
            tmp_dir: None,
        }
    }
}

/// This host's platform in OCI's names (`GOOS/GOARCH`): `linux/amd64` on x86-64 Linux.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

/// What a conversion wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ConvertReport {
    /// The reference written.
    pub reference: String,
    /// Key of the index.
    pub index_key: String,
    /// Digest of the metadata blob.
    pub metadata_digest: String,
    /// Size of the metadata blob.
    pub metadata_size: u64,
    /// Inodes in the tree.
    pub inodes: usize,
    /// Data blobs.
    pub blobs: Vec<BlobReport>,
}

/// One data blob of a [`ConvertReport`].
#[derive(Debug, Clone, Serialize)]
pub struct BlobReport {
    /// Digest.
    pub digest: String,
    /// Stored (compressed) bytes.
    pub size: u64,
    /// File bytes in it.
    pub data_len: u64,
    /// Blocks.
    pub blocks: usize,
}

/// Packs file data into independently compressed blocks, in order.
///
/// With `threads > 1` full blocks go to a pool of compression threads and come back in any
/// order; they are written in block order, so the blob is the same bytes whatever the thread
/// count. At most [`BlobWriter::in_flight_limit`] blocks are out at once (each one plain block
/// and its compressed form): that, not the blob's size, bounds the memory a writer holds. The
/// output is a `Vec` ([`BlobWriter::new`]) or an unlinked temp file ([`BlobWriter::spooled`]),
/// hashed as it is written.
#[derive(Debug)]
pub struct BlobWriter {
    block_size: usize,
    level: i32,
    pending: Vec<u8>,
    pub data_len: u64,
    out: Sink,
    blocks: Vec<BlockInfo>,
    pool: Option<Pool>,
}

#[derive(Debug)]
enum Sink {
    Mem(Vec<u8>),
    File(HashingWriter<std::io::BufWriter<std::fs::File>>),
}

impl Sink {
    fn len(&self) -> u64 {
        match self {
            Sink::Mem(v) => v.len() as u64,
            Sink::File(w) => w.len(),
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Sink::Mem(v) => v.extend_from_slice(data),
            Sink::File(w) => std::io::Write::write_all(w, data)
                .map_err(|e| LayerError::io("blob temp file", e))?,
        }
        Ok(())
    }
}

/// Bytes of blocks (plain and compressed, so twice the block size each) a writer's pool holds at
/// most: with 1 MiB blocks 64 in flight, far more than 2 cores need; with 64 MiB blocks 2.
const IN_FLIGHT_BUDGET: usize = 256 << 20;

/// One compressed block: its bytes and the digest of its plain bytes.
type Compressed = Result<(Vec<u8>, Digest)>;

fn compress_block(plain: &[u8], level: i32) -> Compressed {
    let compressed = zstd::bulk::compress(plain, level)
        .map_err(|e| LayerError::convert("data block", format!("zstd: {e}")))?;
    Ok((compressed, Digest::of(plain)))
}

/// Compression threads: jobs `(seq, plain)` in, `(seq, compressed)` out, in any order.
#[derive(Debug)]
struct Pool {
    jobs: Option<crossbeam_channel::Sender<(u64, Vec<u8>)>>,
    done: crossbeam_channel::Receiver<(u64, Compressed)>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Sequence number of the next block sent out.
    sent: u64,
    /// Sequence number of the next block to write.
    next: u64,
    /// Blocks back from the pool that wait for an earlier one.
    ready: std::collections::BTreeMap<u64, Compressed>,
    limit: usize,
}

impl Pool {
    fn start(threads: usize, level: i32, block_size: usize) -> Result<Self> {
        // Unbounded channels: what is in them is bounded by `limit` (the writer never sends a
        // block while `limit` are out), and a worker never blocks on a writer that went away.
        let (jobs, jobs_rx) = crossbeam_channel::unbounded::<(u64, Vec<u8>)>();
        let (done_tx, done) = crossbeam_channel::unbounded();
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let (rx, tx) = (jobs_rx.clone(), done_tx.clone());
            let worker = std::thread::Builder::new()
                .name(format!("bootseer-zstd-{i}"))
                .spawn(move || {
                    for (seq, plain) in rx {
                        if tx.send((seq, compress_block(&plain, level))).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| LayerError::io("starting a compression thread", e))?;
            workers.push(worker);
        }
        // Two blocks per thread: one being compressed, one queued, so no thread waits for work
        // while the writer is busy writing; fewer where large blocks would pass the budget.
        let budget = (IN_FLIGHT_BUDGET / (2 * block_size.max(1))).max(1);
        Ok(Self {
            jobs: Some(jobs),
            done,
            workers,
            sent: 0,
            next: 0,
            ready: Default::default(),
            limit: (2 * threads).min(budget),
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the job channel ends every worker after its current block.
        self.jobs.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl BlobWriter {
    /// A writer into memory, compressing on the calling thread.
    pub fn new(block_size: u32, level: i32) -> Self {
        Self {
            block_size: block_size as usize,
            level,
            pending: Vec::with_capacity(block_size as usize),
            data_len: 0,
            out: Sink::Mem(Vec::new()),
            blocks: Vec::new(),
            pool: None,
        }
    }

    /// A writer into an unlinked temp file in `tmp_dir`, compressing on `threads` threads
    /// (1: on the calling thread).
    pub fn spooled(block_size: u32, level: i32, threads: usize, tmp_dir: &Path) -> Result<Self> {
        let sink = blob::blob_sink(tmp_dir).map_err(|e| LayerError::io(tmp_dir, e))?;
        let mut writer = Self::new(block_size, level);
        writer.out = Sink::File(sink);
        writer.set_threads(threads)?;
        Ok(writer)
    }

    /// Compresses on `threads` threads (1: on the calling thread). Only before the first write
    /// (a pool replaced later would lose its blocks), so not public.
    fn set_threads(&mut self, threads: usize) -> Result<()> {
        self.pool = if threads > 1 {
            Some(Pool::start(threads, self.level, self.block_size)?)
        } else {
            None
        };
        Ok(())
    }

    /// Most blocks compressed at once, each held plain and compressed until written.
    pub fn in_flight_limit(&self) -> usize {
        self.pool.as_ref().map_or(1, |p| p.limit)
    }

    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let take = (self.block_size - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            self.data_len += take as u64;
            data = &data[take..];
            if self.pending.len() == self.block_size {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn append(&mut self, compressed: Compressed) -> Result<()> {
        let (bytes, digest) = compressed?;
        self.blocks.push(BlockInfo {
            offset: self.out.len(),
            len: u32::try_from(bytes.len())
                .map_err(|_| LayerError::convert("data block", "compressed block over 4 GiB"))?,
            digest: digest.to_string(),
        });
        self.out.write(&bytes)
    }

    /// Writes every block back from the pool that is next in order; then, while more than
    /// `keep` blocks are out, waits for one.
    fn drain(&mut self, keep: usize) -> Result<()> {
        loop {
            let Some(pool) = self.pool.as_mut() else { return Ok(()) };
            if let Some(c) = pool.ready.remove(&pool.next) {
                pool.next += 1;
                self.append(c)?;
                continue;
            }
            if (pool.sent - pool.next) as usize <= keep {
                return Ok(());
            }
            let (seq, c) = pool
                .done
                .recv()
                .map_err(|_| LayerError::convert("data block", "a compression thread stopped"))?;
            pool.ready.insert(seq, c);
        }
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some(pool) = self.pool.as_mut() else {
            let c = compress_block(&self.pending, self.level);
            self.pending.clear();
            return self.append(c);
        };
        let plain = std::mem::replace(&mut self.pending, Vec::with_capacity(self.block_size));
        let seq = pool.sent;
        pool.jobs
            .as_ref()
            .and_then(|jobs| jobs.send((seq, plain)).ok())
            .ok_or_else(|| LayerError::convert("data block", "the compression threads stopped"))?;
        pool.sent += 1;
        let keep = pool.limit - 1;
        self.drain(keep)
    }

    /// Compresses what is left and waits for every block.
    fn finish_blocks(&mut self) -> Result<()> {
        self.flush()?;
        self.drain(0)?;
        self.pool = None;
        Ok(())
    }

    fn info(&mut self, digest: String, size: u64) -> BlobInfo {
        let blocks = std::mem::take(&mut self.blocks);
        BlobInfo { digest, size, data_len: self.data_len, blocks }
    }

    /// The blob's description and its bytes in memory (read back if it went to a file).
    pub fn finish(self) -> Result<(BlobInfo, Vec<u8>)> {
        let (info, file) = match self.finish_any()? {
            (info, Finished::Mem(bytes)) => return Ok((info, bytes)),
            (info, Finished::File(file)) => (info, file),
        };
        let bytes = file.read_all().map_err(|e| LayerError::io("blob temp file", e))?;
        Ok((info, bytes))
    }

    /// The blob's description and the temp file that holds it ([`BlobWriter::spooled`]; a
    /// writer into memory spools its bytes into a temp file in `tmp_dir` here).
    pub fn finish_file(self, tmp_dir: &Path) -> Result<(BlobInfo, BlobFile)> {
        match self.finish_any()? {
            (info, Finished::File(file)) => Ok((info, file)),
            (info, Finished::Mem(bytes)) => {
                let file = blob::spool_reader(&bytes[..], tmp_dir, |_| {})
                    .map_err(|e| LayerError::io(tmp_dir, e))?;
                Ok((info, file))
            }
        }
    }

    fn finish_any(mut self) -> Result<(BlobInfo, Finished)> {
        self.finish_blocks()?;
        match std::mem::replace(&mut self.out, Sink::Mem(Vec::new())) {
            Sink::Mem(bytes) => {
                let info = self.info(Digest::of(&bytes).to_string(), bytes.len() as u64);
                Ok((info, Finished::Mem(bytes)))
            }
            Sink::File(sink) => {
                let file =
                    blob::finish_sink(sink).map_err(|e| LayerError::io("blob temp file", e))?;
                let info = self.info(file.digest().to_string(), file.len());
                Ok((info, Finished::File(file)))
            }
        }
    }
}

enum Finished {
    Mem(Vec<u8>),
    File(BlobFile),
}

/// Builds the tree of a plain directory.
struct DirWalker<'a> {
    inodes: Vec<Inode>,
    links: HashMap<(u64, u64), u32>,
    writer: BlobWriter,
    progress: &'a Progress,
    overlay_upper: bool,
}

/// The overlayfs xattr that marks a replaced (opaque) directory.
pub const OVERLAY_OPAQUE: &str = "trusted.overlay.opaque";

fn read_xattrs(path: &Path, overlay_upper: bool) -> Result<Vec<Xattr>> {
    let mut out = Vec::new();
    let names = match xattr::list(path) {
        Ok(n) => n,
        // Filesystems without xattr support have none to copy.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(LayerError::io(path, e)),
    };
    for name in names {
        let name_str = name
            .to_str()
            .ok_or_else(|| LayerError::convert(path.display(), "xattr name is not UTF-8"))?
            .to_string();
        if overlay_upper && name_str.starts_with("trusted.overlay.") && name_str != OVERLAY_OPAQUE {
            continue;
        }
        if let Some(value) = xattr::get(path, &name).map_err(|e| LayerError::io(path, e))? {
            out.push(Xattr { name: name_str, value });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

impl DirWalker<'_> {
    fn add(&mut self, path: &Path) -> Result<u32> {
        let md = std::fs::symlink_metadata(path).map_err(|e| LayerError::io(path, e))?;
        let ft = md.file_type();
        let key = (md.dev(), md.ino());
        if !ft.is_dir()
            && md.nlink() > 1
            && let Some(&existing) = self.links.get(&key)
        {
            return Ok(existing);
        }
        let index = u32::try_from(self.inodes.len())
            .map_err(|_| LayerError::convert(path.display(), "more than 2^32 inodes"))?;
        let mut inode = Inode {
            size: ft.is_dir().then_some(md.len()),
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            mtime_ns: u32::try_from(md.mtime_nsec()).unwrap_or(0),
            xattrs: read_xattrs(path, self.overlay_upper)?,
            kind: Kind::Fifo,
        };
        // Reserve the slot first so directory children get larger indexes than the directory.
        self.inodes.push(inode.clone());
        if !ft.is_dir() && md.nlink() > 1 {
            self.links.insert(key, index);
        }
        inode.kind = if ft.is_dir() {
            let mut names = Vec::new();
            for e in std::fs::read_dir(path).map_err(|e| LayerError::io(path, e))? {
                let e = e.map_err(|e| LayerError::io(path, e))?;
                names.push(e.file_name());
            }
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            let mut entries = Vec::with_capacity(names.len());
            for name in names {
                let child = path.join(&name);
                let name = name.into_string().map_err(|n| {
                    LayerError::convert(
                        child.display(),
                        format!("name {n:?} is not UTF-8 (not supported by this format version)"),
                    )
                })?;
                let inode = self.add(&child)?;
                entries.push(Entry { name, inode });
            }
            Kind::Dir { entries }
        } else if ft.is_file() {
            let offset = self.writer.data_len;
            let mut f = std::fs::File::open(path).map_err(|e| LayerError::io(path, e))?;
            // 256 KiB reads: few syscalls, small buffer.
            let mut buf = vec![0u8; 256 << 10];
            let mut size = 0u64;
            loop {
                let n = f.read(&mut buf).map_err(|e| LayerError::io(path, e))?;
                if n == 0 {
                    break;
                }
                self.writer.write(&buf[..n])?;
                size += n as u64;
            }
            if size != md.len() {
                return Err(LayerError::convert(path.display(), "file changed while being read"));
            }
            self.progress.file(size);
            Kind::File { size, blob: 0, offset }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(|e| LayerError::io(path, e))?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|_| LayerError::convert(path.display(), "symlink target is not UTF-8"))?;
            Kind::Symlink { target }
        } else {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_char_device() || ft.is_block_device() {
                Kind::Device { rdev: md.rdev() }
            } else if ft.is_fifo() {
                Kind::Fifo
            } else if ft.is_socket() {
                Kind::Socket
            } else {
                return Err(LayerError::convert(path.display(), "unknown file type"));
            }
        };
        self.inodes[index as usize] = inode;
        Ok(index)
    }
}

/// Builds the metadata and the one data blob of a plain directory tree.
pub fn build_from_dir(root: &Path, config: &ConvertConfig) -> Result<(Metadata, Vec<Vec<u8>>)> {
    build_from_dir_with(root, config, &Progress::default())
}

pub fn build_from_dir_with(
    root: &Path,
    config: &ConvertConfig,
    progress: &Progress,
) -> Result<(Metadata, Vec<Vec<u8>>)> {
    let mut writer = BlobWriter::new(config.block_size, config.level);
    writer.set_threads(config.threads)?;
    let (meta, writer) = walk_dir(root, config, progress, writer)?;
    let (blob, bytes) = writer.finish()?;
    let meta = Metadata { blobs: vec![blob], ..meta };
    meta.validate()?;
    Ok((meta, vec![bytes]))
}

/// [`build_from_dir_with`], its data blob built in a temp file under `config.tmp_dir()`: the
/// memory it holds is the metadata and a few blocks, whatever the tree's size.
pub fn build_from_dir_spooled(
    root: &Path,
    config: &ConvertConfig,
    progress: &Progress,
) -> Result<(Metadata, Vec<BlobFile>)> {
    let (meta, writer) = walk_dir(root, config, progress, config.spooled_writer()?)?;
    let (blob, file) = writer.finish_file(&config.tmp_dir())?;
    let meta = Metadata { blobs: vec![blob], ..meta };
    meta.validate()?;
    Ok((meta, vec![file]))
}

/// Walks `root` into metadata without blobs, its file bytes into `writer`.
fn walk_dir(
    root: &Path,
    config: &ConvertConfig,
    progress: &Progress,
    writer: BlobWriter,
) -> Result<(Metadata, BlobWriter)> {
    if config.block_size == 0 || config.block_size > MAX_BLOCK_SIZE {
        return Err(LayerError::convert(root.display(), "block size out of range"));
    }
    let md = std::fs::symlink_metadata(root).map_err(|e| LayerError::io(root, e))?;
    if !md.is_dir() {
        return Err(LayerError::convert(root.display(), "not a directory"));
    }
    let mut walker = DirWalker {
        inodes: Vec::new(),
        links: HashMap::new(),
        writer,
        progress,
        overlay_upper: config.overlay_upper,
    };
    walker.add(root)?;
    let meta = Metadata { block_size: config.block_size, blobs: Vec::new(), inodes: walker.inodes };
    Ok((meta, walker.writer))
}

/// Writes `meta` and `blobs` to `store` as the image `dest`.
pub async fn push(
    store: &DynStore,
    dest: &LayerRef,
    meta: &Metadata,
    blobs: Vec<Vec<u8>>,
) -> Result<ConvertReport> {
    push_with(store, dest, meta, blobs, &Progress::default()).await
}

/// [`push`], counting the blobs it stored in `progress`.
pub async fn push_with(
    store: &DynStore,
    dest: &LayerRef,
    meta: &Metadata,
    blobs: Vec<Vec<u8>>,
    progress: &Progress,
) -> Result<ConvertReport> {
    let blobs = blobs.into_iter().map(Payload::Mem).collect();
    push_payloads(store, dest, meta, blobs, progress, Default::default()).await
}

/// [`push_with`] for blobs built in temp files: each goes up with [`crate::store::Store::put_file`],
/// in pieces, never whole in memory; `annotations` go in the index. The index goes last, in one
/// put: readers see the whole layer (blobs, metadata, annotations) or nothing.
pub async fn push_files(
    store: &DynStore,
    dest: &LayerRef,
    meta: &Metadata,
    blobs: &[BlobFile],
    progress: &Progress,
    annotations: std::collections::BTreeMap<String, String>,
) -> Result<ConvertReport> {
    for (info, file) in meta.blobs.iter().zip(blobs) {
        if info.digest != file.digest().to_string() || info.size != file.len() {
            return Err(LayerError::convert(
                &info.digest,
                format!("blob file holds {} bytes hashing to {}", file.len(), file.digest()),
            ));
        }
    }
    let blobs = blobs.iter().map(Payload::File).collect();
    push_payloads(store, dest, meta, blobs, progress, annotations).await
}

/// A data blob to push: in memory, or in a temp file.
enum Payload<'a> {
    Mem(Vec<u8>),
    File(&'a BlobFile),
}

async fn push_payloads(
    store: &DynStore,
    dest: &LayerRef,
    meta: &Metadata,
    blobs: Vec<Payload<'_>>,
    progress: &Progress,
    annotations: std::collections::BTreeMap<String, String>,
) -> Result<ConvertReport> {
    progress.set_blobs(meta.blobs.len() as u64 + 1);
    let encoded = meta.encode()?;
    let meta_digest = Digest::of(&encoded).to_string();
    let mut layers = vec![Descriptor {
        media_type: media::METADATA.into(),
        digest: meta_digest.clone(),
        size: encoded.len() as u64,
    }];
    let mut reports = Vec::new();
    for (info, payload) in meta.blobs.iter().zip(blobs) {
        let key = format!("blobs/{}", info.digest);
        let put = match payload {
            Payload::Mem(bytes) => store.put(&key, Bytes::from(bytes)).await,
            Payload::File(file) => store.put_file(&key, file.file(), file.len()).await,
        };
        put.map_err(|e| LayerError::store(&key, e))?;
        progress.blob_pushed(info.size);
        layers.push(Descriptor {
            media_type: media::BLOB.into(),
            digest: info.digest.clone(),
            size: info.size,
        });
        reports.push(BlobReport {
            digest: info.digest.clone(),
            size: info.size,
            data_len: info.data_len,
            blocks: info.blocks.len(),
        });
    }
    let key = format!("blobs/{meta_digest}");
    let metadata_size = encoded.len() as u64;
    store.put(&key, Bytes::from(encoded)).await.map_err(|e| LayerError::store(&key, e))?;
    progress.blob_pushed(metadata_size);
    let mut index = Index::new(media::ARTIFACT, layers);
    index.annotations = annotations;
    put_index(store, dest.registry, &dest.index_key(), &index).await?;
    Ok(ConvertReport {
        reference: dest.original.clone(),
        index_key: dest.index_key(),
        metadata_digest: meta_digest,
        metadata_size,
        inodes: meta.inodes.len(),
        blobs: reports,
    })
}

/// Stores an index; in a registry the empty config blob goes first.
pub async fn put_index(store: &DynStore, registry: bool, key: &str, index: &Index) -> Result<()> {
    if registry {
        let cfg = format!("blobs/{}", Digest::of(EMPTY_CONFIG));
        store
            .put(&cfg, Bytes::from_static(EMPTY_CONFIG))
            .await
            .map_err(|e| LayerError::store(&cfg, e))?;
    }
    let json = serde_json::to_vec(index)
        .map_err(|e| LayerError::malformed("index", format!("cannot serialize: {e}")))?;
    store.put(key, Bytes::from(json)).await.map_err(|e| LayerError::store(key, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same bytes in any thread count and either sink: blocks are written in order.
    #[test]
    fn threads_and_sinks_give_the_same_blob() {
        let data: Vec<u8> =
            (0..700_000u64).map(|i| (i.wrapping_mul(0x9E37_79B9) >> 13) as u8).collect();
        let tmp = std::env::temp_dir();
        let mut want = None;
        for threads in [1, 2, 4, 7] {
            for spooled in [false, true] {
                let mut w = if spooled {
                    BlobWriter::spooled(4096, 3, threads, &tmp).expect("spooled")
                } else {
                    let mut w = BlobWriter::new(4096, 3);
                    w.set_threads(threads).expect("threads");
                    w
                };
                assert!(w.in_flight_limit() <= 2 * threads);
                // Uneven writes, so blocks fill across calls.
                for piece in data.chunks(1234) {
                    w.write(piece).expect("write");
                }
                let got = w.finish().expect("finish");
                assert_eq!(got.0.blocks.len(), 700_000usize.div_ceil(4096));
                match &want {
                    None => want = Some(got),
                    Some(w) => assert!(*w == got, "threads {threads}, spooled {spooled} differ"),
                }
            }
        }
    }
}
