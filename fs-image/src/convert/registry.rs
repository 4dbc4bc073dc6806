//! `docker://HOST[:PORT]/REPO:TAG` (or `…/REPO@sha256:HEX`) convert sources: a container image in
//! an OCI registry, read through the common registry store, so its auth, plain http for loopback
//! hosts, timeouts and retries apply.
//!
//! ```text
//!  docker://HOST/REPO:TAG ─► store::open("docker://HOST/REPO") ─► manifests/TAG (or sha256:…)
//!    ─► oci::build_from_manifest ─(index)─► RegistryBlobs::manifest ─► manifests/sha256:…
//!                                ─(layer i)─► RegistryBlobs::blob ─► blobs/sha256:… in
//!                                             LAYER_CHUNK ranges ─► checked ─► applied
//! ```
//!
//! Sync/async bridge: a conversion is CPU work on the calling thread (decompress, walk tars,
//! compress blocks). The registry reads, one at a time, `block_on` a current-thread runtime this
//! module owns for the conversion. Called from inside a tokio runtime, it refuses with an error
//! instead of blocking a runtime thread.
//!
//! A layer is held in memory whole, as with a layout, because its digest must be checked before
//! any of it is used.

use std::io::Write;
use std::path::Path;

use bootseer_common::digest::Digest;
use bootseer_common::layer::blob::{self, BlobFile};
use bootseer_common::store::{self, DynStore, OpenOptions};

use crate::convert::oci::{self, ImageBlobs};
use bootseer_common::layer::build::ConvertConfig;
use bootseer_common::layer::error::{LayerError, Result};
use bootseer_common::layer::format::Metadata;
use bootseer_common::layer::progress::Progress;
use bootseer_common::layer::reference::{LayerRef, valid_name};

/// Bytes per layer read: one attempt finishes inside the store's 30 s attempt timeout down to
/// about 300 KB/s, and a failed attempt is retried without fetching the layer again from its
/// start.
const LAYER_CHUNK: u64 = 8 << 20;

/// Largest manifest read: real ones are a few KiB; 4 MiB is what the distribution spec asks
/// registries to accept at least.
const MAX_MANIFEST: u64 = 4 << 20;

/// A parsed `docker://` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySource {
    /// The repository's store URL, `docker://HOST[:PORT]/REPO`.
    pub store_url: String,
    /// `manifests/TAG` or `manifests/sha256:HEX`.
    pub manifest_key: String,
    /// The digest asked for, when the source names one.
    pub digest: Option<Digest>,
}

/// Parses `docker://HOST[:PORT]/REPO:TAG` or `docker://HOST[:PORT]/REPO@sha256:HEX`.
pub fn parse_source(source: &str) -> Result<RegistrySource> {
    let bad = |reason: &str| LayerError::Reference {
        reference: source.to_string(),
        reason: reason.to_string(),
    };
    let rest = source.strip_prefix("docker://").ok_or_else(|| bad("expected docker://"))?;
    if let Some((path, digest)) = rest.split_once('@') {
        let digest = digest
            .parse::<Digest>()
            .map_err(|_| bad("expected @sha256:<64 lower-case hex digits> after the repository"))?;
        let (host, repo) = path.split_once('/').ok_or_else(|| bad("missing /REPO"))?;
        if host.is_empty() || !valid_name(repo) {
            return Err(bad("expected docker://HOST[:PORT]/REPO@sha256:HEX, repo in lower case"));
        }
        return Ok(RegistrySource {
            store_url: format!("docker://{host}/{repo}"),
            manifest_key: format!("manifests/{digest}"),
            digest: Some(digest),
        });
    }
    let image = LayerRef::parse(source)?;
    Ok(RegistrySource {
        store_url: image.store_url,
        manifest_key: format!("manifests/{}", image.tag),
        digest: None,
    })
}

/// Builds the image `source` names (a `docker://` reference); one data blob per layer.
pub fn build_from_registry(
    source: &str,
    config: &ConvertConfig,
    progress: &Progress,
) -> Result<(Metadata, Vec<BlobFile>)> {
    let parsed = parse_source(source)?;
    let rt = runtime(source)?;
    let store = rt
        .block_on(store::open(&parsed.store_url, &OpenOptions::default()))
        .map_err(|e| LayerError::store(&parsed.store_url, e))?;
    build_from_store(&rt, store, &parsed, source, config, progress)
}

/// A current-thread runtime for the registry reads; refused inside another runtime, where
/// blocking on it would block a runtime thread (and panic).
pub(crate) fn runtime(source: &str) -> Result<tokio::runtime::Runtime> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(LayerError::convert(
            source,
            "a registry source cannot be converted on a tokio runtime thread (use spawn_blocking)",
        ));
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LayerError::io("tokio runtime", e))
}

/// [`build_from_registry`] over an open store; `what` names the source in errors.
pub(crate) fn build_from_store(
    rt: &tokio::runtime::Runtime,
    store: DynStore,
    source: &RegistrySource,
    what: &str,
    config: &ConvertConfig,
    progress: &Progress,
) -> Result<(Metadata, Vec<BlobFile>)> {
    let mut blobs = RegistryBlobs { rt, store };
    let top = blobs.read_manifest(&source.manifest_key, what)?;
    if let Some(digest) = &source.digest {
        let actual = Digest::of(&top);
        if actual != *digest {
            return Err(LayerError::convert(
                what,
                format!("the registry sent a manifest hashing to {actual}"),
            ));
        }
    }
    oci::build_from_manifest(&mut blobs, top, what, config, progress)
}

/// The manifests and blobs of one repository, read through a store.
struct RegistryBlobs<'a> {
    rt: &'a tokio::runtime::Runtime,
    store: DynStore,
}

impl RegistryBlobs<'_> {
    fn read_manifest(&self, key: &str, what: &str) -> Result<Vec<u8>> {
        let data = self
            .rt
            .block_on(self.store.read_range(key, 0..MAX_MANIFEST + 1))
            .map_err(|e| LayerError::store(what, e))?;
        if data.len() as u64 > MAX_MANIFEST {
            return Err(LayerError::convert(what, format!("manifest over {MAX_MANIFEST} bytes")));
        }
        Ok(data.to_vec())
    }
}

impl ImageBlobs for RegistryBlobs<'_> {
    fn manifest(&mut self, digest: &Digest, what: &str) -> Result<Vec<u8>> {
        self.read_manifest(&format!("manifests/{digest}"), what)
    }

    /// Copied in [`LAYER_CHUNK`] ranges into an unlinked temp file, hashed on the way: one
    /// chunk in memory at a time, whatever the layer's size.
    fn blob(
        &mut self,
        digest: &Digest,
        size: u64,
        what: &str,
        progress: &Progress,
        tmp_dir: &Path,
    ) -> Result<BlobFile> {
        let key = format!("blobs/{digest}");
        let mut sink = blob::blob_sink(tmp_dir).map_err(|e| LayerError::io(tmp_dir, e))?;
        while sink.len() < size {
            let start = sink.len();
            let end = size.min(start + LAYER_CHUNK);
            let chunk = self
                .rt
                .block_on(self.store.read_range(&key, start..end))
                .map_err(|e| LayerError::store(what, e))?;
            progress.layer_bytes(chunk.len() as u64);
            sink.write_all(&chunk).map_err(|e| LayerError::io(tmp_dir, e))?;
            // Short: the blob ends before its descriptor says; the caller's check names it.
            if (chunk.len() as u64) < end - start {
                break;
            }
        }
        blob::finish_sink(sink).map_err(|e| LayerError::io(tmp_dir, e))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use bootseer_common::testing::mem::MemStore;
    use serde_json::json;

    use super::*;
    use crate::convert::oci::media;
    use bootseer_common::layer::format::Kind;

    const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    /// A tar of regular files.
    fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(data, 3).expect("zstd")
    }

    /// An in-memory repository, built the way a registry holds one.
    struct Repo {
        store: Arc<MemStore>,
    }

    impl Repo {
        fn new() -> Self {
            Self { store: Arc::new(MemStore::new()) }
        }

        /// Stores a blob; returns its descriptor.
        fn blob(&self, media_type: &str, data: &[u8]) -> serde_json::Value {
            let digest = Digest::of(data);
            self.store.insert(&format!("blobs/{digest}"), data.to_vec());
            json!({"mediaType": media_type, "digest": digest.to_string(), "size": data.len()})
        }

        /// Stores a manifest under its digest and `tag`; returns its descriptor.
        fn manifest(&self, tag: &str, value: &serde_json::Value) -> serde_json::Value {
            let data = serde_json::to_vec(value).expect("json");
            let digest = Digest::of(&data);
            self.store.insert(&format!("manifests/{digest}"), data.clone());
            self.store.insert(&format!("manifests/{tag}"), data.clone());
            json!({"mediaType": value["mediaType"], "digest": digest.to_string(),
                   "size": data.len()})
        }

        fn image(
            &self,
            tag: &str,
            manifest_type: &str,
            layers: Vec<serde_json::Value>,
        ) -> serde_json::Value {
            let config_type = if manifest_type == media::DOCKER_MANIFEST {
                media::DOCKER_CONFIG
            } else {
                media::OCI_CONFIG
            };
            let config = self.blob(config_type, b"{}");
            self.manifest(
                tag,
                &json!({"schemaVersion": 2, "mediaType": manifest_type, "config": config,
                        "layers": layers}),
            )
        }

        fn convert(&self, source: &str) -> Result<Metadata> {
            self.convert_for(source, "linux/amd64")
        }

        fn convert_for(&self, source: &str, platform: &str) -> Result<Metadata> {
            let parsed = parse_source(source)?;
            let rt = runtime(source)?;
            let store: DynStore = self.store.clone();
            let config = ConvertConfig {
                block_size: 4096,
                level: 3,
                platform: platform.into(),
                ..Default::default()
            };
            build_from_store(&rt, store, &parsed, source, &config, &Progress::default())
                .map(|(meta, _)| meta)
        }

        fn error(&self, tag: &str) -> String {
            match self.convert(&format!("docker://reg.test/repo:{tag}")) {
                Ok(_) => panic!("{tag}: converted"),
                Err(e) => e.to_string(),
            }
        }
    }

    fn root_names(meta: &Metadata) -> Vec<String> {
        match &meta.inodes[0].kind {
            Kind::Dir { entries } => entries.iter().map(|e| e.name.clone()).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn sources_parse_by_tag_and_by_digest() {
        let s = parse_source("docker://127.0.0.1:5000/team/py:v1").expect("tag");
        assert_eq!(s.store_url, "docker://127.0.0.1:5000/team/py");
        assert_eq!(s.manifest_key, "manifests/v1");
        let hex = "ab".repeat(32);
        let s = parse_source(&format!("docker://h/r@sha256:{hex}")).expect("digest");
        assert_eq!(s.manifest_key, format!("manifests/sha256:{hex}"));
        assert_eq!(s.store_url, "docker://h/r");
        for bad in [
            "docker://h/r",
            "docker://h/R:v1",
            "docker://h/r@sha256:00",
            "docker:///r:v1",
            &format!("docker://h/../r@sha256:{hex}"),
            "oci:/x",
        ] {
            assert!(parse_source(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn on(descriptor: &serde_json::Value, platform: serde_json::Value) -> serde_json::Value {
        let mut d = descriptor.clone();
        d["platform"] = platform;
        d
    }

    #[test]
    fn every_layer_media_type_and_the_amd64_entry_of_an_index_convert() {
        let repo = Repo::new();
        let plain = repo.blob("application/vnd.docker.image.rootfs.diff.tar", &tar(&[("a", b"1")]));
        let gz = repo
            .blob("application/vnd.docker.image.rootfs.diff.tar.gzip", &gzip(&tar(&[("b", b"2")])));
        let zst =
            repo.blob("application/vnd.oci.image.layer.v1.tar+zstd", &zstd(&tar(&[("c", b"3")])));
        let amd64 = repo.image("amd64", media::DOCKER_MANIFEST, vec![plain, gz]);
        let arm64 = repo.image("arm64", media::OCI_MANIFEST, vec![zst.clone()]);
        let v3 = repo.image("v3", media::OCI_MANIFEST, vec![zst]);
        let amd64_v3 = json!({"os": "linux", "architecture": "amd64", "variant": "v3"});
        // The baseline amd64 image wins over an amd64/v3 one listed before it.
        let list = json!({"schemaVersion": 2, "mediaType": media::DOCKER_LIST, "manifests": [
            on(&arm64, json!({"os": "linux", "architecture": "arm64"})),
            on(&v3, amd64_v3.clone()),
            on(&amd64, json!({"os": "linux", "architecture": "amd64"})),
        ]});
        repo.manifest("multi", &list);
        let meta = repo.convert("docker://reg.test/repo:multi").expect("index");
        assert_eq!(root_names(&meta), ["a", "b"]);
        assert_eq!(meta.blobs.len(), 2);
        // An OCI index naming an index, whose only amd64 image is a v3 one.
        let inner = repo.manifest(
            "inner",
            &json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX,
                    "manifests": [on(&v3, amd64_v3)]}),
        );
        repo.manifest(
            "outer",
            &json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX,
                    "manifests": [on(&inner, json!({"os": "linux", "architecture": "amd64"}))]}),
        );
        let meta = repo.convert("docker://reg.test/repo:outer").expect("nested index");
        assert_eq!(root_names(&meta), ["c"]);
        let digest = amd64["digest"].as_str().expect("digest");
        let meta = repo.convert(&format!("docker://reg.test/repo@{digest}")).expect("by digest");
        assert_eq!(root_names(&meta), ["a", "b"]);
    }

    /// Issue 10 item 10: `--platform` picks the index entry; the default is this host's.
    #[test]
    fn the_platform_is_chosen_not_fixed() {
        let repo = Repo::new();
        let a = repo.blob("application/vnd.oci.image.layer.v1.tar", &tar(&[("amd", b"1")]));
        let b = repo.blob("application/vnd.oci.image.layer.v1.tar", &tar(&[("arm", b"2")]));
        let c = repo.blob("application/vnd.oci.image.layer.v1.tar", &tar(&[("v7", b"3")]));
        let amd64 = repo.image("amd64", media::OCI_MANIFEST, vec![a]);
        let arm64 = repo.image("arm64", media::OCI_MANIFEST, vec![b]);
        let armv7 = repo.image("armv7", media::OCI_MANIFEST, vec![c]);
        repo.manifest(
            "multi",
            &json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [
                on(&armv7, json!({"os": "linux", "architecture": "arm", "variant": "v7"})),
                on(&arm64, json!({"os": "linux", "architecture": "arm64", "variant": "v8"})),
                on(&amd64, json!({"os": "linux", "architecture": "amd64"})),
            ]}),
        );
        let source = "docker://reg.test/repo:multi";
        for (platform, want) in [
            ("linux/amd64", "amd"),
            ("linux/amd64/v1", "amd"),
            ("linux/arm64", "arm"),
            ("linux/arm64/v8", "arm"),
            ("linux/arm/v7", "v7"),
        ] {
            let meta = repo.convert_for(source, platform).expect(platform);
            assert_eq!(root_names(&meta), [want], "{platform}");
        }
        let err = repo.convert_for(source, "linux/s390x").expect_err("absent").to_string();
        assert!(err.contains("no linux/s390x image") && err.contains("linux/arm/v7"), "{err}");
        let err = repo.convert_for(source, "amd64").expect_err("bad form").to_string();
        assert!(err.contains("OS/ARCH"), "{err}");
        let host = bootseer_common::layer::build::host_platform();
        assert_eq!(ConvertConfig::default().platform, host);
        if host == "linux/amd64" {
            let meta = build_from_store(
                &runtime(source).expect("runtime"),
                repo.store.clone(),
                &parse_source(source).expect("source"),
                source,
                &ConvertConfig { block_size: 4096, ..Default::default() },
                &Progress::default(),
            )
            .expect("default platform");
            assert_eq!(root_names(&meta.0), ["amd"]);
        }
    }

    #[test]
    fn bad_manifests_and_layers_give_errors_that_name_them() {
        let repo = Repo::new();
        let good_tar = gzip(&tar(&[("f", b"data")]));
        let good = repo.blob(GZIP_LAYER, &good_tar);
        let digest = good["digest"].as_str().expect("digest").to_string();

        repo.store.insert("manifests/garbage", b"{not json".to_vec());
        let err = repo.error("garbage");
        assert!(err.contains("bad JSON"), "{err}");

        repo.store.insert("manifests/v1-schema", br#"{"schemaVersion":1,"fsLayers":[]}"#.to_vec());
        assert!(repo.error("v1-schema").contains("schema 1"));

        repo.manifest("weird", &json!({"schemaVersion": 2, "mediaType": "application/x-weird"}));
        assert!(repo.error("weird").contains("unsupported manifest media type"));

        let foreign = repo.blob("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", b"x");
        repo.image("foreign", media::DOCKER_MANIFEST, vec![good.clone(), foreign]);
        let err = repo.error("foreign");
        assert!(err.contains("layer 2/2") && err.contains("unsupported layer media type"), "{err}");

        let mut missing = good.clone();
        let absent = Digest::of(b"never stored");
        missing["digest"] = json!(absent.to_string());
        repo.image("missing", media::OCI_MANIFEST, vec![good.clone(), missing]);
        let err = repo.error("missing");
        assert!(
            err.contains(&format!("layer 2/2 ({absent})")) && err.contains("not found"),
            "{err}"
        );

        // Same length, other bytes, under the good layer's name.
        let mut tampered = good_tar.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0xff;
        let other = Repo::new();
        other.store.insert(&format!("blobs/{digest}"), tampered);
        other.image("v1", media::OCI_MANIFEST, vec![good.clone()]);
        let err = other.error("v1");
        assert!(
            err.contains(&format!("layer 1/1 ({digest})")) && err.contains("does not match"),
            "{err}"
        );

        let mut short = good.clone();
        short["size"] = json!(good_tar.len() + 10);
        repo.image("short", media::OCI_MANIFEST, vec![short]);
        assert!(repo.error("short").contains("does not match"));

        let mut no_size = good.clone();
        no_size.as_object_mut().expect("object").remove("size");
        repo.image("unsized", media::OCI_MANIFEST, vec![no_size]);
        assert!(repo.error("unsized").contains("no size"));

        let mut sha512 = good.clone();
        sha512["digest"] = json!(format!("sha512:{}", "a".repeat(128)));
        repo.image("sha512", media::OCI_MANIFEST, vec![sha512]);
        assert!(repo.error("sha512").contains("not a digest"));

        let mut arm = repo.image("arm-only", media::OCI_MANIFEST, vec![good.clone()]);
        arm["platform"] = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
        repo.manifest(
            "no-amd64",
            &json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX,
                                          "manifests": [arm]}),
        );
        assert!(
            repo.error("no-amd64")
                .contains("no linux/amd64 image in the index (it has: linux/arm64/v8)")
        );

        let bootseer = json!({"schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "artifactType": bootseer_common::layer::format::media::ARTIFACT,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       "digest": Digest::of(b"{}").to_string(), "size": 2},
            "layers": []});
        repo.manifest("bootseer", &bootseer);
        assert!(repo.error("bootseer").contains("already a bootseer image"));

        // A layer whose tar is not one.
        let junk = repo.blob(GZIP_LAYER, &gzip(b"not a tar at all, just text that is long enough"));
        repo.image("junk", media::OCI_MANIFEST, vec![junk]);
        let err = repo.error("junk");
        assert!(err.contains("layer 1/1"), "{err}");

        let err = repo.convert(&format!("docker://reg.test/repo@{absent}")).expect_err("absent");
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[test]
    fn a_registry_source_on_a_runtime_thread_is_an_error_not_a_panic() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let err = rt.block_on(async {
            build_from_registry(
                "docker://127.0.0.1:1/repo:v1",
                &ConvertConfig::default(),
                &Progress::default(),
            )
        });
        assert!(err.expect_err("refused").to_string().contains("spawn_blocking"));
    }
}
