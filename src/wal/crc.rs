//! CRC-32C for WAL records, which are small: a PostgreSQL 15 segment under
//! pgbench averages 65 bytes a record, and each record's CRC is taken in two
//! pieces (the body, then the header's first 20 bytes).
//!
//! The `crc32c` crate is built for long inputs: it aligns the start byte by
//! byte, runs three interleaved streams with table-driven recombination, and
//! finishes byte by byte. On a 65-byte record that bookkeeping costs more
//! than the CRC itself, and it was a third of `walship dump --verify`'s time.
//! Here short inputs take one SSE 4.2 stream of unaligned 8-byte steps with
//! a 4/2/1-byte tail (at most three extra steps); long ones, and machines
//! without SSE 4.2, go to the crate.
//!
//! Invariant: [`append`] returns exactly what `crc32c::crc32c_append` does
//! for every input (the unit tests compare them over every length up to
//! well past the cut-over, at every alignment).

/// Inputs at least this long go to the `crc32c` crate, whose three streams
/// win once there is enough to interleave.
const LONG_INPUT: usize = 256;

/// Continues the CRC-32C `crc` (as returned by an earlier call, or 0 to
/// start) over `bytes`.
#[inline]
pub fn append(crc: u32, bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if bytes.len() < LONG_INPUT && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU supports SSE 4.2, checked just above.
        return unsafe { sse42::append(crc, bytes) };
    }
    crc32c::crc32c_append(crc, bytes)
}

/// The CRC-32C of `first` followed by `second`: a record's `xl_crc`, over
/// its body and then its header's first 20 bytes, with one dispatch for
/// both pieces.
#[inline]
pub fn of_pieces(first: &[u8], second: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if first.len().max(second.len()) < LONG_INPUT && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU supports SSE 4.2, checked just above.
        return unsafe { sse42::of_pieces(first, second) };
    }
    append(append(0, first), second)
}

/// Continues `crc` over a record header's first 20 bytes, given as the
/// little-endian words they are: `xl_tot_len` and `xl_xid`, `xl_prev`, then
/// `xl_info`, `xl_rmid` and padding. Taken from registers, so that a header
/// is never stored only to be read back for its CRC.
#[inline]
pub fn append_header(crc: u32, len_xid: u64, prev: u64, info_rmid: u32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU supports SSE 4.2, checked just above.
        return unsafe { sse42::append_header(crc, len_xid, prev, info_rmid) };
    }
    let mut bytes = [0; 20];
    bytes[..8].copy_from_slice(&len_xid.to_le_bytes());
    bytes[8..16].copy_from_slice(&prev.to_le_bytes());
    bytes[16..].copy_from_slice(&info_rmid.to_le_bytes());
    crc32c::crc32c_append(crc, &bytes)
}

/// The CRC-32C of a record's body: its main-data block header, given as
/// the little-endian word whose first `block_header_len` bytes (0, 2 or 5)
/// it is, then `data`. One call, with the block header from a register.
#[inline]
pub fn of_body(block_header: u64, block_header_len: usize, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if block_header_len <= 2
        && data.len() < LONG_INPUT
        && std::arch::is_x86_feature_detected!("sse4.2")
    {
        // SAFETY: the CPU supports SSE 4.2, checked just above.
        return unsafe { sse42::of_body(block_header, block_header_len, data) };
    }
    let head = crc32c::crc32c(&block_header.to_le_bytes()[..block_header_len]);
    crc32c::crc32c_append(head, data)
}

#[cfg(target_arch = "x86_64")]
mod sse42 {
    use std::arch::x86_64::{_mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};

    /// A short body: no block header, or the 2-byte one (the caller
    /// sends the 5-byte one, which comes with 256 bytes or more, to the
    /// crate).
    #[target_feature(enable = "sse4.2")]
    pub fn of_body(block_header: u64, block_header_len: usize, data: &[u8]) -> u32 {
        let head = match block_header_len {
            0 => !0,
            _ => _mm_crc32_u16(!0, block_header as u16),
        };
        append(!head, data)
    }

    #[target_feature(enable = "sse4.2")]
    pub fn append_header(crc: u32, len_xid: u64, prev: u64, info_rmid: u32) -> u32 {
        let wide = _mm_crc32_u64(_mm_crc32_u64(u64::from(!crc), len_xid), prev);
        // The instruction leaves the upper half zero.
        !_mm_crc32_u32(wide as u32, info_rmid)
    }

    #[target_feature(enable = "sse4.2")]
    pub fn of_pieces(first: &[u8], second: &[u8]) -> u32 {
        append(append(0, first), second)
    }

    /// One stream of the CRC32 instruction; x86 loads need no alignment.
    #[target_feature(enable = "sse4.2")]
    #[inline]
    pub fn append(crc: u32, bytes: &[u8]) -> u32 {
        let mut words = bytes.chunks_exact(8);
        let mut wide = u64::from(!crc);
        for word in &mut words {
            let mut w = [0; 8];
            w.copy_from_slice(word);
            wide = _mm_crc32_u64(wide, u64::from_le_bytes(w));
        }
        // The instruction leaves the upper half zero.
        let mut crc = wide as u32;
        let mut tail = words.remainder();
        if let [a, b, c, d, rest @ ..] = tail {
            crc = _mm_crc32_u32(crc, u32::from_le_bytes([*a, *b, *c, *d]));
            tail = rest;
        }
        if let [a, b, rest @ ..] = tail {
            crc = _mm_crc32_u16(crc, u16::from_le_bytes([*a, *b]));
            tail = rest;
        }
        if let [a] = tail {
            crc = _mm_crc32_u8(crc, *a);
        }
        !crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_crate_at_every_length_and_alignment() {
        let data: Vec<u8> = (0..2 * LONG_INPUT + 16)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect();
        for start in 0..8 {
            for len in 0..=2 * LONG_INPUT {
                let piece = &data[start..start + len];
                for seed in [0, 0xDEAD_BEEF] {
                    assert_eq!(
                        append(seed, piece),
                        crc32c::crc32c_append(seed, piece),
                        "start {start}, length {len}, seed {seed:08X}"
                    );
                }
            }
        }
    }

    #[test]
    fn pieces_are_one_input() {
        let data: Vec<u8> = (0..=255).collect();
        for cut in [0, 1, 20, 100, 255, 256] {
            let (a, b) = data.split_at(cut);
            assert_eq!(of_pieces(a, b), crc32c::crc32c(&data), "cut at {cut}");
        }
    }

    #[test]
    fn a_header_in_words_is_its_bytes() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0x0000_0007_0000_007Eu64.to_le_bytes());
        bytes.extend_from_slice(&0x0000_0001_0123_4568u64.to_le_bytes());
        bytes.extend_from_slice(&0x0000_8020u32.to_le_bytes());
        for seed in [0, 0xDEAD_BEEF] {
            assert_eq!(
                append_header(seed, 0x0000_0007_0000_007E, 0x0000_0001_0123_4568, 0x8020),
                crc32c::crc32c_append(seed, &bytes)
            );
        }
    }

    #[test]
    fn a_body_is_its_block_header_then_its_data() {
        let data: Vec<u8> = (0..300).map(|i| (i * 7) as u8).collect();
        for len in [0, 1, 100, 255, 256, 300] {
            let data = &data[..len];
            let (word, n) = match len {
                0 => (0, 0),
                1..=255 => (0xFF | (len as u64) << 8, 2),
                _ => (0xFE | (len as u64) << 8, 5),
            };
            let mut body = word.to_le_bytes()[..n].to_vec();
            body.extend_from_slice(data);
            assert_eq!(of_body(word, n, data), crc32c::crc32c(&body), "{len} bytes");
        }
    }

    #[test]
    fn known_value() {
        // The CRC-32C check value of the iSCSI standard (RFC 3720).
        assert_eq!(append(0, b"123456789"), 0xE306_9283);
    }
}
