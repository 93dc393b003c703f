//! The lzop container format, as written by `lzop -c` and read by `lzop -dc`.
//!
//! WAL-E stores every archived object as exactly one lzop stream, so this module
//! both writes streams that real lzop 1.03/1.04 accepts and reads what lzop writes.
//! The writer reproduces `lzop -3 -c` byte for byte except for the header's
//! flags/mode/mtime, which keeps our objects interchangeable with the original
//! Python WAL-E (which shells out to lzop).
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! magic(9) version(2) lib_version(2) [version_needed(2)] method(1) [level(1)]
//! flags(4) [filter(4)] mode(4) mtime_low(4) [mtime_high(4)] name_len(1) name
//! header_checksum(4) [extra_len(4) extra extra_checksum(4)]
//! { d_len(4) c_len(4) [d_checksum(4)...] [c_checksum(4)...] data(c_len) }*
//! 0u32
//! ```
//!
//! The core is sans-IO ([`Compressor`], [`Decompressor`]); [`compress_stream`] and
//! [`decompress_stream`] adapt it to `crate::ByteStream`.

use std::fmt;
use std::io;
use std::sync::Once;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{StreamExt, stream};
use lzo_sys::lzoconf::{
    LZO_E_EOF_NOT_FOUND, LZO_E_INPUT_NOT_CONSUMED, LZO_E_INPUT_OVERRUN, LZO_E_LOOKBEHIND_OVERRUN,
    LZO_E_OK, LZO_E_OUTPUT_OVERRUN,
};

/// Uncompressed size of every block but the last. lzop refuses blocks larger
/// than this, so it is also the maximum we accept when reading.
pub const BLOCK_SIZE: usize = 256 * 1024;

const MAGIC: [u8; 9] = [0x89, b'L', b'Z', b'O', 0x00, 0x0D, 0x0A, 0x1A, 0x0A];

/// What we claim to be: lzop 1.04 built against liblzo 2.10, like Debian's.
const VERSION: u16 = 0x1040;
const LIB_VERSION: u16 = 0x20A0;
const VERSION_NEEDED: u16 = 0x0940;
/// Oldest header layout we read: 0.94 added version_needed, level and mtime_high.
const MIN_VERSION: u16 = 0x0940;

/// LZO1X-1, what lzop uses for its default level (-2 … -6). Methods 2
/// (LZO1X-1(15), `-1`) and 3 (LZO1X-999, `-7` … `-9`) share the decompressor.
const M_LZO1X_1: u8 = 1;
const M_LZO1X_999: u8 = 3;
/// The level byte `lzop -c` records for its default `-3`.
const LEVEL: u8 = 5;

const F_ADLER32_D: u32 = 0x0000_0001;
const F_ADLER32_C: u32 = 0x0000_0002;
const F_H_EXTRA_FIELD: u32 = 0x0000_0040;
const F_CRC32_D: u32 = 0x0000_0100;
const F_CRC32_C: u32 = 0x0000_0200;
const F_H_FILTER: u32 = 0x0000_0800;
const F_H_CRC32: u32 = 0x0000_1000;
const F_OS_UNIX: u32 = 0x0300_0000;

/// Flags of the headers we write: Unix, Adler-32 of the uncompressed data.
const WRITE_FLAGS: u32 = F_OS_UNIX | F_ADLER32_D;

/// LZO1X worst-case expansion of incompressible input (from the LZO FAQ).
const fn max_compressed_len(n: usize) -> usize {
    n + n / 16 + 64 + 3
}

/// Where a stream ended early; part of [`LzopError::Truncated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TruncatedAt {
    Header,
    ExtraField,
    /// Inside the block with this zero-based index, which starts at `offset`.
    Block {
        block: u64,
        offset: u64,
    },
    /// Cleanly after `blocks` complete blocks, but the end marker never came.
    EndMarker {
        blocks: u64,
    },
}

impl fmt::Display for TruncatedAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header => f.write_str("inside the file header"),
            Self::ExtraField => f.write_str("inside the header's extra field"),
            Self::Block { block, offset } => {
                write!(
                    f,
                    "inside block {block} (which starts at byte offset {offset})"
                )
            }
            Self::EndMarker { blocks } => write!(
                f,
                "after {blocks} complete block(s), before the end-of-stream marker"
            ),
        }
    }
}

/// Everything that can be wrong with lzop input. Block numbers are zero-based;
/// offsets count bytes of the compressed stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LzopError {
    #[error(
        "not lzop data: the stream does not start with the lzop magic bytes (bad magic; an encrypted object needs the GPG key id to be set)"
    )]
    BadMagic,
    #[error(
        "unsupported lzop format: file version {version:#06x} needing version {needed:#06x} \
         to extract; this reader handles lzop 0.94 to 1.04 (0x0940 to 0x1040)"
    )]
    UnsupportedVersion { version: u16, needed: u16 },
    #[error(
        "lzop header checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): \
         the header is corrupt"
    )]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("unsupported lzop compression method {method} (only the LZO1X methods 1 to 3 are)")]
    UnsupportedMethod { method: u8 },
    #[error("unsupported lzop filter {filter} (files made with lzop --filter are not supported)")]
    UnsupportedFilter { filter: u32 },
    #[error(
        "lzop checksum mismatch in block {block} at byte offset {offset} ({checksum}): \
         the data is corrupt"
    )]
    BlockChecksum {
        block: u64,
        offset: u64,
        /// Which checksum failed, e.g. "Adler-32 of the uncompressed data".
        checksum: &'static str,
    },
    #[error(
        "lzop block {block} at byte offset {offset} claims {len} uncompressed bytes, more than \
         the 256 KiB lzop allows: the data is corrupt"
    )]
    BlockTooLarge { block: u64, offset: u64, len: u32 },
    #[error(
        "lzop block {block} at byte offset {offset} has impossible sizes ({c_len} bytes \
         compressed, {d_len} uncompressed): the data is corrupt"
    )]
    BadBlockLength {
        block: u64,
        offset: u64,
        c_len: u32,
        d_len: u32,
    },
    #[error(
        "lzop block {block} at byte offset {offset} does not decompress ({reason}): \
         the data is corrupt"
    )]
    CorruptBlock {
        block: u64,
        offset: u64,
        reason: &'static str,
    },
    #[error("lzop data is truncated: stream ended {at}")]
    Truncated { at: TruncatedAt },
    #[error(
        "lzop data has trailing data: {} at byte offset {offset}, after the end-of-stream \
         marker (an object must hold exactly one lzop stream)",
        trailing_what(.second_stream)
    )]
    TrailingData { offset: u64, second_stream: bool },
}

fn trailing_what(second_stream: &bool) -> &'static str {
    if *second_stream {
        "a second lzop stream starts"
    } else {
        "unexpected bytes follow"
    }
}

impl From<LzopError> for io::Error {
    /// `InvalidData`, keeping the [`LzopError`] so callers can `downcast`.
    fn from(e: LzopError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// liblzo must be initialised once per process before any other call; the
/// call also verifies that the C library agrees with us on type sizes.
fn init_lzo() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: lzo_init has no preconditions; it only compares the type
        // sizes lzo-sys passes with those liblzo was compiled with.
        let r = unsafe { lzo_sys::lzoconf::lzo_init() };
        assert_eq!(r, LZO_E_OK, "liblzo2 initialisation failed ({r})");
    });
}

/// Writes one lzop stream: [`header`](Self::header), then one
/// [`compress_block`](Self::compress_block) per block of at most
/// [`BLOCK_SIZE`] bytes, then [`trailer`](Self::trailer).
pub struct Compressor {
    mtime: u32,
    mode: u32,
    /// LZO1X-1's hash dictionary, reused across blocks; `u64` for alignment.
    wrkmem: Box<[u64]>,
    /// Output buffer. Each block is split off and frozen; once the consumer
    /// drops it, `reserve` reclaims the allocation instead of allocating anew.
    out: BytesMut,
}

impl Compressor {
    pub fn new(mtime_secs: u32, mode: u32) -> Self {
        init_lzo();
        let words = (lzo_sys::lzo1x::LZO1X_1_MEM_COMPRESS as usize).div_ceil(8);
        Self {
            mtime: mtime_secs,
            mode,
            wrkmem: vec![0u64; words].into_boxed_slice(),
            out: BytesMut::new(),
        }
    }

    pub fn header(&self) -> Bytes {
        let mut h = BytesMut::with_capacity(38);
        h.put_slice(&MAGIC);
        h.put_u16(VERSION);
        h.put_u16(LIB_VERSION);
        h.put_u16(VERSION_NEEDED);
        h.put_u8(M_LZO1X_1);
        h.put_u8(LEVEL);
        h.put_u32(WRITE_FLAGS);
        h.put_u32(self.mode);
        h.put_u32(self.mtime);
        h.put_u32(0); // mtime_high
        h.put_u8(0); // no file name
        let sum = adler2::adler32_slice(&h[MAGIC.len()..]);
        h.put_u32(sum);
        h.freeze()
    }

    /// Compresses one block; stored raw when LZO does not make it smaller,
    /// exactly as lzop decides.
    ///
    /// # Panics
    /// If `block` is empty (that would encode the end marker) or larger than
    /// [`BLOCK_SIZE`] (lzop would reject the stream).
    pub fn compress_block(&mut self, block: &[u8]) -> Bytes {
        assert!(
            !block.is_empty() && block.len() <= BLOCK_SIZE,
            "lzop block must hold 1 to {BLOCK_SIZE} bytes, got {}",
            block.len()
        );
        let d_len = block.len() as u32;
        self.out.reserve(12 + max_compressed_len(block.len()));
        self.out.put_u32(d_len);
        self.out.put_u32(0); // c_len, patched below
        self.out.put_u32(adler2::adler32_slice(block));

        let spare = self.out.spare_capacity_mut();
        debug_assert!(spare.len() >= max_compressed_len(block.len()));
        let mut c_len = spare.len();
        // SAFETY: `block` is valid for reads of its length; `spare` has room for
        // LZO1X's worst-case output (reserved above), which lzo1x_1_compress
        // never exceeds; `wrkmem` is LZO1X_1_MEM_COMPRESS bytes, 8-aligned, and
        // ours alone (&mut self). LZO writes the output length to `c_len`.
        let r = unsafe {
            lzo_sys::lzo1x::lzo1x_1_compress(
                block.as_ptr(),
                block.len(),
                spare.as_mut_ptr().cast(),
                &mut c_len,
                self.wrkmem.as_mut_ptr().cast(),
            )
        };
        assert_eq!(
            r, LZO_E_OK,
            "lzo1x_1_compress cannot fail, yet returned {r}"
        );

        if c_len < block.len() {
            // SAFETY: lzo1x_1_compress initialised the first `c_len` spare bytes.
            unsafe { self.out.set_len(12 + c_len) };
            self.out[4..8].copy_from_slice(&(c_len as u32).to_be_bytes());
        } else {
            self.out[4..8].copy_from_slice(&d_len.to_be_bytes());
            self.out.put_slice(block);
        }
        self.out.split().freeze()
    }

    /// The end-of-stream marker: a block with zero uncompressed bytes.
    pub fn trailer() -> Bytes {
        Bytes::from_static(&[0; 4])
    }
}

/// The interesting fields of a parsed lzop header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub method: u8,
    pub level: u8,
    pub flags: u32,
    pub mode: u32,
    pub mtime: u64,
    pub name: Vec<u8>,
}

/// Header and extra-field checksum: Adler-32, or CRC-32 with `F_H_CRC32`.
enum HeaderSum {
    Adler(adler2::Adler32),
    Crc(crc32fast::Hasher),
}

impl HeaderSum {
    fn new(flags: u32) -> Self {
        if flags & F_H_CRC32 != 0 {
            Self::Crc(crc32fast::Hasher::new())
        } else {
            Self::Adler(adler2::Adler32::new())
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Adler(a) => a.write_slice(data),
            Self::Crc(c) => c.update(data),
        }
    }

    fn value(&self) -> u32 {
        match self {
            Self::Adler(a) => a.checksum(),
            Self::Crc(c) => c.clone().finalize(),
        }
    }
}

enum State {
    Header,
    /// The optional extra field is skipped as it arrives, so a (corrupt) huge
    /// length cannot make us buffer unbounded input.
    ExtraLen {
        sum: HeaderSum,
    },
    ExtraData {
        sum: HeaderSum,
        remaining: u32,
    },
    ExtraSum {
        sum: HeaderSum,
    },
    Blocks {
        index: u64,
    },
    Done,
    /// Errors are sticky, so a caller that ignores one cannot `finish` cleanly.
    Failed(LzopError),
}

/// Incremental lzop reader: [`push`](Self::push) input as it arrives, take
/// decoded blocks with [`next_block`](Self::next_block) until it returns
/// `None`, repeat; at end of input call [`finish`](Self::finish).
/// Buffers at most one block plus the last pushed input. Once a call fails,
/// every later call returns the same error.
pub struct Decompressor {
    /// Input not yet consumed.
    buf: BytesMut,
    /// Stream offset of `buf[0]`, for error messages.
    offset: u64,
    state: State,
    header: Option<Header>,
    /// Output buffer, reclaimed like [`Compressor`]'s.
    out: BytesMut,
}

impl Default for Decompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Decompressor {
    pub fn new() -> Self {
        init_lzo();
        Self {
            buf: BytesMut::new(),
            offset: 0,
            state: State::Header,
            header: None,
            out: BytesMut::new(),
        }
    }

    /// The stream's header, once it has been read.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Buffers `input`. Fails at once if the end marker has already been read
    /// and `input` is not empty.
    pub fn push(&mut self, input: &[u8]) -> Result<(), LzopError> {
        match &self.state {
            State::Failed(e) => Err(e.clone()),
            State::Done => check_trailing(input, self.offset).inspect_err(|e| self.fail(e)),
            _ => {
                self.buf.extend_from_slice(input);
                Ok(())
            }
        }
    }

    /// The next decoded block, or `None` if more input is needed (or the
    /// stream is complete).
    pub fn next_block(&mut self) -> Result<Option<Bytes>, LzopError> {
        self.advance().inspect_err(|e| self.fail(e))
    }

    fn fail(&mut self, e: &LzopError) {
        self.state = State::Failed(e.clone());
        self.buf = BytesMut::new();
    }

    fn advance(&mut self) -> Result<Option<Bytes>, LzopError> {
        loop {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Header => {
                    let Some((header, len)) = parse_header(&self.buf)? else {
                        self.state = State::Header;
                        return Ok(None);
                    };
                    self.consume(len);
                    self.state = if header.flags & F_H_EXTRA_FIELD != 0 {
                        State::ExtraLen {
                            sum: HeaderSum::new(header.flags),
                        }
                    } else {
                        State::Blocks { index: 0 }
                    };
                    self.header = Some(header);
                }
                State::ExtraLen { mut sum } => {
                    if self.buf.len() < 4 {
                        self.state = State::ExtraLen { sum };
                        return Ok(None);
                    }
                    sum.update(&self.buf[..4]);
                    let remaining = self.buf.get_u32();
                    self.offset += 4;
                    self.state = State::ExtraData { sum, remaining };
                }
                State::ExtraData { mut sum, remaining } => {
                    let n = self.buf.len().min(remaining as usize);
                    sum.update(&self.buf[..n]);
                    self.consume(n);
                    let remaining = remaining - n as u32;
                    if remaining > 0 {
                        self.state = State::ExtraData { sum, remaining };
                        return Ok(None);
                    }
                    self.state = State::ExtraSum { sum };
                }
                State::ExtraSum { sum } => {
                    if self.buf.len() < 4 {
                        self.state = State::ExtraSum { sum };
                        return Ok(None);
                    }
                    let stored = self.buf.get_u32();
                    self.offset += 4;
                    let computed = sum.value();
                    if stored != computed {
                        return Err(LzopError::HeaderChecksum { stored, computed });
                    }
                    self.state = State::Blocks { index: 0 };
                }
                State::Blocks { index } => {
                    self.state = State::Blocks { index };
                    return self.read_block(index);
                }
                State::Done => return Ok(None),
                State::Failed(e) => {
                    self.state = State::Failed(e.clone());
                    return Err(e);
                }
            }
        }
    }

    /// Succeeds only if the end-of-stream marker was read. Call it at end of
    /// input, after `next_block` returned `None`.
    pub fn finish(self) -> Result<(), LzopError> {
        let at = match self.state {
            State::Done => return Ok(()),
            State::Failed(e) => return Err(e),
            State::Header => TruncatedAt::Header,
            State::ExtraLen { .. } | State::ExtraData { .. } | State::ExtraSum { .. } => {
                TruncatedAt::ExtraField
            }
            State::Blocks { index } if self.buf.is_empty() => {
                TruncatedAt::EndMarker { blocks: index }
            }
            State::Blocks { index } => TruncatedAt::Block {
                block: index,
                offset: self.offset,
            },
        };
        Err(LzopError::Truncated { at })
    }

    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.offset += n as u64;
    }

    fn read_block(&mut self, index: u64) -> Result<Option<Bytes>, LzopError> {
        let offset = self.offset;
        let Some(d_len) = be_u32(&self.buf, 0) else {
            return Ok(None);
        };
        if d_len == 0 {
            self.consume(4);
            self.state = State::Done;
            let rest = self.buf.split();
            check_trailing(&rest, self.offset)?;
            return Ok(None);
        }
        if d_len as usize > BLOCK_SIZE {
            return Err(LzopError::BlockTooLarge {
                block: index,
                offset,
                len: d_len,
            });
        }
        let Some(c_len) = be_u32(&self.buf, 4) else {
            return Ok(None);
        };
        if c_len == 0 || c_len > d_len {
            return Err(LzopError::BadBlockLength {
                block: index,
                offset,
                c_len,
                d_len,
            });
        }

        // lzop stores the compressed-data checksums only for blocks that are
        // actually compressed; for raw blocks they would equal the d-checksums.
        let flags = self.header.as_ref().map_or(0, |h| h.flags);
        let compressed = c_len < d_len;
        let d_sums = [F_ADLER32_D, F_CRC32_D].map(|f| flags & f != 0);
        let c_sums = [F_ADLER32_C, F_CRC32_C].map(|f| compressed && flags & f != 0);
        let n_sums = d_sums.iter().chain(&c_sums).filter(|&&on| on).count();
        let data_start = 8 + 4 * n_sums;
        let total = data_start + c_len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }

        // Stored checksums in file order: Adler-D, CRC-D, Adler-C, CRC-C.
        let mut sums = (0..n_sums).map(|i| be_u32(&self.buf, 8 + 4 * i).unwrap_or(0));
        let [d_adler, d_crc] = d_sums.map(|on| if on { sums.next() } else { None });
        let [c_adler, c_crc] = c_sums.map(|on| if on { sums.next() } else { None });
        let bad_sum = |checksum| LzopError::BlockChecksum {
            block: index,
            offset,
            checksum,
        };

        let data = &self.buf[data_start..total];
        if c_adler.is_some_and(|s| s != adler2::adler32_slice(data)) {
            return Err(bad_sum("Adler-32 of the compressed data"));
        }
        if c_crc.is_some_and(|s| s != crc32fast::hash(data)) {
            return Err(bad_sum("CRC-32 of the compressed data"));
        }

        let block = if compressed {
            decompress_into(&mut self.out, data, d_len as usize).map_err(|reason| {
                LzopError::CorruptBlock {
                    block: index,
                    offset,
                    reason,
                }
            })?;
            self.consume(total);
            self.out.split().freeze()
        } else {
            // Raw block: hand out the input bytes themselves, no copy.
            self.offset += total as u64;
            let mut raw = self.buf.split_to(total);
            raw.advance(data_start);
            raw.freeze()
        };

        if d_adler.is_some_and(|s| s != adler2::adler32_slice(&block)) {
            return Err(bad_sum("Adler-32 of the uncompressed data"));
        }
        if d_crc.is_some_and(|s| s != crc32fast::hash(&block)) {
            return Err(bad_sum("CRC-32 of the uncompressed data"));
        }
        self.state = State::Blocks { index: index + 1 };
        Ok(Some(block))
    }
}

/// Decompresses `src` into `out`, which must come back holding exactly
/// `d_len` bytes, as lzop requires.
fn decompress_into(out: &mut BytesMut, src: &[u8], d_len: usize) -> Result<(), &'static str> {
    out.clear();
    out.reserve(d_len);
    let mut len = d_len;
    // SAFETY: `src` is valid for reads of its length; `out` has at least
    // `d_len` bytes of spare capacity, and we pass `d_len` as the output limit,
    // which the _safe decompressor checks before every write (so corrupt input
    // yields an error, never an overrun). LZO1X decompression needs no wrkmem.
    let r = unsafe {
        lzo_sys::lzo1x::lzo1x_decompress_safe(
            src.as_ptr(),
            src.len(),
            out.spare_capacity_mut().as_mut_ptr().cast(),
            &mut len,
            std::ptr::null_mut(),
        )
    };
    match r {
        LZO_E_OK if len == d_len => {
            // SAFETY: liblzo wrote `len` == `d_len` bytes to the spare capacity.
            unsafe { out.set_len(d_len) };
            Ok(())
        }
        LZO_E_OK => Err("it decompressed to fewer bytes than its header says"),
        LZO_E_INPUT_OVERRUN => Err("LZO input overrun"),
        LZO_E_OUTPUT_OVERRUN => Err("it decompressed to more bytes than its header says"),
        LZO_E_LOOKBEHIND_OVERRUN => Err("LZO lookbehind overrun"),
        LZO_E_EOF_NOT_FOUND => Err("LZO end-of-block marker missing"),
        LZO_E_INPUT_NOT_CONSUMED => Err("LZO data continues past its end-of-block marker"),
        _ => Err("LZO decompression error"),
    }
}

/// Anything after the end marker is an error; a zero-length chunk is not.
fn check_trailing(rest: &[u8], offset: u64) -> Result<(), LzopError> {
    if rest.is_empty() {
        return Ok(());
    }
    // A prefix of the magic counts too: the second stream may arrive in pieces.
    let n = rest.len().min(MAGIC.len());
    Err(LzopError::TrailingData {
        offset,
        second_stream: rest[..n] == MAGIC[..n],
    })
}

fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at + 4)?;
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

/// Reads a complete header (through its checksum) from the start of `buf`;
/// `Ok(None)` if `buf` does not hold all of it yet.
fn parse_header(buf: &[u8]) -> Result<Option<(Header, usize)>, LzopError> {
    // Reject non-lzop input as soon as the first differing byte arrives.
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        return Err(LzopError::BadMagic);
    }
    let Some(raw) = RawHeader::read(buf) else {
        return Ok(None);
    };
    // The checksum comes first: when a bit flip has changed the layout (flags,
    // version, name length) every other field is garbage anyway.
    let mut sum = HeaderSum::new(raw.flags);
    sum.update(&buf[MAGIC.len()..raw.checked_end]);
    let computed = sum.value();
    if raw.stored_sum != computed {
        return Err(LzopError::HeaderChecksum {
            stored: raw.stored_sum,
            computed,
        });
    }
    if raw.version < MIN_VERSION || raw.version_needed > VERSION {
        return Err(LzopError::UnsupportedVersion {
            version: raw.version,
            needed: raw.version_needed,
        });
    }
    if !(M_LZO1X_1..=M_LZO1X_999).contains(&raw.method) {
        return Err(LzopError::UnsupportedMethod { method: raw.method });
    }
    if raw.filter != 0 {
        return Err(LzopError::UnsupportedFilter { filter: raw.filter });
    }
    let header = Header {
        version: raw.version,
        method: raw.method,
        level: raw.level,
        flags: raw.flags,
        mode: raw.mode,
        mtime: u64::from(raw.mtime_high) << 32 | u64::from(raw.mtime_low),
        name: raw.name.to_vec(),
    };
    Ok(Some((header, raw.len)))
}

struct RawHeader<'a> {
    version: u16,
    version_needed: u16,
    method: u8,
    level: u8,
    flags: u32,
    filter: u32,
    mode: u32,
    mtime_low: u32,
    mtime_high: u32,
    name: &'a [u8],
    /// End of the checksummed range, which starts right after the magic.
    checked_end: usize,
    stored_sum: u32,
    len: usize,
}

impl<'a> RawHeader<'a> {
    /// Pure layout, as lzop's read_header: `None` if `buf` is too short.
    fn read(buf: &'a [u8]) -> Option<Self> {
        let mut c = Cursor {
            buf,
            pos: MAGIC.len(),
        };
        let version = c.u16()?;
        let _lib_version = c.u16()?;
        // Pre-0.94 headers lack these fields; read them as lzop would so the
        // checksum decides, and reject the old version only afterwards.
        let new_layout = version >= MIN_VERSION;
        let version_needed = if new_layout { c.u16()? } else { 0 };
        let method = c.u8()?;
        let level = if new_layout { c.u8()? } else { 0 };
        let flags = c.u32()?;
        let filter = if flags & F_H_FILTER != 0 { c.u32()? } else { 0 };
        let mode = c.u32()?;
        let mtime_low = c.u32()?;
        let mtime_high = if new_layout { c.u32()? } else { 0 };
        let name_len = c.u8()?;
        let name = c.take(name_len.into())?;
        let checked_end = c.pos;
        let stored_sum = c.u32()?;
        Some(Self {
            version,
            version_needed,
            method,
            level,
            flags,
            filter,
            mode,
            mtime_low,
            mtime_high,
            name,
            checked_end,
            stored_sum,
            len: c.pos,
        })
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let b = self.buf.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(b)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// Compresses `input` into one lzop stream: header, one compressed block per
/// [`BLOCK_SIZE`] bytes of input (the last may be shorter), trailer. Holds at
/// most one block of input and one of output. An input error ends the stream
/// with that error (and no trailer).
///
/// Compression runs inline in `poll_next`: LZO1X-1 takes well under a
/// millisecond per block, short enough not to need a blocking thread.
pub fn compress_stream(input: crate::ByteStream, mtime_secs: u32, mode: u32) -> crate::ByteStream {
    let state = Rechunker {
        input,
        input_done: false,
        chunk: Bytes::new(),
        pending: BytesMut::new(),
        compressor: Compressor::new(mtime_secs, mode),
        phase: Phase::Header,
    };
    stream::try_unfold(state, |mut st| async move {
        let out = match st.phase {
            Phase::Header => {
                st.phase = Phase::Blocks;
                st.compressor.header()
            }
            Phase::Blocks => match st.next_compressed().await? {
                Some(block) => block,
                None => {
                    st.phase = Phase::Done;
                    Compressor::trailer()
                }
            },
            Phase::Done => return Ok(None),
        };
        Ok(Some((out, st)))
    })
    .boxed()
}

#[derive(Clone, Copy)]
enum Phase {
    Header,
    Blocks,
    Done,
}

struct Rechunker {
    input: crate::ByteStream,
    input_done: bool,
    /// Unconsumed rest of the last input chunk.
    chunk: Bytes,
    /// A partial block gathered from small chunks.
    pending: BytesMut,
    compressor: Compressor,
    phase: Phase,
}

impl Rechunker {
    async fn next_compressed(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            // Whole blocks inside a large chunk are compressed in place.
            if self.pending.is_empty() && self.chunk.len() >= BLOCK_SIZE {
                let block = self.chunk.split_to(BLOCK_SIZE);
                return Ok(Some(self.compressor.compress_block(&block)));
            }
            let take = (BLOCK_SIZE - self.pending.len()).min(self.chunk.len());
            self.pending.extend_from_slice(&self.chunk.split_to(take));
            if self.pending.len() == BLOCK_SIZE || (self.input_done && !self.pending.is_empty()) {
                let out = self.compressor.compress_block(&self.pending);
                self.pending.clear();
                return Ok(Some(out));
            }
            if self.input_done {
                return Ok(None);
            }
            match self.input.next().await {
                Some(chunk) => self.chunk = chunk?,
                None => self.input_done = true,
            }
        }
    }
}

/// Decompresses one lzop stream, yielding each block as it is decoded.
/// Input errors pass through; format errors are `InvalidData` wrapping an
/// [`LzopError`]. The input is read to its end: a missing end marker or any
/// data after it fails the stream (after the good blocks were yielded).
pub fn decompress_stream(input: crate::ByteStream) -> crate::ByteStream {
    stream::try_unfold(
        (input, Some(Decompressor::new())),
        |(mut input, mut decoder)| async move {
            // `decoder` is only taken by `finish`, after which we end.
            let Some(dec) = decoder.as_mut() else {
                return Ok(None);
            };
            loop {
                if let Some(block) = dec.next_block()? {
                    return Ok(Some((block, (input, decoder))));
                }
                match input.next().await {
                    Some(chunk) => dec.push(&chunk?)?,
                    None => break,
                }
            }
            decoder.take().map_or(Ok(()), Decompressor::finish)?;
            Ok(None)
        },
    )
    .boxed()
}
