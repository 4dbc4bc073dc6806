//! [`HdfsStore`]: files under an HDFS directory, through `hdfs-native` (a pure-Rust client).
//!
//! **Configuration** is the one Hadoop users know: `hdfs://host:port/dir` names a NameNode,
//! `hdfs://nameservice/dir` an HA nameservice (`dfs.nameservices`, `dfs.ha.namenodes.<ns>`,
//! `dfs.namenode.rpc-address.<ns>.<nn>`), and `hdfs:///dir` the `fs.defaultFS`. Settings come
//! from `core-site.xml`/`hdfs-site.xml` in [`HdfsOptions::config_dir`], else `$HADOOP_CONF_DIR`,
//! else `$HADOOP_HOME/etc/hadoop`; [`HdfsOptions::config`] overrides single keys.
//!
//! **Sync/async**: async all the way down. hdfs-native runs on tokio and spawns its connection
//! tasks on the runtime current when a call is made, so an `HdfsStore` must live on one
//! long-lived runtime; FUSE threads reach it by `block_on` on a handle to that runtime, never
//! from a runtime thread.
//!
//! **Reads**: every [`Store::read_range`] opens the file afresh (one NameNode RPC) and reads its
//! blocks one after another. A fresh open matters: hdfs-native never asks the NameNode for new
//! locations once all replicas of a block failed, and it remembers dead DataNodes per reader, so
//! each [`RetryStore`](super::RetryStore) attempt must start from a new reader. The NameNode also
//! shuffles equal replicas per open, which spreads reads over DataNodes. A striped reader that
//! wants parallelism opens several [`HdfsReader`]s itself ([`HdfsStore::open_reader`]) and plans
//! by [`HdfsFileInfo::block_size`].
//!
//! **EOF**: hdfs-native panics when asked for bytes past the end of a file, so every range is
//! clamped to the length the NameNode reported before it reaches hdfs-native, and a reply of any
//! other length is [`StoreError::BadReply`]. hdfs-native also has a few `unwrap`s on NameNode
//! replies (non-UTF-8 names); its calls run under `catch_unwind`, so such a panic becomes
//! `BadReply` too.
//!
//! **Writes**: [`Store::put`] writes `dir/.name.tmp-<pid>-<random>` (creating parent
//! directories), closes it, and renames it over the target, so readers see all or nothing.
//! [`Store::list`] hides dot-names, as the local store does.

use std::fmt;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use hdfs_native::{Client, ClientBuilder, HdfsError, WriteOptions, file::FileReader};

use super::{ObjectMeta, Store, StoreError, StoreResult, check_key, clamp_range};

/// How to reach HDFS beyond what the URL says.
#[derive(Debug, Clone, Default)]
pub struct HdfsOptions {
    /// Directory holding `core-site.xml` and `hdfs-site.xml`; `None` reads `$HADOOP_CONF_DIR`,
    /// then `$HADOOP_HOME/etc/hadoop`.
    pub config_dir: Option<PathBuf>,
    /// Hadoop settings that override the configuration files (`dfs.ha.namenodes.ns`, …).
    pub config: Vec<(String, String)>,
    /// User to act as; `None` means `$HADOOP_USER_NAME`, else the OS user.
    pub user: Option<String>,
}

/// What the NameNode knows of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HdfsFileInfo {
    /// Length in bytes.
    pub len: u64,
    /// Last modification time.
    pub mtime: SystemTime,
    /// The file's HDFS block size: block `i` covers bytes `i * block_size ..` of the file.
    pub block_size: u64,
}

/// One entry of a directory, as [`HdfsStore::list_dir`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HdfsDirEntry {
    /// The name within the directory (decoded, as keys are).
    pub name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Length in bytes (0 for a directory).
    pub len: u64,
    /// Last modification time.
    pub mtime: SystemTime,
}

/// A store rooted at an HDFS directory.
#[derive(Clone)]
pub struct HdfsStore {
    url: String,
    /// Absolute HDFS path of the root directory, without a trailing `/` (except for `/` itself).
    root: String,
    client: Client,
}

impl fmt::Debug for HdfsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HdfsStore").field("url", &self.url).finish_non_exhaustive()
    }
}

const NOT_A_DIRECTORY: &str = "is a file, not a directory";

/// A directory operation on `key` that found a file.
fn not_a_directory(op: &'static str, key: &str) -> StoreError {
    StoreError::Other { op, key: key.to_string(), message: NOT_A_DIRECTORY.into() }
}

/// Whether `err` says the path is a file where a directory was asked for
/// ([`HdfsStore::check_root`], [`HdfsStore::list_dir`]).
pub fn is_not_a_directory(err: &StoreError) -> bool {
    matches!(err, StoreError::Other { message, .. } if message == NOT_A_DIRECTORY)
}

/// One open HDFS file: its block locations as the NameNode gave them at open time.
///
/// Reads through one reader may run concurrently, but each goes to the replicas in the order
/// this open received them. Open several readers to spread load over DataNodes, and open a new
/// one after a failure (the old one never refreshes its locations).
#[derive(Clone)]
pub struct HdfsReader {
    key: String,
    len: u64,
    inner: Arc<FileReader>,
}

impl fmt::Debug for HdfsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HdfsReader").field("key", &self.key).field("len", &self.len).finish()
    }
}

impl HdfsReader {
    /// The file's length when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file was empty when it was opened.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes `range` of the file, clamped at EOF as [`Store::read_range`] promises: one buffer,
    /// no time bound (a caller bounds it; see [`Self::read_range_cut`] for one per packet).
    pub async fn read_range(&self, range: Range<u64>) -> StoreResult<Bytes> {
        let range = clamp_range(range, self.len);
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let whole = [range.end - range.start];
        let mut one = self.read_range_cut(range, &whole, Duration::MAX, |_| {}).await?;
        Ok(one.pop().unwrap_or_default())
    }

    /// Bytes `range` of the file cut into buffers of the lengths `cuts` (which sum to the
    /// range's length), each filled as the DataNode's packets arrive: one copy of each byte and
    /// no buffer of the whole range, where [`Self::read_range`] copies into one buffer that a
    /// caller cutting it into blocks must copy again.
    ///
    /// `idle` bounds the wait for each packet, not the whole read: a busy link that delivers
    /// slowly is not a failure, a DataNode that sends nothing for `idle` is
    /// ([`StoreError::Timeout`]; `Duration::MAX`: no bound). `progress` is told each packet's
    /// length as it arrives.
    pub async fn read_range_cut(
        &self,
        range: Range<u64>,
        cuts: &[u64],
        idle: Duration,
        mut progress: impl FnMut(u64),
    ) -> StoreResult<Vec<Bytes>> {
        use futures::StreamExt;
        const OP: &str = "read_range";
        let want = range.end.saturating_sub(range.start);
        let clamped = clamp_range(range.clone(), self.len);
        let bad = |message: String| StoreError::BadReply { op: OP, key: self.key.clone(), message };
        if cuts.iter().sum::<u64>() != want || cuts.contains(&0) || clamped != range {
            return Err(bad(format!(
                "range {range:?} cut as {} bytes, in a file of {}",
                cuts.iter().sum::<u64>(),
                self.len
            )));
        }
        let mut out = Vec::with_capacity(cuts.len());
        let mut cuts = cuts.iter().copied();
        let Some(first) = cuts.next() else { return Ok(out) };
        let (Ok(offset), Ok(len)) = (usize::try_from(range.start), usize::try_from(want)) else {
            return Err(bad(format!("range {range:?} does not fit in memory")));
        };
        // Clamped above: offset + len <= the reader's file length, so hdfs-native cannot panic
        // here; a panic while polling (a malformed reply) becomes BadReply.
        let mut stream = self.inner.read_range_stream(offset, len);
        let mut current = bytes::BytesMut::with_capacity(first as usize);
        let mut target = first;
        let mut got = 0u64;
        loop {
            let next = AssertUnwindSafe(stream.next()).catch_unwind();
            let mut packet = match tokio::time::timeout(idle, next).await {
                Err(_) => {
                    return Err(StoreError::Timeout { op: OP, key: self.key.clone(), after: idle });
                }
                Ok(Err(panic)) => {
                    return Err(bad(format!("hdfs-native panicked: {}", panic_message(&*panic))));
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(Err(err)))) => return Err(classify(OP, &self.key, err)),
                Ok(Ok(Some(Ok(packet)))) => packet,
            };
            got += packet.len() as u64;
            if got > want {
                return Err(bad(format!("more than the {want} bytes asked for at {offset}")));
            }
            progress(packet.len() as u64);
            while !packet.is_empty() {
                let take = ((target - current.len() as u64) as usize).min(packet.len());
                current.extend_from_slice(&packet.split_to(take));
                if current.len() as u64 == target {
                    out.push(current.split().freeze());
                    match cuts.next() {
                        Some(next) => {
                            target = next;
                            current.reserve(next as usize);
                        }
                        None => target = 0,
                    }
                }
            }
        }
        if got != want {
            return Err(bad(format!("asked for {want} bytes at {offset}, got {got}")));
        }
        Ok(out)
    }
}

impl HdfsStore {
    /// Opens `hdfs://host:port/dir`, `hdfs://nameservice/dir` or `hdfs:///dir` with the
    /// configuration found through `$HADOOP_CONF_DIR`.
    pub async fn open(url: &str) -> StoreResult<Self> {
        Self::open_with(url, &HdfsOptions::default()).await
    }

    /// Opens `url` with explicit configuration (see [`HdfsOptions`]). Connects lazily: a
    /// NameNode that is down shows up on the first operation, not here.
    pub async fn open_with(url: &str, options: &HdfsOptions) -> StoreResult<Self> {
        let bad = |reason: String| StoreError::InvalidKey { key: url.to_string(), reason };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected hdfs://host:port/dir or hdfs://nameservice/dir".into()))?;
        if scheme != "hdfs" && scheme != "viewfs" {
            return Err(bad(format!("scheme {scheme:?} is not hdfs or viewfs")));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let mut parts = Vec::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if part == "." || part == ".." {
                return Err(bad("'.' and '..' are not allowed in the directory".into()));
            }
            parts.push(part);
        }
        let root = format!("/{}", parts.join("/"));

        let mut builder = ClientBuilder::new();
        if !authority.is_empty() {
            builder = builder.with_url(format!("{scheme}://{authority}"));
        }
        if let Some(dir) = &options.config_dir {
            builder = builder.with_config_dir(dir.to_string_lossy().into_owned());
        }
        if !options.config.is_empty() {
            builder = builder.with_config(options.config.clone());
        }
        if let Some(user) = &options.user {
            builder = builder.with_user(user.clone());
        }
        let client = match std::panic::catch_unwind(AssertUnwindSafe(|| builder.build())) {
            Ok(Ok(client)) => client,
            Ok(Err(err)) => return Err(open_error(url, err)),
            Err(panic) => {
                return Err(bad(format!("hdfs-native panicked: {}", panic_message(&panic))));
            }
        };
        Ok(Self { url: url.to_string(), root, client })
    }

    /// The absolute HDFS path of the store's root directory.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The hdfs-native client, for what the [`Store`] trait does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn path(&self, key: &str) -> StoreResult<String> {
        check_key(key)?;
        Ok(self.join(&encode_key(key)))
    }

    fn join(&self, rel: &str) -> String {
        match (self.root.as_str(), rel) {
            (root, "") => root.to_string(),
            ("/", rel) => format!("/{rel}"),
            (root, rel) => format!("{root}/{rel}"),
        }
    }

    /// Length, mtime and block size of `key`.
    pub async fn file_info(&self, key: &str) -> StoreResult<HdfsFileInfo> {
        const OP: &str = "stat";
        let path = self.path(key)?;
        let status = guarded(OP, key, self.client.get_file_info(&path)).await?;
        if status.isdir {
            return Err(StoreError::NotFound { key: key.to_string() });
        }
        let block_size =
            status.blocksize.filter(|&b| b > 0).ok_or_else(|| StoreError::BadReply {
                op: OP,
                key: key.to_string(),
                message: "the NameNode gave no block size for a file".into(),
            })?;
        Ok(HdfsFileInfo {
            len: status.length as u64,
            mtime: mtime(status.modification_time),
            block_size,
        })
    }

    /// Whether the store's root is a directory: one NameNode RPC. [`StoreError::NotFound`] when
    /// nothing is there, [`is_not_a_directory`] when it is a file. ([`Store::list`] of a missing
    /// directory is empty, so a mount checks this first.)
    pub async fn check_root(&self) -> StoreResult<()> {
        let status = guarded("stat", &self.root, self.client.get_file_info(&self.root)).await?;
        if !status.isdir {
            return Err(not_a_directory("stat", &self.root));
        }
        Ok(())
    }

    /// The entries of directory `dir` (a key, `""` for the root), one level only, sorted by
    /// name: what a mount needs to answer `ls` of one directory without walking the tree under
    /// it (hdfs-native pages through a large directory, 1,000 names per NameNode RPC). Dot-names
    /// (temporary files of puts in progress) are left out, as [`Store::list`] does.
    /// [`StoreError::NotFound`] when nothing is there; [`is_not_a_directory`] when `dir` is a
    /// file.
    pub async fn list_dir(&self, dir: &str) -> StoreResult<Vec<HdfsDirEntry>> {
        const OP: &str = "list";
        if !dir.is_empty() {
            check_key(dir)?;
        }
        let path = self.join(&encode_key(dir));
        let statuses = guarded(OP, dir, self.client.list_status(&path, false)).await?;
        let base = path.trim_end_matches('/').to_string() + "/";
        let mut out = Vec::with_capacity(statuses.len());
        for status in statuses {
            // A file lists as itself, under its own path.
            let Some(name) = status.path.strip_prefix(&base).filter(|n| !n.is_empty()) else {
                if !status.isdir {
                    return Err(not_a_directory(OP, dir));
                }
                continue;
            };
            if name.contains('/') || name.starts_with('.') {
                continue;
            }
            out.push(HdfsDirEntry {
                name: decode_key(name),
                is_dir: status.isdir,
                len: if status.isdir { 0 } else { status.length as u64 },
                mtime: mtime(status.modification_time),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// [`Store::put`] with an HDFS block size for the new file (`None`: the NameNode's
    /// default), for tests and benchmarks that need files of other block sizes.
    pub async fn put_with_block_size(
        &self,
        key: &str,
        data: Bytes,
        block_size: Option<u64>,
    ) -> StoreResult<()> {
        const OP: &str = "put";
        let path = self.path(key)?;
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        let tmp = format!("{dir}/.{name}.tmp-{}-{:016x}", std::process::id(), fastrand::u64(..));
        let write = async {
            let mut options = WriteOptions::default().create_parent(true).overwrite(false);
            if let Some(size) = block_size {
                options = options.block_size(size);
            }
            let mut writer = self.client.create(&tmp, options).await?;
            writer.write_bytes(data).await?;
            writer.close().await?;
            self.client.rename(&tmp, &path, true).await
        };
        let result = guarded(OP, key, write).await;
        if result.is_err() {
            // Best effort: a temporary name is invisible to `list`, and a later put uses another.
            let _ = guarded(OP, key, self.client.delete(&tmp, false)).await;
        }
        result
    }

    /// Opens `key` for reading: one NameNode RPC that fetches all its block locations.
    pub async fn open_reader(&self, key: &str) -> StoreResult<HdfsReader> {
        let path = self.path(key)?;
        let inner = guarded("open", key, self.client.read(&path)).await?;
        Ok(HdfsReader {
            key: key.to_string(),
            len: inner.file_length() as u64,
            inner: Arc::new(inner),
        })
    }
}

/// HDFS refuses `:` in path names, and every blob key holds one (`blobs/sha256:…`): keys are
/// stored with `:` as `%3A` (and `%` as `%25`, so that the mapping is one to one).
fn encode_key(key: &str) -> String {
    key.replace('%', "%25").replace(':', "%3A")
}

/// The inverse of [`encode_key`].
fn decode_key(name: &str) -> String {
    name.replace("%3A", ":").replace("%25", "%")
}

fn mtime(millis: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(millis)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs one hdfs-native call, turning its errors and panics into [`StoreError`]s.
async fn guarded<T>(
    op: &'static str,
    key: &str,
    call: impl Future<Output = hdfs_native::Result<T>>,
) -> StoreResult<T> {
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(classify(op, key, err)),
        Err(panic) => Err(StoreError::BadReply {
            op,
            key: key.to_string(),
            message: format!("hdfs-native panicked: {}", panic_message(&*panic)),
        }),
    }
}

fn open_error(url: &str, err: HdfsError) -> StoreError {
    match err {
        HdfsError::InvalidArgument(reason) | HdfsError::InvalidPath(reason) => {
            StoreError::InvalidKey { key: url.to_string(), reason }
        }
        HdfsError::UrlParseError(e) => {
            StoreError::InvalidKey { key: url.to_string(), reason: e.to_string() }
        }
        other => classify("open", url, other),
    }
}

/// hdfs-native puts whole protobuf dumps (every DataNode's details) into some messages; keep
/// what a log line can carry.
fn shorten(mut message: String) -> String {
    const MAX: usize = 600;
    if message.len() > MAX {
        let mut end = MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(" …");
    }
    message
}

/// Java exception classes, as the NameNode names them in RPC errors.
mod exceptions {
    pub const FILE_NOT_FOUND: &str = "java.io.FileNotFoundException";
    pub const UNAUTHORIZED: &[&str] = &[
        "org.apache.hadoop.security.AccessControlException",
        "org.apache.hadoop.security.authorize.AuthorizationException",
        "org.apache.hadoop.security.token.SecretManager$InvalidToken",
        "javax.security.sasl.SaslException",
        "org.ietf.jgss.GSSException",
    ];
    /// The NameNode is failing over, starting, or asks to be asked again.
    pub const TRANSIENT: &[&str] = &[
        "org.apache.hadoop.ipc.StandbyException",
        "org.apache.hadoop.ipc.RetriableException",
        "org.apache.hadoop.ipc.ObserverRetryOnActiveException",
        "org.apache.hadoop.hdfs.server.namenode.SafeModeException",
        "org.apache.hadoop.hdfs.protocol.NotReplicatedYetException",
        "org.apache.hadoop.ipc.RpcServerException",
        "org.apache.hadoop.ipc.ServerTooBusyException",
    ];
}

/// Maps an hdfs-native error onto the store's error kinds. Exhaustive on purpose: a new
/// hdfs-native variant must be classified here, not fall into a default.
fn classify(op: &'static str, key: &str, err: HdfsError) -> StoreError {
    let key = key.to_string();
    let message = shorten(err.to_string());
    let transient = |message| StoreError::Transient { op, key: key.clone(), message };
    let bad_reply = |message| StoreError::BadReply { op, key: key.clone(), message };
    let other = |message| StoreError::Other { op, key: key.clone(), message };
    match err {
        HdfsError::FileNotFound(_) | HdfsError::IsADirectoryError(_) => {
            StoreError::NotFound { key }
        }
        HdfsError::RPCError(class, _) | HdfsError::FatalRPCError(class, _) => {
            if class == exceptions::FILE_NOT_FOUND {
                StoreError::NotFound { key }
            } else if exceptions::UNAUTHORIZED.contains(&class.as_str()) {
                StoreError::Unauthorized { op, key, message }
            } else if exceptions::TRANSIENT.contains(&class.as_str()) {
                transient(message)
            } else {
                other(message)
            }
        }
        HdfsError::SASLError(_) | HdfsError::GSSAPIError(..) | HdfsError::NoSASLMechanism => {
            StoreError::Unauthorized { op, key, message }
        }
        // Sockets to the NameNode or a DataNode, DataNodes that died or refused a block, and
        // erasure-coded reads that lost too many cells: all may pass with fresh locations.
        HdfsError::IOError(_)
        | HdfsError::DataTransferError(_)
        | HdfsError::BlocksNotFound(_)
        | HdfsError::ErasureCodingError(_) => transient(message),
        // A replica with bad bytes, or an RPC reply we cannot decode: another replica or a
        // retry may do better, and `BadReply` is retryable.
        HdfsError::ChecksumError | HdfsError::InvalidRPCResponse(_) => bad_reply(message),
        HdfsError::InvalidPath(_)
        | HdfsError::InvalidArgument(_)
        | HdfsError::UrlParseError(_)
        | HdfsError::AlreadyExists(_)
        | HdfsError::OperationFailed(_)
        | HdfsError::TrashNotEnabled
        | HdfsError::UnsupportedErasureCodingPolicy(_)
        | HdfsError::UnsupportedFeature(_)
        | HdfsError::InternalError(_)
        | HdfsError::XmlParseError(_) => other(message),
    }
}

#[async_trait]
impl Store for HdfsStore {
    fn url(&self) -> String {
        self.url.clone()
    }

    async fn stat(&self, key: &str) -> StoreResult<ObjectMeta> {
        let info = self.file_info(key).await?;
        Ok(ObjectMeta { key: key.to_string(), len: info.len, mtime: Some(info.mtime) })
    }

    async fn read_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        // A fresh reader per call: see the module doc.
        self.open_reader(key).await?.read_range(range).await
    }

    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.put_with_block_size(key, data, None).await
    }

    async fn put_file(&self, key: &str, file: &std::fs::File, len: u64) -> StoreResult<()> {
        const OP: &str = "put_file";
        let path = self.path(key)?;
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        let tmp = format!("{dir}/.{name}.tmp-{}-{:016x}", std::process::id(), fastrand::u64(..));
        // The file is written one piece at a time (the writer's own packet buffers are small),
        // then renamed into place like `put`.
        let write = async {
            let options = WriteOptions::default().create_parent(true).overwrite(false);
            let mut writer = guarded(OP, key, self.client.create(&tmp, options)).await?;
            for (offset, n) in super::pieces(len) {
                let piece = super::read_piece(OP, key, file, offset, n).await?;
                guarded(OP, key, writer.write_bytes(piece)).await?;
            }
            guarded(OP, key, writer.close()).await?;
            guarded(OP, key, self.client.rename(&tmp, &path, true)).await
        };
        let result = write.await;
        if result.is_err() {
            let _ = guarded(OP, key, self.client.delete(&tmp, false)).await;
        }
        result
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        const OP: &str = "delete";
        let path = self.path(key)?;
        match guarded(OP, key, self.client.delete(&path, false)).await? {
            true => Ok(()),
            false => Err(StoreError::NotFound { key: key.to_string() }),
        }
    }

    async fn create_new(&self, key: &str, data: Bytes) -> StoreResult<bool> {
        const OP: &str = "create_new";
        let path = self.path(key)?;
        // The NameNode creates a file without overwrite atomically: one caller wins, the others
        // get AlreadyExists (the build lock of fs-deps snapshots).
        let write = async {
            let options = WriteOptions::default().create_parent(true).overwrite(false);
            let mut writer = self.client.create(&path, options).await?;
            writer.write_bytes(data).await?;
            writer.close().await
        };
        match AssertUnwindSafe(write).catch_unwind().await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(HdfsError::AlreadyExists(_))) => Ok(false),
            Ok(Err(e)) => Err(classify(OP, key, e)),
            Err(panic) => Err(StoreError::BadReply {
                op: OP,
                key: key.to_string(),
                message: format!("hdfs-native panicked: {}", panic_message(&*panic)),
            }),
        }
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        const OP: &str = "list";
        // Walk only the directory that holds the prefix, not the whole store.
        let dir_rel = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        if !dir_rel.is_empty() {
            check_key(dir_rel)?;
        }
        let dir = self.join(dir_rel);
        let statuses = match guarded(OP, prefix, self.client.list_status(&dir, true)).await {
            Ok(statuses) => statuses,
            Err(StoreError::NotFound { .. }) => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let root_slash = self.join("").trim_end_matches('/').to_string() + "/";
        let mut out = Vec::new();
        for status in statuses {
            if status.isdir {
                continue;
            }
            let Some(rel) = status.path.strip_prefix(&root_slash) else {
                continue;
            };
            let rel = decode_key(rel);
            let rel = rel.as_str();
            // Dot-names are temporary files of puts in progress.
            if !rel.starts_with(prefix) || rel.split('/').any(|c| c.starts_with('.')) {
                continue;
            }
            out.push(ObjectMeta {
                key: rel.to_string(),
                len: status.length as u64,
                mtime: Some(mtime(status.modification_time)),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_map_to_roots_and_bad_urls_are_refused() {
        let store = HdfsStore::open("hdfs://127.0.0.1:1/a/b/").await.expect("open");
        assert_eq!(store.root(), "/a/b");
        assert_eq!(store.path("x/y").expect("path"), "/a/b/x/y");
        let store = HdfsStore::open("hdfs://127.0.0.1:1").await.expect("open");
        assert_eq!(store.root(), "/");
        assert_eq!(store.path("x").expect("path"), "/x");
        for url in ["file:///x", "hdfs://127.0.0.1:1/a/../b", "no-scheme"] {
            assert!(
                matches!(HdfsStore::open(url).await, Err(StoreError::InvalidKey { .. })),
                "{url} accepted"
            );
        }
        assert!(matches!(store.path("../x"), Err(StoreError::InvalidKey { .. })));
    }

    #[test]
    fn errors_are_classified() {
        let c = |e| classify("read_range", "k", e);
        assert!(matches!(c(HdfsError::FileNotFound("k".into())), StoreError::NotFound { .. }));
        assert!(matches!(
            c(HdfsError::RPCError(exceptions::FILE_NOT_FOUND.into(), "gone".into())),
            StoreError::NotFound { .. }
        ));
        assert!(matches!(
            c(HdfsError::RPCError(
                "org.apache.hadoop.security.AccessControlException".into(),
                "no".into()
            )),
            StoreError::Unauthorized { .. }
        ));
        assert!(c(HdfsError::DataTransferError("dn".into())).is_retryable());
        assert!(c(HdfsError::IOError(std::io::ErrorKind::ConnectionRefused.into())).is_retryable());
        assert!(
            c(HdfsError::RPCError("org.apache.hadoop.ipc.StandbyException".into(), "".into()))
                .is_retryable()
        );
        assert!(matches!(c(HdfsError::ChecksumError), StoreError::BadReply { .. }));
        assert!(!c(HdfsError::AlreadyExists("k".into())).is_retryable());
        let long = c(HdfsError::DataTransferError("é".repeat(1000))).to_string();
        assert!(long.len() < 700 && long.ends_with('…'), "{long}");
    }
}
