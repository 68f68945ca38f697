//! fp32 GEMM for CPUs with AVX-512: operands in cache-sized blocks, and a 12 × 32 tile of the
//! result kept in 24 vector registers while the depth streams through.
//!
//! Why our own and not the `gemm` crate here: on the model's shapes the crate ran at 0.65–0.80×
//! PyTorch's CPU matmul (BENCHMARKS.md); this runs at about its speed or above. The loops are the
//! classic ones (Goto/BLIS). Each thread takes an equal share of the rows of the result. For
//! each block of b's columns (NC) and of the depth (KC), the thread copies b into 32-column
//! panels (its own copy: b is the small operand at these shapes, and one fork per product beats
//! a shared copy and a join per block), then copies its rows of a into 12-row panels, and every
//! 12-row panel (24 KiB, in L1) meets every b panel (streamed from L2 or L3). Where a copy costs
//! about what it saves, the kernel reads the operand in place instead (`DIRECT_A_COLS`,
//! `DIRECT_B_ROWS` while the block stays in L2, `DIRECT_B_BLOCK`). The depth is summed in the
//! same order whatever the thread count, so results are reproducible.

use super::{MatRef, Product};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Rows of one register tile.
const MR: usize = 12;
/// Columns of one register tile: two 16-lane vectors.
const NR: usize = 32;
/// Depth of one packed block: a 12-row panel of a is 24 KiB, within L1 beside the stream of b.
/// One block covers the model's 512-deep products, and deeper ones pass over c half as often as
/// at 256 (the feed-forward output, 1024 × 512 × 2048 on one thread: 95 → 100 GFLOP/s).
const KC: usize = 512;
/// Columns of b per packed block: 512 × 2048 floats is 4 MiB, more than an L2 (1 MiB on Zen 4),
/// so b's panels stream from L3; fewer blocks mean fewer passes over a's rows (each block packs
/// them again), which measured more: 512 columns (half an L2) ran the fused projection's
/// 4096 × 4736 × 512 at 194 GFLOP/s on two threads, 2048 at 206–210 (with 256-deep blocks).
const NC: usize = 2048;
/// Rows of a packed at a time by one thread (12 panels).
const MC: usize = 144;
/// Columns of b up to which row-major rows of a are read in place, not packed.
const DIRECT_A_COLS: usize = 128;
/// Rows of a (per thread) up to which a row-major b is read in place, not packed...
const DIRECT_B_ROWS: usize = 256;
/// ... when a block of it holds at most this many floats (256 KiB, a quarter of an L2).
const DIRECT_B_BLOCK: usize = 1 << 16;
/// Floats per 64-byte cache line: packed panels start on a line, so no vector load splits one.
const LINE: usize = 16;

/// Whether this CPU runs the packed kernel (AVX-512F, checked once by the standard library).
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

thread_local! {
    /// Each thread's packed rows of a, reused from call to call (at most MC × KC floats).
    static PACKED_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// b's panels for all its columns and its whole depth, as `serial` packs each block of them:
/// for a b that many products share (attention's keys), packed once instead of by each.
pub(super) struct PackedB {
    buf: Vec<f32>,
    start: usize,
    k: usize,
    n: usize,
}

impl PackedB {
    /// b (k × n) packed, or None where one packed block does not hold its depth (k > KC) or
    /// the packed kernel does not run here.
    pub(super) fn new(k: usize, n: usize, b: &MatRef) -> Option<Self> {
        if !available() || k == 0 || k > KC {
            return None;
        }
        let len = k * n.next_multiple_of(NR);
        let mut buf = super::super::buffers::take(len + LINE);
        let start = line_start(&buf);
        // SAFETY: AVX-512F (`available`, checked above); the caller checked b's view, which
        // holds the depth and the columns.
        unsafe { pack_b(b, (0, k), (0, n), &mut buf[start..start + len]) };
        Some(PackedB { buf, start, k, n })
    }

    /// The panels of columns j0 .. (j0 a multiple of NR): where `serial`'s own packing of the
    /// block starting at column j0 would put them.
    fn panels_at(&self, j0: usize) -> &[f32] {
        &self.buf[self.start + j0 * self.k..]
    }
}

impl Drop for PackedB {
    fn drop(&mut self) {
        super::super::buffers::give(std::mem::take(&mut self.buf));
    }
}

/// The product `p` into dst on `threads` threads, b's panels from `pre` when given (its depth
/// p.k, its columns at least p.n). The caller checked that `available()`; k > 0.
pub(super) fn gemm(p: &Product, pre: Option<&PackedB>, dst: &mut [f32], threads: usize) {
    if let Some(pre) = pre {
        assert!(pre.k == p.k && pre.n >= p.n, "packed b of another shape");
    }
    if threads <= 1 || p.m <= MR {
        // SAFETY: the caller checked `available()`, and `Product` holds checked views.
        return unsafe { serial(p, pre, dst) };
    }
    // One task per thread, each an equal share of the result's rows, packing b for itself: one
    // fork for the whole product. b is the smaller operand at the model's shapes (a weight
    // against many tokens), so packing it twice costs about 1%; sharing it would cost a fork
    // and join per block. Shares in whole 12-row tiles left 264 rows against 248 at 512 rows:
    // the slower thread set the time; a share's last tile may be short instead.
    let per_task = p.m.div_ceil(threads);
    dst.par_chunks_mut(per_task * p.dst_rs)
        .enumerate()
        .for_each(|(t, rows)| {
            let i0 = t * per_task;
            if i0 >= p.m {
                return; // dst runs on past the result's rows
            }
            // Rows i0 .. of the product, which `rows` starts at.
            let task = Product {
                m: per_task.min(p.m - i0),
                a: MatRef {
                    offset: p.a.offset + i0 * p.a.row_stride,
                    ..p.a
                },
                ..*p
            };
            // SAFETY: as above.
            unsafe { serial(&task, pre, rows) };
        });
}

/// `gemm` on the calling thread.
///
/// # Safety
/// The CPU has AVX-512F; p's views are checked (`Product`) and dst holds its result; `pre`,
/// when given, is b packed (depth p.k, at least p.n columns).
#[target_feature(enable = "avx512f")]
unsafe fn serial(p: &Product, pre: Option<&PackedB>, dst: &mut [f32]) {
    let Product {
        m,
        n,
        k,
        ref a,
        ref b,
        dst_rs,
        scale,
        accumulate,
    } = *p;
    // A row-major b is read in place when few rows of a meet each of its elements (packing
    // would cost about as much as it saves) and its block stays in L2 while the tiles walk it.
    // A larger block streams from L3 on every panel of a, a row stride apart: the weight
    // gradient 512 × 2048 × 4096 (b's rows 8 KiB apart) ran 182 GFLOP/s so, 193 packed.
    let direct_b = pre.is_none()
        && b.col_stride == 1
        && m <= DIRECT_B_ROWS
        && KC.min(k) * NC.min(n) <= DIRECT_B_BLOCK;
    let len = if direct_b || pre.is_some() {
        0
    } else {
        KC * NC.min(n).next_multiple_of(NR) + LINE
    };
    let mut packed_b = super::super::buffers::take(len);
    let start = line_start(&packed_b);
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let source = if let Some(pre) = pre {
                BSource::Packed(pre.panels_at(j0)) // k ≤ KC: one depth block
            } else if direct_b {
                BSource::Direct(b)
            } else {
                let panels = &mut packed_b[start..start + kc * nc.next_multiple_of(NR)];
                // SAFETY: AVX-512F (the contract); the block's columns and depth are in the view.
                unsafe { pack_b(b, (p0, kc), (j0, nc), panels) };
                BSource::Packed(panels)
            };
            let block = Block {
                j0,
                nc,
                p0,
                kc,
                scale,
                add: accumulate || p0 > 0,
            };
            // SAFETY: AVX-512F (the contract); the block's rows and depth are in a's view.
            unsafe { block.rows(a, m, source, dst, dst_rs) };
        }
    }
    super::super::buffers::give(packed_b);
}

/// The block of b at depth p0 .. p0 + kc and columns j0 .. j0 + nc as panels of NR columns
/// (kc × NR floats each, a lane a column, a step a row; zero past the last column).
///
/// # Safety
/// The CPU has AVX-512F; the block lies in b's view; `panels` holds kc × nc rounded up to NR.
#[target_feature(enable = "avx512f")]
unsafe fn pack_b(
    b: &MatRef,
    (p0, kc): (usize, usize),
    (j0, nc): (usize, usize),
    panels: &mut [f32],
) {
    for (i, panel) in panels.chunks_mut(kc * NR).enumerate() {
        let j = j0 + i * NR;
        let at = b.offset + p0 * b.row_stride + j * b.col_stride;
        let cols = NR.min(j0 + nc - j);
        // SAFETY: AVX-512F (the contract); the panel's columns and depth are in the view.
        unsafe { pack::<NR>(b.data, at, b.col_stride, b.row_stride, cols, kc, panel) };
    }
}

/// The index in `v` of its first element on a 64-byte boundary (v has LINE spare floats).
fn line_start(v: &[f32]) -> usize {
    (v.as_ptr() as usize / 4).wrapping_neg() % LINE
}

/// Where the tiles read b from: its packed panels (NR floats a depth step), or b itself (its
/// row stride a step).
#[derive(Clone, Copy)]
enum BSource<'a> {
    Packed(&'a [f32]),
    Direct(&'a MatRef<'a>),
}

/// One packed block of b: columns j0 .. j0 + nc, depth p0 .. p0 + kc.
#[derive(Clone, Copy)]
struct Block {
    j0: usize,
    nc: usize,
    p0: usize,
    kc: usize,
    scale: f32,
    /// Add to the destination (a later depth block, or `accumulate`) instead of overwriting it.
    add: bool,
}

impl Block {
    /// The m rows of the result, for this block.
    ///
    /// # Safety
    /// The CPU has AVX-512F; a's view holds m rows and the block's depth.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows(&self, a: &MatRef, m: usize, b: BSource, dst: &mut [f32], rs: usize) {
        // a is read in place when it is a transposed view (each depth step's rows adjacent), or
        // row-major rows that meet only a few column panels of b (packing them would cost
        // about what it saves).
        let direct_a = a.row_stride == 1 || (a.col_stride == 1 && self.nc <= DIRECT_A_COLS);
        PACKED_A.with_borrow_mut(|packed| {
            if !direct_a {
                packed.resize(MC * KC + LINE, 0.0);
            }
            let start = line_start(packed);
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                let panels = mc.div_ceil(MR);
                if !direct_a {
                    let packed_a = &mut packed[start..start + panels * MR * self.kc];
                    for (t, panel) in packed_a.chunks_mut(MR * self.kc).enumerate() {
                        let r0 = ic + t * MR;
                        let at = a.offset + r0 * a.row_stride + self.p0 * a.col_stride;
                        let (rows, kc) = (MR.min(mc - t * MR), self.kc);
                        // SAFETY: AVX-512F (the contract); rows r0 .. and the depth are in the
                        // view. A lane of a's panel is a row, a step a column.
                        unsafe {
                            pack::<MR>(a.data, at, a.row_stride, a.col_stride, rows, kc, panel)
                        };
                    }
                }
                for t in 0..panels {
                    let r0 = ic + t * MR;
                    let rows = MR.min(mc - t * MR);
                    let (a_tile, a_rs, a_cs) = if direct_a {
                        let at = a.offset + r0 * a.row_stride + self.p0 * a.col_stride;
                        (&a.data[at..], a.row_stride, a.col_stride)
                    } else {
                        (&packed[start + t * MR * self.kc..], 1, MR)
                    };
                    for u in 0..self.nc.div_ceil(NR) {
                        let c0 = self.j0 + u * NR;
                        let cols = NR.min(self.j0 + self.nc - c0);
                        let (b_tile, b_rs) = match b {
                            BSource::Packed(panels) => (&panels[u * NR * self.kc..], NR),
                            BSource::Direct(b) => (
                                &b.data[b.offset + self.p0 * b.row_stride + c0..],
                                b.row_stride,
                            ),
                        };
                        // The tile's last element: row r0 + rows - 1, column c0 + cols - 1.
                        let last = (r0 + rows - 1) * rs + c0 + cols;
                        assert!(last <= dst.len(), "packed gemm: tile outside the result");
                        // SAFETY: the CPU has AVX-512F (`available`, checked by the caller);
                        // a's panel holds kc steps of MR floats, or a itself `rows` rows of kc
                        // steps inside its view; b's panel kc steps of NR floats, or b itself
                        // kc rows of `cols` columns inside its view (`gemm_into` checked both
                        // views); every element the tile writes, rows r0 .. r0+rows at stride
                        // rs and columns c0 .. c0+cols, lies in `dst` (asserted just above).
                        unsafe {
                            tile(&Tile {
                                rows,
                                kc: self.kc,
                                a: a_tile.as_ptr(),
                                a_rs,
                                a_cs,
                                b: b_tile.as_ptr(),
                                b_rs,
                                c: dst.as_mut_ptr().add(r0 * rs + c0),
                                rs,
                                cols,
                                scale: self.scale,
                                add: self.add,
                            })
                        }
                    }
                }
            }
        })
    }
}

/// A block of a view as `panel[p * W + l]`: `count` ≤ W lanes (elements `at + l · lane_stride`)
/// over kc depth steps (`+ p · step_stride`), zero for lanes count .. W. Rows of a are packed
/// with W = MR (a lane is a row, a step a column); columns of b with W = NR (a lane is a
/// column, a step a row).
///
/// # Safety
/// The CPU has AVX-512F; every element the block names lies in `data` (`gemm_into` checked the
/// views the blocks come from).
#[target_feature(enable = "avx512f")]
unsafe fn pack<const W: usize>(
    data: &[f32],
    at: usize,
    lane_stride: usize,
    step_stride: usize,
    count: usize,
    kc: usize,
    panel: &mut [f32],
) {
    assert!(panel.len() >= kc * W && count <= W);
    let base = data[at..].as_ptr();
    if step_stride == 1 {
        // Each lane contiguous along the depth (row-major rows of a, b seen transposed):
        // 16 × 16 blocks transposed in registers.
        // SAFETY: AVX-512F is present (the caller's contract); the count × kc block read lies in
        // the view; the panel holds kc × W floats (asserted).
        unsafe { transpose_into::<W>(base, lane_stride, count, kc, panel.as_mut_ptr()) }
    } else if lane_stride == 1 {
        // Each depth step `count` contiguous floats (row-major b, a seen transposed).
        for p in 0..kc {
            for h in (0..W).step_by(16) {
                let (read, write) = (
                    lanes(count.saturating_sub(h).min(16)),
                    lanes((W - h).min(16)),
                );
                // SAFETY: as above; the masked load reads only the `count` floats of step p,
                // the masked store writes only within step p's W floats of the panel.
                unsafe {
                    let v = _mm512_maskz_loadu_ps(read, base.wrapping_add(p * step_stride + h));
                    _mm512_mask_storeu_ps(panel.as_mut_ptr().add(p * W + h), write, v);
                }
            }
        }
    } else {
        panel[..kc * W].fill(0.0);
        for p in 0..kc {
            for l in 0..count {
                panel[p * W + l] = data[at + l * lane_stride + p * step_stride];
            }
        }
    }
}

/// `out[p * W + r] = src[r * stride + p]` for r < rows ≤ W, p < kc, zero for rows ≤ r < W:
/// `rows` contiguous runs of kc floats, transposed in 16 × 16 blocks.
///
/// # Safety
/// AVX-512F is present; src holds `rows` runs of kc floats at `stride`; out holds kc × W.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_into<const W: usize>(
    src: *const f32,
    stride: usize,
    rows: usize,
    kc: usize,
    out: *mut f32,
) {
    for g in (0..W).step_by(16) {
        let width = 16.min(W - g); // lanes of each output step in this group
        for p in (0..kc).step_by(16) {
            let steps = 16.min(kc - p);
            let mask = lanes(steps);
            let live = rows.saturating_sub(g);
            // A fixed count of loads and stores, so the block stays in registers (a loop to
            // `live` kept it on the stack); rows past `live` are zero.
            let block = std::array::from_fn(|r| {
                if r < live {
                    // SAFETY: row g + r < rows and p + steps ≤ kc: inside the run (the contract).
                    unsafe { _mm512_maskz_loadu_ps(mask, src.add((g + r) * stride + p)) }
                } else {
                    _mm512_setzero_ps()
                }
            });
            let cols = transpose16(block);
            for (q, v) in cols.into_iter().enumerate() {
                if q < steps {
                    // SAFETY: step p + q < kc, lanes g .. g + width ≤ W: inside out (the
                    // contract).
                    unsafe { _mm512_mask_storeu_ps(out.add((p + q) * W + g), lanes(width), v) }
                }
            }
        }
    }
}

/// The transpose of a 16 × 16 block held as 16 rows: element c of row r goes to element r of
/// row c. Pairs of rows interleave (4 × 2 blocks per 128-bit lane), pairs of pairs interleave
/// (4 × 4 blocks: lane l of vector e of row group i is column 4l + e of rows 4i .. 4i + 3), then
/// the 128-bit lanes of the four row groups are transposed as a 4 × 4 matrix.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(rows: [__m512; 16]) -> [__m512; 16] {
    let mut quads = [[_mm512_setzero_ps(); 4]; 4]; // [row group i][e]
    for (i, quad) in quads.iter_mut().enumerate() {
        let r = &rows[4 * i..4 * i + 4];
        let (lo01, hi01) = (
            _mm512_unpacklo_ps(r[0], r[1]),
            _mm512_unpackhi_ps(r[0], r[1]),
        );
        let (lo23, hi23) = (
            _mm512_unpacklo_ps(r[2], r[3]),
            _mm512_unpackhi_ps(r[2], r[3]),
        );
        let pd = _mm512_castps_pd;
        let ps = _mm512_castpd_ps;
        quad[0] = ps(_mm512_unpacklo_pd(pd(lo01), pd(lo23)));
        quad[1] = ps(_mm512_unpackhi_pd(pd(lo01), pd(lo23)));
        quad[2] = ps(_mm512_unpacklo_pd(pd(hi01), pd(hi23)));
        quad[3] = ps(_mm512_unpackhi_pd(pd(hi01), pd(hi23)));
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for e in 0..4 {
        let s = [quads[0][e], quads[1][e], quads[2][e], quads[3][e]];
        // Lanes (0, 2) and (1, 3) of each pair of groups, then of those: lane l of every group.
        let u0 = _mm512_shuffle_f32x4::<0x88>(s[0], s[1]);
        let u1 = _mm512_shuffle_f32x4::<0xdd>(s[0], s[1]);
        let u2 = _mm512_shuffle_f32x4::<0x88>(s[2], s[3]);
        let u3 = _mm512_shuffle_f32x4::<0xdd>(s[2], s[3]);
        out[e] = _mm512_shuffle_f32x4::<0x88>(u0, u2);
        out[4 + e] = _mm512_shuffle_f32x4::<0x88>(u1, u3);
        out[8 + e] = _mm512_shuffle_f32x4::<0xdd>(u0, u2);
        out[12 + e] = _mm512_shuffle_f32x4::<0xdd>(u1, u3);
    }
    out
}

/// One register tile's operands: `c (rows × cols, row stride rs) = [c +] scale · Σ_p
/// a[r·a_rs + p·a_cs] · b[p·b_rs + j]`, p < kc.
#[derive(Clone, Copy)]
struct Tile {
    rows: usize,
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    c: *mut f32,
    rs: usize,
    cols: usize,
    scale: f32,
    add: bool,
}

/// A tile by the register kernel compiled for its row count, and for a packed a (rows adjacent,
/// MR floats a step: strides known when compiled) or a read in place.
///
/// # Safety
/// As `tile_of`.
#[inline]
unsafe fn tile(t: &Tile) {
    macro_rules! by_rows {
        ($packed:literal) => {
            match t.rows {
                1 => tile_of::<1, $packed>,
                2 => tile_of::<2, $packed>,
                3 => tile_of::<3, $packed>,
                4 => tile_of::<4, $packed>,
                5 => tile_of::<5, $packed>,
                6 => tile_of::<6, $packed>,
                7 => tile_of::<7, $packed>,
                8 => tile_of::<8, $packed>,
                9 => tile_of::<9, $packed>,
                10 => tile_of::<10, $packed>,
                11 => tile_of::<11, $packed>,
                _ => tile_of::<12, $packed>,
            }
        };
    }
    let kernel = if t.a_rs == 1 && t.a_cs == MR {
        by_rows!(true)
    } else {
        by_rows!(false)
    };
    // SAFETY: passed on from the caller.
    unsafe { kernel(t) }
}

/// The register tile: R rows of two 16-lane accumulators.
///
/// # Safety
/// The CPU has AVX-512F; a holds R rows of kc steps at its strides (PACKED: 1 and MR); b holds
/// kc steps of `cols` ≤ NR floats at stride b_rs; c addresses R rows of `cols` writable floats
/// at stride rs.
#[target_feature(enable = "avx512f")]
unsafe fn tile_of<const R: usize, const PACKED: bool>(t: &Tile) {
    let (a_rs, a_cs) = if PACKED { (1, MR) } else { (t.a_rs, t.a_cs) };
    let masks = [lanes(t.cols.min(16)), lanes(t.cols.saturating_sub(16))];
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    // The tile's rows of c, on their way to L1 while the depth streams: at the model's shapes c
    // is far larger than the caches, and 24 lines missed at the end would stall the stores.
    for r in 0..R {
        let row = t.c.wrapping_add(r * t.rs);
        for at in [0, 16, t.cols - 1] {
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(at) as *const i8);
        }
    }
    for p in 0..t.kc {
        // Lanes past `cols` are masked off: never read nor written, wherever they point.
        let (ap, bp) = (t.a.wrapping_add(p * a_cs), t.b.wrapping_add(p * t.b_rs));
        // SAFETY: p < kc: the enabled lanes are inside b's step p (the function's contract).
        let (b0, b1) = unsafe {
            (
                _mm512_maskz_loadu_ps(masks[0], bp),
                _mm512_maskz_loadu_ps(masks[1], bp.wrapping_add(16)),
            )
        };
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: p < kc and r < R: inside a (the contract).
            let x = _mm512_set1_ps(unsafe { *ap.add(r * a_rs) });
            row[0] = _mm512_fmadd_ps(x, b0, row[0]);
            row[1] = _mm512_fmadd_ps(x, b1, row[1]);
        }
    }
    let s = _mm512_set1_ps(t.scale);
    for (r, row) in acc.iter().enumerate() {
        for (h, mask) in masks.into_iter().enumerate() {
            let out = t.c.wrapping_add(r * t.rs + 16 * h);
            let mut v = _mm512_mul_ps(row[h], s);
            if t.add {
                // SAFETY: the enabled lanes are inside row r's `cols` columns (the contract).
                v = _mm512_add_ps(v, unsafe { _mm512_maskz_loadu_ps(mask, out) });
            }
            // SAFETY: as above.
            unsafe { _mm512_mask_storeu_ps(out, mask, v) }
        }
    }
}

/// A mask of the first `n` ≤ 16 lanes.
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}
