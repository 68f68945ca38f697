//! Arbitrary bytes as a JSONL (or gzip) file, read as every record type and as a corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    palm_tests::fuzz::jsonl_input(data);
});
