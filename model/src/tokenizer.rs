//! Byte-level tokenizer: token id = byte value, so 256 ids; id 0 (the NUL byte) doubles as
//! padding and is never a training target, as in the seed's enwik8 setup.

pub const VOCAB: usize = 256;

pub fn encode(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// Bytes back to text; invalid UTF-8 (a sample cut mid-character) is shown with U+FFFD, and
/// padding/ids beyond a byte are dropped.
pub fn decode(ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids
        .iter()
        .filter(|&&i| i > 0 && i < 256)
        .map(|&i| i as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
