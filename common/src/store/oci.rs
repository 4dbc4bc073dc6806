//! [`OciStore`]: blobs and manifests of one OCI registry repository
//! (`docker://host[:port]/repo[/path]`, also `oci://`).
//!
//! Key mapping:
//!
//! | key                          | object                                                     |
//! | ---------------------------- | ---------------------------------------------------------- |
//! | `blobs/sha256:<64 hex>`      | the blob with that digest                                  |
//! | `manifests/<tag>`            | the manifest the tag points at (exact bytes as pushed)     |
//! | `manifests/sha256:<64 hex>`  | the manifest with that digest                              |
//!
//! `put` of a blob checks that the data hashes to the key's digest ([`StoreError::InvalidKey`]
//! otherwise) and skips the upload when the registry already has the blob. `put` of a manifest
//! sends the bytes as they are, with the media type named by their `mediaType` field (an OCI image
//! manifest when absent). `list` answers only under `manifests/` (the repository's tags, sorted);
//! a registry cannot list its blobs, so other prefixes that could hold blobs are
//! [`StoreError::Unsupported`].
//!
//! Who speaks which part of the protocol:
//! - [`oci_client::Client`] does the bearer-token flow (challenge, realm, scope, Basic fallback),
//!   blob uploads (chunked, with its monolithic fallback) and tag listing.
//! - Our own [`reqwest::Client`] sends the read path — `HEAD` for blob lengths, `Range` GETs,
//!   manifest GETs — and manifest PUTs, because oci-client exposes neither lengths nor the
//!   `Content-Range` of a partial reply, and its raw manifest push panics on a PUT-by-digest reply
//!   without `Location`. It authenticates with the token oci-client fetched.
//!
//! Auth: anonymous, or Basic credentials from `BOOTSEER_REGISTRY_USER`/`BOOTSEER_REGISTRY_PASSWORD`
//! or `~/.docker/config.json` (`$DOCKER_CONFIG/config.json`: `credHelpers`, then `credsStore`,
//! run as `docker-credential-NAME get`, then `auths`), which the token flow exchanges for a
//! bearer token where the registry asks for one. A request answered `401` re-authenticates once
//! (a fresh token, also put into oci-client's token cache) and is sent again; a second `401` or a
//! `403` is [`StoreError::Unauthorized`]. Concurrent requests that meet the same expired token
//! share one re-authentication (the generation counter in [`AuthSlot`]).
//!
//! Scheme: `http` for loopback hosts (127.0.0.0/8, `localhost`, `::1`) and hosts named in the
//! `insecure` list (as `host` or `host:port`), which [`OciStore::open`] extends with
//! `$BOOTSEER_INSECURE_REGISTRIES` ([`INSECURE_REGISTRIES_ENV`], read where the credentials'
//! variables are), `https` otherwise.
//!
//! Failures: 404 → NotFound, 401 (after re-auth) / 403 → Unauthorized, 408/429/5xx and connection
//! errors → Transient, replies that break the protocol (short body, wrong `Content-Range`, missing
//! length) → BadReply. Each call is one attempt; [`super::RetryStore`] owns retries.

use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::{Reference, RegistryOperation};
use reqwest::header::{self, HeaderValue};
use reqwest::{RequestBuilder, Response, StatusCode};

pub use oci_client::secrets::RegistryAuth;

use super::{ObjectMeta, Store, StoreError, StoreResult, check_key, clamp_range};
use crate::digest::Digest;

/// Environment variable naming the registry user (with [`PASSWORD_ENV`]).
pub const USER_ENV: &str = "BOOTSEER_REGISTRY_USER";
/// Environment variable holding the registry password (with [`USER_ENV`]).
pub const PASSWORD_ENV: &str = "BOOTSEER_REGISTRY_PASSWORD";

/// Media type sent with a manifest whose JSON has no `mediaType` field.
const DEFAULT_MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// What we accept when reading a manifest: every manifest kind a registry stores, so it never
/// converts one into another (the bytes must stay the ones that were pushed).
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.artifact.manifest.v1+json";

/// Connect timeout: a registry that does not accept a connection in 10 s is down for our purposes;
/// [`super::RetryStore`] decides whether to try again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read timeout between body chunks: a stalled stream fails instead of hanging a reader.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Blob lengths we remember (blobs are immutable): enough for every blob of a large image set.
const LEN_CACHE_ENTRIES: usize = 16 * 1024;
/// Manifests larger than this are refused as a bad reply: real ones are a few KiB, the spec
/// recommends registries accept at least 4 MiB.
const MAX_MANIFEST_LEN: u64 = 16 * 1024 * 1024;
/// Concurrent `HEAD`s while listing tags with their lengths.
const LIST_CONCURRENCY: usize = 8;

/// What a key names in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Blob(Digest),
    /// A tag or a `sha256:` digest.
    Manifest(String),
}

fn parse_key(key: &str) -> StoreResult<Target> {
    check_key(key)?;
    let bad = |reason: String| StoreError::InvalidKey { key: key.to_string(), reason };
    if let Some(digest) = key.strip_prefix("blobs/") {
        let digest = digest.parse::<Digest>().map_err(|e| bad(e.to_string()))?;
        return Ok(Target::Blob(digest));
    }
    if let Some(reference) = key.strip_prefix("manifests/") {
        if reference.starts_with("sha256:") {
            reference.parse::<Digest>().map_err(|e| bad(e.to_string()))?;
        } else if !is_tag(reference) {
            return Err(bad(format!(
                "{reference:?} is not a tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}) or a sha256 digest"
            )));
        }
        return Ok(Target::Manifest(reference.to_string()));
    }
    Err(bad("a registry key is blobs/sha256:<hex> or manifests/<tag or digest>".into()))
}

/// A tag as the distribution spec allows it.
fn is_tag(s: &str) -> bool {
    let mut bytes = s.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    first_ok
        && s.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A repository name as the distribution spec allows it: lower-case components separated by `/`.
fn is_repository(s: &str) -> bool {
    !s.is_empty()
        && s.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

/// The credential our own requests carry.
#[derive(Clone)]
enum Credential {
    None,
    Bearer(HeaderValue),
    Basic(String, String),
}

/// The credential for one operation (pull or push) and how many times it was renewed.
/// `generation` lets concurrent requests that saw the same `401` renew it once.
#[derive(Clone)]
struct AuthSlot {
    generation: u64,
    credential: Credential,
}

/// A store in one repository of an OCI registry.
pub struct OciStore {
    url: String,
    /// `host[:port]`.
    registry: String,
    repository: String,
    /// `{scheme}://{registry}/v2/{repository}`.
    base: String,
    creds: RegistryAuth,
    client: oci_client::Client,
    http: reqwest::Client,
    /// `[pull, push]`. A tokio mutex: held across the token request, so one request renews.
    auth: tokio::sync::Mutex<[Option<AuthSlot>; 2]>,
    /// Blob lengths, learned from `HEAD`; blobs never change, so they never go stale.
    lens: Mutex<lru::LruCache<Digest, u64>>,
}

impl std::fmt::Debug for OciStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciStore").field("url", &self.url).field("auth", &self.creds).finish()
    }
}

/// Registries reached over plain `http` besides loopback ones, comma-separated `host` or
/// `host:port` (Docker's `insecure-registries`): every binary opens registries through
/// [`OciStore::open`], so an fstab line's unit or a container's init sets it once.
pub const INSECURE_REGISTRIES_ENV: &str = "BOOTSEER_INSECURE_REGISTRIES";

/// The entries of a comma-separated registry list (blanks around and between ignored).
fn parse_registry_list(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|r| !r.is_empty()).map(String::from).collect()
}

impl OciStore {
    /// Opens `docker://host[:port]/repo[/path]` (or `oci://…`) with credentials from the
    /// environment or the docker config, anonymous if there are none. `insecure` names registries
    /// (`host` or `host:port`) reached over plain http, besides those of
    /// [`INSECURE_REGISTRIES_ENV`]; loopback hosts always are.
    pub fn open(url: &str, insecure: &[String]) -> StoreResult<Self> {
        let (registry, _) = split_url(url)?;
        let creds = credentials_for(&registry);
        let mut insecure = insecure.to_vec();
        insecure.extend(parse_registry_list(
            &std::env::var(INSECURE_REGISTRIES_ENV).unwrap_or_default(),
        ));
        Self::open_with_auth(url, &insecure, creds)
    }

    /// Like [`OciStore::open`], with explicit credentials.
    pub fn open_with_auth(
        url: &str,
        insecure: &[String],
        creds: RegistryAuth,
    ) -> StoreResult<Self> {
        let (registry, repository) = split_url(url)?;
        let bad = |reason: String| StoreError::InvalidKey { key: url.to_string(), reason };
        let parsed = url::Url::parse(&format!("http://{registry}/"))
            .map_err(|e| bad(format!("bad registry host {registry:?}: {e}")))?;
        let host = parsed.host_str().unwrap_or_default().to_string();
        let plain_http = match parsed.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        } || insecure.iter().any(|i| *i == registry || *i == host);
        let (protocol, scheme) = if plain_http {
            (ClientProtocol::Http, "http")
        } else {
            (ClientProtocol::Https, "https")
        };
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..ClientConfig::default()
        };
        let client = oci_client::Client::try_from(config).map_err(|e| StoreError::Other {
            op: "open",
            key: url.to_string(),
            message: e.to_string(),
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("bootseer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StoreError::Other {
                op: "open",
                key: url.to_string(),
                message: e.to_string(),
            })?;
        let cap = NonZeroUsize::new(LEN_CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN);
        Ok(Self {
            url: url.to_string(),
            base: format!("{scheme}://{registry}/v2/{repository}"),
            registry,
            repository,
            creds,
            client,
            http,
            auth: tokio::sync::Mutex::new([None, None]),
            lens: Mutex::new(lru::LruCache::new(cap)),
        })
    }

    /// `host[:port]` of the registry.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository inside the registry.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    fn reference(&self, tag: &str) -> Reference {
        Reference::with_tag(self.registry.clone(), self.repository.clone(), tag.to_string())
    }

    fn target_url(&self, target: &Target) -> String {
        match target {
            Target::Blob(d) => format!("{}/blobs/{d}", self.base),
            Target::Manifest(r) => format!("{}/manifests/{r}", self.base),
        }
    }

    /// The credential for `op`; renewed when `stale` names the generation that just got a `401`.
    async fn credential(
        &self,
        op: RegistryOperation,
        stale: Option<u64>,
        key: &str,
    ) -> StoreResult<AuthSlot> {
        let mut slots = self.auth.lock().await;
        let slot = &mut slots[usize::from(op == RegistryOperation::Push)];
        if let Some(current) = slot.as_ref()
            && stale != Some(current.generation)
        {
            return Ok(current.clone());
        }
        let generation = slot.as_ref().map_or(0, |s| s.generation + 1);
        if stale.is_some() {
            tracing::debug!(registry = %self.registry, ?op, "re-authenticating after 401");
        }
        // `auth` always asks the registry (and its token server) afresh and also refreshes the
        // token oci-client's own requests use.
        let token = self
            .client
            .auth(&self.reference("latest"), &self.creds, op)
            .await
            .map_err(|e| oci_error("auth", key, e))?;
        let credential = match (token, &self.creds) {
            (Some(token), _) => {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        StoreError::BadReply {
                            op: "auth",
                            key: key.to_string(),
                            message: "token server sent a token that is not a valid header".into(),
                        }
                    })?;
                value.set_sensitive(true);
                Credential::Bearer(value)
            }
            (None, RegistryAuth::Basic(user, pass)) => {
                Credential::Basic(user.clone(), pass.clone())
            }
            (None, RegistryAuth::Bearer(token)) => {
                match HeaderValue::from_str(&format!("Bearer {token}")) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        Credential::Bearer(v)
                    }
                    Err(_) => {
                        return Err(StoreError::InvalidKey {
                            key: self.url.clone(),
                            reason: "bearer token is not a valid header".into(),
                        });
                    }
                }
            }
            (None, RegistryAuth::Anonymous) => Credential::None,
        };
        let fresh = AuthSlot { generation, credential };
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    /// Sends the request `build` makes, authenticated; on `401` renews the credential once and
    /// sends it again. The caller classifies the final status.
    async fn send(
        &self,
        op_name: &'static str,
        key: &str,
        op: RegistryOperation,
        build: impl Fn() -> RequestBuilder,
    ) -> StoreResult<Response> {
        let slot = self.credential(op, None, key).await?;
        let response = authorize(build(), &slot.credential)
            .send()
            .await
            .map_err(|e| request_error(op_name, key, &e))?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let slot = self.credential(op, Some(slot.generation), key).await?;
        authorize(build(), &slot.credential)
            .send()
            .await
            .map_err(|e| request_error(op_name, key, &e))
    }

    /// Runs one oci-client call; on an authorization failure renews the credential once and runs
    /// it again.
    async fn oci_call<T, F, Fut>(
        &self,
        op_name: &'static str,
        key: &str,
        op: RegistryOperation,
        call: F,
    ) -> StoreResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let slot = self.credential(op, None, key).await?;
        match call().await {
            Err(e) if is_unauthorized(&e) => {
                self.credential(op, Some(slot.generation), key).await?;
                call().await.map_err(|e| oci_error(op_name, key, e))
            }
            result => result.map_err(|e| oci_error(op_name, key, e)),
        }
    }

    /// The length of a blob: remembered, or asked with `HEAD`.
    async fn blob_len(
        &self,
        op_name: &'static str,
        key: &str,
        digest: &Digest,
    ) -> StoreResult<u64> {
        if let Some(len) = self.lens.lock().ok().and_then(|mut c| c.get(digest).copied()) {
            return Ok(len);
        }
        let url = self.target_url(&Target::Blob(*digest));
        let response =
            self.send(op_name, key, RegistryOperation::Pull, || self.http.head(&url)).await?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(status_error(op_name, key, status, ""));
        }
        let len =
            header_u64(&response, header::CONTENT_LENGTH).ok_or_else(|| StoreError::BadReply {
                op: op_name,
                key: key.to_string(),
                message: "HEAD reply has no valid Content-Length".into(),
            })?;
        if let Ok(mut cache) = self.lens.lock() {
            cache.put(*digest, len);
        }
        Ok(len)
    }

    fn forget_len(&self, digest: &Digest) {
        if let Ok(mut cache) = self.lens.lock() {
            cache.pop(digest);
        }
    }

    /// The exact bytes of a manifest.
    async fn get_manifest(
        &self,
        op_name: &'static str,
        key: &str,
        reference: &str,
    ) -> StoreResult<Bytes> {
        let url = self.target_url(&Target::Manifest(reference.to_string()));
        let mut response = self
            .send(op_name, key, RegistryOperation::Pull, || {
                self.http.get(&url).header(header::ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        let status = response.status();
        if status != StatusCode::OK {
            let body =
                read_body(&mut response, op_name, key, 4096, false).await.unwrap_or_default();
            return Err(status_error(op_name, key, status, &String::from_utf8_lossy(&body)));
        }
        let body = read_body(&mut response, op_name, key, MAX_MANIFEST_LEN, true).await?;
        if let Ok(want) = reference.parse::<Digest>()
            && Digest::of(&body) != want
        {
            return Err(StoreError::BadReply {
                op: op_name,
                key: key.to_string(),
                message: "manifest bytes do not match the digest they were asked by".into(),
            });
        }
        Ok(body)
    }

    async fn read_blob(&self, key: &str, digest: &Digest, range: Range<u64>) -> StoreResult<Bytes> {
        const OP: &str = "read_range";
        let len = self.blob_len(OP, key, digest).await?;
        let range = clamp_range(range, len);
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let want = range.end - range.start;
        let url = self.target_url(&Target::Blob(*digest));
        let spec = format!("bytes={}-{}", range.start, range.end - 1);
        let mut response = self
            .send(OP, key, RegistryOperation::Pull, || {
                self.http.get(&url).header(header::RANGE, &spec)
            })
            .await?;
        let bad = |message: String| StoreError::BadReply { op: OP, key: key.to_string(), message };
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                if let Some(value) = response.headers().get(header::CONTENT_RANGE) {
                    let got = value.to_str().ok().and_then(parse_content_range);
                    match got {
                        Some((start, end, total)) => {
                            if start != range.start
                                || end != range.end - 1
                                || total.is_some_and(|t| t != len)
                            {
                                return Err(bad(format!(
                                    "asked {spec} of {len}, got Content-Range {value:?}"
                                )));
                            }
                        }
                        None => return Err(bad(format!("unparsable Content-Range {value:?}"))),
                    }
                }
                let body = read_body(&mut response, OP, key, want, true).await?;
                if body.len() as u64 != want {
                    return Err(bad(format!("asked {want} bytes ({spec}), got {}", body.len())));
                }
                Ok(body)
            }
            // The registry ignored the Range header and sent the whole blob.
            StatusCode::OK => {
                let body = read_body(&mut response, OP, key, len, true).await?;
                if body.len() as u64 != len {
                    self.forget_len(digest);
                    return Err(bad(format!(
                        "whole-blob reply has {} bytes, the blob has {len}",
                        body.len()
                    )));
                }
                Ok(body.slice(range.start as usize..range.end as usize))
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                self.forget_len(digest);
                Err(bad(format!("registry refused {spec} of a blob it said has {len} bytes")))
            }
            status => {
                let body = read_body(&mut response, OP, key, 4096, false).await.unwrap_or_default();
                Err(status_error(OP, key, status, &String::from_utf8_lossy(&body)))
            }
        }
    }

    async fn put_blob(&self, key: &str, digest: &Digest, data: Bytes) -> StoreResult<()> {
        const OP: &str = "put";
        let hashed = data.clone();
        let actual =
            tokio::task::spawn_blocking(move || Digest::of(&hashed)).await.map_err(|e| {
                StoreError::Other { op: OP, key: key.to_string(), message: e.to_string() }
            })?;
        if actual != *digest {
            return Err(StoreError::InvalidKey {
                key: key.to_string(),
                reason: format!("data hashes to {actual}, not to the key's digest"),
            });
        }
        match self.blob_len(OP, key, digest).await {
            Ok(len) if len == data.len() as u64 => return Ok(()),
            Ok(_) => self.forget_len(digest),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let reference = self.reference("latest");
        let digest_str = digest.to_string();
        self.oci_call(OP, key, RegistryOperation::Push, || {
            self.client.push_blob(&reference, data.clone(), &digest_str)
        })
        .await?;
        if let Ok(mut cache) = self.lens.lock() {
            cache.put(*digest, data.len() as u64);
        }
        Ok(())
    }

    /// A blob from a file: skipped when the registry has it, else a chunked upload (`POST`, a
    /// `PATCH` per [`super::PUT_PIECE`], `PUT ?digest=`); a registry that refuses the first
    /// `PATCH` gets one monolithic `PUT` whose body streams from the file. The registry checks
    /// the digest when the upload closes (the caller computed it while writing the file).
    async fn put_blob_file(
        &self,
        key: &str,
        digest: &Digest,
        file: &std::fs::File,
        len: u64,
    ) -> StoreResult<()> {
        const OP: &str = "put_file";
        match self.blob_len(OP, key, digest).await {
            Ok(have) if have == len => return Ok(()),
            Ok(_) => self.forget_len(digest),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let location = self.start_upload(OP, key).await?;
        let location = match self.patch_pieces(OP, key, location, file, len).await? {
            Chunked::Sent(location) => location,
            Chunked::Refused(why) => {
                tracing::debug!(key, why, "registry refused a chunked upload; sending one PUT");
                let location = self.start_upload(OP, key).await?;
                let file =
                    std::sync::Arc::new(file.try_clone().map_err(|source| StoreError::Io {
                        op: OP,
                        key: key.to_string(),
                        source,
                    })?);
                let url = with_digest(&location, digest);
                let key_owned = key.to_string();
                let response = self
                    .send(OP, key, RegistryOperation::Push, || {
                        let body =
                            reqwest::Body::wrap_stream(file_stream(file.clone(), len, &key_owned));
                        self.http
                            .put(&url)
                            .header(header::CONTENT_TYPE, "application/octet-stream")
                            .header(header::CONTENT_LENGTH, len)
                            .body(body)
                    })
                    .await?;
                return self.upload_closed(OP, key, digest, len, response).await;
            }
        };
        let url = with_digest(&location, digest);
        let response = self
            .send(OP, key, RegistryOperation::Push, || {
                self.http.put(&url).header(header::CONTENT_LENGTH, 0)
            })
            .await?;
        self.upload_closed(OP, key, digest, len, response).await
    }

    /// `POST …/blobs/uploads/`: the upload's location.
    async fn start_upload(&self, op: &'static str, key: &str) -> StoreResult<String> {
        let url = format!("{}/blobs/uploads/", self.base);
        let mut response = self
            .send(op, key, RegistryOperation::Push, || {
                self.http.post(&url).header(header::CONTENT_LENGTH, 0)
            })
            .await?;
        let status = response.status();
        if status != StatusCode::ACCEPTED {
            let body = read_body(&mut response, op, key, 4096, false).await.unwrap_or_default();
            return Err(status_error(op, key, status, &String::from_utf8_lossy(&body)));
        }
        self.location(op, key, &response)
    }

    /// Sends `file` in pieces to the upload at `location`.
    async fn patch_pieces(
        &self,
        op: &'static str,
        key: &str,
        mut location: String,
        file: &std::fs::File,
        len: u64,
    ) -> StoreResult<Chunked> {
        for (offset, n) in super::pieces(len) {
            let piece = super::read_piece(op, key, file, offset, n).await?;
            let range = format!("{offset}-{}", offset + n - 1);
            let url = location.clone();
            let mut response = self
                .send(op, key, RegistryOperation::Push, || {
                    self.http
                        .patch(&url)
                        .header(header::CONTENT_TYPE, "application/octet-stream")
                        .header(header::CONTENT_RANGE, range.clone())
                        .header(header::CONTENT_LENGTH, n)
                        .body(piece.clone())
                })
                .await?;
            let status = response.status();
            if status == StatusCode::ACCEPTED {
                location = self.location(op, key, &response)?;
                continue;
            }
            let body = read_body(&mut response, op, key, 4096, false).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&body);
            // Registries without chunked uploads answer the first PATCH with one of these.
            if offset == 0 && matches!(status.as_u16(), 400 | 404 | 405 | 411 | 413 | 416 | 501) {
                return Ok(Chunked::Refused(format!("PATCH: HTTP {status}: {text}")));
            }
            return Err(status_error(op, key, status, &text));
        }
        Ok(Chunked::Sent(location))
    }

    /// The final reply of an upload: `201` and the blob is there.
    async fn upload_closed(
        &self,
        op: &'static str,
        key: &str,
        digest: &Digest,
        len: u64,
        mut response: Response,
    ) -> StoreResult<()> {
        let status = response.status();
        if status == StatusCode::CREATED {
            if let Ok(mut cache) = self.lens.lock() {
                cache.put(*digest, len);
            }
            return Ok(());
        }
        let body = read_body(&mut response, op, key, 4096, false).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        if status == StatusCode::BAD_REQUEST && text.contains("DIGEST_INVALID") {
            return Err(StoreError::InvalidKey {
                key: key.to_string(),
                reason: format!(
                    "the registry says the data does not hash to the key's digest: {text}"
                ),
            });
        }
        Err(status_error(op, key, status, &text))
    }

    /// The absolute URL of a reply's `Location` (registries may send a path).
    fn location(&self, op: &'static str, key: &str, response: &Response) -> StoreResult<String> {
        let value =
            response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(
                || StoreError::BadReply {
                    op,
                    key: key.to_string(),
                    message: format!("HTTP {} without a valid Location", response.status()),
                },
            )?;
        let base = url::Url::parse(&self.base).map_err(|e| StoreError::Other {
            op,
            key: key.to_string(),
            message: format!("bad base URL: {e}"),
        })?;
        base.join(value).map(String::from).map_err(|e| StoreError::BadReply {
            op,
            key: key.to_string(),
            message: format!("Location {value:?}: {e}"),
        })
    }

    async fn put_manifest(&self, key: &str, reference: &str, data: Bytes) -> StoreResult<()> {
        const OP: &str = "put";
        let invalid = |reason: String| StoreError::InvalidKey { key: key.to_string(), reason };
        #[derive(serde::Deserialize)]
        struct Typed {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
        }
        let typed: Typed = serde_json::from_slice(&data)
            .map_err(|e| invalid(format!("data is not a JSON manifest: {e}")))?;
        let media_type = typed.media_type.unwrap_or_else(|| DEFAULT_MANIFEST_TYPE.to_string());
        let content_type = HeaderValue::from_str(&media_type)
            .map_err(|_| invalid(format!("mediaType {media_type:?} is not a valid header")))?;
        if let Ok(want) = reference.parse::<Digest>() {
            let actual = Digest::of(&data);
            if actual != want {
                return Err(invalid(format!(
                    "manifest hashes to {actual}, not to the key's digest"
                )));
            }
        }
        let url = self.target_url(&Target::Manifest(reference.to_string()));
        let mut response = self
            .send(OP, key, RegistryOperation::Push, || {
                self.http
                    .put(&url)
                    .header(header::CONTENT_TYPE, content_type.clone())
                    .body(data.clone())
            })
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = read_body(&mut response, OP, key, 4096, false).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        if status == StatusCode::BAD_REQUEST {
            // The registry refused the manifest itself (invalid, or it names missing blobs).
            return Err(StoreError::Other {
                op: OP,
                key: key.to_string(),
                message: format!("registry refused the manifest: {text}"),
            });
        }
        Err(status_error(OP, key, status, &text))
    }

    async fn list_tags(&self, prefix: &str, tag_prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        const OP: &str = "list";
        let reference = self.reference("latest");
        let listed = self
            .oci_call(OP, prefix, RegistryOperation::Pull, || {
                self.client.list_tags(&reference, &self.creds, None, None)
            })
            .await;
        let tags = match listed {
            Ok(response) => response.tags,
            // A repository nobody pushed to yet holds no objects.
            Err(StoreError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut tags: Vec<String> =
            tags.into_iter().filter(|t| t.starts_with(tag_prefix) && is_tag(t)).collect();
        tags.sort();
        tags.dedup();
        let metas: Vec<ObjectMeta> = futures::stream::iter(tags)
            .map(|tag| async move {
                let key = format!("manifests/{tag}");
                let body = self.get_manifest(OP, &key, &tag).await?;
                Ok::<_, StoreError>(ObjectMeta { key, len: body.len() as u64, mtime: None })
            })
            .buffered(LIST_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(metas)
    }
}

#[async_trait]
impl Store for OciStore {
    fn url(&self) -> String {
        self.url.clone()
    }

    async fn stat(&self, key: &str) -> StoreResult<ObjectMeta> {
        let len = match parse_key(key)? {
            Target::Blob(digest) => self.blob_len("stat", key, &digest).await?,
            Target::Manifest(reference) => {
                self.get_manifest("stat", key, &reference).await?.len() as u64
            }
        };
        Ok(ObjectMeta { key: key.to_string(), len, mtime: None })
    }

    async fn read_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        match parse_key(key)? {
            Target::Blob(digest) => self.read_blob(key, &digest, range).await,
            Target::Manifest(reference) => {
                let body = self.get_manifest("read_range", key, &reference).await?;
                let range = clamp_range(range, body.len() as u64);
                Ok(body.slice(range.start as usize..range.end as usize))
            }
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        match parse_key(key)? {
            Target::Blob(digest) => self.put_blob(key, &digest, data).await,
            Target::Manifest(reference) => self.put_manifest(key, &reference, data).await,
        }
    }

    async fn put_file(&self, key: &str, file: &std::fs::File, len: u64) -> StoreResult<()> {
        match parse_key(key)? {
            Target::Blob(digest) => self.put_blob_file(key, &digest, file, len).await,
            // Manifests are small: read whole, sent as `put` sends them.
            Target::Manifest(reference) => {
                let data = super::read_piece("put_file", key, file, 0, len).await?;
                self.put_manifest(key, &reference, data).await
            }
        }
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        if let Some(tag_prefix) = prefix.strip_prefix("manifests/") {
            return self.list_tags(prefix, tag_prefix).await;
        }
        if "blobs/".starts_with(prefix) || prefix.starts_with("blobs/") {
            // The prefix covers blobs (or is empty): a registry cannot enumerate them.
            return Err(StoreError::Unsupported { op: "list", key: prefix.to_string() });
        }
        if "manifests/".starts_with(prefix) {
            return self.list_tags(prefix, "").await;
        }
        Ok(Vec::new())
    }
}

/// How a chunked upload went.
enum Chunked {
    /// Every piece is in; the upload is at this location.
    Sent(String),
    /// The registry refused the first piece: why.
    Refused(String),
}

/// `location` with the `digest` query parameter that closes an upload.
fn with_digest(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// Bytes `0..len` of `file` as a body stream, one [`super::PUT_PIECE`] at a time.
fn file_stream(
    file: std::sync::Arc<std::fs::File>,
    len: u64,
    key: &str,
) -> impl futures::Stream<Item = StoreResult<Bytes>> + Send + 'static {
    let key = key.to_string();
    futures::stream::iter(super::pieces(len)).then(move |(offset, n)| {
        let (file, key) = (file.clone(), key.clone());
        async move { super::read_piece("put_file", &key, &file, offset, n).await }
    })
}

/// Splits `docker://host[:port]/repo[/path]` into `host[:port]` and the repository.
fn split_url(url: &str) -> StoreResult<(String, String)> {
    let bad =
        |reason: &str| StoreError::InvalidKey { key: url.to_string(), reason: reason.to_string() };
    let rest = url
        .strip_prefix("docker://")
        .or_else(|| url.strip_prefix("oci://"))
        .ok_or_else(|| bad("expected docker://host[:port]/repository"))?;
    let (registry, repository) =
        rest.split_once('/').ok_or_else(|| bad("no repository: expected docker://host/repo"))?;
    let repository = repository.trim_end_matches('/');
    if registry.is_empty() || registry.contains(['@', '?', '#', ' ']) {
        return Err(bad("bad registry host"));
    }
    if !is_repository(repository) {
        return Err(bad(
            "bad repository name: lower-case letters, digits and . _ - between '/'-separated parts",
        ));
    }
    Ok((registry.to_ascii_lowercase(), repository.to_string()))
}

/// Credentials for `registry`: the environment first, then the docker config (its credential
/// helpers included), else anonymous.
fn credentials_for(registry: &str) -> RegistryAuth {
    if let (Ok(user), Ok(pass)) = (std::env::var(USER_ENV), std::env::var(PASSWORD_ENV)) {
        return RegistryAuth::Basic(user, pass);
    }
    let path = match (std::env::var_os("DOCKER_CONFIG"), std::env::var_os("HOME")) {
        (Some(dir), _) => std::path::PathBuf::from(dir).join("config.json"),
        (None, Some(home)) => std::path::PathBuf::from(home).join(".docker/config.json"),
        (None, None) => return RegistryAuth::Anonymous,
    };
    match std::fs::read(&path) {
        Ok(text) => docker_config_auth(&text, registry, &|helper, server| {
            let mut get = std::process::Command::new(format!("docker-credential-{helper}"));
            get.arg("get");
            run_credential_helper(get, server)
        })
        .unwrap_or(RegistryAuth::Anonymous),
        Err(_) => RegistryAuth::Anonymous,
    }
}

/// How long a credential helper may take (some ask a keychain daemon; none should take long).
const CREDENTIAL_HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `get` (`docker-credential-NAME get`) with `server` on stdin, as docker does, and returns
/// its `Username` and `Secret`. `None` (logged) when it fails, times out, has nothing for
/// `server`, or answers with an identity token (`Username` `<token>`: an OAuth refresh token,
/// not a password).
fn run_credential_helper(mut get: std::process::Command, server: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let program = get.get_program().to_string_lossy().into_owned();
    let program = program.as_str();
    let mut child =
        match get.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(program, error = %e, "cannot run the docker credential helper");
                return None;
            }
        };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < CREDENTIAL_HELPER_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!(program, server, "docker credential helper timed out");
                return None;
            }
        }
    };
    let mut out = String::new();
    let _ = child.stdout.take()?.read_to_string(&mut out);
    if !status.success() {
        let mut err = String::new();
        let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
        // "credentials not found in native keychain": anonymous is the answer.
        tracing::debug!(program, server, %status, stderr = %err.trim(), "no credentials");
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Reply {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let reply: Reply = match serde_json::from_str(&out) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(program, server, error = %e, "unreadable credential helper reply");
            return None;
        }
    };
    if reply.username == "<token>" {
        tracing::warn!(
            program,
            server,
            "identity tokens from credential helpers are not supported"
        );
        return None;
    }
    Some((reply.username, reply.secret))
}

/// Asks credential helper `NAME` for `SERVER`'s user and secret.
type CredentialHelper<'a> = dyn Fn(&str, &str) -> Option<(String, String)> + 'a;

/// The Basic credentials a docker `config.json` holds for `registry`, in docker's order: the
/// helper named in `credHelpers.<host>`, else the `credsStore` helper, else `auths.<host>`
/// (`auth`, the base64 of `user:password`, or `username`/`password`). `helper(NAME, SERVER)`
/// runs `docker-credential-NAME get` for the server address as the config spells it.
fn docker_config_auth(
    text: &[u8],
    registry: &str,
    helper: &CredentialHelper<'_>,
) -> Option<RegistryAuth> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: std::collections::HashMap<String, Entry>,
        #[serde(default, rename = "credHelpers")]
        cred_helpers: std::collections::HashMap<String, String>,
        #[serde(default, rename = "credsStore")]
        creds_store: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let config: Config = serde_json::from_slice(text).ok()?;
    let names = [registry.to_string(), format!("https://{registry}"), format!("http://{registry}")];
    let basic = |(user, pass): (String, String)| RegistryAuth::Basic(user, pass);
    if let Some((server, name)) =
        names.iter().find_map(|k| config.cred_helpers.get(k).map(|h| (k, h)))
    {
        return helper(name, server).map(basic);
    }
    if let Some(store) = config.creds_store.as_deref().filter(|s| !s.is_empty()) {
        // The address the helper stored it under: as `auths` spells it if listed there.
        let server = names.iter().find(|k| config.auths.contains_key(*k)).unwrap_or(&names[0]);
        if let Some(found) = helper(store, server) {
            return Some(basic(found));
        }
    }
    let entry = names.iter().find_map(|k| config.auths.get(k))?;
    if let (Some(user), Some(pass)) = (&entry.username, &entry.password) {
        return Some(RegistryAuth::Basic(user.clone(), pass.clone()));
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(entry.auth.as_ref()?).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some(RegistryAuth::Basic(user.to_string(), pass.to_string()))
}

fn authorize(request: RequestBuilder, credential: &Credential) -> RequestBuilder {
    match credential {
        Credential::None => request,
        Credential::Bearer(value) => request.header(header::AUTHORIZATION, value.clone()),
        Credential::Basic(user, pass) => request.basic_auth(user, Some(pass)),
    }
}

/// Reads a body of at most `limit` bytes; more is a bad reply (when `strict`) or cut off.
async fn read_body(
    response: &mut Response,
    op: &'static str,
    key: &str,
    limit: u64,
    strict: bool,
) -> StoreResult<Bytes> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| request_error(op, key, &e))? {
        if (buf.len() + chunk.len()) as u64 > limit {
            if strict {
                return Err(StoreError::BadReply {
                    op,
                    key: key.to_string(),
                    message: format!("reply body longer than the {limit} bytes expected"),
                });
            }
            let room = (limit as usize).saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..room.min(chunk.len())]);
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn header_u64(response: &Response, name: header::HeaderName) -> Option<u64> {
    response.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Parses `bytes START-END/TOTAL` (TOTAL may be `*`).
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, end.trim().parse().ok()?, total))
}

/// Classifies an HTTP status that is not the success the caller wanted.
fn status_error(op: &'static str, key: &str, status: StatusCode, body: &str) -> StoreError {
    let key = key.to_string();
    let message = if body.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", body.trim().chars().take(300).collect::<String>())
    };
    match status.as_u16() {
        404 => StoreError::NotFound { key },
        401 | 403 => StoreError::Unauthorized { op, key, message },
        408 | 429 | 500..=599 => StoreError::Transient { op, key, message },
        400..=499 => StoreError::Other { op, key, message },
        _ => StoreError::BadReply { op, key, message },
    }
}

fn request_error(op: &'static str, key: &str, error: &reqwest::Error) -> StoreError {
    let key = key.to_string();
    // The whole chain: reqwest's own message alone hides the cause (refused, reset, …).
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if let Some(status) = error.status() {
        return status_error(op, &key, status, "");
    }
    if error.is_builder() {
        return StoreError::Other { op, key, message };
    }
    // Connect, timeout, reset mid-body, redirect loops: all may pass.
    StoreError::Transient { op, key, message }
}

fn is_unauthorized(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::UnauthorizedError { .. } => true,
        OciDistributionError::ServerError { code, .. } => *code == 401,
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|e| e.code == OciErrorCode::Unauthorized)
        }
        OciDistributionError::RequestError(e) => e.status() == Some(StatusCode::UNAUTHORIZED),
        _ => false,
    }
}

/// Classifies an oci-client failure.
fn oci_error(op: &'static str, key: &str, error: OciDistributionError) -> StoreError {
    use OciDistributionError as E;
    let message = error.to_string();
    let key_s = key.to_string();
    match error {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => {
            StoreError::Unauthorized { op, key: key_s, message }
        }
        E::RequestError(e) => request_error(op, key, &e),
        E::ServerError { code, message: body, .. } => match StatusCode::from_u16(code) {
            Ok(status) => status_error(op, key, status, &body),
            Err(_) => StoreError::BadReply { op, key: key_s, message },
        },
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let any = |want: &[OciErrorCode]| codes.iter().any(|c| want.contains(c));
            if any(&[
                OciErrorCode::BlobUnknown,
                OciErrorCode::ManifestUnknown,
                OciErrorCode::NameUnknown,
                OciErrorCode::NotFound,
            ]) {
                StoreError::NotFound { key: key_s }
            } else if any(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                StoreError::Unauthorized { op, key: key_s, message }
            } else if any(&[OciErrorCode::Toomanyrequests]) {
                StoreError::Transient { op, key: key_s, message }
            } else if any(&[OciErrorCode::DigestInvalid, OciErrorCode::SizeInvalid]) {
                // We checked the digest before sending, so the bytes changed on the way.
                StoreError::BadReply { op, key: key_s, message }
            } else {
                StoreError::Other { op, key: key_s, message }
            }
        }
        E::IoError(_) => StoreError::Transient { op, key: key_s, message },
        E::DigestError(_)
        | E::HeaderValueError(_)
        | E::JsonError(_)
        | E::ManifestEncodingError(_)
        | E::ManifestParsingError(_)
        | E::RegistryNoDigestError
        | E::RegistryNoLocationError
        | E::RegistryTokenDecodeError(_)
        | E::SpecViolationError(_)
        | E::UnsupportedMediaTypeError(_)
        | E::UnsupportedSchemaVersionError(_)
        | E::VersionedParsingError(_)
        | E::UrlParseError(_) => StoreError::BadReply { op, key: key_s, message },
        E::ConfigConversionError(_)
        | E::GenericError(_)
        | E::ImageManifestNotFoundError(_)
        | E::ImageIndexParsingNoPlatformResolverError
        | E::IncompatibleLayerMediaTypeError(_)
        | E::PushNoDataError
        | E::PushLayerNoDataError
        | E::PullNoLayersError => StoreError::Other { op, key: key_s, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_blobs_and_manifests() {
        let hex = "ab".repeat(32);
        assert!(matches!(parse_key(&format!("blobs/sha256:{hex}")), Ok(Target::Blob(_))));
        assert!(
            matches!(parse_key("manifests/v1.0_x-y"), Ok(Target::Manifest(t)) if t == "v1.0_x-y")
        );
        assert!(matches!(
            parse_key(&format!("manifests/sha256:{hex}")),
            Ok(Target::Manifest(t)) if t == format!("sha256:{hex}")
        ));
        for bad in [
            "blobs/sha256:zz".to_string(),
            "blobs/md5:00".into(),
            format!("blobs/sha256:{}", "AB".repeat(32)),
            "manifests/.hidden".into(),
            "manifests/a/b".into(),
            format!("manifests/{}", "x".repeat(129)),
            "refs/latest".into(),
            "".into(),
            "blobs/../x".into(),
        ] {
            assert!(
                matches!(parse_key(&bad), Err(StoreError::InvalidKey { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn registry_lists_split_on_commas_and_drop_blanks() {
        assert_eq!(
            parse_registry_list(" reg.lan:5000, ,10.0.0.7 ,"),
            vec!["reg.lan:5000".to_string(), "10.0.0.7".to_string()]
        );
        assert!(parse_registry_list("").is_empty());
    }

    #[test]
    fn urls_schemes_and_repositories() {
        let s =
            OciStore::open_with_auth("docker://127.0.0.1:5000/a/b", &[], RegistryAuth::Anonymous)
                .expect("open");
        assert_eq!(s.base, "http://127.0.0.1:5000/v2/a/b");
        let s = OciStore::open_with_auth("oci://localhost/x", &[], RegistryAuth::Anonymous)
            .expect("open");
        assert_eq!(s.base, "http://localhost/v2/x");
        let s = OciStore::open_with_auth("docker://[::1]:80/x", &[], RegistryAuth::Anonymous)
            .expect("open");
        assert!(s.base.starts_with("http://[::1]:80/"), "{}", s.base);
        let s =
            OciStore::open_with_auth("docker://reg.example:5000/x", &[], RegistryAuth::Anonymous)
                .expect("open");
        assert!(s.base.starts_with("https://"));
        for insecure in ["reg.example:5000", "reg.example"] {
            let s = OciStore::open_with_auth(
                "docker://reg.example:5000/x",
                &[insecure.to_string()],
                RegistryAuth::Anonymous,
            )
            .expect("open");
            assert!(s.base.starts_with("http://"), "{insecure}");
        }
        for bad in
            ["docker://host", "docker:///repo", "docker://h/Upper", "docker://h/a//b", "file:///x"]
        {
            assert!(
                OciStore::open_with_auth(bad, &[], RegistryAuth::Anonymous).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 9, Some(100))));
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        for bad in ["", "bytes", "bytes x-1/2", "items 0-1/2", "bytes 0-1"] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn docker_config_credentials() {
        let text = br#"{"auths":{"reg:5000":{"auth":"dXNlcjpwYTpzcw=="},
            "https://other":{"username":"u","password":"p"}}}"#;
        let no_helper =
            |_: &str, _: &str| -> Option<(String, String)> { panic!("no helper is configured") };
        assert!(matches!(
            docker_config_auth(text, "reg:5000", &no_helper),
            Some(RegistryAuth::Basic(u, p)) if u == "user" && p == "pa:ss"
        ));
        assert!(matches!(
            docker_config_auth(text, "other", &no_helper),
            Some(RegistryAuth::Basic(u, p)) if u == "u" && p == "p"
        ));
        assert!(docker_config_auth(text, "nope", &no_helper).is_none());
        assert!(docker_config_auth(b"not json", "reg:5000", &no_helper).is_none());
    }

    /// Issue 10 item 10: `credHelpers` and `credsStore` are asked, in docker's order.
    #[test]
    fn docker_credential_helpers_are_asked() {
        let text = br#"{"credsStore":"desktop",
            "credHelpers":{"ecr.example":"ecr-login"},
            "auths":{"https://stored":{},"plain":{"auth":"YTpi"}}}"#;
        let asked = std::sync::Mutex::new(Vec::new());
        let helper = |name: &str, server: &str| {
            asked.lock().expect("lock").push(format!("{name} {server}"));
            (server != "plain").then(|| (format!("{name}-user"), format!("secret for {server}")))
        };
        let basic = |registry: &str| match docker_config_auth(text, registry, &helper) {
            Some(RegistryAuth::Basic(u, p)) => Some(format!("{u}:{p}")),
            _ => None,
        };
        assert_eq!(basic("ecr.example").as_deref(), Some("ecr-login-user:secret for ecr.example"));
        assert_eq!(basic("stored").as_deref(), Some("desktop-user:secret for https://stored"));
        // The store has nothing for it: the auths entry answers.
        assert_eq!(basic("plain").as_deref(), Some("a:b"));
        assert_eq!(
            *asked.lock().expect("lock"),
            ["ecr-login ecr.example", "desktop https://stored", "desktop plain"]
        );
    }

    /// The helper protocol itself, through a real process: `get` with the server on stdin, a
    /// JSON reply; a failing helper, an identity token or a missing helper give no credentials.
    #[test]
    fn a_credential_helper_process_is_run_as_docker_runs_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Run through sh, not exec'd: exec of a file just written can fail with ETXTBSY while
        // another test thread forks.
        let script = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("{body}\n")).expect("write");
            let mut get = std::process::Command::new("/bin/sh");
            get.arg(path).arg("get");
            get
        };
        let good = script(
            "good",
            r#"[ "$1" = get ] || exit 3; read server; printf '{"ServerURL":"%s","Username":"u-%s","Secret":"s3cret"}' "$server" "$server""#,
        );
        assert_eq!(
            run_credential_helper(good, "reg:5000"),
            Some(("u-reg:5000".to_string(), "s3cret".to_string()))
        );
        let missing = script("missing", "echo 'credentials not found in native keychain'; exit 1");
        assert_eq!(run_credential_helper(missing, "reg:5000"), None);
        let token = script("token", r#"echo '{"Username":"<token>","Secret":"refresh"}'"#);
        assert_eq!(run_credential_helper(token, "reg:5000"), None);
        let absent = std::process::Command::new("/nonexistent/docker-credential-x");
        assert_eq!(run_credential_helper(absent, "reg"), None);
    }

    #[test]
    fn statuses_classify() {
        let c = |s: u16| status_error("op", "k", StatusCode::from_u16(s).expect("status"), "");
        assert!(matches!(c(404), StoreError::NotFound { .. }));
        assert!(matches!(c(401), StoreError::Unauthorized { .. }));
        assert!(matches!(c(403), StoreError::Unauthorized { .. }));
        assert!(c(429).is_retryable() && c(503).is_retryable() && c(500).is_retryable());
        assert!(matches!(c(400), StoreError::Other { .. }));
        assert!(matches!(c(302), StoreError::BadReply { .. }));
    }

    /// A fake registry with a bearer-token server whose tokens can be expired at will: enough of
    /// the protocol to show that an expired token mid-read renews instead of failing.
    mod token_expiry {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpListener;

        use super::*;

        #[derive(Default)]
        struct Fake {
            /// Tokens handed out so far; token `n` is `tok-n`.
            issued: AtomicU64,
            /// Tokens below this number are expired.
            min_valid: AtomicU64,
            /// The token server refuses everyone.
            deny: AtomicBool,
        }

        impl Fake {
            fn expire_all(&self) {
                self.min_valid.store(self.issued.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
            }

            fn answer(&self, head: &str, data: &[u8], port: u16) -> Vec<u8> {
                let mut lines = head.lines();
                let mut first = lines.next().unwrap_or_default().split(' ');
                let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                    })
                };
                let challenge = format!(
                    "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\"\r\n"
                );
                let reply = |status: &str, extra: &str, body: &[u8]| {
                    let mut out = format!(
                        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    if method != "HEAD" {
                        out.extend_from_slice(body);
                    }
                    out
                };
                if path == "/v2/" {
                    return reply("401 Unauthorized", &challenge, b"");
                }
                if path.starts_with("/token") {
                    if self.deny.load(Ordering::SeqCst) {
                        return reply("401 Unauthorized", "", b"denied");
                    }
                    let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
                    return reply("200 OK", "", format!("{{\"token\":\"tok-{n}\"}}").as_bytes());
                }
                let token_ok = header("authorization")
                    .and_then(|v| v.strip_prefix("Bearer tok-")?.parse::<u64>().ok())
                    .is_some_and(|n| n >= self.min_valid.load(Ordering::SeqCst));
                if !token_ok {
                    return reply("401 Unauthorized", &challenge, b"");
                }
                if !path.starts_with("/v2/repo/blobs/") {
                    return reply("404 Not Found", "", b"");
                }
                if method == "HEAD" {
                    let len = data.len();
                    return format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes();
                }
                let range = header("range")
                    .and_then(|r| {
                        let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
                        Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
                    })
                    .filter(|(a, b)| a <= b && *b < data.len());
                match range {
                    Some((a, b)) => reply(
                        "206 Partial Content",
                        &format!("Content-Range: bytes {a}-{b}/{}\r\n", data.len()),
                        &data[a..=b],
                    ),
                    None => reply("200 OK", "", data),
                }
            }
        }

        async fn serve(fake: Arc<Fake>, data: Bytes) -> u16 {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let (fake, data) = (fake.clone(), data.clone());
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.ends_with(b"\r\n\r\n") {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let answer = fake.answer(&String::from_utf8_lossy(&head), &data, port);
                        let _ = conn.write_all(&answer).await;
                    });
                }
            });
            port
        }

        #[tokio::test]
        async fn expired_token_mid_read_renews_once() {
            let fake = Arc::new(Fake::default());
            let data = Bytes::from((0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
            let port = serve(fake.clone(), data.clone()).await;
            let store = Arc::new(
                OciStore::open_with_auth(
                    &format!("docker://127.0.0.1:{port}/repo"),
                    &[],
                    RegistryAuth::Anonymous,
                )
                .expect("open"),
            );
            let key = format!("blobs/{}", Digest::of(&data));

            assert_eq!(store.read_range(&key, 0..10).await.expect("first read"), data.slice(0..10));
            assert_eq!(fake.issued.load(Ordering::SeqCst), 1);

            fake.expire_all();
            let got = store.read_range(&key, 500..1500).await.expect("read after expiry");
            assert_eq!(got, data.slice(500..1500));
            assert_eq!(fake.issued.load(Ordering::SeqCst), 2, "one re-authentication");

            // Many readers meet the expired token at once: one renewal serves them all.
            fake.expire_all();
            let reads = (0..8u64).map(|i| {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move { store.read_range(&key, i * 1000..i * 1000 + 10).await })
            });
            for (i, read) in reads.enumerate() {
                let got = read.await.expect("join").expect("concurrent read after expiry");
                assert_eq!(got, data.slice(i * 1000..i * 1000 + 10));
            }
            assert_eq!(fake.issued.load(Ordering::SeqCst), 3, "one shared re-authentication");

            // Expired, and the token server now refuses: a typed error, no retry loop.
            fake.deny.store(true, Ordering::SeqCst);
            fake.expire_all();
            let err = store.read_range(&key, 0..10).await.expect_err("refused token");
            assert!(matches!(err, StoreError::Unauthorized { .. }), "{err}");
        }
    }

    /// `put_file` against a fake registry: a chunked upload in PATCH pieces, and the one
    /// streamed PUT when the registry refuses PATCH.
    mod upload {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpListener;

        use super::*;
        use crate::store::PUT_PIECE;

        #[derive(Default)]
        struct Fake {
            refuse_patch: AtomicBool,
            patches: AtomicUsize,
            puts: AtomicUsize,
            received: Mutex<Vec<u8>>,
            stored: Mutex<Option<(String, Vec<u8>)>>,
        }

        impl Fake {
            fn answer(&self, method: &str, path: &str, body: &[u8]) -> String {
                let reply = |status: &str, extra: &str| {
                    format!(
                        "HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                };
                let upload = "Location: /v2/repo/blobs/uploads/u1\r\n";
                match method {
                    "GET" if path == "/v2/" => reply("200 OK", ""),
                    "HEAD" => reply("404 Not Found", ""),
                    "POST" => {
                        self.received.lock().expect("lock").clear();
                        reply("202 Accepted", upload)
                    }
                    "PATCH" if self.refuse_patch.load(Ordering::SeqCst) => {
                        self.patches.fetch_add(1, Ordering::SeqCst);
                        reply("405 Method Not Allowed", "")
                    }
                    "PATCH" => {
                        self.patches.fetch_add(1, Ordering::SeqCst);
                        self.received.lock().expect("lock").extend_from_slice(body);
                        reply("202 Accepted", upload)
                    }
                    "PUT" => {
                        self.puts.fetch_add(1, Ordering::SeqCst);
                        let mut all = self.received.lock().expect("lock").clone();
                        all.extend_from_slice(body);
                        let digest = path.split_once("digest=").map_or("", |(_, d)| d);
                        if Digest::of(&all).to_string() != digest {
                            return reply("400 Bad Request", "");
                        }
                        *self.stored.lock().expect("lock") = Some((digest.to_string(), all));
                        reply("201 Created", "")
                    }
                    _ => reply("404 Not Found", ""),
                }
            }
        }

        async fn serve(fake: Arc<Fake>) -> u16 {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let fake = fake.clone();
                    tokio::spawn(async move {
                        let mut data = Vec::new();
                        let mut buf = vec![0u8; 64 << 10];
                        let end = loop {
                            if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                                break at + 4;
                            }
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => data.extend_from_slice(&buf[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&data[..end]).to_string();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0usize);
                        while data.len() < end + len {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => data.extend_from_slice(&buf[..n]),
                            }
                        }
                        let mut first = head.lines().next().unwrap_or_default().split(' ');
                        let (method, path) =
                            (first.next().unwrap_or(""), first.next().unwrap_or(""));
                        let answer = fake.answer(method, path, &data[end..end + len]);
                        let _ = conn.write_all(answer.as_bytes()).await;
                    });
                }
            });
            port
        }

        async fn put_via(fake: &Arc<Fake>, data: &[u8]) -> StoreResult<()> {
            let port = serve(fake.clone()).await;
            let store = OciStore::open_with_auth(
                &format!("docker://127.0.0.1:{port}/repo"),
                &[],
                RegistryAuth::Anonymous,
            )
            .expect("open");
            let mut file = crate::layer::blob::temp_file(&std::env::temp_dir()).expect("tmp");
            std::io::Write::write_all(&mut file, data).expect("write");
            store.put_file(&format!("blobs/{}", Digest::of(data)), &file, data.len() as u64).await
        }

        fn data() -> Vec<u8> {
            (0..2 * PUT_PIECE + 1000).map(|i| (i % 251) as u8).collect()
        }

        #[tokio::test]
        async fn chunked_in_pieces() {
            let fake = Arc::new(Fake::default());
            let data = data();
            put_via(&fake, &data).await.expect("put_file");
            assert_eq!(fake.patches.load(Ordering::SeqCst), 3, "one PATCH per piece");
            assert_eq!(fake.puts.load(Ordering::SeqCst), 1);
            let stored = fake.stored.lock().expect("lock").clone().expect("stored");
            assert!(stored.1 == data && stored.0 == Digest::of(&data).to_string());
        }

        #[tokio::test]
        async fn refused_patch_falls_back_to_one_streamed_put() {
            let fake = Arc::new(Fake::default());
            fake.refuse_patch.store(true, Ordering::SeqCst);
            let data = data();
            put_via(&fake, &data).await.expect("put_file");
            assert_eq!(fake.patches.load(Ordering::SeqCst), 1, "gives up on PATCH at once");
            assert_eq!(fake.puts.load(Ordering::SeqCst), 1);
            let stored = fake.stored.lock().expect("lock").clone().expect("stored");
            assert!(stored.1 == data, "the monolithic PUT carried the whole file");
        }
    }
}
