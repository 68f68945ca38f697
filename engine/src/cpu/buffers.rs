//! Recycling of large f32 buffers. A training step allocates the same large activations and
//! gradients every time; fresh allocations of that size come straight from the kernel (mmap),
//! and touching them costs a page fault and a page clear per 4 KiB — about 15% of an `enwik8`
//! step. Buffers of at least `MIN_LEN` elements are therefore kept on drop, by capacity
//! class (below), up to `MAX_BYTES` in all, and handed out again by `take`.
//!
//! Only as many buffers of a capacity are kept as `take` has handed out and not yet seen back:
//! a buffer made elsewhere (a `to_vec`, the optimizer's new weights) is freed on drop, not kept,
//! so the cache holds at most the step's working set instead of growing by every buffer ever
//! dropped (which grew a `tiny` run by ~2.4 MB a step).
//!
//! Buffers are kept by capacity class, not exact length: a request is rounded up to one of four
//! steps per power of two (at most 25% more address space, pages past the length never
//! touched). Decoding asks for a slightly longer buffer every token (attention's scratch grows
//! with the keys); exact lengths made each one a new size, and keeping them all ran a long
//! generation out of address space. With classes, a growing length reuses a few buffers.
//! Classes asked for only once are still not kept.

use std::collections::HashMap;
use std::sync::Mutex;

const MIN_LEN: usize = 1 << 16;
const MAX_BYTES: usize = 4 << 30;

#[derive(Default)]
struct Cache {
    by_capacity: HashMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
    /// Buffers of each capacity handed out by `take` and not yet given back.
    outstanding: HashMap<usize, usize>,
    /// How often `take` was asked for each capacity (only repeated ones are kept).
    requests: HashMap<usize, u32>,
}

/// Distinct capacities remembered before the ones asked for only once are forgotten.
const MAX_LENGTHS: usize = 4096;

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// The capacity a request of `len` elements gets: `len` rounded up to the next of four steps
/// per power of two (a power of two stays itself).
pub fn class(len: usize) -> usize {
    if len < 8 {
        return len;
    }
    let step = 1usize << (usize::BITS - 1 - len.leading_zeros() - 2);
    len.div_ceil(step).checked_mul(step).unwrap_or(len)
}

/// A buffer of `len` elements with unspecified (initialised) contents: for outputs that are
/// written in full. Its capacity is `class(len)` when `len` is large enough to recycle.
pub fn take(len: usize) -> Vec<f32> {
    if len < MIN_LEN {
        return vec![0.0; len];
    }
    let capacity = class(len);
    if let Ok(mut guard) = CACHE.lock() {
        let cache = guard.get_or_insert_with(Cache::default);
        *cache.outstanding.entry(capacity).or_default() += 1;
        if cache.requests.len() >= MAX_LENGTHS {
            // Capacities asked for once with none of their buffers out.
            let Cache {
                requests,
                outstanding,
                ..
            } = &mut *cache;
            requests.retain(|l, n| *n > 1 || outstanding.get(l).is_some_and(|&o| o > 0));
            outstanding.retain(|_, o| *o > 0);
        }
        let n = cache.requests.entry(capacity).or_default();
        *n = n.saturating_add(1);
        if let Some(mut v) = cache
            .by_capacity
            .get_mut(&capacity)
            .and_then(|list| list.pop())
        {
            cache.bytes -= capacity * 4;
            v.resize(len, 0.0);
            return v;
        }
    }
    // Zeroed allocation: fresh pages arrive zeroed, and the ones past `len` are never touched.
    let mut v = vec![0.0; capacity];
    v.truncate(len);
    v
}

/// A zero-filled buffer of `len` elements.
pub fn zeros(len: usize) -> Vec<f32> {
    let mut v = take(len);
    v.fill(0.0);
    v
}

/// Keep a buffer for reuse (called when CPU storage is dropped).
pub fn give(v: Vec<f32>) {
    let capacity = v.capacity();
    if capacity < MIN_LEN || class(capacity) != capacity {
        return;
    }
    if let Ok(mut guard) = CACHE.lock() {
        let cache = guard.get_or_insert_with(Cache::default);
        // Keep it only in place of a buffer `take` handed out (see the module docs).
        let Some(out) = cache.outstanding.get_mut(&capacity).filter(|n| **n > 0) else {
            return;
        };
        *out -= 1;
        let repeated = cache.requests.get(&capacity).is_some_and(|&n| n > 1);
        if repeated && cache.bytes + capacity * 4 <= MAX_BYTES {
            cache.bytes += capacity * 4;
            cache.by_capacity.entry(capacity).or_default().push(v);
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

/// f32 elements read in place, or gathered into a buffer from `take` that goes back to the
/// cache when this is dropped (a gathered operand dropped as a plain `Vec` was freed, and the
/// next step paid page faults for fresh memory in its place).
pub enum F32s<'a> {
    Borrowed(&'a [f32]),
    Taken(Vec<f32>),
}

impl std::ops::Deref for F32s<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            F32s::Borrowed(s) => s,
            F32s::Taken(v) => v,
        }
    }
}

impl Drop for F32s<'_> {
    fn drop(&mut self) {
        if let F32s::Taken(v) = self {
            give(std::mem::take(v));
        }
    }
}
