//! Device (global) memory of the VM: segments of 32-bit atomic words (so CTAs running on several
//! host threads can share them in safe Rust), a bit per byte recording whether it was written
//! since its allocation (initcheck), and the live allocations inside the segments (memcheck
//! checks each access against the allocation it falls in, not just the segment: a caching
//! allocator hands out sub-blocks of larger segments).

use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where device addresses start (well away from 0, so a null or small pointer is never valid).
const BASE: u64 = 1 << 32;
/// Gap between segments, so a run past a segment's end lands nowhere.
const GAP: u64 = 4096;

/// Backing storage of one device allocation made by the allocator below the pool.
pub struct Segment {
    base: u64,
    len: usize,
    words: Vec<AtomicU32>,
    /// Bit `i % 32` of word `i / 32`: byte `i` was written since its live allocation began.
    init: Vec<AtomicU32>,
}

impl Segment {
    fn new(base: u64, len: usize) -> Self {
        Segment {
            base,
            len,
            words: (0..len.div_ceil(4))
                .map(|_| AtomicU32::new(0xA5A5_A5A5))
                .collect(),
            init: (0..len.div_ceil(32)).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Byte `off` as part of its word.
    fn byte(&self, off: usize) -> u8 {
        (self.words[off / 4].load(Relaxed) >> (8 * (off % 4))) as u8
    }

    fn set_byte(&self, off: usize, v: u8) {
        let shift = 8 * (off % 4);
        let mask = 0xFFu32 << shift;
        let _ = self.words[off / 4].fetch_update(Relaxed, Relaxed, |w| {
            Some((w & !mask) | ((v as u32) << shift))
        });
    }

    /// Load `size` (1, 2, 4, 8 or 16) bytes at naturally aligned offset `off`, little-endian.
    pub fn load(&self, off: usize, size: usize) -> u128 {
        match size {
            1 | 2 => {
                let w = self.words[off / 4].load(Relaxed) >> (8 * (off % 4));
                (w & if size == 1 { 0xFF } else { 0xFFFF }) as u128
            }
            _ => {
                let mut v = 0u128;
                for i in 0..size / 4 {
                    v |= (self.words[off / 4 + i].load(Relaxed) as u128) << (32 * i);
                }
                v
            }
        }
    }

    /// Store `size` bytes of `v` at naturally aligned offset `off`.
    pub fn store(&self, off: usize, size: usize, v: u128) {
        match size {
            1 | 2 => {
                let shift = 8 * (off % 4);
                let mask = (if size == 1 { 0xFFu32 } else { 0xFFFF }) << shift;
                let bits = ((v as u32) << shift) & mask;
                let _ = self.words[off / 4]
                    .fetch_update(Relaxed, Relaxed, |w| Some((w & !mask) | bits));
            }
            _ => {
                for i in 0..size / 4 {
                    self.words[off / 4 + i].store((v >> (32 * i)) as u32, Relaxed);
                }
            }
        }
    }

    /// The 32-bit word at aligned offset `off`, for atomics.
    pub fn word(&self, off: usize) -> &AtomicU32 {
        &self.words[off / 4]
    }

    /// Whether all `size` bytes at `off` were written (`size` ≤ 16, not crossing 32 bytes).
    pub fn is_init(&self, off: usize, size: usize) -> bool {
        let mask = mask_bits(off, size);
        self.init[off / 32].load(Relaxed) & mask == mask
    }

    /// The first byte of `size` at `off` not written, if any (any size, any alignment).
    fn first_uninit(&self, off: usize, size: usize) -> Option<usize> {
        (off..off + size).find(|&i| self.init[i / 32].load(Relaxed) & (1 << (i % 32)) == 0)
    }

    pub fn mark_init(&self, off: usize, size: usize) {
        let mask = mask_bits(off, size);
        let w = &self.init[off / 32];
        if w.load(Relaxed) & mask != mask {
            w.fetch_or(mask, Relaxed);
        }
    }

    fn mark_range(&self, off: usize, size: usize, init: bool) {
        let end = off + size;
        let mut i = off;
        while i < end {
            let group = i / 32;
            let hi = ((group + 1) * 32).min(end);
            let mask = mask_bits(i, hi - i);
            if mask == u32::MAX {
                self.init[group].store(if init { u32::MAX } else { 0 }, Relaxed);
            } else if init {
                self.init[group].fetch_or(mask, Relaxed);
            } else {
                self.init[group].fetch_and(!mask, Relaxed);
            }
            i = hi;
        }
    }
}

/// Bits for `size` bytes at `off` within their 32-byte group (callers keep accesses inside one).
fn mask_bits(off: usize, size: usize) -> u32 {
    let m = if size >= 32 {
        u32::MAX
    } else {
        (1u32 << size) - 1
    };
    m << (off % 32)
}

/// One live allocation, as seen by a launch: its range and where its bytes are stored.
#[derive(Clone)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub seg: Arc<Segment>,
    /// Offset of `start` in the segment.
    pub seg_off: usize,
}

impl Region {
    /// Segment offset of `addr` (inside this region).
    pub fn off(&self, addr: u64) -> usize {
        self.seg_off + (addr - self.start) as usize
    }
}

/// The live allocations at the time of a launch, sorted by address.
pub struct Regions {
    pub list: Vec<Region>,
}

impl Regions {
    /// The region holding all of `[addr, addr + size)`: `Ok(i)`, or `Err(description)` saying
    /// which allocation the access overruns or that it is in none.
    pub fn find(
        &self,
        addr: u64,
        size: u64,
        hint: &mut usize,
    ) -> std::result::Result<usize, String> {
        if let Some(r) = self.list.get(*hint)
            && addr >= r.start
            && addr.saturating_add(size) <= r.end
        {
            return Ok(*hint);
        }
        let i = self.list.partition_point(|r| r.start <= addr);
        if i > 0 {
            let r = &self.list[i - 1];
            if addr.saturating_add(size) <= r.end {
                *hint = i - 1;
                return Ok(i - 1);
            }
            if addr < r.end {
                return Err(format!(
                    "{size}-byte access at {addr:#x} runs past the end of the {}-byte allocation at {:#x} (offset {})",
                    r.end - r.start,
                    r.start,
                    addr - r.start
                ));
            }
            return Err(format!(
                "{size}-byte access at {addr:#x} is {} bytes past the end of the {}-byte allocation at {:#x}",
                addr - r.end,
                r.end - r.start,
                r.start
            ));
        }
        Err(format!(
            "{size}-byte access at {addr:#x} is in no live allocation"
        ))
    }
}

#[derive(Default)]
struct Maps {
    segments: BTreeMap<u64, Arc<Segment>>,
    /// Live allocations: start → length.
    live: BTreeMap<u64, usize>,
    next: u64,
}

/// The VM's device memory. Internally synchronised; a launch works on a [`Regions`] snapshot.
pub struct Memory {
    maps: Mutex<Maps>,
}

impl Default for Memory {
    fn default() -> Self {
        Self::new()
    }
}

fn host_err(msg: String) -> Error {
    Error::Memory(msg)
}

impl Memory {
    pub fn new() -> Self {
        Memory {
            maps: Mutex::new(Maps {
                next: BASE,
                ..Maps::default()
            }),
        }
    }

    fn maps(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new segment of `bytes` (512-byte aligned), not yet live: the allocator level.
    pub fn alloc_segment(&self, bytes: usize) -> u64 {
        let mut m = self.maps();
        let ptr = m.next;
        m.next += (bytes as u64).div_ceil(512) * 512 + GAP;
        m.segments.insert(ptr, Arc::new(Segment::new(ptr, bytes)));
        ptr
    }

    /// Free a segment (and forget any live allocations inside it).
    pub fn free_segment(&self, ptr: u64) {
        let mut m = self.maps();
        if let Some(seg) = m.segments.remove(&ptr) {
            let end = ptr + seg.len as u64;
            let inside: Vec<u64> = m.live.range(ptr..end).map(|(&k, _)| k).collect();
            for k in inside {
                m.live.remove(&k);
            }
        }
    }

    /// Start a live allocation of `len` bytes at `ptr` (inside a segment): its bytes count as
    /// never written.
    pub fn mark_live(&self, ptr: u64, len: usize) -> Result<()> {
        let mut m = self.maps();
        let seg = seg_of(&m, ptr, len)?;
        seg.mark_range((ptr - seg.base) as usize, len, false);
        m.live.insert(ptr, len);
        Ok(())
    }

    /// End the live allocation at `ptr`.
    pub fn mark_dead(&self, ptr: u64) {
        self.maps().live.remove(&ptr);
    }

    /// A segment made live whole: for users without a pool (tests, benches).
    pub fn alloc(&self, bytes: usize) -> u64 {
        let p = self.alloc_segment(bytes);
        // A fresh segment always contains itself.
        let _ = self.mark_live(p, bytes);
        p
    }

    /// Bytes held by segments.
    pub fn used(&self) -> usize {
        self.maps().segments.values().map(|s| s.len).sum()
    }

    /// The live allocation holding `[addr, addr+len)`, as (segment, offset).
    fn live_range(&self, addr: u64, len: usize) -> Result<(Arc<Segment>, usize)> {
        let m = self.maps();
        let (&start, &llen) =
            m.live.range(..=addr).next_back().ok_or_else(|| {
                host_err(format!("address {addr:#x} is not in a live allocation"))
            })?;
        if addr.saturating_add(len as u64) > start + llen as u64 {
            return Err(host_err(format!(
                "{len} bytes at {addr:#x} run past the end of the {llen}-byte allocation at {start:#x}"
            )));
        }
        let seg = seg_of(&m, addr, len)?;
        let off = (addr - seg.base) as usize;
        Ok((seg, off))
    }

    /// Host → device copy (marks the bytes written).
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let (seg, off) = self.live_range(addr, data.len())?;
        write_bytes(&seg, off, data);
        seg.mark_range(off, data.len(), true);
        Ok(())
    }

    /// Fill bytes (marks them written).
    pub fn fill(&self, addr: u64, value: u8, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (seg, off) = self.live_range(addr, len)?;
        write_bytes(&seg, off, &vec![value; len]);
        seg.mark_range(off, len, true);
        Ok(())
    }

    /// Fill bytes without marking them written (poisoning: a later read still counts as a read of
    /// unwritten memory).
    pub fn poison(&self, addr: u64, value: u8, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (seg, off) = self.live_range(addr, len)?;
        write_bytes(&seg, off, &vec![value; len]);
        Ok(())
    }

    /// Device → host copy. With `check_init`, a byte never written is an error.
    pub fn read(&self, addr: u64, out: &mut [u8], check_init: bool) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let (seg, off) = self.live_range(addr, out.len())?;
        if check_init && let Some(b) = seg.first_uninit(off, out.len()) {
            return Err(host_err(format!(
                "initcheck: reading {} bytes at {addr:#x}: byte {} (at {:#x}) was never written since its allocation",
                out.len(),
                b - off,
                seg.base + b as u64
            )));
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = seg.byte(off + i);
        }
        Ok(())
    }

    /// Device → device copy; the written state travels with the bytes.
    pub fn copy(&self, dst: u64, src: u64, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (s, so) = self.live_range(src, len)?;
        let (d, dof) = self.live_range(dst, len)?;
        let data: Vec<u8> = (0..len).map(|i| s.byte(so + i)).collect();
        let init: Vec<bool> = (0..len).map(|i| s.is_init(so + i, 1)).collect();
        write_bytes(&d, dof, &data);
        for (i, &w) in init.iter().enumerate() {
            d.mark_range(dof + i, 1, w);
        }
        Ok(())
    }

    /// The live allocations now, for a launch.
    pub fn regions(&self) -> Regions {
        let m = self.maps();
        let mut list = Vec::with_capacity(m.live.len());
        for (&start, &len) in &m.live {
            if let Some((_, seg)) = m.segments.range(..=start).next_back() {
                list.push(Region {
                    start,
                    end: start + len as u64,
                    seg: seg.clone(),
                    seg_off: (start - seg.base) as usize,
                });
            }
        }
        Regions { list }
    }
}

fn seg_of(m: &Maps, ptr: u64, len: usize) -> Result<Arc<Segment>> {
    let (_, seg) = m
        .segments
        .range(..=ptr)
        .next_back()
        .ok_or_else(|| host_err(format!("address {ptr:#x} is not device memory")))?;
    if ptr.saturating_add(len as u64) > seg.base + seg.len as u64 {
        return Err(host_err(format!(
            "{len} bytes at {ptr:#x} run past the end of the {}-byte segment at {:#x}",
            seg.len, seg.base
        )));
    }
    Ok(seg.clone())
}

fn write_bytes(seg: &Segment, off: usize, data: &[u8]) {
    let mut i = 0;
    while i < data.len() {
        let o = off + i;
        if o.is_multiple_of(4) && i + 4 <= data.len() {
            let w = u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
            seg.words[o / 4].store(w, Relaxed);
            i += 4;
        } else {
            seg.set_byte(o, data[i]);
            i += 1;
        }
    }
}
