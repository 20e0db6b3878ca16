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

#[cfg(target_arch = "x86_64")]
mod sse42 {
    use std::arch::x86_64::{_mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};

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
    fn known_value() {
        // The CRC-32C check value of the iSCSI standard (RFC 3720).
        assert_eq!(append(0, b"123456789"), 0xE306_9283);
    }
}
