//! The lzop container format with LZO1X-1 compression, as `lzop -c` writes it
//! and WAL-E stores every WAL file and tar partition.
//!
//! Exactly one lzop stream per object: a header, blocks of at most 256 KiB
//! (stored raw when compression does not help), each with the Adler-32 of its
//! uncompressed data, and a zero end marker; nothing may follow it. The
//! reader accepts what lzop 1.03/1.04 write (methods 1–3, optional checksums,
//! the extra field) and rejects corruption, truncation and trailing data.

use std::sync::Once;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::{self, StreamExt};

use crate::ByteStream;

/// lzop's block size; `lzop -d` rejects larger blocks.
pub const BLOCK_SIZE: usize = 256 * 1024;

const MAGIC: [u8; 9] = [0x89, b'L', b'Z', b'O', 0x00, 0x0D, 0x0A, 0x1A, 0x0A];
const VERSION: u16 = 0x1040;
const LIB_VERSION: u16 = 0x20A0;
const VERSION_NEEDED: u16 = 0x0940;
/// What `lzop -c` (default level -3) records: method LZO1X_1, level 5.
const METHOD_LZO1X_1: u8 = 1;
const LEVEL: u8 = 5;

const F_ADLER32_D: u32 = 0x0000_0001;
const F_ADLER32_C: u32 = 0x0000_0002;
const F_STDIN: u32 = 0x0000_0004;
const F_STDOUT: u32 = 0x0000_0008;
const F_H_EXTRA_FIELD: u32 = 0x0000_0040;
const F_CRC32_D: u32 = 0x0000_0100;
const F_CRC32_C: u32 = 0x0000_0200;
const F_H_FILTER: u32 = 0x0000_0800;
const F_H_CRC32: u32 = 0x0000_1000;
const F_OS_UNIX: u32 = 0x0300_0000;
/// The flags `lzop -c` writes when reading a pipe, as in WAL-E's pipeline.
const WRITE_FLAGS: u32 = F_OS_UNIX | F_STDOUT | F_STDIN | F_ADLER32_D;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LzopError {
    #[error(
        "not lzop data: bad magic bytes (is the object encrypted? then a GPG key id is needed)"
    )]
    BadMagic,
    #[error("unsupported lzop format version {0:#06x}")]
    UnsupportedVersion(u16),
    #[error("unsupported lzop compression method {0}")]
    UnsupportedMethod(u8),
    #[error("unsupported lzop filter {0} (lzop 1.03/1.04 do not write filters)")]
    UnsupportedFilter(u32),
    #[error("lzop header checksum mismatch: the header is corrupt")]
    HeaderChecksum,
    #[error("lzop block {block} is {size} bytes, more than the {BLOCK_SIZE}-byte maximum")]
    BlockTooLarge { block: u64, size: u32 },
    #[error("lzop block {block} is corrupt: {why}")]
    CorruptBlock { block: u64, why: &'static str },
    #[error("lzop block {block} checksum mismatch: the data is corrupt")]
    BlockChecksum { block: u64 },
    #[error("lzop data is truncated: the stream ended {where_}")]
    Truncated { where_: String },
    #[error(
        "unexpected data after the end of the lzop stream (a second stream or trailing garbage)"
    )]
    TrailingData,
}

impl From<LzopError> for std::io::Error {
    fn from(err: LzopError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, err)
    }
}

fn init_lzo() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: lzo_init only checks the library's compile-time configuration.
        let rc = unsafe { lzo_sys::lzoconf::lzo_init() };
        assert_eq!(
            rc,
            lzo_sys::lzoconf::LZO_E_OK,
            "liblzo2 failed to initialise"
        );
    });
}

fn adler32(data: &[u8]) -> u32 {
    adler2::adler32_slice(data)
}

/// Compresses blocks into the lzop format; knows nothing about I/O.
pub struct Compressor {
    mtime: u32,
    mode: u32,
    /// LZO1X-1's work memory, reused for every block (u64s keep it aligned).
    work: Vec<u64>,
    scratch: Vec<u8>,
}

impl Compressor {
    /// `mtime` and `mode` are recorded in the header as lzop records its input's.
    pub fn new(mtime: u32, mode: u32) -> Self {
        init_lzo();
        Compressor {
            mtime,
            mode,
            work: vec![0u64; lzo_sys::lzo1x::LZO1X_1_MEM_COMPRESS as usize / 8],
            scratch: Vec::new(),
        }
    }

    pub fn header(&self) -> Bytes {
        let mut h = BytesMut::with_capacity(38);
        h.put_slice(&MAGIC);
        h.put_u16(VERSION);
        h.put_u16(LIB_VERSION);
        h.put_u16(VERSION_NEEDED);
        h.put_u8(METHOD_LZO1X_1);
        h.put_u8(LEVEL);
        h.put_u32(WRITE_FLAGS);
        h.put_u32(self.mode);
        h.put_u32(self.mtime);
        h.put_u32(0); // mtime high
        h.put_u8(0); // no file name
        let checksum = adler32(&h[MAGIC.len()..]);
        h.put_u32(checksum);
        h.freeze()
    }

    /// One block of 1..=BLOCK_SIZE bytes, framed.
    pub fn compress_block(&mut self, block: &[u8]) -> Bytes {
        assert!(!block.is_empty() && block.len() <= BLOCK_SIZE);
        // LZO's documented worst case for incompressible input.
        let bound = block.len() + block.len() / 16 + 64 + 3;
        self.scratch.resize(bound, 0);
        let mut c_len = bound;
        // SAFETY: `block` is readable for its length; `scratch` is writable for
        // `bound` bytes, the library's worst-case output size; `work` is
        // LZO1X_1_MEM_COMPRESS bytes. The call is thread-safe per work buffer.
        let rc = unsafe {
            lzo_sys::lzo1x::lzo1x_1_compress(
                block.as_ptr(),
                block.len(),
                self.scratch.as_mut_ptr(),
                &mut c_len,
                self.work.as_mut_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            lzo_sys::lzoconf::LZO_E_OK,
            "lzo1x_1_compress cannot fail"
        );
        let stored_raw = c_len >= block.len();
        let data: &[u8] = if stored_raw {
            block
        } else {
            &self.scratch[..c_len]
        };
        let mut out = BytesMut::with_capacity(12 + data.len());
        out.put_u32(block.len() as u32);
        out.put_u32(data.len() as u32);
        out.put_u32(adler32(block));
        out.put_slice(data);
        out.freeze()
    }

    /// The end-of-stream marker.
    pub fn trailer() -> Bytes {
        Bytes::from_static(&[0, 0, 0, 0])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Header,
    Blocks,
    Done,
}

/// Incremental lzop reader; knows nothing about I/O.
pub struct Decompressor {
    input: BytesMut,
    phase: Phase,
    flags: u32,
    block: u64,
}

impl Default for Decompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Decompressor {
    pub fn new() -> Self {
        init_lzo();
        Decompressor {
            input: BytesMut::new(),
            phase: Phase::Header,
            flags: 0,
            block: 0,
        }
    }

    /// Adds input; data after the end marker is an error at once.
    pub fn push(&mut self, data: &[u8]) -> Result<(), LzopError> {
        if self.phase == Phase::Done && !data.is_empty() {
            return Err(LzopError::TrailingData);
        }
        self.input.extend_from_slice(data);
        Ok(())
    }

    /// The next decompressed block, once all of it has arrived.
    pub fn next_block(&mut self) -> Result<Option<Bytes>, LzopError> {
        if self.phase == Phase::Header && !self.parse_header()? {
            return Ok(None);
        }
        if self.phase == Phase::Done {
            return if self.input.is_empty() {
                Ok(None)
            } else {
                Err(LzopError::TrailingData)
            };
        }
        self.parse_block()
    }

    /// Called at end of input: an error unless the end marker was seen.
    pub fn finish(self) -> Result<(), LzopError> {
        match self.phase {
            Phase::Done if self.input.is_empty() => Ok(()),
            Phase::Done => Err(LzopError::TrailingData),
            Phase::Header => Err(LzopError::Truncated {
                where_: "inside the header".into(),
            }),
            Phase::Blocks => Err(LzopError::Truncated {
                where_: format!("inside block {}", self.block),
            }),
        }
    }

    /// Parses the header if it is complete; `Ok(false)` means "need more".
    fn parse_header(&mut self) -> Result<bool, LzopError> {
        let b = &self.input[..];
        let check = b.len().min(MAGIC.len());
        if b[..check] != MAGIC[..check] {
            return Err(LzopError::BadMagic);
        }
        let mut r = Reader {
            buf: b,
            pos: MAGIC.len(),
        };
        let Some(version) = r.u16() else {
            return Ok(false);
        };
        if version < 0x0940 {
            return Err(LzopError::UnsupportedVersion(version));
        }
        let (Some(_lib), Some(_needed), Some(method), Some(_level), Some(flags)) =
            (r.u16(), r.u16(), r.u8(), r.u8(), r.u32())
        else {
            return Ok(false);
        };
        if !(1..=3).contains(&method) {
            return Err(LzopError::UnsupportedMethod(method));
        }
        if flags & F_H_FILTER != 0 {
            let Some(filter) = r.u32() else {
                return Ok(false);
            };
            if filter != 0 {
                return Err(LzopError::UnsupportedFilter(filter));
            }
        }
        let (Some(_mode), Some(_mtime_lo), Some(_mtime_hi), Some(name_len)) =
            (r.u32(), r.u32(), r.u32(), r.u8())
        else {
            return Ok(false);
        };
        if r.take(name_len as usize).is_none() {
            return Ok(false);
        }
        let covered_end = r.pos;
        let Some(stored) = r.u32() else {
            return Ok(false);
        };
        let covered = &b[MAGIC.len()..covered_end];
        let actual = if flags & F_H_CRC32 != 0 {
            crc32fast::hash(covered)
        } else {
            adler32(covered)
        };
        if stored != actual {
            return Err(LzopError::HeaderChecksum);
        }
        if flags & F_H_EXTRA_FIELD != 0 {
            let Some(len) = r.u32() else { return Ok(false) };
            let start = r.pos;
            if r.take(len as usize).is_none() {
                return Ok(false);
            }
            let field = &b[start..r.pos];
            let Some(stored) = r.u32() else {
                return Ok(false);
            };
            let actual = if flags & F_H_CRC32 != 0 {
                crc32fast::hash(field)
            } else {
                adler32(field)
            };
            if stored != actual {
                return Err(LzopError::HeaderChecksum);
            }
        }
        let consumed = r.pos;
        self.flags = flags;
        self.input.advance(consumed);
        self.phase = Phase::Blocks;
        Ok(true)
    }

    fn parse_block(&mut self) -> Result<Option<Bytes>, LzopError> {
        let block = self.block;
        let corrupt = |why| LzopError::CorruptBlock { block, why };
        let mut r = Reader {
            buf: &self.input[..],
            pos: 0,
        };
        let Some(d_len) = r.u32() else {
            return Ok(None);
        };
        if d_len == 0 {
            self.input.advance(4);
            self.phase = Phase::Done;
            return if self.input.is_empty() {
                Ok(None)
            } else {
                Err(LzopError::TrailingData)
            };
        }
        if d_len as usize > BLOCK_SIZE {
            return Err(LzopError::BlockTooLarge { block, size: d_len });
        }
        let Some(c_len) = r.u32() else {
            return Ok(None);
        };
        if c_len == 0 || c_len > d_len {
            return Err(corrupt("its compressed size is impossible"));
        }
        let d_check = if self.flags & (F_ADLER32_D | F_CRC32_D) != 0 {
            let Some(v) = r.u32() else { return Ok(None) };
            Some(v)
        } else {
            None
        };
        let c_check = if self.flags & (F_ADLER32_C | F_CRC32_C) != 0 && c_len < d_len {
            let Some(v) = r.u32() else { return Ok(None) };
            Some(v)
        } else {
            None
        };
        let Some(data) = r.take(c_len as usize) else {
            return Ok(None);
        };
        if let Some(expected) = c_check {
            let actual = if self.flags & F_ADLER32_C != 0 {
                adler32(data)
            } else {
                crc32fast::hash(data)
            };
            if actual != expected {
                return Err(LzopError::BlockChecksum { block });
            }
        }
        let out = if c_len == d_len {
            Bytes::copy_from_slice(data)
        } else {
            let mut out = vec![0u8; d_len as usize];
            let mut out_len = out.len();
            // SAFETY: `data` is readable for c_len bytes and `out` writable for
            // d_len; the _safe variant never writes past `out_len`.
            let rc = unsafe {
                lzo_sys::lzo1x::lzo1x_decompress_safe(
                    data.as_ptr(),
                    data.len(),
                    out.as_mut_ptr(),
                    &mut out_len,
                    std::ptr::null_mut(),
                )
            };
            if rc != lzo_sys::lzoconf::LZO_E_OK || out_len != d_len as usize {
                return Err(corrupt("the LZO data does not decompress"));
            }
            Bytes::from(out)
        };
        if let Some(expected) = d_check {
            let actual = if self.flags & F_ADLER32_D != 0 {
                adler32(&out)
            } else {
                crc32fast::hash(&out)
            };
            if actual != expected {
                return Err(LzopError::BlockChecksum { block });
            }
        }
        let consumed = r.pos;
        self.input.advance(consumed);
        self.block += 1;
        Ok(Some(out))
    }
}

/// Big-endian reads that return `None` when the input is not there yet.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Compresses a byte stream into one lzop stream. Holds at most one block of
/// input plus one input chunk.
pub fn compress_stream(input: ByteStream, mtime: u32, mode: u32) -> ByteStream {
    struct State {
        input: ByteStream,
        compressor: Compressor,
        pending: BytesMut,
        header_sent: bool,
        input_done: bool,
        finished: bool,
    }
    let state = State {
        input,
        compressor: Compressor::new(mtime, mode),
        pending: BytesMut::new(),
        header_sent: false,
        input_done: false,
        finished: false,
    };
    stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        if !st.header_sent {
            st.header_sent = true;
            let header = st.compressor.header();
            return Some((Ok(header), st));
        }
        while !st.input_done && st.pending.len() < BLOCK_SIZE {
            match st.input.next().await {
                Some(Ok(chunk)) => st.pending.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    st.finished = true;
                    return Some((Err(e), st));
                }
                None => st.input_done = true,
            }
        }
        if !st.pending.is_empty() {
            let n = st.pending.len().min(BLOCK_SIZE);
            let block = st.pending.split_to(n);
            let framed = st.compressor.compress_block(&block);
            return Some((Ok(framed), st));
        }
        st.finished = true;
        Some((Ok(Compressor::trailer()), st))
    })
    .boxed()
}

/// Decompresses one lzop stream. Reads its input to the end, so trailing data
/// and truncation are reported as errors, never as a short success.
pub fn decompress_stream(input: ByteStream) -> ByteStream {
    struct State {
        input: ByteStream,
        decoder: Option<Decompressor>,
    }
    let state = State {
        input,
        decoder: Some(Decompressor::new()),
    };
    stream::unfold(state, |mut st| async move {
        loop {
            let decoder = st.decoder.as_mut()?;
            match decoder.next_block() {
                Ok(Some(block)) => return Some((Ok(block), st)),
                Ok(None) => {}
                Err(e) => {
                    st.decoder = None;
                    return Some((Err(e.into()), st));
                }
            }
            match st.input.next().await {
                Some(Ok(chunk)) => {
                    if let Err(e) = decoder.push(&chunk) {
                        st.decoder = None;
                        return Some((Err(e.into()), st));
                    }
                }
                Some(Err(e)) => {
                    st.decoder = None;
                    return Some((Err(e), st));
                }
                None => {
                    let decoder = st.decoder.take()?;
                    return match decoder.finish() {
                        Ok(()) => None,
                        Err(e) => Some((Err(e.into()), st)),
                    };
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress_all(data: &[u8]) -> Vec<u8> {
        let mut c = Compressor::new(0, 0);
        let mut out = c.header().to_vec();
        for block in data.chunks(BLOCK_SIZE) {
            out.extend_from_slice(&c.compress_block(block));
        }
        out.extend_from_slice(&Compressor::trailer());
        out
    }

    fn decompress_all(data: &[u8]) -> Result<Vec<u8>, LzopError> {
        let mut d = Decompressor::new();
        d.push(data)?;
        let mut out = Vec::new();
        while let Some(block) = d.next_block()? {
            out.extend_from_slice(&block);
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn header_is_what_lzop_c_writes_from_a_pipe() {
        let h = Compressor::new(0x6b05_9086, 0o100644).header();
        assert_eq!(h.len(), 38);
        assert_eq!(
            &h[9..21],
            &[
                0x10, 0x40, 0x20, 0xa0, 0x09, 0x40, 0x01, 0x05, 0x03, 0x00, 0x00, 0x0d
            ]
        );
    }

    #[test]
    fn incompressible_blocks_are_stored_raw() {
        let mut state = 1u32;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (state >> 16) as u8
            })
            .collect();
        let framed = Compressor::new(0, 0).compress_block(&data);
        assert_eq!(
            &framed[0..4],
            &framed[4..8],
            "c_len == d_len for a stored block"
        );
        assert_eq!(decompress_all(&compress_all(&data)).unwrap(), data);
    }

    #[test]
    fn empty_input_is_header_and_end_marker() {
        let out = compress_all(&[]);
        assert_eq!(out.len(), 38 + 4);
        assert_eq!(decompress_all(&out).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn byte_at_a_time_input_decodes() {
        let data = b"hello hello hello hello\n".repeat(1000);
        let compressed = compress_all(&data);
        let mut d = Decompressor::new();
        let mut out = Vec::new();
        for b in &compressed {
            d.push(std::slice::from_ref(b)).unwrap();
            while let Some(block) = d.next_block().unwrap() {
                out.extend_from_slice(&block);
            }
        }
        d.finish().unwrap();
        assert_eq!(out, data);
    }
}
