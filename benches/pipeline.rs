//! `just bench`: throughput of the lzop stages and of wal-push, each beside a
//! baseline measured in the same run on the same data and disk (the real
//! `lzop`, and `cp`). Machines here are shared and noisy, so results are
//! medians of several runs and are read as ratios.
//!
//! The input is a real 16 MiB WAL segment from a scratch PostgreSQL cluster
//! (pgbench), or the file named by WAL_E_BENCH_SEGMENT; base backups use
//! pgbench clusters of scale 10 and WAL_E_BENCH_SCALE (default 70, ~1.1 GB).

#[path = "../tests/common/pg.rs"]
mod pg;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream;
use wal_e::pipeline::lzop;

const RUNS: usize = 7;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time_runs(mut f: impl FnMut()) -> Duration {
    f(); // warm caches
    median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn real_wal_segment(dir: &Path) -> Vec<u8> {
    if let Some(path) = std::env::var_os("WAL_E_BENCH_SEGMENT") {
        return std::fs::read(path).expect("read WAL_E_BENCH_SEGMENT");
    }
    pg::make_traversable(dir);
    let cluster = pg::Cluster::init(dir, "bench");
    cluster.append_conf("wal_keep_size = '1GB'\n");
    cluster.start();
    cluster.pgbench_init(10);
    cluster.pgbench(2, 2000);
    let segment = cluster.switch_wal();
    let data = std::fs::read(cluster.data_dir.join("pg_wal").join(&segment)).expect("segment");
    cluster.stop();
    data
}

fn run_stream(input: Vec<Bytes>, f: impl FnOnce(wal_e::ByteStream) -> wal_e::ByteStream) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut out = f(stream::iter(input.into_iter().map(Ok)).boxed());
        let mut n = 0;
        while let Some(c) = out.next().await {
            n += c.unwrap().len();
        }
        n
    })
}

fn chunks(data: &[u8]) -> Vec<Bytes> {
    data.chunks(lzop::BLOCK_SIZE)
        .map(Bytes::copy_from_slice)
        .collect()
}

fn lzop_cmd(args: &[&str], input: &Path) -> Duration {
    let t = Instant::now();
    let status = Command::new("lzop")
        .args(args)
        .stdin(std::fs::File::open(input).unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    t.elapsed()
}

fn wal_e(store: &Path, args: &[&str]) {
    // The prefix directory must exist: wal-e creates directories below it only.
    std::fs::create_dir_all(store).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wal-e"))
        .args(args)
        .env(
            "WALE_FILE_PREFIX",
            format!("file://localhost{}", store.display()),
        )
        .env("WALE_LOG_DESTINATION", "stderr")
        .arg("--terse")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn row(what: &str, ours: String, base_name: &str, base: String, ratio: f64) {
    println!("{what:<34} {ours:>14}   {base_name:<12} {base:>14}   ratio {ratio:>5.2}");
}

fn main() {
    let scratch = tempfile::tempdir().unwrap();
    let segment = real_wal_segment(scratch.path());
    let seg_path = scratch.path().join("segment");
    std::fs::write(&seg_path, &segment).unwrap();
    let compressed: Vec<u8> = {
        let out = Command::new("lzop")
            .arg("-c")
            .arg(&seg_path)
            .output()
            .unwrap();
        out.stdout
    };
    let lzo_path = scratch.path().join("segment.lzo");
    std::fs::write(&lzo_path, &compressed).unwrap();
    println!(
        "input: {} bytes of WAL, lzop ratio {:.3}; medians of {RUNS} runs; ratio = ours / baseline throughput",
        segment.len(),
        compressed.len() as f64 / segment.len() as f64
    );

    let blocks = chunks(&segment);
    let ours = time_runs(|| {
        run_stream(blocks.clone(), |s| lzop::compress_stream(s, 0, 0));
    });
    let theirs = time_runs(|| {
        lzop_cmd(&["-c"], &seg_path);
    });
    let (a, b) = (
        mb_per_s(segment.len(), ours),
        mb_per_s(segment.len(), theirs),
    );
    row(
        "compress (MB/s of WAL)",
        format!("{a:.0}"),
        "lzop -c",
        format!("{b:.0}"),
        a / b,
    );

    let cblocks = chunks(&compressed);
    let ours = time_runs(|| {
        run_stream(cblocks.clone(), lzop::decompress_stream);
    });
    let theirs = time_runs(|| {
        lzop_cmd(&["-dc"], &lzo_path);
    });
    let (a, b) = (
        mb_per_s(segment.len(), ours),
        mb_per_s(segment.len(), theirs),
    );
    row(
        "decompress (MB/s of WAL)",
        format!("{a:.0}"),
        "lzop -dc",
        format!("{b:.0}"),
        a / b,
    );

    // wal-push of one segment, whole process, vs cp to the same disk.
    let pg_wal = scratch.path().join("pg_wal");
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    let name = "000000010000000000000010";
    std::fs::write(pg_wal.join(name), &segment).unwrap();
    let mut n = 0;
    let push = time_runs(|| {
        n += 1;
        let store = scratch.path().join(format!("store-{n}"));
        wal_e(
            &store,
            &[
                "wal-push",
                "--pool-size",
                "1",
                pg_wal.join(name).to_str().unwrap(),
            ],
        );
    });
    let cp = time_runs(|| {
        n += 1;
        let status = Command::new("cp")
            .arg(pg_wal.join(name))
            .arg(scratch.path().join(format!("cp-{n}")))
            .status()
            .unwrap();
        assert!(status.success());
    });
    row(
        "wal-push latency, 1 segment (ms)",
        format!("{:.1}", push.as_secs_f64() * 1e3),
        "cp",
        format!("{:.1}", cp.as_secs_f64() * 1e3),
        cp.as_secs_f64() / push.as_secs_f64(),
    );

    // Pooled: 32 ready segments pushed by one wal-push.
    let names: Vec<String> = (0x20..0x40)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    for name in &names {
        std::fs::write(pg_wal.join(name), &segment).unwrap();
    }
    let pooled = time_runs(|| {
        for name in &names {
            std::fs::write(
                pg_wal.join("archive_status").join(format!("{name}.ready")),
                b"",
            )
            .unwrap();
        }
        n += 1;
        let store: PathBuf = scratch.path().join(format!("store-{n}"));
        wal_e(
            &store,
            &[
                "wal-push",
                "--pool-size",
                "32",
                pg_wal.join(&names[0]).to_str().unwrap(),
            ],
        );
        for name in &names[1..] {
            let _ =
                std::fs::remove_file(pg_wal.join("archive_status").join(format!("{name}.done")));
        }
    });
    let cp_all = time_runs(|| {
        n += 1;
        let dir = scratch.path().join(format!("cp-{n}"));
        std::fs::create_dir(&dir).unwrap();
        for name in &names {
            let status = Command::new("cp")
                .arg(pg_wal.join(name))
                .arg(dir.join(name))
                .status()
                .unwrap();
            assert!(status.success());
        }
    });
    let (a, b) = (
        names.len() as f64 / pooled.as_secs_f64(),
        names.len() as f64 / cp_all.as_secs_f64(),
    );
    row(
        "wal-push --pool-size 32 (segs/s)",
        format!("{a:.1}"),
        "cp, serial",
        format!("{b:.1}"),
        a / b,
    );

    // Base backups of a small and a large (>= 1 GB) cluster: throughput
    // beside tar and lzop, and peak RSS, which must not grow with the size.
    let large: u32 = std::env::var("WAL_E_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(70);
    for scale in [10, large] {
        bench_backup(scratch.path(), scale);
    }
}

/// Runs a command to completion and returns its wall time and peak RSS (KiB),
/// from wait4's rusage of that very process.
fn run_measured(cmd: &mut Command) -> (Duration, u64) {
    let started = Instant::now();
    let child = cmd.stdout(Stdio::null()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own unwaited child; status and usage are valid pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    std::mem::forget(child);
    (started.elapsed(), usage.ru_maxrss as u64)
}

fn dir_bytes(dir: &Path) -> u64 {
    let out = Command::new("du").args(["-sb"]).arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// backup-push and backup-fetch of a pgbench cluster, beside `tar | lzop` and
/// `lzop -d | tar -x` of the same directory in the same run.
fn bench_backup(scratch: &Path, scale: u32) {
    let dir = scratch.join(format!("backup-{scale}"));
    std::fs::create_dir_all(&dir).unwrap();
    pg::make_traversable(&dir);
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    pg::chown_to_postgres(&store);
    let cluster = pg::Cluster::init(&dir, "data");
    // backup-push needs the WAL archived to the same prefix.
    cluster.append_conf(&format!(
        "archive_mode = on\narchive_command = 'env WALE_FILE_PREFIX=file://localhost{} {} wal-push %p'\n",
        store.display(),
        env!("CARGO_BIN_EXE_wal-e")
    ));
    cluster.start();
    cluster.pgbench_init(scale);
    cluster.psql("CHECKPOINT");
    // Both sides leave pg_wal out, as a base backup does.
    let bytes = dir_bytes(&cluster.data_dir) - dir_bytes(&cluster.data_dir.join("pg_wal"));
    let mut push = Command::new(env!("CARGO_BIN_EXE_wal-e"));
    push.args(["--terse", "backup-push"])
        .arg(&cluster.data_dir)
        .env(
            "WALE_FILE_PREFIX",
            format!("file://localhost{}", store.display()),
        )
        .env("WALE_LOG_DESTINATION", "stderr")
        .envs(cluster.env());
    let (push_time, push_rss) = run_measured(&mut push);
    cluster.stop();
    let tarred = dir.join("baseline.tar.lzo");
    let (tar_time, _) = run_measured(Command::new("sh").arg("-c").arg(format!(
        "tar -cf - -C '{}' --exclude=./pg_wal/* . | lzop -c > '{}'",
        cluster.data_dir.display(),
        tarred.display()
    )));
    let restored = dir.join("restored");
    let mut fetch = Command::new(env!("CARGO_BIN_EXE_wal-e"));
    fetch
        .args(["--terse", "backup-fetch"])
        .arg(&restored)
        .arg("LATEST")
        .env(
            "WALE_FILE_PREFIX",
            format!("file://localhost{}", store.display()),
        )
        .env("WALE_LOG_DESTINATION", "stderr");
    let (fetch_time, fetch_rss) = run_measured(&mut fetch);
    let untarred = dir.join("untarred");
    std::fs::create_dir_all(&untarred).unwrap();
    let (untar_time, _) = run_measured(Command::new("sh").arg("-c").arg(format!(
        "lzop -dc '{}' | tar -xf - -C '{}'",
        tarred.display(),
        untarred.display()
    )));
    let mb = bytes as f64 / 1e6;
    let (a, b) = (mb / push_time.as_secs_f64(), mb / tar_time.as_secs_f64());
    row(
        &format!("backup-push {mb:.0} MB (MB/s)"),
        format!("{a:.0}"),
        "tar | lzop",
        format!("{b:.0}"),
        a / b,
    );
    let (a, b) = (mb / fetch_time.as_secs_f64(), mb / untar_time.as_secs_f64());
    row(
        &format!("backup-fetch {mb:.0} MB (MB/s)"),
        format!("{a:.0}"),
        "lzop -d | tar",
        format!("{b:.0}"),
        a / b,
    );
    println!(
        "{:<34} {:>14}   {:<12} {:>14}",
        format!("peak RSS, {mb:.0} MB cluster (MiB)"),
        format!("push {}", push_rss / 1024),
        "fetch",
        fetch_rss / 1024
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
