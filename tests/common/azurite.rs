//! Azurite, the Azure Storage emulator, on 127.0.0.1 for the wabs:// tests:
//! installed by `scripts/install-azurite.sh` (cached), started once per test
//! binary, in memory. It checks every request's signature against the
//! well-known development account key.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use azure_core::credentials::Secret;
use chrono::{DateTime, Utc};

use super::backend::{BackendEnv, TestBackend};
use super::server::{ServerProcess, free_port};

pub const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key (not a secret).
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    pub server: ServerProcess,
    pub port: u16,
    next_container: AtomicU32,
}

fn azurite_blob_program() -> PathBuf {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/install-azurite.sh"
    ))
    .output()
    .expect("run scripts/install-azurite.sh");
    assert!(
        out.status.success(),
        "install-azurite.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The test binary's Azurite, started on first use.
pub fn azurite() -> &'static Azurite {
    static AZURITE: OnceLock<Azurite> = OnceLock::new();
    AZURITE.get_or_init(|| {
        let program = azurite_blob_program();
        let port = free_port();
        let server = ServerProcess::spawn("azurite", &program, &[], |_| {
            [
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--inMemoryPersistence",
                // The SDK speaks a newer API version than Azurite knows.
                "--skipApiVersionCheck",
                // The account is the first path segment, never the host name.
                "--disableProductStyleUrl",
            ]
            .map(String::from)
            .to_vec()
        });
        server.wait_for_port(port, Duration::from_secs(60));
        Azurite {
            server,
            port,
            next_container: AtomicU32::new(0),
        }
    })
}

/// An account SAS for the blob service, signed with `key` (made here
/// independently of wal-e's own signer), as a query string.
pub fn account_sas(key: &str, permissions: &str, expiry: DateTime<Utc>) -> String {
    let version = "2021-08-06";
    let se = expiry.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let to_sign = format!("{ACCOUNT}\n{permissions}\nb\nsco\n\n{se}\n\n\n{version}\n\n");
    let sig = azure_core::hmac::hmac_sha256(&to_sign, &Secret::new(key.to_string())).unwrap();
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    format!(
        "sv={version}&ss=b&srt=sco&sp={permissions}&se={}&sig={}",
        enc(&se),
        enc(&sig)
    )
}

/// A full-permission SAS valid for a day.
pub fn good_sas() -> String {
    account_sas(KEY, "rwdlac", Utc::now() + chrono::Duration::days(1))
}

impl Azurite {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// A REST call with a full-permission SAS: (status, headers, body).
    pub fn request(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        wal_e::storage::tls::ensure_crypto_provider();
        let sep = if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}/{path_and_query}{sep}{}", self.endpoint(), good_sas());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let rsp = reqwest::Client::new()
                .request(method, &url)
                .header("x-ms-version", "2021-08-06")
                .header("content-length", "0")
                .send()
                .await
                .expect("request to Azurite");
            let status = rsp.status().as_u16();
            let headers = rsp.headers().clone();
            let body = rsp.bytes().await.unwrap().to_vec();
            (status, headers, body)
        })
    }

    /// Creates a new, empty container and returns its name.
    pub fn new_container(&self) -> String {
        let n = self.next_container.fetch_add(1, Ordering::Relaxed);
        let name = format!("wal-e-test-{n}");
        let (status, _, body) =
            self.request(reqwest::Method::PUT, &format!("{name}?restype=container"));
        assert_eq!(
            status,
            201,
            "create container {name}: {}",
            String::from_utf8_lossy(&body)
        );
        name
    }
}

/// wabs:// prefixes on Azurite, each in a new container, authenticated with
/// the account key or with a SAS token only.
pub struct WabsBackend {
    azurite: &'static Azurite,
    sas_only: bool,
    /// The containers handed out, in order.
    containers: std::sync::Mutex<Vec<String>>,
}

impl WabsBackend {
    /// With `WABS_ACCESS_KEY`.
    pub fn with_key() -> Self {
        WabsBackend {
            azurite: azurite(),
            sas_only: false,
            containers: Default::default(),
        }
    }

    /// With `WABS_SAS_TOKEN` and no key.
    pub fn with_sas() -> Self {
        WabsBackend {
            azurite: azurite(),
            sas_only: true,
            containers: Default::default(),
        }
    }

    pub fn azurite(&self) -> &'static Azurite {
        self.azurite
    }

    /// The container of the last prefix handed out.
    pub fn last_container(&self) -> String {
        self.containers
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a prefix was handed out")
    }

    /// (blob name, content type) of every blob in `container`, as the
    /// service lists them (one page is enough for the tests).
    pub fn content_types(&self, container: &str) -> Vec<(String, String)> {
        let (status, _, body) = self.azurite.request(
            reqwest::Method::GET,
            &format!("{container}?restype=container&comp=list"),
        );
        let body = String::from_utf8(body).unwrap();
        assert_eq!(status, 200, "{body}");
        let field = |blob: &str, tag: &str| {
            let start = blob.find(&format!("<{tag}>"))? + tag.len() + 2;
            let end = start + blob[start..].find(&format!("</{tag}>"))?;
            Some(blob[start..end].to_string())
        };
        body.split("<Blob>")
            .skip(1)
            .map(|blob| {
                (
                    field(blob, "Name").expect("a name"),
                    field(blob, "Content-Type").unwrap_or_default(),
                )
            })
            .collect()
    }
}

impl TestBackend for WabsBackend {
    fn name(&self) -> &'static str {
        if self.sas_only { "wabs-sas" } else { "wabs" }
    }

    fn fresh_prefix(&self) -> BackendEnv {
        let container = self.azurite.new_container();
        self.containers.lock().unwrap().push(container.clone());
        let (cred_name, cred) = if self.sas_only {
            ("WABS_SAS_TOKEN", good_sas())
        } else {
            ("WABS_ACCESS_KEY", KEY.to_string())
        };
        BackendEnv::new([
            ("WALE_WABS_PREFIX", format!("wabs://{container}/db1")),
            ("WABS_ACCOUNT_NAME", ACCOUNT.to_string()),
            ("WALE_WABS_ENDPOINT", self.azurite.endpoint()),
            (cred_name, cred),
        ])
    }
}
