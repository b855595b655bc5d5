//! The HTTP request parser, fed in reads of arbitrary sizes: see `wshub_fuzz::http`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wshub_fuzz::http(data));
