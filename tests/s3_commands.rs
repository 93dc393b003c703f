//! The commands against a local S3-compatible server (s3s-fs, SigV4
//! checked): the backend-independent scenarios, instance-profile
//! credentials, faults injected by a proxy, and bad settings.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::backend::{BackendEnv, TestBackend};
use common::cli::{fake_segment, random_bytes, stderr};
use common::pg::{Cluster, make_traversable};
use common::s3::{FakeImds, FaultProxy, S3Backend, S3Server, SeenGet};
use common::scenarios;

/// A failing command must give up within this (WALE_RETRIES of 3 or less).
const GIVE_UP_WITHIN: Duration = Duration::from_secs(60);

#[test]
fn wal_push_and_fetch() {
    scenarios::wal_push_and_fetch(&S3Backend::new());
}

#[test]
fn backup_cycle() {
    scenarios::backup_cycle(&S3Backend::new());
}

/// wal-push then wal-fetch of one segment, both exit 0, same bytes back.
fn push_and_fetch_succeed(env: &BackendEnv) {
    let (push, fetch) = push_and_fetch_one(env);
    assert_eq!(push.status.code(), Some(0), "wal-push: {}", stderr(&push));
    assert_eq!(
        fetch.status.code(),
        Some(0),
        "wal-fetch: {}",
        stderr(&fetch)
    );
}

fn push_and_fetch_one(env: &BackendEnv) -> (Output, Output) {
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("000000010000000000000007");
    let data = fake_segment(16 * 1024 * 1024, 7);
    std::fs::write(&seg, &data).unwrap();
    let push = env.run(&["wal-push", seg.to_str().unwrap()]);
    let dest = dir.path().join("fetched");
    let fetch = env.run(&[
        "wal-fetch",
        "--prefetch",
        "0",
        "000000010000000000000007",
        dest.to_str().unwrap(),
    ]);
    if fetch.status.success() {
        assert!(
            std::fs::read(&dest).unwrap() == data,
            "fetched bytes differ"
        );
    }
    (push, fetch)
}

#[test]
fn instance_profile_credentials_come_from_the_metadata_service() {
    let imds = FakeImds::start();
    let env = S3Backend::new()
        .fresh_prefix()
        .without("AWS_ACCESS_KEY_ID")
        .without("AWS_SECRET_ACCESS_KEY")
        .with("AWS_INSTANCE_PROFILE", "true")
        .with(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            &format!("http://127.0.0.1:{}/", imds.port),
        );
    push_and_fetch_succeed(&env);
    assert!(
        imds.served.load(Ordering::SeqCst) >= 2,
        "each process asked IMDS"
    );

    // Without the metadata service there are no credentials: a clear failure.
    let dead = env.with(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        &format!("http://127.0.0.1:{}/", common::server::free_port()),
    );
    let out = dead.with("WALE_RETRIES", "1").run(&["backup-list"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("credentials could not be loaded"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn commands_ride_out_a_flaky_server() {
    let proxy = FaultProxy::start();
    proxy.faults.fail_every.store(3, Ordering::SeqCst);
    let backend = S3Backend::via(proxy.port);
    scenarios::wal_push_and_fetch(&backend);
    scenarios::backup_cycle(&backend);
    let failed = proxy.faults.failed.load(Ordering::SeqCst);
    assert!(failed > 20, "only {failed} requests were spoiled");
}

/// The sentinel is put create-only: when the answer to its PUT is lost, the
/// retry finds the object the first attempt stored, with the same bytes,
/// and the backup is complete.
#[test]
fn a_sentinel_put_whose_answer_was_lost_completes_the_backup() {
    let proxy = FaultProxy::start();
    let env = S3Backend::via(proxy.port).fresh_prefix();
    let tmp = tempfile::tempdir().unwrap();
    make_traversable(tmp.path());
    let pg = Cluster::init(tmp.path(), "primary");
    pg.append_conf(&format!(
        "archive_mode = on\narchive_command = '{} wal-push %p'\n",
        env.launcher(tmp.path()).display()
    ));
    pg.start();
    *proxy.faults.drop_answer_to_put.lock().unwrap() = Some("_backup_stop_sentinel.json".into());
    let out = env
        .command(&["backup-push", pg.data_dir.to_str().unwrap()])
        .envs(pg.env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "backup-push: {}", stderr(&out));
    assert!(
        proxy.faults.drop_answer_to_put.lock().unwrap().is_none(),
        "the answer to the sentinel's PUT was dropped"
    );
    assert!(
        stderr(&out).contains("the sentinel was uploaded already"),
        "{}",
        stderr(&out)
    );
    let out = env.command(&["backup-list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);
}

/// Requests per method and object the commands below may make: each object
/// gets `WALE_RETRIES` attempts in all, one request each, whichever layer
/// sees the failure (the SDK, the store, the command).
const RETRIES: u64 = 3;

/// Runs `what`, which must fail, and checks that no object got more than
/// `RETRIES` requests of one kind, and that some object got exactly that.
fn at_most_retries_per_object(proxy: &FaultProxy, what: &str, run: impl FnOnce() -> Output) {
    proxy.faults.per_object.lock().unwrap().clear();
    let started = Instant::now();
    let out = run();
    assert!(!out.status.success(), "{what}: {}", stderr(&out));
    let (most, object) = proxy.faults.most_per_object();
    assert_eq!(
        most,
        RETRIES,
        "{what}: {most} requests for {object}; all: {:?}",
        proxy.faults.per_object.lock().unwrap()
    );
    assert!(
        started.elapsed() < GIVE_UP_WITHIN,
        "{what} gave up after {:?}",
        started.elapsed()
    );
}

#[test]
fn a_failing_server_gets_wale_retries_requests_per_object_at_most() {
    let proxy = FaultProxy::start();
    let env = S3Backend::via(proxy.port)
        .fresh_prefix()
        .with("WALE_RETRIES", &RETRIES.to_string());

    // A backup to restore, pushed while the server works.
    let tmp = tempfile::tempdir().unwrap();
    make_traversable(tmp.path());
    let pg = Cluster::init(tmp.path(), "primary");
    pg.append_conf(&format!(
        "archive_mode = on\narchive_command = '{} wal-push %p'\n",
        env.launcher(tmp.path()).display()
    ));
    pg.start();
    let data_dir = pg.data_dir.to_str().unwrap().to_string();
    let backup_push = || {
        env.command(&["backup-push", &data_dir])
            .envs(pg.env())
            .output()
            .unwrap()
    };
    let out = backup_push();
    assert_eq!(out.status.code(), Some(0), "backup-push: {}", stderr(&out));
    // The archiver's own wal-push calls must not mix with the counts below.
    pg.stop();
    pg.append_conf("archive_command = '/bin/true'\n");
    pg.start();

    // From now on every request fails.
    proxy.faults.fail_every.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("000000010000000000000007");
    std::fs::write(&seg, fake_segment(16 * 1024 * 1024, 7)).unwrap();
    at_most_retries_per_object(&proxy, "wal-push", || {
        let out = env.run(&["wal-push", seg.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "wal-push: {}", stderr(&out));
        assert!(stderr(&out).contains("SlowDown") || stderr(&out).contains("connection"));
        out
    });
    let dest = dir.path().join("fetched");
    at_most_retries_per_object(&proxy, "wal-fetch", || {
        let out = env.run(&[
            "wal-fetch",
            "--prefetch",
            "0",
            "000000010000000000000007",
            dest.to_str().unwrap(),
        ]);
        // Anything but an authoritative "not found" stops recovery.
        assert_eq!(out.status.code(), Some(126), "wal-fetch: {}", stderr(&out));
        out
    });
    at_most_retries_per_object(&proxy, "backup-push", backup_push);
    pg.stop();

    // The backup is listed, but every partition download fails.
    proxy.faults.fail_every.store(0, Ordering::SeqCst);
    *proxy.faults.fail_matching.lock().unwrap() = Some(("/tar_partitions/".into(), u64::MAX));
    let restored = tmp.path().join("restored");
    at_most_retries_per_object(&proxy, "backup-fetch", || {
        env.run(&["backup-fetch", restored.to_str().unwrap(), "LATEST"])
    });
}

/// The GETs of `key` were two: the whole object, whose body the proxy cut
/// after sending `cut.at` bytes, then the rest (`Range`) of the same version
/// (`If-Match`) from the byte wal-e had received, which it logged (the
/// bytes in flight when the connection closed may be lost).
fn assert_resumed_at_the_cut(proxy: &FaultProxy, key: &str, out: &Output) {
    let cut = proxy
        .faults
        .cut
        .lock()
        .unwrap()
        .clone()
        .expect("a body was cut");
    let gets: Vec<SeenGet> = proxy
        .faults
        .gets
        .lock()
        .unwrap()
        .iter()
        .filter(|g| g.path.ends_with(key))
        .cloned()
        .collect();
    assert_eq!(gets.len(), 2, "{key}: {gets:?}");
    assert_eq!((&gets[0].range, &gets[0].if_match), (&None, &None));
    let from: u64 = gets[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or_else(|| panic!("{gets:?}"));
    assert!(
        0 < from && from <= cut.at,
        "resumed at {from}, cut at {}",
        cut.at
    );
    assert!(
        stderr(out).contains(&format!("resuming at byte {from})")),
        "{}",
        stderr(out)
    );
    assert!(cut.etag.is_some());
    assert_eq!(gets[1].if_match, cut.etag, "{gets:?}");
}

/// Every file, directory and link under `root`, with contents and targets.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
            let what = if kind.is_symlink() {
                format!("link to {}", std::fs::read_link(&path).unwrap().display())
            } else if kind.is_dir() {
                dirs.push(path.clone());
                "dir".to_string()
            } else {
                format!("{:?}", std::fs::read(&path).unwrap())
            };
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), what);
        }
    }
    out
}

#[test]
fn downloads_cut_midway_resume_from_the_cut_at_the_same_version() {
    let proxy = FaultProxy::start();
    let env = S3Backend::via(proxy.port).fresh_prefix();
    let (_, layout) = env.open();

    // wal-fetch
    let dir = tempfile::tempdir().unwrap();
    let name = "000000010000000000000005";
    let data = fake_segment(16 * 1024 * 1024, 5);
    let seg = dir.path().join(name);
    std::fs::write(&seg, &data).unwrap();
    let out = env.run(&["wal-push", seg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "wal-push: {}", stderr(&out));
    let key = layout.wal_key(name);
    *proxy.faults.cut_body_of.lock().unwrap() = Some(key.clone());
    let dest = dir.path().join("fetched");
    let out = env.run(&["wal-fetch", "--prefetch", "0", name, dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "wal-fetch: {}", stderr(&out));
    assert!(std::fs::read(&dest).unwrap() == data, "the segment's bytes");
    assert_resumed_at_the_cut(&proxy, &key, &out);

    // backup-fetch
    let tmp = tempfile::tempdir().unwrap();
    make_traversable(tmp.path());
    let pg = Cluster::init(tmp.path(), "primary");
    pg.append_conf(&format!(
        "archive_mode = on\narchive_command = '{} wal-push %p'\n",
        env.launcher(tmp.path()).display()
    ));
    pg.start();
    let out = env
        .command(&["backup-push", pg.data_dir.to_str().unwrap()])
        .envs(pg.env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "backup-push: {}", stderr(&out));
    pg.stop();
    let partition = "/tar_partitions/part_00000000.tar.lzo";
    *proxy.faults.cut_body_of.lock().unwrap() = Some(partition.into());
    let resumed = tmp.path().join("resumed");
    let out = env.run(&["backup-fetch", resumed.to_str().unwrap(), "LATEST"]);
    assert_eq!(out.status.code(), Some(0), "backup-fetch: {}", stderr(&out));
    assert_resumed_at_the_cut(&proxy, partition, &out);
    // The same restore, uncut, straight from the server.
    let direct = env.with(
        "WALE_S3_ENDPOINT",
        &format!("http+path://127.0.0.1:{}", S3Server::shared().port),
    );
    let whole = tmp.path().join("whole");
    let out = direct.run(&["backup-fetch", whole.to_str().unwrap(), "LATEST"]);
    assert_eq!(out.status.code(), Some(0), "backup-fetch: {}", stderr(&out));
    let (resumed, whole) = (tree(&resumed), tree(&whole));
    assert!(resumed.contains_key(Path::new("global/pg_control")));
    assert!(resumed == whole, "the resumed restore is the uncut one");
}

/// Runs wal-push of a fresh segment holding `data`, killing it (and
/// failing) if it runs past `bound`; returns its output and duration.
fn wal_push_within(env: &BackendEnv, data: &[u8], bound: Duration) -> (Output, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("000000010000000000000011");
    std::fs::write(&seg, data).unwrap();
    let started = Instant::now();
    let mut child = env
        .command(&["wal-push", seg.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > bound {
            child.kill().unwrap();
            panic!("wal-push still running after {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    (child.wait_with_output().unwrap(), took)
}

fn assert_timed_out(out: &Output, secs: u64) {
    let log = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("MSG: could not archive WAL within {secs} s")),
        "{log}"
    );
    assert!(
        log.contains("HINT: PostgreSQL runs archive_command again later"),
        "{log}"
    );
}

/// archive_command must return in bounded time: against a server that
/// accepts connections and never answers, wal-push gives up after
/// WALE_WAL_PUSH_TIMEOUT instead of waiting out read timeouts and retries
/// for hours while PostgreSQL's archiver waits.
#[test]
fn wal_push_gives_up_after_its_timeout_on_a_store_that_never_answers() {
    // Never accepted: the kernel completes the connections, nobody answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let env = S3Backend::new()
        .fresh_prefix()
        .with(
            "WALE_S3_ENDPOINT",
            &format!(
                "http+path://127.0.0.1:{}",
                silent.local_addr().unwrap().port()
            ),
        )
        .with("WALE_WAL_PUSH_TIMEOUT", "2");
    let (out, took) = wal_push_within(&env, &fake_segment(1 << 20, 11), GIVE_UP_WITHIN);
    assert_timed_out(&out, 2);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "took {took:?}"
    );
}

/// A wal-push cut off by its timeout midway through a multipart upload
/// aborts the upload before exiting, and leaves no object.
#[test]
fn a_timed_out_multipart_wal_push_aborts_its_upload() {
    let proxy = FaultProxy::start();
    proxy.faults.hang_part_uploads.store(true, Ordering::SeqCst);
    let env = S3Backend::via(proxy.port)
        .fresh_prefix()
        .with("WALE_WAL_PUSH_TIMEOUT", "3");
    // Incompressible, so larger than one 8 MiB part.
    let (out, _) = wal_push_within(&env, &random_bytes(16 << 20, 12), GIVE_UP_WITHIN);
    assert_timed_out(&out, 3);
    assert_eq!(
        proxy.faults.multipart_aborts.load(Ordering::SeqCst),
        1,
        "{}",
        stderr(&out)
    );
    assert!(
        scenarios::list_keys(&env).is_empty(),
        "{:?}",
        scenarios::list_keys(&env)
    );
}

fn fails_with(env: &BackendEnv, args: &[&str], needles: &[&str]) {
    let started = Instant::now();
    let out = env.with("WALE_RETRIES", "2").run(args);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
    assert!(text.contains("MSG: "), "{text}");
    for needle in needles {
        assert!(text.contains(needle), "{args:?}: no {needle:?} in {text}");
    }
    assert!(
        !text.contains(common::s3::SECRET_KEY),
        "the secret is never shown"
    );
    assert!(
        started.elapsed() < GIVE_UP_WITHIN,
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn bad_settings_fail_clearly_with_exit_1() {
    let env = S3Backend::new().fresh_prefix();
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("000000010000000000000003");
    std::fs::write(&seg, fake_segment(1024 * 1024, 3)).unwrap();
    let seg = seg.to_str().unwrap();

    let wrong_secret = env.with("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    fails_with(
        &wrong_secret,
        &["backup-list"],
        &["SignatureDoesNotMatch", "AWS_SECRET_ACCESS_KEY"],
    );
    fails_with(&wrong_secret, &["wal-push", seg], &["403"]);

    let unknown_key = env.with("AWS_ACCESS_KEY_ID", "AKIANOTAKNOWNKEY0000");
    fails_with(
        &unknown_key,
        &["backup-list"],
        &["403", "AWS_ACCESS_KEY_ID"],
    );

    let no_bucket = env.with("WALE_S3_PREFIX", "s3://no-such-bucket-anywhere/db1");
    fails_with(&no_bucket, &["backup-list"], &["NoSuchBucket"]);
    fails_with(&no_bucket, &["wal-push", seg], &["NoSuchBucket"]);

    for endpoint in [
        "127.0.0.1:9000",
        "http://127.0.0.1:9000",
        "http+path://h/x",
        "https+dns://h",
    ] {
        let bad = env.with("WALE_S3_ENDPOINT", endpoint);
        fails_with(
            &bad,
            &["backup-list"],
            &["malformed WALE_S3_ENDPOINT", endpoint],
        );
    }

    // The storage class is sent with every upload (s3s-fs knows two).
    fails_with(
        &env.with("WALE_S3_STORAGE_CLASS", "DEEP_FREEZE"),
        &["wal-push", seg],
        &["InvalidStorageClass", "WALE_S3_STORAGE_CLASS"],
    );
    let out = env
        .with("WALE_S3_STORAGE_CLASS", "reduced_redundancy")
        .run(&["wal-push", seg]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    fails_with(
        &env.with("WALE_S3_SSE", "maybe"),
        &["backup-list"],
        &["WALE_S3_SSE"],
    );
    fails_with(
        &env.without("AWS_SECRET_ACCESS_KEY"),
        &["backup-list"],
        &["AWS_SECRET_ACCESS_KEY is not set"],
    );

    // No WALE_S3_ENDPOINT and no AWS_REGION: the region is asked of "AWS"
    // (here the local server, as AWS_ENDPOINT_URL_S3 says), which does not
    // tell it.
    let aws = env.without("WALE_S3_ENDPOINT").with(
        "AWS_ENDPOINT_URL_S3",
        &format!("http://127.0.0.1:{}", S3Server::shared().port),
    );
    fails_with(
        &aws,
        &["backup-list"],
        &["could not find out the region", "AWS_REGION"],
    );
    // With AWS_REGION it works.
    let out = aws.with("AWS_REGION", "eu-west-1").run(&["backup-list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn the_bucket_region_is_discovered_when_aws_region_is_unset() {
    let proxy = FaultProxy::start();
    *proxy.faults.bucket_region.lock().unwrap() = Some("eu-central-1".into());
    let env = S3Backend::via(proxy.port)
        .fresh_prefix()
        .without("WALE_S3_ENDPOINT")
        .with(
            "AWS_ENDPOINT_URL_S3",
            &format!("http://127.0.0.1:{}", proxy.port),
        );
    push_and_fetch_succeed(&env);
    // The probe is signed for us-east-1, everything after for the bucket's region.
    let regions = proxy.faults.signing_regions.lock().unwrap().clone();
    assert_eq!(
        regions.into_iter().collect::<Vec<_>>(),
        ["eu-central-1", "us-east-1"]
    );
}

#[test]
fn sse_is_aes256_by_default_and_can_be_turned_off() {
    for (setting, want_sse) in [(None, true), (Some("none"), false)] {
        let proxy = FaultProxy::start();
        let mut env = S3Backend::via(proxy.port).fresh_prefix();
        if let Some(value) = setting {
            env = env.with("WALE_S3_SSE", value);
        }
        push_and_fetch_succeed(&env);
        let sse = proxy.faults.sse_requests.load(Ordering::SeqCst);
        assert_eq!(sse > 0, want_sse, "{setting:?}: {sse} requests with SSE");
    }
}

/// A prefetch worker is a guess ahead of recovery: against a failing store
/// it gives up after a few attempts instead of lingering for WALE_RETRIES
/// (100 by default, an hour or more) after recovery has moved on.
#[test]
fn a_prefetch_worker_gives_up_soon_on_a_failing_store() {
    let proxy = FaultProxy::start();
    proxy.faults.fail_every.store(1, Ordering::SeqCst);
    let env = S3Backend::via(proxy.port).fresh_prefix();
    let dir = tempfile::tempdir().unwrap();
    let pg_wal = dir.path().join("pg_wal");
    std::fs::create_dir(&pg_wal).unwrap();
    let mut child = env
        .command(&[
            "wal-prefetch",
            pg_wal.to_str().unwrap(),
            "000000010000000000000009",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + GIVE_UP_WITHIN;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("wal-prefetch still retrying after {GIVE_UP_WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let requests = proxy.faults.requests.load(Ordering::SeqCst);
    assert!(requests <= 3 * 3, "{requests} requests");
    assert!(
        !pg_wal
            .join(".wal-e/prefetch/000000010000000000000009")
            .exists(),
        "nothing prefetched"
    );
}

/// Credentials that may write but not read (a hardened archiving host): a
/// re-push after a crash between the upload and PostgreSQL's bookkeeping
/// cannot be compared. It fails at once, naming the permission, instead of
/// retrying and leaving the operator to guess. Fails on main, whose message
/// named no permission.
#[test]
fn a_re_push_with_write_only_credentials_names_the_missing_permission() {
    let proxy = FaultProxy::start();
    let env = S3Backend::via(proxy.port).fresh_prefix();
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("000000010000000000000011");
    std::fs::write(&seg, fake_segment(1 << 20, 11)).unwrap();
    let out = env.run(&["wal-push", seg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    proxy.faults.object_head_status.store(403, Ordering::SeqCst);
    proxy.faults.object_get_status.store(403, Ordering::SeqCst);
    let before = proxy.faults.requests.load(Ordering::SeqCst);
    let out = env.run(&["wal-push", seg.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("could not be compared"), "{err}");
    assert!(err.contains("s3:GetObject"), "{err}");
    assert!(!err.contains("same content"), "{err}");
    // HEAD, the conditional PUT (412) and the lookup for the digest: no retries.
    let requests = proxy.faults.requests.load(Ordering::SeqCst) - before;
    assert!(requests <= 4, "{requests} requests");
}
