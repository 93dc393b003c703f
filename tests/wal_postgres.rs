//! wal-push as PostgreSQL 15's archive_command and wal-fetch as its
//! restore_command, against a real cluster and a file:// store.

mod common;

use std::time::Duration;

use common::cli::{PgScratch, lzop_decompress};
use common::pg::Cluster;
use wal_e::layout::SegmentName;

const TIMEOUT: Duration = Duration::from_secs(120);

/// A scratch directory with a store and a `side/` directory for plain copies.
struct Setup(PgScratch);

impl std::ops::Deref for Setup {
    type Target = PgScratch;
    fn deref(&self) -> &PgScratch {
        &self.0
    }
}

impl Setup {
    fn new() -> Self {
        Setup(PgScratch::new(&["side"]))
    }

    fn archiving_cluster(&self, name: &str, side_copy: bool) -> Cluster {
        let cluster = Cluster::init(self.path(), name);
        let side = if side_copy {
            format!("cp %p {}/%f && ", self.path().join("side").display())
        } else {
            String::new()
        };
        cluster.append_conf(&format!(
            "archive_mode = on\narchive_command = '{side}{} wal-push %p'\nwal_keep_size = '4GB'\n",
            self.wal_e_env()
        ));
        cluster.start();
        cluster
    }
}

#[test]
fn every_archived_segment_decompresses_to_what_postgres_wrote() {
    let setup = Setup::new();
    let pg = setup.archiving_cluster("primary", true);
    pg.pgbench_init(2);
    pg.psql("CREATE TABLE filler (id serial PRIMARY KEY, pad text)");
    let mut last = String::new();
    for i in 0..20 {
        pg.psql(&format!("INSERT INTO filler (pad) SELECT repeat('x', 100) || g || '-{i}' FROM generate_series(1, 2000) g"));
        last = pg.switch_wal();
    }
    pg.wait_for_archived(&last, TIMEOUT);

    // wal_keep_size keeps every segment in pg_wal, so the objects of pooled
    // uploads (which PostgreSQL never hands to archive_command) are checked too.
    let objects: Vec<String> = std::fs::read_dir(setup.store().join("wal_005"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let segments = objects
        .iter()
        .filter(|n| SegmentName::parse(n.trim_end_matches(".lzo")).is_some())
        .count();
    assert!(segments >= 20, "only {segments} segments archived");
    for object in &objects {
        let name = object
            .strip_suffix(".lzo")
            .expect("every object ends in .lzo");
        let original = pg.data_dir.join("pg_wal").join(name);
        let stored = lzop_decompress(&setup.store().join("wal_005").join(object));
        assert!(
            stored == std::fs::read(&original).unwrap(),
            "{name}: archived bytes differ from PostgreSQL's"
        );
    }
    // The side copies made by the command itself agree as well.
    for entry in std::fs::read_dir(setup.path().join("side")).unwrap() {
        let original = entry.unwrap().path();
        let name = original.file_name().unwrap().to_str().unwrap().to_string();
        let stored = lzop_decompress(&setup.store().join("wal_005").join(format!("{name}.lzo")));
        assert!(stored == std::fs::read(&original).unwrap(), "{name}");
    }
    // Nothing failed along the way.
    let (_, failed, _) = pg.archiver_stats().unwrap();
    assert_eq!(failed, "0", "{}", pg.log_tail());
}

#[test]
fn recovery_through_wal_fetch_reaches_the_end_of_the_archive() {
    let setup = Setup::new();
    let primary = setup.archiving_cluster("primary", false);
    primary.pgbench_init(1);
    primary.psql("CREATE TABLE marker (id int PRIMARY KEY, note text)");
    primary
        .psql("INSERT INTO marker SELECT g, 'before backup ' || g FROM generate_series(1, 1000) g");

    let restored_dir = setup.path().join("restored");
    primary.base_backup_to(&restored_dir);

    for i in 0..5 {
        primary.psql(&format!(
            "INSERT INTO marker SELECT g, 'after backup ' || g FROM generate_series({0} * 1000 + 1001, {0} * 1000 + 2000) g",
            i
        ));
        primary.pgbench(2, 50);
        primary.switch_wal();
    }
    primary.psql("INSERT INTO marker VALUES (999999, 'last row')");
    let last = primary.switch_wal();
    primary.wait_for_archived(&last, TIMEOUT);
    let expected = primary.psql("SELECT id, note FROM marker ORDER BY id");
    let expected_accounts = primary.psql("SELECT sum(abalance), count(*) FROM pgbench_accounts");
    primary.stop();

    let restored = Cluster::existing(restored_dir);
    restored.append_conf(&format!(
        "archive_mode = off\nrestore_command = '{} wal-fetch \"%f\" \"%p\"'\n",
        setup.wal_e_env()
    ));
    restored.touch("recovery.signal");
    restored.start();
    restored.wait_for_recovery_end(TIMEOUT);

    assert_eq!(
        restored.psql("SELECT id, note FROM marker ORDER BY id"),
        expected,
        "every row, in order"
    );
    assert_eq!(
        restored.psql("SELECT sum(abalance), count(*) FROM pgbench_accounts"),
        expected_accounts
    );
    let log = restored.log_tail();
    assert!(
        log.contains("archive recovery complete") || log.contains("selected new timeline ID"),
        "{log}"
    );
    // wal-fetch never left temporary files where PostgreSQL looks.
    let pg_wal = restored.data_dir.join("pg_wal");
    for entry in std::fs::read_dir(&pg_wal).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            name == "archive_status"
                || name == ".wal-e"
                || name.len() >= 24
                || name.ends_with(".history"),
            "unexpected file {name} in pg_wal"
        );
    }
}

/// A real 16 MiB segment through our stages and the real programs, both ways,
/// with and without encryption.
#[test]
fn a_real_wal_segment_crosses_with_lzop_and_gpg() {
    use bytes::Bytes;
    use futures_util::StreamExt;
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use wal_e::pipeline::{self, DecryptionKeys, EncryptionKeys};

    let setup = Setup::new();
    let pg = Cluster::init(setup.path(), "source");
    pg.append_conf("wal_keep_size = '1GB'\n");
    pg.start();
    pg.pgbench_init(3);
    let name = pg.switch_wal();
    let segment = std::fs::read(pg.data_dir.join("pg_wal").join(&name)).unwrap();
    assert_eq!(segment.len(), 16 << 20);

    let (home, key) = common::gpg::rsa_key_home();
    let enc =
        Arc::new(EncryptionKeys::from_bytes(&home.gpg(&["--export", &key], None).stdout).unwrap());
    let dec = Arc::new(
        DecryptionKeys::from_bytes(&home.gpg(&["--export-secret-keys", &key], None).stdout)
            .unwrap(),
    );
    let pipe = |script: &str, input: &[u8]| -> Vec<u8> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("GNUPGHOME", home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let writer =
            std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success(), "{script}");
        out.stdout
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let run = |f: &dyn Fn(wal_e::ByteStream) -> wal_e::ByteStream, input: &[u8]| -> Vec<u8> {
        rt.block_on(async {
            let chunks: Vec<std::io::Result<Bytes>> = input
                .chunks(1 << 16)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let mut out = f(futures_util::stream::iter(chunks).boxed());
            let mut buf = Vec::new();
            while let Some(c) = out.next().await {
                buf.extend_from_slice(&c.unwrap());
            }
            buf
        })
    };

    let ours = run(&|s| pipeline::encode(s, 0, 0o600, None), &segment);
    assert!(pipe("lzop -dc", &ours) == segment, "ours → lzop -dc");
    let theirs = pipe("lzop -c", &segment);
    assert!(
        run(&|s| pipeline::decode(s, None), &theirs) == segment,
        "lzop -c → ours"
    );

    let ours = run(&|s| pipeline::encode(s, 0, 0o600, Some(&enc)), &segment);
    assert!(
        pipe("gpg --batch -d -q | lzop -dc", &ours) == segment,
        "ours → gpg -d | lzop -dc"
    );
    let theirs = pipe(
        &format!("lzop -c | gpg --batch -e -z 0 -r {key} --trust-model always"),
        &segment,
    );
    assert!(
        run(&|s| pipeline::decode(s, Some(&dec)), &theirs) == segment,
        "lzop -c | gpg -e → ours"
    );
}
