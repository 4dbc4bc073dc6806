//! `oci:DIR[:TAG]` sources: an OCI image layout (as skopeo and umoci write it), its layers applied
//! in order with whiteouts and opaque directories.
//!
//! ```text
//!  index.json ─(ref.name = TAG)─► manifest ─► layers[i] (digest checked; tar, tar+gzip, tar+zstd)
//!    each tar entry ─► path checked (no absolute, no `..`, no write through a symlink)
//!      `.wh..wh..opq` ─► drop the directory's entries from lower layers
//!      `.wh.NAME`     ─► drop NAME
//!      dir over dir   ─► attributes replaced, entries kept (overlay semantics)
//!      anything else  ─► replaces the entry; file bytes ─► layer i's BlobWriter (blob i)
//!  Tree (arena; hardlinks share a node) ─► Metadata (reachable nodes only, renumbered)
//! ```

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use bootseer_common::digest::Digest;
use serde::Deserialize;

use crate::convert::{BlobWriter, ConvertConfig};
use crate::error::{ImageError, Result};
use crate::format::{Entry, Inode, Kind, Metadata, Xattr};
use crate::progress::Progress;

/// The OCI annotation naming a manifest's tag in `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Deserialize)]
struct OciDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<OciDescriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    layers: Vec<OciDescriptor>,
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
        kind: Kind::Dir { entries: Vec::new() },
    }
}

/// Splits a tar path into checked components.
fn components(entry: &str) -> Result<Vec<String>> {
    if entry.starts_with('/') {
        return Err(ImageError::convert(entry, "absolute path in layer"));
    }
    let mut out = Vec::new();
    for c in entry.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(ImageError::convert(entry, "path escapes the root (..)")),
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
                        return Err(ImageError::convert(entry, "writes through a symlink"));
                    }
                    _ => return Err(ImageError::convert(entry, "a parent is not a directory")),
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
        blobs: Vec<crate::format::BlobInfo>,
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
                            .map_err(|_| ImageError::convert("layers", "too many inodes"))?,
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
        entry.pax_extensions().map_err(|e| ImageError::convert("layer", format!("pax: {e}")))?
    {
        for kv in ext {
            let kv = kv.map_err(|e| ImageError::convert("layer", format!("pax: {e}")))?;
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
fn apply_layer(
    tree: &mut Tree,
    layer: usize,
    reader: impl Read,
    writer: &mut BlobWriter,
    progress: &Progress,
) -> Result<()> {
    let at = |e: std::io::Error| ImageError::convert(format!("layer {layer}"), e.to_string());
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
        let raw = String::from_utf8(entry.path_bytes().into_owned()).map_err(|_| {
            ImageError::convert(format!("layer {layer}"), "entry name is not UTF-8")
        })?;
        let parts = components(&raw)?;
        let pax = pax_map(&mut entry)?;
        let is_root = parts.is_empty();
        let name = parts.last().cloned().unwrap_or_default();
        let parent = tree.parent(&raw, &parts, &mut edits)?;
        if is_root && header_is_dir(&entry) {
            // handled below with the other directories
        } else if is_root {
            return Err(ImageError::convert(&raw, "the root is not a directory"));
        }
        if name == ".wh..wh..opq" {
            tree.hide_lower(parent, &edits);
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            tree.nodes[parent].children.remove(hidden);
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
                        .map_err(|e| ImageError::convert(&raw, e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    writer.write(&buf[..n])?;
                    size += n as u64;
                }
                if size != entry.size() {
                    return Err(ImageError::convert(
                        &raw,
                        format!(
                            "layer {layer} ends inside this file ({size} of {} bytes)",
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
                    .map_err(|_| ImageError::convert(&raw, "symlink target is not UTF-8"))?
                    .ok_or_else(|| ImageError::convert(&raw, "symlink without target"))?;
                attrs(libc::S_IFLNK, Kind::Symlink { target })
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .and_then(|b| String::from_utf8(b.into_owned()).ok())
                    .ok_or_else(|| ImageError::convert(&raw, "hardlink without a UTF-8 target"))?;
                let tparts = components(&target)?;
                let id = tree.lookup(&tparts).ok_or_else(|| {
                    ImageError::convert(&raw, format!("hardlink target {target:?} does not exist"))
                })?;
                if matches!(tree.nodes[id].inode.kind, Kind::Dir { .. }) {
                    return Err(ImageError::convert(&raw, "hardlink to a directory"));
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

fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ImageError::convert(digest, "not a sha256 digest"))?;
    let path = dir.join("blobs/sha256").join(hex);
    let data = std::fs::read(&path).map_err(|e| ImageError::io(&path, e))?;
    if Digest::of(&data).to_string() != digest {
        return Err(ImageError::convert(path.display(), "content does not match its digest"));
    }
    Ok(data)
}

/// Builds an image from the OCI layout `DIR[:TAG]`; one data blob per layer.
pub fn build_from_layout(
    spec: &str,
    config: &ConvertConfig,
    progress: &Progress,
) -> Result<(Metadata, Vec<Vec<u8>>)> {
    let (dir, tag) = split_source(spec);
    let dir = Path::new(dir);
    let index_path = dir.join("index.json");
    let index: OciIndex = serde_json::from_slice(
        &std::fs::read(&index_path).map_err(|e| ImageError::io(&index_path, e))?,
    )
    .map_err(|e| ImageError::convert(index_path.display(), format!("not an OCI index: {e}")))?;
    let chosen = match tag {
        Some(t) => {
            index.manifests.iter().find(|m| m.annotations.get(REF_NAME).is_some_and(|r| r == t))
        }
        None if index.manifests.len() == 1 => index.manifests.first(),
        None => None,
    }
    .ok_or_else(|| {
        ImageError::convert(spec, "no such tag in index.json (or several images and no tag)")
    })?;
    let manifest: OciManifest = serde_json::from_slice(&read_blob(dir, &chosen.digest)?)
        .map_err(|e| ImageError::convert(&chosen.digest, format!("not an image manifest: {e}")))?;
    let mut tree = Tree::new();
    let mut infos = Vec::new();
    let mut blobs = Vec::new();
    progress.set_layers(manifest.layers.len() as u64);
    for (i, layer) in manifest.layers.iter().enumerate() {
        let data = read_blob(dir, &layer.digest)?;
        progress.layer_bytes(data.len() as u64);
        let mut writer = BlobWriter::new(config.block_size, config.level);
        let mt = layer.media_type.as_str();
        if mt.ends_with("gzip") {
            apply_layer(
                &mut tree,
                i,
                flate2::read::GzDecoder::new(&data[..]),
                &mut writer,
                progress,
            )?;
        } else if mt.ends_with("zstd") {
            let dec = zstd::stream::Decoder::new(&data[..])
                .map_err(|e| ImageError::convert(&layer.digest, e.to_string()))?;
            apply_layer(&mut tree, i, dec, &mut writer, progress)?;
        } else if mt.ends_with("tar") || mt.is_empty() {
            apply_layer(&mut tree, i, &data[..], &mut writer, progress)?;
        } else {
            return Err(ImageError::convert(
                &layer.digest,
                format!("unsupported layer type {mt:?}"),
            ));
        }
        let (info, bytes) = writer.finish()?;
        infos.push(info);
        blobs.push(bytes);
        progress.layer_done();
    }
    let meta = tree.into_metadata(config.block_size, infos)?;
    Ok((meta, blobs))
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
            apply_layer(&mut tree, i, &l[..], &mut w, &Progress::default())?;
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
            (vec![("/abs", T::Regular, &b"x"[..], "")], "/abs"),
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
            assert!(err.contains("layer 0"), "cut at {cut}: {err}");
        }
    }
}
