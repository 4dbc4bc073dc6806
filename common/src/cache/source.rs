//! [`BlockSource`]: where the cache gets a blob's blocks, and [`StoreBlocks`], the plain source
//! that cuts a store object into fixed-size slices.
//!
//! A source knows how its blob is laid out (fixed slices of an HDFS file; independently
//! compressed blocks of an image blob) and turns a run of block indexes into as few store reads
//! as it can ([`BlockSource::fetch`], async, on the runtime's workers), and fetched bytes into
//! served bytes ([`BlockSource::decode`], CPU, on a blocking thread). The cache owns everything
//! else: single-flight, priorities, tiers and verification against
//! [`BlockSource::block_digest`].

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::CacheError;
use crate::digest::Digest;
use crate::store::DynStore;

/// The blocks of one blob.
#[async_trait]
pub trait BlockSource: Send + Sync + fmt::Debug + 'static {
    /// The blob's identity, stable across processes: it keys the disk tier, so two sources with
    /// the same id must serve the same bytes (a digest, or a path pinned with length and mtime).
    fn id(&self) -> &str;

    /// How many blocks the blob has.
    fn block_count(&self) -> u64;

    /// The sha256 the served bytes of block `index` must have, where known. The cache checks it
    /// on every fetch and every disk load; a mismatch is an error, never data.
    fn block_digest(&self, index: u64) -> Option<Digest>;

    /// Fetches blocks `blocks` (non-empty, within `block_count`), returning one buffer per block
    /// in order, as stored (see [`BlockSource::decode`]). Implementations read neighbours in as
    /// few backend requests as they can, and do no CPU-heavy work here: this runs on the async
    /// workers.
    async fn fetch(&self, blocks: Range<u64>) -> Result<Vec<Bytes>, CacheError>;

    /// Whether [`BlockSource::decode`] does work (decompression); when neither it nor a digest
    /// check is needed, the cache skips the hop to a blocking thread.
    fn decodes(&self) -> bool {
        false
    }

    /// Turns block `index` as fetched into the bytes served (decompresses, checks the length).
    /// The cache calls it once per fetched block, on a blocking thread, right before the digest
    /// check. The default serves what was fetched.
    fn decode(&self, _index: u64, fetched: Bytes) -> Result<Bytes, CacheError> {
        Ok(fetched)
    }
}

/// A shared block source.
pub type DynSource = Arc<dyn BlockSource>;

/// A store object served as fixed-size slices (the last one short), without digests.
#[derive(Debug, Clone)]
pub struct StoreBlocks {
    id: String,
    store: DynStore,
    key: String,
    len: u64,
    block_size: u64,
}

impl StoreBlocks {
    /// `key` in `store`, `len` bytes long, cut into `block_size` slices; `id` names this exact
    /// version of the object (see [`BlockSource::id`]).
    pub fn new(
        id: impl Into<String>,
        store: DynStore,
        key: &str,
        len: u64,
        block_size: u64,
    ) -> Self {
        Self { id: id.into(), store, key: key.to_string(), len, block_size: block_size.max(1) }
    }

    /// The byte range block `index` covers.
    pub fn block_range(&self, index: u64) -> Range<u64> {
        let start = index.saturating_mul(self.block_size).min(self.len);
        start..start.saturating_add(self.block_size).min(self.len)
    }
}

#[async_trait]
impl BlockSource for StoreBlocks {
    fn id(&self) -> &str {
        &self.id
    }

    fn block_count(&self) -> u64 {
        self.len.div_ceil(self.block_size)
    }

    fn block_digest(&self, _index: u64) -> Option<Digest> {
        None
    }

    async fn fetch(&self, blocks: Range<u64>) -> Result<Vec<Bytes>, CacheError> {
        let range = self.block_range(blocks.start).start..self.block_range(blocks.end - 1).end;
        let data = self.store.read_range(&self.key, range.clone()).await.map_err(|e| {
            CacheError::Fetch { blob: self.id.clone(), block: blocks.start, source: Arc::new(e) }
        })?;
        if data.len() as u64 != range.end - range.start {
            return Err(CacheError::Malformed {
                blob: self.id.clone(),
                block: blocks.start,
                message: format!("store returned {} bytes for {range:?}", data.len()),
            });
        }
        Ok(blocks
            .map(|i| {
                let r = self.block_range(i);
                data.slice((r.start - range.start) as usize..(r.end - range.start) as usize)
            })
            .collect())
    }
}
