//! The `swift://` store: OpenStack Swift over its HTTP API.
//!
//! Objects are named exactly as WAL-E names them, leading `/` included
//! (`swift://ctr/db1` → object `/db1/wal_005/…` in container `ctr`), so
//! archives WAL-E wrote are found and archives written here are readable by
//! WAL-E.
//!
//! Uploads stream the payload with chunked transfer encoding and compute its
//! MD5 on the way; Swift answers a complete PUT with the MD5 of what it
//! stored (`ETag`), and a mismatch fails the put as transient so that it is
//! retried. Swift makes an object visible only once its upload completed, so
//! an interrupted put leaves nothing behind.
//!
//! Large objects: every object WAL-E writes fits in one Swift object, so no
//! static large objects are needed. Swift's default single-object limit is
//! 5 GiB (`max_file_size` in `/info`). WAL segments are at most 1 GiB
//! (PostgreSQL's largest `wal_segment_size`); a tar partition holds at most
//! [`PARTITION_MAX_BYTES`] (1.5 GiB) of file data in at most
//! [`PARTITION_MAX_MEMBERS`] members (the assertion below bounds their tar
//! headers and padding), and lzop stores incompressible blocks raw (12 bytes
//! per 256 KiB block), GPG adds a few hundred bytes. The store still counts
//! the bytes of every upload and stops with a clear error before the
//! cluster's limit is crossed.

mod auth;

use std::io;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{
    CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH, LAST_MODIFIED,
    RANGE,
};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::{
    GetOptions, GetResult, Metadata, ObjectMeta, PutMode, PutOptions, PutPayload, Store,
    StoreError, metadata_from,
};
use crate::config::Env;
use crate::error::UserError;
use crate::layout::{PARTITION_MAX_BYTES, PARTITION_MAX_MEMBERS};

use auth::{AuthFailure, Authenticator, Session, error_chain};
pub use auth::{AuthVersion, Credentials, Interface};

/// Swift's default `max_file_size` (5 GiB + 2 bytes), used when the cluster
/// does not publish its own in `/info`.
const DEFAULT_MAX_FILE_SIZE: u64 = 5 * 1024 * 1024 * 1024 + 2;
/// The bulk middleware's default `max_deletes_per_request`.
const DEFAULT_MAX_BULK_DELETES: usize = 10_000;
/// Single deletes in flight when the cluster has no bulk delete.
const DELETE_CONCURRENCY: usize = 16;

// A tar partition, with generous room for every member's headers and padding
// (8 KiB each) and twice that again for compression and encryption overhead,
// fits in one Swift object.
const _: () = assert!(
    2 * (PARTITION_MAX_BYTES + PARTITION_MAX_MEMBERS as u64 * 8192) < DEFAULT_MAX_FILE_SIZE
);

/// Object and container names in URLs: everything but unreserved characters
/// and `/` is percent-encoded (python-swiftclient's `quote`).
const OBJECT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');
const SEGMENT: &AsciiSet = &OBJECT.add(b'/');

/// The `SWIFT_*` settings of one `swift://container/…` prefix.
#[derive(Debug, Clone)]
pub struct SwiftSettings {
    pub container: String,
    pub credentials: Credentials,
}

impl SwiftSettings {
    /// Reads WAL-E's Swift variables; the password only ever comes from the
    /// environment.
    pub fn from_env(container: &str, env: &dyn Env) -> Result<SwiftSettings, UserError> {
        let var = |name: &str| env.var(name).filter(|v| !v.is_empty());
        let missing = |name: &str, what: &str| {
            UserError::new(format!("{name} is not set"))
                .detail(format!("A swift:// prefix needs {what}."))
                .hint("Set SWIFT_AUTHURL, SWIFT_USER (or SWIFT_USER_ID for Keystone v3) and SWIFT_PASSWORD in the environment.")
        };
        let version = match var("SWIFT_AUTH_VERSION") {
            None => None,
            Some(raw) => Some(AuthVersion::parse(&raw).ok_or_else(|| {
                UserError::new("invalid value in SWIFT_AUTH_VERSION")
                    .detail(format!("SWIFT_AUTH_VERSION is set to {raw:?}."))
                    .hint("Use 1 (TempAuth and compatible), 2 (Keystone v2.0, the default) or 3 (Keystone v3).")
            })?),
        };
        let interface = match var("SWIFT_ENDPOINT_TYPE") {
            None => None,
            Some(raw) => Some(Interface::parse(&raw).ok_or_else(|| {
                UserError::new("invalid value in SWIFT_ENDPOINT_TYPE")
                    .detail(format!("SWIFT_ENDPOINT_TYPE is set to {raw:?}."))
                    .hint("Use publicURL (the default), internalURL or adminURL.")
            })?),
        };
        let credentials = Credentials {
            auth_url: var("SWIFT_AUTHURL")
                .ok_or_else(|| missing("SWIFT_AUTHURL", "the URL of the authentication service"))?,
            version,
            user: var("SWIFT_USER"),
            user_id: var("SWIFT_USER_ID"),
            password: var("SWIFT_PASSWORD")
                .ok_or_else(|| missing("SWIFT_PASSWORD", "the password of the Swift user"))?,
            project_name: var("SWIFT_PROJECT_NAME").or_else(|| var("SWIFT_TENANT")),
            project_id: var("SWIFT_PROJECT_ID").or_else(|| var("SWIFT_TENANT_ID")),
            user_domain_name: var("SWIFT_USER_DOMAIN_NAME"),
            user_domain_id: var("SWIFT_USER_DOMAIN_ID"),
            project_domain_name: var("SWIFT_PROJECT_DOMAIN_NAME"),
            project_domain_id: var("SWIFT_PROJECT_DOMAIN_ID"),
            domain_name: var("SWIFT_DOMAIN_NAME"),
            domain_id: var("SWIFT_DOMAIN_ID"),
            region: var("SWIFT_REGION"),
            interface,
        };
        let needs_user = credentials.user.is_none()
            && (version != Some(AuthVersion::V3) || credentials.user_id.is_none());
        if needs_user {
            return Err(missing("SWIFT_USER", "the name of the Swift user"));
        }
        Ok(SwiftSettings {
            container: container.to_string(),
            credentials,
        })
    }
}

/// What the cluster publishes about itself in `/info`.
#[derive(Debug, Clone, Copy)]
struct ClusterInfo {
    max_file_size: u64,
    /// `Some(max per request)` when the bulk middleware is enabled.
    bulk_delete: Option<usize>,
}

impl Default for ClusterInfo {
    fn default() -> Self {
        ClusterInfo {
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            bulk_delete: None,
        }
    }
}

#[derive(Debug)]
pub struct SwiftStore {
    client: Client,
    container: String,
    auth: Authenticator,
    info: OnceCell<ClusterInfo>,
    /// Listing page size; `None` takes the cluster's
    /// `container_listing_limit` (10 000 by default).
    page_size: Option<usize>,
}

impl SwiftStore {
    /// A store for the container; nothing is contacted until first use, so
    /// that failures are classified per operation (wal-fetch must tell a
    /// missing object from an unreachable store).
    pub fn new(settings: SwiftSettings) -> Result<SwiftStore, UserError> {
        super::tls::ensure_crypto_provider();
        let client = Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .read_timeout(std::time::Duration::from_secs(300))
            .user_agent(concat!("wal-e/", env!("CARGO_PKG_VERSION")))
            // reqwest keeps X-Auth-Token, X-Auth-Key and a login body on a
            // redirect to another host; Swift and Keystone do not redirect.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                UserError::new("could not set up the HTTP client for Swift").detail(error_chain(&e))
            })?;
        Ok(SwiftStore {
            auth: Authenticator::new(settings.credentials, client.clone()),
            client,
            container: settings.container,
            info: OnceCell::new(),
            page_size: None,
        })
    }

    /// Lists at most `n` names per request (smaller pages than the cluster's
    /// limit, e.g. to exercise paging).
    pub fn with_listing_page_size(mut self, n: usize) -> Self {
        self.page_size = Some(n.max(1));
        self
    }

    fn container_url(&self, session: &Session) -> String {
        format!(
            "{}/{}",
            session.storage_url.as_str().trim_end_matches('/'),
            utf8_percent_encode(&self.container, SEGMENT)
        )
    }

    fn object_url(&self, session: &Session, key: &str) -> String {
        format!(
            "{}/{}",
            self.container_url(session),
            utf8_percent_encode(key, OBJECT)
        )
    }

    /// Sends the request built for the current session; on 401 logs in again
    /// (once, shared with concurrent requests) and sends it once more.
    async fn send(
        &self,
        op: &'static str,
        key: &str,
        build: impl Fn(&Session) -> RequestBuilder,
    ) -> Result<Response, StoreError> {
        let mut session = self
            .auth
            .session()
            .await
            .map_err(|e| auth_error(op, key, e))?;
        let mut renewed = false;
        loop {
            let resp = build(&session)
                .header("X-Auth-Token", &session.token)
                .send()
                .await
                .map_err(|e| http_error(op, key, e))?;
            if resp.status() == StatusCode::UNAUTHORIZED && !renewed {
                session = self
                    .auth
                    .renew(&session)
                    .await
                    .map_err(|e| auth_error(op, key, e))?;
                renewed = true;
                continue;
            }
            return Ok(resp);
        }
    }

    /// `/info`, read once; a cluster that hides it gets Swift's defaults.
    async fn info(&self) -> ClusterInfo {
        let fetched = self
            .info
            .get_or_try_init(|| async {
                let session = self.auth.session().await.map_err(|_| ())?;
                let mut url = session.storage_url.clone();
                url.set_path("/info");
                url.set_query(None);
                let resp = self.client.get(url).send().await.map_err(|_| ())?;
                if resp.status().is_server_error() {
                    return Err(());
                }
                if !resp.status().is_success() {
                    return Ok(ClusterInfo::default());
                }
                let body: InfoBody = resp.json().await.unwrap_or_default();
                Ok(ClusterInfo {
                    max_file_size: body
                        .swift
                        .and_then(|s| s.max_file_size)
                        .unwrap_or(DEFAULT_MAX_FILE_SIZE),
                    bulk_delete: body.bulk_delete.map(|b| {
                        b.max_deletes_per_request
                            .unwrap_or(DEFAULT_MAX_BULK_DELETES)
                            .max(1)
                    }),
                })
            })
            .await;
        fetched.copied().unwrap_or_default()
    }

    /// A 404 on an object is authoritative only if the container exists.
    async fn not_found(&self, op: &'static str, key: &str) -> StoreError {
        let resp = self
            .send(op, key, |s| self.client.head(self.container_url(s)))
            .await;
        match resp {
            Ok(resp) if resp.status().is_success() => StoreError::NotFound {
                key: key.to_string(),
            },
            Ok(resp) if resp.status() == StatusCode::NOT_FOUND => self.no_container(op, key),
            Ok(resp) => status_error(op, key, resp).await,
            Err(e) => e,
        }
    }

    fn no_container(&self, op: &'static str, key: &str) -> StoreError {
        StoreError::permanent(
            op,
            key,
            format!(
                "the Swift container {:?} does not exist (create it, or check WALE_SWIFT_PREFIX and SWIFT_REGION)",
                self.container
            ),
        )
    }

    async fn put_once(
        &self,
        key: &str,
        session: &Session,
        payload: &PutPayload,
        options: &PutOptions,
        max_size: u64,
    ) -> Result<(Response, Arc<Mutex<Upload>>), StoreError> {
        let upload = Arc::new(Mutex::new(Upload::new(max_size)));
        let body = Upload::wrap(upload.clone(), payload.open());
        let mut req = self
            .client
            .put(self.object_url(session, key))
            .header("X-Auth-Token", &session.token)
            .body(reqwest::Body::wrap_stream(body));
        if let Some(ct) = options.content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        for (name, value) in &options.metadata {
            req = req.header(format!("{OBJECT_META}{name}"), value);
        }
        if options.mode == PutMode::Create {
            req = req.header(IF_NONE_MATCH, "*");
        }
        let sent = req.send().await;
        if let Some(failure) = upload.lock().unwrap().failure.take() {
            return Err(failure.into_store_error(key, max_size));
        }
        let resp = sent.map_err(|e| http_error("put", key, e))?;
        Ok((resp, upload))
    }
}

#[derive(Deserialize, Default)]
struct InfoBody {
    swift: Option<InfoSwift>,
    bulk_delete: Option<InfoBulkDelete>,
}

#[derive(Deserialize)]
struct InfoSwift {
    max_file_size: Option<u64>,
}

#[derive(Deserialize)]
struct InfoBulkDelete {
    max_deletes_per_request: Option<usize>,
}

/// Bookkeeping of one upload attempt: size, MD5 and why the body stopped.
struct Upload {
    md5: Md5,
    len: u64,
    max_size: u64,
    failure: Option<UploadFailure>,
}

enum UploadFailure {
    Payload(io::Error),
    TooLarge,
}

impl UploadFailure {
    fn into_store_error(self, key: &str, max_size: u64) -> StoreError {
        match self {
            UploadFailure::Payload(source) => StoreError::Payload {
                key: key.to_string(),
                source,
            },
            UploadFailure::TooLarge => StoreError::permanent(
                "put",
                key,
                format!(
                    "the object is larger than the {max_size} bytes this Swift cluster accepts in one object (max_file_size)"
                ),
            ),
        }
    }
}

impl Upload {
    fn new(max_size: u64) -> Self {
        Upload {
            md5: Md5::new(),
            len: 0,
            max_size,
            failure: None,
        }
    }

    /// The payload as sent: hashed and counted; a payload error or crossing
    /// the size limit is recorded and ends the body with an error, which
    /// aborts the request so Swift stores nothing.
    fn wrap(
        state: Arc<Mutex<Upload>>,
        body: crate::ByteStream,
    ) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static {
        body.map(move |chunk| {
            let mut st = state.lock().unwrap();
            match chunk {
                Ok(bytes) => {
                    st.len += bytes.len() as u64;
                    if st.len > st.max_size {
                        st.failure = Some(UploadFailure::TooLarge);
                        return Err(io::Error::other("object too large for Swift"));
                    }
                    st.md5.update(&bytes);
                    Ok(bytes)
                }
                Err(e) => {
                    let msg = e.to_string();
                    st.failure = Some(UploadFailure::Payload(e));
                    Err(io::Error::other(msg))
                }
            }
        })
    }

    fn md5_hex(&self) -> String {
        self.md5
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[async_trait]
impl Store for SwiftStore {
    async fn put(
        &self,
        key: &str,
        payload: PutPayload,
        options: &PutOptions,
    ) -> Result<(), StoreError> {
        check_key("put", key)?;
        let max_size = self.info().await.max_file_size;
        let mut session = self
            .auth
            .session()
            .await
            .map_err(|e| auth_error("put", key, e))?;
        let mut renewed = false;
        let (resp, upload) = loop {
            let (resp, upload) = self
                .put_once(key, &session, &payload, options, max_size)
                .await?;
            if resp.status() == StatusCode::UNAUTHORIZED && !renewed {
                session = self
                    .auth
                    .renew(&session)
                    .await
                    .map_err(|e| auth_error("put", key, e))?;
                renewed = true;
                continue;
            }
            break (resp, upload);
        };
        let status = resp.status();
        if status == StatusCode::PRECONDITION_FAILED && options.mode == PutMode::Create {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        if status == StatusCode::NOT_FOUND {
            return Err(self.no_container("put", key));
        }
        if !status.is_success() {
            return Err(status_error("put", key, resp).await);
        }
        let sent = upload.lock().unwrap().md5_hex();
        let stored = resp
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_ascii_lowercase());
        if let Some(stored) = stored
            && stored != sent
        {
            // What Swift stored is not what we sent: remove it (a create-only
            // retry would otherwise find it) and let the put be retried.
            if let Err(e) = self
                .delete_each(std::slice::from_ref(&key.to_string()))
                .await
            {
                tracing::warn!(key, "could not remove an object stored damaged: {e}");
            }
            return Err(StoreError::transient(
                "put",
                key,
                format!("Swift stored data with MD5 {stored}, but {sent} was sent"),
            ));
        }
        Ok(())
    }

    async fn get_opts(&self, key: &str, options: &GetOptions) -> Result<GetResult, StoreError> {
        check_key("get", key)?;
        let resp = self
            .send("get", key, |s| {
                let mut req = self.client.get(self.object_url(s, key));
                if let Some(range) = options.range_header() {
                    req = req.header(RANGE, range);
                }
                if let Some(version) = &options.if_match {
                    req = req.header(IF_MATCH, version);
                }
                req
            })
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(self.not_found("get", key).await);
        }
        if status == StatusCode::PRECONDITION_FAILED && options.if_match.is_some() {
            return Err(StoreError::Changed {
                key: key.to_string(),
            });
        }
        if !status.is_success() {
            return Err(status_error("get", key, resp).await);
        }
        let mut meta = meta_from_headers("get", key, resp.headers())?;
        let content_range = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok());
        let size = options.check_answer(
            key,
            meta.version.as_deref(),
            content_range,
            resp.content_length(),
        )?;
        meta.size = size.unwrap_or(0);
        let owned = key.to_string();
        let body = resp
            .bytes_stream()
            .map_err(move |e| io::Error::from(http_error("get", &owned, e)))
            .boxed();
        let tail = size.map(|size| size - options.range_start);
        let stream = super::checked_length(body, tail, key);
        Ok(GetResult { meta, stream })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        check_key("head", key)?;
        let resp = self
            .send("head", key, |s| self.client.head(self.object_url(s, key)))
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(self.not_found("head", key).await);
        }
        if !status.is_success() {
            return Err(status_error("head", key, resp).await);
        }
        meta_from_headers("head", key, resp.headers())
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<String>,
    ) -> BoxStream<'_, Result<ObjectMeta, StoreError>> {
        let prefix = prefix.to_string();
        // Pages follow each other by marker until one comes back empty.
        stream::try_unfold(Some(start_after.unwrap_or_default()), move |marker| {
            let prefix = prefix.clone();
            async move {
                let Some(marker) = marker else {
                    return Ok(None);
                };
                let page = self.list_page(&prefix, &marker).await?;
                let next = page.last().map(|m| m.key.clone());
                Ok(Some((stream::iter(page.into_iter().map(Ok)), next)))
            }
        })
        .try_flatten()
        .boxed()
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        for key in keys {
            check_key("delete", key)?;
        }
        match self.info().await.bulk_delete {
            Some(per_request) => {
                for batch in keys.chunks(per_request) {
                    self.bulk_delete(batch).await?;
                }
                Ok(())
            }
            None => self.delete_each(keys).await,
        }
    }
}

#[derive(Deserialize)]
struct ListEntry {
    name: String,
    bytes: u64,
    last_modified: String,
}

#[derive(Deserialize)]
struct BulkDeleteResult {
    #[serde(rename = "Response Status", default)]
    status: String,
    #[serde(rename = "Response Body", default)]
    body: String,
    #[serde(rename = "Errors", default)]
    errors: Vec<(String, String)>,
}

impl SwiftStore {
    async fn list_page(&self, prefix: &str, marker: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let resp = self
            .send("list", prefix, |s| {
                let limit = self
                    .page_size
                    .map(|n| format!("&limit={n}"))
                    .unwrap_or_default();
                self.client.get(format!(
                    "{}?format=json&prefix={}&marker={}{limit}",
                    self.container_url(s),
                    utf8_percent_encode(prefix, SEGMENT),
                    utf8_percent_encode(marker, SEGMENT)
                ))
            })
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(self.no_container("list", prefix));
        }
        if !status.is_success() {
            return Err(status_error("list", prefix, resp).await);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| http_error("list", prefix, e))?;
        let entries: Vec<ListEntry> = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::transient("list", prefix, format!("unexpected container listing: {e}"))
        })?;
        entries
            .into_iter()
            .map(|e| {
                Ok(ObjectMeta {
                    last_modified: parse_listing_time(&e.name, &e.last_modified)?,
                    key: e.name,
                    size: e.bytes,
                    metadata: Metadata::new(),
                    version: None,
                })
            })
            .collect()
    }

    /// One `?bulk-delete` request: a 404 counts as deleted.
    async fn bulk_delete(&self, keys: &[String]) -> Result<(), StoreError> {
        let container = utf8_percent_encode(&self.container, SEGMENT).to_string();
        let body: String = keys
            .iter()
            .map(|k| format!("/{container}/{}\n", utf8_percent_encode(k, OBJECT)))
            .collect();
        let first = keys[0].as_str();
        let resp = self
            .send("delete", first, |s| {
                let mut url = s.storage_url.clone();
                url.set_query(Some("bulk-delete"));
                self.client
                    .request(Method::POST, url)
                    .header(CONTENT_TYPE, "text/plain")
                    .header("Accept", "application/json")
                    .body(body.clone())
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("delete", first, resp).await);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| http_error("delete", first, e))?;
        let result: BulkDeleteResult = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::transient(
                "delete",
                first,
                format!("unexpected bulk delete answer: {e}"),
            )
        })?;
        if result.status.starts_with('2') {
            return Ok(());
        }
        if result.errors.is_empty() {
            let why = format!(
                "bulk delete answered {} {}",
                result.status,
                result.body.trim()
            );
            return Err(if result.status.starts_with('5') {
                StoreError::transient("delete", first, why)
            } else {
                StoreError::permanent("delete", first, why)
            });
        }
        let strip = format!("/{}/", self.container);
        Err(StoreError::DeleteFailed {
            failures: result
                .errors
                .into_iter()
                .map(|(name, why)| {
                    let key = name.strip_prefix(&strip).unwrap_or(&name).to_string();
                    (key, why)
                })
                .collect(),
        })
    }

    /// Single DELETEs in parallel, for clusters without bulk delete.
    async fn delete_each(&self, keys: &[String]) -> Result<(), StoreError> {
        let results: Vec<(String, Result<(), StoreError>)> = stream::iter(keys.iter().cloned())
            .map(|key: String| async move {
                let resp = self
                    .send("delete", &key, |s| {
                        self.client.delete(self.object_url(s, &key))
                    })
                    .await;
                let outcome = match resp {
                    Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {
                        Ok(())
                    }
                    Ok(r) => Err(status_error("delete", &key, r).await),
                    Err(e) => Err(e),
                };
                (key, outcome)
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect()
            .await;
        super::batch_delete_outcome(results)
    }
}

/// Names the URL syntax would rewrite (`.` and `..` segments) or that name
/// no object at all.
fn check_key(op: &'static str, key: &str) -> Result<(), StoreError> {
    let bad = key.is_empty() || key.split('/').any(|seg| seg == "." || seg == "..");
    if bad {
        return Err(StoreError::permanent(
            op,
            key,
            "not a valid object name for the Swift store",
        ));
    }
    Ok(())
}

/// An object's size and time from its GET or HEAD response headers. A
/// response without a usable time is an error: 1970-01-01 in its place would
/// silently change which backup is LATEST.
fn meta_from_headers(
    op: &'static str,
    key: &str,
    headers: &reqwest::header::HeaderMap,
) -> Result<ObjectMeta, StoreError> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let size = header(CONTENT_LENGTH)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // X-Timestamp keeps the microseconds the listing shows; Last-Modified
    // has whole seconds.
    let last_modified = header(reqwest::header::HeaderName::from_static("x-timestamp"))
        .and_then(parse_x_timestamp)
        .or_else(|| {
            header(LAST_MODIFIED)
                .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
                .map(|t| t.with_timezone(&Utc))
        })
        .ok_or_else(|| {
            StoreError::permanent(op, key, "Swift gave no usable X-Timestamp or Last-Modified")
        })?;
    let metadata = metadata_from(headers.iter().filter_map(|(name, value)| {
        let name = name.as_str().strip_prefix(OBJECT_META)?;
        Some((name, value.to_str().ok()?))
    }));
    Ok(ObjectMeta {
        key: key.to_string(),
        size,
        last_modified,
        metadata,
        version: header(ETAG).map(str::to_string),
    })
}

/// The header prefix of user metadata; reqwest gives header names in lower
/// case.
const OBJECT_META: &str = "x-object-meta-";

fn parse_x_timestamp(raw: &str) -> Option<DateTime<Utc>> {
    let (secs, frac) = raw.split_once('.').unwrap_or((raw, "0"));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos: u32 = format!("{digits:0<9}").parse().ok()?;
    DateTime::from_timestamp(secs, nanos)
}

/// Listings give naive UTC times such as `2014-04-30T23:02:38.123456`.
fn parse_listing_time(key: &str, raw: &str) -> Result<DateTime<Utc>, StoreError> {
    NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|e| {
            StoreError::permanent(
                "list",
                key,
                format!("Swift listed an unreadable last_modified time {raw:?}: {e}"),
            )
        })
}

fn auth_error(op: &'static str, key: &str, failure: AuthFailure) -> StoreError {
    if failure.transient {
        StoreError::transient(op, key, failure)
    } else {
        StoreError::permanent(op, key, failure)
    }
}

fn http_error(op: &'static str, key: &str, err: reqwest::Error) -> StoreError {
    let text = format!("Swift request failed: {}", error_chain(&err));
    if err.is_builder() {
        StoreError::permanent(op, key, text)
    } else {
        StoreError::transient(op, key, text)
    }
}

/// A short, printable excerpt of an error response's body, with a leading
/// `": "`, or nothing.
async fn body_snippet(resp: Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return String::new();
    }
    let cut: String = text.chars().take(200).collect();
    format!(": {cut}")
}

/// An unexpected status: throttling, timeouts and server errors may clear
/// up; everything else (403, 400, 413 …) will not.
async fn status_error(op: &'static str, key: &str, resp: Response) -> StoreError {
    let status = resp.status();
    let advice = match status {
        StatusCode::UNAUTHORIZED => " (Swift refused a token it had just issued)",
        StatusCode::FORBIDDEN => " (the Swift user may not access this container)",
        StatusCode::UNPROCESSABLE_ENTITY => " (the data arrived corrupted)",
        _ => "",
    };
    let why = format!(
        "Swift answered {status}{advice}{}",
        body_snippet(resp).await
    );
    match status.as_u16() {
        408 | 422 | 429 | 498 | 499 | 500..=599 => StoreError::transient(op, key, why),
        _ => StoreError::permanent(op, key, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::env;

    #[test]
    fn settings_follow_wal_e_variables_and_defaults() {
        let s = SwiftSettings::from_env(
            "ctr",
            &env(&[
                ("SWIFT_AUTHURL", "http://ks/v2.0"),
                ("SWIFT_USER", "u"),
                ("SWIFT_PASSWORD", "p"),
                ("SWIFT_TENANT", "t"),
            ]),
        )
        .unwrap();
        assert_eq!(s.container, "ctr");
        assert_eq!(s.credentials.project_name.as_deref(), Some("t"));
        assert_eq!(s.credentials.version, None, "2 by default");
        assert_eq!(s.credentials.interface, None, "publicURL by default");

        let err =
            SwiftSettings::from_env("c", &env(&[("SWIFT_AUTHURL", "x"), ("SWIFT_USER", "u")]))
                .unwrap_err();
        assert!(err.msg.contains("SWIFT_PASSWORD"), "{err}");
        let err = SwiftSettings::from_env(
            "c",
            &env(&[
                ("SWIFT_AUTHURL", "x"),
                ("SWIFT_USER", "u"),
                ("SWIFT_PASSWORD", "p"),
                ("SWIFT_AUTH_VERSION", "5"),
            ]),
        )
        .unwrap_err();
        assert!(err.msg.contains("SWIFT_AUTH_VERSION"), "{err}");
        // Keystone v3 may name the user by id alone.
        let s = SwiftSettings::from_env(
            "c",
            &env(&[
                ("SWIFT_AUTHURL", "x"),
                ("SWIFT_USER_ID", "42"),
                ("SWIFT_PASSWORD", "p"),
                ("SWIFT_AUTH_VERSION", "3"),
                ("SWIFT_ENDPOINT_TYPE", "internalURL"),
            ]),
        )
        .unwrap();
        assert_eq!(s.credentials.interface, Some(Interface::Internal));
        assert!(
            SwiftSettings::from_env(
                "c",
                &env(&[
                    ("SWIFT_AUTHURL", "x"),
                    ("SWIFT_USER_ID", "42"),
                    ("SWIFT_PASSWORD", "p")
                ]),
            )
            .is_err()
        );
    }

    #[test]
    fn object_names_keep_their_slashes_and_are_quoted() {
        let enc = utf8_percent_encode("/db1/wal_005/a b+c%.lzo", OBJECT).to_string();
        assert_eq!(enc, "/db1/wal_005/a%20b%2Bc%25.lzo");
        assert_eq!(
            utf8_percent_encode("my/ctr", SEGMENT).to_string(),
            "my%2Fctr"
        );
        assert!(check_key("get", "/db1/../x").is_err());
        assert!(check_key("get", "").is_err());
        assert!(check_key("get", "/db1//x.lzo").is_ok());
    }

    #[test]
    fn swift_times_parse() {
        let t = parse_listing_time("k", "2014-04-30T23:02:38.123456").unwrap();
        assert_eq!(t.to_rfc3339(), "2014-04-30T23:02:38.123456+00:00");
        let t = parse_x_timestamp("1398898958.12345").unwrap();
        assert_eq!(t.to_rfc3339(), "2014-04-30T23:02:38.123450+00:00");
    }

    #[test]
    fn unreadable_or_missing_times_are_errors_not_1970() {
        for raw in ["", "yesterday", "2014-04-30 23:02:38"] {
            let err = parse_listing_time("/db1/wal_005/x.lzo", raw).unwrap_err();
            assert!(!err.is_transient());
            assert!(
                err.to_string().contains("unreadable last_modified"),
                "{err}"
            );
        }

        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(CONTENT_LENGTH, "5".parse().unwrap());
        let err = meta_from_headers("head", "k", &headers).unwrap_err();
        assert!(err.to_string().contains("no usable X-Timestamp"), "{err}");
        headers.insert(LAST_MODIFIED, "not a date".parse().unwrap());
        assert!(meta_from_headers("head", "k", &headers).is_err());
        headers.insert(
            LAST_MODIFIED,
            "Wed, 30 Apr 2014 23:02:38 GMT".parse().unwrap(),
        );
        let meta = meta_from_headers("head", "k", &headers).unwrap();
        assert_eq!(meta.size, 5);
        assert_eq!(meta.last_modified.to_rfc3339(), "2014-04-30T23:02:38+00:00");
        headers.insert("x-timestamp", "1398898958.12345".parse().unwrap());
        let meta = meta_from_headers("get", "k", &headers).unwrap();
        assert_eq!(
            meta.last_modified.to_rfc3339(),
            "2014-04-30T23:02:38.123450+00:00"
        );
    }

    #[tokio::test]
    async fn uploads_stop_at_the_size_limit_and_record_payload_errors() {
        let state = Arc::new(Mutex::new(Upload::new(10)));
        let body = stream::iter([
            Ok(Bytes::from_static(b"0123456")),
            Ok(Bytes::from_static(b"789ab")),
        ])
        .boxed();
        let out: Vec<_> = Upload::wrap(state.clone(), body).collect().await;
        assert!(out[0].is_ok() && out[1].is_err());
        let failure = state.lock().unwrap().failure.take().unwrap();
        let err = failure.into_store_error("k", 10);
        assert!(
            err.to_string().contains("larger than the 10 bytes"),
            "{err}"
        );
        assert!(!err.is_transient());

        let state = Arc::new(Mutex::new(Upload::new(100)));
        let body = stream::iter([Ok(Bytes::from_static(b"abc"))]).boxed();
        let _: Vec<_> = Upload::wrap(state.clone(), body).collect().await;
        assert_eq!(
            state.lock().unwrap().md5_hex(),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        let body = stream::iter([Err(io::Error::other("disk on fire"))]).boxed();
        let _: Vec<_> = Upload::wrap(state.clone(), body).collect().await;
        let failure = state.lock().unwrap().failure.take().unwrap();
        assert!(matches!(
            failure.into_store_error("k", 100),
            StoreError::Payload { .. }
        ));
    }
}
