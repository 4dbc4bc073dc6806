//! The binary trace format: versioned, compact, self-checking.
//!
//! ```text
//! offset  size  field
//!      0     8  MAGIC "BSTRACE\0"
//!      8     2  version, u16 little-endian (FORMAT_VERSION)
//!     10     2  reserved, must be 0
//!     12     8  body length N, u64 little-endian
//!     20     N  body (below)
//!   20+N     4  CRC-32 (IEEE) of bytes 0 .. 20+N, little-endian
//! ```
//!
//! The body is LEB128 varints (`v`) and raw bytes:
//!
//! ```text
//! v recordings
//! v blob count,   per blob:   v id length, id bytes (UTF-8), v block size, v block count
//! v file count,   per file:   v path length, path bytes (UTF-8)
//! v record count, per record: v zigzag(at_us - previous at_us)
//!                             v seen << 1 | new_context
//!                             [v blob, v file]            only when new_context = 1
//!                             v zigzag(block - previous block of the same blob)
//! ```
//!
//! Deltas make the common case small: records are in time order, so time deltas are short, and
//! a file read front to back makes block deltas of +1. A record that keeps the previous
//! record's blob and file (most do) costs about four bytes.
//!
//! Decoding checks, in order: magic, version, framing (length), checksum, then the body's
//! structure and [`Trace::validate`]. Every count read from the body is bounded by the bytes
//! left, so a bogus count is an error, never a large allocation.

use super::{BlobEntry, Record, Trace, TraceError};

/// First eight bytes of every trace. A fixed tag so that `trace show` on the wrong file says
/// "not a trace" instead of a checksum error.
pub const MAGIC: [u8; 8] = *b"BSTRACE\0";
/// The format version this build writes and reads. Bump on any change to the layout above.
pub const FORMAT_VERSION: u16 = 1;

/// Magic (8) + version (2) + reserved (2) + body length (8).
const HEADER_LEN: usize = 20;
/// The trailing CRC-32.
const CRC_LEN: usize = 4;
/// Smallest encodings, used to bound counts by the bytes left: a blob is at least three
/// one-byte varints, a file one, a record three (time delta, seen/tag, block delta).
const MIN_BLOB_LEN: usize = 3;
const MIN_FILE_LEN: usize = 1;
const MIN_RECORD_LEN: usize = 3;

impl Trace {
    /// Writes the trace in the format described in [`format`](self). Any trace can be written;
    /// [`Trace::decode`] accepts it back only if it satisfies [`Trace::validate`].
    pub fn encode(&self) -> Vec<u8> {
        let table_len: usize = self.blobs.iter().map(|b| b.id.len() + 12).sum::<usize>()
            + self.files.iter().map(|f| f.len() + 2).sum::<usize>();
        let mut out = Vec::with_capacity(HEADER_LEN + table_len + self.records.len() * 6 + 32);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // body length, patched below

        put_varint(&mut out, u64::from(self.recordings));
        put_varint(&mut out, self.blobs.len() as u64);
        for b in &self.blobs {
            put_bytes(&mut out, b.id.as_bytes());
            put_varint(&mut out, u64::from(b.block_size));
            put_varint(&mut out, b.block_count);
        }
        put_varint(&mut out, self.files.len() as u64);
        for f in &self.files {
            put_bytes(&mut out, f.as_bytes());
        }
        put_varint(&mut out, self.records.len() as u64);
        let mut prev_at = 0u64;
        let mut prev_ctx: Option<(u32, u32)> = None;
        let mut prev_block = vec![0u64; self.blobs.len()];
        let mut prev_block_other = std::collections::HashMap::new();
        for r in &self.records {
            put_varint(&mut out, zigzag(r.at_us.wrapping_sub(prev_at)));
            prev_at = r.at_us;
            let new_ctx = prev_ctx != Some((r.blob, r.file));
            put_varint(&mut out, (u64::from(r.seen) << 1) | u64::from(new_ctx));
            if new_ctx {
                put_varint(&mut out, u64::from(r.blob));
                put_varint(&mut out, u64::from(r.file));
                prev_ctx = Some((r.blob, r.file));
            }
            // An out-of-range blob index (an invalid trace) still encodes; decode rejects it.
            let prev = match prev_block.get_mut(r.blob as usize) {
                Some(p) => p,
                None => prev_block_other.entry(r.blob).or_insert(0u64),
            };
            put_varint(&mut out, zigzag(r.block.wrapping_sub(*prev)));
            *prev = r.block;
        }

        let body_len = (out.len() - HEADER_LEN) as u64;
        out[12..HEADER_LEN].copy_from_slice(&body_len.to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a trace written by [`Trace::encode`]. Never panics; every failure names what is
    /// wrong (see [`TraceError`]).
    pub fn decode(data: &[u8]) -> Result<Trace, TraceError> {
        let magic_len = data.len().min(MAGIC.len());
        if data[..magic_len] != MAGIC[..magic_len] {
            return Err(TraceError::BadMagic {
                found: data[..magic_len].to_vec(),
                expected: MAGIC.to_vec(),
            });
        }
        if data.len() < HEADER_LEN {
            // Report the version first when we have it: an old reader given a new trace should
            // say "version", not "truncated".
            if data.len() >= 10 {
                check_version(u16::from_le_bytes([data[8], data[9]]))?;
            }
            return Err(TraceError::Truncated {
                what: "header",
                needed: HEADER_LEN as u64,
                available: data.len() as u64,
            });
        }
        check_version(u16::from_le_bytes([data[8], data[9]]))?;
        let reserved = u16::from_le_bytes([data[10], data[11]]);
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&data[12..HEADER_LEN]);
        let body_len = u64::from_le_bytes(len_bytes);
        let available = (data.len() - HEADER_LEN) as u64;
        let needed = body_len.saturating_add(CRC_LEN as u64);
        if available < needed {
            return Err(TraceError::Truncated { what: "body and checksum", needed, available });
        }
        if available > needed {
            return Err(TraceError::TrailingBytes { extra: available - needed });
        }
        // `needed <= available <= usize::MAX` here, so the cast is exact.
        let end = HEADER_LEN + body_len as usize;
        let stored = u32::from_le_bytes([data[end], data[end + 1], data[end + 2], data[end + 3]]);
        let computed = crc32fast::hash(&data[..end]);
        if stored != computed {
            return Err(TraceError::ChecksumMismatch { stored, computed });
        }
        if reserved != 0 {
            return Err(TraceError::malformed(
                "header",
                format!("reserved field is {reserved}, expected 0"),
            ));
        }

        let mut r = Reader { buf: &data[HEADER_LEN..end], pos: 0 };
        let recordings = r.u32("recordings")?;

        let blob_count = r.count("blob count", MIN_BLOB_LEN)?;
        let mut blobs = Vec::with_capacity(blob_count);
        for _ in 0..blob_count {
            let id = r.string("blob id")?;
            let block_size = r.u32("block size")?;
            let block_count = r.varint("block count")?;
            blobs.push(BlobEntry { id, block_size, block_count });
        }

        let file_count = r.count("file count", MIN_FILE_LEN)?;
        let mut files = Vec::with_capacity(file_count);
        for _ in 0..file_count {
            files.push(r.string("file path")?);
        }

        let record_count = r.count("record count", MIN_RECORD_LEN)?;
        let mut records = Vec::with_capacity(record_count);
        let mut prev_at = 0u64;
        let mut ctx: Option<(u32, u32)> = None;
        let mut prev_block = vec![0u64; blobs.len()];
        for i in 0..record_count {
            let at_us = prev_at.wrapping_add(unzigzag(r.varint("record time")?));
            prev_at = at_us;
            let tag = r.varint("record seen")?;
            let seen = u32::try_from(tag >> 1).map_err(|_| {
                TraceError::malformed(
                    "record seen",
                    format!("record {i}: {} exceeds u32", tag >> 1),
                )
            })?;
            if tag & 1 == 1 {
                ctx = Some((r.u32("record blob")?, r.u32("record file")?));
            }
            let Some((blob, file)) = ctx else {
                return Err(TraceError::malformed(
                    "record",
                    "first record does not name its blob and file",
                ));
            };
            let Some(prev) = prev_block.get_mut(blob as usize) else {
                return Err(TraceError::malformed(
                    "record",
                    format!("record {i}: blob index {blob} out of {} blobs", blobs.len()),
                ));
            };
            let block = prev.wrapping_add(unzigzag(r.varint("record block")?));
            *prev = block;
            records.push(Record { blob, block, at_us, file, seen });
        }
        if r.pos != r.buf.len() {
            return Err(TraceError::malformed(
                "body",
                format!("{} bytes left after the last record", r.buf.len() - r.pos),
            ));
        }

        let trace = Trace { recordings, blobs, files, records };
        trace.validate()?;
        Ok(trace)
    }
}

fn check_version(found: u16) -> Result<(), TraceError> {
    if found == FORMAT_VERSION {
        Ok(())
    } else {
        Err(TraceError::UnsupportedVersion { found, supported: FORMAT_VERSION })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Maps a wrapping difference to an unsigned value that is small when the difference is small
/// in either direction (0, -1, 1, -2 … → 0, 1, 2, 3 …).
fn zigzag(delta: u64) -> u64 {
    let d = delta as i64;
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(v: u64) -> u64 {
    (v >> 1) ^ (v & 1).wrapping_neg()
}

/// A cursor over the body; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, TraceError> {
        let mut v = 0u64;
        // A u64 takes at most ten 7-bit groups; the tenth may only carry the top bit.
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(TraceError::Truncated { what, needed: 1, available: 0 });
            };
            self.pos += 1;
            if i == 9 && byte > 1 {
                return Err(TraceError::malformed(what, "varint overflows 64 bits"));
            }
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(TraceError::malformed(what, "varint longer than 10 bytes"))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, TraceError> {
        let v = self.varint(what)?;
        u32::try_from(v).map_err(|_| TraceError::malformed(what, format!("{v} exceeds u32")))
    }

    /// A count of items each at least `min_len` bytes long: never more than the bytes left allow.
    fn count(&mut self, what: &'static str, min_len: usize) -> Result<usize, TraceError> {
        let v = self.varint(what)?;
        let max = (self.left() / min_len) as u64;
        if v > max {
            return Err(TraceError::malformed(
                what,
                format!("{v} entries cannot fit in the {} bytes left", self.left()),
            ));
        }
        Ok(v as usize)
    }

    fn string(&mut self, what: &'static str) -> Result<String, TraceError> {
        let len = self.varint(what)?;
        let left = self.left() as u64;
        if len > left {
            return Err(TraceError::Truncated { what, needed: len, available: left });
        }
        let bytes = &self.buf[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| TraceError::malformed(what, format!("not UTF-8: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_and_zigzag_round_trip_edges() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader { buf: &out, pos: 0 };
            assert_eq!(r.varint("v").expect("decodes"), v);
            assert_eq!(r.pos, out.len());
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(0), 0);
        assert_eq!(zigzag(u64::MAX), 1); // -1
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn overlong_varint_is_malformed() {
        let buf = [0xffu8; 11];
        let mut r = Reader { buf: &buf, pos: 0 };
        assert!(matches!(r.varint("v"), Err(TraceError::Malformed { .. })));
    }

    #[test]
    fn empty_trace_round_trips() {
        let t = Trace::default();
        let enc = t.encode();
        assert_eq!(enc.len(), HEADER_LEN + 4 + CRC_LEN);
        assert_eq!(Trace::decode(&enc).expect("decodes"), t);
    }

    #[test]
    fn bogus_count_is_rejected_without_allocating() {
        // A well-framed body that claims 2^60 blobs.
        let mut body = Vec::new();
        put_varint(&mut body, 1);
        put_varint(&mut body, 1 << 60);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let err = Trace::decode(&out).expect_err("must fail");
        assert!(matches!(err, TraceError::Malformed { what: "blob count", .. }), "{err}");
    }
}
