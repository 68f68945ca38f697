//! Arbitrary bytes as a safetensors file, through every loader (`palm_tests::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    palm_tests::fuzz::safetensors_input(data);
});
