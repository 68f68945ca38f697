//! Recycling of large f32 buffers. A training step allocates the same large activations and
//! gradients every time; fresh allocations of that size come straight from the kernel (mmap),
//! and touching them costs a page fault and a page clear per 4 KiB — about 15% of an `enwik8`
//! step. Buffers of at least `MIN_LEN` elements are therefore kept on drop, by exact length,
//! up to `MAX_BYTES` in all, and handed out again by `take`.
//!
//! Only as many buffers of a length are kept as `take` has handed out and not yet seen back:
//! a buffer made elsewhere (a `to_vec`, the optimizer's new weights) is freed on drop, not kept,
//! so the cache holds at most the step's working set instead of growing by every buffer ever
//! dropped (which grew a `tiny` run by ~2.4 MB a step). And only lengths asked for more than
//! once are kept: decoding through a KV cache asks for a new, longer buffer every token, and
//! keeping those (never asked for again) filled the cache toward its cap in a long generation.

use std::collections::HashMap;
use std::sync::Mutex;

const MIN_LEN: usize = 1 << 16;
const MAX_BYTES: usize = 4 << 30;

#[derive(Default)]
struct Cache {
    by_len: HashMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
    /// Buffers of each length handed out by `take` and not yet given back.
    outstanding: HashMap<usize, usize>,
    /// How often `take` was asked for each length (only repeated lengths are kept).
    requests: HashMap<usize, u32>,
}

/// Distinct lengths remembered before the ones asked for only once are forgotten.
const MAX_LENGTHS: usize = 4096;

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// A buffer of `len` elements with unspecified (initialised) contents: for outputs that are
/// written in full.
pub fn take(len: usize) -> Vec<f32> {
    if len >= MIN_LEN
        && let Ok(mut guard) = CACHE.lock()
    {
        let cache = guard.get_or_insert_with(Cache::default);
        *cache.outstanding.entry(len).or_default() += 1;
        if cache.requests.len() >= MAX_LENGTHS {
            // Lengths asked for once (a growing cache) with none of their buffers out.
            let Cache {
                requests,
                outstanding,
                ..
            } = &mut *cache;
            requests.retain(|l, n| *n > 1 || outstanding.get(l).is_some_and(|&o| o > 0));
            outstanding.retain(|_, o| *o > 0);
        }
        let n = cache.requests.entry(len).or_default();
        *n = n.saturating_add(1);
        if let Some(v) = cache.by_len.get_mut(&len).and_then(|list| list.pop()) {
            cache.bytes -= len * 4;
            return v;
        }
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
        // Keep it only in place of a buffer `take` handed out (see the module docs).
        let Some(out) = cache.outstanding.get_mut(&len).filter(|n| **n > 0) else {
            return;
        };
        *out -= 1;
        let repeated = cache.requests.get(&len).is_some_and(|&n| n > 1);
        if repeated && cache.bytes + len * 4 <= MAX_BYTES {
            cache.bytes += len * 4;
            cache
                .by_len
                .entry(len)
                .or_default()
                .push(std::mem::take(&mut v));
        }
    }
}

/// Bytes held for reuse now (for tests and diagnostics).
pub fn cached_bytes() -> usize {
    CACHE
        .lock()
        .map(|g| g.as_ref().map_or(0, |c| c.bytes))
        .unwrap_or(0)
}
