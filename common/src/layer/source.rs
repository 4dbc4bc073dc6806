//! [`LayerBlob`]: the [`BlockSource`] of one data blob. A run of blocks is one `read_range` of
//! their compressed span (blocks are packed back to back), cut into one slice per block
//! (`fetch`, async); the cache then has each block decompressed and its length checked
//! (`decode`) and its digest checked, once, on a blocking thread.

use std::ops::Range;
use std::sync::Arc;

use crate::cache::{BlockSource, CacheError};
use crate::digest::Digest;
use crate::store::{DynStore, StoreError};
use async_trait::async_trait;
use bytes::Bytes;

use crate::layer::error::LayerError;
use crate::layer::format::BlobInfo;

/// One data blob of an image.
#[derive(Debug)]
pub struct LayerBlob {
    id: String,
    key: String,
    store: DynStore,
    block_size: u64,
    data_len: u64,
    /// (compressed offset, compressed len, digest of the uncompressed block)
    blocks: Vec<(u64, u32, Digest)>,
}

impl LayerBlob {
    /// The source for `info` (already validated) in `store`.
    pub fn new(store: DynStore, info: &BlobInfo, block_size: u32) -> Result<Self, LayerError> {
        let blocks = info
            .blocks
            .iter()
            .map(|b| {
                let d = b
                    .digest
                    .parse::<Digest>()
                    .map_err(|e| LayerError::malformed("block table", e.to_string()))?;
                Ok((b.offset, b.len, d))
            })
            .collect::<Result<Vec<_>, LayerError>>()?;
        Ok(Self {
            id: info.digest.clone(),
            key: format!("blobs/{}", info.digest),
            store,
            block_size: u64::from(block_size),
            data_len: info.data_len,
            blocks,
        })
    }

    /// Uncompressed length of block `index`.
    fn block_len(&self, index: u64) -> u64 {
        let start = index.saturating_mul(self.block_size);
        self.data_len.saturating_sub(start).min(self.block_size)
    }
}

#[async_trait]
impl BlockSource for LayerBlob {
    fn id(&self) -> &str {
        &self.id
    }

    fn block_count(&self) -> u64 {
        self.blocks.len() as u64
    }

    fn block_digest(&self, index: u64) -> Option<Digest> {
        self.blocks.get(index as usize).map(|b| b.2)
    }

    async fn fetch(&self, blocks: Range<u64>) -> Result<Vec<Bytes>, CacheError> {
        let (Some(first), Some(last)) = (
            self.blocks.get(blocks.start as usize),
            blocks.end.checked_sub(1).and_then(|l| self.blocks.get(l as usize)),
        ) else {
            return Err(CacheError::OutOfRange {
                blob: self.id.clone(),
                block: blocks.end,
                count: self.block_count(),
            });
        };
        let span = first.0..last.0 + u64::from(last.1);
        let data = self.store.read_range(&self.key, span.clone()).await.map_err(|e| {
            CacheError::Fetch { blob: self.id.clone(), block: blocks.start, source: Arc::new(e) }
        })?;
        if data.len() as u64 != span.end - span.start {
            let e = StoreError::BadReply {
                op: "read_range",
                key: self.key.clone(),
                message: format!("{} bytes for {span:?}", data.len()),
            };
            return Err(CacheError::Fetch {
                blob: self.id.clone(),
                block: blocks.start,
                source: Arc::new(e),
            });
        }
        Ok(blocks
            .map(|index| {
                let (offset, len, _) = self.blocks[index as usize];
                let start = (offset - span.start) as usize;
                data.slice(start..start + len as usize)
            })
            .collect())
    }

    fn decodes(&self) -> bool {
        true
    }

    fn decode(&self, index: u64, compressed: Bytes) -> Result<Bytes, CacheError> {
        let want = self.block_len(index) as usize;
        let malformed = |message: String| CacheError::Malformed {
            blob: self.id.clone(),
            block: index,
            message,
        };
        // A capacity of exactly the expected length: a block that inflates to more is refused.
        let plain = zstd::bulk::decompress(&compressed, want)
            .map_err(|e| malformed(format!("zstd: {e}")))?;
        if plain.len() != want {
            return Err(malformed(format!("{} bytes, expected {want}", plain.len())));
        }
        Ok(Bytes::from(plain))
    }
}
