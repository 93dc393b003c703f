//! A real OpenStack Swift for the tests: `scripts/swift-aio.sh` (Debian's
//! swift-proxy, -object, -container and -account with TempAuth, memcached and
//! a one-replica ring) on free ports of 127.0.0.1, started once per test
//! binary, plus Keystone v2.0/v3 facades (`tests/swift/mock_keystone.py`)
//! whose tokens are TempAuth's and whose catalogs point at the real proxy.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::backend::{BackendEnv, TestBackend};
use super::server::{ServerProcess, free_port};

const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The TempAuth account every test uses (`test:tester` / `testing`).
pub const TENANT: &str = "test";
pub const USER: &str = "tester";
pub const PASSWORD: &str = "testing";

/// How wal-e logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// TempAuth directly (`SWIFT_AUTH_VERSION=1`, `SWIFT_USER=test:tester`).
    V1,
    /// Keystone v2.0 through the facade: WAL-E's default.
    V2,
    /// Keystone v3 through the facade, with user and project domains.
    V3,
}

pub struct Swift {
    aio: ServerProcess,
    pub proxy_port: u16,
    /// A second proxy on the same cluster whose `/info` hides bulk delete.
    pub nobulk_port: u16,
    memcached_port: u16,
    keystone: Keystone,
    next: AtomicU32,
}

/// The cluster of this test binary, started on first use.
pub fn swift() -> &'static Swift {
    static SWIFT: OnceLock<Swift> = OnceLock::new();
    SWIFT.get_or_init(Swift::start)
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

impl Swift {
    fn start() -> Swift {
        let started = Instant::now();
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        let (proxy_port, nobulk_port, memcached_port) = (ports[0], ports[1], ports[5]);
        let envs: Vec<(String, String)> = [
            ("SWIFT_PROXY_PORT", ports[0]),
            ("SWIFT_PROXY_NOBULK_PORT", ports[1]),
            ("SWIFT_OBJECT_PORT", ports[2]),
            ("SWIFT_CONTAINER_PORT", ports[3]),
            ("SWIFT_ACCOUNT_PORT", ports[4]),
            ("MEMCACHED_PORT", ports[5]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let aio = ServerProcess::spawn("swift", Path::new("bash"), &envs, |dir| {
            // The swift user must reach its devices and configuration.
            super::pg::make_traversable(dir);
            vec![
                repo_path("scripts/swift-aio.sh").display().to_string(),
                dir.join("aio").display().to_string(),
            ]
        });
        for port in &ports {
            aio.wait_for_port(*port, START_TIMEOUT);
        }
        let tempauth = format!("http://127.0.0.1:{proxy_port}/auth/v1.0");
        // Listening is not serving yet: poll until an account and container
        // can be created.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = v1_login(&tempauth, &format!("{TENANT}:{USER}"), PASSWORD)
                .and_then(|(token, url)| put_container(&url, &token, "wal-e-probe"));
            match ready {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    panic!("Swift did not come up: {e}\n{}", aio.log_text())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let keystone = Keystone::start(&tempauth);
        eprintln!(
            "swift: all-in-one and Keystone facade up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Swift {
            aio,
            proxy_port,
            nobulk_port,
            memcached_port,
            keystone,
            next: AtomicU32::new(0),
        }
    }

    pub fn tempauth_url(&self) -> String {
        format!("http://127.0.0.1:{}/auth/v1.0", self.proxy_port)
    }

    pub fn keystone(&self) -> &Keystone {
        &self.keystone
    }

    /// A new, empty container.
    pub fn new_container(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("wal-e-{}-{n}", std::process::id());
        let (token, url) = v1_login(&self.tempauth_url(), &format!("{TENANT}:{USER}"), PASSWORD)
            .unwrap_or_else(|e| panic!("login: {e}\n{}", self.aio.log_text()));
        put_container(&url, &token, &name).unwrap();
        name
    }

    /// The environment for `swift://container/path` with this way of
    /// logging in (through `keystone` for v2 and v3).
    pub fn env(&self, auth: Auth, keystone: &Keystone, container: &str, path: &str) -> BackendEnv {
        let prefix = ("WALE_SWIFT_PREFIX", format!("swift://{container}/{path}"));
        let password = ("SWIFT_PASSWORD", PASSWORD.to_string());
        match auth {
            Auth::V1 => BackendEnv::new([
                prefix,
                password,
                ("SWIFT_AUTHURL", self.tempauth_url()),
                ("SWIFT_AUTH_VERSION", "1".into()),
                ("SWIFT_USER", format!("{TENANT}:{USER}")),
            ]),
            Auth::V2 => BackendEnv::new([
                prefix,
                password,
                ("SWIFT_AUTHURL", format!("{}/v2.0", keystone.url())),
                ("SWIFT_USER", USER.into()),
                ("SWIFT_TENANT", TENANT.into()),
            ]),
            Auth::V3 => BackendEnv::new([
                prefix,
                password,
                ("SWIFT_AUTHURL", format!("{}/v3", keystone.url())),
                ("SWIFT_AUTH_VERSION", "3".into()),
                ("SWIFT_USER", USER.into()),
                ("SWIFT_USER_DOMAIN_NAME", "Default".into()),
                ("SWIFT_PROJECT_NAME", TENANT.into()),
                ("SWIFT_PROJECT_DOMAIN_ID", "default".into()),
            ]),
        }
    }

    /// Makes every token issued so far invalid, as if they had expired:
    /// TempAuth keeps its tokens in memcached only.
    pub fn expire_all_tokens(&self) {
        let mut conn = TcpStream::connect(("127.0.0.1", self.memcached_port)).unwrap();
        conn.write_all(b"flush_all\r\n").unwrap();
        let mut reply = [0u8; 4];
        conn.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"OK\r\n");
    }
}

/// A Keystone facade in front of TempAuth; it stops when dropped.
pub struct Keystone {
    _process: ServerProcess,
    port: u16,
}

impl Keystone {
    pub fn start(tempauth_url: &str) -> Keystone {
        let port = free_port();
        let script = repo_path("tests/swift/mock_keystone.py");
        let process = ServerProcess::spawn("keystone", Path::new("python3"), &[], |_| {
            vec![
                script.display().to_string(),
                port.to_string(),
                tempauth_url.to_string(),
            ]
        });
        process.wait_for_port(port, START_TIMEOUT);
        Keystone {
            _process: process,
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many tokens it has issued.
    pub fn tokens_issued(&self) -> u64 {
        let body = http("GET", &format!("{}/stats", self.url()), &[])
            .map(|(_, _, body)| body)
            .unwrap();
        let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
        stats["tokens"].as_u64().unwrap()
    }
}

/// What [`http`] returns: status, headers (names in lower case) and body.
pub type HttpReply = (u16, Vec<(String, String)>, String);

/// One HTTP/1.0 request over a plain socket. The
/// harness uses no HTTP client of its own, so that it cannot share a bug
/// with the store under test.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<HttpReply, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http URL: {url}"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut conn = TcpStream::connect(host).map_err(|e| format!("{url}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{url}: no HTTP status in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// TempAuth login: (token, storage URL).
pub fn v1_login(auth_url: &str, user: &str, key: &str) -> Result<(String, String), String> {
    let (status, headers, _) = http(
        "GET",
        auth_url,
        &[("X-Auth-User", user), ("X-Auth-Key", key)],
    )?;
    match (
        status,
        header(&headers, "x-auth-token"),
        header(&headers, "x-storage-url"),
    ) {
        (200..=299, Some(token), Some(url)) => Ok((token.to_string(), url.to_string())),
        _ => Err(format!("TempAuth login answered {status}")),
    }
}

fn put_container(storage_url: &str, token: &str, name: &str) -> Result<(), String> {
    let (status, _, body) = http(
        "PUT",
        &format!("{storage_url}/{name}"),
        &[("X-Auth-Token", token)],
    )?;
    match status {
        200..=299 => Ok(()),
        _ => Err(format!("PUT container {name} answered {status}: {body}")),
    }
}

/// The object names in a container listing, as Swift itself reports them.
pub fn raw_listing(container: &str) -> Vec<String> {
    let s = swift();
    let (token, url) = v1_login(&s.tempauth_url(), &format!("{TENANT}:{USER}"), PASSWORD).unwrap();
    let (status, _, body) = http(
        "GET",
        &format!("{url}/{container}?format=json"),
        &[("X-Auth-Token", &token)],
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    entries
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

/// Fresh containers on the shared cluster, reached as WAL-E does by default
/// (Keystone v2.0).
pub struct SwiftBackend {
    pub auth: Auth,
}

impl TestBackend for SwiftBackend {
    fn name(&self) -> &'static str {
        "swift"
    }

    fn fresh_prefix(&self) -> BackendEnv {
        let s = swift();
        s.env(self.auth, s.keystone(), &s.new_container(), "db1")
    }
}
