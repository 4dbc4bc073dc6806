//! Container image sources: OCI and Docker image manifests, their layers applied in order with
//! whiteouts and opaque directories. Two places hold the manifests and blobs, behind
//! `ImageBlobs`: an OCI image layout (`oci:DIR[:TAG]`, as skopeo and umoci write it; here) and a
//! registry (`docker://`, [`crate::convert::registry`]). Both go through `build_from_manifest`.
//!
//! ```text
//!  oci:   index.json ─(ref.name = TAG)─► descriptor ─┐
//!  docker: manifests/TAG or manifests/sha256:… ───────┤
//!                                                     ▼
//!  manifest bytes ─► index (OCI / Docker list)? ─► pick --platform ─► child manifest (checked)
//!                 ─► image manifest (OCI / Docker v2 schema 2) ─► every layer's media type known?
//!  layers[i] ─► bytes ─► sha256 and size == descriptor? ─► tar | tar+gzip | tar+zstd ─► apply
//!    each tar entry ─► path checked (absolute names rooted, no `..`, no write through a symlink)
//!      `.wh..wh..opq` ─► drop the directory's entries from lower layers
//!      `.wh.NAME`     ─► drop NAME if a lower layer put it there
//!      dir over dir   ─► attributes replaced, entries kept (overlay semantics)
//!      anything else  ─► replaces the entry; file bytes ─► layer i's BlobWriter (blob i)
//!  Tree (arena; hardlinks share a node) ─► Metadata (reachable nodes only, renumbered)
//! ```
//!
//! Every manifest and layer is checked against its descriptor before it is used; a layer is
//! named in errors as `layer N/TOTAL (sha256:…)`, counting from 1.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use bootseer_common::digest::Digest;
use serde::Deserialize;

use bootseer_common::layer::blob::{self, BlobFile};
use bootseer_common::layer::build::{BlobWriter, ConvertConfig};
use bootseer_common::layer::error::{LayerError, Result};
use bootseer_common::layer::format::{
    Entry, Inode, Kind, Metadata, Xattr, media as bootseer_media,
};
use bootseer_common::layer::progress::Progress;

/// The OCI annotation naming a manifest's tag in `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The platform wanted from an image index (`ConvertConfig::platform`, `OS/ARCH[/VARIANT]`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    os: String,
    arch: String,
    variant: Option<String>,
}

impl Wanted {
    fn parse(spec: &str) -> Result<Self> {
        let parts: Vec<&str> = spec.split('/').collect();
        let ok =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match parts[..] {
            [os, arch] if ok(os) && ok(arch) => {
                Ok(Self { os: os.into(), arch: arch.into(), variant: None })
            }
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => {
                Ok(Self { os: os.into(), arch: arch.into(), variant: Some(variant.into()) })
            }
            _ => Err(LayerError::Reference {
                reference: spec.to_string(),
                reason: "a platform is OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8"
                    .into(),
            }),
        }
    }

    /// The variant an entry without one means (the architecture's baseline).
    fn baseline_variant(&self) -> Option<&'static str> {
        match self.arch.as_str() {
            "amd64" => Some("v1"),
            "arm64" => Some("v8"),
            _ => None,
        }
    }
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.variant {
            Some(v) => write!(f, "{}/{}/{v}", self.os, self.arch),
            None => write!(f, "{}/{}", self.os, self.arch),
        }
    }
}

/// Indexes nest (an index naming an index); real ones at most once. The bound stops a chain.
const MAX_INDEX_DEPTH: usize = 4;

/// Manifest and config media types.
pub mod media {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker image manifest, v2 schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
}

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression a layer media type names; `None` for types that are not layers we can apply
/// (foreign Docker layers, which live outside the registry; anything unknown).
fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        // A descriptor without a type (the spec requires one) is read as a plain tar.
        ""
        | "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct OciDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

impl OciDescriptor {
    /// The digest and size, checked to be a sha256 and present.
    fn target(&self, what: &str) -> Result<(Digest, u64)> {
        let digest =
            self.digest.parse::<Digest>().map_err(|e| LayerError::convert(what, e.to_string()))?;
        let size = self.size.ok_or_else(|| LayerError::convert(what, "descriptor has no size"))?;
        Ok((digest, size))
    }
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<OciDescriptor>,
}

/// Any manifest kind: which one it is comes from `mediaType`, or, where that is absent (it is
/// optional in OCI), from the fields present.
#[derive(Deserialize)]
struct AnyManifest {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(rename = "artifactType", default)]
    artifact_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<OciDescriptor>>,
    #[serde(default)]
    config: Option<OciDescriptor>,
    #[serde(default)]
    layers: Option<Vec<OciDescriptor>>,
}

enum Manifest {
    Index(Vec<OciDescriptor>),
    Image(Vec<OciDescriptor>),
}

fn parse_manifest(bytes: &[u8], what: &str) -> Result<Manifest> {
    let bad = |reason: String| LayerError::convert(what, reason);
    let m: AnyManifest = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("not an image manifest or index (bad JSON: {e})")))?;
    if m.schema_version == Some(1) {
        return Err(bad("a Docker schema 1 manifest (not supported: copy the image again with a \
                        current docker or skopeo to get schema 2)"
            .into()));
    }
    let is_index = match m.media_type.as_deref() {
        Some(media::OCI_INDEX | media::DOCKER_LIST) => true,
        Some(media::OCI_MANIFEST | media::DOCKER_MANIFEST) => false,
        Some(other) => return Err(bad(format!("unsupported manifest media type {other:?}"))),
        None if m.manifests.is_some() => true,
        None if m.layers.is_some() => false,
        None => return Err(bad("neither an image manifest nor an index".into())),
    };
    if is_index {
        let entries = m.manifests.ok_or_else(|| bad("an index without manifests".into()))?;
        return Ok(Manifest::Index(entries));
    }
    if m.artifact_type.as_deref() == Some(bootseer_media::ARTIFACT) {
        return Err(bad("already a bootseer image: mount it, or convert its source".into()));
    }
    let config = m.config.ok_or_else(|| bad("an image manifest without a config".into()))?;
    if let Some(t) = m.artifact_type {
        return Err(bad(format!("an OCI artifact of type {t:?}, not a container image")));
    }
    if !matches!(config.media_type.as_str(), media::OCI_CONFIG | media::DOCKER_CONFIG) {
        return Err(bad(format!(
            "config of type {:?}: not a container image (an OCI artifact?)",
            config.media_type
        )));
    }
    Ok(Manifest::Image(m.layers.ok_or_else(|| bad("an image manifest without layers".into()))?))
}

/// The entry of an index for `wanted`. Without a wanted variant: the entry without one (or with
/// the architecture's baseline, `v1` for amd64, `v8` for arm64) first, then any other variant.
/// With one: that variant, an entry without a variant standing for the baseline. An index whose
/// only entry names no platform is taken to be that entry.
fn pick_platform<'a>(
    entries: &'a [OciDescriptor],
    wanted: &Wanted,
    what: &str,
) -> Result<&'a OciDescriptor> {
    let ours = |d: &&OciDescriptor| {
        d.platform.as_ref().is_some_and(|p| p.os == wanted.os && p.architecture == wanted.arch)
    };
    let variant = |d: &&OciDescriptor| {
        d.platform
            .as_ref()
            .and_then(|p| p.variant.as_deref())
            .filter(|v| !v.is_empty())
            .or(wanted.baseline_variant())
            .map(str::to_string)
    };
    let chosen = match &wanted.variant {
        Some(v) => entries.iter().filter(ours).find(|d| variant(d).as_deref() == Some(v)),
        None => {
            let baseline = |d: &&OciDescriptor| variant(d).as_deref() == wanted.baseline_variant();
            entries.iter().filter(ours).find(baseline).or_else(|| entries.iter().find(ours))
        }
    };
    if let Some(d) = chosen {
        return Ok(d);
    }
    if let [only] = entries
        && only.platform.is_none()
    {
        return Ok(only);
    }
    let have: Vec<String> = entries
        .iter()
        .map(|d| match &d.platform {
            Some(p) => match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            },
            None => "(no platform)".into(),
        })
        .collect();
    Err(LayerError::convert(
        what,
        format!(
            "no {wanted} image in the index (it has: {}); choose one with --platform",
            have.join(", ")
        ),
    ))
}

/// Checks that `data` is what its descriptor names.
fn check_content(what: &str, digest: &Digest, size: u64, data: &[u8]) -> Result<()> {
    check_hashed(what, digest, size, Digest::of(data), data.len() as u64)
}

/// Checks that bytes of length `len` hashing to `actual` are what a descriptor names.
fn check_hashed(what: &str, digest: &Digest, size: u64, actual: Digest, len: u64) -> Result<()> {
    if actual != *digest || len != size {
        return Err(LayerError::convert(
            what,
            format!(
                "content does not match its descriptor: got {len} bytes hashing to {actual}, \
                 expected {size} bytes (corrupted or replaced where it is stored)"
            ),
        ));
    }
    Ok(())
}

/// Where the manifests and blobs of one image are. Implementations only fetch; the caller checks
/// every byte against its descriptor.
pub(crate) trait ImageBlobs {
    /// The bytes of the manifest or index `digest`. `what` names it in errors.
    fn manifest(&mut self, digest: &Digest, what: &str) -> Result<Vec<u8>>;

    /// The blob `digest`, `size` long by its descriptor (fewer if the store has fewer), in a
    /// file that is read from its start, with the length and digest of what it holds. A copy
    /// goes to an unlinked temp file in `tmp_dir` where the blob is not a local file already.
    /// Adds what arrives to `progress`. `what` names it in errors.
    fn blob(
        &mut self,
        digest: &Digest,
        size: u64,
        what: &str,
        progress: &Progress,
        tmp_dir: &Path,
    ) -> Result<BlobFile>;
}

/// Builds an image from the manifest or index `top` (named `what` in errors), fetching the rest
/// from `blobs`: the linux/amd64 image of an index, then its layers in order, one data blob per
/// layer. Layer media types are all checked before the first layer is fetched.
pub(crate) fn build_from_manifest(
    blobs: &mut dyn ImageBlobs,
    top: Vec<u8>,
    what: &str,
    config: &ConvertConfig,
    progress: &Progress,
) -> Result<(Metadata, Vec<BlobFile>)> {
    let wanted = Wanted::parse(&config.platform)?;
    let (mut bytes, mut what) = (top, what.to_string());
    let mut layers = None;
    for _ in 0..=MAX_INDEX_DEPTH {
        match parse_manifest(&bytes, &what)? {
            Manifest::Image(l) => {
                layers = Some(l);
                break;
            }
            Manifest::Index(entries) => {
                let chosen = pick_platform(&entries, &wanted, &what)?;
                let child = format!("{wanted} manifest {}", chosen.digest);
                let (digest, size) = chosen.target(&child)?;
                let data = blobs.manifest(&digest, &child)?;
                check_content(&child, &digest, size, &data)?;
                (bytes, what) = (data, child);
            }
        }
    }
    let layers = layers.ok_or_else(|| {
        LayerError::convert(&what, format!("indexes nested more than {MAX_INDEX_DEPTH} deep"))
    })?;
    let total = layers.len();
    let mut plan = Vec::with_capacity(total);
    for (i, layer) in layers.iter().enumerate() {
        let name = format!("layer {}/{total} ({})", i + 1, layer.digest);
        let compression = layer_compression(&layer.media_type).ok_or_else(|| {
            LayerError::convert(
                &name,
                format!(
                    "unsupported layer media type {:?} (supported: OCI and Docker tar, tar+gzip, \
                     and OCI tar+zstd)",
                    layer.media_type
                ),
            )
        })?;
        let (digest, size) = layer.target(&name)?;
        plan.push((name, digest, size, compression));
    }
    progress.set_layers(total as u64);
    let mut tree = Tree::new();
    let mut infos = Vec::with_capacity(total);
    let mut out = Vec::with_capacity(total);
    let tmp_dir = config.tmp_dir();
    for (i, (name, digest, size, compression)) in plan.into_iter().enumerate() {
        // The whole layer is on disk and checked before any of it is applied; only a buffer of
        // it is in memory at a time, here and while it is read back below.
        let layer = blobs.blob(&digest, size, &name, progress, &tmp_dir)?;
        check_hashed(&name, &digest, size, layer.digest(), layer.len())?;
        let mut writer = config.spooled_writer()?;
        // 256 KiB: few reads, small buffer (the decoders keep their own small buffers).
        let data = std::io::BufReader::with_capacity(256 << 10, layer.reader());
        match compression {
            Compression::None => {
                apply_layer(&mut tree, i, &name, data, &mut writer, progress)?;
            }
            Compression::Gzip => {
                let reader = flate2::read::GzDecoder::new(data);
                apply_layer(&mut tree, i, &name, reader, &mut writer, progress)?;
            }
            Compression::Zstd => {
                let reader = zstd::stream::Decoder::with_buffer(data)
                    .map_err(|e| LayerError::convert(&name, format!("zstd: {e}")))?;
                apply_layer(&mut tree, i, &name, reader, &mut writer, progress)?;
            }
        }
        drop(layer);
        let (info, file) = writer.finish_file(&tmp_dir)?;
        infos.push(info);
        out.push(file);
        progress.layer_done();
    }
    let meta = tree.into_metadata(config.block_size, infos)?;
    Ok((meta, out))
}

/// Applies uncompressed tar `layers` in order, as an image manifest's layers are applied, into
/// metadata and one data blob per layer: the tar half of convert without manifests or digests.
/// What the fuzz tests drive (`tests/fuzz_tar.rs`); errors name the layer as `layer N`.
pub fn apply_tar_layers(
    layers: &[&[u8]],
    config: &ConvertConfig,
) -> Result<(Metadata, Vec<Vec<u8>>)> {
    let progress = Progress::default();
    let mut tree = Tree::new();
    let mut infos = Vec::with_capacity(layers.len());
    let mut out = Vec::with_capacity(layers.len());
    for (i, data) in layers.iter().enumerate() {
        let mut writer = BlobWriter::new(config.block_size, config.level);
        apply_layer(&mut tree, i, &format!("layer {}", i + 1), *data, &mut writer, &progress)?;
        let (info, bytes) = writer.finish()?;
        infos.push(info);
        out.push(bytes);
    }
    let meta = tree.into_metadata(config.block_size, infos)?;
    Ok((meta, out))
}

struct Node {
    inode: Inode,
    children: BTreeMap<String, usize>,
}

struct Tree {
    nodes: Vec<Node>,
}

/// What the layer being applied has put into the tree so far. Whiteouts hide only what lower
/// layers put there, so an opaque marker must know which entries are this layer's own.
#[derive(Default)]
struct LayerEdits {
    /// Names this layer created or re-declared, by directory node.
    added: HashMap<usize, HashSet<String>>,
    /// Directories of lower layers that this layer re-declared (dir over dir): they still hold
    /// lower entries.
    merged: HashSet<usize>,
}

impl LayerEdits {
    fn add(&mut self, dir: usize, name: &str) {
        self.added.entry(dir).or_default().insert(name.to_string());
    }

    fn has(&self, dir: usize, name: &str) -> bool {
        self.added.get(&dir).is_some_and(|names| names.contains(name))
    }
}

fn dir_inode(mode: u32) -> Inode {
    Inode {
        mode: libc::S_IFDIR | (mode & 0o7777),
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_ns: 0,
        xattrs: Vec::new(),
        size: None,
        kind: Kind::Dir { entries: Vec::new() },
    }
}

/// Splits a tar path into checked components. An absolute name is rooted inside the image, as
/// `umoci unpack` and the container runtimes do (`umoci insert IMAGE SRC /` writes a member named
/// `/`); `..` stays refused wherever it appears.
fn components(entry: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for c in entry.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(LayerError::convert(entry, "path escapes the root (..)")),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

impl Tree {
    fn new() -> Self {
        Self { nodes: vec![Node { inode: dir_inode(0o755), children: BTreeMap::new() }] }
    }

    /// The directory that holds `parts`' last component, creating missing directories.
    fn parent(&mut self, entry: &str, parts: &[String], edits: &mut LayerEdits) -> Result<usize> {
        let mut cur = 0;
        for c in &parts[..parts.len().saturating_sub(1)] {
            cur = match self.nodes[cur].children.get(c) {
                Some(&id) => match self.nodes[id].inode.kind {
                    Kind::Dir { .. } => id,
                    Kind::Symlink { .. } => {
                        return Err(LayerError::convert(entry, "writes through a symlink"));
                    }
                    _ => return Err(LayerError::convert(entry, "a parent is not a directory")),
                },
                None => {
                    let id = self.nodes.len();
                    self.nodes.push(Node { inode: dir_inode(0o755), children: BTreeMap::new() });
                    self.nodes[cur].children.insert(c.clone(), id);
                    edits.add(cur, c);
                    id
                }
            };
        }
        Ok(cur)
    }

    /// Applies an opaque marker in `dir`: drops every entry lower layers put below it, also
    /// inside directories this layer re-declared, whatever the order of the tar entries.
    fn hide_lower(&mut self, dir: usize, edits: &LayerEdits) {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            self.nodes[d].children.retain(|name, _| edits.has(d, name));
            stack.extend(self.nodes[d].children.values().filter(|c| edits.merged.contains(c)));
        }
    }

    fn lookup(&self, parts: &[String]) -> Option<usize> {
        let mut cur = 0;
        for c in parts {
            cur = *self.nodes[cur].children.get(c)?;
        }
        Some(cur)
    }

    /// Flattens into metadata: reachable nodes only, directories before their entries.
    fn into_metadata(
        self,
        block_size: u32,
        blobs: Vec<bootseer_common::layer::format::BlobInfo>,
    ) -> Result<Metadata> {
        let mut index: HashMap<usize, u32> = HashMap::new();
        let mut order = Vec::new();
        let mut stack = vec![0usize];
        index.insert(0, 0);
        order.push(0);
        while let Some(id) = stack.pop() {
            for &child in self.nodes[id].children.values() {
                if let std::collections::hash_map::Entry::Vacant(v) = index.entry(child) {
                    v.insert(
                        u32::try_from(order.len())
                            .map_err(|_| LayerError::convert("layers", "too many inodes"))?,
                    );
                    order.push(child);
                    if matches!(self.nodes[child].inode.kind, Kind::Dir { .. }) {
                        stack.push(child);
                    }
                }
            }
        }
        let inodes = order
            .iter()
            .map(|&id| {
                let node = &self.nodes[id];
                let mut inode = node.inode.clone();
                if let Kind::Dir { entries } = &mut inode.kind {
                    *entries = node
                        .children
                        .iter()
                        .map(|(name, c)| Entry { name: name.clone(), inode: index[c] })
                        .collect();
                }
                inode
            })
            .collect();
        let meta = Metadata { block_size, blobs, inodes };
        meta.validate()?;
        Ok(meta)
    }
}

fn pax_map(entry: &mut tar::Entry<'_, impl Read>) -> Result<HashMap<String, Vec<u8>>> {
    let mut out = HashMap::new();
    if let Some(ext) =
        entry.pax_extensions().map_err(|e| LayerError::convert("layer", format!("pax: {e}")))?
    {
        for kv in ext {
            let kv = kv.map_err(|e| LayerError::convert("layer", format!("pax: {e}")))?;
            if let Ok(k) = kv.key() {
                out.insert(k.to_string(), kv.value_bytes().to_vec());
            }
        }
    }
    Ok(out)
}

fn header_is_dir(entry: &tar::Entry<'_, impl Read>) -> bool {
    entry.header().entry_type() == tar::EntryType::Directory
}

/// A reader that notes where its inner reader first reported the end of the stream, so that a tar
/// ending right after an entry's data can be told from one cut short inside it.
struct EndAt<R> {
    inner: R,
    pos: u64,
    end: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for EndAt<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && self.end.get().is_none() {
            self.end.set(Some(self.pos));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Applies one layer's tar stream to `tree`; file bytes go to `writer`, which is blob `layer`.
/// Errors name the layer as `name`.
fn apply_layer(
    tree: &mut Tree,
    layer: usize,
    name: &str,
    reader: impl Read,
    writer: &mut BlobWriter,
    progress: &Progress,
) -> Result<()> {
    apply_entries(tree, layer, reader, writer, progress).map_err(|e| match e {
        LayerError::Convert { path, reason } => {
            LayerError::Convert { path: format!("{name}: {path}"), reason }
        }
        other => other,
    })
}

fn apply_entries(
    tree: &mut Tree,
    layer: usize,
    reader: impl Read,
    writer: &mut BlobWriter,
    progress: &Progress,
) -> Result<()> {
    let at = |e: std::io::Error| LayerError::convert("tar stream", e.to_string());
    let end = Rc::new(Cell::new(None));
    let mut archive = tar::Archive::new(EndAt { inner: reader, pos: 0, end: end.clone() });
    let mut entries = archive.entries().map_err(at)?;
    let mut edits = LayerEdits::default();
    // Where the data of the entry before this one ends in the tar stream.
    let mut data_end = None;
    loop {
        let mut entry = match entries.next() {
            None => break,
            Some(Ok(entry)) => entry,
            // umoci 0.4.7's `insert` writes layers that stop right after the last entry's data,
            // without its padding and the end-of-archive blocks (umoci#436, fixed by umoci#534). Go's
            // tar reader, and with it umoci, containerd and docker, takes such a stream as
            // complete, so we do too, but only when it ended exactly there.
            Some(Err(_)) if data_end.is_some() && end.get() == data_end => break,
            Some(Err(e)) => return Err(at(e)),
        };
        let sparse = entry.header().entry_type() == tar::EntryType::GNUSparse;
        data_end = (!sparse).then(|| entry.raw_file_position() + entry.size());
        let raw = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| LayerError::convert("tar stream", "entry name is not UTF-8"))?;
        let parts = components(&raw)?;
        let pax = pax_map(&mut entry)?;
        let is_root = parts.is_empty();
        let name = parts.last().cloned().unwrap_or_default();
        let parent = tree.parent(&raw, &parts, &mut edits)?;
        if is_root && header_is_dir(&entry) {
            // handled below with the other directories
        } else if is_root {
            return Err(LayerError::convert(&raw, "the root is not a directory"));
        }
        if name == ".wh..wh..opq" {
            tree.hide_lower(parent, &edits);
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            // Whiteouts apply to lower layers only (OCI image spec, "Whiteouts"): an entry this
            // layer added itself stays.
            if !edits.has(parent, hidden) {
                tree.nodes[parent].children.remove(hidden);
            }
            continue;
        }
        let header = entry.header().clone();
        let num =
            |key: &str| pax.get(key).and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
        let (mtime, mtime_ns) =
            match pax.get("mtime").and_then(|v| std::str::from_utf8(v).ok().map(str::to_string)) {
                Some(s) => {
                    let (sec, frac) = s.split_once('.').unwrap_or((&s, "0"));
                    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
                    (sec.parse().unwrap_or(0), frac.parse().unwrap_or(0))
                }
                None => (header.mtime().map(|m| m as i64).unwrap_or(0), 0),
            };
        let mut xattrs: Vec<Xattr> = pax
            .iter()
            .filter_map(|(k, v)| {
                Some(Xattr { name: k.strip_prefix("SCHILY.xattr.")?.to_string(), value: v.clone() })
            })
            .collect();
        xattrs.sort_by(|a, b| a.name.cmp(&b.name));
        let perm = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = num("uid").or_else(|| header.uid().ok()).unwrap_or(0) as u32;
        let gid = num("gid").or_else(|| header.gid().ok()).unwrap_or(0) as u32;
        let attrs = |mode_type: u32, kind: Kind| Inode {
            mode: mode_type | perm,
            uid,
            gid,
            mtime,
            mtime_ns,
            xattrs: xattrs.clone(),
            size: None,
            kind,
        };
        use tar::EntryType as T;
        let et = header.entry_type();
        let inode = match et {
            T::Directory => {
                if is_root {
                    tree.nodes[0].inode = attrs(libc::S_IFDIR, Kind::Dir { entries: Vec::new() });
                    continue;
                }
                if let Some(&id) = tree.nodes[parent].children.get(&name)
                    && matches!(tree.nodes[id].inode.kind, Kind::Dir { .. })
                {
                    tree.nodes[id].inode = attrs(libc::S_IFDIR, Kind::Dir { entries: Vec::new() });
                    edits.add(parent, &name);
                    edits.merged.insert(id);
                    continue;
                }
                attrs(libc::S_IFDIR, Kind::Dir { entries: Vec::new() })
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let offset = writer.data_len;
                let mut buf = vec![0u8; 256 << 10];
                let mut size = 0u64;
                loop {
                    let n = entry
                        .read(&mut buf)
                        .map_err(|e| LayerError::convert(&raw, e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    writer.write(&buf[..n])?;
                    size += n as u64;
                }
                if size != entry.size() {
                    return Err(LayerError::convert(
                        &raw,
                        format!(
                            "the layer ends inside this file ({size} of {} bytes)",
                            entry.size()
                        ),
                    ));
                }
                progress.file(size);
                attrs(libc::S_IFREG, Kind::File { size, blob: layer as u32, offset })
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8(b.into_owned()))
                    .transpose()
                    .map_err(|_| LayerError::convert(&raw, "symlink target is not UTF-8"))?
                    .ok_or_else(|| LayerError::convert(&raw, "symlink without target"))?;
                attrs(libc::S_IFLNK, Kind::Symlink { target })
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .and_then(|b| String::from_utf8(b.into_owned()).ok())
                    .ok_or_else(|| LayerError::convert(&raw, "hardlink without a UTF-8 target"))?;
                let tparts = components(&target)?;
                let id = tree.lookup(&tparts).ok_or_else(|| {
                    LayerError::convert(&raw, format!("hardlink target {target:?} does not exist"))
                })?;
                if matches!(tree.nodes[id].inode.kind, Kind::Dir { .. }) {
                    return Err(LayerError::convert(&raw, "hardlink to a directory"));
                }
                edits.add(parent, &name);
                tree.nodes[parent].children.insert(name, id);
                continue;
            }
            T::Char | T::Block => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let t = if et == T::Char { libc::S_IFCHR } else { libc::S_IFBLK };
                attrs(t, Kind::Device { rdev: libc::makedev(major, minor) })
            }
            T::Fifo => attrs(libc::S_IFIFO, Kind::Fifo),
            // PAX/GNU headers are consumed by the tar reader; anything else is not a file.
            _ => continue,
        };
        let id = tree.nodes.len();
        tree.nodes.push(Node { inode, children: BTreeMap::new() });
        edits.add(parent, &name);
        tree.nodes[parent].children.insert(name, id);
    }
    Ok(())
}

/// Splits `DIR[:TAG]`.
fn split_source(spec: &str) -> (&str, Option<&str>) {
    match spec.rsplit_once(':') {
        Some((dir, tag)) if !tag.contains('/') && !tag.is_empty() => (dir, Some(tag)),
        _ => (spec, None),
    }
}

/// The blobs of an OCI image layout: `DIR/blobs/sha256/<hex>`, manifests included.
struct LayoutBlobs<'a> {
    dir: &'a Path,
}

impl LayoutBlobs<'_> {
    fn path(&self, digest: &Digest) -> std::path::PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    fn read(&self, digest: &Digest, what: &str) -> Result<Vec<u8>> {
        let path = self.path(digest);
        std::fs::read(&path)
            .map_err(|e| LayerError::convert(what, format!("{}: {e}", path.display())))
    }
}

impl ImageBlobs for LayoutBlobs<'_> {
    fn manifest(&mut self, digest: &Digest, what: &str) -> Result<Vec<u8>> {
        self.read(digest, what)
    }

    /// The layout's own file, hashed through the descriptor it was opened by: the bytes
    /// checked are the bytes applied (a blob replaced by rename after the open is not seen;
    /// one rewritten in place while we convert is the one case the check cannot cover).
    fn blob(
        &mut self,
        digest: &Digest,
        _size: u64,
        what: &str,
        progress: &Progress,
        _tmp_dir: &Path,
    ) -> Result<BlobFile> {
        let path = self.path(digest);
        let fail =
            |e: std::io::Error| LayerError::convert(what, format!("{}: {e}", path.display()));
        let file = std::fs::File::open(&path).map_err(fail)?;
        let (digest, len) = blob::hash_file(&file, |n| progress.layer_bytes(n)).map_err(fail)?;
        Ok(BlobFile::hashed(file, len, digest))
    }
}

/// Builds an image from the OCI layout `DIR[:TAG]`; one data blob per layer.
pub fn build_from_layout(
    spec: &str,
    config: &ConvertConfig,
    progress: &Progress,
) -> Result<(Metadata, Vec<BlobFile>)> {
    let (dir, tag) = split_source(spec);
    let dir = Path::new(dir);
    let index_path = dir.join("index.json");
    let index: OciIndex = serde_json::from_slice(
        &std::fs::read(&index_path).map_err(|e| LayerError::io(&index_path, e))?,
    )
    .map_err(|e| LayerError::convert(index_path.display(), format!("not an OCI index: {e}")))?;
    let chosen = match tag {
        Some(t) => {
            index.manifests.iter().find(|m| m.annotations.get(REF_NAME).is_some_and(|r| r == t))
        }
        None if index.manifests.len() == 1 => index.manifests.first(),
        None => None,
    }
    .ok_or_else(|| {
        LayerError::convert(spec, "no such tag in index.json (or several images and no tag)")
    })?;
    let what = format!("manifest {}", chosen.digest);
    let (digest, size) = chosen.target(&what)?;
    let mut blobs = LayoutBlobs { dir };
    let top = blobs.manifest(&digest, &what)?;
    check_content(&what, &digest, size, &top)?;
    build_from_manifest(&mut blobs, top, &what, config, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, et, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*et);
            h.set_mode(if *et == tar::EntryType::Directory { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            h.set_mtime(1_700_000_000);
            if !link.is_empty() {
                h.set_link_name(link).expect("link");
            }
            // set_path refuses `..`; write the name bytes directly to test our own checks.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn apply(layers: &[Vec<u8>]) -> Result<Metadata> {
        let mut tree = Tree::new();
        let mut infos = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let mut w = BlobWriter::new(1024, 3);
            let name = format!("layer {}", i + 1);
            apply_layer(&mut tree, i, &name, &l[..], &mut w, &Progress::default())?;
            infos.push(w.finish()?.0);
        }
        tree.into_metadata(1024, infos)
    }

    fn names(meta: &Metadata, dir: usize) -> Vec<String> {
        match &meta.inodes[dir].kind {
            Kind::Dir { entries } => entries.iter().map(|e| e.name.clone()).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn whiteouts_and_opaque_directories_apply() {
        use tar::EntryType as T;
        let lower = layer(&[
            ("a/", T::Directory, b"", ""),
            ("a/old", T::Regular, b"1", ""),
            ("b/", T::Directory, b"", ""),
            ("b/gone", T::Regular, b"2", ""),
            ("b/stays", T::Regular, b"3", ""),
        ]);
        let upper = layer(&[
            ("a/new", T::Regular, b"4", ""),
            ("a/.wh..wh..opq", T::Regular, b"", ""),
            ("b/.wh.gone", T::Regular, b"", ""),
        ]);
        let meta = apply(&[lower, upper]).expect("apply");
        assert_eq!(names(&meta, 0), ["a", "b"]);
        let find = |name: &str| match &meta.inodes[0].kind {
            Kind::Dir { entries } => {
                entries.iter().find(|e| e.name == name).map(|e| e.inode as usize)
            }
            _ => None,
        };
        assert_eq!(names(&meta, find("a").expect("a")), ["new"]);
        assert_eq!(names(&meta, find("b").expect("b")), ["stays"]);
    }

    #[test]
    fn escaping_entries_are_refused_by_name() {
        use tar::EntryType as T;
        for (entries, want) in [
            (vec![("../evil", T::Regular, &b"x"[..], "")], "../evil"),
            (vec![("/../evil", T::Regular, &b"x"[..], "")], "/../evil"),
            (vec![("a/../../evil", T::Regular, &b"x"[..], "")], "escapes the root"),
            (
                vec![
                    ("/l", T::Symlink, &b""[..], "/etc"),
                    ("/l/passwd", T::Regular, &b"x"[..], ""),
                ],
                "writes through a symlink",
            ),
            (
                vec![("l", T::Symlink, &b""[..], "/etc"), ("l/passwd", T::Regular, &b"x"[..], "")],
                "writes through a symlink",
            ),
            (vec![("h", T::Link, &b""[..], "missing")], "does not exist"),
        ] {
            let err = apply(&[layer(&entries)]).expect_err("must be refused").to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }

    /// Issue 10 item 11: what `umoci insert IMAGE SRC /` writes (a member named `/`) and absolute
    /// names are rooted inside the image, hardlink targets too.
    #[test]
    fn absolute_names_are_rooted_inside_the_image() {
        use tar::EntryType as T;
        let lower = layer(&[("etc/", T::Directory, b"", ""), ("etc/os", T::Regular, b"1", "")]);
        let upper = layer(&[
            ("/", T::Directory, b"", ""),
            ("/abs/path", T::Regular, b"22", ""),
            ("/etc/extra", T::Regular, b"333", ""),
            ("/h", T::Link, b"", "/abs/path"),
        ]);
        let meta = apply(&[lower, upper]).expect("absolute names");
        assert_eq!(names(&meta, 0), ["abs", "etc", "h"]);
        let child = |dir: usize, name: &str| match &meta.inodes[dir].kind {
            Kind::Dir { entries } => {
                entries.iter().find(|e| e.name == name).map(|e| e.inode as usize)
            }
            _ => None,
        };
        assert_eq!(names(&meta, child(0, "etc").expect("etc")), ["extra", "os"]);
        let path = child(child(0, "abs").expect("abs"), "path").expect("abs/path");
        assert_eq!(child(0, "h"), Some(path), "the hardlink is rooted too");
        assert!(matches!(meta.inodes[path].kind, Kind::File { size: 2, .. }));
    }

    /// Issue 10 item 10: a `.wh.NAME` hides NAME from lower layers only; the same layer's own
    /// NAME stays, before or after the whiteout in the tar.
    #[test]
    fn a_whiteout_does_not_remove_what_its_own_layer_added() {
        use tar::EntryType as T;
        let lower = layer(&[
            ("d/", T::Directory, b"", ""),
            ("d/gone", T::Regular, b"1", ""),
            ("d/replaced", T::Regular, b"2", ""),
        ]);
        let upper = layer(&[
            ("d/replaced", T::Regular, b"new bytes", ""),
            ("d/.wh.replaced", T::Regular, b"", ""),
            ("d/mine", T::Regular, b"3", ""),
            ("d/.wh.mine", T::Regular, b"", ""),
            ("d/.wh.gone", T::Regular, b"", ""),
        ]);
        let meta = apply(&[lower, upper]).expect("apply");
        let d = match &meta.inodes[0].kind {
            Kind::Dir { entries } => entries[0].inode as usize,
            _ => unreachable!("the root is a directory"),
        };
        assert_eq!(names(&meta, d), ["mine", "replaced"]);
    }

    #[test]
    fn an_opaque_marker_after_a_redeclared_directory_still_hides_its_lower_entries() {
        use tar::EntryType as T;
        let lower = layer(&[
            ("a/", T::Directory, b"", ""),
            ("a/old", T::Regular, b"1", ""),
            ("a/sub/", T::Directory, b"", ""),
            ("a/sub/lower", T::Regular, b"2", ""),
        ]);
        // The marker last: `a/sub` is this layer's again, but its lower entries are still hidden.
        let upper = layer(&[
            ("a/", T::Directory, b"", ""),
            ("a/sub/", T::Directory, b"", ""),
            ("a/sub/upper", T::Regular, b"3", ""),
            ("a/new", T::Regular, b"4", ""),
            ("a/.wh..wh..opq", T::Regular, b"", ""),
        ]);
        let meta = apply(&[lower, upper]).expect("apply");
        let child = |dir: usize, name: &str| match &meta.inodes[dir].kind {
            Kind::Dir { entries } => {
                entries.iter().find(|e| e.name == name).map(|e| e.inode as usize)
            }
            _ => None,
        };
        let a = child(0, "a").expect("a");
        assert_eq!(names(&meta, a), ["new", "sub"]);
        assert_eq!(names(&meta, child(a, "sub").expect("sub")), ["upper"]);
    }

    #[test]
    fn a_tar_ending_right_after_its_last_data_is_complete_but_one_cut_inside_it_is_not() {
        use tar::EntryType as T;
        let full = layer(&[("d/", T::Directory, b"", ""), ("d/f", T::Regular, b"hello", "")]);
        // Two headers, then the five data bytes: what umoci 0.4.7's `insert` leaves.
        let unterminated = full[..2 * 512 + 5].to_vec();
        let meta = apply(&[unterminated]).expect("unterminated layer");
        assert_eq!(meta.blobs[0].data_len, 5);
        for cut in [2 * 512 + 3, 2 * 512 + 100, 512 + 100] {
            let err = apply(&[full[..cut].to_vec()]).expect_err("cut short").to_string();
            assert!(err.starts_with("convert layer 1: "), "cut at {cut}: {err}");
        }
    }
}
