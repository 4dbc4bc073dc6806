//! Store doubles for fast unit tests: [`MemStore`] (in memory, deterministic, counts every
//! operation), [`FailingStore`] (injects errors, stalls and corruption into another store) and
//! [`ThrottledStore`] (limits bandwidth). They complement, never replace, the real backends'
//! tests.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use crate::store::{DynStore, ObjectMeta, Store, StoreError, StoreResult, check_key, clamp_range};

/// Deterministic test data: byte `i` of object `seed` (a cheap, position-dependent pattern so
/// that misplaced ranges are caught).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x =
                (i ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0x2545_F491_4F6C_DD1D);
            (x >> 56) as u8
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An in-memory store that records what was asked of it.
#[derive(Debug, Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, Bytes>>,
    reads: Mutex<Vec<(String, Range<u64>)>>,
    /// `stat` calls.
    pub stats: AtomicU64,
    /// `put` calls.
    pub puts: AtomicU64,
    /// `list` calls.
    pub lists: AtomicU64,
    /// Bytes returned by `read_range`.
    pub bytes_read: AtomicU64,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts an object directly (not counted as a put).
    pub fn insert(&self, key: &str, data: impl Into<Bytes>) {
        lock(&self.objects).insert(key.to_string(), data.into());
    }

    /// Every `read_range` call so far, in order.
    pub fn reads(&self) -> Vec<(String, Range<u64>)> {
        lock(&self.reads).clone()
    }

    /// `read_range` calls so far.
    pub fn read_count(&self) -> usize {
        lock(&self.reads).len()
    }

    /// `read_range` calls so far whose range overlaps `range` of `key`.
    pub fn reads_overlapping(&self, key: &str, range: Range<u64>) -> usize {
        lock(&self.reads)
            .iter()
            .filter(|(k, r)| k == key && r.start < range.end && range.start < r.end)
            .count()
    }
}

#[async_trait]
impl Store for MemStore {
    fn url(&self) -> String {
        "mem://".into()
    }

    async fn stat(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.stats.fetch_add(1, Ordering::Relaxed);
        check_key(key)?;
        let objects = lock(&self.objects);
        let data = objects.get(key).ok_or_else(|| StoreError::NotFound { key: key.into() })?;
        Ok(ObjectMeta { key: key.into(), len: data.len() as u64, mtime: None })
    }

    async fn read_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        lock(&self.reads).push((key.to_string(), range.clone()));
        check_key(key)?;
        let data = lock(&self.objects)
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound { key: key.into() })?;
        let r = clamp_range(range, data.len() as u64);
        self.bytes_read.fetch_add(r.end - r.start, Ordering::Relaxed);
        Ok(data.slice(r.start as usize..r.end as usize))
    }

    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        check_key(key)?;
        lock(&self.objects).insert(key.to_string(), data);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        Ok(lock(&self.objects)
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectMeta { key: k.clone(), len: v.len() as u64, mtime: None })
            .collect())
    }
}

/// What a [`FailingStore`] does to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Pass it through.
    None,
    /// Fail with [`StoreError::Transient`].
    Transient,
    /// Fail with [`StoreError::Other`] (not retryable).
    Permanent,
    /// Never answer (until the fault is changed and [`FailingStore::release`] is called).
    Stall,
    /// Answer a read with one byte flipped.
    Corrupt,
}

/// Wraps a store and injects faults into `read_range` calls that match a key substring.
#[derive(Debug)]
pub struct FailingStore {
    inner: DynStore,
    rule: Mutex<(String, Fault, u64)>,
    released: Notify,
    /// Calls that got a fault.
    pub faults: AtomicU64,
}

impl FailingStore {
    /// Passes everything through until [`FailingStore::set`] is called.
    pub fn new(inner: DynStore) -> Self {
        Self {
            inner,
            rule: Mutex::new((String::new(), Fault::None, 0)),
            released: Notify::new(),
            faults: AtomicU64::new(0),
        }
    }

    /// Applies `fault` to the next `times` reads (`u64::MAX`: all) of keys containing `key_part`.
    pub fn set(&self, key_part: &str, fault: Fault, times: u64) {
        *lock(&self.rule) = (key_part.to_string(), fault, times);
    }

    /// Ends all faults and wakes stalled calls (they then proceed normally).
    pub fn release(&self) {
        *lock(&self.rule) = (String::new(), Fault::None, 0);
        self.released.notify_waiters();
    }

    fn fault_for(&self, key: &str) -> Fault {
        let mut rule = lock(&self.rule);
        if rule.1 == Fault::None || rule.2 == 0 || !key.contains(rule.0.as_str()) {
            return Fault::None;
        }
        if rule.2 != u64::MAX {
            rule.2 -= 1;
        }
        self.faults.fetch_add(1, Ordering::Relaxed);
        rule.1.clone()
    }
}

#[async_trait]
impl Store for FailingStore {
    fn url(&self) -> String {
        format!("failing+{}", self.inner.url())
    }

    async fn stat(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.inner.stat(key).await
    }

    async fn read_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        let err = |message: &str| (key.to_string(), message.to_string());
        match self.fault_for(key) {
            Fault::None => self.inner.read_range(key, range).await,
            Fault::Transient => {
                let (key, message) = err("injected transient fault");
                Err(StoreError::Transient { op: "read_range", key, message })
            }
            Fault::Permanent => {
                let (key, message) = err("injected permanent fault");
                Err(StoreError::Other { op: "read_range", key, message })
            }
            Fault::Stall => {
                loop {
                    let released = self.released.notified();
                    if lock(&self.rule).1 != Fault::Stall {
                        break;
                    }
                    released.await;
                }
                self.inner.read_range(key, range).await
            }
            Fault::Corrupt => {
                let data = self.inner.read_range(key, range).await?;
                let mut bad = data.to_vec();
                if let Some(b) = bad.first_mut() {
                    *b ^= 0xff;
                }
                Ok(Bytes::from(bad))
            }
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.inner.put(key, data).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
}

/// Wraps a store and delays each read by its size over a fixed bandwidth plus a latency.
#[derive(Debug)]
pub struct ThrottledStore {
    inner: DynStore,
    bytes_per_sec: u64,
    latency: Duration,
}

impl ThrottledStore {
    /// Reads take `latency + len / bytes_per_sec`.
    pub fn new(inner: DynStore, bytes_per_sec: u64, latency: Duration) -> Self {
        Self { inner, bytes_per_sec: bytes_per_sec.max(1), latency }
    }
}

#[async_trait]
impl Store for ThrottledStore {
    fn url(&self) -> String {
        format!("throttled+{}", self.inner.url())
    }

    async fn stat(&self, key: &str) -> StoreResult<ObjectMeta> {
        tokio::time::sleep(self.latency).await;
        self.inner.stat(key).await
    }

    async fn read_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        let data = self.inner.read_range(key, range).await?;
        let transfer = Duration::from_secs_f64(data.len() as f64 / self.bytes_per_sec as f64);
        tokio::time::sleep(self.latency + transfer).await;
        Ok(data)
    }

    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.inner.put(key, data).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
}
