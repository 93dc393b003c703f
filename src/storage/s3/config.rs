//! The S3 settings WAL-E reads from the environment, validated, and the SDK
//! client they describe.
//!
//! Secrets are only ever held inside the SDK's `Credentials`, whose `Debug`
//! output redacts them.

use std::time::Duration;

use aws_config::imds;
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, RuntimeComponents, SharedCredentialsProvider, SharedHttpClient,
};
use aws_sdk_s3::types::StorageClass;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

use crate::config::{AwsCredentialSource, Env, Settings};
use crate::error::UserError;

/// The SDK sends each request once: a request is one attempt of
/// [`crate::storage::RetryingStore`], which alone retries (`WALE_RETRIES`
/// attempts per object).
const SDK_ATTEMPTS: u32 = 1;
/// Attempts of a request that is only a piece of one attempt (see
/// [`piece_retries`]).
const PIECE_ATTEMPTS: u32 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one request to be sent and answered (a part is at most
/// [`super::PART_SIZE`] bytes).
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// How requests address the bucket on a `WALE_S3_ENDPOINT` server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallingFormat {
    /// `proto://host:port/bucket/key`
    Path,
    /// `proto://bucket.host:port/key`
    Subdomain,
    /// `proto://bucket:port/key`: the bucket name is the host name.
    VirtualHost,
}

/// `WALE_S3_ENDPOINT`: `http|https` `+` `path|subdomain|virtualhost` `://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    pub format: CallingFormat,
    pub host: String,
    pub port: Option<u16>,
}

impl Endpoint {
    pub fn parse(raw: &str) -> Result<Endpoint, UserError> {
        let bad = |why: &str| {
            UserError::new("malformed WALE_S3_ENDPOINT")
                .detail(format!("WALE_S3_ENDPOINT is set to {raw:?}: {why}"))
                .hint("It looks like https+path://s3.example.com or http+virtualhost://127.0.0.1:9000: a protocol (http, https), a calling format (path, subdomain, virtualhost) and host[:port], nothing else.")
        };
        let (scheme, rest) = raw
            .split_once("://")
            .ok_or_else(|| bad("there is no \"://\""))?;
        let (proto, format) = scheme
            .split_once('+')
            .ok_or_else(|| bad("the scheme must be protocol+calling-format"))?;
        let https = match proto.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(bad("the protocol must be http or https")),
        };
        let format = match format.to_ascii_lowercase().as_str() {
            "path" => CallingFormat::Path,
            "subdomain" => CallingFormat::Subdomain,
            "virtualhost" => CallingFormat::VirtualHost,
            _ => {
                return Err(bad(
                    "the calling format must be path, subdomain or virtualhost",
                ));
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(bad("a path, query or fragment is not allowed"));
        }
        if authority.contains('@') {
            return Err(bad(
                "a user name or password is not allowed (credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
                (host, Some(port))
            }
            _ => (authority, None),
        };
        if host.is_empty() {
            return Err(bad("there is no host name"));
        }
        Ok(Endpoint {
            https,
            format,
            host: host.to_string(),
            port,
        })
    }

    /// The URL the SDK sends requests to (path-style) for `bucket`.
    fn base_url(&self, bucket: &str) -> String {
        let host = match self.format {
            CallingFormat::VirtualHost => bucket,
            CallingFormat::Path | CallingFormat::Subdomain => &self.host,
        };
        let proto = if self.https { "https" } else { "http" };
        match self.port {
            Some(port) => format!("{proto}://{host}:{port}"),
            None => format!("{proto}://{host}"),
        }
    }
}

/// For the `virtualhost` calling format: the SDK addresses the bucket
/// path-style at a host named like the bucket, and this takes the bucket back
/// out of the path (before signing, since the path is signed).
#[derive(Debug)]
struct BucketIsHost {
    /// `/bucket`
    bucket_path: String,
}

impl BucketIsHost {
    fn strip(&self, uri: &str) -> Option<String> {
        let authority_start = uri.find("://")? + 3;
        let path_start = authority_start + uri[authority_start..].find('/')?;
        let after = uri[path_start..].strip_prefix(&self.bucket_path)?;
        let path = match after.chars().next() {
            None | Some('?') => format!("/{after}"),
            Some('/') => after.to_string(),
            Some(_) => return None,
        };
        Some(format!("{}{path}", &uri[..path_start]))
    }
}

impl Intercept for BucketIsHost {
    fn name(&self) -> &'static str {
        "BucketIsHost"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let request = context.request_mut();
        if let Some(uri) = self.strip(request.uri()) {
            request.set_uri(uri)?;
        }
        Ok(())
    }
}

/// Server-side encryption requested with every upload (`WALE_S3_SSE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    /// No header: for S3 clones that reject it (WAL-E issue 404).
    None,
    /// `x-amz-server-side-encryption: AES256`, WAL-E's only behaviour.
    Aes256,
    /// `aws:kms`, with `WALE_S3_SSE_KMS_KEY_ID` or the account's default key.
    Kms { key_id: Option<String> },
}

/// Where the credentials come from.
#[derive(Debug, Clone)]
pub enum CredentialChoice {
    Static(Credentials),
    /// EC2 instance metadata (IMDSv2), at `AWS_EC2_METADATA_SERVICE_ENDPOINT`
    /// when set.
    InstanceProfile {
        imds_endpoint: Option<String>,
    },
}

/// Everything the S3 store needs, validated; `Debug` shows no secrets.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// `AWS_REGION`; discovered from the bucket when unset.
    pub region: Option<String>,
    pub endpoint: Option<Endpoint>,
    /// `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`: the AWS SDKs' standard
    /// override of where "AWS" is (VPC endpoints, test servers); unlike
    /// `WALE_S3_ENDPOINT` it keeps AWS's addressing and region handling.
    pub aws_endpoint_url: Option<String>,
    pub credentials: CredentialChoice,
    pub storage_class: Option<StorageClass>,
    pub sse: Sse,
}

fn nonempty(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name).filter(|v| !v.trim().is_empty())
}

impl S3Config {
    pub fn from_env(settings: &Settings, env: &dyn Env) -> Result<S3Config, UserError> {
        let bucket = settings.prefix.store_name.clone();
        let endpoint = nonempty(env, "WALE_S3_ENDPOINT")
            .map(|raw| Endpoint::parse(raw.trim()))
            .transpose()?;
        let credentials = match &settings.aws_credentials {
            AwsCredentialSource::InstanceProfile => CredentialChoice::InstanceProfile {
                imds_endpoint: nonempty(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT"),
            },
            AwsCredentialSource::Keys { access_key_id } => {
                let id = access_key_id.clone().filter(|id| !id.is_empty()).ok_or_else(|| {
                    UserError::new("no AWS access key id for the S3 prefix")
                        .detail(format!("The storage prefix is {}.", settings.prefix.url))
                        .hint("Set AWS_ACCESS_KEY_ID (or pass -k) and AWS_SECRET_ACCESS_KEY, or use --aws-instance-profile / AWS_INSTANCE_PROFILE=true on EC2.")
                })?;
                let secret = env.var("AWS_SECRET_ACCESS_KEY").filter(|s| !s.is_empty()).ok_or_else(|| {
                    UserError::new("AWS_SECRET_ACCESS_KEY is not set")
                        .detail(format!("The access key id {id} was given without its secret key."))
                        .hint("Secrets are read from the environment only: set AWS_SECRET_ACCESS_KEY (an envdir is the usual way).")
                })?;
                // WAL-E read AWS_SECURITY_TOKEN; the AWS tools use AWS_SESSION_TOKEN.
                let token = nonempty(env, "AWS_SECURITY_TOKEN")
                    .or_else(|| nonempty(env, "AWS_SESSION_TOKEN"));
                CredentialChoice::Static(Credentials::new(id, secret, token, None, "wal-e"))
            }
        };
        let storage_class = nonempty(env, "WALE_S3_STORAGE_CLASS")
            .map(|class| StorageClass::from(class.trim().to_ascii_uppercase().as_str()));
        let sse = match nonempty(env, "WALE_S3_SSE")
            .map(|v| v.trim().to_string())
            .as_deref()
        {
            None => Sse::Aes256,
            Some(v) if v.eq_ignore_ascii_case("AES256") => Sse::Aes256,
            Some(v) if v.eq_ignore_ascii_case("none") => Sse::None,
            Some(v) if v.eq_ignore_ascii_case("aws:kms") => Sse::Kms {
                key_id: nonempty(env, "WALE_S3_SSE_KMS_KEY_ID"),
            },
            Some(other) => {
                return Err(UserError::new("invalid value in WALE_S3_SSE")
                    .detail(format!("WALE_S3_SSE is set to {other:?}."))
                    .hint("Use AES256 (the default), aws:kms (with WALE_S3_SSE_KMS_KEY_ID for a key other than the account's default) or none for S3-compatible servers that reject the encryption header."));
            }
        };
        if !matches!(sse, Sse::Kms { .. }) && nonempty(env, "WALE_S3_SSE_KMS_KEY_ID").is_some() {
            return Err(UserError::new("WALE_S3_SSE_KMS_KEY_ID is set without WALE_S3_SSE=aws:kms")
                .hint("Set WALE_S3_SSE=aws:kms to encrypt with that KMS key, or unset WALE_S3_SSE_KMS_KEY_ID."));
        }
        Ok(S3Config {
            bucket,
            region: nonempty(env, "AWS_REGION").map(|r| r.trim().to_string()),
            endpoint,
            aws_endpoint_url: nonempty(env, "AWS_ENDPOINT_URL_S3")
                .or_else(|| nonempty(env, "AWS_ENDPOINT_URL")),
            credentials,
            storage_class,
            sse,
        })
    }
}

/// What the clients of one store share: the HTTP client (rustls with ring),
/// also used for the metadata service, and the credentials provider, so that
/// instance-profile credentials are fetched once.
#[derive(Debug, Clone)]
pub struct Shared {
    http: SharedHttpClient,
    credentials: SharedCredentialsProvider,
}

impl Shared {
    pub fn new(cfg: &S3Config) -> Result<Shared, UserError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let credentials = credentials_provider(&cfg.credentials, &http)?;
        Ok(Shared { http, credentials })
    }
}

fn credentials_provider(
    choice: &CredentialChoice,
    http: &SharedHttpClient,
) -> Result<SharedCredentialsProvider, UserError> {
    Ok(match choice {
        CredentialChoice::Static(creds) => SharedCredentialsProvider::new(creds.clone()),
        CredentialChoice::InstanceProfile { imds_endpoint } => {
            let provider_config = ProviderConfig::without_region().with_http_client(http.clone());
            let mut imds = imds::Client::builder().configure(&provider_config);
            if let Some(url) = imds_endpoint {
                imds = imds.endpoint(url).map_err(|e| {
                    UserError::new("invalid AWS_EC2_METADATA_SERVICE_ENDPOINT")
                        .detail(format!("{url:?}: {e}"))
                        .hint("Leave it unset to use the EC2 metadata service, or give a URL such as http://169.254.169.254.")
                })?;
            }
            SharedCredentialsProvider::new(
                ImdsCredentialsProvider::builder()
                    .configure(&provider_config)
                    .imds_client(imds.build())
                    .build(),
            )
        }
    })
}

/// For requests that are a piece of one attempt, a part of a multipart
/// upload or the abort of a failed one, and for the region probe, which no
/// store operation covers: the SDK's standard retries (backoff with jitter,
/// longer for throttling), so that a reset or a `SlowDown` in one part does
/// not restart a whole upload of up to 1.5 GiB.
pub fn piece_retries() -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::new()
        .retry_config(RetryConfig::standard().with_max_attempts(PIECE_ATTEMPTS))
}

/// The SDK client for `cfg` signing for `region`.
pub fn client(cfg: &S3Config, region: &str, shared: &Shared) -> aws_sdk_s3::Client {
    let mut builder = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .credentials_provider(shared.credentials.clone())
        .http_client(shared.http.clone())
        .retry_config(RetryConfig::standard().with_max_attempts(SDK_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .build(),
        )
        // Content-MD5 is sent with every upload instead: S3 and every clone
        // check it, while the newer checksum headers and aws-chunked bodies
        // are not understood everywhere.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    match (&cfg.endpoint, &cfg.aws_endpoint_url) {
        (Some(endpoint), _) => {
            builder = builder
                .endpoint_url(endpoint.base_url(&cfg.bucket))
                .force_path_style(endpoint.format != CallingFormat::Subdomain);
            if endpoint.format == CallingFormat::VirtualHost {
                builder = builder.interceptor(BucketIsHost {
                    bucket_path: format!("/{}", cfg.bucket),
                });
            }
        }
        (None, Some(url)) => builder = builder.endpoint_url(url),
        (None, None) => {}
    }
    if cfg.endpoint.is_none() && cfg.bucket.contains('.') {
        // As WAL-E: a dotted name breaks the TLS name check of
        // <bucket>.s3.amazonaws.com, so such buckets are addressed by path.
        builder = builder.force_path_style(true);
    }
    aws_sdk_s3::Client::from_conf(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::GlobalArgs;
    use crate::config::tests::env;

    fn config(pairs: &[(&str, &str)]) -> Result<S3Config, UserError> {
        let mut e = env(pairs);
        e.insert("WALE_S3_PREFIX".into(), "s3://bkt/db1".into());
        let settings = Settings::from_args(&GlobalArgs::default(), &e).unwrap();
        S3Config::from_env(&settings, &e)
    }

    #[test]
    fn endpoints_in_wal_e_form_are_parsed() {
        let e = Endpoint::parse("https+path://s3.example.com").unwrap();
        assert_eq!(
            e,
            Endpoint {
                https: true,
                format: CallingFormat::Path,
                host: "s3.example.com".into(),
                port: None
            }
        );
        assert_eq!(e.base_url("b"), "https://s3.example.com");
        let e = Endpoint::parse("http+virtualhost://127.0.0.1:9000/").unwrap();
        assert_eq!(
            (e.format, e.port, e.base_url("backups.example.com")),
            (
                CallingFormat::VirtualHost,
                Some(9000),
                "http://backups.example.com:9000".to_string()
            )
        );
        let e = Endpoint::parse("HTTP+SUBDOMAIN://minio:9000").unwrap();
        assert_eq!(e.format, CallingFormat::Subdomain);
        assert_eq!(e.base_url("b"), "http://minio:9000");
    }

    #[test]
    fn virtualhost_requests_leave_the_bucket_out_of_the_path() {
        let strip = BucketIsHost {
            bucket_path: "/b.example.com".into(),
        };
        assert_eq!(
            strip
                .strip("http://b.example.com:9000/b.example.com/db1/wal_005/x.lzo")
                .as_deref(),
            Some("http://b.example.com:9000/db1/wal_005/x.lzo")
        );
        assert_eq!(
            strip
                .strip("https://b.example.com/b.example.com?list-type=2&prefix=db1%2F")
                .as_deref(),
            Some("https://b.example.com/?list-type=2&prefix=db1%2F")
        );
        assert_eq!(
            strip.strip("https://b.example.com/b.example.com.other/k"),
            None
        );
    }

    #[test]
    fn malformed_endpoints_are_rejected_with_the_reason() {
        for (raw, why) in [
            ("s3.example.com", "no \"://\""),
            ("https://s3.example.com", "protocol+calling-format"),
            ("ftp+path://h", "http or https"),
            ("https+dns://h", "path, subdomain or virtualhost"),
            ("https+path://h/some/path", "path, query or fragment"),
            ("https+path://h?x=1", "path, query or fragment"),
            ("https+path://user:pw@h", "user name or password"),
            ("https+path://h:port", "port"),
            ("https+path://h:0", "port"),
            ("https+path://", "no host"),
        ] {
            let err = Endpoint::parse(raw).unwrap_err();
            assert_eq!(err.msg, "malformed WALE_S3_ENDPOINT");
            assert!(err.to_string().contains(why), "{raw}: {err}");
            assert_eq!(err.exit_code, 1);
        }
    }

    #[test]
    fn credentials_come_from_the_environment_and_never_show_in_debug_output() {
        let cfg = config(&[
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "very-secret-key"),
            ("AWS_SECURITY_TOKEN", "session-token"),
        ])
        .unwrap();
        let CredentialChoice::Static(creds) = &cfg.credentials else {
            panic!("static credentials expected");
        };
        assert_eq!(creds.access_key_id(), "AKIDEXAMPLE");
        assert_eq!(creds.secret_access_key(), "very-secret-key");
        assert_eq!(creds.session_token(), Some("session-token"));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("very-secret-key"), "{shown}");
        assert!(!shown.contains("session-token"), "{shown}");

        let cfg = config(&[
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_SESSION_TOKEN", "other-token"),
        ])
        .unwrap();
        let CredentialChoice::Static(creds) = &cfg.credentials else {
            panic!("static credentials expected");
        };
        assert_eq!(creds.session_token(), Some("other-token"));
    }

    #[test]
    fn missing_credentials_are_user_errors() {
        let err = config(&[]).unwrap_err();
        assert!(err.msg.contains("no AWS access key id"), "{err}");
        let err = config(&[("AWS_ACCESS_KEY_ID", "AKID")]).unwrap_err();
        assert!(err.msg.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
        assert!(!err.to_string().contains("secret-value"));
    }

    #[test]
    fn server_side_encryption_defaults_to_aes256_and_can_be_changed() {
        let keys = [("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "S")];
        assert_eq!(config(&keys).unwrap().sse, Sse::Aes256);
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut all = keys.to_vec();
            all.extend_from_slice(extra);
            config(&all)
        };
        assert_eq!(with(&[("WALE_S3_SSE", "none")]).unwrap().sse, Sse::None);
        assert_eq!(
            with(&[
                ("WALE_S3_SSE", "aws:kms"),
                ("WALE_S3_SSE_KMS_KEY_ID", "k-1")
            ])
            .unwrap()
            .sse,
            Sse::Kms {
                key_id: Some("k-1".into())
            }
        );
        assert!(with(&[("WALE_S3_SSE", "rot13")]).is_err());
        assert!(with(&[("WALE_S3_SSE_KMS_KEY_ID", "k-1")]).is_err());
        assert_eq!(
            with(&[("WALE_S3_STORAGE_CLASS", "standard_ia")])
                .unwrap()
                .storage_class,
            Some(StorageClass::StandardIa)
        );
    }
}
