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
use std::path::Path;

use crate::digest::Digest;
use crate::store::DynStore;
use bytes::Bytes;
use serde::Serialize;

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
}

impl Default for ConvertConfig {
    fn default() -> Self {
        // Level 3 is zstd's default: most of the ratio at a fraction of the cost of higher ones.
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
            level: 3,
            overlay_upper: false,
            platform: host_platform(),
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

/// Packs file data into independently compressed blocks.
#[derive(Debug)]
pub struct BlobWriter {
    block_size: usize,
    level: i32,
    pending: Vec<u8>,
    pub data_len: u64,
    out: Vec<u8>,
    blocks: Vec<BlockInfo>,
}

impl BlobWriter {
    pub fn new(block_size: u32, level: i32) -> Self {
        Self {
            block_size: block_size as usize,
            level,
            pending: Vec::with_capacity(block_size as usize),
            data_len: 0,
            out: Vec::new(),
            blocks: Vec::new(),
        }
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

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let compressed = zstd::bulk::compress(&self.pending, self.level)
            .map_err(|e| LayerError::convert("data block", format!("zstd: {e}")))?;
        self.blocks.push(BlockInfo {
            offset: self.out.len() as u64,
            len: u32::try_from(compressed.len())
                .map_err(|_| LayerError::convert("data block", "compressed block over 4 GiB"))?,
            digest: Digest::of(&self.pending).to_string(),
        });
        self.out.extend_from_slice(&compressed);
        self.pending.clear();
        Ok(())
    }

    pub fn finish(mut self) -> Result<(BlobInfo, Vec<u8>)> {
        self.flush()?;
        let digest = Digest::of(&self.out).to_string();
        Ok((
            BlobInfo {
                digest,
                size: self.out.len() as u64,
                data_len: self.data_len,
                blocks: self.blocks,
            },
            self.out,
        ))
    }
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
        writer: BlobWriter::new(config.block_size, config.level),
        progress,
        overlay_upper: config.overlay_upper,
    };
    walker.add(root)?;
    let (blob, bytes) = walker.writer.finish()?;
    let meta = Metadata { block_size: config.block_size, blobs: vec![blob], inodes: walker.inodes };
    meta.validate()?;
    Ok((meta, vec![bytes]))
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
    push_annotated(store, dest, meta, blobs, progress, Default::default()).await
}

/// [`push_with`], with `annotations` in the index. The index goes last, in one put: readers
/// see the whole layer (blobs, metadata, annotations) or nothing.
pub async fn push_annotated(
    store: &DynStore,
    dest: &LayerRef,
    meta: &Metadata,
    blobs: Vec<Vec<u8>>,
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
    for (info, bytes) in meta.blobs.iter().zip(blobs) {
        let key = format!("blobs/{}", info.digest);
        store.put(&key, Bytes::from(bytes)).await.map_err(|e| LayerError::store(&key, e))?;
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
