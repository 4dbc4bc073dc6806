//! [`HdfsStore`]: files under an HDFS directory, through `hdfs-native`. (Being written.)

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, Store, StoreError, StoreResult};

/// A store rooted at an HDFS directory.
#[derive(Debug)]
pub struct HdfsStore {
    url: String,
}

impl HdfsStore {
    /// Opens `hdfs://host:port/dir` or `hdfs://nameservice/dir`.
    pub async fn open(url: &str) -> StoreResult<Self> {
        Err(StoreError::Unsupported { op: "open", key: url.to_string() })
    }
}

#[async_trait]
impl Store for HdfsStore {
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
