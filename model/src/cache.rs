//! Key/value cache for incremental decoding: per layer, the rotated keys and the values of
//! every position so far (one shared head, multi-query), each (b, len, dh).

use palm_engine::Tensor;

#[derive(Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    pub(crate) len: usize,
}

impl KvCache {
    pub fn new(depth: usize) -> Self {
        KvCache {
            layers: vec![None; depth],
            len: 0,
        }
    }
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
