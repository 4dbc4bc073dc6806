//! Bounded convert (issue 10 item 6), through the built binary on an OCI layout written here by
//! hand: three layers (plain tar, tar+gzip, tar+zstd) of a few MiB of random and compressible
//! files, the third deleting a file of the first.
//!
//! - `--threads 4` and `--threads 1` give the same store, byte for byte, and every file's bytes
//!   decoded back from the stored blocks are the source's.
//! - A layer whose bytes do not match its digest fails naming the layer, with no panic, and
//!   leaves nothing in `--tmp-dir` or the store.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use bootseer_common::digest::Digest;
use bootseer_common::layer::format::{Kind, Metadata};
use bootseer_common::layer::session;
use bootseer_common::store::{DynStore, local::LocalStore};
use bootseer_common::testing::mem::pattern;
use bootseer_image::LayerRef;
use serde_json::json;

const BLOCK: usize = 64 << 10;

/// Files of one layer, path → bytes; an empty value under `.wh.NAME` is a whiteout.
type Files = Vec<(String, Vec<u8>)>;

fn tar_of(files: &Files) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, data) in files {
        let mut parent = Path::new(path).parent();
        let mut chain = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            chain.push(p.to_path_buf());
            parent = p.parent();
        }
        for dir in chain.into_iter().rev() {
            if dirs.insert(dir.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_mtime(1_700_000_000);
                b.append_data(&mut h, &dir, &[][..]).expect("dir");
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, &data[..]).expect("file");
    }
    b.into_inner().expect("tar")
}

fn put_blob(layout: &Path, data: &[u8]) -> (String, u64) {
    let digest = Digest::of(data);
    std::fs::write(layout.join("blobs/sha256").join(digest.hex()), data).expect("blob");
    (digest.to_string(), data.len() as u64)
}

/// Writes an OCI layout of `layers` (tag `v1`); returns the digests of the layer blobs.
fn write_layout(layout: &Path, layers: &[Files]) -> Vec<String> {
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("layout dir");
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci");
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, files) in layers.iter().enumerate() {
        let tar = tar_of(files);
        diff_ids.push(Digest::of(&tar).to_string());
        let (media_type, bytes) = match i % 3 {
            0 => ("application/vnd.oci.image.layer.v1.tar", tar),
            1 => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&tar).expect("gzip");
                ("application/vnd.oci.image.layer.v1.tar+gzip", gz.finish().expect("gzip"))
            }
            _ => (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                zstd::encode_all(&tar[..], 3).expect("zstd"),
            ),
        };
        let (digest, size) = put_blob(layout, &bytes);
        descriptors.push(json!({"mediaType": media_type, "digest": digest, "size": size}));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "config": {}
    }))
    .expect("config");
    let (config_digest, config_size) = put_blob(layout, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": descriptors,
    }))
    .expect("manifest");
    let (manifest_digest, manifest_size) = put_blob(layout, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).expect("index"))
        .expect("index.json");
    descriptors.iter().map(|d| d["digest"].as_str().expect("digest").to_string()).collect()
}

/// Random and compressible files over three layers, a few MiB in all; and the tree they make.
fn image() -> (Vec<Files>, BTreeMap<String, Vec<u8>>) {
    let text = |seed: u64, len: usize| -> Vec<u8> {
        let line = format!("line {seed} of some very compressible text\n").into_bytes();
        line.iter().copied().cycle().take(len).collect()
    };
    let layers = vec![
        vec![
            ("usr/lib/random.bin".to_string(), pattern(1, 3 << 20)),
            ("usr/share/doc.txt".to_string(), text(2, (2 << 20) + 17)),
            ("etc/gone.conf".to_string(), b"deleted above".to_vec()),
            ("etc/empty".to_string(), Vec::new()),
        ],
        vec![
            ("opt/app/model.bin".to_string(), pattern(3, (2 << 20) + BLOCK / 2)),
            ("opt/app/small".to_string(), b"x".to_vec()),
        ],
        vec![
            ("etc/.wh.gone.conf".to_string(), Vec::new()),
            ("var/log/mixed".to_string(), [pattern(4, 700_001), text(5, 900_000)].concat()),
        ],
    ];
    let mut tree = BTreeMap::new();
    for files in &layers {
        for (path, data) in files {
            match path.rsplit_once(".wh.") {
                Some((dir, name)) => tree.remove(&format!("{dir}{name}")),
                None => tree.insert(path.clone(), data.clone()),
            };
        }
    }
    (layers, tree)
}

fn convert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bootseer-image"))
        .arg("convert")
        .args(args)
        .output()
        .expect("run bootseer-image")
}

/// Every file under `dir` (relative path → bytes).
fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let path = e.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("below").display().to_string();
                out.insert(rel, std::fs::read(&path).expect("read"));
            }
        }
    }
    out
}

/// The file tree stored as `image` in `store`, decoded from the stored blocks (each checked
/// against its digest).
fn decoded_tree(store: &DynStore, image: &str) -> BTreeMap<String, Vec<u8>> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let image = LayerRef::parse(image).expect("ref");
    let meta: Metadata = rt.block_on(session::load_metadata(store, &image)).expect("metadata");
    let mut data = Vec::new();
    for blob in &meta.blobs {
        let key = format!("blobs/{}", blob.digest);
        let stored = rt.block_on(store.read_range(&key, 0..u64::MAX)).expect("blob");
        assert_eq!(Digest::of(&stored).to_string(), blob.digest);
        let mut plain = Vec::new();
        for block in &blob.blocks {
            let at = block.offset as usize;
            let bytes = zstd::bulk::decompress(&stored[at..at + block.len as usize], BLOCK)
                .expect("block decompresses");
            assert_eq!(Digest::of(&bytes).to_string(), block.digest, "block digest");
            plain.extend_from_slice(&bytes);
        }
        assert_eq!(plain.len() as u64, blob.data_len);
        data.push(plain);
    }
    let mut out = BTreeMap::new();
    let mut stack = vec![(0usize, String::new())];
    while let Some((ino, path)) = stack.pop() {
        match &meta.inodes[ino].kind {
            Kind::Dir { entries } => {
                for e in entries {
                    let child =
                        if path.is_empty() { e.name.clone() } else { format!("{path}/{}", e.name) };
                    stack.push((e.inode as usize, child));
                }
            }
            Kind::File { size, blob, offset } => {
                let (at, len) = (*offset as usize, *size as usize);
                out.insert(path, data[*blob as usize][at..at + len].to_vec());
            }
            _ => {}
        }
    }
    out
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).expect("read_dir").next().is_none()
}

#[test]
fn threads_give_the_same_image_and_the_source_bytes() {
    let work = tempfile::tempdir().expect("work");
    let layout = work.path().join("layout");
    let (layers, want) = image();
    write_layout(&layout, &layers);
    let tmp = work.path().join("tmp");
    std::fs::create_dir(&tmp).expect("tmp");
    let mut stores = Vec::new();
    for threads in ["1", "4"] {
        let store_dir = work.path().join(format!("store-{threads}"));
        let dest = format!("file://{}/img:v1", store_dir.display());
        let out = convert(&[
            &format!("oci:{}:v1", layout.display()),
            &dest,
            "--block-size",
            "64k",
            "--threads",
            threads,
            "--tmp-dir",
            tmp.to_str().expect("utf8"),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "--threads {threads}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(is_empty_dir(&tmp), "--threads {threads} left files in --tmp-dir");
        let store: DynStore = Arc::new(LocalStore::new(&store_dir));
        let got = decoded_tree(&store, &dest);
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        for (path, bytes) in &want {
            assert!(got[path] == *bytes, "--threads {threads}: {path} differs from the source");
        }
        stores.push(files_under(&store_dir));
    }
    assert_eq!(stores[0].len(), stores[1].len());
    for (key, bytes) in &stores[0] {
        assert!(stores[1].get(key) == Some(bytes), "{key}: --threads 4 differs from --threads 1");
    }
}

#[test]
fn a_layer_with_a_wrong_digest_fails_cleanly_and_leaves_nothing() {
    let work = tempfile::tempdir().expect("work");
    let layout = work.path().join("layout");
    let (layers, _) = image();
    let digests = write_layout(&layout, &layers);
    // The second layer (gzip): same length, one bit flipped.
    let hex = digests[1].strip_prefix("sha256:").expect("sha256");
    let path = layout.join("blobs/sha256").join(hex);
    let mut bytes = std::fs::read(&path).expect("layer");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, &bytes).expect("tamper");
    let tmp = work.path().join("tmp");
    std::fs::create_dir(&tmp).expect("tmp");
    let store_dir = work.path().join("store");
    std::fs::create_dir(&store_dir).expect("store");
    let out = convert(&[
        &format!("oci:{}:v1", layout.display()),
        &format!("file://{}/img:v1", store_dir.display()),
        "--threads",
        "4",
        "--tmp-dir",
        tmp.to_str().expect("utf8"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a tampered layer converted");
    assert!(
        stderr.contains(&format!("layer 2/3 ({})", digests[1]))
            && stderr.contains("does not match its descriptor"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(is_empty_dir(&tmp), "a failed convert left files in --tmp-dir");
    assert!(is_empty_dir(&store_dir), "a failed convert wrote into the store");
}

#[test]
fn a_missing_tmp_dir_is_a_clear_error() {
    let work = tempfile::tempdir().expect("work");
    let layout = work.path().join("layout");
    let (layers, _) = image();
    write_layout(&layout, &layers[..1]);
    let missing = work.path().join("no-such-dir");
    let out = convert(&[
        &format!("oci:{}:v1", layout.display()),
        &format!("file://{}/img:v1", work.path().join("store").display()),
        "--tmp-dir",
        missing.to_str().expect("utf8"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no-such-dir") && !stderr.contains("panicked"), "{stderr}");
}
