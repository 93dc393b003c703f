//! An S3-compatible server for the tests (s3s-fs, in this process, checking
//! SigV4 signatures), a fault-injecting proxy in front of it, and a fake EC2
//! instance metadata service (IMDSv2).
//!
//! Each runs on 127.0.0.1 in a thread with a tokio runtime of its own, so
//! they serve the wal-e processes the tests start as well as the tests'
//! own runtimes. Threads end with the test process; the server's data
//! directory is removed then by a small reaper process (see `server.rs`).

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use wal_e::cli::GlobalArgs;
use wal_e::config::Settings;
use wal_e::storage::{self, Store};

use super::backend::{BackendEnv, TestBackend};

pub const ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
pub const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;
type Handler =
    Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// What a test server does with one request.
pub enum Reply {
    Respond(Response<Body>),
    /// Close the connection without answering (a reset, as the client sees it).
    Drop,
}

fn full(status: StatusCode, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    let mut response = Response::builder().status(status);
    for (k, v) in headers {
        response = response.header(*k, *v);
    }
    Reply::Respond(
        response
            .body(
                Full::new(body.into())
                    .map_err(|never: Infallible| match never {})
                    .boxed(),
            )
            .unwrap(),
    )
}

/// Serves `handler` on a fresh 127.0.0.1 port from a thread of its own.
fn serve(name: &str, handler: Handler) -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let handler = handler.clone();
                            async move {
                                match handler(req).await {
                                    Reply::Respond(r) => Ok(r),
                                    Reply::Drop => Err("connection dropped on purpose"),
                                }
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        })
        .unwrap();
    port
}

/// Removes `dir` when this process exits, however it exits.
fn remove_at_exit(dir: &Path) -> Mutex<(Child, ChildStdin)> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"read -r _ || true; rm -rf "$1""#)
        .arg("reaper")
        .arg(dir)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    Mutex::new((child, stdin))
}

/// s3s-fs on 127.0.0.1 with SigV4 authentication for one key pair.
pub struct S3Server {
    pub port: u16,
    pub root: PathBuf,
    _reaper: Mutex<(Child, ChildStdin)>,
}

impl S3Server {
    fn start() -> S3Server {
        let root = tempfile::Builder::new()
            .prefix("wal-e-test-s3s-")
            .tempdir()
            .unwrap()
            .keep();
        let reaper = remove_at_exit(&root);
        let fs = s3s_fs::FileSystem::new(&root).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let handler: Handler = Arc::new(move |req| {
            let service = service.clone();
            Box::pin(async move {
                match hyper::service::Service::call(&service, req).await {
                    Ok(response) => Reply::Respond(response.map(|b| b.boxed())),
                    Err(_) => Reply::Drop,
                }
            })
        });
        let port = serve("s3s-fs", handler);
        S3Server {
            port,
            root,
            _reaper: reaper,
        }
    }

    /// The server this test process shares between its tests.
    pub fn shared() -> &'static S3Server {
        static SERVER: OnceLock<S3Server> = OnceLock::new();
        SERVER.get_or_init(S3Server::start)
    }

    /// Creates a new, empty bucket (a directory, for s3s-fs).
    pub fn create_bucket(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("wal-e-test-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        std::fs::create_dir(self.root.join(&name)).unwrap();
        name
    }
}

/// Buckets on the shared s3s-fs server, reached directly or through a proxy.
pub struct S3Backend {
    port: u16,
}

impl S3Backend {
    pub fn new() -> Self {
        S3Backend {
            port: S3Server::shared().port,
        }
    }

    /// Requests go to `port` (a proxy) instead of the server itself.
    pub fn via(port: u16) -> Self {
        S3Server::shared();
        S3Backend { port }
    }
}

impl Default for S3Backend {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBackend for S3Backend {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn fresh_prefix(&self) -> BackendEnv {
        let bucket = S3Server::shared().create_bucket();
        BackendEnv::new([
            ("WALE_S3_PREFIX", format!("s3://{bucket}/db1")),
            (
                "WALE_S3_ENDPOINT",
                format!("http+path://127.0.0.1:{}", self.port),
            ),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ])
    }
}

/// The store wal-e opens for `env`, opened on the caller's runtime.
pub async fn open_store(env: &BackendEnv) -> Arc<dyn Store> {
    let vars: HashMap<String, String> = env.vars.iter().cloned().collect();
    let settings = Settings::from_args(&GlobalArgs::default(), &vars).unwrap();
    storage::open(&settings, &vars)
        .await
        .unwrap_or_else(|e| panic!("open the S3 store: {e}"))
}

/// A plain SDK client for `env`'s server, to look at what wal-e stored.
pub fn sdk_client(port: u16) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            ACCESS_KEY, SECRET_KEY, None, None, "test",
        ))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Which requests the proxy spoils.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every n-th request fails (0: none), alternately with `503 SlowDown`
    /// and a dropped connection.
    pub fail_every: AtomicU64,
    /// Requests carrying `If-None-Match` get `501 NotImplemented`, as from a
    /// server without conditional writes.
    pub reject_conditional: AtomicBool,
    /// Object HEADs are answered with this status (`404`: hidden, `403`:
    /// credentials that may write but not read) without asking the server;
    /// 0 passes them on.
    pub object_head_status: AtomicU16,
    /// Object GETs are answered with this status and an `AccessDenied`
    /// error (`403`: credentials that may write but not read); 0 passes
    /// them on.
    pub object_get_status: AtomicU16,
    /// DeleteObjects is answered, without deleting anything, with a
    /// per-key error for this key: (key, error code).
    pub refuse_delete_of: Mutex<Option<(String, &'static str)>>,
    /// Bucket HEADs are answered with this region header added.
    pub bucket_region: Mutex<Option<String>>,
    /// Multipart part uploads are never answered (a server that hangs
    /// midway through an upload).
    pub hang_part_uploads: AtomicBool,
    /// AbortMultipartUpload requests the server answered with success.
    pub multipart_aborts: AtomicU64,
    /// Requests whose path and query contain the text fail like
    /// `fail_every`'s, the first `n` of them (`u64::MAX`: all).
    pub fail_matching: Mutex<Option<(String, u64)>>,
    /// The first GET whose path contains the text gets only the first half
    /// of its body, then the connection is closed.
    pub cut_body_of: Mutex<Option<String>>,
    /// The first PUT whose path contains the text is carried out by the
    /// server, but its answer is dropped (lost on the way back).
    pub drop_answer_to_put: Mutex<Option<String>>,
    /// Where that body was cut, and the object's ETag.
    pub cut: Mutex<Option<Cut>>,
    /// Every GET passed on: path, `Range` and `If-Match`.
    pub gets: Mutex<Vec<SeenGet>>,
    /// Requests per method and path ("GET /bucket/key"), spoiled or not.
    pub per_object: Mutex<HashMap<String, u64>>,
    pub requests: AtomicU64,
    pub failed: AtomicU64,
    /// Requests that asked for server-side encryption.
    pub sse_requests: AtomicU64,
    /// The regions requests were signed for.
    pub signing_regions: Mutex<BTreeSet<String>>,
    pub conditional_rejected: AtomicU64,
}

impl Faults {
    /// The most requests any one method and path got, and that method and path.
    pub fn most_per_object(&self) -> (u64, String) {
        let counts = self.per_object.lock().unwrap();
        counts
            .iter()
            .map(|(k, n)| (*n, k.clone()))
            .max()
            .unwrap_or_default()
    }
}

/// A body the proxy cut: the bytes it sent, and the object's ETag.
#[derive(Debug, Clone)]
pub struct Cut {
    pub at: u64,
    pub etag: Option<String>,
}

/// A GET as the proxy saw it.
#[derive(Debug, Clone)]
pub struct SeenGet {
    pub path: String,
    pub range: Option<String>,
    pub if_match: Option<String>,
}

/// The first half of `body`, then an error, which makes the server close
/// the connection: the client sees the body end early.
fn cut_in_half(body: Bytes) -> Body {
    use futures_util::StreamExt;
    let half = body.slice(..body.len() / 2);
    let frames = futures_util::stream::iter([Ok(hyper::body::Frame::data(half))]).chain(
        futures_util::stream::once(async {
            // One turn for the server to write the half out first.
            tokio::task::yield_now().await;
            Err::<hyper::body::Frame<Bytes>, BoxError>("body cut by the test proxy".into())
        }),
    );
    BodyExt::boxed(http_body_util::StreamBody::new(frames))
}

/// A proxy on 127.0.0.1 in front of the S3 server that spoils requests in a
/// fixed pattern.
pub struct FaultProxy {
    pub port: u16,
    pub faults: Arc<Faults>,
}

fn slow_down() -> Reply {
    full(
        StatusCode::SERVICE_UNAVAILABLE,
        &[("content-type", "application/xml")],
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
    )
}

impl FaultProxy {
    pub fn start() -> FaultProxy {
        let upstream = S3Server::shared().port;
        let faults = Arc::new(Faults::default());
        let client: hyper_util::client::legacy::Client<_, Incoming> =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        let state = faults.clone();
        let handler: Handler = Arc::new(move |mut req| {
            let faults = state.clone();
            let client = client.clone();
            Box::pin(async move {
                let n = faults.requests.fetch_add(1, Ordering::SeqCst) + 1;
                if req.headers().contains_key("x-amz-server-side-encryption") {
                    faults.sse_requests.fetch_add(1, Ordering::SeqCst);
                }
                // Credential=AKID/20260101/REGION/s3/aws4_request
                if let Some(region) = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split("Credential=").nth(1))
                    .and_then(|c| c.split('/').nth(2))
                {
                    faults
                        .signing_regions
                        .lock()
                        .unwrap()
                        .insert(region.to_string());
                }
                let path = req.uri().path().to_string();
                *faults
                    .per_object
                    .lock()
                    .unwrap()
                    .entry(format!("{} {path}", req.method()))
                    .or_default() += 1;
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let is_get = req.method() == hyper::Method::GET;
                if is_get {
                    faults.gets.lock().unwrap().push(SeenGet {
                        path: path.clone(),
                        range: header("range"),
                        if_match: header("if-match"),
                    });
                }
                let matched = {
                    let target = req.uri().path_and_query().map_or("", |p| p.as_str());
                    let mut rule = faults.fail_matching.lock().unwrap();
                    match rule.as_mut() {
                        Some((text, left)) if *left > 0 && target.contains(text.as_str()) => {
                            *left -= 1;
                            true
                        }
                        _ => false,
                    }
                };
                let every = faults.fail_every.load(Ordering::SeqCst);
                if matched || (every > 0 && n % every == 0) {
                    let k = faults.failed.fetch_add(1, Ordering::SeqCst);
                    return if k % 2 == 0 { slow_down() } else { Reply::Drop };
                }
                let is_object = path.trim_matches('/').contains('/');
                let cut = is_get && {
                    let mut cut = faults.cut_body_of.lock().unwrap();
                    let hit = cut
                        .as_ref()
                        .is_some_and(|text| path.contains(text.as_str()));
                    if hit {
                        *cut = None;
                    }
                    hit
                };
                let drop_answer = req.method() == hyper::Method::PUT && {
                    let mut rule = faults.drop_answer_to_put.lock().unwrap();
                    let hit = rule
                        .as_ref()
                        .is_some_and(|text| path.contains(text.as_str()));
                    if hit {
                        *rule = None;
                    }
                    hit
                };
                let head_status = faults.object_head_status.load(Ordering::SeqCst);
                if req.method() == hyper::Method::HEAD && is_object && head_status != 0 {
                    return full(StatusCode::from_u16(head_status).unwrap(), &[], "");
                }
                let get_status = faults.object_get_status.load(Ordering::SeqCst);
                if req.method() == hyper::Method::GET && is_object && get_status != 0 {
                    return full(
                        StatusCode::from_u16(get_status).unwrap(),
                        &[("content-type", "application/xml")],
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
                    );
                }
                if req.headers().contains_key("if-none-match")
                    && faults.reject_conditional.load(Ordering::SeqCst)
                {
                    faults.conditional_rejected.fetch_add(1, Ordering::SeqCst);
                    return full(
                        StatusCode::NOT_IMPLEMENTED,
                        &[("content-type", "application/xml")],
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented.</Message></Error>",
                    );
                }
                if req.method() == hyper::Method::POST
                    && req
                        .uri()
                        .query()
                        .is_some_and(|q| q.split('&').any(|p| p == "delete" || p == "delete="))
                    && let Some((key, code)) = faults.refuse_delete_of.lock().unwrap().clone()
                {
                    return full(
                        StatusCode::OK,
                        &[("content-type", "application/xml")],
                        format!(
                            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Error><Key>{key}</Key><Code>{code}</Code><Message>refused by the test proxy</Message></Error></DeleteResult>"
                        ),
                    );
                }
                let multipart = req
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|p| p.starts_with("uploadId=")));
                if multipart
                    && req.method() == hyper::Method::PUT
                    && faults.hang_part_uploads.load(Ordering::SeqCst)
                {
                    return std::future::pending().await;
                }
                let abort = multipart && req.method() == hyper::Method::DELETE;
                let head_bucket = req.method() == hyper::Method::HEAD && !is_object;
                let target = format!(
                    "http://127.0.0.1:{upstream}{}",
                    req.uri().path_and_query().map_or("/", |p| p.as_str())
                );
                *req.uri_mut() = target.parse().unwrap();
                match client.request(req).await {
                    Ok(_) if drop_answer => Reply::Drop,
                    Ok(response) => {
                        let (mut parts, body) = response.into_parts();
                        if abort && parts.status.is_success() {
                            faults.multipart_aborts.fetch_add(1, Ordering::SeqCst);
                        }
                        if head_bucket
                            && let Some(region) = faults.bucket_region.lock().unwrap().clone()
                        {
                            parts
                                .headers
                                .insert("x-amz-bucket-region", region.parse().unwrap());
                        }
                        if cut {
                            let Ok(whole) = body.collect().await else {
                                return Reply::Drop;
                            };
                            let whole = whole.to_bytes();
                            *faults.cut.lock().unwrap() = Some(Cut {
                                at: whole.len() as u64 / 2,
                                etag: parts
                                    .headers
                                    .get("etag")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string),
                            });
                            return Reply::Respond(Response::from_parts(parts, cut_in_half(whole)));
                        }
                        Reply::Respond(Response::from_parts(
                            parts,
                            body.map_err(BoxError::from).boxed(),
                        ))
                    }
                    Err(_) => Reply::Drop,
                }
            })
        });
        FaultProxy {
            port: serve("s3-fault-proxy", handler),
            faults,
        }
    }
}

/// A fake EC2 instance metadata service (IMDSv2) handing out the test
/// server's key pair as role credentials.
pub struct FakeImds {
    pub port: u16,
    /// Credential documents served.
    pub served: Arc<AtomicU64>,
}

impl FakeImds {
    pub const ROLE: &'static str = "wal-e-test-role";
    const TOKEN: &'static str = "imds-session-token-for-tests";

    pub fn start() -> FakeImds {
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        let handler: Handler = Arc::new(move |req| {
            let served = counter.clone();
            Box::pin(async move {
                let path = req.uri().path().to_string();
                if req.method() == hyper::Method::PUT && path == "/latest/api/token" {
                    return full(
                        StatusCode::OK,
                        &[("x-aws-ec2-metadata-token-ttl-seconds", "21600")],
                        FakeImds::TOKEN,
                    );
                }
                let token = req
                    .headers()
                    .get("x-aws-ec2-metadata-token")
                    .and_then(|v| v.to_str().ok());
                if token != Some(FakeImds::TOKEN) {
                    return full(StatusCode::UNAUTHORIZED, &[], "");
                }
                let base = "/latest/meta-data/iam/security-credentials/";
                if path == base {
                    return full(StatusCode::OK, &[], FakeImds::ROLE);
                }
                if path.strip_prefix(base) == Some(FakeImds::ROLE) {
                    served.fetch_add(1, Ordering::SeqCst);
                    let expires = (chrono::Utc::now() + chrono::Duration::hours(6))
                        .format("%Y-%m-%dT%H:%M:%SZ");
                    let doc = format!(
                        r#"{{"Code":"Success","LastUpdated":"2026-01-01T00:00:00Z","Type":"AWS-HMAC","AccessKeyId":"{ACCESS_KEY}","SecretAccessKey":"{SECRET_KEY}","Token":"session-token-from-imds","Expiration":"{expires}"}}"#
                    );
                    return full(StatusCode::OK, &[("content-type", "text/plain")], doc);
                }
                full(StatusCode::NOT_FOUND, &[], "")
            })
        });
        FakeImds {
            port: serve("fake-imds", handler),
            served,
        }
    }
}
