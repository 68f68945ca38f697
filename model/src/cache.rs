//! Key/value cache for incremental decoding: per layer, the rotated keys and the values of
//! every position so far (one shared head, multi-query), each (b, len, dh).
//!
//! Each layer keeps two buffers (b, capacity, dh) and writes every new position into them in
//! place; the capacity doubles when it runs out. Rebuilding the cache by concatenation every
//! token instead made ever-larger buffers that the allocator could not reuse: a long
//! generation's memory grew by about a gigabyte a second. Attention reads the first `len`
//! positions as a view (its rows are contiguous; batches are `capacity` rows apart).

use crate::Result;
use palm_engine::Tensor;

/// The smallest capacity a layer's buffers start with (positions).
const MIN_CAPACITY: usize = 64;

#[derive(Default)]
pub struct KvCache {
    /// Per layer: keys and values (b, capacity, dh), the first `len` positions filled.
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
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
    /// Positions each layer's buffers hold before they grow (0 before the first step).
    pub fn capacity(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dims()[1],
            _ => 0,
        }
    }

    /// Layer `layer`'s keys and values (b, n, dh) for the positions after the cached ones: they
    /// are stored, and every position's keys and values so far (b, len + n, dh) come back.
    /// Call it for every layer, then `advance(n)`.
    pub(crate) fn extend(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (len, n) = (self.len, k.dims()[1]);
        let need = len + n;
        let slot = &mut self.layers[layer];
        // Inside a gradient the cache cannot be written in place: keep the concatenation,
        // whose backward reaches the earlier positions.
        if k.tracks() || v.tracks() || slot.as_ref().is_some_and(|(k, _)| k.tracks()) {
            let (k, v) = match slot.take() {
                Some((pk, pv)) => (
                    Tensor::cat(&[&pk.narrow(1, 0, len)?, &k], 1)?,
                    Tensor::cat(&[&pv.narrow(1, 0, len)?, &v], 1)?,
                ),
                None => (k, v),
            };
            *slot = Some((k.clone(), v.clone()));
            return Ok((k, v));
        }
        let fits = slot.as_ref().is_some_and(|(k, _)| k.dims()[1] >= need);
        if !fits {
            let capacity = need.next_power_of_two().max(MIN_CAPACITY);
            let grown = |old: Option<Tensor>, like: &Tensor| -> Result<Tensor> {
                let mut dims = like.dims().to_vec();
                dims[1] = capacity;
                let mut buf = Tensor::zeros(&dims, like.dtype(), like.device())?;
                if let Some(old) = old.filter(|_| len > 0) {
                    buf.write_slice(1, 0, &old.narrow(1, 0, len)?)?;
                }
                Ok(buf)
            };
            let (pk, pv) = slot.take().unzip();
            *slot = Some((grown(pk, &k)?, grown(pv, &v)?));
        }
        let Some((kb, vb)) = slot.as_mut() else {
            unreachable!("the layer's buffers were just made")
        };
        kb.write_slice(1, len, &k)?;
        vb.write_slice(1, len, &v)?;
        Ok((kb.narrow(1, 0, need)?, vb.narrow(1, 0, need)?))
    }

    /// Count `n` more positions as cached (after every layer's `extend`).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
