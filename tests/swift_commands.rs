//! The backend-independent command scenarios on a real Swift, reached as
//! WAL-E does by default (Keystone v2.0), and what bad Swift settings do to
//! the commands.

mod common;

use common::backend::BackendEnv;
use common::cli::stderr;
use common::scenarios;
use common::swift::{Auth, SwiftBackend, swift};

#[test]
fn wal_push_and_fetch() {
    scenarios::wal_push_and_fetch(&SwiftBackend { auth: Auth::V2 });
}

#[test]
fn backup_cycle() {
    scenarios::backup_cycle(&SwiftBackend { auth: Auth::V3 });
}

fn segment() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("000000010000000000000002");
    std::fs::write(&path, common::cli::fake_segment(16 * 1024 * 1024, 3)).unwrap();
    (dir, path)
}

/// Runs `args`, expecting exit `code` and every one of `needles` in stderr.
fn expect(env: &BackendEnv, args: &[&str], code: i32, needles: &[&str]) -> String {
    let out = env.run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
    }
    err
}

#[test]
fn bad_swift_settings_fail_clearly_with_exit_1() {
    let s = swift();
    let container = s.new_container();
    let good = s.env(Auth::V2, s.keystone(), &container, "db1");
    let (_dir, seg) = segment();
    let seg = seg.to_str().unwrap();

    let wrong = good.with("SWIFT_PASSWORD", "not-the-password");
    for args in [&["backup-list"][..], &["wal-push", seg]] {
        let err = expect(&wrong, args, 1, &["401 Unauthorized", "check SWIFT_USER"]);
        assert!(
            !err.contains("not-the-password"),
            "the password is never shown: {err}"
        );
    }

    let region = good.with("SWIFT_REGION", "RegionNowhere");
    for args in [&["backup-list"][..], &["wal-push", seg]] {
        expect(
            &region,
            args,
            1,
            &["no object-store endpoint", "RegionNowhere"],
        );
    }

    let missing = s.env(Auth::V2, s.keystone(), "no-such-container", "db1");
    for args in [&["backup-list"][..], &["wal-push", seg]] {
        expect(&missing, args, 1, &["\"no-such-container\" does not exist"]);
    }

    expect(
        &good.without("SWIFT_PASSWORD"),
        &["backup-list"],
        1,
        &["SWIFT_PASSWORD is not set"],
    );
    expect(
        &good.with("SWIFT_AUTH_VERSION", "4"),
        &["backup-list"],
        1,
        &["invalid value in SWIFT_AUTH_VERSION"],
    );

    // The same settings are good once corrected.
    expect(&good, &["wal-push", seg], 0, &[]);
}

/// wal-fetch tells "not archived" (1) from "cannot tell" (126): a bad
/// password or a missing container must not end recovery early.
#[test]
fn wal_fetch_exits_126_unless_the_segment_is_authoritatively_missing() {
    let s = swift();
    let container = s.new_container();
    let good = s.env(Auth::V2, s.keystone(), &container, "db1");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let dest = dest.to_str().unwrap();
    let fetch = [
        "wal-fetch",
        "--prefetch",
        "0",
        "000000010000000000000009",
        dest,
    ];
    expect(&good, &fetch, 1, &[]);
    expect(&good.with("SWIFT_PASSWORD", "nope"), &fetch, 126, &["401"]);
    expect(
        &s.env(Auth::V2, s.keystone(), "no-such-container", "db1"),
        &fetch,
        126,
        &["does not exist"],
    );
}

/// A login answered with a redirect to another host is an error: the
/// password (v1's X-Auth-Key) is never sent on to where the redirect points.
#[test]
fn credentials_do_not_follow_a_redirect() {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let elsewhere_port = elsewhere.local_addr().unwrap().port();
    let auth = TcpListener::bind("127.0.0.1:0").unwrap();
    let auth_port = auth.local_addr().unwrap().port();
    let redirector = std::thread::spawn(move || {
        let (mut conn, _) = auth.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = conn.read(&mut request).unwrap();
        write!(
            conn,
            "HTTP/1.1 307 Temporary Redirect\r\n\
             Location: http://127.0.0.1:{elsewhere_port}/auth/v1.0\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
    });

    let env = BackendEnv::new([
        ("WALE_SWIFT_PREFIX", "swift://c/db1".to_string()),
        (
            "SWIFT_AUTHURL",
            format!("http://127.0.0.1:{auth_port}/auth/v1.0"),
        ),
        ("SWIFT_AUTH_VERSION", "1".to_string()),
        ("SWIFT_USER", "test:tester".to_string()),
        ("SWIFT_PASSWORD", "redirected-secret".to_string()),
        ("WALE_RETRIES", "1".to_string()),
    ]);
    let err = expect(&env, &["backup-list"], 1, &["307"]);
    assert!(!err.contains("redirected-secret"), "{err}");
    redirector.join().unwrap();
    // wal-e has exited: a connection it made would be queued by now.
    assert_eq!(
        elsewhere.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "nothing connected to the redirect's target"
    );
}
