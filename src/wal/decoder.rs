//! A WAL decoder that does no I/O: feed it bytes, get records, "need more",
//! or the end of valid WAL with its reason and LSN.
//!
//! The same decoder serves `walship dump`, crash recovery, the receiver and
//! the archiver's verification. It checks what PostgreSQL's `xlogreader.c`
//! checks: page magic, flags, timeline order, page address and the long
//! header's fields; the continuation flag and remaining length of every page
//! a record spans; each record's length, resource manager, prev-link and
//! CRC-32C.
//!
//! Invariant: a record is returned only when all of its bytes were fed and
//! every check passed; after the first failed check nothing more is returned.

use std::fmt;

use super::format::{
    self, PageHeader, RecordHeader, LONG_PAGE_HEADER, MAX_RECORD_LEN, PAGE_MAGIC, PAGE_SIZE,
    RECORD_HEADER, RM_XLOG_ID, SHORT_PAGE_HEADER, XLOG_SWITCH, XLP_ALL_FLAGS,
    XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER,
};
use super::lsn::{Lsn, SegmentSize};

/// One decoded record, borrowed from the decoder until the next call.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Where the record's header begins.
    pub lsn: Lsn,
    /// Where the next record may begin: the end of this one, MAXALIGNed
    /// (for a segment switch, the start of the next segment).
    pub end: Lsn,
    /// The whole record, header first.
    pub bytes: &'a [u8],
}

impl<'a> Record<'a> {
    /// The record's header, decoded from its first bytes. Not kept as a
    /// field: copying the decoder's header into the returned record read
    /// back, as one 16-byte load, fields just stored one by one, and that
    /// failed store forwarding stalled `walship dump --verify` for 15 % of
    /// its time.
    #[inline]
    pub fn header(&self) -> RecordHeader {
        RecordHeader::decode(self.bytes)
    }

    /// What follows the header.
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[RECORD_HEADER..]
    }

    /// The main data, for records that carry nothing else.
    pub fn main_data(&self) -> Option<&'a [u8]> {
        format::main_data(self.body())
    }
}

/// Why the valid WAL stops where it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Zeros where the next record would begin: the normal end of WAL.
    Zeros,
    /// The page where the next record would begin still holds an older
    /// page (a recycled segment's leftovers): also a normal end of WAL.
    StalePage { page: Lsn, found: Lsn },
    /// A record began but its continuation is missing (zeros or a stale
    /// page where it should go on): a write torn by a crash.
    TornRecord { page: Lsn },
    /// A page header that does not check.
    BadPageHeader { page: Lsn, what: String },
    /// A record header or body that does not check.
    BadRecord { what: String },
}

/// The end of valid WAL: `lsn` is where the next record would have begun,
/// which is where a writer resumes (a record torn or damaged anywhere is
/// overwritten from its start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndOfWal {
    pub lsn: Lsn,
    pub reason: EndReason,
}

impl EndOfWal {
    /// True when the WAL simply stops (zeros or a stale page at a record
    /// boundary); false when something is damaged.
    pub fn is_clean(&self) -> bool {
        matches!(self.reason, EndReason::Zeros | EndReason::StalePage { .. })
    }
}

impl fmt::Display for EndOfWal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            EndReason::Zeros => write!(f, "end of WAL at {}: zeros where the next record would begin", self.lsn),
            EndReason::StalePage { page, found } => write!(
                f,
                "end of WAL at {}: page {} holds old contents (page address {})",
                self.lsn, page, found
            ),
            EndReason::TornRecord { page } => write!(
                f,
                "incomplete record at {}: its continuation on page {} is missing (a write torn by a crash)",
                self.lsn, page
            ),
            EndReason::BadPageHeader { page, what } => {
                write!(f, "invalid page header at {page}: {what}")
            }
            EndReason::BadRecord { what } => write!(f, "invalid record at {}: {}", self.lsn, what),
        }
    }
}

/// The outcome of one [`Decoder::decode`] call.
#[derive(Debug)]
pub enum Step<'a> {
    Record(Record<'a>),
    /// Every byte fed was consumed; feed more, starting at [`Decoder::pos`].
    NeedMore,
    End(EndOfWal),
}

/// What the decoder is in the middle of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The next record begins at the next MAXALIGNed position.
    BetweenRecords,
    /// Gathering a record's bytes into `rec`.
    InRecord,
    /// Skipping the tail of a record begun before the start position.
    SkippingContinuation { left: u64 },
}

/// Checks the decoder applies beyond the format itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expect {
    /// The cluster's system identifier; when `None`, the first long page
    /// header seen fixes it.
    pub sysid: Option<u64>,
    /// Pages of a later timeline than this are refused.
    pub max_timeline: Option<u32>,
}

/// See the module documentation.
pub struct Decoder {
    seg_size: SegmentSize,
    expect: Expect,
    /// LSN of the next byte to feed.
    pos: Lsn,
    state: State,
    /// Page header bytes gathered so far for the page at `pos`.
    page_header: Vec<u8>,
    last_page_tli: u32,
    /// Record bytes gathered so far, header first.
    rec: Vec<u8>,
    rec_lsn: Lsn,
    /// `xl_tot_len` of the record being gathered, once its first 4 bytes are in.
    tot_len: Option<u32>,
    /// The previous record, when known: the next record's prev-link must name it.
    prev: Option<Lsn>,
    ended: Option<EndOfWal>,
}

impl Decoder {
    /// Decodes from the record that begins at `lsn`; `prev` is the record
    /// before it, if known (otherwise its prev-link need only point back).
    pub fn at_record(
        seg_size: SegmentSize,
        lsn: Lsn,
        prev: Option<Lsn>,
        expect: Expect,
    ) -> Decoder {
        Decoder::new(seg_size, lsn, prev, expect, State::BetweenRecords)
    }

    /// Decodes from the start of the page at `page` (typically a segment's
    /// start), skipping the tail of any record begun on an earlier page.
    pub fn at_page_start(seg_size: SegmentSize, page: Lsn, expect: Expect) -> Decoder {
        let page = Lsn(page.0 - page.page_offset());
        Decoder::new(
            seg_size,
            page,
            None,
            expect,
            State::SkippingContinuation { left: 0 },
        )
    }

    fn new(
        seg_size: SegmentSize,
        pos: Lsn,
        prev: Option<Lsn>,
        expect: Expect,
        state: State,
    ) -> Decoder {
        let mut d = Decoder {
            seg_size,
            expect,
            pos,
            state,
            page_header: Vec::with_capacity(LONG_PAGE_HEADER),
            last_page_tli: 0,
            rec: Vec::new(),
            rec_lsn: pos,
            tot_len: None,
            prev,
            ended: None,
        };
        // A record never begins inside a page header: starting there would
        // take the header's tail for a record and skip its checks.
        let off = pos.page_offset() as usize;
        if state == State::BetweenRecords
            && off > 0
            && off < d.page_header_len(Lsn(pos.0 - off as u64))
        {
            d.bad_record(format!(
                "start LSN {pos} lies inside a page header; records begin after it"
            ));
        }
        d
    }

    /// The LSN of the next byte to feed.
    pub fn pos(&self) -> Lsn {
        self.pos
    }

    /// True when no record is half-decoded: the next byte belongs to
    /// padding, a page header or the next record's header.
    pub fn at_record_boundary(&self) -> bool {
        self.state == State::BetweenRecords
    }

    /// Where the next record would begin: [`Decoder::pos`] rounded up to a
    /// record boundary, past a page header when it falls on one. Only
    /// meaningful between records.
    pub fn next_record_lsn(&self) -> Lsn {
        let lsn = self.pos.align();
        if lsn.page_offset() == 0 {
            Lsn(lsn.0 + self.page_header_len(lsn) as u64)
        } else {
            lsn
        }
    }

    fn page_header_len(&self, page: Lsn) -> usize {
        if page.segment_offset(self.seg_size) == 0 {
            LONG_PAGE_HEADER
        } else {
            SHORT_PAGE_HEADER
        }
    }

    /// Consumes bytes that begin at [`Decoder::pos`]. Returns how many were
    /// consumed and what came of them. After a record, call again with the
    /// rest of the input (from the new `pos`: a segment switch jumps it).
    ///
    /// Always inlined into the few loops that call it: returning each
    /// record's `Step` through memory cost 9 % of `walship dump --verify`.
    #[inline(always)]
    pub fn decode<'a>(&'a mut self, input: &'a [u8]) -> (usize, Step<'a>) {
        let mut used = 0;
        loop {
            if let Some(end) = &self.ended {
                return (used, Step::End(end.clone()));
            }
            let rest = &input[used..];
            let page_off = self.pos.page_offset() as usize;
            // Past the longest page header, the page's header is done
            // whichever kind it is.
            if page_off < LONG_PAGE_HEADER {
                let page_start = Lsn(self.pos.0 - page_off as u64);
                let header_len = self.page_header_len(page_start);
                if page_off < header_len {
                    if rest.is_empty() {
                        return (used, Step::NeedMore);
                    }
                    let take = (header_len - page_off).min(rest.len());
                    self.page_header.extend_from_slice(&rest[..take]);
                    used += take;
                    self.pos.0 += take as u64;
                    if self.page_header.len() == header_len {
                        self.check_page_header(page_start);
                        self.page_header.clear();
                    }
                    continue;
                }
            }
            let room = PAGE_SIZE - page_off;
            match self.state {
                State::SkippingContinuation { left } => {
                    if left == 0 {
                        self.state = State::BetweenRecords;
                        continue;
                    }
                    if rest.is_empty() {
                        return (used, Step::NeedMore);
                    }
                    let take = (left.min(room as u64) as usize).min(rest.len());
                    used += take;
                    self.pos.0 += take as u64;
                    self.state = State::SkippingContinuation {
                        left: left - take as u64,
                    };
                }
                State::BetweenRecords => {
                    if rest.is_empty() {
                        return (used, Step::NeedMore);
                    }
                    let pad = (self.pos.align().0 - self.pos.0) as usize;
                    if pad > 0 {
                        let take = pad.min(rest.len());
                        used += take;
                        self.pos.0 += take as u64;
                        continue;
                    }
                    self.rec_lsn = self.pos;
                    // Fast path: the whole record lies on this page and in the
                    // input, so it is checked in place, without a copy. A record
                    // that fails any check takes the slow path, which reports it.
                    if rest.len() >= RECORD_HEADER && room >= RECORD_HEADER {
                        let tot = format::u32_at(rest, 0) as usize;
                        if tot >= RECORD_HEADER && tot <= room && tot <= rest.len() {
                            let bytes = &input[used..used + tot];
                            let h = RecordHeader::decode(bytes);
                            if self.header_problem(&h).is_none()
                                && format::record_crc(bytes) == h.crc
                            {
                                // The padding to the next record goes too, when
                                // it was fed (it never crosses a page).
                                let padded =
                                    (Lsn(self.pos.0 + tot as u64).align().0 - self.pos.0) as usize;
                                let skip = if padded <= rest.len() { padded } else { tot };
                                used += skip;
                                self.pos.0 += skip as u64;
                                self.accept(&h);
                                let record = Record {
                                    lsn: self.rec_lsn,
                                    end: self.pos.align(),
                                    bytes,
                                };
                                return (used, Step::Record(record));
                            }
                        }
                    }
                    self.rec.clear();
                    self.tot_len = None;
                    self.state = State::InRecord;
                }
                State::InRecord => {
                    if rest.is_empty() {
                        return (used, Step::NeedMore);
                    }
                    let want = match self.tot_len {
                        None => 4,
                        Some(_) if self.rec.len() < RECORD_HEADER => RECORD_HEADER,
                        Some(t) => t as usize,
                    };
                    let take = (want - self.rec.len()).min(room).min(rest.len());
                    self.rec.extend_from_slice(&rest[..take]);
                    used += take;
                    self.pos.0 += take as u64;
                    if self.rec.len() < want {
                        continue;
                    }
                    match self.tot_len {
                        None => self.check_length(),
                        Some(_) if self.rec.len() == RECORD_HEADER => self.check_record_header(),
                        Some(_) => {}
                    }
                    if self.ended.is_some() {
                        continue;
                    }
                    if self.tot_len == Some(self.rec.len() as u32) && self.finish_record() {
                        return (used, Step::Record(self.last_record()));
                    }
                }
            }
        }
    }

    fn end(&mut self, lsn: Lsn, reason: EndReason) {
        self.ended = Some(EndOfWal { lsn, reason });
    }

    fn bad_record(&mut self, what: String) {
        self.end(self.rec_lsn, EndReason::BadRecord { what });
    }

    fn check_length(&mut self) {
        let tot_len = format::u32_at(&self.rec, 0);
        if tot_len == 0 {
            self.end(self.rec_lsn, EndReason::Zeros);
        } else if (tot_len as usize) < RECORD_HEADER {
            self.bad_record(format!(
                "record length {tot_len} is less than the header's {RECORD_HEADER} bytes"
            ));
        } else if tot_len > MAX_RECORD_LEN {
            self.bad_record(format!(
                "record length {tot_len} exceeds the maximum of {MAX_RECORD_LEN}"
            ));
        } else {
            self.tot_len = Some(tot_len);
        }
    }

    fn check_record_header(&mut self) {
        let h = RecordHeader::decode(&self.rec);
        if let Some(what) = self.header_problem(&h) {
            self.bad_record(what);
        }
    }

    /// What is wrong with a record header at `rec_lsn` beyond its length:
    /// its resource manager or its prev-link.
    fn header_problem(&self, h: &RecordHeader) -> Option<String> {
        if !format::rmgr_is_valid(h.rmid) {
            return Some(format!("invalid resource manager ID {}", h.rmid));
        }
        match self.prev {
            Some(prev) if h.prev != prev => Some(format!(
                "record's prev-link is {} but the previous record is at {}",
                h.prev, prev
            )),
            None if h.prev >= self.rec_lsn => Some(format!(
                "record's prev-link {} does not point backwards",
                h.prev
            )),
            _ => None,
        }
    }

    /// Moves past a record that checked: it becomes the previous record,
    /// and a segment switch jumps to the next segment.
    fn accept(&mut self, header: &RecordHeader) {
        self.prev = Some(self.rec_lsn);
        self.state = State::BetweenRecords;
        if header.rmid == RM_XLOG_ID
            && header.info & 0xF0 == XLOG_SWITCH
            && self.pos.segment_offset(self.seg_size) != 0
        {
            self.pos = self
                .pos
                .segno(self.seg_size)
                .next()
                .start_lsn(self.seg_size);
        }
    }

    /// Checks a complete record's CRC and moves past it; false if it failed.
    fn finish_record(&mut self) -> bool {
        let header = RecordHeader::decode(&self.rec);
        let crc = format::record_crc(&self.rec);
        if crc != header.crc {
            self.bad_record(format!(
                "incorrect CRC-32C: record says {:08X}, contents give {:08X}",
                header.crc, crc
            ));
            return false;
        }
        self.accept(&header);
        true
    }

    fn last_record(&self) -> Record<'_> {
        Record {
            lsn: self.rec_lsn,
            end: self.pos.align(),
            bytes: &self.rec,
        }
    }

    fn check_page_header(&mut self, page: Lsn) {
        let h = PageHeader::decode(&self.page_header);
        let mid_record = self.state == State::InRecord;
        let record_lsn = if mid_record { self.rec_lsn } else { page };
        if self.page_header.iter().all(|&b| b == 0) {
            let reason = if mid_record {
                EndReason::TornRecord { page }
            } else {
                EndReason::Zeros
            };
            return self.end(
                if mid_record {
                    record_lsn
                } else {
                    self.next_record_lsn_at(page)
                },
                reason,
            );
        }
        if h.magic == PAGE_MAGIC && h.pageaddr < page && h.pageaddr.0 % PAGE_SIZE as u64 == 0 {
            let reason = if mid_record {
                EndReason::TornRecord { page }
            } else {
                EndReason::StalePage {
                    page,
                    found: h.pageaddr,
                }
            };
            return self.end(
                if mid_record {
                    record_lsn
                } else {
                    self.next_record_lsn_at(page)
                },
                reason,
            );
        }
        let what = if h.magic != PAGE_MAGIC {
            Some(format!(
                "invalid magic number {:04X} (PostgreSQL 15 writes {PAGE_MAGIC:04X})",
                h.magic
            ))
        } else if h.info & !XLP_ALL_FLAGS != 0 {
            Some(format!("invalid info bits {:04X}", h.info))
        } else if h.pageaddr != page {
            Some(format!(
                "page address is {} where {} was expected",
                h.pageaddr, page
            ))
        } else if (h.info & XLP_LONG_HEADER != 0) != (page.segment_offset(self.seg_size) == 0) {
            Some("long header flag does not match the page's place in its segment".to_string())
        } else if h.tli == 0 || h.tli < self.last_page_tli {
            Some(format!(
                "out-of-sequence timeline {} after timeline {}",
                h.tli, self.last_page_tli
            ))
        } else if self.expect.max_timeline.is_some_and(|max| h.tli > max) {
            Some(format!(
                "timeline {} is newer than the segment's timeline {}",
                h.tli,
                self.expect.max_timeline.unwrap_or_default()
            ))
        } else {
            self.check_long_header(&h)
                .or_else(|| self.check_continuation(&h, mid_record))
        };
        match what {
            // Valid WAL ends before the record the page was to continue, or
            // where the page's first record would have begun.
            Some(what) => {
                let lsn = if mid_record {
                    record_lsn
                } else {
                    self.next_record_lsn_at(page)
                };
                self.end(lsn, EndReason::BadPageHeader { page, what })
            }
            None => {
                self.last_page_tli = h.tli;
                if let State::SkippingContinuation { left: 0 } = self.state {
                    if h.info & XLP_FIRST_IS_CONTRECORD != 0 {
                        self.state = State::SkippingContinuation {
                            left: u64::from(h.rem_len),
                        };
                    }
                }
            }
        }
    }

    fn next_record_lsn_at(&self, page: Lsn) -> Lsn {
        Lsn(page.0 + self.page_header_len(page) as u64)
    }

    fn check_long_header(&mut self, h: &PageHeader) -> Option<String> {
        let long = h.long?;
        if u64::from(long.seg_size) != self.seg_size.bytes() {
            return Some(format!(
                "segment size in the header is {} bytes, expected {}",
                long.seg_size,
                self.seg_size.bytes()
            ));
        }
        if long.blcksz as usize != PAGE_SIZE {
            return Some(format!(
                "page size in the header is {} bytes, expected {PAGE_SIZE}",
                long.blcksz
            ));
        }
        match self.expect.sysid {
            Some(sysid) if sysid != long.sysid => Some(format!(
                "system identifier is {}, expected {} (WAL of another cluster)",
                long.sysid, sysid
            )),
            Some(_) => None,
            None => {
                self.expect.sysid = Some(long.sysid);
                None
            }
        }
    }

    fn check_continuation(&self, h: &PageHeader, mid_record: bool) -> Option<String> {
        let cont = h.info & XLP_FIRST_IS_CONTRECORD != 0;
        if mid_record {
            let left = self.tot_len.unwrap_or(0) as usize - self.rec.len();
            if !cont {
                return Some(format!(
                    "record at {} continues here, but the page has no continuation flag",
                    self.rec_lsn
                ));
            }
            if h.rem_len as usize != left {
                return Some(format!(
                    "remaining length {} does not match the {} bytes left of the record at {}",
                    h.rem_len, left, self.rec_lsn
                ));
            }
        } else if cont && self.state == State::BetweenRecords {
            return Some(format!(
                "page says it continues a record (remaining length {}), but the record before it ended",
                h.rem_len
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_inside_a_page_header_is_refused() {
        let size = SegmentSize::from_mib(1).unwrap();
        let mut d = Decoder::at_record(size, Lsn(0x100008), None, Expect::default());
        let (_, step) = d.decode(&[0u8; 64]);
        match step {
            Step::End(end) => assert!(
                !end.is_clean() && end.to_string().contains("inside a page header"),
                "{end}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
