//! Container image sources built with the real `umoci`: three layers, the second deleting a file
//! and a directory (umoci writes whiteouts), the third replacing a directory with
//! `umoci insert --opaque` (an opaque marker).
//!
//! - `oci:DIR:TAG`: convert, mount, and compare with umoci's own unpack of the same image, an
//!   independent implementation of the layer rules.
//! - `docker://`: the same image copied into a real registry (Debian `docker-registry`) by
//!   `skopeo` as OCI, as Docker v2 schema 2, recompressed as zstd, uncompressed, and behind an
//!   OCI index and a Docker manifest list; the built binary converts each, and each must give
//!   exactly the metadata and blobs the `oci:` conversion of the layout gives. A layer tampered
//!   with in the registry's storage, and one deleted through its API, must fail naming the layer.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bootseer_common::digest::Digest;
use bootseer_common::layer::session;
use bootseer_common::mount::MountConfig;
use bootseer_common::store::{DynStore, local::LocalStore};
use bootseer_common::testing::registry::Registry;
use bootseer_common::testing::{fuse::MountGuard, mem::pattern, require_real};
use bootseer_image::convert::oci;
use bootseer_image::convert::{self, ConvertConfig};
use bootseer_image::{LayerFuse, LayerRef, LayerSession, SessionConfig, TraceMode};
use common::{BLOCK, describe, is_root};

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn umoci(args: &[&str]) -> anyhow::Result<()> {
    run("umoci", args)
}

/// The directory `umoci insert --opaque` replaces, and what is in it before and after.
const OPAQUE_DIR: &str = "etc/conf.d";
const OPAQUE_BEFORE: &[&str] = &["a.conf", "sub", "sub/lower.conf"];
const OPAQUE_AFTER: &[&str] = &["sub", "sub/upper.conf", "x.conf"];

fn layered_image(work: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(is_root(), "umoci unpack keeps owners only as root");
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    let (l, b) = (layout.to_str().expect("utf8"), bundle.to_str().expect("utf8"));
    umoci(&["init", "--layout", l])?;
    umoci(&["new", "--image", &format!("{l}:v1")])?;
    umoci(&["unpack", "--image", &format!("{l}:v1"), b])?;
    let root = bundle.join("rootfs");
    std::fs::create_dir_all(root.join("usr/lib/pkg"))?;
    std::fs::create_dir_all(root.join("var/cache/old"))?;
    std::fs::write(root.join("usr/lib/pkg/big.so"), pattern(1, 5 * BLOCK as usize + 3))?;
    std::fs::write(root.join("usr/lib/pkg/doomed.py"), b"print('bye')\n")?;
    std::fs::write(root.join("var/cache/old/junk"), b"junk")?;
    std::fs::create_dir_all(root.join(OPAQUE_DIR).join("sub"))?;
    std::fs::write(root.join(OPAQUE_DIR).join("a.conf"), b"a = 1\n")?;
    std::fs::write(root.join(OPAQUE_DIR).join("sub/lower.conf"), b"lower\n")?;
    std::fs::hard_link(root.join("usr/lib/pkg/big.so"), root.join("usr/lib/big-link.so"))?;
    std::os::unix::fs::symlink("pkg/big.so", root.join("usr/lib/alias.so"))?;
    // --refresh-bundle: the next repack diffs against this layer, so it holds only the change.
    umoci(&["repack", "--refresh-bundle", "--image", &format!("{l}:v1"), b])?;
    std::fs::remove_file(root.join("usr/lib/pkg/doomed.py"))?;
    std::fs::remove_dir_all(root.join("var/cache/old"))?;
    std::fs::write(root.join("usr/lib/pkg/new.py"), b"print('hi')\n")?;
    umoci(&["repack", "--image", &format!("{l}:v1"), b])?;
    // The replacement has a `sub` too: the old `sub/lower.conf` must still go.
    let replacement = work.join("replacement");
    std::fs::create_dir_all(replacement.join("sub"))?;
    std::fs::write(replacement.join("x.conf"), b"x = 2\n")?;
    std::fs::write(replacement.join("sub/upper.conf"), b"upper\n")?;
    umoci(&[
        "insert",
        "--image",
        &format!("{l}:v1"),
        "--opaque",
        replacement.to_str().expect("utf8"),
        &format!("/{OPAQUE_DIR}"),
    ])?;
    // A second, empty image in the layout: the wrong pick from an index.
    umoci(&["new", "--image", &format!("{l}:empty")])?;
    umoci(&[
        "unpack",
        "--image",
        &format!("{l}:v1"),
        work.join("expected").to_str().expect("utf8"),
    ])?;
    Ok(())
}

/// Relative paths below `dir` of the tree at `root`, sorted: a plain `std::fs` walk.
fn below(root: &Path, dir: &str) -> Vec<String> {
    let base = root.join(dir);
    let mut out = Vec::new();
    let mut stack = vec![base.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readdir") {
            let path = e.expect("entry").path();
            out.push(path.strip_prefix(&base).expect("below").to_string_lossy().into_owned());
            if std::fs::symlink_metadata(&path).expect("lstat").is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256");
    std::fs::read(layout.join("blobs/sha256").join(hex)).expect("layout blob")
}

/// The image manifest tagged `tag` in an OCI layout.
fn layout_manifest(layout: &Path, tag: &str) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index json");
    let desc = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tag in index.json");
    serde_json::from_slice(&layout_blob(layout, desc["digest"].as_str().expect("digest")))
        .expect("manifest json")
}

/// Entry names of a gzip layer, up to its end or the first error (umoci 0.4.7's insert layers end
/// without the tar trailer).
fn layer_entries(gz: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let mut names = Vec::new();
    if let Ok(entries) = archive.entries() {
        for entry in entries {
            let Ok(entry) = entry else { break };
            names.push(String::from_utf8_lossy(&entry.path_bytes()).into_owned());
        }
    }
    names
}

#[test]
fn a_layered_oci_image_mounts_as_umoci_unpacks_it() {
    let work = tempfile::tempdir().expect("work");
    if require_real("umoci", layered_image(work.path())).is_none() {
        return;
    }
    let layout = work.path().join("layout");
    // The last layer is umoci's opaque replacement: a real `.wh..wh..opq`, not single whiteouts.
    let manifest = layout_manifest(&layout, "v1");
    let last = manifest["layers"].as_array().and_then(|l| l.last()).expect("layers");
    let entries = layer_entries(&layout_blob(&layout, last["digest"].as_str().expect("digest")));
    assert!(entries.contains(&format!("{OPAQUE_DIR}/.wh..wh..opq")), "{entries:?}");
    let spec = format!("oci:{}:v1", layout.display());
    let (meta, blobs) =
        convert::build(&spec, &ConvertConfig { block_size: BLOCK, level: 3, ..Default::default() })
            .expect("convert");
    // One data blob per layer (umoci's `new` image has none; each repack and insert adds one).
    assert_eq!(
        meta.blobs.len(),
        3,
        "{:?}",
        meta.blobs.iter().map(|b| b.data_len).collect::<Vec<_>>()
    );
    let store_dir = tempfile::tempdir().expect("store");
    let store: DynStore = Arc::new(LocalStore::new(store_dir.path()));
    let image =
        LayerRef::parse(&format!("file://{}/layered:v1", store_dir.path().display())).expect("ref");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(convert::push(&store, &image, &meta, blobs)).expect("push");
    let session = rt
        .block_on(LayerSession::open_with_store(
            image,
            store,
            SessionConfig { trace: TraceMode::Off, ..SessionConfig::default() },
        ))
        .expect("open");
    let config = MountConfig {
        threads: 2,
        flags: bootseer_common::mount::MountFlags { dev: true, suid: true, ..Default::default() },
        ..MountConfig::default()
    };
    let fuse = LayerFuse::new(session.fs(), rt.handle().clone(), config.clone());
    let Some(mount) = require_real("FUSE", MountGuard::mount(fuse, &config)) else { return };

    let expected = work.path().join("expected/rootfs");
    // The opaque directory holds only what the insert put there, by umoci's unpack and by ours.
    assert_eq!(below(&expected, OPAQUE_DIR), OPAQUE_AFTER, "umoci's own unpack");
    assert_eq!(below(mount.path(), OPAQUE_DIR), OPAQUE_AFTER, "the mount");
    for gone in OPAQUE_BEFORE.iter().filter(|p| !OPAQUE_AFTER.contains(p)) {
        let path = mount.path().join(OPAQUE_DIR).join(gone);
        assert!(std::fs::symlink_metadata(&path).is_err(), "{} survived", path.display());
    }
    let want = describe(&expected);
    let got = describe(mount.path());
    assert!(
        !want.entries.contains_key(Path::new("var/cache/old")),
        "whiteout not applied by umoci?"
    );
    assert!(want.entries.contains_key(Path::new("usr/lib/pkg/new.py")));
    for (path, w) in &want.entries {
        let g = got.entries.get(path).unwrap_or_else(|| panic!("{} missing", path.display()));
        assert_eq!(g, w, "{} differs", path.display());
    }
    assert_eq!(got.entries.len(), want.entries.len(), "extra entries: whiteouts not applied");
    assert_eq!(got.hardlinks, want.hardlinks);
    drop(mount);
    rt.block_on(session.finish()).expect("finish");
}

/// `skopeo copy` of the layout's `tag` to `docker://DEST` over plain http.
fn skopeo_copy(layout: &Path, tag: &str, dest: &str, extra: &[&str]) -> anyhow::Result<()> {
    let src = format!("oci:{}:{tag}", layout.display());
    let dest = format!("docker://{dest}");
    let mut args = vec!["copy", "--quiet", "--dest-tls-verify=false"];
    args.extend_from_slice(extra);
    args.extend([src.as_str(), dest.as_str()]);
    run("skopeo", &args)
}

/// The descriptor of the manifest tagged `tag` in `store`, for an index entry on `arch`.
async fn entry(store: &DynStore, tag: &str, arch: &str) -> anyhow::Result<serde_json::Value> {
    let bytes = store.read_range(&format!("manifests/{tag}"), 0..u64::MAX).await?;
    let m: serde_json::Value = serde_json::from_slice(&bytes)?;
    let media_type = m["mediaType"].as_str().unwrap_or(oci::media::OCI_MANIFEST).to_string();
    Ok(serde_json::json!({"mediaType": media_type, "digest": Digest::of(&bytes).to_string(),
        "size": bytes.len(), "platform": {"os": "linux", "architecture": arch}}))
}

/// Puts the layered image into `repo` (`HOST:PORT/REPO`) in every form a registry holds images
/// in, the zstd one into `zstd_repo` (another registry: skopeo 1.9 reuses a gzip blob the
/// registry already has instead of recompressing it). Returns the sources to convert. Each form
/// is checked to be what it claims, so none silently degrades into another.
fn push_every_form(layout: &Path, repo: &str, zstd_repo: &str) -> anyhow::Result<Vec<String>> {
    skopeo_copy(layout, "v1", &format!("{repo}:oci"), &[])?;
    skopeo_copy(layout, "v1", &format!("{repo}:v2s2"), &["--format", "v2s2"])?;
    skopeo_copy(layout, "empty", &format!("{repo}:empty"), &[])?;
    skopeo_copy(layout, "empty", &format!("{repo}:empty-v2s2"), &["--format", "v2s2"])?;
    // skopeo 1.9 keeps gzip layers as they are unless --dest-compress asks for recompression.
    let zstd = ["--dest-compress", "--dest-compress-format", "zstd"];
    skopeo_copy(layout, "v1", &format!("{zstd_repo}:zstd"), &zstd)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let open = |repo: String| async move {
            bootseer_common::store::open(&format!("docker://{repo}"), &Default::default()).await
        };
        let store = open(repo.to_string()).await?;
        let zstd_store = open(zstd_repo.to_string()).await?;
        let manifest = |store: &DynStore, tag: &'static str| {
            let store = store.clone();
            async move {
                let bytes = store.read_range(&format!("manifests/{tag}"), 0..u64::MAX).await?;
                anyhow::Ok(serde_json::from_slice::<serde_json::Value>(&bytes)?)
            }
        };
        let types = |m: &serde_json::Value| -> Vec<String> {
            let layers = m["layers"].as_array().into_iter().flatten();
            layers.map(|l| l["mediaType"].as_str().unwrap_or_default().to_string()).collect()
        };
        let oci = manifest(&store, "oci").await?;
        anyhow::ensure!(types(&oci).iter().all(|t| t.ends_with("tar+gzip")), "oci: {oci}");
        let v2s2 = manifest(&store, "v2s2").await?;
        anyhow::ensure!(v2s2["mediaType"] == oci::media::DOCKER_MANIFEST, "v2s2: {v2s2}");
        anyhow::ensure!(types(&v2s2).iter().all(|t| t.ends_with("diff.tar.gzip")), "{v2s2}");
        let zstd = manifest(&zstd_store, "zstd").await?;
        anyhow::ensure!(types(&zstd).iter().all(|t| t.ends_with("tar+zstd")), "zstd: {zstd}");
        // Uncompressed: no copy tool pushes that to a registry, so push the layout's layers
        // decompressed, with the config, through the registry store.
        let mut plain = layout_manifest(layout, "v1");
        plain["mediaType"] = oci::media::OCI_MANIFEST.into();
        let config = layout_blob(layout, plain["config"]["digest"].as_str().expect("config"));
        store.put(&format!("blobs/{}", Digest::of(&config)), config.into()).await?;
        for layer in plain["layers"].as_array_mut().expect("layers") {
            let gz = layout_blob(layout, layer["digest"].as_str().expect("digest"));
            let mut tar = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar)?;
            let digest = Digest::of(&tar);
            *layer = serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest.to_string(), "size": tar.len()});
            store.put(&format!("blobs/{digest}"), tar.into()).await?;
        }
        store.put("manifests/tar", serde_json::to_vec(&plain)?.into()).await?;
        let tar = manifest(&store, "tar").await?;
        anyhow::ensure!(types(&tar).iter().all(|t| t.ends_with(".tar")), "tar: {tar}");
        // The registry checks that every manifest an index names is there.
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": oci::media::OCI_INDEX,
            "manifests": [entry(&store, "empty", "arm64").await?,
                          entry(&store, "oci", "amd64").await?]});
        store.put("manifests/index", serde_json::to_vec(&index)?.into()).await?;
        let list = serde_json::json!({"schemaVersion": 2, "mediaType": oci::media::DOCKER_LIST,
            "manifests": [entry(&store, "empty-v2s2", "arm64").await?,
                          entry(&store, "v2s2", "amd64").await?]});
        store.put("manifests/list", serde_json::to_vec(&list)?.into()).await?;
        anyhow::Ok(())
    })?;
    let mut sources: Vec<String> = ["oci", "v2s2", "tar", "index", "list"]
        .iter()
        .map(|t| format!("docker://{repo}:{t}"))
        .collect();
    sources.push(format!("docker://{zstd_repo}:zstd"));
    Ok(sources)
}

#[test]
fn a_registry_image_converts_exactly_like_its_oci_layout_in_every_form() {
    let work = tempfile::tempdir().expect("work");
    if require_real("umoci", layered_image(work.path())).is_none() {
        return;
    }
    let Some(reg) = require_real("docker-registry", Registry::start()) else { return };
    let Some(zstd_reg) = require_real("docker-registry", Registry::start()) else { return };
    let layout = work.path().join("layout");
    let repo = format!("{}/team/layered", reg.host_port());
    let zstd_repo = format!("{}/team/layered", zstd_reg.host_port());
    let Some(sources) = require_real("skopeo", push_every_form(&layout, &repo, &zstd_repo)) else {
        return;
    };
    // The independent reference: the same image converted from the layout on disk.
    let config = ConvertConfig { block_size: BLOCK, level: 3, ..Default::default() };
    let (want, want_blobs) =
        convert::build(&format!("oci:{}:v1", layout.display()), &config).expect("oci: convert");
    let want_digest = Digest::of(&want.encode().expect("encode")).to_string();
    let store_dir = tempfile::tempdir().expect("store");
    let store: DynStore = Arc::new(LocalStore::new(store_dir.path()));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for source in &sources {
        let tag = source.rsplit_once(':').map_or("", |(_, t)| t);
        let dest = format!("file://{}/layered:{tag}", store_dir.path().display());
        let started = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_bootseer-image"))
            .args(["convert", source, &dest, "--block-size", "64k", "--json"])
            .output()
            .expect("run bootseer-image");
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{tag}: {stderr}");
        assert!(stderr.is_empty(), "{tag}: stderr is not a terminal, yet: {stderr:?}");
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("stdout holds only the JSON result");
        assert_eq!(report["metadata_digest"], want_digest.as_str(), "{tag}");
        let got = rt
            .block_on(session::load_metadata(&store, &LayerRef::parse(&dest).expect("ref")))
            .expect("load metadata");
        assert_eq!(got, want, "{tag}: not the metadata the oci: layout gives");
        for (info, bytes) in want.blobs.iter().zip(&want_blobs) {
            let key = format!("blobs/{}", info.digest);
            let stored = rt.block_on(store.read_range(&key, 0..u64::MAX)).expect("stored blob");
            assert!(stored == bytes[..], "{tag}: {key} differs");
        }
        eprintln!("{tag}: converted in {took:.2?}");
    }
    // Without --json on a non-terminal: the one summary line, nothing on stderr.
    let dest = format!("file://{}/layered:plain", store_dir.path().display());
    let out = Command::new(env!("CARGO_BIN_EXE_bootseer-image"))
        .args(["convert", &format!("docker://{repo}:oci"), &dest, "--block-size", "64k"])
        .output()
        .expect("run bootseer-image");
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(stdout.contains(&want_digest), "{stdout:?}");
}

/// Sends `DELETE path` to the registry; returns the status line.
fn http_delete(host_port: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(host_port)?;
    write!(stream, "DELETE {path} HTTP/1.0\r\nHost: {host_port}\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply.lines().next().unwrap_or_default().to_string())
}

#[test]
fn a_tampered_or_deleted_registry_layer_fails_naming_the_layer() {
    let work = tempfile::tempdir().expect("work");
    if require_real("umoci", layered_image(work.path())).is_none() {
        return;
    }
    let Some(reg) = require_real("docker-registry", Registry::start()) else { return };
    let layout = work.path().join("layout");
    let repo = format!("{}/team/tamper", reg.host_port());
    if require_real("skopeo", skopeo_copy(&layout, "v1", &format!("{repo}:v1"), &[])).is_none() {
        return;
    }
    let source = format!("docker://{repo}:v1");
    let config = ConvertConfig { block_size: BLOCK, level: 3, ..Default::default() };
    let layers = layout_manifest(&layout, "v1")["layers"].as_array().expect("layers").clone();
    let digest = layers[0]["digest"].as_str().expect("digest").to_string();
    let named = format!("layer 1/{} ({digest})", layers.len());
    // The registry's own storage: same length, one bit flipped; it serves what is on disk.
    let hex = digest.strip_prefix("sha256:").expect("sha256");
    let data = reg
        .dir()
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let original = std::fs::read(&data).expect("registry blob file");
    let mut tampered = original.clone();
    tampered[original.len() / 2] ^= 1;
    std::fs::write(&data, &tampered).expect("tamper");
    // Only the digest check catches this: the tar ends before the gzip trailer and its CRC.
    let err = match convert::build(&source, &config) {
        Ok(_) => panic!("a tampered layer converted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&named) && err.contains("does not match its descriptor"), "{err}");
    std::fs::write(&data, &original).expect("restore");
    convert::build(&source, &config).expect("restored layer converts");

    let status =
        http_delete(&reg.host_port(), &format!("/v2/team/tamper/blobs/{digest}")).expect("DELETE");
    assert!(status.contains(" 202 "), "{status}");
    let store_dir = tempfile::tempdir().expect("store");
    let out = Command::new(env!("CARGO_BIN_EXE_bootseer-image"))
        .args(["convert", &source, &format!("file://{}/t:v1", store_dir.path().display())])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run bootseer-image");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "converted without the layer");
    assert!(stderr.contains(&named) && stderr.contains("not found"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
