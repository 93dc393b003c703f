//! The real binary's command line: help, version, and bad input, each with
//! WAL-E's message style and exit code, and nothing written anywhere.

use std::path::Path;
use std::process::{Command, Output};

fn wal_e(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wal-e"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WALE_LOG_DESTINATION", "stderr")
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .expect("run wal-e")
}

fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[test]
fn version_needs_no_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let out = wal_e(&["version"], &[], tmp.path());
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", env!("CARGO_PKG_VERSION"))
    );
    assert!(out.stderr.is_empty(), "version logs nothing");
}

#[test]
fn help_lists_every_wal_e_option() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &[
                "--aws-access-key-id",
                "-k",
                "--aws-instance-profile",
                "--wabs-account-name",
                "-a",
                "--s3-prefix",
                "--wabs-prefix",
                "--swift-prefix",
                "--gs-prefix",
                "--file-prefix",
                "--gpg-key-id",
                "--terse",
                "backup-push",
                "backup-fetch",
                "backup-list",
                "wal-push",
                "wal-fetch",
                "wal-prefetch",
                "delete",
                "version",
            ],
        ),
        (
            &["backup-push", "--help"],
            &[
                "PG_CLUSTER_DIRECTORY",
                "--pool-size",
                "--cluster-read-rate-limit",
                "--while-offline",
                "[default: 4]",
            ],
        ),
        (
            &["backup-fetch", "--help"],
            &[
                "PG_CLUSTER_DIRECTORY",
                "BACKUP_NAME",
                "--pool-size",
                "--blind-restore",
                "--restore-spec",
            ],
        ),
        (&["backup-list", "--help"], &["QUERY", "--detail", "--json"]),
        (
            &["wal-push", "--help"],
            &["WAL_SEGMENT", "--pool-size", "[default: 32]"],
        ),
        (
            &["wal-fetch", "--help"],
            &[
                "WAL_SEGMENT",
                "WAL_DESTINATION",
                "--prefetch",
                "[default: 8]",
            ],
        ),
        (&["wal-prefetch", "--help"], &["BASE_DIRECTORY", "SEGMENT"]),
        (
            &["delete", "--help"],
            &[
                "--dry-run",
                "--confirm",
                "before",
                "retain",
                "old-versions",
                "everything",
            ],
        ),
    ];
    for (args, needles) in cases {
        let out = wal_e(args, &[], tmp.path());
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for needle in *needles {
            assert!(
                text.contains(needle),
                "{args:?} help lacks {needle}:\n{text}"
            );
        }
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_the_right_exit_code() {
    struct Case {
        name: &'static str,
        args: &'static [&'static str],
        env: &'static [(&'static str, &'static str)],
        code: i32,
        stderr_has: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "no prefix",
            args: &["backup-list"],
            env: &[],
            code: 1,
            stderr_has: &["ERROR", "MSG: no storage prefix defined", "HINT: "],
        },
        Case {
            name: "unknown scheme",
            args: &["backup-list"],
            env: &[("WALE_S3_PREFIX", "ftp://host/x")],
            code: 1,
            stderr_has: &["MSG: unsupported storage scheme \"ftp\""],
        },
        Case {
            name: "malformed prefix",
            args: &["--s3-prefix", "bucket-without-scheme", "backup-list"],
            env: &[],
            code: 1,
            stderr_has: &[
                "MSG: malformed storage prefix",
                "DETAIL: The prefix has no scheme",
            ],
        },
        Case {
            name: "file prefix without a path",
            args: &["--file-prefix", "file://localhost", "wal-push", "x"],
            env: &[],
            code: 1,
            stderr_has: &["absolute directory path"],
        },
        Case {
            name: "two prefix flags",
            args: &[
                "--file-prefix",
                "file:///a",
                "--s3-prefix",
                "s3://b/c",
                "backup-list",
            ],
            env: &[],
            code: 1,
            stderr_has: &["more than one storage prefix"],
        },
        Case {
            name: "-k with instance profile",
            args: &["-k", "AKIAEXAMPLE", "--aws-instance-profile", "backup-list"],
            env: &[("WALE_S3_PREFIX", "s3://bucket/db")],
            code: 1,
            stderr_has: &["mutually exclusive"],
        },
        Case {
            name: "bad boolean env",
            args: &["backup-list"],
            env: &[
                ("WALE_S3_PREFIX", "s3://bucket/db"),
                ("AWS_INSTANCE_PROFILE", "yes"),
            ],
            code: 1,
            stderr_has: &[
                "MSG: invalid boolean value in AWS_INSTANCE_PROFILE",
                "DETAIL: AWS_INSTANCE_PROFILE is set to \"yes\"",
            ],
        },
        Case {
            name: "bad WALE_RETRIES",
            args: &["backup-list"],
            env: &[
                ("WALE_FILE_PREFIX", "file:///nonexistent-wal-e-store"),
                ("WALE_RETRIES", "lots"),
            ],
            code: 1,
            stderr_has: &["invalid value in WALE_RETRIES"],
        },
        Case {
            name: "unknown subcommand",
            args: &["frobnicate"],
            env: &[],
            code: 2,
            stderr_has: &["unrecognized subcommand 'frobnicate'"],
        },
        Case {
            name: "delete without a target",
            args: &["delete"],
            env: &[],
            code: 2,
            stderr_has: &["Usage"],
        },
        Case {
            name: "pool size 0",
            args: &["wal-push", "--pool-size", "0", "x"],
            env: &[],
            code: 2,
            stderr_has: &["--pool-size"],
        },
        Case {
            name: "gs is not supported",
            args: &["backup-list"],
            env: &[("WALE_GS_PREFIX", "gs://bucket/db")],
            code: 1,
            stderr_has: &["Google Cloud Storage (gs://) is not supported"],
        },
    ];
    for case in cases {
        let cwd = tempfile::tempdir().unwrap();
        let out = wal_e(case.args, case.env, cwd.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(case.code),
            "{}: {stderr}",
            case.name
        );
        for needle in case.stderr_has {
            assert!(
                stderr.contains(needle),
                "{}: stderr lacks {needle:?}:\n{stderr}",
                case.name
            );
        }
        assert!(
            out.stdout.is_empty(),
            "{}: stdout must stay clean",
            case.name
        );
        assert!(
            dir_is_empty(cwd.path()),
            "{}: nothing may be written",
            case.name
        );
    }
}

#[test]
fn secrets_have_no_flags() {
    let tmp = tempfile::tempdir().unwrap();
    for flag in [
        "--aws-secret-access-key",
        "--wabs-access-key",
        "--swift-password",
        "--wabs-sas-token",
    ] {
        let out = wal_e(&[flag, "x", "backup-list"], &[], tmp.path());
        assert_eq!(out.status.code(), Some(2), "{flag} must not be accepted");
    }
}

#[test]
fn no_subcommand_exits_127_when_a_prefix_is_configured() {
    let store = tempfile::tempdir().unwrap();
    let prefix = format!("file://localhost{}/db", store.path().display());
    let out = wal_e(&[], &[("WALE_FILE_PREFIX", &prefix)], store.path());
    assert_eq!(out.status.code(), Some(127));
    assert!(dir_is_empty(store.path()));
}

#[test]
fn backup_push_without_a_reachable_server_fails_clearly() {
    let store = tempfile::tempdir().unwrap();
    std::fs::create_dir(store.path().join("db")).unwrap();
    let prefix = format!("file://localhost{}/db", store.path().display());
    let out = wal_e(
        &["backup-push", "/nonexistent"],
        &[
            ("WALE_FILE_PREFIX", &prefix),
            ("PGHOST", "/nonexistent-socket-dir"),
            ("PGPASSWORD", "sekrit-password"),
        ],
        store.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("MSG: could not connect to PostgreSQL"),
        "{stderr}"
    );
    assert!(
        stderr.contains("/nonexistent-socket-dir"),
        "names what it tried: {stderr}"
    );
    assert!(
        !stderr.contains("sekrit-password"),
        "never logs the password: {stderr}"
    );
    assert!(
        stderr.contains("wal_e.main   INFO     MSG: starting WAL-E"),
        "{stderr}"
    );
    assert!(dir_is_empty(&store.path().join("db")));
}

#[test]
fn backup_push_to_a_missing_store_directory_fails_before_connecting() {
    let store = tempfile::tempdir().unwrap();
    let prefix = format!("file://localhost{}/db", store.path().display());
    let out = wal_e(
        &["backup-push", "/nonexistent"],
        &[
            ("WALE_FILE_PREFIX", &prefix),
            ("PGHOST", "/nonexistent-socket-dir"),
        ],
        store.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("MSG: the storage directory is not available"),
        "{stderr}"
    );
    assert!(stderr.contains("or is the share mounted?"), "{stderr}");
    assert!(
        !stderr.contains("could not connect to PostgreSQL"),
        "{stderr}"
    );
    assert!(dir_is_empty(store.path()), "nothing is created");
}

#[test]
fn terse_hides_info_lines() {
    let store = tempfile::tempdir().unwrap();
    std::fs::create_dir(store.path().join("db")).unwrap();
    let prefix = format!("file://localhost{}/db", store.path().display());
    let out = wal_e(
        &["--terse", "backup-push", "/x"],
        &[
            ("WALE_FILE_PREFIX", &prefix),
            ("PGHOST", "/nonexistent-socket-dir"),
        ],
        store.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("INFO"), "{stderr}");
    assert!(stderr.contains("ERROR"), "{stderr}");
}
