//! [`OciStore`] against a real registry (Debian `docker-registry`, started per test by
//! [`Registry`]): blob round trips at block-ish boundaries, digest checks, manifests and tags,
//! typed errors, bounded failure against a stopped registry with recovery after restart, Basic
//! auth, and `skopeo` reading what we pushed (our pushes are real OCI images).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bootseer_common::digest::Digest;
use bootseer_common::store::oci::{OciStore, RegistryAuth};
use bootseer_common::store::{RetryConfig, RetryStore, Store, StoreError};
use bootseer_common::testing::registry::Registry;
use bootseer_common::testing::require_real;
use bytes::Bytes;

const MIB: u64 = 1024 * 1024;

fn store(reg: &Registry, repo: &str) -> OciStore {
    OciStore::open_with_auth(&reg.url(repo), &[], RegistryAuth::Anonymous).expect("open store")
}

/// Deterministic, non-repeating-looking bytes.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(seed);
    Bytes::from((0..len).map(|_| rng.u8(..)).collect::<Vec<u8>>())
}

fn blob_key(data: &[u8]) -> String {
    format!("blobs/{}", Digest::of(data))
}

#[tokio::test]
async fn blob_round_trip_at_boundaries() {
    let Some(reg) = require_real("docker-registry", Registry::start()) else {
        return;
    };
    let store = store(&reg, "bootseer/blobs");
    let len = 3 * MIB + 4567;
    let data = pattern(len as usize, 1);
    let key = blob_key(&data);
    store.put(&key, data.clone()).await.expect("put");
    // Already there: skipped, still fine.
    store.put(&key, data.clone()).await.expect("second put");
    assert_eq!(store.stat(&key).await.expect("stat").len, len);

    let spans = [
        (0, 0),
        (0, 1),
        (1, 2),
        (0, MIB),
        (MIB - 1, MIB + 1),
        (MIB, 2 * MIB),
        (4095, MIB + 17),
        (12_345, 2 * MIB + 54_321),
        (len - 1, len),
        (len - 10, len + 10),
        (len, len),
        (len, len + 1),
        (len + 5, len + 100),
        (0, len),
        (0, u64::MAX),
        (7, 3),
    ];
    for (start, end) in spans {
        let got = store.read_range(&key, start..end).await.expect("read_range");
        let s = start.min(len) as usize;
        let e = end.min(len).max(start.min(len)) as usize;
        assert_eq!(got.len(), e - s, "length of {start}..{end}");
        assert!(got[..] == data[s..e], "bytes of {start}..{end}");
    }

    let empty = Bytes::new();
    let empty_key = blob_key(&empty);
    store.put(&empty_key, empty.clone()).await.expect("put empty blob");
    assert_eq!(store.stat(&empty_key).await.expect("stat empty").len, 0);
    assert!(store.read_range(&empty_key, 0..10).await.expect("read empty").is_empty());

    // A fresh store (nothing cached) reads the same bytes.
    let fresh = self::store(&reg, "bootseer/blobs");
    let got = fresh.read_range(&key, 2 * MIB..2 * MIB + 100).await.expect("fresh read");
    assert!(got[..] == data[2 * MIB as usize..2 * MIB as usize + 100]);
}

#[tokio::test]
async fn digest_mismatch_and_missing_objects() {
    let Some(reg) = require_real("docker-registry", Registry::start()) else {
        return;
    };
    let store = store(&reg, "bootseer/errors");
    let data = pattern(1000, 2);
    let wrong_key = blob_key(b"something else");
    let err = store.put(&wrong_key, data).await.expect_err("mismatch accepted");
    assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
    let err = store.stat(&wrong_key).await.expect_err("refused blob stored");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    let err = store.read_range(&wrong_key, 0..10).await.expect_err("missing blob read");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    let err = store.stat("manifests/nope").await.expect_err("missing manifest");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    let err = store.stat("refs/latest").await.expect_err("unknown key form");
    assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
    let err = store.put("manifests/bad", Bytes::from_static(b"not json")).await.expect_err("bad");
    assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
    // Nobody pushed to this repository: no tags, not an error.
    assert!(store.list("manifests/").await.expect("list empty repo").is_empty());
    for prefix in ["", "b", "blobs/", "blobs/sha256:"] {
        let err = store.list(prefix).await.expect_err("listing blobs");
        assert!(matches!(err, StoreError::Unsupported { .. }), "{prefix:?}: {err}");
    }
}

/// A minimal but real OCI image: an empty tar layer, a config naming it, a manifest naming both.
fn image() -> (Bytes, Bytes, Bytes) {
    let layer = Bytes::from(vec![0u8; 1024]); // an empty tar archive: two zero blocks
    let config = Bytes::from(
        serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [Digest::of(&layer).to_string()] },
        })
        .to_string(),
    );
    let manifest = Bytes::from(
        serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Digest::of(&config).to_string(),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": Digest::of(&layer).to_string(),
                "size": layer.len(),
            }],
        }))
        .expect("manifest json"),
    );
    (layer, config, manifest)
}

#[tokio::test]
async fn manifests_tags_and_skopeo_interop() {
    let Some(reg) = require_real("docker-registry", Registry::start()) else {
        return;
    };
    let store = store(&reg, "bootseer/image");
    let (layer, config, manifest) = image();
    store.put(&blob_key(&layer), layer.clone()).await.expect("put layer");
    store.put(&blob_key(&config), config.clone()).await.expect("put config");
    for tag in ["v2", "v1", "latest"] {
        store.put(&format!("manifests/{tag}"), manifest.clone()).await.expect("put manifest");
    }
    let by_digest = format!("manifests/{}", Digest::of(&manifest));
    store.put(&by_digest, manifest.clone()).await.expect("put manifest by digest");
    let wrong = format!("manifests/{}", Digest::of(b"x"));
    let err = store.put(&wrong, manifest.clone()).await.expect_err("digest mismatch");
    assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");

    for key in ["manifests/v1", by_digest.as_str()] {
        let got = store.read_range(key, 0..u64::MAX).await.expect("read manifest");
        assert_eq!(got, manifest, "{key}: exact bytes");
        assert_eq!(store.stat(key).await.expect("stat manifest").len, manifest.len() as u64);
    }
    let part = store.read_range("manifests/v1", 3..10).await.expect("manifest range");
    assert_eq!(part, manifest.slice(3..10));

    let keys: Vec<String> =
        store.list("manifests/").await.expect("list").into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["manifests/latest", "manifests/v1", "manifests/v2"]);
    let keys: Vec<String> =
        store.list("manifests/v").await.expect("list v").into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["manifests/v1", "manifests/v2"]);
    assert!(store.list("zzz").await.expect("list nothing").is_empty());

    // A manifest naming a blob the registry lacks is refused, not stored.
    let missing = String::from_utf8(manifest.to_vec())
        .expect("utf8")
        .replace(&Digest::of(&layer).to_string(), &Digest::of(b"absent").to_string());
    let err = store.put("manifests/broken", Bytes::from(missing)).await.expect_err("dangling");
    assert!(!err.is_retryable(), "{err}");

    let ran = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}/bootseer/image:v1", reg.host_port()))
        .output()
        .map_err(|e| anyhow::anyhow!("skopeo: {e}"));
    let Some(output) = require_real("skopeo (package skopeo)", ran) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "skopeo inspect failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let inspected: serde_json::Value = serde_json::from_str(&stdout).expect("skopeo json");
    assert_eq!(inspected["Digest"], Digest::of(&manifest).to_string());
    assert_eq!(inspected["Layers"][0], Digest::of(&layer).to_string());
    assert_eq!(inspected["Architecture"], "amd64");
}

#[tokio::test]
async fn stopped_registry_fails_in_bounded_time_then_recovers() {
    let Some(mut reg) = require_real("docker-registry", Registry::start()) else {
        return;
    };
    let config = RetryConfig {
        op_timeout: Duration::from_secs(1),
        max_attempts: 20,
        base_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        total_deadline: Duration::from_secs(3),
    };
    let store = RetryStore::new(Arc::new(store(&reg, "bootseer/faults")), config);
    let data = pattern(100_000, 3);
    let key = blob_key(&data);
    store.put(&key, data.clone()).await.expect("put");

    reg.stop();
    let other = blob_key(b"never pushed");
    let started = Instant::now();
    let err = store.stat(&other).await.expect_err("stat against a stopped registry");
    let took = started.elapsed();
    assert!(err.is_retryable(), "not retryable: {err}");
    // total_deadline 3 s + one op_timeout + slack.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    eprintln!("stopped registry: failed after {took:?} with {err}");

    reg.start_again().expect("restart registry");
    let got = store.read_range(&key, 10..20).await.expect("read after restart");
    assert_eq!(got, data.slice(10..20));
}

#[tokio::test]
async fn basic_auth_right_and_wrong() {
    let Some(reg) =
        require_real("docker-registry", Registry::start_with_htpasswd("alice", "s3cret"))
    else {
        return;
    };
    let url = reg.url("bootseer/private");
    let good =
        OciStore::open_with_auth(&url, &[], RegistryAuth::Basic("alice".into(), "s3cret".into()))
            .expect("open");
    let data = pattern(300_000, 4);
    let key = blob_key(&data);
    good.put(&key, data.clone()).await.expect("put with credentials");
    assert_eq!(good.read_range(&key, 5..9).await.expect("read"), data.slice(5..9));
    assert!(good.list("manifests/").await.expect("list with credentials").is_empty());

    let wrong =
        OciStore::open_with_auth(&url, &[], RegistryAuth::Basic("alice".into(), "nope".into()))
            .expect("open");
    let anonymous = OciStore::open_with_auth(&url, &[], RegistryAuth::Anonymous).expect("open");
    for store in [&wrong, &anonymous] {
        let err = store.stat(&key).await.expect_err("stat without the right credentials");
        assert!(matches!(err, StoreError::Unauthorized { .. }), "{err}");
        let err = store.put(&blob_key(b"x"), Bytes::from_static(b"x")).await.expect_err("put");
        assert!(matches!(err, StoreError::Unauthorized { .. }), "{err}");
        let err = store.list("manifests/").await.expect_err("list");
        assert!(matches!(err, StoreError::Unauthorized { .. }), "{err}");
    }
}
