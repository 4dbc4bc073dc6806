//! Where snapshots live in a store, and how they get there.
//!
//! ```text
//!  --store file:///srv/deps, --name py ─► snapshot of key K = layer `file:///srv/deps/py:K`
//!     file/hdfs: index images/py/K, blobs blobs/sha256:…, lock locks/py/K
//!     docker://HOST/REPO: the layer docker://HOST/REPO/py:K (tag K), no lock (each node builds)
//!  publish: capture dir ─► layer::build (overlay upper mode) ─► blobs (temp files) ─► index with
//!           the input manifest in its annotations (one put: the snapshot and its manifest appear at once)
//!  lookup:  index ─► Hit(manifest) | Miss | Corrupt(reason) | error (store down)
//!  lock:    create_new(locks/NAME/KEY) ─► the one builder; the others poll the index until it
//!           appears or their deadline passes, then build themselves
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bootseer_common::layer::LayerError;
use bootseer_common::layer::build::{self, ConvertConfig};
use bootseer_common::layer::progress::Progress;
use bootseer_common::layer::reference::{LayerRef, valid_name};
use bootseer_common::layer::session;
use bootseer_common::store::{DynStore, StoreError};
use bytes::Bytes;
use serde::Serialize;

use crate::key::Manifest;

/// Annotation holding a snapshot's input manifest (JSON).
pub const MANIFEST_ANNOTATION: &str = "dev.bootseer.deps.manifest";

/// A snapshot set: a store and a name.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The store URL as given (`file:///srv/deps`, `docker://HOST/REPO`, `hdfs://nn/dir`).
    pub store_url: String,
    /// The set's name (`[a-z0-9][a-z0-9._-]*`).
    pub name: String,
    /// The opened store (the one under the name for a registry).
    pub store: DynStore,
    /// Whether the store is a registry.
    pub registry: bool,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A complete snapshot with its manifest.
    Hit(Box<Manifest>),
    /// Nothing under that key.
    Miss,
    /// Something is there but cannot be used (truncated, corrupt, foreign): why.
    Corrupt(String),
}

/// One stored snapshot, as `ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// The key.
    pub key: String,
    /// The layer reference.
    pub reference: String,
    /// Its manifest, when it could be read.
    pub manifest: Option<Manifest>,
    /// Why not, otherwise.
    pub error: Option<String>,
}

impl Catalog {
    /// Opens the set `name` in the store at `store_url`.
    pub async fn open(
        store_url: &str,
        name: &str,
        options: &bootseer_common::store::OpenOptions,
    ) -> anyhow::Result<Self> {
        if !valid_name(name) || name.contains('/') {
            anyhow::bail!("--name {name:?}: must match [a-z0-9][a-z0-9._-]*");
        }
        let store_url = store_url.trim_end_matches('/').to_string();
        // The layer reference decides which store holds the layer: for a registry it is the
        // repository under the name.
        let probe = LayerRef::parse(&format!("{store_url}/{name}:probe"))
            .with_context(|| format!("--store {store_url}"))?;
        let store = bootseer_common::store::open(&probe.store_url, options)
            .await
            .with_context(|| format!("opening the store {}", probe.store_url))?;
        Ok(Self { store_url, name: name.to_string(), store, registry: probe.registry })
    }

    /// The layer reference of `key`.
    pub fn reference(&self, key: &str) -> String {
        format!("{}/{}:{key}", self.store_url, self.name)
    }

    fn layer(&self, key: &str) -> anyhow::Result<LayerRef> {
        Ok(LayerRef::parse(&self.reference(key))?)
    }

    fn lock_key(&self, key: &str) -> String {
        format!("locks/{}/{key}", self.name)
    }

    /// Looks `key` up. A store that cannot answer is an error; a snapshot whose index or
    /// manifest cannot be used is [`Lookup::Corrupt`] (the caller rebuilds).
    pub async fn lookup(&self, key: &str) -> anyhow::Result<Lookup> {
        let layer = self.layer(key)?;
        let index = match session::load_index(&self.store, &layer).await {
            Ok(i) => i,
            Err(LayerError::Store { source: StoreError::NotFound { .. }, .. }) => {
                return Ok(Lookup::Miss);
            }
            Err(e @ LayerError::Store { .. }) => {
                return Err(anyhow::Error::new(e).context(format!("looking up {}", layer.original)));
            }
            Err(e) => return Ok(Lookup::Corrupt(format!("{e}"))),
        };
        let Some(json) = index.annotations.get(MANIFEST_ANNOTATION) else {
            return Ok(Lookup::Corrupt("its index holds no input manifest".into()));
        };
        let manifest: Manifest = match serde_json::from_str(json) {
            Ok(m) => m,
            Err(e) => return Ok(Lookup::Corrupt(format!("its input manifest: {e}"))),
        };
        if manifest.key() != key {
            return Ok(Lookup::Corrupt(format!(
                "its input manifest hashes to {}, not to its key",
                manifest.key()
            )));
        }
        // The metadata blob must load (digest and frame checked) before we promise a hit: a
        // truncated or corrupt snapshot falls back to building, never a half-mounted tree.
        if let Err(e) = session::load_metadata(&self.store, &layer).await {
            return match e {
                LayerError::Store { source: ref s, .. }
                    if !matches!(s, StoreError::NotFound { .. }) =>
                {
                    Err(anyhow::Error::new(e).context(format!("loading {}", layer.original)))
                }
                other => Ok(Lookup::Corrupt(format!("{other}"))),
            };
        }
        Ok(Lookup::Hit(Box::new(manifest)))
    }

    /// Converts the overlay upper `upper` into the snapshot of `manifest` and publishes it.
    /// Blobs go first, the index (with the manifest) last and in one put.
    pub async fn publish(
        &self,
        upper: &Path,
        manifest: &Manifest,
        block_size: u32,
    ) -> anyhow::Result<String> {
        let key = manifest.key();
        let layer = self.layer(&key)?;
        let upper_owned = upper.to_path_buf();
        let (meta, blobs) = tokio::task::spawn_blocking(move || {
            let config =
                ConvertConfig { overlay_upper: true, block_size, ..ConvertConfig::default() };
            build::build_from_dir_spooled(&upper_owned, &config, &Progress::default())
        })
        .await
        .context("converting the capture")?
        .with_context(|| format!("converting {}", upper.display()))?;
        let mut annotations = BTreeMap::new();
        annotations.insert(MANIFEST_ANNOTATION.to_string(), serde_json::to_string(manifest)?);
        build::push_files(&self.store, &layer, &meta, &blobs, &Progress::default(), annotations)
            .await
            .with_context(|| format!("publishing {}", layer.original))?;
        Ok(layer.original)
    }

    /// Every stored snapshot of this set, with its manifest where it reads.
    pub async fn list(&self) -> anyhow::Result<Vec<Listed>> {
        let prefix =
            if self.registry { "manifests/".to_string() } else { format!("images/{}/", self.name) };
        let objects =
            self.store.list(&prefix).await.with_context(|| format!("listing {prefix}"))?;
        let mut out = Vec::new();
        for o in objects {
            let Some(key) = o.key.strip_prefix(&prefix) else { continue };
            // Keys are 64 hex digits; traces and other tags are not snapshots.
            if key.len() != 64 || !key.chars().all(|c| c.is_ascii_hexdigit()) {
                continue;
            }
            let (manifest, error) = match self.lookup(key).await {
                Ok(Lookup::Hit(m)) => (Some(*m), None),
                Ok(Lookup::Miss) => (None, Some("vanished".to_string())),
                Ok(Lookup::Corrupt(why)) => (None, Some(why)),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            out.push(Listed {
                key: key.to_string(),
                reference: self.reference(key),
                manifest,
                error,
            });
        }
        Ok(out)
    }

    /// Removes the snapshot `key` (its index; blobs may be shared with other snapshots and are
    /// left for a store-level collection).
    pub async fn remove(&self, key: &str) -> anyhow::Result<()> {
        let layer = self.layer(key)?;
        self.store
            .delete(&layer.index_key())
            .await
            .with_context(|| format!("removing {}", layer.original))
    }

    /// Tries to become the one builder of `key`. `Ok(true)`: build it. `Ok(false)`: someone
    /// else is building. A store without exclusive create, or a lock older than `stale`, gives
    /// `Ok(true)` (build; a second publisher of the same key is harmless).
    pub async fn try_lock(&self, key: &str, stale: Duration) -> anyhow::Result<bool> {
        let lock = self.lock_key(key);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let body = format!("{} {} {now}\n", hostname(), std::process::id());
        match self.store.create_new(&lock, Bytes::from(body)).await {
            Ok(true) => Ok(true),
            Ok(false) => {
                // A builder that died leaves its lock: older than `stale` means nobody is on it.
                let age = match self.store.stat(&lock).await {
                    Ok(meta) => meta.mtime.and_then(|t| t.elapsed().ok()),
                    Err(_) => None,
                };
                Ok(age.is_some_and(|a| a > stale))
            }
            Err(StoreError::Unsupported { .. }) => Ok(true),
            Err(e) => Err(anyhow::Error::new(e).context(format!("locking {lock}"))),
        }
    }

    /// Drops the build lock of `key` (best effort: a stale lock only delays other nodes).
    pub async fn unlock(&self, key: &str) {
        let lock = self.lock_key(key);
        match self.store.delete(&lock).await {
            Ok(()) | Err(StoreError::NotFound { .. }) | Err(StoreError::Unsupported { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "dropping the build lock"),
        }
    }

    /// Waits up to `deadline` for another node's snapshot of `key` to appear.
    pub async fn wait_for(&self, key: &str, deadline: Duration) -> anyhow::Result<Lookup> {
        let started = Instant::now();
        loop {
            match self.lookup(key).await? {
                Lookup::Miss if started.elapsed() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => return Ok(other),
            }
        }
    }
}

/// This host's name (for locks and summaries).
pub fn hostname() -> String {
    bootseer_common::timeline::hostname()
}
