//! The CUDA memory pool's bookkeeping, on the CPU, over a fake device allocator.

use palm_engine::Error;
use palm_engine::cuda::pool::{
    self, LARGE_ROUND, MID_SEGMENT, MIN_BLOCK, MIN_LARGE_ALLOC, PoolKind, SMALL_SEGMENT, SMALL_SIZE,
};
use palm_engine::cuda::{DeviceAllocator, MemoryPool};
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

const MIB: usize = 1 << 20;
const BASE: u64 = 0x7f00_0000_0000;

/// Device memory as address ranges, with a capacity; records every misuse instead of panicking
/// inside the pool, so a test can assert there was none.
#[derive(Default)]
struct FakeState {
    live: BTreeMap<u64, usize>,
    capacity: usize,
    used: usize,
    next: u64,
    allocs: u64,
    frees: u64,
    fail_other: bool,
    misuse: Vec<String>,
}

#[derive(Clone)]
struct Fake(Rc<RefCell<FakeState>>);

impl Fake {
    fn new(capacity: usize) -> Self {
        Fake(Rc::new(RefCell::new(FakeState {
            capacity,
            next: BASE,
            ..Default::default()
        })))
    }
    fn state(&self) -> std::cell::Ref<'_, FakeState> {
        self.0.borrow()
    }
}

impl DeviceAllocator for Fake {
    fn alloc(&mut self, bytes: usize) -> palm_engine::Result<u64> {
        let mut s = self.0.borrow_mut();
        if s.fail_other {
            return Err(Error::Driver("injected driver failure".into()));
        }
        if bytes == 0 {
            s.misuse.push("alloc(0)".into());
        }
        if s.used + bytes > s.capacity {
            return Err(Error::OutOfMemory {
                requested: bytes,
                free: s.capacity - s.used,
            });
        }
        let ptr = s.next;
        // A gap after every allocation: segments are never adjacent, so merging across two
        // segments would show up as a tiling error.
        s.next += (bytes as u64).next_multiple_of(2 * MIB as u64) + 2 * MIB as u64;
        s.live.insert(ptr, bytes);
        s.used += bytes;
        s.allocs += 1;
        Ok(ptr)
    }
    fn free(&mut self, ptr: u64) {
        let mut s = self.0.borrow_mut();
        match s.live.remove(&ptr) {
            Some(bytes) => {
                s.used -= bytes;
                s.frees += 1;
            }
            None => s.misuse.push(format!("free of {ptr:#x} not live")),
        }
    }
    fn free_memory(&self) -> usize {
        let s = self.0.borrow();
        s.capacity - s.used
    }
}

fn pool(capacity: usize, enabled: bool) -> (MemoryPool<Fake>, Fake) {
    let fake = Fake::new(capacity);
    (MemoryPool::new(fake.clone(), enabled), fake)
}

fn ok(p: &MemoryPool<Fake>, fake: &Fake) {
    p.check_invariants().unwrap();
    assert!(fake.state().misuse.is_empty(), "{:?}", fake.state().misuse);
    assert_eq!(p.stats().reserved, fake.state().used);
    assert_eq!(p.stats().segments, fake.state().live.len());
}

#[test]
fn size_classes() {
    assert_eq!(pool::round_size(0), Some(MIN_BLOCK));
    assert_eq!(pool::round_size(1), Some(512));
    assert_eq!(pool::round_size(512), Some(512));
    assert_eq!(pool::round_size(513), Some(1024));
    assert_eq!(pool::round_size(usize::MAX), None);
    assert_eq!(pool::segment_size(512), Some(SMALL_SEGMENT));
    assert_eq!(pool::segment_size(SMALL_SIZE), Some(SMALL_SEGMENT));
    assert_eq!(pool::segment_size(SMALL_SIZE + 512), Some(MID_SEGMENT));
    assert_eq!(pool::segment_size(MIN_LARGE_ALLOC - 512), Some(MID_SEGMENT));
    assert_eq!(pool::segment_size(MIN_LARGE_ALLOC), Some(MIN_LARGE_ALLOC));
    assert_eq!(pool::segment_size(11 * MIB), Some(12 * MIB));
    assert_eq!(pool::segment_size(11 * MIB + 512), Some(12 * MIB));
    assert!(
        pool::segment_size(33 * MIB + 7)
            .unwrap()
            .is_multiple_of(LARGE_ROUND)
    );
    assert_eq!(pool::pool_kind(SMALL_SIZE), PoolKind::Small);
    assert_eq!(pool::pool_kind(SMALL_SIZE + 512), PoolKind::Large);
}

#[test]
fn rounding_and_reuse() {
    let (mut p, fake) = pool(1 << 30, true);
    let a = p.alloc(1000).unwrap();
    assert_eq!(a.size, 1024);
    assert_eq!(p.stats().requested, 1000);
    p.free(a.ptr).unwrap();
    let b = p.alloc(900).unwrap();
    assert_eq!(b.ptr, a.ptr, "the freed block is reused");
    let st = p.stats();
    assert_eq!(
        (st.device_allocs, st.cache_hits, st.cache_misses),
        (1, 1, 1)
    );
    assert_eq!(st.reserved, SMALL_SEGMENT);
    ok(&p, &fake);
}

#[test]
fn zero_byte_requests_get_a_real_block() {
    let (mut p, fake) = pool(1 << 30, true);
    let a = p.alloc(0).unwrap();
    let b = p.alloc(0).unwrap();
    assert_ne!(a.ptr, b.ptr);
    assert_eq!(a.size, MIN_BLOCK);
    ok(&p, &fake);
}

#[test]
fn splitting_carves_one_segment() {
    let (mut p, fake) = pool(1 << 30, true);
    let a = p.alloc(1000).unwrap();
    let b = p.alloc(3000).unwrap();
    let c = p.alloc(SMALL_SIZE).unwrap();
    assert_eq!(b.ptr, a.ptr + 1024);
    assert_eq!(c.ptr, b.ptr + 3072);
    assert_eq!(p.stats().device_allocs, 1);
    assert_eq!(p.stats().in_use, 1024 + 3072 + SMALL_SIZE);
    assert_eq!(p.stats().reserved, SMALL_SEGMENT);
    // What is left of the segment is one free block; a request bigger than it opens a segment.
    let d = p.alloc(SMALL_SEGMENT - SMALL_SIZE).unwrap();
    assert_eq!(p.stats().device_allocs, 2);
    assert_ne!(p.segments()[0].0, p.segments()[1].0);
    p.free(d.ptr).unwrap();
    ok(&p, &fake);
}

#[test]
fn coalescing_merges_free_neighbours() {
    let (mut p, fake) = pool(1 << 30, true);
    let a = p.alloc(4096).unwrap();
    let b = p.alloc(4096).unwrap();
    let c = p.alloc(4096).unwrap();
    let d = p.alloc(4096).unwrap();
    p.free(b.ptr).unwrap();
    ok(&p, &fake);
    p.free(a.ptr).unwrap(); // merges with b (next)
    ok(&p, &fake);
    // a+b is one 8 KiB block now: an 8 KiB request fits there exactly.
    let ab = p.alloc(8192).unwrap();
    assert_eq!(ab.ptr, a.ptr);
    p.free(ab.ptr).unwrap();
    p.free(c.ptr).unwrap(); // merges with a+b (prev)
    p.free(d.ptr).unwrap(); // merges with a+b+c (prev) and the tail (next)
    ok(&p, &fake);
    assert_eq!(p.stats().in_use, 0);
    // The whole segment is one free block again, so it can go back to the device.
    assert_eq!(p.empty_cache(), SMALL_SEGMENT);
    assert_eq!(p.stats().reserved, 0);
    assert_eq!(p.stats().device_frees, 1);
    ok(&p, &fake);
}

#[test]
fn small_and_large_pools_stay_apart() {
    let (mut p, fake) = pool(1 << 30, true);
    let big = p.alloc(3 * MIB / 2).unwrap();
    assert_eq!(
        p.stats().reserved,
        MID_SEGMENT,
        "1.5 MiB carves a 20 MiB segment"
    );
    // The rest of the 20 MiB segment serves the next large request ...
    let big2 = p.alloc(12 * MIB).unwrap();
    assert_eq!(big2.ptr, big.ptr + big.size as u64);
    assert_eq!(p.stats().device_allocs, 1);
    // ... but never a small one.
    let small = p.alloc(100).unwrap();
    assert_eq!(p.stats().device_allocs, 2);
    assert_eq!(p.stats().reserved, MID_SEGMENT + SMALL_SEGMENT);
    // A large remainder under 1 MiB is not split off: 11 MiB takes a whole 12 MiB segment.
    let odd = p.alloc(11 * MIB).unwrap();
    assert_eq!(odd.size, 12 * MIB);
    for b in [big, big2, small, odd] {
        p.free(b.ptr).unwrap();
    }
    ok(&p, &fake);
}

#[test]
fn reuse_across_steps_and_stats() {
    let (mut p, fake) = pool(1 << 30, true);
    let sizes = [100, 5000, 70_000, 2 * MIB, 12 * MIB, 300, 1 << 19];
    let mut misses_after_first_step = 0;
    for step in 0..10 {
        let blocks: Vec<_> = sizes.iter().map(|&s| p.alloc(s).unwrap()).collect();
        if step == 0 {
            // Two misses (a small and a large segment); the rest came from their remainders.
            misses_after_first_step = p.stats().cache_misses;
            assert_eq!(misses_after_first_step, 2);
        }
        for b in blocks {
            p.free(b.ptr).unwrap();
        }
        ok(&p, &fake);
    }
    let st = p.stats();
    assert_eq!(st.device_allocs, fake.state().allocs);
    assert_eq!(
        st.cache_misses, misses_after_first_step,
        "later steps only hit: {st:?}"
    );
    assert_eq!(st.cache_hits + st.cache_misses, 70);
    assert_eq!(st.cache_misses, st.device_allocs);
    assert_eq!((st.in_use, st.requested, st.live_blocks), (0, 0, 0));
    let total: usize = sizes.iter().map(|&s| pool::round_size(s).unwrap()).sum();
    assert_eq!(st.peak_in_use, total);
    p.reset_peak();
    assert_eq!(p.stats().peak_in_use, 0);
    assert_eq!(p.stats().peak_reserved, p.stats().reserved);
}

#[test]
fn out_of_memory_empties_the_cache_and_retries() {
    let (mut p, fake) = pool(24 * MIB, true);
    let a = p.alloc(512).unwrap(); // 2 MiB small segment
    let b = p.alloc(2 * MIB).unwrap(); // 20 MiB large segment
    p.free(a.ptr).unwrap();
    p.free(b.ptr).unwrap();
    assert_eq!(fake.state().used, 22 * MIB);
    // 21 MiB is bigger than any cached block and its 22 MiB segment does not fit beside the
    // 22 MiB cached: the pool frees its cache and retries.
    let c = p.alloc(21 * MIB).unwrap();
    let st = p.stats();
    assert_eq!(
        (st.oom_flushes, st.device_frees, st.reserved),
        (1, 2, 22 * MIB)
    );
    p.free(c.ptr).unwrap();
    ok(&p, &fake);
}

#[test]
fn out_of_memory_falls_back_to_the_exact_size() {
    let (mut p, fake) = pool(16 * MIB, true);
    // A 3 MiB request normally carves 20 MiB; with 16 MiB on the device it gets 3 MiB exactly.
    let a = p.alloc(3 * MIB).unwrap();
    assert_eq!(p.stats().reserved, 3 * MIB);
    let b = p.alloc(5 * MIB).unwrap();
    ok(&p, &fake);
    p.free(a.ptr).unwrap();
    p.free(b.ptr).unwrap();
    ok(&p, &fake);
}

#[test]
fn out_of_memory_error_names_sizes() {
    let (mut p, fake) = pool(4 * MIB, true);
    let live = p.alloc(512).unwrap(); // 2 MiB segment, live: cannot be flushed
    let before = p.stats();
    match p.alloc(3 * MIB) {
        Err(Error::OutOfMemory { requested, free }) => {
            assert_eq!((requested, free), (3 * MIB, 2 * MIB));
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert_eq!(p.stats().in_use, before.in_use);
    let msg = p.alloc(100 * MIB).unwrap_err().to_string();
    assert!(
        msg.contains("out of GPU memory") && msg.contains(&(100 * MIB).to_string()),
        "{msg}"
    );
    p.free(live.ptr).unwrap();
    ok(&p, &fake);
}

#[test]
fn other_driver_errors_pass_through() {
    let (mut p, fake) = pool(1 << 30, true);
    let a = p.alloc(512).unwrap();
    p.free(a.ptr).unwrap();
    fake.0.borrow_mut().fail_other = true;
    let e = p.alloc(4 * MIB).unwrap_err();
    assert!(matches!(e, Error::Driver(_)), "{e:?}");
    assert_eq!(
        p.stats().oom_flushes,
        0,
        "only out-of-memory empties the cache"
    );
    // A cached block still serves without the device.
    assert!(p.alloc(512).is_ok());
    ok(&p, &fake);
}

#[test]
fn pool_off_goes_straight_to_the_device() {
    let (mut p, fake) = pool(1 << 30, false);
    assert!(!p.is_enabled());
    for _ in 0..100 {
        let a = p.alloc(1000).unwrap();
        assert_eq!(p.stats().reserved, p.stats().in_use);
        p.free(a.ptr).unwrap();
        assert_eq!(fake.state().live.len(), 0, "freed straight back");
    }
    let st = p.stats();
    assert_eq!(
        (st.device_allocs, st.device_frees, st.cache_hits),
        (100, 100, 0)
    );
    assert_eq!(st.cache_misses, 100);
    assert_eq!(st.peak_in_use, 1024);
    assert_eq!(p.empty_cache(), 0);
    ok(&p, &fake);
    // The same loop with the pool on: one device allocation.
    let (mut on, _) = pool(1 << 30, true);
    for _ in 0..100 {
        let a = on.alloc(1000).unwrap();
        on.free(a.ptr).unwrap();
    }
    assert_eq!(on.stats().device_allocs, 1);
}

#[test]
fn pool_off_out_of_memory() {
    let (mut p, fake) = pool(MIB, false);
    let a = p.alloc(MIB / 2).unwrap();
    assert!(matches!(p.alloc(MIB), Err(Error::OutOfMemory { .. })));
    p.free(a.ptr).unwrap();
    ok(&p, &fake);
}

#[test]
fn double_free_and_foreign_pointers_are_errors() {
    for enabled in [true, false] {
        let (mut p, fake) = pool(1 << 30, enabled);
        let a = p.alloc(1000).unwrap();
        let b = p.alloc(1000).unwrap();
        p.free(a.ptr).unwrap();
        let before = p.stats();
        let e = p.free(a.ptr).unwrap_err().to_string();
        if enabled {
            assert!(e.contains("double free"), "{e}");
        } else {
            assert!(e.contains("did not allocate"), "{e}");
        }
        let e = p.free(0xdead_beef).unwrap_err().to_string();
        assert!(e.contains("did not allocate"), "{e}");
        // Inside a block but not its start.
        assert!(p.free(b.ptr + 512).is_err());
        assert_eq!(p.stats(), before);
        p.free(b.ptr).unwrap();
        ok(&p, &fake);
    }
}

#[test]
fn dropping_the_pool_returns_everything() {
    let (mut p, fake) = pool(1 << 30, true);
    let _live = p.alloc(12 * MIB).unwrap();
    let cached = p.alloc(100).unwrap();
    p.free(cached.ptr).unwrap();
    drop(p);
    let s = fake.state();
    assert!(s.live.is_empty() && s.misuse.is_empty(), "{:?}", s.misuse);
    assert_eq!(s.allocs, s.frees);
}

/// The `PALM_POOL` variable, checked in child processes (no `set_var` in a threaded test run).
#[test]
fn palm_pool_env_var() {
    let exe = std::env::current_exe().unwrap();
    for (value, expect) in [
        (Some("off"), "off"),
        (Some("OFF"), "off"),
        (Some("0"), "off"),
        (Some("on"), "on"),
        (None, "on"),
        (Some("maybe"), "error"),
    ] {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["palm_pool_env_child", "--exact", "--test-threads=1"])
            .env("PALM_POOL_CHILD_EXPECT", expect);
        match value {
            Some(v) => cmd.env("PALM_POOL", v),
            None => cmd.env_remove("PALM_POOL"),
        };
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "PALM_POOL={value:?}: {text}");
        assert!(text.contains("1 passed"), "PALM_POOL={value:?}: {text}");
    }
}

#[test]
fn palm_pool_env_child() {
    let Ok(expect) = std::env::var("PALM_POOL_CHILD_EXPECT") else {
        return; // only meaningful when spawned by `palm_pool_env_var`
    };
    let r = MemoryPool::from_env(Fake::new(MIB));
    match expect.as_str() {
        "on" => assert!(r.unwrap().is_enabled()),
        "off" => assert!(!r.unwrap().is_enabled()),
        _ => assert!(r.err().unwrap().to_string().contains("PALM_POOL")),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(usize),
    Free(usize),
    EmptyCache,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..4096).prop_map(Op::Alloc),
        3 => (4096usize..2 * MIB).prop_map(Op::Alloc),
        1 => (2 * MIB..24 * MIB).prop_map(Op::Alloc),
        5 => any::<usize>().prop_map(Op::Free),
        1 => Just(Op::EmptyCache),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random alloc/free/empty_cache sequences, pool on and off, with a device small enough that
    /// out-of-memory happens: after every step the pool's structure is consistent, no two live
    /// blocks overlap, every live block lies inside one device allocation and is at least as big
    /// as requested, and the stats equal the sums.
    #[test]
    fn random_sequences_keep_invariants(
        ops in prop::collection::vec(op(), 1..200),
        enabled in any::<bool>(),
        capacity_mib in 8usize..96,
    ) {
        let (mut p, fake) = pool(capacity_mib * MIB, enabled);
        let mut live: Vec<(u64, usize, usize)> = Vec::new(); // (ptr, block size, requested)
        let mut served = 0u64;
        for op in ops {
            match op {
                Op::Alloc(n) => match p.alloc(n) {
                    Ok(b) => {
                        prop_assert!(b.size >= n && b.size.is_multiple_of(MIN_BLOCK));
                        live.push((b.ptr, b.size, n));
                        served += 1;
                    }
                    Err(Error::OutOfMemory { requested, .. }) => prop_assert_eq!(requested, n),
                    Err(e) => prop_assert!(false, "unexpected error {e:?}"),
                },
                Op::Free(i) if !live.is_empty() => {
                    let (ptr, ..) = live.swap_remove(i % live.len());
                    p.free(ptr).unwrap();
                }
                Op::Free(_) => {}
                Op::EmptyCache => {
                    p.empty_cache();
                }
            }
            if let Err(e) = p.check_invariants() {
                prop_assert!(false, "{e}");
            }
            let st = p.stats();
            let s = fake.state();
            prop_assert!(s.misuse.is_empty(), "{:?}", s.misuse);
            prop_assert_eq!(st.reserved, s.used);
            prop_assert_eq!(st.segments, s.live.len());
            prop_assert_eq!(st.in_use, live.iter().map(|b| b.1).sum::<usize>());
            prop_assert_eq!(st.requested, live.iter().map(|b| b.2).sum::<usize>());
            prop_assert_eq!(st.live_blocks, live.len());
            prop_assert!(st.peak_in_use >= st.in_use && st.peak_reserved >= st.reserved);
            prop_assert_eq!(st.cache_hits + st.cache_misses, served);
            prop_assert_eq!(st.device_allocs, s.allocs);
            prop_assert_eq!(st.device_frees, s.frees);
            if !enabled {
                prop_assert_eq!(st.reserved, st.in_use);
            }
            let mut sorted = live.clone();
            sorted.sort_unstable();
            for w in sorted.windows(2) {
                prop_assert!(w[0].0 + w[0].1 as u64 <= w[1].0, "overlap {:?}", w);
            }
            for &(ptr, size, _) in &sorted {
                let inside = s
                    .live
                    .range(..=ptr)
                    .next_back()
                    .is_some_and(|(&base, &len)| ptr + size as u64 <= base + len as u64);
                prop_assert!(inside, "block {ptr:#x}+{size} outside every device allocation");
            }
        }
        for (ptr, ..) in live.drain(..) {
            p.free(ptr).unwrap();
        }
        p.empty_cache();
        prop_assert_eq!(p.stats().reserved, 0);
        prop_assert_eq!(fake.state().used, 0);
    }
}

/// What a new allocation can still get: the device's free memory plus the pool's cached,
/// unused blocks (what the memory checks before a run compare against, not the card's total).
#[test]
fn available_counts_free_device_memory_and_the_cache() {
    let cap = 1 << 30;
    let (mut p, fake) = pool(cap, true);
    assert_eq!(p.available(), cap);
    let a = p.alloc(4 << 20).unwrap();
    // The segment left the device; all of it but the live block is still ours to hand out.
    assert_eq!(p.available(), cap - a.size);
    p.free(a.ptr).unwrap();
    assert_eq!(p.available(), cap, "a cached block is available again");
    // Memory taken by someone else (another process) is not.
    fake.0.borrow_mut().used += 100 << 20;
    assert_eq!(p.available(), cap - (100 << 20));
    fake.0.borrow_mut().used -= 100 << 20;
    ok(&p, &fake);
}
