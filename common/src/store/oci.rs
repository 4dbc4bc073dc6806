//! [`OciStore`]: files under an OCI registry repository. (Being written.)

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, Store, StoreError, StoreResult};

/// A store rooted at an HDFS directory.
#[derive(Debug)]
pub struct OciStore {
    url: String,
}

impl OciStore {
    /// Opens `docker://host[:port]/repo`.
    pub fn open(url: &str, _insecure: &[String]) -> StoreResult<Self> {
        Err(StoreError::Unsupported { op: "open", key: url.to_string() })
    }
}

#[async_trait]
impl Store for OciStore {
    fn url(&self) -> String {
        self.url.clone()
    }
    async fn stat(&self, key: &str) -> StoreResult<ObjectMeta> {
        Err(StoreError::Unsupported { op: "stat", key: key.to_string() })
    }
    async fn read_range(&self, key: &str, _range: Range<u64>) -> StoreResult<Bytes> {
        Err(StoreError::Unsupported { op: "read_range", key: key.to_string() })
    }
    async fn put(&self, key: &str, _data: Bytes) -> StoreResult<()> {
        Err(StoreError::Unsupported { op: "put", key: key.to_string() })
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        Err(StoreError::Unsupported { op: "list", key: prefix.to_string() })
    }
}
