//! `Store::put_file`: a blob uploaded from a file in pieces, for the local store, the retry
//! wrapper, the in-memory double and a real registry (Debian `docker-registry`): the stored
//! bytes are the file's, the file's cursor is left alone, a file shorter than the length given
//! is an error that stores nothing, and a registry refuses a blob whose key names another digest.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;

use bootseer_common::digest::Digest;
use bootseer_common::layer::blob::temp_file;
use bootseer_common::store::local::LocalStore;
use bootseer_common::store::oci::{OciStore, RegistryAuth};
use bootseer_common::store::{DynStore, PUT_PIECE, RetryConfig, RetryStore, Store, StoreError};
use bootseer_common::testing::mem::{MemStore, pattern};
use bootseer_common::testing::registry::Registry;
use bootseer_common::testing::require_real;

/// More than two pieces, and not a multiple of one.
fn data() -> Vec<u8> {
    pattern(7, 2 * PUT_PIECE as usize + 12_345)
}

/// `data` in an unlinked temp file, its cursor moved to somewhere in the middle.
fn file_of(data: &[u8]) -> std::fs::File {
    let mut file = temp_file(&std::env::temp_dir()).expect("temp file");
    file.write_all(data).expect("write");
    file.seek(SeekFrom::Start(17)).expect("seek");
    file
}

async fn round_trip(store: &dyn Store, data: &[u8]) {
    let key = format!("blobs/{}", Digest::of(data));
    let mut file = file_of(data);
    store.put_file(&key, &file, data.len() as u64).await.expect("put_file");
    let stored = store.read_range(&key, 0..u64::MAX).await.expect("read back");
    assert!(stored == data, "{}: stored bytes differ", store.url());
    assert_eq!(file.stream_position().expect("cursor"), 17, "put_file moved the cursor");
    // Again (a retry, or a blob already there): still fine.
    store.put_file(&key, &file, data.len() as u64).await.expect("second put_file");
    assert_eq!(store.stat(&key).await.expect("stat").len, data.len() as u64);
}

#[tokio::test]
async fn local_store_round_trip_and_short_file() {
    let dir = tempfile::tempdir().expect("store dir");
    let store = LocalStore::new(dir.path());
    let data = data();
    round_trip(&store, &data).await;
    round_trip(&store, b"").await;

    // One byte more than the file holds: an error, and no object, no temp file left.
    let short = b"only these bytes";
    let key = format!("blobs/{}", Digest::of(b"short"));
    let err = store
        .put_file(&key, &file_of(short), short.len() as u64 + 1)
        .await
        .expect_err("a short file must fail");
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert!(matches!(store.stat(&key).await, Err(StoreError::NotFound { .. })));
    let left: Vec<_> = std::fs::read_dir(dir.path().join("blobs"))
        .expect("blobs dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

#[tokio::test]
async fn retry_wrapper_and_memory_double() {
    let dir = tempfile::tempdir().expect("store dir");
    let data = data();
    let local: DynStore = Arc::new(LocalStore::new(dir.path()));
    let retry = RetryStore::new(local, RetryConfig::default());
    round_trip(&retry, &data).await;
    let mem = MemStore::new();
    round_trip(&mem, &data).await;
}

#[tokio::test]
async fn registry_chunked_upload() {
    let Some(reg) = require_real("docker-registry", Registry::start()) else {
        return;
    };
    let store =
        OciStore::open_with_auth(&reg.url("bootseer/put-file"), &[], RegistryAuth::Anonymous)
            .expect("open store");
    let data = data();
    round_trip(&store, &data).await;
    round_trip(&store, b"a blob smaller than one piece").await;

    // A key that names other bytes: the registry checks the digest when the upload closes.
    let other = pattern(8, 1000);
    let key = format!("blobs/{}", Digest::of(b"not these bytes"));
    let err = store
        .put_file(&key, &file_of(&other), other.len() as u64)
        .await
        .expect_err("a wrong digest must fail");
    assert!(!err.is_retryable(), "a wrong digest is not worth retrying: {err}");
    assert!(matches!(store.stat(&key).await, Err(StoreError::NotFound { .. })));
}
