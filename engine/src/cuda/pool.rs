//! The caching allocator over device memory, written against [`DeviceAllocator`] so that its
//! bookkeeping is tested on the CPU with a fake allocator (`engine/tests/cuda_pool.rs`).
//!
//! The scheme is PyTorch's (`c10/cuda/CUDACachingAllocator.cpp`), simplified to one stream:
//! - every request is rounded up to a multiple of [`MIN_BLOCK`] (512 B, also the minimum);
//! - requests ≤ [`SMALL_SIZE`] (1 MiB) are served from a *small* pool of 2 MiB segments, larger ones
//!   from a *large* pool: segments of 20 MiB for requests below 10 MiB, else the request rounded
//!   up to 2 MiB;
//! - the best-fitting cached free block (smallest that fits, lowest address on ties) is reused and
//!   split when the remainder is worth keeping (≥ 512 B in the small pool, > 1 MiB in the large);
//! - a freed block is merged with free neighbours of its segment at once;
//! - when the device runs out of memory, every fully free segment is handed back to the device and
//!   the request is tried again (then once more at its exact size, without the segment rounding);
//!   only then does it fail with [`Error::OutOfMemory`].
//!
//! Frees are stream-ordered: the engine launches all its work on one stream, so a block freed on
//! the host is immediately reusable by work enqueued later on that stream (it runs after the work
//! that used the block). A second stream will need an event per freed block (PyTorch's
//! `record_stream`) before this holds again.
//!
//! `PALM_POOL=off` (or `MemoryPool::new(.., false)`) turns caching off: every request goes straight
//! to the device allocator and every free straight back, so the pool's effect can be measured.

use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Granularity and minimum size of a block, in bytes.
pub const MIN_BLOCK: usize = 512;
/// Requests up to this size (after rounding) come from the small pool.
pub const SMALL_SIZE: usize = 1 << 20;
/// Segment size of the small pool.
pub const SMALL_SEGMENT: usize = 2 << 20;
/// Segment size for large requests below [`MIN_LARGE_ALLOC`].
pub const MID_SEGMENT: usize = 20 << 20;
/// Large requests of at least this size get a segment of their own size, rounded to [`LARGE_ROUND`].
pub const MIN_LARGE_ALLOC: usize = 10 << 20;
/// Rounding of the segments of big requests.
pub const LARGE_ROUND: usize = 2 << 20;

/// The device side of the pool: plain allocation and release of device memory.
pub trait DeviceAllocator {
    /// Allocate `bytes` of device memory; `Error::OutOfMemory` when the device is full (the pool
    /// then releases its cache and retries), any other error is passed on as is.
    fn alloc(&mut self, bytes: usize) -> Result<u64>;
    /// Release memory returned by `alloc`. Called exactly once per successful `alloc`.
    fn free(&mut self, ptr: u64);
    /// Free device memory in bytes, as the driver reports it (for error messages).
    fn free_memory(&self) -> usize;
}

/// `bytes` rounded up to a whole number of [`MIN_BLOCK`]s (0 counts as 1 byte); `None` on overflow.
pub fn round_size(bytes: usize) -> Option<usize> {
    bytes.max(1).checked_next_multiple_of(MIN_BLOCK)
}

/// Which pool a rounded request size belongs to.
pub fn pool_kind(rounded: usize) -> PoolKind {
    if rounded <= SMALL_SIZE {
        PoolKind::Small
    } else {
        PoolKind::Large
    }
}

/// The size of the segment allocated from the device for a rounded request that missed the cache.
pub fn segment_size(rounded: usize) -> Option<usize> {
    if rounded <= SMALL_SIZE {
        Some(SMALL_SEGMENT)
    } else if rounded < MIN_LARGE_ALLOC {
        Some(MID_SEGMENT)
    } else {
        rounded.checked_next_multiple_of(LARGE_ROUND)
    }
}

/// Whether a free block with `remaining` spare bytes after a request is split.
fn should_split(kind: PoolKind, remaining: usize) -> bool {
    match kind {
        PoolKind::Small => remaining >= MIN_BLOCK,
        PoolKind::Large => remaining > SMALL_SIZE,
    }
}

/// Whether the `PALM_POOL` environment variable leaves the pool on (unset, `on`, `1`, `true`, `yes`)
/// or turns it off (`off`, `0`, `false`, `no`); anything else is an error naming the variable.
pub fn pool_enabled_from_env() -> Result<bool> {
    match std::env::var("PALM_POOL") {
        Err(_) => Ok(true),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "on" | "1" | "true" | "yes" => Ok(true),
            "off" | "0" | "false" | "no" => Ok(false),
            other => Err(Error::Invalid(format!(
                "PALM_POOL={other:?}: expected on or off"
            ))),
        },
    }
}

/// The small pool (requests ≤ 1 MiB, 2 MiB segments) or the large pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PoolKind {
    Small,
    Large,
}

/// A block handed out by [`MemoryPool::alloc`]: `size` is the rounded size the block occupies
/// (at least the requested bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBlock {
    pub ptr: u64,
    pub size: usize,
}

/// Counters of a pool. Sizes are bytes; counts are cumulative since the pool was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes in live blocks (rounded sizes).
    pub in_use: usize,
    /// Bytes the live blocks were asked for.
    pub requested: usize,
    /// Bytes held from the device (all segments, live or cached).
    pub reserved: usize,
    /// Highest `in_use` since creation or [`MemoryPool::reset_peak`].
    pub peak_in_use: usize,
    /// Highest `reserved` since creation or [`MemoryPool::reset_peak`].
    pub peak_reserved: usize,
    /// Live blocks now.
    pub live_blocks: usize,
    /// Segments held from the device now.
    pub segments: usize,
    /// Calls to the device allocator that succeeded.
    pub device_allocs: u64,
    /// Segments handed back to the device.
    pub device_frees: u64,
    /// Requests served from a cached free block.
    pub cache_hits: u64,
    /// Requests that needed a new segment (with the pool off: every request).
    pub cache_misses: u64,
    /// Times the cache was emptied to retry a request after the device ran out of memory.
    pub oom_flushes: u64,
}

impl std::fmt::Display for PoolStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        let requests = self.cache_hits + self.cache_misses;
        write!(
            f,
            "in use {:.1} MiB, reserved {:.1} MiB, peak {:.1} MiB in use / {:.1} MiB reserved, \
             {} device allocations, {} of {} requests served from the cache",
            mib(self.in_use),
            mib(self.reserved),
            mib(self.peak_in_use),
            mib(self.peak_reserved),
            self.device_allocs,
            self.cache_hits,
            requests
        )
    }
}

#[derive(Debug, Clone)]
struct Block {
    size: usize,
    requested: usize,
    segment: u64,
    prev: Option<u64>,
    next: Option<u64>,
    allocated: bool,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    size: usize,
    kind: PoolKind,
}

/// A caching allocator over a [`DeviceAllocator`]. Not thread-safe by itself: the device keeps it
/// behind a mutex.
pub struct MemoryPool<A: DeviceAllocator> {
    alloc: A,
    enabled: bool,
    /// Every block of every segment, by address.
    blocks: HashMap<u64, Block>,
    /// Cached free blocks by (size, address), one set per pool kind: best fit = first ≥ request.
    free_small: BTreeSet<(usize, u64)>,
    free_large: BTreeSet<(usize, u64)>,
    /// Segments by base address.
    segments: BTreeMap<u64, Segment>,
    stats: PoolStats,
}

impl<A: DeviceAllocator> MemoryPool<A> {
    /// A pool over `alloc`; `enabled = false` is the `PALM_POOL=off` behaviour.
    pub fn new(alloc: A, enabled: bool) -> Self {
        MemoryPool {
            alloc,
            enabled,
            blocks: HashMap::new(),
            free_small: BTreeSet::new(),
            free_large: BTreeSet::new(),
            segments: BTreeMap::new(),
            stats: PoolStats::default(),
        }
    }

    /// A pool that is on unless `PALM_POOL=off`.
    pub fn from_env(alloc: A) -> Result<Self> {
        Ok(Self::new(alloc, pool_enabled_from_env()?))
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Restart the peaks from the current values.
    pub fn reset_peak(&mut self) {
        self.stats.peak_in_use = self.stats.in_use;
        self.stats.peak_reserved = self.stats.reserved;
    }

    /// Bytes a new allocation can still get: what the device has free plus what this pool
    /// holds cached but unused (it hands that out first, or releases it and retries).
    pub fn available(&self) -> usize {
        self.alloc
            .free_memory()
            .saturating_add(self.stats.reserved.saturating_sub(self.stats.in_use))
    }

    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    pub fn allocator_mut(&mut self) -> &mut A {
        &mut self.alloc
    }

    /// A block of at least `bytes` bytes (512-byte aligned relative to its segment's base).
    pub fn alloc(&mut self, bytes: usize) -> Result<PoolBlock> {
        let size = round_size(bytes).ok_or_else(|| self.oom(bytes))?;
        let kind = pool_kind(size);
        if !self.enabled {
            let (ptr, _) = self.device_alloc(size, bytes, None)?;
            self.stats.cache_misses += 1;
            self.add_segment(ptr, size, kind);
            return Ok(self.take(ptr, size, bytes));
        }
        let cached = self.free_set(kind).range((size, 0)..).next().copied();
        let (ptr, block_size) = match cached {
            Some(key) => {
                self.free_set(kind).remove(&key);
                self.stats.cache_hits += 1;
                (key.1, key.0)
            }
            None => {
                let seg = segment_size(size).ok_or_else(|| self.oom(bytes))?;
                // The exact-size fallback may give a segment of `size` bytes only.
                let (ptr, seg) = self.device_alloc(seg, bytes, Some(size))?;
                self.stats.cache_misses += 1;
                self.add_segment(ptr, seg, kind);
                (ptr, seg)
            }
        };
        let remaining = block_size - size;
        if should_split(kind, remaining) {
            let rest = ptr + size as u64;
            let (segment, next) = {
                let b = self
                    .blocks
                    .get_mut(&ptr)
                    .expect("pool: cached block is tracked");
                b.size = size;
                let next = b.next;
                b.next = Some(rest);
                (b.segment, next)
            };
            if let Some(n) = next {
                self.blocks
                    .get_mut(&n)
                    .expect("pool: neighbour is tracked")
                    .prev = Some(rest);
            }
            self.blocks.insert(
                rest,
                Block {
                    size: remaining,
                    requested: 0,
                    segment,
                    prev: Some(ptr),
                    next,
                    allocated: false,
                },
            );
            self.free_set(kind).insert((remaining, rest));
            Ok(self.take(ptr, size, bytes))
        } else {
            Ok(self.take(ptr, block_size, bytes))
        }
    }

    /// Return a block. Errors (never panics) on an address this pool did not hand out or on a
    /// block that is already free; the pool is unchanged then.
    pub fn free(&mut self, ptr: u64) -> Result<()> {
        let (size, requested, segment) = match self.blocks.get(&ptr) {
            Some(b) if b.allocated => (b.size, b.requested, b.segment),
            Some(_) => {
                return Err(Error::Invalid(format!(
                    "memory pool: double free of device block {ptr:#x}"
                )));
            }
            None => {
                return Err(Error::Invalid(format!(
                    "memory pool: free of {ptr:#x}, which this pool did not allocate"
                )));
            }
        };
        self.stats.in_use -= size;
        self.stats.requested -= requested;
        self.stats.live_blocks -= 1;
        if !self.enabled {
            self.blocks.remove(&ptr);
            self.release_segment(ptr);
            return Ok(());
        }
        let kind = self.segments[&segment].kind;
        let mut ptr = ptr;
        let mut size = size;
        {
            let b = self.blocks.get_mut(&ptr).expect("pool: block is tracked");
            b.allocated = false;
            b.requested = 0;
        }
        // Merge with the next block when it is free.
        if let Some(n) = self.blocks[&ptr].next
            && !self.blocks[&n].allocated
        {
            let nb = self.blocks.remove(&n).expect("pool: neighbour is tracked");
            self.free_set(kind).remove(&(nb.size, n));
            size += nb.size;
            if let Some(nn) = nb.next {
                self.blocks
                    .get_mut(&nn)
                    .expect("pool: neighbour is tracked")
                    .prev = Some(ptr);
            }
            let b = self.blocks.get_mut(&ptr).expect("pool: block is tracked");
            b.size = size;
            b.next = nb.next;
        }
        // Merge into the previous block when it is free.
        if let Some(p) = self.blocks[&ptr].prev
            && !self.blocks[&p].allocated
        {
            let b = self.blocks.remove(&ptr).expect("pool: block is tracked");
            let psize = self.blocks[&p].size;
            self.free_set(kind).remove(&(psize, p));
            if let Some(n) = b.next {
                self.blocks
                    .get_mut(&n)
                    .expect("pool: neighbour is tracked")
                    .prev = Some(p);
            }
            let pb = self.blocks.get_mut(&p).expect("pool: neighbour is tracked");
            pb.size += size;
            pb.next = b.next;
            ptr = p;
            size = pb.size;
        }
        self.free_set(kind).insert((size, ptr));
        Ok(())
    }

    /// Hand every fully free segment back to the device; returns the bytes released.
    pub fn empty_cache(&mut self) -> usize {
        let idle: Vec<(u64, usize)> = self
            .segments
            .iter()
            .filter(|(base, seg)| {
                let b = &self.blocks[base];
                !b.allocated && b.size == seg.size
            })
            .map(|(&base, seg)| (base, seg.size))
            .collect();
        let mut released = 0;
        for (base, size) in idle {
            let kind = self.segments[&base].kind;
            self.free_set(kind).remove(&(size, base));
            self.blocks.remove(&base);
            self.release_segment(base);
            released += size;
        }
        released
    }

    /// (address, rounded size) of every live block, by address.
    pub fn live_blocks(&self) -> Vec<(u64, usize)> {
        let mut v: Vec<_> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.allocated)
            .map(|(&p, b)| (p, b.size))
            .collect();
        v.sort_unstable();
        v
    }

    /// (base address, size) of every segment held from the device, by address.
    pub fn segments(&self) -> Vec<(u64, usize)> {
        self.segments.iter().map(|(&p, s)| (p, s.size)).collect()
    }

    /// Check the pool's internal consistency: segments tiled exactly by their blocks, no two
    /// adjacent free blocks (pool on), free sets = free blocks, and the stats equal the sums.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let mut seen = 0usize;
        let mut in_use = 0usize;
        let mut requested = 0usize;
        let mut live = 0usize;
        let mut free_keys = BTreeSet::new();
        for (&base, seg) in &self.segments {
            let mut cur = Some(base);
            let mut prev: Option<u64> = None;
            let mut end = base;
            let mut prev_free = false;
            while let Some(p) = cur {
                let b = self
                    .blocks
                    .get(&p)
                    .ok_or(format!("segment {base:#x}: block {p:#x} untracked"))?;
                if p != end || b.prev != prev || b.segment != base || b.size == 0 {
                    return Err(format!("segment {base:#x}: block {p:#x} misplaced: {b:?}"));
                }
                if !b.size.is_multiple_of(MIN_BLOCK) && self.enabled {
                    return Err(format!("block {p:#x} size {} not rounded", b.size));
                }
                if b.allocated {
                    in_use += b.size;
                    requested += b.requested;
                    live += 1;
                    prev_free = false;
                } else {
                    if prev_free {
                        return Err(format!("adjacent free blocks at {p:#x} not merged"));
                    }
                    prev_free = true;
                    free_keys.insert((seg.kind, b.size, p));
                }
                seen += 1;
                end = p + b.size as u64;
                prev = Some(p);
                cur = b.next;
            }
            if end != base + seg.size as u64 {
                return Err(format!("segment {base:#x}: blocks end at {end:#x}"));
            }
        }
        if seen != self.blocks.len() {
            return Err(format!(
                "{} blocks outside any segment",
                self.blocks.len() - seen
            ));
        }
        let sets: BTreeSet<_> = self
            .free_small
            .iter()
            .map(|&(s, p)| (PoolKind::Small, s, p))
            .chain(
                self.free_large
                    .iter()
                    .map(|&(s, p)| (PoolKind::Large, s, p)),
            )
            .collect();
        if sets != free_keys {
            return Err("free sets differ from the free blocks".into());
        }
        let reserved: usize = self.segments.values().map(|s| s.size).sum();
        let st = &self.stats;
        if (
            st.in_use,
            st.requested,
            st.live_blocks,
            st.reserved,
            st.segments,
        ) != (in_use, requested, live, reserved, self.segments.len())
        {
            return Err(format!(
                "stats {st:?} vs sums: in_use {in_use}, requested {requested}, live {live}, reserved {reserved}"
            ));
        }
        if st.peak_in_use < st.in_use || st.peak_reserved < st.reserved {
            return Err("peak below current".into());
        }
        Ok(())
    }

    fn free_set(&mut self, kind: PoolKind) -> &mut BTreeSet<(usize, u64)> {
        match kind {
            PoolKind::Small => &mut self.free_small,
            PoolKind::Large => &mut self.free_large,
        }
    }

    fn oom(&self, requested: usize) -> Error {
        Error::OutOfMemory {
            requested,
            free: self.alloc.free_memory(),
        }
    }

    /// Mark a tracked block as handed out and count it.
    fn take(&mut self, ptr: u64, size: usize, requested: usize) -> PoolBlock {
        let b = self.blocks.get_mut(&ptr).expect("pool: block is tracked");
        b.allocated = true;
        b.requested = requested;
        let st = &mut self.stats;
        st.in_use += size;
        st.requested += requested;
        st.live_blocks += 1;
        st.peak_in_use = st.peak_in_use.max(st.in_use);
        PoolBlock { ptr, size }
    }

    fn add_segment(&mut self, base: u64, size: usize, kind: PoolKind) {
        self.segments.insert(base, Segment { size, kind });
        self.blocks.insert(
            base,
            Block {
                size,
                requested: 0,
                segment: base,
                prev: None,
                next: None,
                allocated: false,
            },
        );
        let st = &mut self.stats;
        st.reserved += size;
        st.segments += 1;
        st.peak_reserved = st.peak_reserved.max(st.reserved);
    }

    /// Forget a segment (its blocks are already gone) and free it on the device.
    fn release_segment(&mut self, base: u64) {
        if let Some(seg) = self.segments.remove(&base) {
            self.alloc.free(base);
            self.stats.reserved -= seg.size;
            self.stats.segments -= 1;
            self.stats.device_frees += 1;
        }
    }

    /// Allocate `bytes` from the device; on out-of-memory empty the cache and retry, then (when
    /// `exact` is smaller) retry at `exact`. Returns the address and the size allocated.
    fn device_alloc(
        &mut self,
        bytes: usize,
        requested: usize,
        exact: Option<usize>,
    ) -> Result<(u64, usize)> {
        let mut tries = vec![bytes];
        if let Some(e) = exact.filter(|&e| e < bytes) {
            tries.push(e);
        }
        let mut flushed = false;
        for (i, &want) in tries.iter().enumerate() {
            loop {
                match self.alloc.alloc(want) {
                    Ok(p) => {
                        self.stats.device_allocs += 1;
                        return Ok((p, want));
                    }
                    Err(Error::OutOfMemory { .. }) if !flushed && self.has_idle_segment() => {
                        flushed = true;
                        self.stats.oom_flushes += 1;
                        self.empty_cache();
                    }
                    Err(Error::OutOfMemory { .. }) if i + 1 < tries.len() => break,
                    Err(Error::OutOfMemory { .. }) => return Err(self.oom(requested)),
                    Err(e) => return Err(e),
                }
            }
        }
        Err(self.oom(requested))
    }

    fn has_idle_segment(&self) -> bool {
        self.segments.iter().any(|(base, seg)| {
            let b = &self.blocks[base];
            !b.allocated && b.size == seg.size
        })
    }
}

impl<A: DeviceAllocator> Drop for MemoryPool<A> {
    /// Hand every segment back to the device. The CUDA device owns its pool and every live buffer
    /// holds the device, so no block is live here in the engine.
    fn drop(&mut self) {
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        for base in bases {
            self.alloc.free(base);
        }
    }
}
