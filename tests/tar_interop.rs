//! Our tar partitions against the readers and writers WAL-E used: Python's
//! `tarfile` driven as WAL-E's `tarfile_extract` and `tarfile_write` drove
//! it, in both the GNU (Python 3.4–3.7) and PAX (3.8+) formats, and GNU tar.

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use wal_e::tar_extract::{ExtractOptions, extract};
use wal_e::tar_partition::{Limits, plan, write_partition};

/// WAL-E 1.1's `TarPartition.tarfile_extract` loop, reading stdin.
const WAL_E_EXTRACT: &str = r#"
import errno, os, sys, tarfile
dest = os.path.realpath(sys.argv[1])
tar = tarfile.open(mode='r|', fileobj=sys.stdin.buffer)
for member in tar:
    assert not member.name.startswith('/')
    print(repr(member.name))
    if member.issym():
        target_path = os.path.join(dest, member.name)
        try:
            os.symlink(member.linkname, target_path)
        except OSError as e:
            if e.errno == errno.EEXIST:
                os.remove(target_path)
                os.symlink(member.linkname, target_path)
            else:
                raise
        continue
    tar.extract(member, path=dest)
"#;

/// WAL-E 1.1's walk-then-`tarfile_write`, cut down: every directory and
/// file under argv[1], names relative to it (the root as ''), written with
/// `gettarinfo` + `addfile` in the given format to argv[3].
const WAL_E_WRITE: &str = r#"
import os, sys, tarfile
src, fmt, out = sys.argv[1], sys.argv[2], sys.argv[3]
fmt = {'gnu': tarfile.GNU_FORMAT, 'pax': tarfile.PAX_FORMAT}[fmt]
with open(out, 'wb') as f:
    tar = tarfile.open(fileobj=f, mode='w|', format=fmt)
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for p in [root] + [os.path.join(root, x) for x in sorted(files)]:
            arc = os.path.relpath(p, src)
            ti = tar.gettarinfo(p, arcname='' if arc == '.' else arc)
            if ti.isfile():
                with open(p, 'rb') as fh:
                    tar.addfile(ti, fh)
            else:
                tar.addfile(ti)
    tar.close()
"#;

const LONG_DIR: &str =
    "a_directory_with_a_long_name_0123456789/another_directory_with_a_long_name_0123456789";

fn data_dir(root: &Path) {
    let put = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    };
    put("PG_VERSION", b"15\n");
    put("base/1/1259", &[7u8; 9000]);
    put(&format!("{LONG_DIR}/file_with_a_long_name_too"), b"deep");
    fs::create_dir_all(root.join("emptydir")).unwrap();
    symlink("/nonexistent/target", root.join("danglinglink")).unwrap();
}

fn check_restored(dest: &Path) {
    assert_eq!(fs::read(dest.join("PG_VERSION")).unwrap(), b"15\n");
    assert_eq!(fs::read(dest.join("base/1/1259")).unwrap(), [7u8; 9000]);
    assert_eq!(
        fs::read(dest.join(format!("{LONG_DIR}/file_with_a_long_name_too"))).unwrap(),
        b"deep"
    );
    assert!(dest.join("emptydir").is_dir());
}

async fn our_archive(data: &Path) -> Vec<u8> {
    let plan = plan(data, &Limits::default()).unwrap();
    assert_eq!(plan.partitions.len(), 1);
    let mut out = Vec::new();
    let mut s = write_partition(plan.partitions[0].clone(), None);
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test]
async fn wal_e_python_extracts_our_partitions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    data_dir(&data);
    let archive = our_archive(&data).await;
    let dest = tmp.path().join("restored");
    fs::create_dir(&dest).unwrap();
    let mut child = Command::new("python3")
        .args(["-c", WAL_E_EXTRACT])
        .arg(&dest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(&archive).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = String::from_utf8(out.stdout).unwrap();
    // Our "./" root entry is "." to Python: the destination itself.
    assert_eq!(names.lines().next(), Some("'.'"));
    check_restored(&dest);
    assert_eq!(
        fs::read_link(dest.join("danglinglink")).unwrap(),
        Path::new("/nonexistent/target")
    );
}

#[tokio::test]
async fn gnu_tar_extracts_our_partitions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    data_dir(&data);
    let archive = our_archive(&data).await;
    let file = tmp.path().join("part.tar");
    fs::write(&file, archive).unwrap();
    let dest = tmp.path().join("restored");
    fs::create_dir(&dest).unwrap();
    let out = Command::new("tar")
        .arg("-xf")
        .arg(&file)
        .arg("-C")
        .arg(&dest)
        .output()
        .expect("GNU tar runs");
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_restored(&dest);
}

#[tokio::test]
async fn we_extract_what_wal_e_python_wrote_in_both_formats() {
    for format in ["gnu", "pax"] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        data_dir(&data);
        let file = tmp.path().join("part.tar");
        let out = Command::new("python3")
            .args(["-c", WAL_E_WRITE])
            .arg(&data)
            .arg(format)
            .arg(&file)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let archive = fs::read(&file).unwrap();
        // WAL-E's root entry: the empty arcname written as "/".
        let first = {
            let mut ar = tar::Archive::new(&archive[..]);
            let entry = ar.entries().unwrap().next().unwrap().unwrap();
            entry.path_bytes().into_owned()
        };
        assert_eq!(first, b"/", "{format}");
        if format == "pax" {
            assert!(
                archive.windows(5).any(|w| w == b"path="),
                "long name as PAX"
            );
        } else {
            assert!(archive.windows(13).any(|w| w == b"././@LongLink"));
        }
        let dest = tmp.path().join("restored");
        let chunks: Vec<std::io::Result<Bytes>> = archive
            .chunks(4096)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let stats = extract(
            stream::iter(chunks).boxed(),
            &dest,
            ExtractOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(stats.files, 3, "{format}");
        check_restored(&dest);
    }
}
