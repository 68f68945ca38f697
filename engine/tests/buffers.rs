//! The recycled CPU buffers keep the capacities a step asks for again, and a length that grows
//! a little every time (decoding through a KV cache) reuses a few buffers instead of keeping
//! one per length (which once ran a long generation out of address space).
//! In their own binary: the cache is process-wide.

use palm_engine::cpu::buffers::{cached_bytes, class, give, take};

const MIN: usize = 1 << 16;

#[test]
fn capacity_classes_round_up_by_at_most_a_quarter() {
    for len in (1..70_000).chain([MIN, MIN + 1, 3 * MIN + 1, usize::MAX / 2 + 7, usize::MAX]) {
        let c = class(len);
        assert!(c >= len, "class({len}) = {c}");
        assert!(c - len <= len / 4 + 1, "class({len}) = {c} wastes too much");
        assert_eq!(class(c), c, "class({len}) = {c} is not a class");
    }
    assert_eq!(class(MIN), MIN, "a power of two is its own class");
}

#[test]
fn growing_lengths_share_a_buffer_and_repeated_ones_are_reused() {
    let base = cached_bytes();
    // A growing length, as decoding asks: one class, so one buffer kept (from the class's
    // second request on) and handed out again.
    give(take(MIN + 1));
    let first = take(MIN + 2);
    let addr = first.as_ptr();
    give(first);
    for i in 1..300 {
        let v = take(MIN + 1 + 3 * i);
        assert_eq!(v.len(), MIN + 1 + 3 * i);
        assert_eq!(
            v.as_ptr(),
            addr,
            "length {} did not reuse its class's buffer",
            v.len()
        );
        give(v);
    }
    assert_eq!(cached_bytes(), base + class(MIN + 1) * 4);
    // Lengths across many classes keep at most one buffer per class asked for more than once.
    for i in 0..2000 {
        give(take(MIN * 4 + 97 * i));
    }
    let classes: std::collections::BTreeSet<usize> =
        (0..2000).map(|i| class(MIN * 4 + 97 * i)).collect();
    let bound: usize = classes.iter().map(|c| c * 4).sum::<usize>() + class(MIN + 1) * 4;
    assert!(cached_bytes() <= base + bound);
    // A step's buffer: kept from its second request on, and handed out again.
    let len = MIN * 3 + 1;
    give(take(len));
    let before = cached_bytes();
    let first = take(len);
    let addr = first.as_ptr();
    give(first);
    assert_eq!(cached_bytes(), before + class(len) * 4);
    let again = take(len);
    assert_eq!(again.as_ptr(), addr, "the kept buffer is reused");
    assert_eq!(cached_bytes(), before);
    give(again);
}
