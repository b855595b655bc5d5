//! An open connection's decoder, fed a byte stream in reads of arbitrary sizes: see
//! `wshub_fuzz::frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wshub_fuzz::frames(data));
