//! Shared setup of the fs-ckpt tests: a MiniDFS, a runtime that owns the HDFS client, a
//! `CkptFs` mounted through `CkptFuse` with the guard, and byte helpers.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bootseer_ckpt::{CkptConfig, CkptFs, CkptFuse};
use bootseer_common::mount::MountConfig;
use bootseer_common::store::hdfs::{HdfsOptions, HdfsStore};
use bootseer_common::testing::fuse::MountGuard;
use bootseer_common::testing::minidfs::{MiniDfs, MiniDfsConfig};
use bootseer_common::testing::require_real;
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// MiniDFS block size (the default config): 1 MiB.
pub const BLOCK: u64 = 1 << 20;

/// Deterministic bytes, different per seed and position.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    bootseer_common::testing::mem::pattern(seed, len)
}

pub fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// Small stripes so 1 MiB blocks hold several; short deadlines so fault tests end quickly.
pub fn test_config() -> CkptConfig {
    CkptConfig {
        stripe_size: 256 << 10,
        chunk_size: 64 << 10,
        concurrency: 8,
        readers: 3,
        memory_bytes: 64 << 20,
        prefetch_threshold: 4 << 20,
        initial_window: 2,
        sequential_after: 1 << 20,
        stripe_deadline: Duration::from_secs(8),
        attempt_timeout: Duration::from_secs(3),
        hedge_after: Duration::from_secs(1),
        metadata_ttl: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(5),
        prefetch: Vec::new(),
        key_order: true,
    }
}

pub struct Env {
    // Field order is drop order: unmount, then the runtime, then the cluster.
    pub mount: MountGuard,
    pub fs: Arc<CkptFs>,
    pub store: HdfsStore,
    pub runtime: tokio::runtime::Runtime,
    pub dfs: MiniDfs,
    pub url: String,
}

pub fn start_dfs() -> Option<MiniDfs> {
    require_real("MiniDFS", MiniDfs::start(MiniDfsConfig::default()))
}

/// Puts `files` under `/ckpt` and mounts it with `config`; `None` when FUSE or MiniDFS are
/// unavailable (and not required).
pub fn setup(dfs: MiniDfs, files: &[(&str, &[u8])], config: CkptConfig) -> Option<Env> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("{}/ckpt", dfs.uri());
    let options =
        HdfsOptions { config_dir: Some(dfs.conf_dir().to_path_buf()), ..Default::default() };
    let store = runtime.block_on(HdfsStore::open_with(&url, &options)).expect("open store");
    for (key, data) in files {
        put_retrying(&runtime, &store, key, Bytes::copy_from_slice(data), None);
    }
    let fs = CkptFs::new(store.clone(), config, runtime.handle().clone()).expect("fs");
    let mount_config = MountConfig { threads: 4, ..MountConfig::default() };
    let adapter = CkptFuse::new(fs.clone(), runtime.handle().clone(), mount_config.clone());
    let mount = require_real("FUSE", MountGuard::mount(adapter, &mount_config))?;
    Some(Env { mount, fs, store, runtime, dfs, url })
}

/// Writes `key` (with HDFS block size `block_size`, `None`: the default), trying again on a
/// transient error. The tests write straight to `HdfsStore`, not through the daemons' retrying
/// store, and a MiniDFS DataNode loaded by the case before sometimes fails a write pipeline's
/// recovery ("Failed to replay packets during recovery"); a put is atomic (temporary name, then
/// rename), so another attempt is safe. Panics after three failures.
pub fn put_retrying(
    runtime: &tokio::runtime::Runtime,
    store: &HdfsStore,
    key: &str,
    data: Bytes,
    block_size: Option<u64>,
) {
    use bootseer_common::store::StoreError;
    for attempt in 1..=3 {
        match runtime.block_on(store.put_with_block_size(key, data.clone(), block_size)) {
            Ok(()) => return,
            Err(e @ StoreError::Transient { .. }) if attempt < 3 => {
                eprintln!("put {key}: attempt {attempt} failed ({e}), trying again");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => panic!("put {key}: {e}"),
        }
    }
}

impl Env {
    /// [`put_retrying`] on this cluster, default block size.
    pub fn put(&self, key: &str, data: impl Into<Bytes>) {
        put_retrying(&self.runtime, &self.store, key, data.into(), None);
    }
}

/// No MiniDFS JVM and no FUSE mount of ours is left behind.
pub fn assert_nothing_leaked(mountpoint: &std::path::Path) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mp = mountpoint.to_string_lossy();
    assert!(!mounts.lines().any(|l| l.contains(&*mp)), "mount {mp} leaked:\n{mounts}");
}

/// A second mount of the same HDFS directory with another `config`, on `env`'s runtime. Drop the
/// guard before `env`.
pub fn mount_again(env: &Env, config: CkptConfig) -> (Arc<CkptFs>, MountGuard) {
    let fs = CkptFs::new(env.store.clone(), config, env.runtime.handle().clone()).expect("fs");
    let mount_config = MountConfig { threads: 4, ..MountConfig::default() };
    let adapter = CkptFuse::new(fs.clone(), env.runtime.handle().clone(), mount_config.clone());
    let mount = MountGuard::mount(adapter, &mount_config).expect("a second mount");
    (fs, mount)
}
