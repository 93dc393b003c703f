//! The command line, as WAL-E 1.1 defines it (`wal_e/cmd.py`), plus `--swift-prefix`.
//!
//! Only the shape of the arguments lives here. Environment variables are read
//! and validated together with these values in [`crate::config`], so that the
//! precedence rules and error messages are in one place (and the help text can
//! still name the variables).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const ABOUT: &str = "Continuous archiving of PostgreSQL WAL files and base backups to \
object storage (S3, Azure Blob, OpenStack Swift, or a local directory).";

const AFTER_HELP: &str = "\
Storage prefix: one of --file-prefix, --s3-prefix, --wabs-prefix, --swift-prefix,
--gs-prefix, or the environment variables WALE_FILE_PREFIX, WALE_GS_PREFIX,
WALE_S3_PREFIX, WALE_SWIFT_PREFIX, WALE_WABS_PREFIX (first one set wins).
Secrets (AWS_SECRET_ACCESS_KEY, WABS_ACCESS_KEY, WABS_SAS_TOKEN, SWIFT_PASSWORD)
are read from the environment only, for example through envdir.";

#[derive(Debug, Parser)]
#[command(name = "wal-e", version, about = ABOUT, after_help = AFTER_HELP)]
#[command(disable_version_flag = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Default, Clone, Args)]
pub struct GlobalArgs {
    /// Public AWS access key (overrides AWS_ACCESS_KEY_ID; the secret key is read
    /// from AWS_SECRET_ACCESS_KEY only).
    #[arg(short = 'k', long, value_name = "AWS_ACCESS_KEY_ID", global = true)]
    pub aws_access_key_id: Option<String>,

    /// Use the EC2 instance profile's credentials (also AWS_INSTANCE_PROFILE=true).
    #[arg(long, global = true)]
    pub aws_instance_profile: bool,

    /// Accepted for compatibility with WAL-E and ignored (Google Cloud Storage
    /// is not supported).
    #[arg(long, value_name = "GS_ACCESS_KEY_ID", global = true, hide = true)]
    pub gs_access_key_id: Option<String>,

    /// Azure storage account name (overrides WABS_ACCOUNT_NAME; the key is read
    /// from WABS_ACCESS_KEY or WABS_SAS_TOKEN only).
    #[arg(short = 'a', long, value_name = "WABS_ACCOUNT_NAME", global = true)]
    pub wabs_account_name: Option<String>,

    /// Storage prefix on S3, e.g. s3://bucket/path (or WALE_S3_PREFIX).
    #[arg(long, value_name = "S3_PREFIX", global = true)]
    pub s3_prefix: Option<String>,

    /// Storage prefix on Azure Blob Storage, e.g. wabs://container/path (or
    /// WALE_WABS_PREFIX).
    #[arg(long, value_name = "WABS_PREFIX", global = true)]
    pub wabs_prefix: Option<String>,

    /// Storage prefix on OpenStack Swift, e.g. swift://container/path (or
    /// WALE_SWIFT_PREFIX).
    #[arg(long, value_name = "SWIFT_PREFIX", global = true)]
    pub swift_prefix: Option<String>,

    /// Storage prefix on Google Cloud Storage (or WALE_GS_PREFIX); accepted for
    /// compatibility, but this backend is not supported.
    #[arg(long, value_name = "GS_PREFIX", global = true)]
    pub gs_prefix: Option<String>,

    /// Storage prefix in a local or NFS directory, e.g. file://localhost/backups/db1
    /// (or WALE_FILE_PREFIX).
    #[arg(long, value_name = "FILE_PREFIX", global = true)]
    pub file_prefix: Option<String>,

    /// GPG key id to encrypt uploads to and decrypt downloads with (overrides
    /// WALE_GPG_KEY_ID).
    #[arg(long, value_name = "GPG_KEY_ID", global = true)]
    pub gpg_key_id: Option<String>,

    /// Only log warnings and errors.
    #[arg(long, global = true)]
    pub terse: bool,
}

impl GlobalArgs {
    /// The options as arguments again, to start a helper process (wal-prefetch)
    /// configured like this one. Secrets are never among them.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut opt = |flag: &str, value: &Option<String>| {
            if let Some(v) = value {
                args.push(flag.to_string());
                args.push(v.clone());
            }
        };
        opt("--aws-access-key-id", &self.aws_access_key_id);
        opt("--gs-access-key-id", &self.gs_access_key_id);
        opt("--wabs-account-name", &self.wabs_account_name);
        opt("--s3-prefix", &self.s3_prefix);
        opt("--wabs-prefix", &self.wabs_prefix);
        opt("--swift-prefix", &self.swift_prefix);
        opt("--gs-prefix", &self.gs_prefix);
        opt("--file-prefix", &self.file_prefix);
        opt("--gpg-key-id", &self.gpg_key_id);
        if self.aws_instance_profile {
            args.push("--aws-instance-profile".into());
        }
        if self.terse {
            args.push("--terse".into());
        }
        args
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version of wal-e.
    Version,

    /// Push a base backup of a running (or, with --while-offline, stopped) cluster.
    BackupPush(BackupPushArgs),

    /// Fetch a base backup into a data directory.
    BackupFetch(BackupFetchArgs),

    /// List the complete base backups in the store.
    BackupList(BackupListArgs),

    /// Archive a WAL file (PostgreSQL's archive_command: wal-e wal-push %p).
    WalPush(WalPushArgs),

    /// Restore a WAL file (PostgreSQL's restore_command: wal-e wal-fetch "%f" "%p").
    WalFetch(WalFetchArgs),

    /// Download one WAL segment ahead of time (started by wal-fetch).
    WalPrefetch(WalPrefetchArgs),

    /// Delete data from the store; a dry run unless --confirm is given.
    Delete(DeleteArgs),
}

impl Command {
    /// The name WAL-E logs in its "starting WAL-E" line.
    pub fn log_name(&self) -> String {
        match self {
            Command::Version => "version".into(),
            Command::BackupPush(_) => "backup-push".into(),
            Command::BackupFetch(_) => "backup-fetch".into(),
            Command::BackupList(_) => "backup-list".into(),
            Command::WalPush(_) => "wal-push".into(),
            Command::WalFetch(_) => "wal-fetch".into(),
            Command::WalPrefetch(_) => "wal-prefetch".into(),
            Command::Delete(d) => format!("delete {}", d.target.name()),
        }
    }
}

#[derive(Debug, Args)]
pub struct BackupPushArgs {
    /// The PostgreSQL data directory to back up.
    #[arg(value_name = "PG_CLUSTER_DIRECTORY")]
    pub cluster_dir: PathBuf,

    /// How many partitions to compress and upload at once.
    #[arg(short = 'p', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub pool_size: u32,

    /// Limit the rate of reading the cluster, in bytes per second, shared by all
    /// uploads of this backup.
    #[arg(long, value_name = "BYTES_PER_SECOND", value_parser = clap::value_parser!(u64).range(1..))]
    pub cluster_read_rate_limit: Option<u64>,

    /// Back up a cluster that is not running.
    #[arg(long)]
    pub while_offline: bool,
}

#[derive(Debug, Args)]
pub struct BackupFetchArgs {
    /// The data directory to restore into.
    #[arg(value_name = "PG_CLUSTER_DIRECTORY")]
    pub cluster_dir: PathBuf,

    /// A backup name as shown by backup-list, or LATEST.
    #[arg(value_name = "BACKUP_NAME")]
    pub backup_name: String,

    /// How many partitions to download and extract at once.
    #[arg(short = 'p', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub pool_size: u32,

    /// Restore tablespaces as plain directories under pg_tblspc instead of
    /// checking for their symlinks.
    #[arg(long)]
    pub blind_restore: bool,

    /// A JSON file describing where tablespaces go, or SOURCE to use the
    /// locations recorded at backup time.
    #[arg(long, value_name = "RESTORE_SPEC")]
    pub restore_spec: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupListArgs {
    /// LATEST or a backup name; all backups when omitted.
    #[arg(value_name = "QUERY")]
    pub query: Option<String>,

    /// Read each backup's sentinel to show its size and stop segment.
    #[arg(long)]
    pub detail: bool,

    /// Print one JSON object per backup instead of WAL-E's tab-separated table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// Path of the WAL file to archive (PostgreSQL's %p).
    #[arg(value_name = "WAL_SEGMENT")]
    pub wal_segment: PathBuf,

    /// How many WAL files to upload at once, counting other ready segments.
    #[arg(short = 'p', long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub pool_size: u32,
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// Name of the WAL file to restore (PostgreSQL's %f).
    #[arg(value_name = "WAL_SEGMENT")]
    pub wal_segment: String,

    /// Where to write it (PostgreSQL's %p).
    #[arg(value_name = "WAL_DESTINATION")]
    pub wal_destination: PathBuf,

    /// How many following segments to download in the background (0 disables).
    #[arg(short = 'p', long, default_value_t = 8)]
    pub prefetch: u32,
}

#[derive(Debug, Args)]
pub struct WalPrefetchArgs {
    /// The WAL directory whose .wal-e/prefetch holds downloaded segments.
    #[arg(value_name = "BASE_DIRECTORY")]
    pub base_directory: PathBuf,

    /// The WAL segment to download.
    #[arg(value_name = "SEGMENT")]
    pub segment: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Only show what would be deleted (the default without --confirm).
    #[arg(short = 'n', long)]
    pub dry_run: bool,

    /// Really delete.
    #[arg(long)]
    pub confirm: bool,

    /// Leave alone unfinished backups (no sentinel yet) written to within
    /// this many hours: a backup-push may still be uploading them.
    #[arg(long, value_name = "HOURS", default_value_t = 24)]
    pub unfinished_grace_hours: u32,

    #[command(subcommand)]
    pub target: DeleteTarget,
}

#[derive(Debug, Subcommand)]
pub enum DeleteTarget {
    /// Delete backups and WAL older than a backup or WAL segment name.
    Before {
        /// A backup name (base_..._...) or a WAL segment name.
        #[arg(value_name = "BEFORE_SEGMENT_EXCLUSIVE")]
        name: String,
    },
    /// Keep the N newest complete backups and what they need; delete the rest.
    Retain {
        /// How many backups to keep (at least 1).
        #[arg(value_name = "NUM_TO_RETAIN", allow_negative_numbers = true)]
        count: String,
    },
    /// Delete data of WAL-E's older storage versions (basebackups_000..004, wal_000..004).
    OldVersions,
    /// Delete every backup and WAL file under the prefix.
    Everything,
    /// Anything else: rejected by `delete` itself with exit 1 (not as a
    /// usage error), so that a mistyped cron job fails like other bad input.
    #[command(external_subcommand)]
    Unknown(Vec<String>),
}

impl DeleteTarget {
    pub fn name(&self) -> &str {
        match self {
            DeleteTarget::Before { .. } => "before",
            DeleteTarget::Retain { .. } => "retain",
            DeleteTarget::OldVersions => "old-versions",
            DeleteTarget::Everything => "everything",
            DeleteTarget::Unknown(args) => args.first().map_or("", String::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["wal-e", "wal-push", "--terse", "pg_wal/0001"]).unwrap();
        assert!(cli.global.terse);
    }

    #[test]
    fn global_options_round_trip_through_to_args() {
        let cli = Cli::try_parse_from([
            "wal-e",
            "--terse",
            "--file-prefix",
            "file:///x",
            "--gpg-key-id",
            "ABC",
            "version",
        ])
        .unwrap();
        let mut argv = vec!["wal-e".to_string()];
        argv.extend(cli.global.to_args());
        argv.push("version".into());
        let again = Cli::try_parse_from(argv).unwrap();
        assert!(again.global.terse);
        assert_eq!(again.global.file_prefix.as_deref(), Some("file:///x"));
        assert_eq!(again.global.gpg_key_id.as_deref(), Some("ABC"));
    }

    #[test]
    fn defaults_match_wal_e() {
        let cli = Cli::try_parse_from(["wal-e", "wal-fetch", "A", "B"]).unwrap();
        match cli.command {
            Some(Command::WalFetch(a)) => assert_eq!(a.prefetch, 8),
            other => panic!("unexpected {other:?}"),
        }
        let cli = Cli::try_parse_from(["wal-e", "wal-push", "A"]).unwrap();
        match cli.command {
            Some(Command::WalPush(a)) => assert_eq!(a.pool_size, 32),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_delete_targets_are_parsed_for_delete_to_reject() {
        let cli = Cli::try_parse_from(["wal-e", "delete", "--confirm", "all", "x"]).unwrap();
        match cli.command {
            Some(Command::Delete(d)) => {
                assert_eq!(d.target.name(), "all");
                assert!(matches!(d.target, DeleteTarget::Unknown(ref a) if a == &["all", "x"]));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(Cli::try_parse_from(["wal-e", "delete"]).is_err());
    }

    #[test]
    fn retain_accepts_negative_numbers_for_validation_later() {
        let cli = Cli::try_parse_from(["wal-e", "delete", "retain", "-1"]).unwrap();
        match cli.command {
            Some(Command::Delete(DeleteArgs {
                target: DeleteTarget::Retain { count },
                ..
            })) => assert_eq!(count, "-1"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
