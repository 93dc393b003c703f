//! The `wabs://` store: Azure Blob Storage through the official
//! `azure_storage_blob` SDK.
//!
//! Settings (environment only, like WAL-E; `-a` may give the account name):
//!
//! * `WABS_ACCOUNT_NAME`: the storage account.
//! * `WABS_ACCESS_KEY`: the account key, or
//! * `WABS_SAS_TOKEN`: a shared access signature (with or without the `?`).
//! * `WALE_WABS_ENDPOINT`: the blob service URL, for Azurite, Azure Stack and
//!   sovereign clouds, e.g. `http://127.0.0.1:10000/devstoreaccount1`. WAL-E
//!   always used `https://<account>.blob.core.windows.net`, the default.
//!
//! The SDK has no shared-key signer, so with an account key every request
//! carries a short-lived account SAS signed with that key (HMAC-SHA256), made
//! afresh for each request by a pipeline policy; a configured SAS token is
//! added the same way. Clients and their URLs never hold a secret, and error
//! texts are scrubbed of query strings before anyone sees them.
//!
//! Blob names are the keys as given (WAL-E's `path/...`, no leading slash).
//! Overwriting uploads up to one block are a single Put Blob; larger ones and
//! every create-only upload stream as staged blocks ([`BLOCK_SIZE`],
//! [`UPLOAD_CONCURRENCY`] in flight) committed by one Put Block List, so a
//! partial upload is never visible. Create-only puts send `If-None-Match: *`
//! with the commit, the request that makes the blob visible.

use std::fmt;
use std::num::NonZero;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::Secret;
use azure_core::error::ErrorKind;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    ClientOptions, Context, Etag, Request, RetryOptions, StatusCode, Transport, Url,
};
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobClientGetPropertiesResultHeaders,
    BlobContainerClientListBlobsOptions, BlockBlobClientCommitBlockListOptions,
    BlockBlobClientUploadOptions, BlockLookupList, HttpRange,
};
use azure_storage_blob::{BlobClient, BlobContainerClient, BlobContainerClientOptions};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::stream::{self, BoxStream, StreamExt};

use super::{
    GetOptions, GetResult, Metadata, ObjectMeta, PutMode, PutOptions, PutPayload, Store,
    StoreError, metadata_from, metadata_map,
};
use crate::config::{Env, Settings};
use crate::error::UserError;

/// Size of one staged block: uploads up to this size are one request.
pub const BLOCK_SIZE: usize = 4 * 1024 * 1024;
/// Blocks of one upload in flight at once; with the block being filled this
/// bounds an upload's memory to `(UPLOAD_CONCURRENCY + 1) * BLOCK_SIZE`.
const UPLOAD_CONCURRENCY: usize = 4;
/// Ranged GETs of one download in flight (the SDK buffers twice as many).
const DOWNLOAD_CONCURRENCY: usize = 4;
/// Deletes in flight at once.
const DELETE_CONCURRENCY: usize = 16;
/// Lifetime of the account SAS made for each request from the account key.
const MINTED_SAS_LIFETIME: chrono::Duration = chrono::Duration::hours(1);
/// The account SAS version whose string-to-sign [`sign_account_sas`] builds.
const ACCOUNT_SAS_VERSION: &str = "2021-08-06";
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// How requests are authorised.
#[derive(Clone)]
enum Auth {
    /// The account key (base64), from which each request's SAS is made.
    Key { account: String, key: Arc<Secret> },
    /// A SAS token as configured, without a leading `?`.
    Sas(Arc<String>),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Key { account, .. } => write!(f, "AccountKey({account}, <redacted>)"),
            Auth::Sas(_) => f.write_str("SasToken(<redacted>)"),
        }
    }
}

/// The query string of an account SAS for the blob service, valid until
/// `expiry`, signed with the account key.
fn sign_account_sas(
    account: &str,
    key: &Secret,
    expiry: DateTime<Utc>,
) -> azure_core::Result<String> {
    let (permissions, services, resource_types) = ("rwdlac", "b", "sco");
    let expiry = expiry.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    // account, permissions, services, resource types, start, expiry, IP,
    // protocol, version, encryption scope, each followed by a newline.
    let to_sign = format!(
        "{account}\n{permissions}\n{services}\n{resource_types}\n\n{expiry}\n\n\n{ACCOUNT_SAS_VERSION}\n\n"
    );
    let signature = azure_core::hmac::hmac_sha256(&to_sign, key)?;
    // A scratch URL serves as the query encoder.
    let mut url = Url::parse("http://sas.invalid/").expect("a valid URL");
    url.query_pairs_mut()
        .append_pair("sv", ACCOUNT_SAS_VERSION)
        .append_pair("ss", services)
        .append_pair("srt", resource_types)
        .append_pair("sp", permissions)
        .append_pair("se", &expiry)
        .append_pair("sig", &signature);
    Ok(url.query().unwrap_or_default().to_string())
}

/// Adds the SAS to every request just before it is sent.
#[derive(Debug)]
struct SasPolicy {
    auth: Auth,
}

#[async_trait]
impl Policy for SasPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let token = match &self.auth {
            Auth::Key { account, key } => {
                sign_account_sas(account, key, Utc::now() + MINTED_SAS_LIFETIME)?
            }
            Auth::Sas(token) => token.to_string(),
        };
        let url = request.url_mut();
        let query = match url.query() {
            Some(q) if !q.is_empty() => format!("{q}&{token}"),
            _ => token,
        };
        url.set_query(Some(&query));
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// Settings of the `wabs://` store, from the prefix and the environment.
#[derive(Debug, Clone)]
struct WabsConfig {
    account: String,
    container: String,
    /// The blob service URL, without a trailing slash.
    endpoint: Url,
    auth: Auth,
}

impl WabsConfig {
    fn from_env(settings: &Settings, env: &dyn Env) -> Result<WabsConfig, UserError> {
        let nonempty = |name: &str| env.var(name).filter(|v| !v.trim().is_empty());
        let account = settings
            .wabs_account_name
            .clone()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                UserError::new("no Azure storage account name given")
                    .detail(format!("The storage prefix is {}.", settings.prefix.url))
                    .hint("Set WABS_ACCOUNT_NAME or pass --wabs-account-name (-a).")
            })?;
        let auth = match (nonempty("WABS_ACCESS_KEY"), nonempty("WABS_SAS_TOKEN")) {
            (Some(key), _) => {
                let key = key.trim().to_string();
                if azure_core::base64::decode(&key).is_err() {
                    return Err(UserError::new("WABS_ACCESS_KEY is not a valid account key")
                        .detail("An Azure storage account key is base64 text; this value does not decode.")
                        .hint("Copy one of the account's access keys from the Azure portal."));
                }
                Auth::Key {
                    account: account.clone(),
                    key: Arc::new(Secret::new(key)),
                }
            }
            (None, Some(token)) => {
                let token = token.trim().trim_start_matches('?').to_string();
                if !token.split('&').any(|pair| pair.starts_with("sig=")) {
                    return Err(UserError::new("WABS_SAS_TOKEN is not a shared access signature")
                        .detail("The token has no sig= field.")
                        .hint("Set WABS_SAS_TOKEN to the SAS query string, such as sv=...&sig=..."));
                }
                Auth::Sas(Arc::new(token))
            }
            (None, None) => {
                return Err(UserError::new(
                    "WABS_ACCESS_KEY or WABS_SAS_TOKEN must be defined",
                )
                .detail(format!(
                    "Azure storage account {account} needs credentials for the prefix {}.",
                    settings.prefix.url
                ))
                .hint("Set WABS_ACCESS_KEY to an account key, or WABS_SAS_TOKEN to a shared access signature."));
            }
        };
        let raw = nonempty("WALE_WABS_ENDPOINT")
            .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
        let endpoint = parse_endpoint(raw.trim())?;
        Ok(WabsConfig {
            account,
            container: settings.prefix.store_name.clone(),
            endpoint,
            auth,
        })
    }
}

fn parse_endpoint(raw: &str) -> Result<Url, UserError> {
    let bad = |why: &str| {
        UserError::new("invalid WALE_WABS_ENDPOINT")
            .detail(format!("{raw:?}: {why}"))
            .hint("Give the blob service URL, such as https://account.blob.core.windows.net or http://127.0.0.1:10000/devstoreaccount1.")
    };
    // A trailing slash would make every container path start with "//".
    let url = Url::parse(raw.trim_end_matches('/')).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(bad("the scheme must be http or https"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "query strings are not allowed (put a SAS in WABS_SAS_TOKEN)",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials are not allowed in the URL"));
    }
    Ok(url)
}

/// Removes the query string of every URL in `text`, where a SAS would be.
fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("http") {
        let (before, url_on) = rest.split_at(start);
        out.push_str(before);
        let end = url_on
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | '<'))
            .unwrap_or(url_on.len());
        let url = &url_on[..end];
        match url.find('?') {
            Some(q) => {
                out.push_str(&url[..q]);
                out.push_str("?<redacted>");
            }
            None => out.push_str(url),
        }
        rest = &url_on[end..];
    }
    out.push_str(rest);
    out
}

/// The first line of the `<Message>` of an Azure XML error body.
fn service_message(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Message>")? + "<Message>".len();
    let end = start + text[start..].find("</Message>")?;
    let line = text[start..end].lines().next()?.trim();
    (!line.is_empty()).then(|| scrub(line))
}

/// An error text that never contains a URL's query string (a SAS).
fn describe(err: &azure_core::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    scrub(&text)
}

pub(super) struct WabsStore {
    container: BlobContainerClient,
    account: String,
    container_name: String,
}

impl fmt::Debug for WabsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WabsStore")
            .field("url", &self.container.url().as_str())
            .finish()
    }
}

impl WabsStore {
    fn new(config: WabsConfig) -> Result<WabsStore, UserError> {
        super::tls::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| {
                UserError::new("could not set up the HTTPS client").detail(e.to_string())
            })?;
        let options = BlobContainerClientOptions {
            client_options: ClientOptions {
                // The retry layer above decides what to retry (WALE_RETRIES).
                retry: RetryOptions::none(),
                transport: Some(Transport::new(Arc::new(http))),
                per_try_policies: vec![Arc::new(SasPolicy {
                    auth: config.auth.clone(),
                })],
                ..Default::default()
            },
            ..Default::default()
        };
        let mut url = config.endpoint.clone();
        url.path_segments_mut()
            .map_err(|_| UserError::new("invalid WALE_WABS_ENDPOINT"))?
            .push(&config.container);
        let container = BlobContainerClient::new(url, None, Some(options)).map_err(|e| {
            UserError::new("could not set up the Azure blob client").detail(describe(&e))
        })?;
        Ok(WabsStore {
            container,
            account: config.account,
            container_name: config.container,
        })
    }

    fn blob(&self, key: &str) -> BlobClient {
        self.container.blob_client(key)
    }

    /// Maps an SDK error to the terms callers decide on. Only `BlobNotFound`
    /// means "does not exist": a missing container or a refused request must
    /// not look like an empty archive (wal-fetch would end recovery early).
    fn classify(&self, op: &'static str, key: &str, err: azure_core::Error) -> StoreError {
        let (status, code, message) = match err.kind() {
            ErrorKind::HttpResponse {
                status,
                error_code,
                raw_response,
            } => (
                u16::from(*status),
                error_code.clone().unwrap_or_default(),
                raw_response
                    .as_ref()
                    .and_then(|r| service_message(r.body())),
            ),
            ErrorKind::Connection | ErrorKind::Io => {
                return StoreError::transient(op, key, describe(&err));
            }
            _ => return StoreError::permanent(op, key, describe(&err)),
        };
        let what = match &message {
            Some(m) => format!("HTTP {status} {code}: {m}"),
            None => format!("HTTP {status} {code}"),
        };
        match (status, code.as_str()) {
            (404, "BlobNotFound") => StoreError::NotFound {
                key: key.to_string(),
            },
            (404, "ContainerNotFound") => StoreError::permanent(
                op,
                key,
                format!(
                    "the container {:?} does not exist in storage account {:?} ({what})",
                    self.container_name, self.account
                ),
            ),
            (403, _) | (401, _) => StoreError::permanent(
                op,
                key,
                format!(
                    "storage account {:?} refused the request; check WABS_ACCESS_KEY or WABS_SAS_TOKEN (its permissions and expiry) ({what})",
                    self.account
                ),
            ),
            (408 | 429 | 500..=599, _) => StoreError::transient(op, key, what),
            _ => StoreError::permanent(op, key, what),
        }
    }

    /// For create-only puts: the blob already exists.
    fn classify_put(&self, key: &str, create: bool, err: azure_core::Error) -> StoreError {
        if let (
            true,
            ErrorKind::HttpResponse {
                status, error_code, ..
            },
        ) = (create, err.kind())
        {
            let status = u16::from(*status);
            if status == 412
                || (status == 409 && error_code.as_deref() == Some("BlobAlreadyExists"))
            {
                return StoreError::AlreadyExists {
                    key: key.to_string(),
                };
            }
        }
        self.classify("put", key, err)
    }
}

/// A download's `If-Match` failed: the blob is no longer that version.
fn changed(key: &str, err: &azure_core::Error) -> Option<StoreError> {
    (err.http_status() == Some(StatusCode::PreconditionFailed)).then(|| StoreError::Changed {
        key: key.to_string(),
    })
}

/// A blob's time as the service gave it. A missing or impossible one is an
/// error: 1970-01-01 in its place would silently change which backup is LATEST.
fn last_modified(
    op: &'static str,
    key: &str,
    t: Option<azure_core::time::OffsetDateTime>,
) -> Result<DateTime<Utc>, StoreError> {
    t.and_then(|t| DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()))
        .ok_or_else(|| StoreError::permanent(op, key, "Azure gave no usable Last-Modified time"))
}

/// Reads the next block of up to [`BLOCK_SIZE`] bytes from `body`; the second
/// value says whether the body has ended.
async fn next_block(
    key: &str,
    body: &mut crate::ByteStream,
    buf: &mut BytesMut,
) -> Result<(Bytes, bool), StoreError> {
    while buf.len() < BLOCK_SIZE {
        match body.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(source)) => {
                return Err(StoreError::Payload {
                    key: key.to_string(),
                    source,
                });
            }
            None => return Ok((buf.split().freeze(), true)),
        }
    }
    let block = buf.split_to(BLOCK_SIZE).freeze();
    Ok((block, false))
}

/// A block id: the upload's random nonce and the block's index. Ids of one
/// blob must all have the same length; the nonce keeps concurrent uploads
/// of the same name from committing each other's blocks.
fn block_id(nonce: &[u8; 16], index: u32) -> Vec<u8> {
    let mut id = nonce.to_vec();
    id.extend_from_slice(&index.to_be_bytes());
    id
}

#[async_trait]
impl Store for WabsStore {
    async fn put(
        &self,
        key: &str,
        payload: PutPayload,
        options: &PutOptions,
    ) -> Result<(), StoreError> {
        let create = options.mode == PutMode::Create;
        let content_type = options.content_type.unwrap_or(DEFAULT_CONTENT_TYPE);
        let if_none_match = create.then(|| Etag::from("*"));
        let client = Arc::new(self.blob(key).block_blob_client());
        let mut body = payload.open();
        let mut buf = BytesMut::with_capacity(BLOCK_SIZE);

        let (mut block, mut ended) = next_block(key, &mut body, &mut buf).await?;
        // Create-only puts always commit a block list: Azurite answers a Put
        // Blob with If-None-Match: * by "BlobAlreadyExists" when the name
        // only has uncommitted blocks (say, of an interrupted upload), while
        // Put Block List checks only committed blobs, as Azure does.
        if ended && !create {
            let opts = BlockBlobClientUploadOptions {
                blob_content_type: Some(content_type.to_string()),
                metadata: metadata_map(&options.metadata),
                ..Default::default()
            };
            return client
                .upload(block.into(), Some(opts))
                .await
                .map(drop)
                .map_err(|e| self.classify("put", key, e));
        }

        let nonce = *azure_core::Uuid::new_v4().as_bytes();
        let mut ids = Vec::new();
        // Aborted (not left running) if this put is dropped or fails.
        let mut staging = tokio::task::JoinSet::new();
        loop {
            if !block.is_empty() {
                let id = block_id(&nonce, ids.len() as u32);
                ids.push(id.clone());
                let (client, key_owned) = (client.clone(), key.to_string());
                staging.spawn(async move {
                    let len = block.len() as u64;
                    client
                        .stage_block(&id, len, block.into(), None)
                        .await
                        .map(drop)
                        .map_err(|e| (key_owned, e))
                });
                while staging.len() >= UPLOAD_CONCURRENCY {
                    self.join_one(&mut staging).await?;
                }
            }
            if ended {
                break;
            }
            (block, ended) = next_block(key, &mut body, &mut buf).await?;
        }
        while !staging.is_empty() {
            self.join_one(&mut staging).await?;
        }

        let list = BlockLookupList {
            latest: Some(ids),
            ..Default::default()
        };
        let opts = BlockBlobClientCommitBlockListOptions {
            blob_content_type: Some(content_type.to_string()),
            if_none_match,
            metadata: metadata_map(&options.metadata),
            ..Default::default()
        };
        let list = list
            .try_into()
            .map_err(|e| StoreError::permanent("put", key, describe(&e)))?;
        client
            .commit_block_list(list, Some(opts))
            .await
            .map(drop)
            .map_err(|e| self.classify_put(key, create, e))
    }

    async fn get_opts(&self, key: &str, options: &GetOptions) -> Result<GetResult, StoreError> {
        let opts = BlobClientDownloadOptions {
            parallel: NonZero::new(DOWNLOAD_CONCURRENCY),
            partition_size: NonZero::new(BLOCK_SIZE),
            range: (options.range_start > 0).then(|| HttpRange::from_offset(options.range_start)),
            if_match: options.if_match.clone().map(Etag::from),
            ..Default::default()
        };
        let result =
            self.blob(key)
                .download(Some(opts))
                .await
                .map_err(|e| match changed(key, &e) {
                    Some(changed) => changed,
                    None => self.classify("get", key, e),
                })?;
        let version = result.properties.etag.as_ref().map(ToString::to_string);
        // The SDK's first request is ranged: the answer says the whole size
        // after the slash.
        let size = options.check_answer(
            key,
            version.as_deref(),
            result.headers.get_optional_str(&"content-range".into()),
            result.properties.content_length,
        )?;
        let meta = ObjectMeta {
            key: key.to_string(),
            size: size.unwrap_or(0),
            last_modified: last_modified("get", key, result.properties.last_modified)?,
            metadata: metadata_from(&result.properties.metadata),
            version,
        };
        let key_owned = key.to_string();
        let body = result
            .body
            .map(move |chunk| {
                chunk.map_err(|e| {
                    // The SDK pins its further ranges to the first one's ETag.
                    changed(&key_owned, &e)
                        .unwrap_or_else(|| StoreError::transient("get", &key_owned, describe(&e)))
                        .into()
                })
            })
            .boxed();
        // The SDK's ranged download does not check the total it delivers.
        let tail = size.map(|size| size - options.range_start);
        let stream = super::checked_length(body, tail, key);
        Ok(GetResult { meta, stream })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let rsp = self
            .blob(key)
            .get_properties(None)
            .await
            .map_err(|e| self.classify("head", key, e))?;
        let header = |e: azure_core::Error| StoreError::permanent("head", key, describe(&e));
        Ok(ObjectMeta {
            key: key.to_string(),
            size: rsp.content_length().map_err(header)?.unwrap_or(0),
            last_modified: last_modified("head", key, rsp.last_modified().map_err(header)?)?,
            metadata: metadata_from(rsp.metadata().map_err(header)?),
            version: None,
        })
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<String>,
    ) -> BoxStream<'_, Result<ObjectMeta, StoreError>> {
        let opts = BlobContainerClientListBlobsOptions {
            prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
            ..Default::default()
        };
        let pager = match self.container.list_blobs(Some(opts)) {
            Ok(pager) => pager,
            Err(e) => return stream::iter([Err(self.classify("list", prefix, e))]).boxed(),
        };
        let prefix = prefix.to_string();
        // The service returns names in order, page after page (NextMarker).
        pager
            .filter_map(move |item| {
                let start_after = start_after.clone();
                let prefix = prefix.clone();
                async move {
                    match item {
                        Err(e) => Some(Err(self.classify("list", &prefix, e))),
                        Ok(blob) => {
                            let key = blob.name?;
                            if start_after.as_ref().is_some_and(|after| &key <= after) {
                                return None;
                            }
                            let props = blob.properties.unwrap_or_default();
                            Some(last_modified("list", &key, props.last_modified).map(
                                |last_modified| ObjectMeta {
                                    size: props.content_length.unwrap_or(0),
                                    last_modified,
                                    key,
                                    metadata: Metadata::new(),
                                    version: None,
                                },
                            ))
                        }
                    }
                }
            })
            .boxed()
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        let results: Vec<(String, Result<(), StoreError>)> = stream::iter(keys.iter().cloned())
            .map(|key| async move {
                let result = match self.blob(&key).delete(None).await {
                    Ok(_) => Ok(()),
                    Err(e) => match self.classify("delete", &key, e) {
                        StoreError::NotFound { .. } => Ok(()),
                        other => Err(other),
                    },
                };
                (key, result)
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect()
            .await;
        super::batch_delete_outcome(results)
    }
}

type StageResult = Result<(), (String, azure_core::Error)>;

impl WabsStore {
    async fn join_one(
        &self,
        set: &mut tokio::task::JoinSet<StageResult>,
    ) -> Result<(), StoreError> {
        match set.join_next().await {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err((key, e)))) => Err(self.classify("put", &key, e)),
            Some(Err(join)) => Err(StoreError::permanent("put", "(block upload)", join)),
        }
    }
}

/// Opens the store of a `wabs://` prefix.
pub(super) fn open(settings: &Settings, env: &dyn Env) -> Result<WabsStore, UserError> {
    WabsStore::new(WabsConfig::from_env(settings, env)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_query_strings_of_urls() {
        let text = "error sending request for url (http://127.0.0.1:1/acct/c/b?comp=block&sig=SECRET%3D) after http://x/y";
        let clean = scrub(text);
        assert!(!clean.contains("SECRET"), "{clean}");
        assert!(
            clean.contains("http://127.0.0.1:1/acct/c/b?<redacted>)"),
            "{clean}"
        );
        assert!(clean.ends_with("after http://x/y"), "{clean}");
    }

    #[test]
    fn account_sas_has_the_documented_fields_and_a_signature() {
        let key = Secret::new("a2V5");
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let sas = sign_account_sas("acct", &key, at).unwrap();
        assert!(
            sas.starts_with(
                "sv=2021-08-06&ss=b&srt=sco&sp=rwdlac&se=2023-11-14T22%3A13%3A20Z&sig="
            ),
            "{sas}"
        );
        let other = sign_account_sas("acct", &Secret::new("b3RoZXI="), at).unwrap();
        assert_ne!(sas, other, "the signature depends on the key");
    }

    #[test]
    fn endpoints_lose_a_trailing_slash_and_refuse_queries() {
        let url = parse_endpoint("http://127.0.0.1:10000/devstoreaccount1/").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:10000/devstoreaccount1");
        assert!(parse_endpoint("https://a.blob.core.windows.net?sv=1").is_err());
        assert!(parse_endpoint("ftp://a/").is_err());
    }

    #[test]
    fn a_missing_last_modified_time_is_an_error_not_1970() {
        let t = azure_core::time::OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
        assert_eq!(
            last_modified("head", "k", Some(t)).unwrap(),
            DateTime::from_timestamp(1_795_000_000, 0).unwrap()
        );
        let err = last_modified("list", "wal_005/x.lzo", None).unwrap_err();
        assert!(!err.is_transient());
        assert!(err.to_string().contains("no usable Last-Modified"), "{err}");
    }

    #[test]
    fn service_messages_are_the_first_line() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request.\nRequestId:1</Message><AuthenticationErrorDetail>sig</AuthenticationErrorDetail></Error>";
        assert_eq!(
            service_message(body).as_deref(),
            Some("Server failed to authenticate the request.")
        );
    }
}
