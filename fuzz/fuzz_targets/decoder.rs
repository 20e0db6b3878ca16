//! Fuzzes the WAL decoder: arbitrary bytes, fed in arbitrary chunks, from a
//! page start or a record (see `../decoder_harness.rs` for the input's
//! layout). Run with `cargo +nightly fuzz run decoder`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../decoder_harness.rs"]
mod decoder_harness;

fuzz_target!(|data: &[u8]| {
    decoder_harness::decode_input(data);
});
