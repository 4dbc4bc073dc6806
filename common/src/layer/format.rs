//! The bootseer image format: a metadata blob (the merged tree and where each file's bytes live)
//! and data blobs of independently compressed, digested blocks.
//!
//! ```text
//!  metadata blob = header (24 bytes) ++ zstd(JSON of Metadata)
//!     header     = MAGIC "BSIMAGE\0" | version u16 LE | reserved u16 | body length u64 LE | crc32 u32 LE of body
//!  data blob     = block 0 ++ block 1 ++ …   each block = zstd(block_size bytes of file data; the last shorter)
//!  file bytes    = blob[file.blob] uncompressed stream [file.offset, file.offset + file.size)
//!  block i       = compressed bytes [blocks[i].offset, +blocks[i].len), sha256 of the uncompressed
//!                  block = blocks[i].digest (checked by the cache before a block is served)
//! ```
//!
//! The image index (under `images/NAME/TAG`, or `manifests/TAG` in a registry) is an OCI
//! artifact manifest ([`Index`]): its first layer is the metadata blob, the rest the data blobs.
//! [`Metadata::decode`] checks the frame, then [`Metadata::validate`] checks every index, range
//! and tree rule, so the filesystem layer can index without further checks.

use std::collections::HashSet;
use std::io::Read;

use crate::digest::Digest;
use serde::{Deserialize, Serialize};

use crate::layer::error::{LayerError, Result};

/// First bytes of a metadata blob.
pub const MAGIC: [u8; 8] = *b"BSIMAGE\0";
/// Version of the metadata format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Header length: magic 8 + version 2 + reserved 2 + length 8 + crc 4.
pub const HEADER_LEN: usize = 24;
/// Default bytes of file data per block: large enough to amortise a registry round trip and keep
/// block tables small, small enough that a start reading 2% of an image fetches little extra.
pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;
/// Largest block size accepted: the cache holds whole blocks in memory.
pub const MAX_BLOCK_SIZE: u32 = 64 << 20;
/// Largest decompressed metadata body accepted (a guard against zstd bombs): millions of inodes
/// fit in far less.
pub const MAX_METADATA_BODY: u64 = 1 << 30;

/// OCI media types of the index manifest and its parts.
pub mod media {
    /// The index manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// `artifactType` of a bootseer image.
    pub const ARTIFACT: &str = "application/vnd.bootseer.image.v1";
    /// `artifactType` of a stored trace.
    pub const TRACE_ARTIFACT: &str = "application/vnd.bootseer.trace.v1";
    /// The empty config OCI artifacts use.
    pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";
    /// The metadata blob.
    pub const METADATA: &str = "application/vnd.bootseer.image.metadata.v1";
    /// A data blob.
    pub const BLOB: &str = "application/vnd.bootseer.image.blob.v1";
    /// A trace blob.
    pub const TRACE: &str = "application/vnd.bootseer.trace.v1";
}

/// The whole tree of an image. `inodes[0]` is the root directory; FUSE inode numbers are
/// index + 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Bytes of file data per block (the last block of a blob may be shorter).
    pub block_size: u32,
    /// Data blobs.
    pub blobs: Vec<BlobInfo>,
    /// Inodes; entries of directories refer to them by index. Hardlinks share one inode.
    pub inodes: Vec<Inode>,
}

/// One data blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// `sha256:<hex>` of the stored (compressed) blob; its key is `blobs/<digest>`.
    pub digest: String,
    /// Stored length.
    pub size: u64,
    /// Length of the uncompressed data stream.
    pub data_len: u64,
    /// One entry per block, packed back to back from offset 0.
    pub blocks: Vec<BlockInfo>,
}

/// One compressed block of a data blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// Offset of the compressed block in the blob.
    pub offset: u64,
    /// Compressed length.
    pub len: u32,
    /// `sha256:<hex>` of the uncompressed block.
    pub digest: String,
}

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// `st_mode`: file type bits and permission bits (setuid, setgid and sticky included).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time (< 10^9).
    pub mtime_ns: u32,
    /// Extended attributes, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// A directory's `st_size` as its source had it (ext4 says 4096 or a multiple, tmpfs and
    /// overlayfs count entries). `None` for other inodes, for tar layers (a tar carries no
    /// directory size) and in metadata written before this field: then [`Inode::dir_size`]
    /// gives a block multiple. Optional and defaulted, so metadata with and without it decodes
    /// under the same [`FORMAT_VERSION`] (readers ignore fields they do not know).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// What the inode is.
    pub kind: Kind,
}

/// Directory sizes are reported in these units when the source's is not known (ext4's block).
pub const DIR_BLOCK: u64 = 4096;

impl Inode {
    /// `st_size` of a directory: the source's, else what ext4 would need for these entries
    /// (a record of 8 bytes + the name padded to 4, plus `.` and `..`), in whole 4096-byte
    /// blocks, at least one. `None` if this is not a directory.
    pub fn dir_size(&self) -> Option<u64> {
        let Kind::Dir { entries } = &self.kind else { return None };
        if let Some(size) = self.size {
            return Some(size);
        }
        let records: u64 =
            24 + entries.iter().map(|e| 8 + (e.name.len() as u64).next_multiple_of(4)).sum::<u64>();
        Some(records.div_ceil(DIR_BLOCK).max(1) * DIR_BLOCK)
    }
}

/// An extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Full name (`user.foo`, `security.capability`).
    pub name: String,
    /// Raw value.
    pub value: Vec<u8>,
}

/// What an inode is, with the type-specific data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Kind {
    /// A directory; entries sorted by name, without `.` and `..`.
    Dir { entries: Vec<Entry> },
    /// A regular file whose bytes are `[offset, offset + size)` of blob `blob`'s data stream.
    File { size: u64, blob: u32, offset: u64 },
    /// A symbolic link.
    Symlink { target: String },
    /// A character or block device (the mode's type bits say which).
    Device { rdev: u64 },
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
}

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The name (one path component).
    pub name: String,
    /// Index into [`Metadata::inodes`].
    pub inode: u32,
}

/// File type bits of `st_mode`.
const S_IFMT: u32 = libc::S_IFMT;

impl Kind {
    /// Whether `mode`'s file type bits fit this kind.
    pub fn matches_mode(&self, mode: u32) -> bool {
        let t = mode & S_IFMT;
        match self {
            Kind::Dir { .. } => t == libc::S_IFDIR,
            Kind::File { .. } => t == libc::S_IFREG,
            Kind::Symlink { .. } => t == libc::S_IFLNK,
            Kind::Device { .. } => t == libc::S_IFCHR || t == libc::S_IFBLK,
            Kind::Fifo => t == libc::S_IFIFO,
            Kind::Socket => t == libc::S_IFSOCK,
        }
    }
}

/// Whether `name` can be a directory entry.
pub fn valid_entry_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

impl Metadata {
    /// The framed, compressed metadata blob.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self)
            .map_err(|e| LayerError::malformed("metadata", format!("cannot serialize: {e}")))?;
        // Level 3: zstd's default; metadata is small and written once.
        let body = zstd::bulk::compress(&json, 3)
            .map_err(|e| LayerError::malformed("metadata", format!("cannot compress: {e}")))?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Parses and validates a metadata blob.
    pub fn decode(data: &[u8]) -> Result<Metadata> {
        let bad = |reason: String| LayerError::malformed("metadata", reason);
        if data.len() < HEADER_LEN {
            return Err(bad(format!(
                "{} bytes is shorter than the {HEADER_LEN}-byte header",
                data.len()
            )));
        }
        let (header, body) = data.split_at(HEADER_LEN);
        if header[..8] != MAGIC {
            return Err(bad(format!("magic is {:02x?}, expected {MAGIC:02x?}", &header[..8])));
        }
        let u16_at = |i: usize| u16::from_le_bytes([header[i], header[i + 1]]);
        let version = u16_at(8);
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version} is not supported (this build reads {FORMAT_VERSION})"
            )));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&header[12..20]);
        let len = u64::from_le_bytes(len);
        if len != body.len() as u64 {
            return Err(bad(format!("header says {len} body bytes, {} present", body.len())));
        }
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&header[20..24]);
        let stored = u32::from_le_bytes(crc);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(bad(format!(
                "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            )));
        }
        let mut json = Vec::new();
        zstd::stream::Decoder::new(body)
            .map_err(|e| bad(format!("bad compression: {e}")))?
            .take(MAX_METADATA_BODY + 1)
            .read_to_end(&mut json)
            .map_err(|e| bad(format!("bad compression: {e}")))?;
        if json.len() as u64 > MAX_METADATA_BODY {
            return Err(bad(format!("body larger than {MAX_METADATA_BODY} bytes")));
        }
        let meta: Metadata =
            serde_json::from_slice(&json).map_err(|e| bad(format!("bad body: {e}")))?;
        meta.validate()?;
        Ok(meta)
    }

    /// Checks every rule the filesystem layer relies on (see the module doc).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &'static str, reason: String| Err(LayerError::malformed(what, reason));
        if self.block_size == 0 || self.block_size > MAX_BLOCK_SIZE {
            return bad("metadata", format!("block size {} out of range", self.block_size));
        }
        let bs = u64::from(self.block_size);
        for (b, blob) in self.blobs.iter().enumerate() {
            if blob.digest.parse::<Digest>().is_err() {
                return bad("blob table", format!("blob {b}: bad digest {:?}", blob.digest));
            }
            if blob.blocks.len() as u64 != blob.data_len.div_ceil(bs) {
                return bad(
                    "blob table",
                    format!("blob {b}: {} blocks for {} bytes", blob.blocks.len(), blob.data_len),
                );
            }
            let mut next = 0u64;
            for (i, block) in blob.blocks.iter().enumerate() {
                if block.offset != next {
                    return bad("block table", format!("blob {b} block {i}: not packed"));
                }
                next = next.saturating_add(u64::from(block.len));
                if block.digest.parse::<Digest>().is_err() {
                    return bad("block table", format!("blob {b} block {i}: bad digest"));
                }
            }
            if next != blob.size {
                return bad(
                    "block table",
                    format!("blob {b}: blocks end at {next}, blob is {}", blob.size),
                );
            }
        }
        let n = self.inodes.len();
        if u32::try_from(n).is_err() {
            return bad("inode table", "more than 2^32 inodes".into());
        }
        match self.inodes.first() {
            Some(Inode { kind: Kind::Dir { .. }, .. }) => {}
            _ => return bad("inode table", "inode 0 is not a directory".into()),
        }
        for (i, inode) in self.inodes.iter().enumerate() {
            if !inode.kind.matches_mode(inode.mode) {
                return bad(
                    "inode table",
                    format!("inode {i}: mode {:o} does not fit its kind", inode.mode),
                );
            }
            if inode.mtime_ns >= 1_000_000_000 {
                return bad("inode table", format!("inode {i}: mtime_ns {}", inode.mtime_ns));
            }
            if let Kind::File { size, blob, offset } = &inode.kind {
                let Some(info) = self.blobs.get(*blob as usize) else {
                    return bad("inode table", format!("inode {i}: blob {blob} does not exist"));
                };
                if offset.checked_add(*size).is_none_or(|end| end > info.data_len) {
                    return bad(
                        "inode table",
                        format!("inode {i}: bytes past the end of blob {blob}"),
                    );
                }
            }
        }
        // Walk from the root: every directory is reached exactly once (no cycles, no
        // directory hardlinks), every inode is reached, entries are sorted and valid.
        let mut seen = vec![false; n];
        seen[0] = true;
        let mut stack = vec![0usize];
        while let Some(d) = stack.pop() {
            let Kind::Dir { entries } = &self.inodes[d].kind else { continue };
            let mut prev: Option<&str> = None;
            for e in entries {
                if !valid_entry_name(&e.name) {
                    return bad("directory", format!("inode {d}: invalid name {:?}", e.name));
                }
                if prev.is_some_and(|p| p >= e.name.as_str()) {
                    return bad(
                        "directory",
                        format!("inode {d}: entries not sorted/unique at {:?}", e.name),
                    );
                }
                prev = Some(&e.name);
                let c = e.inode as usize;
                if c >= n {
                    return bad(
                        "directory",
                        format!("inode {d}: entry {:?} -> missing inode {c}", e.name),
                    );
                }
                let is_dir = matches!(self.inodes[c].kind, Kind::Dir { .. });
                if is_dir && seen[c] {
                    return bad("directory", format!("directory inode {c} is linked twice"));
                }
                if !seen[c] {
                    seen[c] = true;
                    if is_dir {
                        stack.push(c);
                    }
                }
            }
        }
        if let Some(orphan) = seen.iter().position(|s| !s) {
            return bad("inode table", format!("inode {orphan} is not reachable from the root"));
        }
        let mut names = HashSet::new();
        for (i, inode) in self.inodes.iter().enumerate() {
            names.clear();
            for x in &inode.xattrs {
                if x.name.is_empty() || x.name.contains('\0') || !names.insert(&x.name) {
                    return bad("xattrs", format!("inode {i}: bad or repeated name {:?}", x.name));
                }
            }
        }
        Ok(())
    }
}

/// A descriptor in an OCI manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Length in bytes.
    pub size: u64,
}

/// The image index: an OCI artifact manifest naming the metadata blob (first layer) and the
/// data blobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// [`media::MANIFEST`].
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// [`media::ARTIFACT`] or [`media::TRACE_ARTIFACT`].
    #[serde(rename = "artifactType")]
    pub artifact_type: String,
    /// The empty config.
    pub config: Descriptor,
    /// Metadata blob first, then data blobs (or the one trace blob).
    pub layers: Vec<Descriptor>,
    /// OCI annotations: what a layer's producer says about it (fs-deps keeps a snapshot's
    /// input manifest here, so that the snapshot and its manifest are published in one put).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The OCI empty config `{}`.
pub const EMPTY_CONFIG: &[u8] = b"{}";

impl Index {
    /// An artifact manifest of `artifact_type` over `layers`.
    pub fn new(artifact_type: &str, layers: Vec<Descriptor>) -> Self {
        Self {
            schema_version: 2,
            media_type: media::MANIFEST.into(),
            artifact_type: artifact_type.into(),
            config: Descriptor {
                media_type: media::EMPTY.into(),
                digest: Digest::of(EMPTY_CONFIG).to_string(),
                size: EMPTY_CONFIG.len() as u64,
            },
            layers,
            annotations: Default::default(),
        }
    }

    /// Parses an index and checks it is a bootseer artifact of `artifact_type`.
    pub fn decode(data: &[u8], artifact_type: &str) -> Result<Index> {
        let index: Index = serde_json::from_slice(data)
            .map_err(|e| LayerError::malformed("index", format!("not a bootseer index: {e}")))?;
        if index.artifact_type != artifact_type {
            return Err(LayerError::malformed(
                "index",
                format!("artifactType {:?}, expected {artifact_type:?}", index.artifact_type),
            ));
        }
        let first =
            index.layers.first().ok_or_else(|| LayerError::malformed("index", "no layers"))?;
        for l in &index.layers {
            if l.digest.parse::<Digest>().is_err() {
                return Err(LayerError::malformed("index", format!("bad digest {:?}", l.digest)));
            }
        }
        let _ = first;
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Metadata {
        let data = vec![7u8; 10];
        let block = zstd::bulk::compress(&data, 3).expect("compress");
        Metadata {
            block_size: 8,
            blobs: vec![BlobInfo {
                digest: Digest::of(b"x").to_string(),
                size: block.len() as u64 * 2,
                data_len: 10,
                blocks: vec![
                    BlockInfo {
                        offset: 0,
                        len: block.len() as u32,
                        digest: Digest::of(&data[..8]).to_string(),
                    },
                    BlockInfo {
                        offset: block.len() as u64,
                        len: block.len() as u32,
                        digest: Digest::of(&data[8..]).to_string(),
                    },
                ],
            }],
            inodes: vec![
                Inode {
                    mode: libc::S_IFDIR | 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 1,
                    mtime_ns: 2,
                    xattrs: vec![],
                    size: Some(4096),
                    kind: Kind::Dir { entries: vec![Entry { name: "f".into(), inode: 1 }] },
                },
                Inode {
                    mode: libc::S_IFREG | 0o644,
                    uid: 1,
                    gid: 2,
                    mtime: 3,
                    mtime_ns: 4,
                    xattrs: vec![Xattr { name: "user.a".into(), value: vec![1, 2] }],
                    size: None,
                    kind: Kind::File { size: 10, blob: 0, offset: 0 },
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let m = tiny();
        let enc = m.encode().expect("encode");
        assert_eq!(Metadata::decode(&enc).expect("decode"), m);
    }

    /// Frames a JSON body as `encode` does.
    fn frame(json: &[u8]) -> Vec<u8> {
        let body = zstd::bulk::compress(json, 3).expect("compress");
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Issue 10 item 10: a directory's size is kept from its source; metadata written before
    /// the field existed still decodes, and its directories get a 4096-multiple by entry count.
    #[test]
    fn directory_sizes_are_kept_and_old_metadata_still_decodes() {
        let mut new = tiny();
        new.inodes[0].size = Some(12_288);
        let back = Metadata::decode(&new.encode().expect("encode")).expect("decode");
        assert_eq!(back.inodes[0].dir_size(), Some(12_288));
        assert_eq!(back.inodes[1].dir_size(), None, "not a directory");

        // Exactly what the format wrote before directory sizes: no "size" key on inodes.
        let mut old = tiny();
        for inode in &mut old.inodes {
            inode.size = None;
        }
        let json = serde_json::to_string(&old).expect("json");
        assert!(!json.contains("\"size\":null"), "{json}");
        let decoded = Metadata::decode(&frame(json.as_bytes())).expect("old metadata");
        assert_eq!(decoded, old);
        assert_eq!(decoded.inodes[0].dir_size(), Some(DIR_BLOCK));

        // The fallback grows in whole blocks with the entries (ext4 records: 8 + name to 4).
        let mut wide = old.inodes[0].clone();
        wide.kind = Kind::Dir {
            entries: (0..300).map(|i| Entry { name: format!("file-{i:04}"), inode: 1 }).collect(),
        };
        // 24 + 300 × (8 + 12) = 6024 bytes → two blocks.
        assert_eq!(wide.dir_size(), Some(2 * DIR_BLOCK));
    }

    #[test]
    fn damaged_blobs_give_named_errors() {
        let enc = tiny().encode().expect("encode");
        let msg = |d: &[u8]| Metadata::decode(d).expect_err("must fail").to_string();
        assert!(msg(&enc[..10]).contains("shorter"));
        let mut m = enc.clone();
        m[0] ^= 1;
        assert!(msg(&m).contains("magic"));
        let mut v = enc.clone();
        v[8] = 9;
        assert!(msg(&v).contains("version"));
        let mut c = enc.clone();
        let last = c.len() - 1;
        c[last] ^= 1;
        assert!(msg(&c).contains("checksum"));
        assert!(msg(&enc[..enc.len() - 1]).contains("body bytes"));
    }

    #[test]
    fn invalid_trees_are_refused() {
        let check = |f: &dyn Fn(&mut Metadata), want: &str| {
            let mut m = tiny();
            f(&mut m);
            let err = m.validate().expect_err(want).to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        };
        check(&|m| m.inodes[1].kind = Kind::File { size: 11, blob: 0, offset: 0 }, "past the end");
        check(&|m| m.inodes[1].kind = Kind::File { size: 1, blob: 3, offset: 0 }, "does not exist");
        check(
            &|m| {
                m.inodes[0].kind = Kind::Dir { entries: vec![Entry { name: "x".into(), inode: 9 }] }
            },
            "missing inode",
        );
        check(
            &|m| {
                m.inodes[0].kind =
                    Kind::Dir { entries: vec![Entry { name: "..".into(), inode: 1 }] }
            },
            "invalid name",
        );
        check(&|m| m.inodes[0].kind = Kind::Dir { entries: vec![] }, "not reachable");
        check(
            &|m| {
                m.inodes[0].kind = Kind::Dir {
                    entries: vec![
                        Entry { name: "me".into(), inode: 0 },
                        Entry { name: "z".into(), inode: 1 },
                    ],
                }
            },
            "linked twice",
        );
        check(&|m| m.inodes[1].mode = libc::S_IFDIR | 0o755, "does not fit");
        check(&|m| m.blobs[0].blocks.pop().map(drop).unwrap_or(()), "blocks for");
        check(&|m| m.block_size = 0, "block size");
    }
}
