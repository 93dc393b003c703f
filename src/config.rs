//! Raw arguments and environment turned into one validated [`Settings`] value.
//!
//! WAL-E is configured mostly through the environment (envdir), so every lookup
//! goes through [`Env`]; tests pass a map instead of touching the process.
//! Secrets are only ever read from the environment: no flag exists for them.

use crate::cli::GlobalArgs;
use crate::error::UserError;
use std::collections::HashMap;
use std::time::Duration;

/// Where configuration values come from (the process environment in production).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// WAL-E's `parse_boolean_envvar`: unset, empty, `false` and `0` are false;
/// `true` and `1` are true (any case); anything else is an error.
pub fn parse_bool_env(env: &dyn Env, name: &str) -> Result<bool, UserError> {
    let Some(raw) = env.var(name) else {
        return Ok(false);
    };
    match raw.to_ascii_lowercase().as_str() {
        "" | "false" | "0" => Ok(false),
        "true" | "1" => Ok(true),
        _ => Err(UserError::new(format!("invalid boolean value in {name}"))
            .detail(format!("{name} is set to {raw:?}."))
            .hint(format!(
                "Set {name} to true, false, 1 or 0, or leave it unset."
            ))),
    }
}

/// The storage services a prefix can name (`SUPPORTED_STORE_SCHEMES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    File,
    S3,
    Wabs,
    Swift,
    Gs,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::File => "file",
            Scheme::S3 => "s3",
            Scheme::Wabs => "wabs",
            Scheme::Swift => "swift",
            Scheme::Gs => "gs",
        }
    }

    fn parse(s: &str) -> Option<Scheme> {
        match s.to_ascii_lowercase().as_str() {
            "file" => Some(Scheme::File),
            "s3" => Some(Scheme::S3),
            "wabs" => Some(Scheme::Wabs),
            "swift" => Some(Scheme::Swift),
            "gs" => Some(Scheme::Gs),
            _ => None,
        }
    }
}

/// A parsed storage prefix URL such as `s3://bucket/db1`.
///
/// As in WAL-E's `StorageLayout`: the store name is the URL's host part (bucket
/// or container; ignored for `file`), and the path prefix is the URL path with
/// its leading `/` removed and a trailing `/` added when not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoragePrefix {
    pub scheme: Scheme,
    /// The prefix exactly as configured, for messages.
    pub url: String,
    /// Bucket or container (the URL's host part).
    pub store_name: String,
    /// Path inside the store, `""` or ending in `/`.
    pub path: String,
}

impl StoragePrefix {
    pub fn parse(url: &str) -> Result<StoragePrefix, UserError> {
        let malformed = |why: &str| {
            UserError::new(format!("malformed storage prefix {url:?}"))
                .detail(why.to_string())
                .hint("A prefix looks like s3://bucket/path, wabs://container/path, swift://container/path or file://localhost/absolute/path.")
        };
        let (scheme_str, rest) = url
            .split_once("://")
            .ok_or_else(|| malformed("The prefix has no scheme (such as s3://)."))?;
        let scheme = Scheme::parse(scheme_str).ok_or_else(|| {
            UserError::new(format!("unsupported storage scheme {scheme_str:?}"))
                .detail(format!("The storage prefix is {url:?}."))
                .hint("Use one of the schemes file, s3, wabs or swift.")
        })?;
        if rest.contains(['?', '#']) {
            return Err(malformed(
                "Query strings and fragments are not allowed in a prefix.",
            ));
        }
        let (store_name, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if scheme != Scheme::File && store_name.is_empty() {
            return Err(malformed("The prefix names no bucket or container."));
        }
        if scheme == Scheme::File
            && !store_name.is_empty()
            && !store_name.eq_ignore_ascii_case("localhost")
        {
            // file://./store or file://backups/db1 would archive into /store
            // or /db1 at the root of the file system.
            return Err(UserError::new(format!(
                "file:// prefix {url:?} names a host or a relative path"
            ))
            .detail(format!(
                "{store_name:?}, the part between file:// and the next slash, is read as a host; only an empty host or localhost is accepted."
            ))
            .hint("Give an absolute directory: file://localhost/var/backups/wal-e/db1 or file:///var/backups/wal-e/db1."));
        }
        let trimmed = path.trim_start_matches('/');
        if scheme == Scheme::File && trimmed.is_empty() {
            return Err(malformed(
                "A file:// prefix needs an absolute directory path, such as file://localhost/backups/db1.",
            ));
        }
        let mut path = trimmed.to_string();
        if !path.is_empty() && !path.ends_with('/') {
            path.push('/');
        }
        Ok(StoragePrefix {
            scheme,
            url: url.to_string(),
            store_name: store_name.to_string(),
            path,
        })
    }
}

/// How often a failing storage operation is tried (`WALE_RETRIES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    /// Give up after this many failed attempts.
    Limited(u32),
    /// `WALE_RETRIES` ≤ 0: keep trying.
    Unlimited,
}

impl Retries {
    /// WAL-E's default is 100.
    pub const DEFAULT: Retries = Retries::Limited(100);

    /// This budget, capped at `n` attempts.
    pub fn at_most(self, n: u32) -> Retries {
        match self {
            Retries::Limited(m) => Retries::Limited(m.min(n)),
            Retries::Unlimited => Retries::Limited(n),
        }
    }

    fn from_env(env: &dyn Env) -> Result<Retries, UserError> {
        let Some(raw) = env.var("WALE_RETRIES").filter(|v| !v.trim().is_empty()) else {
            return Ok(Retries::DEFAULT);
        };
        let n: i64 = raw.trim().parse().map_err(|_| {
            UserError::new("invalid value in WALE_RETRIES")
                .detail(format!("WALE_RETRIES is set to {raw:?}."))
                .hint("Set it to a whole number of attempts; 0 or less retries forever.")
        })?;
        Ok(if n <= 0 {
            Retries::Unlimited
        } else {
            Retries::Limited(u32::try_from(n).unwrap_or(u32::MAX))
        })
    }
}

/// How long `wal-push` may take in all (`WALE_WAL_PUSH_TIMEOUT`, whole
/// seconds, default 300): PostgreSQL's archiver waits for archive_command, so
/// a store that hangs or keeps failing must not hold it for hours.
fn wal_push_timeout_from_env(env: &dyn Env) -> Result<Duration, UserError> {
    const NAME: &str = "WALE_WAL_PUSH_TIMEOUT";
    let Some(raw) = env.var(NAME).filter(|v| !v.trim().is_empty()) else {
        return Ok(DEFAULT_WAL_PUSH_TIMEOUT);
    };
    match raw.trim().parse::<u64>() {
        Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(UserError::new(format!("invalid value in {NAME}"))
            .detail(format!("{NAME} is set to {raw:?}."))
            .hint("Set it to a whole number of seconds, at least 1 (default 300).")),
    }
}

const DEFAULT_WAL_PUSH_TIMEOUT: Duration = Duration::from_secs(300);

/// Where S3 credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsCredentialSource {
    /// Access key id from `-k` or `AWS_ACCESS_KEY_ID`, secret from the environment.
    Keys { access_key_id: Option<String> },
    /// The EC2 instance metadata service.
    InstanceProfile,
}

/// Everything a command that touches the store needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub prefix: StoragePrefix,
    pub gpg_key_id: Option<String>,
    pub retries: Retries,
    /// The time bound of a whole `wal-push`.
    pub wal_push_timeout: Duration,
    pub aws_credentials: AwsCredentialSource,
    pub wabs_account_name: Option<String>,
}

/// WAL-E's prefix precedence: the flags, then the environment variables, each
/// in this order.
const PREFIX_ENV_ORDER: [&str; 5] = [
    "WALE_FILE_PREFIX",
    "WALE_GS_PREFIX",
    "WALE_S3_PREFIX",
    "WALE_SWIFT_PREFIX",
    "WALE_WABS_PREFIX",
];

fn prefix_from(args: &GlobalArgs, env: &dyn Env) -> Result<String, UserError> {
    let flags: Vec<(&str, &String)> = [
        ("--file-prefix", &args.file_prefix),
        ("--gs-prefix", &args.gs_prefix),
        ("--s3-prefix", &args.s3_prefix),
        ("--wabs-prefix", &args.wabs_prefix),
        ("--swift-prefix", &args.swift_prefix),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)))
    .collect();
    match flags.as_slice() {
        [(_, value)] => return Ok((*value).clone()),
        [] => {}
        many => {
            let names: Vec<&str> = many.iter().map(|(n, _)| *n).collect();
            return Err(
                UserError::new("more than one storage prefix given on the command line")
                    .detail(format!("Given: {}.", names.join(", ")))
                    .hint("Pass exactly one of the prefix options."),
            );
        }
    }
    let set: Vec<(&str, String)> = PREFIX_ENV_ORDER
        .iter()
        .filter_map(|name| env.var(name).filter(|v| !v.is_empty()).map(|v| (*name, v)))
        .collect();
    match set.into_iter().next() {
        Some((_, value)) => Ok(value),
        None => Err(UserError::new("no storage prefix defined")
            .detail("None of --file-prefix, --s3-prefix, --wabs-prefix, --swift-prefix, --gs-prefix or the matching WALE_*_PREFIX environment variables is set.")
            .hint("For example: export WALE_FILE_PREFIX=file://localhost/var/backups/wal-e, or WALE_S3_PREFIX=s3://some-bucket/directory.")),
    }
}

/// Whether a prefix is configured at all (WAL-E exits 127 rather than 1 for a
/// missing subcommand when one is).
pub fn has_prefix(args: &GlobalArgs, env: &dyn Env) -> bool {
    prefix_from(args, env).is_ok()
}

impl Settings {
    pub fn from_args(args: &GlobalArgs, env: &dyn Env) -> Result<Settings, UserError> {
        let instance_profile =
            args.aws_instance_profile || parse_bool_env(env, "AWS_INSTANCE_PROFILE")?;
        let aws_credentials = match (&args.aws_access_key_id, instance_profile) {
            (Some(_), true) => {
                return Err(UserError::new(
                    "--aws-access-key-id and --aws-instance-profile are mutually exclusive",
                )
                .detail("An access key was given with -k while instance-profile credentials were requested.")
                .hint("Use either -k/AWS_ACCESS_KEY_ID with AWS_SECRET_ACCESS_KEY, or the instance profile."));
            }
            (_, true) => AwsCredentialSource::InstanceProfile,
            (Some(id), false) => AwsCredentialSource::Keys {
                access_key_id: Some(id.clone()),
            },
            (None, false) => AwsCredentialSource::Keys {
                access_key_id: env.var("AWS_ACCESS_KEY_ID"),
            },
        };
        let prefix = StoragePrefix::parse(&prefix_from(args, env)?)?;
        let gpg_key_id = args
            .gpg_key_id
            .clone()
            .or_else(|| env.var("WALE_GPG_KEY_ID"))
            .filter(|id| !id.is_empty());
        Ok(Settings {
            prefix,
            gpg_key_id,
            retries: Retries::from_env(env)?,
            wal_push_timeout: wal_push_timeout_from_env(env)?,
            aws_credentials,
            wabs_account_name: args
                .wabs_account_name
                .clone()
                .or_else(|| env.var("WABS_ACCOUNT_NAME")),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An [`Env`] holding just these variables.
    pub(crate) fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn prefix_parsing_follows_wal_e_storage_layout() {
        let p = StoragePrefix::parse("s3://bkt/db1").unwrap();
        assert_eq!(
            (p.scheme, p.store_name.as_str(), p.path.as_str()),
            (Scheme::S3, "bkt", "db1/")
        );
        let p = StoragePrefix::parse("s3://bkt").unwrap();
        assert_eq!(p.path, "");
        let p = StoragePrefix::parse("file://localhost/srv/db1/").unwrap();
        assert_eq!(
            (p.store_name.as_str(), p.path.as_str()),
            ("localhost", "srv/db1/")
        );
        let p = StoragePrefix::parse("file:///srv/db1").unwrap();
        assert_eq!(p.path, "srv/db1/");
        let p = StoragePrefix::parse("SWIFT://c/x").unwrap();
        assert_eq!(p.scheme, Scheme::Swift);
    }

    #[test]
    fn bad_prefixes_are_rejected_with_a_message() {
        for (bad, needle) in [
            ("bucket/path", "no scheme"),
            ("ftp://host/x", "unsupported storage scheme"),
            ("s3:///path", "no bucket"),
            ("file://localhost", "absolute directory"),
            ("file://./relstore", "names a host or a relative path"),
            ("file://backups/db1", "names a host or a relative path"),
            ("s3://b/p?x=1", "Query strings"),
        ] {
            let err = StoragePrefix::parse(bad).unwrap_err();
            assert!(err.to_string().contains(needle), "{bad}: {err}");
            assert_eq!(err.exit_code, 1);
        }
    }

    #[test]
    fn a_file_prefix_with_a_host_is_refused_with_a_hint() {
        let err = StoragePrefix::parse("file://./relstore").unwrap_err();
        assert!(err.detail.as_deref().unwrap().contains("\".\""), "{err}");
        assert!(
            err.hint
                .as_deref()
                .unwrap()
                .contains("file://localhost/var/backups/wal-e/db1"),
            "{err}"
        );
        for fine in [
            "file:///srv/db1",
            "file://localhost/srv/db1",
            "FILE://LocalHost/srv/db1",
        ] {
            assert_eq!(
                StoragePrefix::parse(fine).unwrap().path,
                "srv/db1/",
                "{fine}"
            );
        }
    }

    #[test]
    fn flags_win_over_environment_and_env_follows_wal_e_order() {
        let e = env(&[
            ("WALE_S3_PREFIX", "s3://envbucket/x"),
            ("WALE_WABS_PREFIX", "wabs://c/x"),
        ]);
        let args = GlobalArgs {
            file_prefix: Some("file://localhost/tmp/x".into()),
            ..Default::default()
        };
        assert_eq!(
            Settings::from_args(&args, &e).unwrap().prefix.scheme,
            Scheme::File
        );
        let s = Settings::from_args(&GlobalArgs::default(), &e).unwrap();
        assert_eq!(s.prefix.scheme, Scheme::S3);
        let e = env(&[
            ("WALE_SWIFT_PREFIX", "swift://c/x"),
            ("WALE_WABS_PREFIX", "wabs://c/x"),
        ]);
        let s = Settings::from_args(&GlobalArgs::default(), &e).unwrap();
        assert_eq!(s.prefix.scheme, Scheme::Swift);
    }

    #[test]
    fn boolean_env_parsing_matches_wal_e() {
        for (raw, want) in [
            ("", false),
            ("0", false),
            ("FALSE", false),
            ("1", true),
            ("True", true),
        ] {
            assert_eq!(
                parse_bool_env(&env(&[("X", raw)]), "X").unwrap(),
                want,
                "{raw}"
            );
        }
        assert!(!parse_bool_env(&env(&[]), "X").unwrap());
        let err = parse_bool_env(&env(&[("X", "yes")]), "X").unwrap_err();
        assert!(err.to_string().contains("invalid boolean value in X"));
    }

    #[test]
    fn retries_default_limit_and_unlimited() {
        assert_eq!(Retries::from_env(&env(&[])).unwrap(), Retries::Limited(100));
        assert_eq!(
            Retries::from_env(&env(&[("WALE_RETRIES", "3")])).unwrap(),
            Retries::Limited(3)
        );
        assert_eq!(
            Retries::from_env(&env(&[("WALE_RETRIES", "0")])).unwrap(),
            Retries::Unlimited
        );
        assert!(Retries::from_env(&env(&[("WALE_RETRIES", "many")])).is_err());
        assert_eq!(Retries::DEFAULT.at_most(3), Retries::Limited(3));
        assert_eq!(Retries::Limited(2).at_most(3), Retries::Limited(2));
        assert_eq!(Retries::Unlimited.at_most(3), Retries::Limited(3));
    }

    #[test]
    fn wal_push_timeout_defaults_to_five_minutes_and_must_be_positive() {
        assert_eq!(
            wal_push_timeout_from_env(&env(&[])).unwrap(),
            Duration::from_secs(300)
        );
        assert_eq!(
            wal_push_timeout_from_env(&env(&[("WALE_WAL_PUSH_TIMEOUT", " 20 ")])).unwrap(),
            Duration::from_secs(20)
        );
        for bad in ["0", "-5", "1.5", "5m"] {
            let err =
                wal_push_timeout_from_env(&env(&[("WALE_WAL_PUSH_TIMEOUT", bad)])).unwrap_err();
            assert!(
                err.msg.contains("invalid value in WALE_WAL_PUSH_TIMEOUT"),
                "{bad}: {err}"
            );
            assert!(err.hint.is_some());
        }
    }

    #[test]
    fn instance_profile_conflicts_with_an_explicit_key() {
        let args = GlobalArgs {
            aws_access_key_id: Some("AKIA".into()),
            ..Default::default()
        };
        let e = env(&[
            ("AWS_INSTANCE_PROFILE", "true"),
            ("WALE_S3_PREFIX", "s3://b/p"),
        ]);
        let err = Settings::from_args(&args, &e).unwrap_err();
        assert!(err.msg.contains("mutually exclusive"));
    }
}
