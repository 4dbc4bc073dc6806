//! Blobs on disk while a layer is built: unlinked temp files, hashed as they are written.
//!
//! ```text
//!  source layer ─► spool_reader (copy in pieces, sha256 as it goes) ─► BlobFile (unlinked tmp)
//!  BlobWriter (file sink) ─► HashingWriter ─► BlobFile ─► Store::put_file (pieces of it)
//!  BlobFile ─► FileRange (positional reads: no shared cursor, so any number of readers/retries)
//! ```
//!
//! Temp files are opened with `O_TMPFILE` (no name at all), or, where the file system lacks it,
//! created under a random name and unlinked at once: a crash or a kill leaves nothing behind,
//! and the kernel frees the space when the last descriptor closes.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// Bytes per read or write when copying a blob: large enough for few syscalls, small enough
/// that copies never hold more than this.
pub const COPY_PIECE: usize = 1 << 20;

/// Where temp files go when no directory is named: `$TMPDIR`, else `/var/tmp` (on disk, where
/// `/tmp` is often a RAM-backed tmpfs that would count against memory).
pub fn default_tmp_dir() -> PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("/var/tmp"),
    }
}

/// A new, empty, nameless read-write file in `dir`.
pub fn temp_file(dir: &Path) -> io::Result<File> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
    {
        Ok(file) => return Ok(file),
        // Not every file system knows O_TMPFILE (EOPNOTSUPP, EISDIR on old kernels); anything
        // else (no such directory, no permission) is the caller's to see.
        Err(e)
            if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {
        }
        Err(e) => return Err(e),
    }
    for _ in 0..16 {
        let path =
            dir.join(format!(".bootseer-tmp-{}-{:016x}", std::process::id(), fastrand::u64(..)));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free temp file name"))
}

/// A finished blob in an unlinked temp file: its length and sha256, known from when it was
/// written. Closed (and its space freed) on drop.
#[derive(Debug)]
pub struct BlobFile {
    file: File,
    len: u64,
    digest: Digest,
}

impl BlobFile {
    /// Wraps an existing file whose bytes `0..len` hash to `digest` (as [`hash_file`] found).
    pub fn hashed(file: File, len: u64, digest: Digest) -> Self {
        Self { file, len, digest }
    }

    /// The file; read it with positional reads ([`FileRange`]), its cursor means nothing.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// sha256 of its bytes.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// A reader over all of it.
    pub fn reader(&self) -> FileRange<'_> {
        FileRange::new(&self.file, 0, self.len)
    }

    /// All its bytes in memory: for small blobs and tests only.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        self.reader().read_to_end(&mut out)?;
        Ok(out)
    }
}

/// A `Read` over bytes `start..end` of a file by positional reads (`pread`): it never moves the
/// file's cursor, so several can read one file, and a retry can start again.
#[derive(Debug)]
pub struct FileRange<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> FileRange<'a> {
    /// Bytes `start..end` of `file`.
    pub fn new(file: &'a File, start: u64, end: u64) -> Self {
        Self { file, pos: start, end: end.max(start) }
    }
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file ends at {} before the expected {}", self.pos, self.end),
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// A `Write` that hashes and counts what passes through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The inner writer, the digest and the length of everything written.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest(self.hasher.finalize().into()), self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An empty blob file in `dir`, written through a hash.
pub fn blob_sink(dir: &Path) -> io::Result<HashingWriter<io::BufWriter<File>>> {
    Ok(HashingWriter::new(io::BufWriter::with_capacity(COPY_PIECE, temp_file(dir)?)))
}

/// Turns a finished [`blob_sink`] into its [`BlobFile`].
pub fn finish_sink(sink: HashingWriter<io::BufWriter<File>>) -> io::Result<BlobFile> {
    let (buffered, digest, len) = sink.finish();
    let file = buffered.into_inner().map_err(|e| e.into_error())?;
    Ok(BlobFile { file, len, digest })
}

/// Copies `reader` into a new temp file in `dir`, hashing it, in pieces of [`COPY_PIECE`];
/// `on_piece` sees the length of each piece as it arrives.
pub fn spool_reader(
    mut reader: impl Read,
    dir: &Path,
    mut on_piece: impl FnMut(u64),
) -> io::Result<BlobFile> {
    let mut sink = blob_sink(dir)?;
    let mut buf = vec![0u8; COPY_PIECE];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sink.write_all(&buf[..n])?;
        on_piece(n as u64);
    }
    finish_sink(sink)
}

/// The sha256 and length of `file`'s bytes from its start, read in pieces; `on_piece` sees the
/// length of each piece.
pub fn hash_file(file: &File, mut on_piece: impl FnMut(u64)) -> io::Result<(Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_PIECE];
    let mut pos = 0u64;
    loop {
        let n = match file.read_at(&mut buf, pos) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        on_piece(n as u64);
        pos += n as u64;
    }
    Ok((Digest(hasher.finalize().into()), pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_have_no_name_and_read_back() {
        let dir = std::env::temp_dir().join(format!("bootseer-blob-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let data: Vec<u8> = (0..3 * COPY_PIECE + 17).map(|i| (i * 7) as u8).collect();
        let blob = spool_reader(&data[..], &dir, |_| {}).expect("spool");
        assert_eq!(blob.len(), data.len() as u64);
        assert_eq!(blob.digest(), Digest::of(&data));
        assert_eq!(blob.read_all().expect("read"), data);
        assert_eq!(
            hash_file(blob.file(), |_| {}).expect("hash"),
            (Digest::of(&data), data.len() as u64)
        );
        let mut part = Vec::new();
        FileRange::new(blob.file(), 5, 20).read_to_end(&mut part).expect("range");
        assert_eq!(part, data[5..20]);
        assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 0, "a temp file has a name");
        drop(blob);
        std::fs::remove_dir(&dir).expect("rmdir");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        assert!(temp_file(Path::new("/nonexistent/bootseer/tmp")).is_err());
    }
}
