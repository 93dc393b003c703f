//! Swift authentication as python-swiftclient does it for WAL-E: TempAuth-style
//! v1 (`X-Auth-User` / `X-Auth-Key`), Keystone v2.0 and Keystone v3 password
//! authentication, with the object-store endpoint chosen from the service
//! catalog by region and interface.
//!
//! One [`Authenticator`] is shared by all requests of a store. It holds the
//! current session; when Swift refuses a token (401), the request asks for a
//! renewal naming the session it used, and the first such request
//! authenticates again while the others wait and then share its new session.
//! Passwords and tokens never appear in `Debug` output or messages.

use std::fmt;
use std::sync::Arc;

use reqwest::{Client, StatusCode, Url};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

/// `SWIFT_AUTH_VERSION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVersion {
    V1,
    V2,
    V3,
}

impl AuthVersion {
    /// The values python-swiftclient accepts.
    pub fn parse(raw: &str) -> Option<AuthVersion> {
        match raw.trim() {
            "1" | "1.0" => Some(AuthVersion::V1),
            "2" | "2.0" => Some(AuthVersion::V2),
            "3" | "3.0" => Some(AuthVersion::V3),
            _ => None,
        }
    }
}

/// The catalog interface (`SWIFT_ENDPOINT_TYPE`): Keystone v2 names it
/// `publicURL`, v3 `public`; both spellings are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    Public,
    Internal,
    Admin,
}

impl Interface {
    pub fn parse(raw: &str) -> Option<Interface> {
        match raw.trim() {
            "publicURL" | "public" => Some(Interface::Public),
            "internalURL" | "internal" => Some(Interface::Internal),
            "adminURL" | "admin" => Some(Interface::Admin),
            _ => None,
        }
    }

    fn v2_key(self) -> &'static str {
        match self {
            Interface::Public => "publicURL",
            Interface::Internal => "internalURL",
            Interface::Admin => "adminURL",
        }
    }

    fn v3_name(self) -> &'static str {
        match self {
            Interface::Public => "public",
            Interface::Internal => "internal",
            Interface::Admin => "admin",
        }
    }
}

/// Everything needed to log in, from the `SWIFT_*` variables.
#[derive(Clone, Default)]
pub struct Credentials {
    pub auth_url: String,
    pub version: Option<AuthVersion>,
    pub user: Option<String>,
    pub user_id: Option<String>,
    pub password: String,
    /// `SWIFT_PROJECT_NAME`, else `SWIFT_TENANT`.
    pub project_name: Option<String>,
    /// `SWIFT_PROJECT_ID`, else `SWIFT_TENANT_ID`.
    pub project_id: Option<String>,
    pub user_domain_name: Option<String>,
    pub user_domain_id: Option<String>,
    pub project_domain_name: Option<String>,
    pub project_domain_id: Option<String>,
    pub domain_name: Option<String>,
    pub domain_id: Option<String>,
    pub region: Option<String>,
    pub interface: Option<Interface>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("auth_url", &self.auth_url)
            .field("version", &self.version)
            .field("user", &self.user)
            .field("user_id", &self.user_id)
            .field("project_name", &self.project_name)
            .field("project_id", &self.project_id)
            .field("region", &self.region)
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    fn version(&self) -> AuthVersion {
        self.version.unwrap_or(AuthVersion::V2)
    }

    fn interface(&self) -> Interface {
        self.interface.unwrap_or(Interface::Public)
    }

    /// swiftclient's convenience for Keystone: with no tenant or project
    /// given, `SWIFT_USER=tenant:user` names both.
    fn user_and_project(&self) -> (Option<String>, Option<String>) {
        match (&self.user, &self.project_name, &self.project_id) {
            (Some(user), None, None) if user.contains(':') => {
                let (project, user) = user.split_once(':').unwrap_or_default();
                (Some(user.to_string()), Some(project.to_string()))
            }
            _ => (self.user.clone(), self.project_name.clone()),
        }
    }
}

/// A token and the storage URL it is good for.
pub struct Session {
    pub token: String,
    pub storage_url: Url,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("storage_url", &self.storage_url.as_str())
            .finish_non_exhaustive()
    }
}

/// Why logging in failed, and whether trying again may help.
#[derive(Debug)]
pub struct AuthFailure {
    pub transient: bool,
    pub message: String,
}

impl AuthFailure {
    fn permanent(message: impl Into<String>) -> Self {
        AuthFailure {
            transient: false,
            message: message.into(),
        }
    }
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AuthFailure {}

/// Logs in on first use and again when a token is refused; shared by all
/// requests of one store.
pub struct Authenticator {
    credentials: Credentials,
    client: Client,
    current: Mutex<Option<Arc<Session>>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(credentials: Credentials, client: Client) -> Self {
        Authenticator {
            credentials,
            client,
            current: Mutex::new(None),
        }
    }

    /// The current session, logging in first if there is none.
    pub async fn session(&self) -> Result<Arc<Session>, AuthFailure> {
        let mut current = self.current.lock().await;
        if let Some(session) = &*current {
            return Ok(session.clone());
        }
        let session = Arc::new(self.authenticate().await?);
        *current = Some(session.clone());
        Ok(session)
    }

    /// Swift refused the token of `stale`: a fresh session. Requests that saw
    /// the same refusal concurrently share one new login.
    pub async fn renew(&self, stale: &Arc<Session>) -> Result<Arc<Session>, AuthFailure> {
        let mut current = self.current.lock().await;
        if let Some(session) = &*current
            && !Arc::ptr_eq(session, stale)
        {
            return Ok(session.clone());
        }
        *current = None;
        tracing::info!(
            detail = %format!("Authenticating again at {}.", self.credentials.auth_url),
            "Swift refused the authentication token"
        );
        let session = Arc::new(self.authenticate().await?);
        *current = Some(session.clone());
        Ok(session)
    }

    async fn authenticate(&self) -> Result<Session, AuthFailure> {
        match self.credentials.version() {
            AuthVersion::V1 => self.v1().await,
            AuthVersion::V2 => self.v2().await,
            AuthVersion::V3 => self.v3().await,
        }
    }

    async fn v1(&self) -> Result<Session, AuthFailure> {
        let c = &self.credentials;
        let url = &c.auth_url;
        let resp = self
            .client
            .get(url)
            .header("X-Auth-User", c.user.as_deref().unwrap_or_default())
            .header("X-Auth-Key", &c.password)
            .send()
            .await
            .map_err(|e| network_failure(url, e))?;
        let resp = check_status(url, resp, "SWIFT_USER (tenant:user) and SWIFT_PASSWORD").await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| {
                    AuthFailure::permanent(format!(
                        "the v1 authentication response from {url} has no {name} header"
                    ))
                })
        };
        let token = header("X-Auth-Token")?;
        let storage_url = parse_storage_url(url, &header("X-Storage-Url")?)?;
        Ok(Session { token, storage_url })
    }

    async fn v2(&self) -> Result<Session, AuthFailure> {
        let c = &self.credentials;
        let url = format!("{}/tokens", c.auth_url.trim_end_matches('/'));
        let (user, project) = c.user_and_project();
        let mut auth = json!({
            "passwordCredentials": {"username": user.unwrap_or_default(), "password": c.password}
        });
        if let Some(id) = &c.project_id {
            auth["tenantId"] = json!(id);
        } else if let Some(name) = project {
            auth["tenantName"] = json!(name);
        }
        let resp = self
            .client
            .post(&url)
            .json(&json!({ "auth": auth }))
            .send()
            .await
            .map_err(|e| network_failure(&url, e))?;
        let resp = check_status(&url, resp, "SWIFT_USER, SWIFT_PASSWORD and SWIFT_TENANT").await?;
        let body: V2Response = parse_json(&url, resp).await?;
        let endpoints = body
            .access
            .service_catalog
            .into_iter()
            .filter(|s| s.kind == "object-store")
            .flat_map(|s| s.endpoints)
            .flat_map(|ep| {
                let region = ep.get("region").and_then(Value::as_str).map(str::to_string);
                [Interface::Public, Interface::Internal, Interface::Admin]
                    .into_iter()
                    .filter_map(move |i| {
                        ep.get(i.v2_key())
                            .and_then(Value::as_str)
                            .map(|u| Endpoint {
                                region: region.clone(),
                                region_id: None,
                                interface: i,
                                url: u.to_string(),
                            })
                    })
            })
            .collect();
        let chosen = select_endpoint(c, endpoints, &url)?;
        Ok(Session {
            token: body.access.token.id,
            storage_url: parse_storage_url(&url, &chosen)?,
        })
    }

    async fn v3(&self) -> Result<Session, AuthFailure> {
        let c = &self.credentials;
        let url = format!("{}/auth/tokens", c.auth_url.trim_end_matches('/'));
        let (user_name, project_name) = c.user_and_project();
        let mut user = Map::new();
        if let Some(id) = &c.user_id {
            user.insert("id".into(), json!(id));
        } else {
            user.insert("name".into(), json!(user_name.unwrap_or_default()));
            if let Some(domain) = domain(&c.user_domain_id, &c.user_domain_name) {
                user.insert("domain".into(), domain);
            }
        }
        user.insert("password".into(), json!(c.password));
        let mut auth = json!({
            "identity": {"methods": ["password"], "password": {"user": user}}
        });
        if let Some(id) = &c.project_id {
            auth["scope"] = json!({"project": {"id": id}});
        } else if let Some(name) = project_name {
            let mut project = json!({ "name": name });
            if let Some(domain) = domain(&c.project_domain_id, &c.project_domain_name) {
                project["domain"] = domain;
            }
            auth["scope"] = json!({ "project": project });
        } else if let Some(domain) = domain(&c.domain_id, &c.domain_name) {
            auth["scope"] = json!({ "domain": domain });
        }
        let resp = self
            .client
            .post(&url)
            .json(&json!({ "auth": auth }))
            .send()
            .await
            .map_err(|e| network_failure(&url, e))?;
        let resp = check_status(
            &url,
            resp,
            "SWIFT_USER or SWIFT_USER_ID, SWIFT_PASSWORD, the project (SWIFT_TENANT, SWIFT_PROJECT_NAME or SWIFT_PROJECT_ID) and the domain variables",
        )
        .await?;
        let token = resp
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| {
                AuthFailure::permanent(format!(
                    "the v3 authentication response from {url} has no X-Subject-Token header"
                ))
            })?;
        let body: V3Response = parse_json(&url, resp).await?;
        let endpoints = body
            .token
            .catalog
            .into_iter()
            .filter(|s| s.kind == "object-store")
            .flat_map(|s| s.endpoints)
            .filter_map(|ep| {
                let interface = Interface::parse(&ep.interface)?;
                Some(Endpoint {
                    region: ep.region,
                    region_id: ep.region_id,
                    interface,
                    url: ep.url,
                })
            })
            .collect();
        let chosen = select_endpoint(c, endpoints, &url)?;
        Ok(Session {
            token,
            storage_url: parse_storage_url(&url, &chosen)?,
        })
    }
}

fn domain(id: &Option<String>, name: &Option<String>) -> Option<Value> {
    match (id, name) {
        (Some(id), _) => Some(json!({ "id": id })),
        (None, Some(name)) => Some(json!({ "name": name })),
        (None, None) => None,
    }
}

#[derive(Deserialize)]
struct V2Response {
    access: V2Access,
}

#[derive(Deserialize)]
struct V2Access {
    token: V2Token,
    #[serde(rename = "serviceCatalog", default)]
    service_catalog: Vec<V2Service>,
}

#[derive(Deserialize)]
struct V2Token {
    id: String,
}

#[derive(Deserialize)]
struct V2Service {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<Map<String, Value>>,
}

#[derive(Deserialize)]
struct V3Response {
    token: V3Token,
}

#[derive(Deserialize)]
struct V3Token {
    #[serde(default)]
    catalog: Vec<V3Service>,
}

#[derive(Deserialize)]
struct V3Service {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<V3Endpoint>,
}

#[derive(Deserialize)]
struct V3Endpoint {
    interface: String,
    region: Option<String>,
    region_id: Option<String>,
    url: String,
}

/// One object-store endpoint of a catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    region: Option<String>,
    region_id: Option<String>,
    interface: Interface,
    url: String,
}

impl Endpoint {
    fn in_region(&self, wanted: &str) -> bool {
        self.region.as_deref() == Some(wanted) || self.region_id.as_deref() == Some(wanted)
    }
}

/// The first object-store endpoint with the wanted interface, in
/// `SWIFT_REGION` when that is set (keystoneclient's `url_for`).
fn select_endpoint(
    c: &Credentials,
    endpoints: Vec<Endpoint>,
    auth_url: &str,
) -> Result<String, AuthFailure> {
    let interface = c.interface();
    if endpoints.is_empty() {
        return Err(AuthFailure::permanent(format!(
            "the service catalog from {auth_url} has no object-store (Swift) endpoint{}",
            if c.version() == AuthVersion::V3
                && c.project_id.is_none()
                && c.user_and_project().1.is_none()
            {
                " (the token is not scoped to a project: set SWIFT_TENANT, SWIFT_PROJECT_NAME or SWIFT_PROJECT_ID)"
            } else {
                ""
            }
        )));
    }
    let found = endpoints.iter().find(|ep| {
        ep.interface == interface && c.region.as_deref().is_none_or(|r| ep.in_region(r))
    });
    match found {
        Some(ep) => Ok(ep.url.clone()),
        None => {
            let available: Vec<String> = endpoints
                .iter()
                .map(|ep| {
                    format!(
                        "{} {}",
                        ep.region
                            .as_deref()
                            .or(ep.region_id.as_deref())
                            .unwrap_or("(no region)"),
                        ep.interface.v3_name()
                    )
                })
                .collect();
            Err(AuthFailure::permanent(format!(
                "the service catalog from {auth_url} has no object-store endpoint with interface {}{} (SWIFT_REGION, SWIFT_ENDPOINT_TYPE); it has: {}",
                interface.v3_name(),
                c.region
                    .as_deref()
                    .map(|r| format!(" in region {r}"))
                    .unwrap_or_default(),
                available.join(", ")
            )))
        }
    }
}

fn parse_storage_url(auth_url: &str, raw: &str) -> Result<Url, AuthFailure> {
    Url::parse(raw.trim_end_matches('/')).map_err(|e| {
        AuthFailure::permanent(format!(
            "the storage URL {raw:?} that {auth_url} returned is not a URL: {e}"
        ))
    })
}

fn network_failure(url: &str, err: reqwest::Error) -> AuthFailure {
    AuthFailure {
        transient: !err.is_builder(),
        message: format!(
            "could not reach the Swift authentication service at {url}: {}",
            error_chain(&err)
        ),
    }
}

/// The error and its causes on one line (reqwest's own message omits them).
pub(super) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn check_status(
    url: &str,
    resp: reqwest::Response,
    check: &str,
) -> Result<reqwest::Response, AuthFailure> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = super::body_snippet(resp).await;
    let transient = matches!(status.as_u16(), 408 | 429 | 500..=599);
    let advice = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => format!(" (check {check})"),
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
            " (check SWIFT_AUTHURL and SWIFT_AUTH_VERSION)".to_string()
        }
        _ => String::new(),
    };
    Err(AuthFailure {
        transient,
        message: format!("Swift authentication at {url} failed with {status}{advice}{body}"),
    })
}

async fn parse_json<T: serde::de::DeserializeOwned>(
    url: &str,
    resp: reqwest::Response,
) -> Result<T, AuthFailure> {
    let bytes = resp.bytes().await.map_err(|e| network_failure(url, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        AuthFailure::permanent(format!(
            "the authentication response from {url} is not what Keystone returns: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(region: &str, interface: Interface, url: &str) -> Endpoint {
        Endpoint {
            region: Some(region.into()),
            region_id: None,
            interface,
            url: url.into(),
        }
    }

    #[test]
    fn endpoints_are_chosen_by_region_and_interface() {
        let catalog = vec![
            ep("RegionOne", Interface::Public, "one-public"),
            ep("RegionOne", Interface::Internal, "one-internal"),
            ep("RegionTwo", Interface::Public, "two-public"),
            ep("RegionTwo", Interface::Internal, "two-internal"),
        ];
        let mut c = Credentials::default();
        assert_eq!(
            select_endpoint(&c, catalog.clone(), "a").unwrap(),
            "one-public"
        );
        c.region = Some("RegionTwo".into());
        assert_eq!(
            select_endpoint(&c, catalog.clone(), "a").unwrap(),
            "two-public"
        );
        c.interface = Interface::parse("internalURL");
        assert_eq!(
            select_endpoint(&c, catalog.clone(), "a").unwrap(),
            "two-internal"
        );
        c.interface = Interface::parse("adminURL");
        let err = select_endpoint(&c, catalog.clone(), "a").unwrap_err();
        assert!(!err.transient);
        assert!(
            err.message.contains("interface admin in region RegionTwo"),
            "{err}"
        );
        assert!(err.message.contains("RegionOne public"), "{err}");
        c.region = Some("Nowhere".into());
        c.interface = None;
        assert!(select_endpoint(&c, catalog, "a").is_err());
    }

    #[test]
    fn tenant_colon_user_names_the_project_when_none_is_set() {
        let mut c = Credentials {
            user: Some("test:tester".into()),
            ..Default::default()
        };
        assert_eq!(
            c.user_and_project(),
            (Some("tester".into()), Some("test".into()))
        );
        c.project_name = Some("other".into());
        assert_eq!(
            c.user_and_project(),
            (Some("test:tester".into()), Some("other".into()))
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c = Credentials {
            password: "hunter2".into(),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let s = Session {
            token: "AUTH_tk123".into(),
            storage_url: Url::parse("http://x/v1/AUTH_a").unwrap(),
        };
        assert!(!format!("{s:?}").contains("AUTH_tk123"));
    }

    #[test]
    fn versions_and_interfaces_parse_like_swiftclient() {
        assert_eq!(AuthVersion::parse("1.0"), Some(AuthVersion::V1));
        assert_eq!(AuthVersion::parse("2"), Some(AuthVersion::V2));
        assert_eq!(AuthVersion::parse("3"), Some(AuthVersion::V3));
        assert_eq!(AuthVersion::parse("4"), None);
        assert_eq!(Interface::parse("internal"), Some(Interface::Internal));
        assert_eq!(Interface::parse("private"), None);
    }
}
