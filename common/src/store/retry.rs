//! [`RetryStore`]: the one place where store timeouts and retries live.
//!
//! Every call gets a per-attempt timeout; retryable failures ([`StoreError::is_retryable`]) are
//! tried again after an exponential backoff with full jitter, up to `max_attempts` attempts and
//! never past `total_deadline` from the first attempt. The last error is returned as it was, so
//! callers see why the final attempt failed.

use std::ops::Range;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::{DynStore, ObjectMeta, Store, StoreError, StoreResult};
use crate::metrics as m;

/// Timeouts and retry policy for one store.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Deadline of one attempt of one operation.
    pub op_timeout: Duration,
    /// Attempts per operation, the first included (1 = no retries).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles per retry up to `max_backoff`.
    pub base_backoff: Duration,
    /// Upper bound of one backoff.
    pub max_backoff: Duration,
    /// No new attempt starts later than this after the first one began.
    pub total_deadline: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        // 30 s per attempt covers a multi-MiB range on a slow link; five attempts ride out a
        // registry or DataNode restart; two minutes bound what a FUSE reader can wait.
        Self {
            op_timeout: Duration::from_secs(30),
            max_attempts: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            total_deadline: Duration::from_secs(120),
        }
    }
}

impl RetryConfig {
    /// The backoff before retry number `retry` (1-based): full jitter over an exponential cap.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .base_backoff
            .saturating_mul(1u32.checked_shl(retry.saturating_sub(1).min(20)).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        cap.mul_f64(fastrand::f64())
    }
}

/// The slowest upload a `put_file` attempt is allowed before it times out, in bytes per second:
/// 4 MiB/s gives a 2 GiB blob about 8.5 minutes beyond the attempt timeout.
pub const PUT_FILE_MIN_RATE: u64 = 4 << 20;

/// Wraps a store with per-attempt timeouts and bounded retries.
#[derive(Debug)]
pub struct RetryStore {
    inner: DynStore,
    config: RetryConfig,
}

impl RetryStore {
    /// Wraps `inner` with `config`.
    pub fn new(inner: DynStore, config: RetryConfig) -> Self {
        Self { inner, config }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &DynStore {
        &self.inner
    }

    async fn run<T, F, Fut>(&self, op: &'static str, key: &str, attempt: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        self.run_for(op, key, Duration::ZERO, attempt).await
    }

    /// [`RetryStore::run`] with `extra` added to the attempt timeout and the total deadline.
    async fn run_for<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        extra: Duration,
        mut attempt: F,
    ) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let op_timeout = self.config.op_timeout + extra;
        let total_deadline = self.config.total_deadline + extra;
        let started = Instant::now();
        let mut tries = 0u32;
        loop {
            tries += 1;
            let result = match tokio::time::timeout(op_timeout, attempt()).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Timeout { op, key: key.to_string(), after: op_timeout }),
            };
            let err = match result {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            let backoff = self.config.backoff(tries);
            let out_of_time = started.elapsed() + backoff >= total_deadline;
            if !err.is_retryable() || tries >= self.config.max_attempts || out_of_time {
                ::metrics::counter!(m::STORE_ERRORS, "op" => op).increment(1);
                tracing::debug!(op, key, tries, error = %err, "store operation failed");
                return Err(err);
            }
            ::metrics::counter!(m::STORE_RETRIES, "op" => op).increment(1);
            tracing::debug!(op, key, tries, ?backoff, error = %err, "retrying store operation");
            tokio::time::sleep(backoff).await;
        }
    }
}

#[async_trait]
impl Store for RetryStore {
    fn url(&self) -> String {
        self.inner.url()
    }

    async fn stat(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.run("stat", key, || self.inner.stat(key)).await
    }

    async fn read_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        let bytes =
            self.run("read_range", key, || self.inner.read_range(key, range.clone())).await?;
        ::metrics::counter!(m::STORE_READ_BYTES).increment(bytes.len() as u64);
        Ok(bytes)
    }

    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.run("put", key, || self.inner.put(key, data.clone())).await
    }

    async fn put_file(&self, key: &str, file: &std::fs::File, len: u64) -> StoreResult<()> {
        // A whole blob is one attempt: it gets the usual timeout plus the time to send `len`
        // bytes at PUT_FILE_MIN_RATE, and each retry sends it again from its start.
        let extra = Duration::from_secs_f64(len as f64 / PUT_FILE_MIN_RATE as f64);
        self.run_for("put_file", key, extra, || self.inner.put_file(key, file, len)).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.run("list", prefix, || self.inner.list(prefix)).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.run("delete", key, || self.inner.delete(key)).await
    }

    async fn create_new(&self, key: &str, data: Bytes) -> StoreResult<bool> {
        // One attempt under the attempt timeout: a retry after a lost reply could see its own
        // object and answer "existed", and the caller treats a failure as "not created".
        let attempt = self.config.op_timeout;
        match tokio::time::timeout(attempt, self.inner.create_new(key, data)).await {
            Ok(r) => r,
            Err(_) => {
                Err(StoreError::Timeout { op: "create_new", key: key.to_string(), after: attempt })
            }
        }
    }
}
