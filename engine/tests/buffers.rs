//! The recycled CPU buffers keep the lengths a step asks for again, not the ever-longer ones of
//! decoding through a KV cache (which once filled the cache toward its cap in a long reply).
//! One test in its own binary: the cache is process-wide.

use palm_engine::cpu::buffers::{cached_bytes, give, take};

const MIN: usize = 1 << 16;

#[test]
fn growing_lengths_are_not_kept_but_repeated_ones_are() {
    let base = cached_bytes();
    // A growing cache: every length asked for once, then dropped.
    for i in 0..300 {
        give(take(MIN + 3 * i));
    }
    assert_eq!(cached_bytes(), base, "one-off lengths were kept");
    // A step's buffer: kept from its second request on, and handed out again.
    let len = MIN * 3 + 1;
    give(take(len));
    assert_eq!(cached_bytes(), base);
    let first = take(len);
    let addr = first.as_ptr();
    give(first);
    assert_eq!(cached_bytes(), base + len * 4);
    let again = take(len);
    assert_eq!(again.as_ptr(), addr, "the kept buffer is reused");
    assert_eq!(cached_bytes(), base);
    give(again);
    // Thousands of distinct one-off lengths leave the bookkeeping bounded and the step's
    // length still recycled.
    for i in 0..5000 {
        give(take(MIN * 4 + i));
    }
    let v = take(len);
    assert_eq!(v.as_ptr(), addr);
    give(v);
}
