//! PostgreSQL 15's on-disk WAL layout: page headers and record headers.
//!
//! Byte for byte (all little-endian, as on the x86-64 and arm64 machines
//! PostgreSQL writes them on):
//!
//! ```text
//! XLogPageHeaderData (24 bytes; every page)      XLogLongPageHeaderData (40 bytes; page 0 of a segment)
//!   0  u16 xlp_magic     0xD110                    0..24 the short header above
//!   2  u16 xlp_info      XLP_* flags               24  u64 xlp_sysid      system identifier
//!   4  u32 xlp_tli       timeline of this page     32  u32 xlp_seg_size   segment size
//!   8  u64 xlp_pageaddr  LSN of this page          36  u32 xlp_xlog_blcksz 8192
//!  16  u32 xlp_rem_len   bytes of a record continued from the previous page
//!  20  4 bytes padding (MAXALIGN)
//!
//! XLogRecord (24 bytes), at a MAXALIGNed LSN, possibly split across pages
//!   0  u32 xl_tot_len    header + body
//!   4  u32 xl_xid
//!   8  u64 xl_prev       LSN of the previous record
//!  16  u8  xl_info       high nibble: rmgr-specific kind
//!  17  u8  xl_rmid       resource manager
//!  18  2 bytes padding (zero, covered by the CRC)
//!  20  u32 xl_crc        CRC-32C of the body, then of bytes 0..20
//! body: block references (none in walship's records), then the main data:
//!   u8 255, u8 len, data        (XLR_BLOCK_ID_DATA_SHORT, len < 256)
//!   u8 254, u32 len, data       (XLR_BLOCK_ID_DATA_LONG)
//! ```

use super::crc;
use super::lsn::Lsn;

/// `XLOG_BLCKSZ`.
pub const PAGE_SIZE: usize = 8192;
/// `XLOG_PAGE_MAGIC` of PostgreSQL 15.
pub const PAGE_MAGIC: u16 = 0xD110;
/// `SizeOfXLogShortPHD`.
pub const SHORT_PAGE_HEADER: usize = 24;
/// `SizeOfXLogLongPHD`.
pub const LONG_PAGE_HEADER: usize = 40;
/// `SizeOfXLogRecord`.
pub const RECORD_HEADER: usize = 24;
/// Bytes of the record header covered by its CRC (`offsetof(XLogRecord, xl_crc)`).
const CRC_COVERED_HEADER: usize = 20;

/// `XLP_FIRST_IS_CONTRECORD`: the page begins with the rest of a record.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `XLP_LONG_HEADER`.
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// `XLP_BKP_REMOVABLE`.
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// `XLP_ALL_FLAGS`.
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// `XLR_BLOCK_ID_DATA_SHORT`.
pub const BLOCK_ID_DATA_SHORT: u8 = 255;
/// `XLR_BLOCK_ID_DATA_LONG`.
pub const BLOCK_ID_DATA_LONG: u8 = 254;

/// The largest record walship writes or accepts (PostgreSQL 15's
/// `XLogRecordMaxSize`, 1020 MiB).
pub const MAX_RECORD_LEN: u32 = 1020 * 1024 * 1024;

/// `RM_XLOG_ID`, and its `XLOG_SWITCH` kind: the rest of the segment is unused.
pub const RM_XLOG_ID: u8 = 0;
pub const XLOG_SWITCH: u8 = 0x40;
/// The resource manager id walship's own records carry (custom range 128-255).
pub const RM_WALSHIP_ID: u8 = 200;

/// PostgreSQL 15's built-in resource managers, by id (`rmgrlist.h`).
const BUILTIN_RMGRS: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];

/// PostgreSQL's `RmgrIdIsValid`: a built-in id or one from the custom range.
pub fn rmgr_is_valid(rmid: u8) -> bool {
    usize::from(rmid) < BUILTIN_RMGRS.len() || rmid >= 128
}

/// The name pg_waldump shows for a resource manager; walship's own is
/// `walship`.
pub fn rmgr_name(rmid: u8) -> std::borrow::Cow<'static, str> {
    match BUILTIN_RMGRS.get(usize::from(rmid)) {
        Some(name) => (*name).into(),
        None if rmid == RM_WALSHIP_ID => "walship".into(),
        None => format!("custom{rmid:03}").into(),
    }
}

/// A page header as read from disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub tli: u32,
    pub pageaddr: Lsn,
    pub rem_len: u32,
    /// Present on a segment's first page.
    pub long: Option<LongHeader>,
}

/// The fields only the first page of a segment carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongHeader {
    pub sysid: u64,
    pub seg_size: u32,
    pub blcksz: u32,
}

impl PageHeader {
    /// Size on disk.
    pub fn size(&self) -> usize {
        if self.long.is_some() {
            LONG_PAGE_HEADER
        } else {
            SHORT_PAGE_HEADER
        }
    }

    /// Decodes the 24 bytes of a short header (and, when `bytes` holds 40
    /// and the header says it is long, the long part).
    pub fn decode(bytes: &[u8]) -> PageHeader {
        let magic = u16_at(bytes, 0);
        let info = u16_at(bytes, 2);
        let long =
            (info & XLP_LONG_HEADER != 0 && bytes.len() >= LONG_PAGE_HEADER).then(|| LongHeader {
                sysid: u64_at(bytes, 24),
                seg_size: u32_at(bytes, 32),
                blcksz: u32_at(bytes, 36),
            });
        PageHeader {
            magic,
            info,
            tli: u32_at(bytes, 4),
            pageaddr: Lsn(u64_at(bytes, 8)),
            rem_len: u32_at(bytes, 16),
            long,
        }
    }

    /// Encodes into the first `self.len()` bytes of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        out[..self.size()].fill(0);
        out[0..2].copy_from_slice(&self.magic.to_le_bytes());
        out[2..4].copy_from_slice(&self.info.to_le_bytes());
        out[4..8].copy_from_slice(&self.tli.to_le_bytes());
        out[8..16].copy_from_slice(&self.pageaddr.0.to_le_bytes());
        out[16..20].copy_from_slice(&self.rem_len.to_le_bytes());
        if let Some(long) = self.long {
            out[24..32].copy_from_slice(&long.sysid.to_le_bytes());
            out[32..36].copy_from_slice(&long.seg_size.to_le_bytes());
            out[36..40].copy_from_slice(&long.blcksz.to_le_bytes());
        }
    }
}

/// A record header (`XLogRecord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub tot_len: u32,
    pub xid: u32,
    pub prev: Lsn,
    pub info: u8,
    pub rmid: u8,
    pub crc: u32,
}

impl RecordHeader {
    /// Decodes the first [`RECORD_HEADER`] bytes of `bytes`.
    #[inline]
    pub fn decode(bytes: &[u8]) -> RecordHeader {
        RecordHeader {
            tot_len: u32_at(bytes, 0),
            xid: u32_at(bytes, 4),
            prev: Lsn(u64_at(bytes, 8)),
            info: bytes[16],
            rmid: bytes[17],
            crc: u32_at(bytes, 20),
        }
    }
}

/// The CRC PostgreSQL stores in `xl_crc`: CRC-32C over the body, continued
/// over the header's first 20 bytes. `record` is the whole record, header
/// first.
#[inline]
pub fn record_crc(record: &[u8]) -> u32 {
    crc::of_pieces(&record[RECORD_HEADER..], &record[..CRC_COVERED_HEADER])
}

/// A record before it is linked into the WAL: its header's fields and its
/// body (the main-data block header, then the data), with the body's
/// CRC-32C, which needs no lock to compute. [`RecordParts::write_to`] links
/// and seals it once the prev-link is known.
///
/// The header is kept as the words it is made of and its CRC taken from
/// them, and the body's CRC from the caller's data: a record is laid out
/// once, where it goes, and never read back. (Laying it out first and then
/// copying it in, with CRCs read from the copy, made an append 1.6 times
/// slower: `benches/wal.rs`, BENCHMARKS.md §1a.)
pub struct RecordParts<'a> {
    /// `xl_tot_len` and `xl_xid`: the header's first 8 bytes.
    len_xid: u64,
    /// `xl_info`, `xl_rmid` and the two padding bytes before `xl_crc`.
    info_rmid: u32,
    /// The main-data block header's bytes, little-endian, and how many.
    block_header: u64,
    block_header_len: usize,
    data: &'a [u8],
    body_crc: u32,
}

impl<'a> RecordParts<'a> {
    /// A record whose main data is `data`. Empty `data` gets no main-data
    /// block at all (as PostgreSQL's `XLogRecordAssemble` does), so the
    /// record is its header. The caller keeps the whole record within
    /// [`MAX_RECORD_LEN`].
    #[inline(always)]
    pub fn new(xid: u32, info: u8, rmid: u8, data: &'a [u8]) -> RecordParts<'a> {
        let (block_header, block_header_len) = match data.len() {
            0 => (0, 0),
            n @ 1..=255 => (u64::from(BLOCK_ID_DATA_SHORT) | (n as u64) << 8, 2),
            n => (u64::from(BLOCK_ID_DATA_LONG) | (n as u64) << 8, 5),
        };
        let tot_len = (RECORD_HEADER + block_header_len + data.len()) as u64;
        RecordParts {
            len_xid: tot_len | u64::from(xid) << 32,
            info_rmid: u32::from(info) | u32::from(rmid) << 8,
            block_header,
            block_header_len,
            data,
            body_crc: crc::of_body(block_header, block_header_len, data),
        }
    }

    /// `xl_tot_len`: the whole record's length, header included.
    #[inline]
    pub fn total_len(&self) -> usize {
        self.len_xid as u32 as usize
    }

    /// Appends the whole record to `out`, linked to the record at `prev`
    /// and sealed with its CRC (over the body, then the header's first 20
    /// bytes, as PostgreSQL does), then zeros up to `padded` bytes in all.
    #[inline]
    pub fn write_to(&self, prev: Lsn, out: &mut Vec<u8>, padded: usize) {
        debug_assert!(padded >= self.total_len());
        let crc = crc::append_header(self.body_crc, self.len_xid, prev.0, self.info_rmid);
        out.reserve(padded);
        out.extend_from_slice(&self.len_xid.to_le_bytes());
        out.extend_from_slice(&prev.0.to_le_bytes());
        out.extend_from_slice(&self.info_rmid.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        match self.block_header_len {
            2 => out.extend_from_slice(&(self.block_header as u16).to_le_bytes()),
            5 => out.extend_from_slice(&self.block_header.to_le_bytes()[..5]),
            _ => {}
        }
        out.extend_from_slice(self.data);
        out.extend_from_slice(&[0; 8][..padded - self.total_len()]);
    }
}

/// The main data of a record body (what follows the header), when the body
/// holds nothing else: PostgreSQL records with block references return
/// `None`, as do bodies whose length fields do not add up.
pub fn main_data(body: &[u8]) -> Option<&[u8]> {
    let Some(first) = body.first() else {
        return Some(body);
    };
    match *first {
        BLOCK_ID_DATA_SHORT => {
            let len = usize::from(*body.get(1)?);
            (body.len() == 2 + len).then(|| &body[2..])
        }
        BLOCK_ID_DATA_LONG => {
            let len = usize::try_from(u32_at(body.get(..5)?, 1)).ok()?;
            (body.len() == 5 + len).then(|| &body[5..])
        }
        _ => None,
    }
}

/// Reads little-endian fields off a byte string in order, checking every
/// length: walship's record payloads and its own metadata files use it.
pub struct LeReader<'a> {
    bytes: &'a [u8],
}

impl<'a> LeReader<'a> {
    pub fn new(bytes: &'a [u8]) -> LeReader<'a> {
        LeReader { bytes }
    }

    /// The next `n` bytes, if there are that many.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32_at(b, 0))
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64_at(b, 0))
    }

    /// A `u32` length, then that many bytes.
    pub fn prefixed(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// True when every field has been read.
    pub fn is_done(&self) -> bool {
        self.bytes.is_empty()
    }
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_layout_and_crc() {
        let mut rec = vec![0xEE];
        let parts = RecordParts::new(7, 0x10, RM_WALSHIP_ID, b"hello");
        parts.write_to(Lsn(0x1000028), &mut rec, 31);
        assert_eq!(rec.remove(0), 0xEE, "appended after what was there");
        assert_eq!(rec.len(), 24 + 2 + 5);
        assert_eq!(parts.total_len(), rec.len());
        let h = RecordHeader::decode(&rec);
        assert_eq!(h.tot_len, 31);
        assert_eq!(h.xid, 7);
        assert_eq!(h.prev, Lsn(0x1000028));
        assert_eq!((h.info, h.rmid), (0x10, RM_WALSHIP_ID));
        assert_eq!(h.crc, record_crc(&rec));
        assert_eq!(main_data(&rec[24..]), Some(&b"hello"[..]));
        let long = vec![9u8; 300];
        let mut rec = Vec::new();
        RecordParts::new(0, 0, RM_WALSHIP_ID, &long).write_to(Lsn(0), &mut rec, 24 + 5 + 300);
        assert_eq!(rec.len(), 24 + 5 + 300);
        assert_eq!(RecordHeader::decode(&rec).crc, record_crc(&rec));
        assert_eq!(main_data(&rec[24..]), Some(&long[..]));
        let mut rec = Vec::new();
        RecordParts::new(0, XLOG_SWITCH, RM_XLOG_ID, &[]).write_to(Lsn(0x28), &mut rec, 24);
        assert_eq!(rec.len(), RECORD_HEADER);
        assert_eq!(RecordHeader::decode(&rec).prev, Lsn(0x28));
        assert_eq!(RecordHeader::decode(&rec).crc, record_crc(&rec));
        assert_eq!(main_data(&rec[24..]), Some(&[][..]));
    }

    #[test]
    fn page_header_round_trips() {
        let h = PageHeader {
            magic: PAGE_MAGIC,
            info: XLP_LONG_HEADER | XLP_FIRST_IS_CONTRECORD,
            tli: 3,
            pageaddr: Lsn(0x2000000),
            rem_len: 77,
            long: Some(LongHeader {
                sysid: 0x1234_5678_9ABC_DEF0,
                seg_size: 1 << 24,
                blcksz: PAGE_SIZE as u32,
            }),
        };
        let mut buf = [0xFFu8; LONG_PAGE_HEADER];
        h.encode(&mut buf);
        assert_eq!(PageHeader::decode(&buf), h);
    }

    #[test]
    fn rmgr_names_match_pg_waldump() {
        assert_eq!(rmgr_name(0), "XLOG");
        assert_eq!(rmgr_name(10), "Heap");
        assert_eq!(rmgr_name(21), "LogicalMessage");
        assert_eq!(rmgr_name(130), "custom130");
        assert!(!rmgr_is_valid(22));
        assert!(rmgr_is_valid(128));
    }
}
