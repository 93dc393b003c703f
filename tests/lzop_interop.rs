//! Our lzop stage against the real `lzop` program, both ways, plus round
//! trips of random sizes and the corruption cases a reader must catch.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::cli::{fake_segment, random_bytes};
use futures_util::stream::{self, StreamExt};
use proptest::prelude::*;
use wal_e::ByteStream;
use wal_e::pipeline::lzop::{self, BLOCK_SIZE, LzopError};

fn chunked(data: Vec<u8>, chunk: usize) -> ByteStream {
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks).boxed()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn ours_compress(data: &[u8]) -> Vec<u8> {
    block_on(async {
        let mut out = Vec::new();
        let mut s = lzop::compress_stream(chunked(data.to_vec(), 100_000), 0, 0o100600);
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    })
}

fn ours_decompress(data: &[u8], chunk: usize) -> std::io::Result<Vec<u8>> {
    block_on(async {
        let mut out = Vec::new();
        let mut s = lzop::decompress_stream(chunked(data.to_vec(), chunk));
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    })
}

fn lzop(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new("lzop")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lzop is installed");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn lzop_error(err: &std::io::Error) -> &LzopError {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<LzopError>())
        .unwrap_or_else(|| panic!("not an lzop error: {err}"))
}

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", Vec::new()),
        ("one byte", vec![42]),
        ("exactly one block", fake_segment(BLOCK_SIZE, 1)),
        ("one block and a byte", fake_segment(BLOCK_SIZE + 1, 2)),
        ("incompressible 3 MiB", random_bytes(3 << 20, 3)),
        ("compressible 16 MiB", fake_segment(16 << 20, 4)),
    ]
}

#[test]
fn real_lzop_reads_what_we_write() {
    for (name, data) in cases() {
        let ours = ours_compress(&data);
        let out = lzop(&["-dc"], &ours);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == data, "{name}: lzop -dc output differs");
        let test = lzop(&["-t"], &ours);
        assert!(
            test.status.success(),
            "{name}: lzop -t: {}",
            String::from_utf8_lossy(&test.stderr)
        );
    }
}

#[test]
fn we_read_what_real_lzop_writes() {
    for (name, data) in cases() {
        for level in ["-1", "-3", "-9"] {
            let out = lzop(&["-c", level], &data);
            assert!(out.status.success());
            let back = ours_decompress(&out.stdout, 65_536).unwrap();
            assert!(back == data, "{name} {level}: our output differs");
        }
    }
    // A file argument records name, mode and mtime in the header.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("000000010000000000000001");
    let data = fake_segment(1 << 20, 5);
    std::fs::write(&path, &data).unwrap();
    let out = Command::new("lzop").arg("-c").arg(&path).output().unwrap();
    assert!(out.status.success());
    assert_eq!(ours_decompress(&out.stdout, 7).unwrap(), data);
}

#[test]
fn blocks_are_byte_identical_to_lzop_3() {
    for (name, data) in cases() {
        let ours = ours_compress(&data);
        let theirs = lzop(&["-3", "-c"], &data).stdout;
        // Headers differ only in mode/mtime; everything after is the same.
        assert_eq!(ours.len(), theirs.len(), "{name}");
        assert!(
            ours[38..] == theirs[38..],
            "{name}: block bytes differ from lzop -3"
        );
        assert_eq!(
            ours[..21],
            theirs[..21],
            "{name}: magic, versions, method, level, flags"
        );
    }
}

#[test]
fn corruption_is_detected_and_named() {
    let data = fake_segment(3 * BLOCK_SIZE + 100, 7);
    let good = ours_compress(&data);
    let flip = |at: usize| {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        bad
    };
    // Header (inside the mode field): the header checksum catches it.
    let err = ours_decompress(&flip(22), 4096).unwrap_err();
    assert_eq!(*lzop_error(&err), LzopError::HeaderChecksum);
    assert!(err.to_string().contains("header"));
    // The magic.
    assert_eq!(
        *lzop_error(&ours_decompress(&flip(1), 4096).unwrap_err()),
        LzopError::BadMagic
    );
    // The first block's Adler-32 field (bytes 38+8 .. 38+12).
    let err = ours_decompress(&flip(38 + 9), 4096).unwrap_err();
    assert!(
        matches!(lzop_error(&err), LzopError::BlockChecksum { block: 0 }),
        "{err}"
    );
    // Inside the compressed data of the second block.
    let first_c_len = u32::from_be_bytes(good[42..46].try_into().unwrap()) as usize;
    let second_data = 38 + 12 + first_c_len + 12 + 50;
    let err = ours_decompress(&flip(second_data), 4096).unwrap_err();
    assert!(
        matches!(
            lzop_error(&err),
            LzopError::BlockChecksum { block: 1 } | LzopError::CorruptBlock { block: 1, .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("block 1"));
    // Truncation anywhere, including just before the end marker.
    for cut in [
        10,
        38,
        45,
        1000,
        good.len() / 2,
        good.len() - 4,
        good.len() - 1,
    ] {
        let err = ours_decompress(&good[..cut], 999).unwrap_err();
        assert!(
            matches!(
                lzop_error(&err),
                LzopError::Truncated { .. } | LzopError::BadMagic
            ),
            "cut at {cut}: {err}"
        );
        assert!(cut < 9 || err.to_string().contains("truncated"), "{err}");
    }
    // Trailing garbage and a second stream.
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage");
    assert_eq!(
        *lzop_error(&ours_decompress(&trailing, 4096).unwrap_err()),
        LzopError::TrailingData
    );
    let mut two = good.clone();
    two.extend_from_slice(&good);
    let err = ours_decompress(&two, 1 << 20).unwrap_err();
    assert_eq!(*lzop_error(&err), LzopError::TrailingData);
    assert!(err.to_string().contains("second stream"));
}

fn data_strategy() -> impl Strategy<Value = Vec<u8>> {
    (0usize..20 << 20, any::<u64>(), any::<bool>()).prop_map(|(len, seed, compressible)| {
        if compressible {
            fake_segment(len, seed)
        } else {
            random_bytes(len, seed)
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn round_trip_of_random_sizes_and_chunking(data in data_strategy(), chunk in 1usize..300_000) {
        let compressed = ours_compress(&data);
        let back = ours_decompress(&compressed, chunk).unwrap();
        prop_assert!(back == data);
    }
}
