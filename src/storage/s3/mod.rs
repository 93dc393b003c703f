//! The `s3://` store on Amazon S3 and S3-compatible servers, with `aws-sdk-s3`.
//!
//! * Keys are used exactly as [`crate::layout::Layout`] makes them (boto 2's
//!   form: no leading slash, repeated slashes collapsed).
//! * Uploads stream: an object that fits in one part of [`PART_SIZE`] is one
//!   PUT; anything larger is a multipart upload with up to
//!   [`PART_CONCURRENCY`] parts in flight. Part buffers are counted against
//!   one semaphore per store ([`MAX_BUFFERS`]), so memory stays bounded however
//!   many uploads run at once. Every request carries Content-MD5, so the
//!   server rejects data corrupted in transit. A failed multipart upload is
//!   aborted, also when the put is cancelled.
//! * Create-only puts look the key up first, then send `If-None-Match: *`
//!   (on PutObject and CompleteMultipartUpload); `412` means the object
//!   exists. A server that answers `501 NotImplemented` to the header is
//!   remembered, and later puts rely on the lookup alone (said at debug
//!   level), but only where the lookup positively said "not found": with
//!   credentials that may not look keys up (`403`) such a put fails, naming
//!   the permission, rather than write unconditionally over an archived
//!   object. A server that ignores the header is still protected by the
//!   lookup, except against a writer racing between the lookup and the PUT.
//! * Errors are classified for [`super::RetryingStore`]: a `404` is "not
//!   found" only once the bucket is known to exist (one HeadBucket per
//!   process: a HEAD's 404 has no error code, and some servers say NoSuchKey
//!   for a missing bucket), so wal-fetch never mistakes a missing bucket for
//!   the end of the archive. Throttling, `5xx`, timeouts and broken
//!   connections are transient; everything else (bad credentials, a missing
//!   bucket) is permanent.
//! * Retries: `RetryingStore` alone retries, with WAL-E's backoff, up to
//!   `WALE_RETRIES` attempts per object; the SDK sends each request once. A
//!   download whose body breaks off resumes with a ranged GET pinned to the
//!   object's ETag (`If-Match`, also checked on the answer, since some
//!   servers ignore it). The exception is a piece of one attempt: each part
//!   of a multipart upload (and the abort of a failed one) keeps the SDK's
//!   standard three tries (exponential backoff with jitter, longer for
//!   throttling), so a reset or a `SlowDown` in one part does not restart
//!   the whole upload; the region probe, outside any store operation, too.

mod config;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::complete_multipart_upload::CompleteMultipartUploadError;
use aws_sdk_s3::operation::put_object::PutObjectError;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption,
};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::stream::{self, BoxStream, StreamExt};
use md5::{Digest, Md5};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{
    GetOptions, GetResult, Metadata, ObjectMeta, PutMode, PutOptions, PutPayload, Store,
    StoreError, metadata_from, metadata_map,
};
use crate::ByteStream;
use crate::config::{Env, Settings};
use crate::error::UserError;

use config::{S3Config, Sse};

/// Size of each multipart part, and the largest object sent as one PUT.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one upload in flight at once.
pub const PART_CONCURRENCY: usize = 4;
/// Part buffers (of up to [`PART_SIZE`]) held at once by all uploads of one
/// store: 128 MiB.
pub const MAX_BUFFERS: usize = 16;
/// S3's limit on the number of parts of one upload.
const MAX_PARTS: i32 = 10_000;
/// DeleteObjects takes at most this many keys.
const DELETE_BATCH: usize = 1_000;
const DEFAULT_REGION: &str = "us-east-1";

/// An S3 error as the operator should read it.
#[derive(Debug)]
struct S3Failure {
    status: Option<u16>,
    code: Option<String>,
    message: String,
    hint: Option<&'static str>,
}

impl fmt::Display for S3Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.status, &self.code) {
            (Some(status), Some(code)) => write!(f, "S3 answered {status} {code}")?,
            (Some(status), None) => write!(f, "S3 answered {status}")?,
            (None, _) => f.write_str("S3 request failed")?,
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(hint) = self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for S3Failure {}

fn hint_for(code: &str) -> Option<&'static str> {
    Some(match code {
        "SignatureDoesNotMatch" => "check AWS_SECRET_ACCESS_KEY",
        "InvalidAccessKeyId" | "NotSignedUp" => "check AWS_ACCESS_KEY_ID or -k",
        "InvalidToken" | "ExpiredToken" | "TokenRefreshRequired" => {
            "check AWS_SECURITY_TOKEN / AWS_SESSION_TOKEN"
        }
        "AccessDenied" => "the credentials lack permission for this bucket or key",
        "NoSuchBucket" => "the bucket does not exist: create it, or fix the bucket in the prefix",
        "PermanentRedirect"
        | "AuthorizationHeaderMalformed"
        | "IllegalLocationConstraintException" => {
            "AWS_REGION does not match the bucket's region; unset it to have the region discovered"
        }
        "RequestTimeTooSkewed" => "this host's clock is wrong",
        "InvalidStorageClass" => "check WALE_S3_STORAGE_CLASS",
        "KMS.NotFoundException" | "KMS.DisabledException" => "check WALE_S3_SSE_KMS_KEY_ID",
        _ => return None,
    })
}

/// What a failed request means.
enum Class {
    NotFound,
    NoSuchBucket,
    PreconditionFailed,
    NotImplemented,
    Transient,
    Permanent,
}

struct Failure {
    class: Class,
    error: S3Failure,
}

impl Failure {
    fn into_store_error(self, op: &'static str, key: &str) -> StoreError {
        match self.class {
            Class::NotFound => StoreError::NotFound {
                key: key.to_string(),
            },
            Class::PreconditionFailed => StoreError::AlreadyExists {
                key: key.to_string(),
            },
            Class::Transient => StoreError::transient(op, key, self.error),
            Class::NoSuchBucket | Class::NotImplemented | Class::Permanent => {
                StoreError::permanent(op, key, self.error)
            }
        }
    }
}

/// Error codes that are worth another try, in an error answer or in a
/// DeleteObjects result.
fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestTimeout"
            | "RequestTimeoutException"
            | "InternalError"
            | "ServiceUnavailable"
            | "RequestLimitExceeded"
            | "BadDigest"
    )
}

fn classify<E>(err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().map(str::to_string);
            let message = service.err().message().unwrap_or_default().to_string();
            let class = match (status, code.as_deref()) {
                (_, Some("NoSuchBucket")) => Class::NoSuchBucket,
                (404, Some("NoSuchKey")) => Class::NotFound,
                // A HEAD has no body: "not found" without a code is checked
                // against the bucket by the caller.
                (404, None | Some("NotFound")) => Class::NotFound,
                (412, _) => Class::PreconditionFailed,
                (501, _) | (_, Some("NotImplemented")) => Class::NotImplemented,
                // A conditional write racing another one: S3 says try again.
                (409, Some("ConditionalRequestConflict" | "OperationAborted")) => Class::Transient,
                (_, Some(code)) if is_transient_code(code) => Class::Transient,
                (429 | 500..=599, _) => Class::Transient,
                _ => Class::Permanent,
            };
            let hint = code.as_deref().and_then(hint_for);
            Failure {
                class,
                error: S3Failure {
                    status: Some(status),
                    code,
                    message,
                    hint,
                },
            }
        }
        SdkError::ResponseError(_) | SdkError::TimeoutError(_) => Failure {
            class: Class::Transient,
            error: S3Failure {
                status: None,
                code: None,
                message: error_chain(&err),
                hint: None,
            },
        },
        SdkError::DispatchFailure(dispatch) => {
            let message = error_chain(&err);
            Failure {
                class: if dispatch.is_user() {
                    Class::Permanent
                } else {
                    Class::Transient
                },
                error: S3Failure {
                    status: None,
                    code: None,
                    hint: credentials_hint(&message),
                    message,
                },
            }
        }
        _ => {
            let message = error_chain(&err);
            Failure {
                class: Class::Permanent,
                error: S3Failure {
                    status: None,
                    code: None,
                    hint: credentials_hint(&message),
                    message,
                },
            }
        }
    }
}

/// Credential-provider failures (the metadata service) surface as dispatch
/// or construction failures; say where the credentials were looked for.
fn credentials_hint(message: &str) -> Option<&'static str> {
    message.to_ascii_lowercase().contains("credential").then_some(
        "the credentials could not be loaded; with --aws-instance-profile they come from the EC2 instance metadata service",
    )
}

/// An error and its sources, one after the other ("a: b: c").
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// An object's time as S3 gave it. A missing or impossible one is an error:
/// 1970-01-01 in its place would silently change which backup is LATEST.
fn last_modified(
    op: &'static str,
    key: &str,
    t: Option<&aws_sdk_s3::primitives::DateTime>,
) -> Result<DateTime<Utc>, StoreError> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
        .ok_or_else(|| StoreError::permanent(op, key, "S3 gave no usable Last-Modified time"))
}

fn content_md5(data: &[u8]) -> String {
    aws_smithy_types::base64::encode(Md5::digest(data))
}

/// Reads a payload stream in parts of exactly [`PART_SIZE`] bytes (the last
/// one shorter).
struct PartReader {
    stream: ByteStream,
    pending: Option<Bytes>,
    part_size: usize,
}

impl PartReader {
    fn new(stream: ByteStream, part_size: usize) -> Self {
        PartReader {
            stream,
            pending: None,
            part_size,
        }
    }

    async fn next_chunk(&mut self, key: &str) -> Result<Option<Bytes>, StoreError> {
        if let Some(chunk) = self.pending.take() {
            return Ok(Some(chunk));
        }
        loop {
            match self.stream.next().await {
                None => return Ok(None),
                Some(Err(source)) => {
                    return Err(StoreError::Payload {
                        key: key.to_string(),
                        source,
                    });
                }
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => return Ok(Some(chunk)),
            }
        }
    }

    /// The next part; empty only for an empty object.
    async fn next_part(&mut self, key: &str) -> Result<Bytes, StoreError> {
        let mut part = BytesMut::new();
        while part.len() < self.part_size {
            let Some(mut chunk) = self.next_chunk(key).await? else {
                break;
            };
            let room = self.part_size - part.len();
            if chunk.len() > room {
                self.pending = Some(chunk.split_off(room));
            }
            if part.is_empty() && chunk.len() == self.part_size {
                return Ok(chunk);
            }
            part.extend_from_slice(&chunk);
        }
        Ok(part.freeze())
    }

    /// Whether the stream has no more data (looks ahead one chunk).
    async fn at_end(&mut self, key: &str) -> Result<bool, StoreError> {
        let chunk = self.next_chunk(key).await?;
        let end = chunk.is_none();
        self.pending = chunk;
        Ok(end)
    }
}

/// Aborts a multipart upload unless disarmed, also when the put is dropped
/// midway (the abort then runs as clean-up the process waits for, see
/// [`super::wait_for_cleanup`]).
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl AbortOnDrop {
    fn disarm(&mut self) {
        self.upload_id = None;
    }

    /// Aborts now; if this is cancelled midway, the drop aborts again.
    async fn abort_now(&mut self) {
        if let Some(upload_id) = &self.upload_id {
            abort_upload(&self.client, &self.bucket, &self.key, upload_id).await;
            self.disarm();
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(upload_id) = self.upload_id.take() {
            let (client, bucket, key) =
                (self.client.clone(), self.bucket.clone(), self.key.clone());
            super::spawn_cleanup(
                async move { abort_upload(&client, &bucket, &key, &upload_id).await },
            );
        }
    }
}

async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let result = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .customize()
        .config_override(config::piece_retries())
        .send()
        .await;
    if let Err(e) = result {
        tracing::warn!(
            detail = %format!("Upload {upload_id} of s3://{bucket}/{key}: {}", classify(e).error),
            hint = "Incomplete multipart uploads are invisible but stored; a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes them.",
            "could not abort a failed multipart upload"
        );
    }
}

pub struct S3Store {
    client: Client,
    bucket: String,
    sse: Sse,
    storage_class: Option<aws_sdk_s3::types::StorageClass>,
    buffers: Arc<Semaphore>,
    part_size: usize,
    /// The server answered `If-None-Match: *` with "not implemented".
    no_conditional_writes: AtomicBool,
    /// A HeadBucket succeeded: a `404` HEAD of a key is authoritative.
    bucket_exists: AtomicBool,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

/// The region to sign for: `AWS_REGION`, else the bucket's, asked of S3
/// (`x-amz-bucket-region` on a HeadBucket, also on its error answers).
async fn resolve_region(cfg: &S3Config, shared: &config::Shared) -> Result<String, UserError> {
    if let Some(region) = &cfg.region {
        return Ok(region.clone());
    }
    if cfg.endpoint.is_some() {
        // S3-compatible servers accept any region, or expect the default.
        return Ok(DEFAULT_REGION.to_string());
    }
    let probe = config::client(cfg, DEFAULT_REGION, shared);
    let found = match probe
        .head_bucket()
        .bucket(&cfg.bucket)
        .customize()
        .config_override(config::piece_retries())
        .send()
        .await
    {
        Ok(out) => out.bucket_region().map(str::to_string),
        Err(SdkError::ServiceError(e)) => e
            .raw()
            .headers()
            .get("x-amz-bucket-region")
            .map(str::to_string)
            .ok_or_else(|| {
                let why = classify(SdkError::ServiceError(e)).error.to_string();
                why_no_region(cfg, why)
            })
            .map(Some)?,
        Err(e) => return Err(why_no_region(cfg, classify(e).error.to_string())),
    };
    found
        .filter(|r| !r.is_empty())
        .ok_or_else(|| why_no_region(cfg, "S3 did not say the bucket's region".into()))
}

fn why_no_region(cfg: &S3Config, why: String) -> UserError {
    UserError::new(format!(
        "could not find out the region of bucket {}",
        cfg.bucket
    ))
    .detail(format!(
        "AWS_REGION is not set, and asking S3 for the bucket's region failed: {why}"
    ))
    .hint("Set AWS_REGION to the bucket's region (such as eu-west-1), or WALE_S3_ENDPOINT for an S3-compatible server.")
}

impl S3Store {
    /// Opens the store from the settings in `env` (see [`S3Config`]).
    pub async fn open(settings: &Settings, env: &dyn Env) -> Result<S3Store, UserError> {
        let cfg = S3Config::from_env(settings, env)?;
        let shared = config::Shared::new(&cfg)?;
        let region = resolve_region(&cfg, &shared).await?;
        tracing::debug!(bucket = %cfg.bucket, region = %region, "opening the S3 store");
        let client = config::client(&cfg, &region, &shared);
        Ok(S3Store {
            client,
            bucket: cfg.bucket,
            sse: cfg.sse,
            storage_class: cfg.storage_class,
            buffers: Arc::new(Semaphore::new(MAX_BUFFERS)),
            part_size: PART_SIZE,
            no_conditional_writes: AtomicBool::new(false),
            bucket_exists: AtomicBool::new(false),
        })
    }

    async fn buffer_permit(&self) -> OwnedSemaphorePermit {
        self.buffers
            .clone()
            .acquire_owned()
            .await
            .expect("the buffer semaphore is never closed")
    }

    fn sse_header(&self) -> (Option<ServerSideEncryption>, Option<String>) {
        match &self.sse {
            Sse::None => (None, None),
            Sse::Aes256 => (Some(ServerSideEncryption::Aes256), None),
            Sse::Kms { key_id } => (Some(ServerSideEncryption::AwsKms), key_id.clone()),
        }
    }

    fn conditional(&self, options: &PutOptions) -> bool {
        options.mode == PutMode::Create && !self.no_conditional_writes.load(Ordering::Relaxed)
    }

    /// After a `501` to `If-None-Match`: remembers that the server does not
    /// do conditional writes, and allows the unconditional write only if the
    /// lookup before it positively said the key does not exist (`absent`).
    /// Otherwise (the credentials may not look keys up) an unconditional
    /// write could replace an archived object: refused.
    fn conditional_unsupported(
        &self,
        key: &str,
        error: &S3Failure,
        absent: bool,
    ) -> Result<(), StoreError> {
        self.no_conditional_writes.store(true, Ordering::Relaxed);
        if !absent {
            return Err(create_unverifiable(key, &error.to_string()));
        }
        tracing::debug!(
            detail = %format!("Writing {key}: {error}"),
            "the server does not support If-None-Match on writes; create-only puts rely on looking the key up first"
        );
        Ok(())
    }

    async fn head_object(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(ObjectMeta {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                last_modified: last_modified("head", key, out.last_modified())?,
                metadata: metadata_from(out.metadata().into_iter().flatten()),
                version: None,
            }),
            Err(e) => Err(classify(e).into_store_error("head", key)),
        }
    }

    /// A `404` HEAD is "not found" only once the bucket is known to exist.
    async fn confirm_bucket(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        if self.bucket_exists.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => {
                self.bucket_exists.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                let failure = classify(e);
                let failure = match failure.class {
                    // HeadBucket has no body either: its 404 is the bucket's.
                    Class::NotFound | Class::NoSuchBucket => Failure {
                        class: Class::NoSuchBucket,
                        error: S3Failure {
                            code: Some("NoSuchBucket".into()),
                            hint: hint_for("NoSuchBucket"),
                            message: format!("bucket {} does not exist", self.bucket),
                            ..failure.error
                        },
                    },
                    _ => failure,
                };
                Err(failure.into_store_error(op, key))
            }
        }
    }

    async fn put_single(
        &self,
        key: &str,
        body: Bytes,
        options: &PutOptions,
        absent: bool,
    ) -> Result<(), StoreError> {
        let mut conditional = self.conditional(options);
        loop {
            let (sse, kms_key) = self.sse_header();
            let result = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_length(body.len() as i64)
                .content_md5(content_md5(&body))
                .set_content_type(options.content_type.map(str::to_string))
                .set_server_side_encryption(sse)
                .set_ssekms_key_id(kms_key)
                .set_storage_class(self.storage_class.clone())
                .set_metadata(metadata_map(&options.metadata))
                .set_if_none_match(conditional.then(|| "*".to_string()))
                .body(SdkByteStream::from(body.clone()))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let failure = classify::<PutObjectError>(e);
                    if conditional && matches!(failure.class, Class::NotImplemented) {
                        self.conditional_unsupported(key, &failure.error, absent)?;
                        conditional = false;
                        continue;
                    }
                    return Err(failure.into_store_error("put", key));
                }
            }
        }
    }

    async fn put_multipart(
        &self,
        key: &str,
        first: Bytes,
        first_permit: OwnedSemaphorePermit,
        mut reader: PartReader,
        options: &PutOptions,
        absent: bool,
    ) -> Result<(), StoreError> {
        let (sse, kms_key) = self.sse_header();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_content_type(options.content_type.map(str::to_string))
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .set_storage_class(self.storage_class.clone())
            .set_metadata(metadata_map(&options.metadata))
            .send()
            .await
            .map_err(|e| classify(e).into_store_error("put", key))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StoreError::permanent("put", key, "S3 returned no upload id"))?
            .to_string();
        let mut guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
            upload_id: Some(upload_id.clone()),
        };
        let result = async {
            let parts = self
                .upload_parts(key, &upload_id, first, first_permit, &mut reader)
                .await?;
            self.complete(key, &upload_id, parts, options, absent).await
        }
        .await;
        match result {
            Ok(()) => guard.disarm(),
            Err(_) => guard.abort_now().await,
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        first_permit: OwnedSemaphorePermit,
        reader: &mut PartReader,
    ) -> Result<Vec<CompletedPart>, StoreError> {
        let mut tasks: JoinSet<Result<CompletedPart, StoreError>> = JoinSet::new();
        let mut done = Vec::new();
        let mut next = Some((first, first_permit));
        let mut number = 0;
        while let Some((body, permit)) = next.take() {
            number += 1;
            if number > MAX_PARTS {
                return Err(StoreError::permanent(
                    "put",
                    key,
                    format!(
                        "the object is larger than S3's limit of {MAX_PARTS} parts of {} bytes",
                        self.part_size
                    ),
                ));
            }
            while tasks.len() >= PART_CONCURRENCY {
                done.push(joined(tasks.join_next().await)?);
            }
            while let Some(finished) = tasks.try_join_next() {
                done.push(joined(Some(finished))?);
            }
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(body.len() as i64)
                .content_md5(content_md5(&body))
                .body(SdkByteStream::from(body));
            let task_key = key.to_string();
            tasks.spawn(async move {
                let out = part
                    .customize()
                    .config_override(config::piece_retries())
                    .send()
                    .await
                    .map_err(|e| classify(e).into_store_error("put", &task_key))?;
                drop(permit);
                Ok(CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .build())
            });
            if !reader.at_end(key).await? {
                let permit = self.buffer_permit().await;
                next = Some((reader.next_part(key).await?, permit));
            }
        }
        while let Some(finished) = tasks.join_next().await {
            done.push(joined(Some(finished))?);
        }
        done.sort_by_key(|p| p.part_number());
        Ok(done)
    }

    async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        options: &PutOptions,
        absent: bool,
    ) -> Result<(), StoreError> {
        let upload = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        let mut conditional = self.conditional(options);
        loop {
            let result = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(upload.clone())
                .set_if_none_match(conditional.then(|| "*".to_string()))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let failure = classify::<CompleteMultipartUploadError>(e);
                    if conditional && matches!(failure.class, Class::NotImplemented) {
                        self.conditional_unsupported(key, &failure.error, absent)?;
                        conditional = false;
                        continue;
                    }
                    return Err(failure.into_store_error("put", key));
                }
            }
        }
    }

    async fn list_page(
        &self,
        prefix: String,
        start_after: Option<String>,
        token: Option<String>,
    ) -> Result<(Vec<ObjectMeta>, Option<String>), StoreError> {
        {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_start_after(start_after)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| classify(e).into_store_error("list", &prefix))?;
            let items = out
                .contents()
                .iter()
                .filter_map(|o| {
                    let key = o.key()?;
                    Some(
                        last_modified("list", key, o.last_modified()).map(|last_modified| {
                            ObjectMeta {
                                key: key.to_string(),
                                size: o.size().unwrap_or(0).max(0) as u64,
                                last_modified,
                                metadata: Metadata::new(),
                                version: None,
                            }
                        }),
                    )
                })
                .collect::<Result<_, _>>()?;
            let next = match out.is_truncated() {
                Some(true) => Some(
                    out.next_continuation_token()
                        .map(str::to_string)
                        .ok_or_else(|| {
                            StoreError::permanent(
                                "list",
                                &prefix,
                                "S3 said the listing is truncated but gave no continuation token",
                            )
                        })?,
                ),
                _ => None,
            };
            Ok((items, next))
        }
    }
}

/// A create-only put that neither the server (no `If-None-Match`) nor a
/// lookup (no permission) can make safe.
fn create_unverifiable(key: &str, why: &str) -> StoreError {
    StoreError::permanent(
        "put",
        key,
        format!(
            "cannot write without risking to replace an existing object: this S3 server does not support If-None-Match on writes (501 NotImplemented) and the credentials may not look the key up (403 on HEAD): grant s3:GetObject and s3:ListBucket on the prefix ({why})"
        ),
    )
}

fn joined(
    finished: Option<Result<Result<CompletedPart, StoreError>, tokio::task::JoinError>>,
) -> Result<CompletedPart, StoreError> {
    match finished {
        Some(Ok(part)) => part,
        Some(Err(e)) => Err(StoreError::permanent("put", "(part upload)", e)),
        None => Err(StoreError::permanent(
            "put",
            "(part upload)",
            "no part upload was running",
        )),
    }
}

fn body_stream(key: String, body: SdkByteStream) -> ByteStream {
    stream::unfold(Some(body), move |body| {
        let key = key.clone();
        async move {
            let mut body = body?;
            match body.next().await {
                None => None,
                Some(Ok(chunk)) => Some((Ok(chunk), Some(body))),
                Some(Err(e)) => Some((
                    Err(io::Error::from(StoreError::transient(
                        "get",
                        &key,
                        error_chain(&e),
                    ))),
                    None,
                )),
            }
        }
    })
    .boxed()
}

#[async_trait]
impl Store for S3Store {
    async fn put(
        &self,
        key: &str,
        payload: PutPayload,
        options: &PutOptions,
    ) -> Result<(), StoreError> {
        // Whether a lookup positively said the key does not exist: only then
        // may a create-only put fall back to an unconditional write.
        let mut absent = false;
        if options.mode == PutMode::Create {
            // Through `head`: a missing bucket is reported before any upload.
            match self.head(key).await {
                Ok(_) => {
                    return Err(StoreError::AlreadyExists {
                        key: key.to_string(),
                    });
                }
                Err(StoreError::NotFound { .. }) => absent = true,
                // Credentials that may write but not read (a common way to
                // harden archiving): the conditional write alone decides,
                // if the server does them.
                Err(StoreError::Permanent { source, .. })
                    if source
                        .downcast_ref::<S3Failure>()
                        .is_some_and(|f| f.status == Some(403)) =>
                {
                    if self.no_conditional_writes.load(Ordering::Relaxed) {
                        return Err(create_unverifiable(key, &source.to_string()));
                    }
                    tracing::debug!(
                        key,
                        "no permission to look the key up; relying on If-None-Match alone"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let mut reader = PartReader::new(payload.open(), self.part_size);
        let permit = self.buffer_permit().await;
        let first = reader.next_part(key).await?;
        if reader.at_end(key).await? {
            let result = self.put_single(key, first, options, absent).await;
            drop(permit);
            return result;
        }
        self.put_multipart(key, first, permit, reader, options, absent)
            .await
    }

    async fn get_opts(&self, key: &str, options: &GetOptions) -> Result<GetResult, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(options.range_header())
            .set_if_match(options.if_match.clone())
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let failure = classify(e);
                if matches!(failure.class, Class::PreconditionFailed) {
                    return Err(StoreError::Changed {
                        key: key.to_string(),
                    });
                }
                return match failure.into_store_error("get", key) {
                    StoreError::NotFound { key } => {
                        self.confirm_bucket("get", &key).await?;
                        Err(StoreError::NotFound { key })
                    }
                    other => Err(other),
                };
            }
        };
        let version = out.e_tag().map(str::to_string);
        let size = options.check_answer(
            key,
            version.as_deref(),
            out.content_range(),
            out.content_length().map(|n| n.max(0) as u64),
        )?;
        let meta = ObjectMeta {
            key: key.to_string(),
            size: size.unwrap_or(0),
            last_modified: last_modified("get", key, out.last_modified())?,
            metadata: metadata_from(out.metadata().into_iter().flatten()),
            version,
        };
        let body = body_stream(key.to_string(), out.body);
        let tail = size.map(|size| size - options.range_start);
        Ok(GetResult {
            meta,
            stream: super::checked_length(body, tail, key),
        })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        match self.head_object(key).await {
            Err(StoreError::NotFound { key }) => {
                self.confirm_bucket("head", &key).await?;
                Err(StoreError::NotFound { key })
            }
            other => other,
        }
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<String>,
    ) -> BoxStream<'_, Result<ObjectMeta, StoreError>> {
        enum Page {
            First(Option<String>),
            Next(String),
            Done,
        }
        let prefix = prefix.to_string();
        stream::unfold(Page::First(start_after), move |page| {
            let prefix = prefix.clone();
            async move {
                let (start_after, token) = match page {
                    Page::First(start_after) => (start_after, None),
                    Page::Next(token) => (None, Some(token)),
                    Page::Done => return None,
                };
                match self.list_page(prefix, start_after, token).await {
                    Ok((items, next)) => {
                        let page = next.map_or(Page::Done, Page::Next);
                        Some((stream::iter(items.into_iter().map(Ok)).boxed(), page))
                    }
                    Err(e) => Some((stream::iter([Err(e)]).boxed(), Page::Done)),
                }
            }
        })
        .flatten()
        .boxed()
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        let mut failures = Vec::new();
        for batch in keys.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::permanent("delete", &batch[0], e))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StoreError::permanent("delete", &batch[0], e))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| classify(e).into_store_error("delete", &batch[0]))?;
            // Deletes are idempotent: a key refused for a passing reason
            // makes the whole call worth another try.
            if let Some(e) = out
                .errors()
                .iter()
                .find(|e| e.code().is_some_and(is_transient_code))
            {
                let key = e.key().unwrap_or(&batch[0]);
                let why = format!(
                    "{}: {}",
                    e.code().unwrap_or_default(),
                    e.message().unwrap_or_default()
                );
                return Err(StoreError::transient("delete", key, why));
            }
            failures.extend(out.errors().iter().map(|e| {
                (
                    e.key().unwrap_or_default().to_string(),
                    format!(
                        "{}: {}",
                        e.code().unwrap_or("error"),
                        e.message().unwrap_or_default()
                    ),
                )
            }));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(StoreError::DeleteFailed { failures })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> ByteStream {
        let chunks: Vec<io::Result<Bytes>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Ok(Bytes::from(vec![i as u8; *n])))
            .collect();
        stream::iter(chunks).boxed()
    }

    async fn parts(sizes: &[usize], part_size: usize) -> Vec<usize> {
        let mut reader = PartReader::new(chunks(sizes), part_size);
        let mut out = vec![reader.next_part("k").await.unwrap().len()];
        while !reader.at_end("k").await.unwrap() {
            out.push(reader.next_part("k").await.unwrap().len());
        }
        out
    }

    #[test]
    fn a_missing_last_modified_time_is_an_error_not_1970() {
        let t = aws_sdk_s3::primitives::DateTime::from_secs_and_nanos(1_795_000_000, 5_000);
        assert_eq!(
            last_modified("head", "k", Some(&t)).unwrap(),
            DateTime::from_timestamp(1_795_000_000, 5_000).unwrap()
        );
        let err = last_modified("list", "wal_005/x.lzo", None).unwrap_err();
        assert!(!err.is_transient());
        assert!(err.to_string().contains("no usable Last-Modified"), "{err}");
    }

    #[tokio::test]
    async fn payloads_are_cut_into_exact_parts() {
        assert_eq!(parts(&[], 4).await, vec![0]);
        assert_eq!(parts(&[0, 3, 0], 4).await, vec![3]);
        assert_eq!(parts(&[4], 4).await, vec![4]);
        assert_eq!(parts(&[3, 3, 3], 4).await, vec![4, 4, 1]);
        assert_eq!(parts(&[10], 4).await, vec![4, 4, 2]);
        assert_eq!(parts(&[1, 7], 4).await, vec![4, 4]);
    }

    #[tokio::test]
    async fn part_boundaries_keep_the_bytes_in_order() {
        let mut reader = PartReader::new(chunks(&[3, 3, 3]), 4);
        let mut all = Vec::new();
        all.extend_from_slice(&reader.next_part("k").await.unwrap());
        while !reader.at_end("k").await.unwrap() {
            all.extend_from_slice(&reader.next_part("k").await.unwrap());
        }
        assert_eq!(all, [0, 0, 0, 1, 1, 1, 2, 2, 2]);
    }

    #[tokio::test]
    async fn payload_errors_are_reported_as_such() {
        let s =
            stream::iter([Ok(Bytes::from_static(b"ab")), Err(io::Error::other("boom"))]).boxed();
        let mut reader = PartReader::new(s, 4);
        let err = reader.next_part("k").await.unwrap_err();
        assert!(matches!(err, StoreError::Payload { .. }), "{err:?}");
    }

    #[test]
    fn failures_read_like_wal_e_messages() {
        let f = S3Failure {
            status: Some(403),
            code: Some("SignatureDoesNotMatch".into()),
            message: "The request signature we calculated does not match".into(),
            hint: hint_for("SignatureDoesNotMatch"),
        };
        assert_eq!(
            f.to_string(),
            "S3 answered 403 SignatureDoesNotMatch: The request signature we calculated does not match (check AWS_SECRET_ACCESS_KEY)"
        );
    }
}
