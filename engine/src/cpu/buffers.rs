//! Recycling of large f32 buffers. A training step allocates the same large activations and
//! gradients every time; fresh allocations of that size come straight from the kernel (mmap),
//! and touching them costs a page fault and a page clear per 4 KiB — about 15% of an `enwik8`
//! step. Buffers of at least `MIN_LEN` elements are therefore kept on drop, by exact length,
//! up to `MAX_BYTES` in all, and handed out again by `take`.

use std::collections::HashMap;
use std::sync::Mutex;

const MIN_LEN: usize = 1 << 16;
const MAX_BYTES: usize = 4 << 30;

#[derive(Default)]
struct Cache {
    by_len: HashMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// A buffer of `len` elements with unspecified (initialised) contents: for outputs that are
/// written in full.
pub fn take(len: usize) -> Vec<f32> {
    if len >= MIN_LEN
        && let Ok(mut guard) = CACHE.lock()
        && let Some(cache) = guard.as_mut()
        && let Some(v) = cache.by_len.get_mut(&len).and_then(|list| list.pop())
    {
        cache.bytes -= len * 4;
        return v;
    }
    vec![0.0; len]
}

/// A zero-filled buffer of `len` elements.
pub fn zeros(len: usize) -> Vec<f32> {
    let mut v = take(len);
    v.fill(0.0);
    v
}

/// Keep a buffer for reuse (called when CPU storage is dropped).
pub fn give(mut v: Vec<f32>) {
    let len = v.len();
    if len < MIN_LEN || v.capacity() != len {
        return;
    }
    if let Ok(mut guard) = CACHE.lock() {
        let cache = guard.get_or_insert_with(Cache::default);
        if cache.bytes + len * 4 <= MAX_BYTES {
            cache.bytes += len * 4;
            cache
                .by_len
                .entry(len)
                .or_default()
                .push(std::mem::take(&mut v));
        }
    }
}
