//! lzop module tests: round trips, interop with the real /usr/bin/lzop,
//! byte-identical blocks, and corruption detection.

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use proptest::prelude::*;
use wal_e::ByteStream;
use wal_e::pipeline::lzop::{
    BLOCK_SIZE, Compressor, Decompressor, LzopError, TruncatedAt, compress_stream,
    decompress_stream,
};

const LZOP: &str = "/usr/bin/lzop";
/// Length of a header without name, filter or extra field (ours and `lzop -c <pipe`).
const HEADER_LEN: usize = 38;

// ---------- data ----------

/// splitmix64: fast enough to make 20 MiB in a debug build.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut v: Vec<u8> = (0..len.div_ceil(8))
        .flat_map(|_| rng.next().to_le_bytes())
        .collect();
    v.truncate(len);
    v
}

/// A short random pattern repeated: LZO shrinks it to a few percent.
fn repetitive(len: usize, seed: u64) -> Vec<u8> {
    let pattern = random_bytes(1 + Rng(seed).below(200), seed ^ 1);
    pattern.iter().copied().cycle().take(len).collect()
}

/// Words from a small vocabulary: compressible, but with real LZO matches.
fn text_like(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "wal",
        "segment",
        "00000001",
        "archive",
        "lzop",
        "postgres",
        "checkpoint",
        "xlog",
        "the",
        "backup",
        "restore",
        "\n",
        " ",
        "0x1F",
        "relation",
        "tuple",
    ];
    let mut rng = Rng(seed);
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        v.extend_from_slice(WORDS[rng.below(WORDS.len())].as_bytes());
        if rng.below(8) == 0 {
            v.push(rng.next() as u8);
        }
    }
    v.truncate(len);
    v
}

/// The interop cases the brief asks for.
fn cases() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", Vec::new()),
        ("exactly one block", text_like(BLOCK_SIZE, 1)),
        ("one block plus one byte", text_like(BLOCK_SIZE + 1, 2)),
        ("3 MiB random", random_bytes(3 << 20, 3)),
        ("16 MiB repetitive", repetitive(16 << 20, 4)),
    ]
}

// ---------- helpers ----------

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// Splits `data` into chunks of 1..=max_chunk bytes (sizes drawn from `seed`).
fn chunked(data: &[u8], max_chunk: usize, seed: u64) -> ByteStream {
    let mut rng = Rng(seed);
    let data = Bytes::copy_from_slice(data);
    let mut chunks = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let n = (1 + rng.below(max_chunk)).min(data.len() - at);
        chunks.push(Ok(data.slice(at..at + n)));
        at += n;
    }
    stream::iter(chunks).boxed()
}

async fn collect(s: ByteStream) -> io::Result<Vec<u8>> {
    s.try_fold(Vec::new(), |mut acc, chunk| async move {
        acc.extend_from_slice(&chunk);
        Ok(acc)
    })
    .await
}

fn compress(data: &[u8]) -> Vec<u8> {
    block_on(collect(compress_stream(
        chunked(data, 100_000, 7),
        1_700_000_000,
        0o644,
    )))
    .unwrap()
}

fn decompress(lzo: &[u8]) -> io::Result<Vec<u8>> {
    block_on(collect(decompress_stream(chunked(lzo, 70_000, 11))))
}

/// Decodes with the sans-IO API, pushing `chunk`-byte pieces.
fn decompress_sans_io(lzo: &[u8], chunk: usize) -> Result<Vec<u8>, LzopError> {
    let mut dec = Decompressor::new();
    let mut out = Vec::new();
    for piece in lzo.chunks(chunk) {
        dec.push(piece)?;
        while let Some(block) = dec.next_block()? {
            out.extend_from_slice(&block);
        }
    }
    dec.finish()?;
    Ok(out)
}

/// The LzopError inside an io::Error from `decompress_stream`.
fn lzop_error(e: io::Error) -> LzopError {
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    *e.into_inner()
        .expect("inner error")
        .downcast::<LzopError>()
        .expect("an LzopError")
}

/// Both APIs must reject `lzo` with the same error; returns it.
fn decode_error(lzo: &[u8]) -> LzopError {
    let sans_io = decompress_sans_io(lzo, 4096).expect_err("corrupt input was accepted");
    let streamed = lzop_error(decompress(lzo).expect_err("corrupt input was accepted"));
    assert_eq!(sans_io, streamed);
    sans_io
}

fn run_lzop(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(LZOP)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/lzop");
    let mut stdin = child.stdin.take().unwrap();
    let output = std::thread::scope(|s| {
        s.spawn(move || stdin.write_all(input).unwrap());
        child.wait_with_output().unwrap()
    });
    assert!(
        output.status.success(),
        "lzop {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

// ---------- 1. round trip ----------

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(
        len in prop_oneof![
            1 => 0usize..=1024,
            1 => BLOCK_SIZE - 1..=BLOCK_SIZE + 1,
            4 => 0usize..=20 << 20,
        ],
        kind in 0u8..3,
        seed in any::<u64>(),
        in_chunk in prop_oneof![Just(1000usize), Just(100_000), Just(3 << 20)],
        out_chunk in prop_oneof![Just(777usize), Just(65_536), Just(1 << 20)],
    ) {
        let data = match kind {
            0 => random_bytes(len, seed),
            1 => repetitive(len, seed),
            _ => text_like(len, seed),
        };
        let back = block_on(async {
            let lzo = collect(compress_stream(chunked(&data, in_chunk, seed), 0, 0)).await?;
            collect(decompress_stream(chunked(&lzo, out_chunk, !seed))).await
        })
        .unwrap();
        prop_assert!(back == data, "round trip changed {} bytes of kind {}", len, kind);
    }
}

// ---------- 2. interop with /usr/bin/lzop ----------

#[test]
fn lzop_reads_our_output() {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in cases() {
        let ours = compress(&data);
        assert!(
            run_lzop(&["-dc"], &ours) == data,
            "{name}: lzop -dc differs"
        );
        let path = dir.path().join("ours.lzo");
        std::fs::write(&path, &ours).unwrap();
        let status = Command::new(LZOP)
            .args(["-t", "-q"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "{name}: lzop -t rejects our output");
    }
}

#[test]
fn we_read_lzop_output() {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in cases() {
        for args in [
            &["-c"][..],
            &["-1", "-c"],
            &["-9", "-c"],
            &["--crc32", "-c"],
        ] {
            let lzo = run_lzop(args, &data);
            assert!(decompress(&lzo).unwrap() == data, "{name}: lzop {args:?}");
            assert!(
                decompress_sans_io(&lzo, 1 << 20).unwrap() == data,
                "{name}: {args:?}"
            );
        }

        // A file argument puts name, mode and mtime into the header.
        let path = dir.path().join("segment.bin");
        std::fs::write(&path, &data).unwrap();
        let output = Command::new(LZOP).arg("-c").arg(&path).output().unwrap();
        assert!(output.status.success());
        let mut dec = Decompressor::new();
        dec.push(&output.stdout).unwrap();
        let mut back = Vec::new();
        while let Some(block) = dec.next_block().unwrap() {
            back.extend_from_slice(&block);
        }
        let header = dec.header().unwrap().clone();
        dec.finish().unwrap();
        assert!(back == data, "{name}: lzop -c FILE");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(header.name, b"segment.bin");
        assert_eq!(header.mode, meta.mode());
        assert_eq!(header.mtime, meta.mtime() as u64);
    }
}

// ---------- 3. identical to lzop -3 ----------

#[test]
fn blocks_identical_to_lzop_3() {
    let mut all = cases();
    all.push(("1 MiB text", text_like(1 << 20, 5)));
    for (name, data) in all {
        let ours = compress(&data);
        let theirs = run_lzop(&["-3", "-c"], &data);
        // version, lib version, version needed, method, level: identical.
        assert_eq!(ours[..17], theirs[..17], "{name}: header differs");
        assert_eq!(ours.len(), theirs.len(), "{name}: length differs");
        assert!(
            ours[HEADER_LEN..] == theirs[HEADER_LEN..],
            "{name}: blocks differ"
        );
    }
}

#[test]
fn header_fields() {
    let h = Compressor::new(0x6B05_9135, 0o100644).header();
    assert_eq!(h.len(), HEADER_LEN);
    assert_eq!(&h[..9], b"\x89LZO\x00\r\n\x1a\n");
    assert_eq!(
        &h[9..25],
        b"\x10\x40\x20\xa0\x09\x40\x01\x05\x03\x00\x00\x01\x00\x00\x81\xa4"
    );
    assert_eq!(&h[25..34], b"\x6b\x05\x91\x35\x00\x00\x00\x00\x00");
    assert_eq!(h[34..], adler2::adler32_slice(&h[9..34]).to_be_bytes());
    assert_eq!(&Compressor::trailer()[..], [0; 4]);
}

// ---------- 4. corruption ----------

/// Three blocks: compressed, raw (incompressible), and a short compressed one.
fn sample() -> (Vec<u8>, Vec<u8>) {
    let mut data = text_like(BLOCK_SIZE, 21);
    data.extend(random_bytes(BLOCK_SIZE, 22));
    data.extend(text_like(1000, 23));
    let lzo = compress(&data);
    (data, lzo)
}

/// Start offsets of the blocks in one of our streams.
fn block_offsets(lzo: &[u8]) -> Vec<usize> {
    let mut at = HEADER_LEN;
    let mut offsets = Vec::new();
    loop {
        let d_len = u32::from_be_bytes(lzo[at..at + 4].try_into().unwrap());
        if d_len == 0 {
            return offsets;
        }
        offsets.push(at);
        at += 12 + u32::from_be_bytes(lzo[at + 4..at + 8].try_into().unwrap()) as usize;
    }
}

fn flipped(lzo: &[u8], byte: usize, bit: u8) -> Vec<u8> {
    let mut v = lzo.to_vec();
    v[byte] ^= 1 << bit;
    v
}

#[test]
fn header_bit_flips_are_detected() {
    let (_, lzo) = sample();
    for byte in 0..HEADER_LEN {
        for bit in 0..8 {
            match decode_error(&flipped(&lzo, byte, bit)) {
                LzopError::BadMagic => assert!(byte < 9, "byte {byte}"),
                e @ LzopError::HeaderChecksum { .. } => {
                    assert!(byte >= 9, "byte {byte}");
                    assert!(e.to_string().contains("header checksum mismatch"), "{e}");
                }
                e => panic!("flip of byte {byte} bit {bit}: {e:?}"),
            }
        }
    }
    let e = decode_error(b"\x1f\x8b\x08\x00 this is gzip, not lzop");
    assert_eq!(e, LzopError::BadMagic);
    assert!(e.to_string().contains("magic"), "{e}");
}

#[test]
fn block_bit_flips_are_detected() {
    let (_, lzo) = sample();
    let blocks = block_offsets(&lzo);
    assert_eq!(blocks.len(), 3);
    for (index, &at) in blocks.iter().enumerate() {
        let c_len = u32::from_be_bytes(lzo[at + 4..at + 8].try_into().unwrap()) as usize;
        // The stored Adler-32 of the uncompressed data.
        for byte in at + 8..at + 12 {
            let e = decode_error(&flipped(&lzo, byte, 3));
            assert!(
                matches!(e, LzopError::BlockChecksum { block, offset, .. }
                    if block == index as u64 && offset == at as u64),
                "{e:?}"
            );
            assert!(
                e.to_string()
                    .contains(&format!("checksum mismatch in block {index}"))
            );
        }
        // The payload, raw or compressed.
        for byte in [at + 12, at + 12 + c_len / 2, at + 11 + c_len] {
            for bit in [0, 5, 7] {
                match decode_error(&flipped(&lzo, byte, bit)) {
                    LzopError::BlockChecksum { block, .. }
                    | LzopError::CorruptBlock { block, .. } => assert_eq!(block, index as u64),
                    e => panic!("block {index} byte {byte}: {e:?}"),
                }
            }
        }
    }
    // Oversized and impossible block lengths.
    let at = blocks[0];
    let e = decode_error(&flipped(&lzo, at + 1, 7)); // d_len += 8 MiB
    assert!(
        matches!(e, LzopError::BlockTooLarge { block: 0, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("more than the 256 KiB"), "{e}");
    let e = decode_error(&flipped(&lzo, at + 5, 7)); // c_len += 8 MiB > d_len
    assert!(
        matches!(e, LzopError::BadBlockLength { block: 0, .. }),
        "{e:?}"
    );
}

#[test]
fn truncation_is_detected() {
    let (data, lzo) = sample();
    let blocks = block_offsets(&lzo);
    let cuts = [
        (0, TruncatedAt::Header),
        (5, TruncatedAt::Header),
        (20, TruncatedAt::Header),
        (HEADER_LEN - 1, TruncatedAt::Header),
        (HEADER_LEN, TruncatedAt::EndMarker { blocks: 0 }),
        (
            HEADER_LEN + 6,
            TruncatedAt::Block {
                block: 0,
                offset: HEADER_LEN as u64,
            },
        ),
        (
            blocks[1] + 100,
            TruncatedAt::Block {
                block: 1,
                offset: blocks[1] as u64,
            },
        ),
        (blocks[2], TruncatedAt::EndMarker { blocks: 2 }),
        (lzo.len() - 4, TruncatedAt::EndMarker { blocks: 3 }),
        (
            lzo.len() - 1,
            TruncatedAt::Block {
                block: 3,
                offset: lzo.len() as u64 - 4,
            },
        ),
    ];
    for (cut, at) in cuts {
        let e = decode_error(&lzo[..cut]);
        assert_eq!(e, LzopError::Truncated { at }, "cut at {cut}");
        assert!(
            e.to_string()
                .starts_with("lzop data is truncated: stream ended"),
            "{e}"
        );
    }
    // The blocks before the cut were still delivered by the stream.
    let mut s = decompress_stream(chunked(&lzo[..blocks[2]], 1 << 20, 1));
    let first = block_on(async {
        let mut got = Vec::new();
        while let Some(Ok(b)) = s.next().await {
            got.extend_from_slice(&b);
        }
        got
    });
    assert!(first == data[..2 * BLOCK_SIZE]);
}

#[test]
fn trailing_data_is_rejected() {
    let (_, lzo) = sample();
    let mut garbage = lzo.clone();
    garbage.extend_from_slice(b"junk");
    let e = decode_error(&garbage);
    assert_eq!(
        e,
        LzopError::TrailingData {
            offset: lzo.len() as u64,
            second_stream: false
        }
    );
    assert!(
        e.to_string().contains("after the end-of-stream marker"),
        "{e}"
    );

    let mut twice = lzo.clone();
    twice.extend_from_slice(&lzo);
    let e = decode_error(&twice);
    assert_eq!(
        e,
        LzopError::TrailingData {
            offset: lzo.len() as u64,
            second_stream: true
        }
    );
    assert!(e.to_string().contains("a second lzop stream"), "{e}");

    // Reported by the push that delivers it, and sticky.
    let mut dec = Decompressor::new();
    dec.push(&lzo).unwrap();
    while dec.next_block().unwrap().is_some() {}
    dec.push(&[]).unwrap();
    assert!(matches!(
        dec.push(b"x"),
        Err(LzopError::TrailingData { .. })
    ));
    assert!(matches!(dec.finish(), Err(LzopError::TrailingData { .. })));
}

#[test]
fn input_errors_pass_through() {
    let (_, lzo) = sample();
    let failing = |prefix: &[u8]| -> ByteStream {
        stream::iter([
            Ok(Bytes::copy_from_slice(prefix)),
            Err(io::Error::other("disk on fire")),
        ])
        .boxed()
    };
    let e = block_on(collect(decompress_stream(failing(&lzo[..1000])))).unwrap_err();
    assert_eq!(e.to_string(), "disk on fire");
    let e = block_on(collect(compress_stream(failing(b"abc"), 0, 0))).unwrap_err();
    assert_eq!(e.to_string(), "disk on fire");
}

/// Rewrites one of our streams to also carry Adler-32 checksums of the
/// compressed data and a header extra field: flags lzop reads but never writes.
fn with_c_checksums_and_extra(lzo: &[u8]) -> Vec<u8> {
    let mut header = lzo[..HEADER_LEN - 4].to_vec();
    header[20] |= 0x02 | 0x40; // F_ADLER32_C | F_H_EXTRA_FIELD (low flag byte)
    let sum = adler2::adler32_slice(&header[9..]);
    header.extend_from_slice(&sum.to_be_bytes());
    let extra: &[u8] = b"\x00\x00\x00\x05hello";
    header.extend_from_slice(extra);
    header.extend_from_slice(&adler2::adler32_slice(extra).to_be_bytes());
    let mut out = header;
    for at in block_offsets(lzo) {
        let d_len = u32::from_be_bytes(lzo[at..at + 4].try_into().unwrap());
        let c_len = u32::from_be_bytes(lzo[at + 4..at + 8].try_into().unwrap());
        let payload = &lzo[at + 12..at + 12 + c_len as usize];
        out.extend_from_slice(&lzo[at..at + 12]);
        if c_len < d_len {
            out.extend_from_slice(&adler2::adler32_slice(payload).to_be_bytes());
        }
        out.extend_from_slice(payload);
    }
    out.extend_from_slice(&[0; 4]);
    out
}

#[test]
fn compressed_checksums_and_extra_field() {
    let (data, lzo) = sample();
    let rich = with_c_checksums_and_extra(&lzo);
    assert!(
        run_lzop(&["-dc"], &rich) == data,
        "lzop itself rejects the crafted stream"
    );
    assert!(decompress(&rich).unwrap() == data);
    assert!(decompress_sans_io(&rich, 3).unwrap() == data);

    // Block 0 is compressed, so its c-checksum follows the d-checksum.
    let c_sum_at = HEADER_LEN + 13 + 12;
    let e = decode_error(&flipped(&rich, c_sum_at, 0));
    assert!(
        matches!(e, LzopError::BlockChecksum { block: 0, checksum, .. }
            if checksum.contains("compressed data")),
        "{e:?}"
    );
    // The extra field's own checksum.
    let e = decode_error(&flipped(&rich, HEADER_LEN + 4, 0));
    assert!(matches!(e, LzopError::HeaderChecksum { .. }), "{e:?}");
    let e = decode_error(&rich[..HEADER_LEN + 6]);
    assert_eq!(
        e,
        LzopError::Truncated {
            at: TruncatedAt::ExtraField
        }
    );
}
