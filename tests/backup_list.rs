//! `backup-list` through the real binary on a file:// store: exact bytes of
//! WAL-E's table (with and without `--detail`) and of `--json`, queries,
//! and what a bad query or an unreadable sentinel does.

mod common;

use common::cli::{FileStoreEnv, stderr};
use common::store_fixture::{self as fx, B1, B2, B3};

const HEADER: &str = "name\tlast_modified\texpanded_size_bytes\twal_segment_backup_start\twal_segment_offset_backup_start\twal_segment_backup_stop\twal_segment_offset_backup_stop\r\n";

fn catalog_store() -> FileStoreEnv {
    let env = FileStoreEnv::new();
    fx::populate(&env.root());
    env
}

fn list(env: &FileStoreEnv, args: &[&str]) -> (i32, String, String) {
    let mut argv = vec!["backup-list"];
    argv.extend_from_slice(args);
    let out = env.run(&argv);
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout.clone()).unwrap(),
        stderr(&out),
    )
}

fn row(cols: [&str; 7]) -> String {
    format!("{}\r\n", cols.join("\t"))
}

fn plain_rows() -> [String; 3] {
    [
        row([
            B1,
            fx::B1_TIME,
            "",
            "000000010000000000000002",
            "00000040",
            "",
            "",
        ]),
        row([
            B2,
            fx::B2_TIME,
            "",
            "000000010000000000000005",
            "00000096",
            "",
            "",
        ]),
        row([
            B3,
            fx::B3_TIME,
            "",
            "000000020000000000000009",
            "00000040",
            "",
            "",
        ]),
    ]
}

fn detail_rows() -> [String; 3] {
    [
        row([
            B1,
            fx::B1_TIME,
            "1000123",
            "000000010000000000000002",
            "00000040",
            "000000010000000000000003",
            "00000312",
        ]),
        row([
            B2,
            fx::B2_TIME,
            "2000456",
            "000000010000000000000005",
            "00000096",
            "000000010000000000000006",
            "00000128",
        ]),
        row([
            B3,
            fx::B3_TIME,
            "3000789",
            "000000020000000000000009",
            "00000040",
            "00000002000000000000000A",
            "00000064",
        ]),
    ]
}

#[test]
fn lists_complete_backups_in_wal_e_format() {
    let env = catalog_store();
    let (code, stdout, err) = list(&env, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout, format!("{HEADER}{}", plain_rows().concat()));
    assert!(err.contains("MSG: starting WAL-E"), "{err}");
}

#[test]
fn detail_reads_every_sentinel_on_file_stores_too() {
    let env = catalog_store();
    let (code, stdout, err) = list(&env, &["--detail"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout, format!("{HEADER}{}", detail_rows().concat()));
}

#[test]
fn json_lines_have_every_field_with_rfc3339_times() {
    let env = catalog_store();
    let (code, stdout, err) = list(&env, &["--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        stdout,
        concat!(
            r#"{"name":"base_000000010000000000000002_00000040","last_modified":"2026-11-20T01:00:00.000000Z","expanded_size_bytes":null,"wal_segment_backup_start":"000000010000000000000002","wal_segment_offset_backup_start":"00000040","wal_segment_backup_stop":null,"wal_segment_offset_backup_stop":null}"#,
            "\n",
            r#"{"name":"base_000000010000000000000005_00000096","last_modified":"2026-11-23T19:48:32.734649Z","expanded_size_bytes":null,"wal_segment_backup_start":"000000010000000000000005","wal_segment_offset_backup_start":"00000096","wal_segment_backup_stop":null,"wal_segment_offset_backup_stop":null}"#,
            "\n",
            r#"{"name":"base_000000020000000000000009_00000040","last_modified":"2026-11-22T12:00:00.500000Z","expanded_size_bytes":null,"wal_segment_backup_start":"000000020000000000000009","wal_segment_offset_backup_start":"00000040","wal_segment_backup_stop":null,"wal_segment_offset_backup_stop":null}"#,
            "\n",
        )
    );

    let (code, stdout, err) = list(&env, &["--json", "--detail"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        stdout,
        concat!(
            r#"{"name":"base_000000010000000000000002_00000040","last_modified":"2026-11-20T01:00:00.000000Z","expanded_size_bytes":1000123,"wal_segment_backup_start":"000000010000000000000002","wal_segment_offset_backup_start":"00000040","wal_segment_backup_stop":"000000010000000000000003","wal_segment_offset_backup_stop":"00000312"}"#,
            "\n",
            r#"{"name":"base_000000010000000000000005_00000096","last_modified":"2026-11-23T19:48:32.734649Z","expanded_size_bytes":2000456,"wal_segment_backup_start":"000000010000000000000005","wal_segment_offset_backup_start":"00000096","wal_segment_backup_stop":"000000010000000000000006","wal_segment_offset_backup_stop":"00000128"}"#,
            "\n",
            r#"{"name":"base_000000020000000000000009_00000040","last_modified":"2026-11-22T12:00:00.500000Z","expanded_size_bytes":3000789,"wal_segment_backup_start":"000000020000000000000009","wal_segment_offset_backup_start":"00000040","wal_segment_backup_stop":"00000002000000000000000A","wal_segment_offset_backup_stop":"00000064"}"#,
            "\n",
        )
    );
}

#[test]
fn queries_pick_latest_by_sentinel_time_or_an_exact_name() {
    let env = catalog_store();
    let [_, b2_detail, b3_detail] = detail_rows();
    let [_, b2, _] = plain_rows();
    // B2's sentinel is the newest, although B3 starts later in the WAL.
    let cases: [(&[&str], String); 5] = [
        (&["LATEST"], b2.clone()),
        (&["LATEST", "--detail"], b2_detail),
        (&[B3, "--detail"], b3_detail),
        (&["base_000000020000000000000009_00000041"], String::new()),
        (&["base_000000020000000000000009_00000040_x"], String::new()),
    ];
    for (args, rows) in cases {
        let (code, stdout, err) = list(&env, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_eq!(stdout, format!("{HEADER}{rows}"), "{args:?}");
    }
    let (code, stdout, err) = list(&env, &["LATEST", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim_end()).unwrap();
    assert_eq!(v["name"], B2);
    assert_eq!(stdout.lines().count(), 1);
}

#[test]
fn a_bad_query_fails_after_the_header_like_wal_e() {
    let env = catalog_store();
    let before = fx::files_under(env.dir.path());
    for query in ["latest", "garbage", "000000010000000000000002"] {
        let (code, stdout, err) = list(&env, &[query]);
        assert_eq!(code, 1, "{query}: {err}");
        assert_eq!(stdout, HEADER, "{query}");
        assert!(
            err.contains("ERROR    MSG: invalid backup query submitted"),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "DETAIL: The submitted query operator was \"{query}.\""
            )),
            "{err}"
        );
        let (code, stdout, _) = list(&env, &[query, "--json"]);
        assert_eq!(code, 1);
        assert_eq!(stdout, "", "--json prints no header");
    }
    assert_eq!(fx::files_under(env.dir.path()), before);
}

#[test]
fn an_empty_store_lists_only_the_header() {
    let env = FileStoreEnv::new();
    let (code, stdout, err) = list(&env, &["--detail"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout, HEADER);
    let (code, stdout, _) = list(&env, &["LATEST", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(stdout, "");
}

#[test]
fn a_missing_store_directory_is_an_error_not_an_empty_list() {
    // An unmounted share must not look like an archive without backups.
    let env = FileStoreEnv::without_store_dir();
    let (code, stdout, err) = list(&env, &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(stdout, "");
    assert!(
        err.contains("MSG: the storage directory is not available"),
        "{err}"
    );
    assert!(
        !env.root().exists(),
        "listing must not create the store directory"
    );
}

#[test]
fn an_unparsable_sentinel_leaves_its_detail_columns_empty_with_a_warning() {
    let env = FileStoreEnv::new();
    let key = fx::sentinel_key(B1);
    fx::write(&env.root(), &key, b"{not json");
    fx::set_mtime(&env.root().join(&key), fx::B1_TIME);
    let (code, stdout, err) = list(&env, &["--detail"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        stdout,
        format!("{HEADER}{}", plain_rows()[0]),
        "the backup is listed, its detail unknown"
    );
    assert!(
        err.contains("WARNING  MSG: could not parse a base backup sentinel"),
        "{err}"
    );
}
