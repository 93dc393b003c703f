//! The backend-independent command scenarios on Azurite (wabs://), and the
//! exit codes of bad Azure settings.

mod common;

use std::process::Output;

use common::azurite::{KEY, WabsBackend, account_sas, good_sas};
use common::backend::{BackendEnv, TestBackend};
use common::cli::stderr;
use common::scenarios;

#[test]
fn wal_push_and_fetch() {
    scenarios::wal_push_and_fetch(&WabsBackend::with_key());
}

#[test]
fn wal_push_and_fetch_with_a_sas_token_only() {
    scenarios::wal_push_and_fetch(&WabsBackend::with_sas());
}

/// The backup cycle, then the content types WAL-E gave each kind of blob:
/// application/json sentinels, text/plain extended_version.txt,
/// application/octet-stream for data.
#[test]
fn backup_cycle() {
    let backend = WabsBackend::with_key();
    scenarios::backup_cycle(&backend);
    let blobs = backend.content_types(&backend.last_container());
    for kind in [
        "_backup_stop_sentinel.json",
        "/extended_version.txt",
        ".tar.lzo",
    ] {
        assert!(
            blobs.iter().any(|(name, _)| name.ends_with(kind)),
            "a {kind} blob in {blobs:?}"
        );
    }
    assert!(
        blobs
            .iter()
            .any(|(name, _)| name.starts_with("db1/wal_005/"))
    );
    for (name, ctype) in &blobs {
        assert!(
            !name.starts_with('/'),
            "WAL-E's WABS names have no leading slash: {name}"
        );
        let want = if name.ends_with(".json") {
            "application/json"
        } else if name.ends_with(".txt") {
            "text/plain"
        } else {
            "application/octet-stream"
        };
        assert_eq!(ctype, want, "content type of {name}");
    }
}

fn assert_fails(env: &BackendEnv, args: &[&str], code: i32, needles: &[&str]) -> Output {
    let out = env.run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{args:?}: {needle:?} in {err}");
    }
    for secret in [KEY, "sig="] {
        assert!(!err.contains(secret), "{args:?} leaks a secret: {err}");
    }
    out
}

#[test]
fn bad_settings_exit_1_with_a_clear_message_and_wal_fetch_126() {
    let backend = WabsBackend::with_key();
    let good = backend.fresh_prefix();
    let segment = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(segment.path(), b"not really WAL").unwrap();
    let seg_path = segment.path().to_str().unwrap().to_string();
    let dest = tempfile::tempdir().unwrap();
    let dest = dest.path().join("seg");
    let dest = dest.to_str().unwrap();

    let wrong_key = good.with(
        "WABS_ACCESS_KEY",
        "AAAAvdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
    );
    let no_container = good.with("WALE_WABS_PREFIX", "wabs://no-such-container/db1");
    let sas = good.without("WABS_ACCESS_KEY");
    let expired_sas = sas.with(
        "WABS_SAS_TOKEN",
        &account_sas(
            KEY,
            "rwdlac",
            chrono::Utc::now() - chrono::Duration::hours(1),
        ),
    );
    let tampered = good_sas().replacen("sig=", "sig=AAAA", 1);
    let bad_sas = sas.with("WABS_SAS_TOKEN", &tampered);
    let read_only_sas = sas.with(
        "WABS_SAS_TOKEN",
        &account_sas(KEY, "rl", chrono::Utc::now() + chrono::Duration::hours(1)),
    );

    for (env, needle) in [
        (&wrong_key, "refused"),
        (&expired_sas, "refused"),
        (&bad_sas, "refused"),
        (&no_container, "does not exist"),
    ] {
        assert_fails(env, &["backup-list"], 1, &[needle]);
        assert_fails(env, &["wal-push", &seg_path], 1, &[needle]);
        // Anything but "not found" must stop recovery, not end it.
        assert_fails(
            env,
            &[
                "wal-fetch",
                "--prefetch",
                "0",
                "000000010000000000000001",
                dest,
            ],
            126,
            &[],
        );
    }
    assert_fails(&read_only_sas, &["wal-push", &seg_path], 1, &["refused"]);

    assert_fails(
        &sas,
        &["backup-list"],
        1,
        &["WABS_ACCESS_KEY or WABS_SAS_TOKEN must be defined"],
    );
    assert_fails(
        &good.without("WABS_ACCOUNT_NAME"),
        &["backup-list"],
        1,
        &["WABS_ACCOUNT_NAME"],
    );
    assert_fails(
        &good.with("WABS_ACCESS_KEY", "not base64!"),
        &["backup-list"],
        1,
        &["not a valid account key"],
    );
    assert_fails(
        &good.with("WALE_WABS_ENDPOINT", "ftp://example.invalid/"),
        &["backup-list"],
        1,
        &["invalid WALE_WABS_ENDPOINT"],
    );

    // The good settings work, and -a names the account too.
    let out = good.run(&["backup-list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = good.without("WABS_ACCOUNT_NAME").run(&[
        "-a",
        common::azurite::ACCOUNT,
        "wal-push",
        &seg_path,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
