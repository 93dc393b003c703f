//! `delete` through the real binary on a file:// store: for every
//! subcommand, in dry-run and confirm mode, the exact set of keys left, the
//! keys logged, the kinds WAL-E logged for them, sentinels going first, and
//! that a second run finds nothing more to do; bad input deletes nothing.

mod common;

use std::collections::BTreeSet;

use common::cli::{FileStoreEnv, stderr};
use common::store_fixture::{self as fx, B1, B2, B3, IN_PROGRESS, ORPHAN};

const DRY_RUN_HINT: &str = "HINT: This is only a dry run -- no actual data is being deleted";

/// One log record of the binary: level, MSG, DETAIL, HINT.
#[derive(Debug, Default, Clone)]
struct Record {
    level: String,
    msg: String,
    detail: Option<String>,
    hint: Option<String>,
}

fn records(stderr: &str) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for line in stderr.lines() {
        if let Some(rest) = line.strip_prefix("        ") {
            let r = out.last_mut().expect("continuation after a record");
            if let Some(d) = rest.strip_prefix("DETAIL: ") {
                r.detail = Some(d.to_string());
            } else if let Some(h) = rest.strip_prefix("HINT: ") {
                r.hint = Some(h.to_string());
            }
        } else {
            let (head, msg) = line.split_once("MSG: ").expect("a log line");
            out.push(Record {
                level: head.split_whitespace().nth(1).unwrap_or("").to_string(),
                msg: msg.to_string(),
                ..Default::default()
            });
        }
    }
    out
}

/// (key relative to the store, kind) of every `deleting <kind>` record, in order.
fn deleting(env: &FileStoreEnv, recs: &[Record]) -> Vec<(String, String)> {
    let url_prefix = format!("{}/", env.prefix());
    recs.iter()
        .filter_map(|r| {
            let kind = r.msg.strip_prefix("deleting ")?;
            let url = r
                .detail
                .as_deref()?
                .strip_prefix("The key being deleted is ")?
                .strip_suffix('.')?;
            let key = url
                .strip_prefix(&url_prefix)
                .expect("a key under the prefix");
            Some((key.to_string(), kind.to_string()))
        })
        .collect()
}

/// The fixture's files as keys relative to the temp dir (the store is `store/`).
fn snapshot(env: &FileStoreEnv) -> BTreeSet<String> {
    fx::files_under(env.dir.path())
}

fn in_store(keys: &[String]) -> BTreeSet<String> {
    keys.iter().map(|k| format!("store/{k}")).collect()
}

/// The kind `before`/`retain` log for a key of the fixture.
fn before_kind(key: &str) -> &'static str {
    if key.ends_with(fx::SENTINEL_SUFFIX) {
        "a base backup sentinel file"
    } else if key.ends_with("extended_version.txt") {
        "a extended version metadata file"
    } else if key.contains("/tar_partitions/") {
        "a base backup volume"
    } else if key.ends_with(".backup.lzo") {
        "a backup history file"
    } else {
        "a wal file"
    }
}

fn everything_kind(key: &str) -> &'static str {
    if key.starts_with("basebackups_") {
        "part of a base backup"
    } else {
        "part of wal logs"
    }
}

fn keys_of_backup(name: &str) -> Vec<String> {
    fx::backup_keys(name, fx::partitions_of(name))
}

fn wal_tl1(segs: std::ops::RangeInclusive<u32>) -> Vec<String> {
    segs.map(|s| fx::wal(1, s)).collect()
}

struct Case {
    name: &'static str,
    args: &'static [&'static str],
    deleted: Vec<String>,
    kind: fn(&str) -> &'static str,
    /// Records (level, MSG) the run must log besides the per-key ones.
    logs: Vec<(&'static str, String)>,
    /// Whether keys that are not WAL-E's must each get a warning.
    warns_about_strays: bool,
}

fn cases() -> Vec<Case> {
    // Sentinel times: B1 < B3 < B2, while positions are B1 2 < B2 5 < B3 9.
    // Timeline 2 (B3's, the newest) left timeline 1 before B2 started, so
    // B2 cannot restore it: whatever keeps B2 alone keeps B3 too.
    let keeping_b3 = format!("keeping backup {B3} as well");

    // Older than position 5 (B2's start): B1, the orphaned upload, timeline
    // 1 WAL 1..4 and the backup history file of 2.
    let mut older_than_b2: Vec<String> = Vec::new();
    older_than_b2.extend(keys_of_backup(B1));
    older_than_b2.extend(fx::backup_data_keys(ORPHAN, 1));
    older_than_b2.extend(wal_tl1(1..=4));
    older_than_b2.push(fx::backup_history(1, 2, 0x28));

    // Older than position 4 (a segment name, not a backup).
    let mut older_than_seg4: Vec<String> = Vec::new();
    older_than_seg4.extend(keys_of_backup(B1));
    older_than_seg4.extend(fx::backup_data_keys(ORPHAN, 1));
    older_than_seg4.extend(wal_tl1(1..=3));
    older_than_seg4.push(fx::backup_history(1, 2, 0x28));

    // Older than position 2 (B1, the oldest complete backup).
    let mut older_than_b1: Vec<String> = fx::backup_data_keys(ORPHAN, 1);
    older_than_b1.extend(wal_tl1(1..=1));

    let mut everything: Vec<String> = Vec::new();
    for b in [B1, B2, B3] {
        everything.extend(keys_of_backup(b));
    }
    everything.extend(fx::backup_data_keys(ORPHAN, 1));
    everything.extend(fx::backup_data_keys(IN_PROGRESS, 1));
    everything.extend(fx::all_wal());
    everything.extend(fx::STRAYS.iter().map(|s| s.to_string()));

    vec![
        Case {
            name: "before B1",
            args: &["before", B1],
            deleted: older_than_b1.clone(),
            kind: before_kind,
            logs: vec![],
            warns_about_strays: true,
        },
        Case {
            name: "before B2",
            args: &["before", B2],
            deleted: older_than_b2.clone(),
            kind: before_kind,
            logs: vec![("WARNING", keeping_b3.clone())],
            warns_about_strays: true,
        },
        Case {
            name: "before B3",
            args: &["before", B3],
            deleted: older_than_b2.clone(),
            kind: before_kind,
            logs: vec![],
            warns_about_strays: true,
        },
        Case {
            name: "before a WAL segment",
            args: &["before", "000000010000000000000004"],
            deleted: older_than_seg4,
            kind: before_kind,
            logs: vec![],
            warns_about_strays: true,
        },
        Case {
            name: "retain 1",
            args: &["retain", "1"],
            deleted: older_than_b2.clone(),
            kind: before_kind,
            logs: vec![
                ("WARNING", keeping_b3),
                ("INFO", "Deleting 1 oldest base backups.".into()),
            ],
            warns_about_strays: true,
        },
        Case {
            name: "retain 2",
            args: &["retain", "2"],
            deleted: older_than_b2,
            kind: before_kind,
            logs: vec![("INFO", "Deleting 1 oldest base backups.".into())],
            warns_about_strays: true,
        },
        Case {
            name: "retain 5",
            args: &["retain", "5"],
            deleted: older_than_b1,
            kind: before_kind,
            logs: vec![("INFO", "Retaining all 3 base backups.".into())],
            warns_about_strays: true,
        },
        Case {
            name: "old-versions",
            args: &["old-versions"],
            deleted: fx::OLD_VERSION_KEYS.iter().map(|s| s.to_string()).collect(),
            kind: everything_kind,
            logs: vec![],
            warns_about_strays: false,
        },
        Case {
            name: "everything",
            args: &["everything"],
            deleted: everything,
            kind: everything_kind,
            logs: vec![],
            warns_about_strays: false,
        },
    ]
}

fn fresh_store() -> FileStoreEnv {
    let env = FileStoreEnv::new();
    fx::populate_with_in_progress(&env.root());
    std::fs::write(env.dir.path().join("outside.txt"), b"not under the prefix").unwrap();
    env
}

fn run_delete(env: &FileStoreEnv, flags: &[&str], args: &[&str]) -> (i32, String) {
    let mut argv = vec!["delete"];
    argv.extend_from_slice(flags);
    argv.extend_from_slice(args);
    let out = env.run(&argv);
    assert!(out.stdout.is_empty(), "delete prints nothing on stdout");
    (out.status.code().unwrap(), stderr(&out))
}

fn check_logs(env: &FileStoreEnv, case: &Case, err: &str, dry_run: bool) {
    let recs = records(err);
    let logged = deleting(env, &recs);
    let logged_keys: Vec<String> = logged.iter().map(|(k, _)| k.clone()).collect();
    let logged_set: BTreeSet<&String> = logged_keys.iter().collect();
    let want_set: BTreeSet<&String> = case.deleted.iter().collect();
    assert_eq!(
        logged_set, want_set,
        "{}: keys logged as deleted",
        case.name
    );
    assert_eq!(
        logged_keys.len(),
        case.deleted.len(),
        "{}: each key once",
        case.name
    );
    for (key, kind) in &logged {
        assert_eq!(kind, (case.kind)(key), "{}: kind of {key}", case.name);
    }
    // Sentinels go first, so an interruption never leaves a complete-looking
    // backup with missing parts.
    let first_other = logged
        .iter()
        .position(|(k, _)| !k.ends_with(fx::SENTINEL_SUFFIX))
        .unwrap_or(logged.len());
    assert!(
        logged[first_other..]
            .iter()
            .all(|(k, _)| !k.ends_with(fx::SENTINEL_SUFFIX)),
        "{}: sentinels first: {logged_keys:?}",
        case.name
    );
    let per_key: Vec<&Record> = recs
        .iter()
        .filter(|r| r.msg.starts_with("deleting ") && r.detail.is_some())
        .collect();
    for r in &per_key {
        assert_eq!(r.level, "INFO");
        let want_hint = dry_run.then(|| DRY_RUN_HINT.strip_prefix("HINT: ").unwrap());
        assert_eq!(r.hint.as_deref(), want_hint, "{}", case.name);
    }
    let start = if dry_run {
        "performing dry run of data deletion"
    } else {
        "deleting data in the store"
    };
    assert!(
        recs.iter().any(|r| r.level == "INFO" && r.msg == start),
        "{}: {err}",
        case.name
    );
    for (level, msg) in &case.logs {
        assert!(
            recs.iter().any(|r| r.level == *level && r.msg == *msg),
            "{}: expected {level} {msg:?} in\n{err}",
            case.name
        );
    }
    let warned: BTreeSet<String> = recs
        .iter()
        .filter(|r| {
            r.level == "WARNING" && r.msg == "skipping non-qualifying key in 'delete before'"
        })
        .map(|r| r.detail.clone().unwrap())
        .collect();
    if case.warns_about_strays {
        assert_eq!(warned.len(), fx::STRAYS.len(), "{}: {warned:?}", case.name);
        for stray in fx::STRAYS {
            let url = format!("\"{}/{stray}\"", env.prefix());
            assert!(
                warned.iter().any(|d| d.contains(&url)),
                "{}: no warning for {stray}",
                case.name
            );
        }
    } else {
        assert!(warned.is_empty(), "{}: {warned:?}", case.name);
    }
}

#[test]
fn dry_runs_log_every_key_and_delete_nothing() {
    for case in cases() {
        for flags in [
            &[][..],
            &["--dry-run"],
            &["-n"],
            &["--dry-run", "--confirm"],
        ] {
            let env = fresh_store();
            let before = snapshot(&env);
            let (code, err) = run_delete(&env, flags, case.args);
            assert_eq!(code, 0, "{} {flags:?}: {err}", case.name);
            assert_eq!(
                snapshot(&env),
                before,
                "{} {flags:?}: nothing deleted",
                case.name
            );
            check_logs(&env, &case, &err, true);
            assert_eq!(
                err.matches(DRY_RUN_HINT).count(),
                case.deleted.len(),
                "{}",
                case.name
            );
        }
    }
}

#[test]
fn confirmed_deletes_leave_exactly_the_expected_keys_and_rerun_cleanly() {
    for case in cases() {
        let env = fresh_store();
        let before = snapshot(&env);
        let deleted = in_store(&case.deleted);
        assert!(
            deleted.is_subset(&before),
            "{}: the case names keys the fixture has",
            case.name
        );
        let (code, err) = run_delete(&env, &["--confirm"], case.args);
        assert_eq!(code, 0, "{}: {err}", case.name);
        let want: BTreeSet<String> = before.difference(&deleted).cloned().collect();
        assert_eq!(snapshot(&env), want, "{}: keys left", case.name);
        check_logs(&env, &case, &err, false);
        assert!(!err.contains(DRY_RUN_HINT), "{}", case.name);
        assert_eq!(
            fx::empty_dirs_under(&env.root()),
            Vec::<String>::new(),
            "{}: emptied directories are removed",
            case.name
        );

        // Idempotent: a second run (e.g. after an interruption) finds nothing.
        let (code, err) = run_delete(&env, &["--confirm"], case.args);
        assert_eq!(code, 0, "{} again: {err}", case.name);
        assert!(
            deleting(&env, &records(&err)).is_empty(),
            "{} again: {err}",
            case.name
        );
        assert_eq!(snapshot(&env), want, "{} again", case.name);
    }
}

#[test]
fn the_backups_retain_keeps_stay_listed_with_their_wal() {
    let env = fresh_store();
    let (code, err) = run_delete(&env, &["--confirm"], &["retain", "2"]);
    assert_eq!(code, 0, "{err}");
    let out = env.run(&["backup-list"]);
    let listed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    assert_eq!(listed, [B2, B3]);
    let left = snapshot(&env);
    for key in keys_of_backup(B2)
        .into_iter()
        .chain(keys_of_backup(B3))
        .chain(fx::backup_data_keys(IN_PROGRESS, 1))
        .chain(wal_tl1(5..=9))
        .chain((9..=0xB).map(|s| fx::wal(2, s)))
        .chain([fx::TIMELINE_HISTORY.to_string()])
    {
        assert!(left.contains(&format!("store/{key}")), "{key} must be kept");
    }
}

#[test]
fn an_interrupted_retain_is_finished_by_running_it_again() {
    // What a run killed after its first batch (the sentinels) leaves: B1's
    // sentinel gone, its data still there. B1 is no longer a complete backup
    // and the horizon stays at B2, so the rerun removes the rest of B1.
    let env = fresh_store();
    std::fs::remove_file(env.root().join(fx::sentinel_key(B1))).unwrap();
    let (code, err) = run_delete(&env, &["--confirm"], &["retain", "2"]);
    assert_eq!(code, 0, "{err}");
    let left = snapshot(&env);
    for key in fx::backup_data_keys(B1, fx::partitions_of(B1)) {
        assert!(
            !left.contains(&format!("store/{key}")),
            "{key} must be gone"
        );
    }
    for key in keys_of_backup(B2) {
        assert!(left.contains(&format!("store/{key}")), "{key} must be kept");
    }
}

#[test]
fn retain_without_complete_backups_deletes_nothing() {
    let env = FileStoreEnv::new();
    for key in fx::backup_data_keys(IN_PROGRESS, 1)
        .into_iter()
        .chain(fx::backup_data_keys(ORPHAN, 1))
        .chain(fx::all_wal())
    {
        fx::write(&env.root(), &key, b"x");
    }
    let before = snapshot(&env);
    let (code, err) = run_delete(&env, &["--confirm"], &["retain", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(snapshot(&env), before);
    let recs = records(&err);
    assert!(
        recs.iter().any(|r| r.level == "WARNING"
            && r.msg == "Not deleting any data."
            && r.detail.as_deref() == Some("No existing base backups.")),
        "{err}"
    );
}

#[test]
fn before_warns_when_it_would_leave_no_backup_and_refuses_a_missing_backup() {
    let env = fresh_store();
    let (code, err) = run_delete(&env, &[], &["before", "0000000100000000000000FF"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("WARNING  MSG: delete before removes every complete base backup"),
        "{err}"
    );
    // "before" compares sentinel times: a backup that does not exist has
    // none. Fails on main, which deleted by the name's position anyway.
    let before = snapshot(&env);
    let (code, err) = run_delete(
        &env,
        &["--confirm"],
        &["before", "base_000000010000000000000004_00000000"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("ERROR    MSG: the backup named for delete before is not in the store"),
        "{err}"
    );
    assert!(err.contains("HINT: "), "{err}");
    assert_eq!(snapshot(&env), before, "nothing deleted");
}

/// An unfinished upload written to recently may belong to a backup-push
/// still running (a slow nightly, a second schedule): it is left alone for
/// the grace period, and deleted once older. Fails on main, which deleted
/// it by position at once.
#[test]
fn unfinished_backups_are_spared_for_a_grace_period() {
    let env = fresh_store();
    let keys = fx::backup_data_keys(ORPHAN, 1);
    for key in &keys {
        std::fs::File::options()
            .write(true)
            .open(env.root().join(key))
            .unwrap()
            .set_modified(std::time::SystemTime::now())
            .unwrap();
    }
    let (code, err) = run_delete(&env, &["--confirm"], &["retain", "2"]);
    assert_eq!(code, 0, "{err}");
    let recs = records(&err);
    assert!(
        recs.iter()
            .any(|r| r.msg == "leaving an unfinished backup alone"
                && r.detail.as_deref().is_some_and(|d| d.contains(ORPHAN))),
        "{err}"
    );
    let left = snapshot(&env);
    for key in &keys {
        assert!(left.contains(&format!("store/{key}")), "{key} spared");
    }
    assert!(!left.contains(&format!("store/{}", fx::sentinel_key(B1))));

    let (code, err) = run_delete(
        &env,
        &["--confirm", "--unfinished-grace-hours", "0"],
        &["retain", "2"],
    );
    assert_eq!(code, 0, "{err}");
    let left = snapshot(&env);
    for key in &keys {
        assert!(!left.contains(&format!("store/{key}")), "{key} deleted");
    }
}

/// The newest timeline cannot be placed without its history file: delete
/// refuses instead of guessing which backups can restore it.
#[test]
fn a_timeline_without_history_makes_retention_refuse() {
    let env = fresh_store();
    std::fs::remove_file(env.root().join(fx::TIMELINE_HISTORY)).unwrap();
    let before = snapshot(&env);
    let (code, err) = run_delete(&env, &["--confirm"], &["retain", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("MSG: cannot tell which base backups can restore timeline 2"),
        "{err}"
    );
    assert!(err.contains("00000002.history"), "{err}");
    assert_eq!(snapshot(&env), before, "nothing deleted");
}

#[test]
fn bad_input_is_an_error_and_deletes_nothing() {
    let cases: [(&[&str], &str); 7] = [
        (
            &["retain", "0"],
            "MSG: invalid number of base backups to retain",
        ),
        (
            &["retain", "-1"],
            "MSG: invalid number of base backups to retain",
        ),
        (
            &["retain", "abc"],
            "MSG: invalid number of base backups to retain",
        ),
        (
            &["before", "garbage"],
            "MSG: invalid name for delete before",
        ),
        (
            &["before", "00000001000000000000000a"],
            "MSG: invalid name for delete before",
        ),
        (
            &["frobnicate"],
            "MSG: unknown delete subcommand \"frobnicate\"",
        ),
        (
            &["all", "--confirm"],
            "MSG: unknown delete subcommand \"all\"",
        ),
    ];
    for (args, msg) in cases {
        let env = fresh_store();
        let before = snapshot(&env);
        let (code, err) = run_delete(&env, &["--confirm"], args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(&format!("ERROR    {msg}")), "{args:?}: {err}");
        assert!(err.contains("HINT: "), "{args:?}: {err}");
        assert!(
            !err.contains("deleting data in the store"),
            "{args:?}: rejected before starting"
        );
        assert_eq!(snapshot(&env), before, "{args:?}: nothing deleted");
    }
}
