//! Matrix multiply. Every operand has arbitrary row/column strides, so transposed and narrowed
//! views multiply without a copy. Three paths: `few_rows` (decoding's one to sixteen rows),
//! `packed` (our AVX-512 kernel, on CPUs that have it), and the `gemm` crate everywhere else.

#[cfg(target_arch = "x86_64")]
mod packed;

/// One operand: its buffer and the strides of its (batch, row, column) dims, in elements.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub batch_stride: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A contiguous row-major (rows × cols) matrix starting at `offset`.
    pub fn rows(data: &'a [f32], offset: usize, cols: usize) -> Self {
        MatRef {
            data,
            offset,
            batch_stride: 0,
            row_stride: cols,
            col_stride: 1,
        }
    }
    /// The transpose of this view (swaps the strides).
    pub fn t(self) -> Self {
        MatRef {
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// `dst (m×n, row stride dst_rs) = [dst +] scale · a (m×k) · b (k×n)`, one batch element.
/// `parallel` lets gemm use the rayon pool (only for large, top-level products).
#[allow(clippy::too_many_arguments)]
pub fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    a: &MatRef,
    b: &MatRef,
    scale: f32,
    accumulate: bool,
    parallel: bool,
) {
    let p = Product {
        m,
        n,
        k,
        a: *a,
        b: *b,
        dst_rs,
        scale,
        accumulate,
    };
    run(&p, None, dst, parallel);
}

/// A right-hand operand that many products share — attention's keys and values, which every
/// head and every block of queries of a sequence multiplies — copied once into the register
/// kernel's layout instead of by each product. Only where that kernel runs and the depth fits
/// one packed block; elsewhere the products read the view as `gemm_into` does.
pub struct SharedB<'a> {
    view: MatRef<'a>,
    /// Depth and columns of b.
    k: usize,
    n: usize,
    #[cfg(target_arch = "x86_64")]
    packed: Option<packed::PackedB>,
}

impl<'a> SharedB<'a> {
    /// b (k × n) for products of up to `rows` rows each: packed when they are many enough to
    /// take the packed kernel (`few_rows` reads b in place).
    pub fn new(k: usize, n: usize, view: MatRef<'a>, rows: usize) -> Self {
        check_bounds(k, n, &view);
        SharedB {
            view,
            k,
            n,
            #[cfg(target_arch = "x86_64")]
            packed: if rows > FEW_ROWS {
                packed::PackedB::new(k, n, &view)
            } else {
                None
            },
        }
    }

    /// `dst (m×n) = [dst +] scale · a (m×k) · b`'s first n columns, as `gemm_into`.
    pub fn product(
        &self,
        (m, n): (usize, usize),
        dst: &mut [f32],
        dst_rs: usize,
        a: &MatRef,
        scale: f32,
        accumulate: bool,
    ) {
        assert!(n <= self.n, "{n} columns of a shared operand of {}", self.n);
        let p = Product {
            m,
            n,
            k: self.k,
            a: *a,
            b: self.view,
            dst_rs,
            scale,
            accumulate,
        };
        #[cfg(target_arch = "x86_64")]
        let pre = self.packed.as_ref();
        #[cfg(not(target_arch = "x86_64"))]
        let pre = None;
        run(&p, pre, dst, false)
    }
}

#[cfg(target_arch = "x86_64")]
type Prepacked<'p> = Option<&'p packed::PackedB>;
#[cfg(not(target_arch = "x86_64"))]
type Prepacked<'p> = Option<&'p ()>;

/// The product on the path its shape takes (b's panels from `pre` on the packed one), after
/// checking that every element it reads and writes lies in its buffer.
fn run(p: &Product, pre: Prepacked, dst: &mut [f32], parallel: bool) {
    let Product {
        m, n, k, dst_rs, ..
    } = *p;
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_rs + n <= dst.len(),
        "matmul destination too small"
    );
    assert!(m == 1 || dst_rs >= n, "matmul destination rows overlap");
    check_bounds(m, k, &p.a);
    check_bounds(k, n, &p.b);
    if few_rows(p, dst, parallel) {
        return;
    }
    let threads = rayon::current_num_threads();
    let parallel = parallel && m * n * k >= 1 << 22 && threads > 1;
    #[cfg(target_arch = "x86_64")]
    if k > 0 && packed::available() {
        packed::gemm(p, pre, dst, if parallel { threads } else { 1 });
        return;
    }
    let _ = pre; // packed only where the packed kernel runs
    gemm_crate(p, dst, parallel);
}

/// One product, past `gemm_into`'s checks: `dst (m×n, row stride dst_rs) = [dst +] scale ·
/// a (m×k) · b (k×n)`, every element of a's and b's views inside their buffers.
#[derive(Clone, Copy)]
struct Product<'a> {
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'a>,
    b: MatRef<'a>,
    dst_rs: usize,
    scale: f32,
    accumulate: bool,
}

/// `gemm_into` by the `gemm` crate (CPUs without AVX-512).
fn gemm_crate(p: &Product, dst: &mut [f32], parallel: bool) {
    let par = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    let Product { m, n, k, a, b, .. } = *p;
    // SAFETY: `dst` holds the m×n result at row stride dst_rs, column stride 1, and every
    // element a and b address lies inside their slices (`gemm_into` checked both); `dst` is a
    // unique borrow, so it cannot alias the shared borrows of a and b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            p.dst_rs as isize,
            p.accumulate,
            a.data.as_ptr().add(a.offset),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr().add(b.offset),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            p.scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// `out[b] = a[b] (m×k) · b[b] (k×n)` for every batch, out contiguous (batch, m, n).
pub fn matmul(batch: usize, m: usize, n: usize, k: usize, a: &MatRef, b: &MatRef) -> Vec<f32> {
    // gemm overwrites the output (it does not read it) unless k = 0.
    let len = batch * m * n;
    let mut out = if k == 0 {
        super::buffers::zeros(len)
    } else {
        super::buffers::take(len)
    };
    for i in 0..batch {
        let ai = MatRef {
            offset: a.offset + i * a.batch_stride,
            ..*a
        };
        let bi = MatRef {
            offset: b.offset + i * b.batch_stride,
            ..*b
        };
        gemm_into(
            m,
            n,
            k,
            &mut out[i * m * n..(i + 1) * m * n],
            n,
            &ai,
            &bi,
            1.0,
            false,
            true,
        );
    }
    out
}

/// Rows of `a` up to which `few_rows` computes the product itself.
const FEW_ROWS: usize = 16;

/// Columns of the result per block (and per parallel task) in `few_rows`.
const BLOCK_COLS: usize = 64;

/// The product for a few rows of `a` (decoding: one row per sequence), when the weight is read
/// along contiguous runs: b's columns contiguous (a row-major weight seen transposed: each
/// result is a dot product of two runs) or b's rows contiguous (each result row is a sum of
/// scaled rows of b). gemm packs both operands into blocks first, which at one to sixteen rows
/// costs more than the product; here b is streamed once. False when the shapes do not fit.
fn few_rows(p: &Product, dst: &mut [f32], parallel: bool) -> bool {
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
    // A dot product pays for adding up its 16 running sums: worth it from 64 terms on.
    let dots = b.row_stride == 1 && a.col_stride == 1 && k >= 64;
    let rows = b.col_stride == 1;
    if m > FEW_ROWS || k == 0 || !(dots || rows) {
        return false;
    }
    // Blocks of columns, each an m × width row-major tile, then scattered into dst.
    let mut tiles = super::buffers::take(m * n);
    let block = |c: usize, tile: &mut [f32]| {
        let j0 = c * BLOCK_COLS;
        kernel(Tile { dots, m, k, j0 }, a, b, tile);
    };
    if parallel && m * n * k >= 1 << 20 && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        tiles
            .par_chunks_mut(m * BLOCK_COLS)
            .enumerate()
            .for_each(|(c, tile)| block(c, tile));
    } else {
        tiles
            .chunks_mut(m * BLOCK_COLS)
            .enumerate()
            .for_each(|(c, tile)| block(c, tile));
    }
    for (c, tile) in tiles.chunks(m * BLOCK_COLS).enumerate() {
        let width = tile.len() / m;
        for i in 0..m {
            let out = &mut dst[i * dst_rs + c * BLOCK_COLS..][..width];
            let got = &tile[i * width..(i + 1) * width];
            if accumulate {
                out.iter_mut().zip(got).for_each(|(o, g)| *o += scale * g);
            } else {
                out.iter_mut().zip(got).for_each(|(o, g)| *o = scale * g);
            }
        }
    }
    super::buffers::give(tiles);
    true
}

/// The shape of one `few_rows` tile: columns j0 .. j0 + width of a (m × k) · b into an
/// (m × width) tile, by dot products (`dots`) or by rows of b.
#[derive(Clone, Copy)]
struct Tile {
    dots: bool,
    m: usize,
    k: usize,
    j0: usize,
}

super::simd::widest! {
    /// One tile of `few_rows`, with the widest vector instructions this CPU has.
    fn kernel(t: Tile, a: &MatRef, b: &MatRef, tile: &mut [f32]) = tile_portable;
}

/// The tile's loops, written so the compiler vectorises them (compiled into each variant of
/// `kernel` for its instruction set).
#[inline(always)]
fn tile_portable(t: Tile, a: &MatRef, b: &MatRef, tile: &mut [f32]) {
    let Tile { dots, m, k, j0 } = t;
    let width = tile.len() / m;
    if dots {
        for jj in 0..width {
            let bj = &b.data[b.offset + (j0 + jj) * b.col_stride..][..k];
            for i in 0..m {
                let ai = &a.data[a.offset + i * a.row_stride..][..k];
                tile[i * width + jj] = super::simd::dot(ai, bj);
            }
        }
    } else {
        tile.fill(0.0);
        for i in 0..m {
            let out = &mut tile[i * width..(i + 1) * width];
            for p in 0..k {
                let x = a.data[a.offset + i * a.row_stride + p * a.col_stride];
                let bp = &b.data[b.offset + p * b.row_stride + j0..][..width];
                out.iter_mut().zip(bp).for_each(|(o, y)| *o += x * y);
            }
        }
    }
}

/// Every element a (rows × cols) view touches must lie in its buffer.
fn check_bounds(rows: usize, cols: usize, x: &MatRef) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = x.offset + (rows - 1) * x.row_stride + (cols - 1) * x.col_stride;
    assert!(last < x.data.len(), "matmul operand view out of bounds");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// a (m×k) · b (k×n) by the definition, in f64.
    fn naive(m: usize, n: usize, k: usize, a: &MatRef, b: &MatRef) -> Vec<f64> {
        let at = |x: &MatRef, r: usize, c: usize| {
            f64::from(x.data[x.offset + r * x.row_stride + c * x.col_stride])
        };
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| at(a, i, p) * at(b, p, j)).sum();
            }
        }
        out
    }

    /// Products with a shared, packed-once b give exactly what `gemm_into` gives with the view,
    /// over b's first columns or all of them (past one packed column block too), for few rows
    /// (b read in place) and many, with scaling and accumulation.
    #[test]
    fn shared_b_gives_what_the_view_gives() {
        let mut rng = crate::Rng::new(4);
        for (m, n_all, k) in [(64, 1024, 64), (13, 100, 33), (70, 2100, 17), (5, 64, 64)] {
            let data: Vec<f32> = (0..(m + n_all) * k)
                .map(|_| rng.uniform() * 2.0 - 1.0)
                .collect();
            let a = MatRef::rows(&data, 0, k);
            // b seen transposed (attention's keys), and row-major.
            for b in [
                MatRef::rows(&data, m * k, k).t(),
                MatRef::rows(&data, m * k, n_all),
            ] {
                let shared = SharedB::new(k, n_all, b, m);
                for n in [n_all, n_all / 2 + 3, 1] {
                    for accumulate in [false, true] {
                        let mut want = vec![0.5f32; m * n];
                        gemm_into(m, n, k, &mut want, n, &a, &b, 0.3, accumulate, false);
                        let mut got = vec![0.5f32; m * n];
                        shared.product((m, n), &mut got, n, &a, 0.3, accumulate);
                        assert!(got == want, "{m}×{n}×{k} accumulate {accumulate}");
                    }
                }
            }
        }
    }

    /// The few-rows kernels (weights seen transposed, or row-major), the packed kernel (more
    /// rows, or strides neither few-rows kernel takes) and the gemm crate agree with the
    /// definition, with scaling and accumulation, at sizes around the tile, block and vector
    /// widths, and leave what lies outside the result alone.
    #[test]
    fn few_rows_and_gemm_match_the_definition() {
        let mut rng = crate::Rng::new(3);
        for (m, n, k) in [
            (1, 1, 1),
            (1, 256, 128),
            (3, 65, 17),
            (8, 1216, 128),
            (16, 64, 300),
            (17, 70, 33),
            (5, 129, 1),
            // Past one packed block: columns (29, 2100, 40; NC is 2048), depth (150, 40, 513; KC
            // is 512) and rows packed at a time (300, 40, 70; MC is 144); partial 12-row and
            // 32-column tiles; (29, 531, 300) is large enough to split over two threads. A
            // row-major b is read in place by (150, 40, 513), over two depth blocks, and packed
            // by (29, 531, 300) for its size alone and by (300, 40, 70) for its rows.
            (29, 531, 300),
            (29, 2100, 40),
            (150, 40, 513),
            (300, 40, 70),
        ] {
            let data: Vec<f32> = (0..(m + n) * k + 7)
                .map(|_| rng.uniform() * 2.0 - 1.0)
                .collect();
            let a = MatRef::rows(&data, 3, k);
            // b as a row-major (n × k) weight seen transposed, and as a row-major (k × n).
            let bt = MatRef::rows(&data, 3 + m * k, k).t();
            let br = MatRef::rows(&data, 3 + m * k, n);
            // a transposed view of a (column-major rows), which only the row form takes.
            let a_cols = MatRef {
                row_stride: 1,
                col_stride: m,
                ..a
            };
            for (a, b) in [(a, bt), (a, br), (a_cols, br), (a_cols, bt)] {
                let want = naive(m, n, k, &a, &b);
                // The result at a wider row stride, in a buffer running on past its rows:
                // what lies outside the m×n result must stay untouched.
                let rs = n + 3;
                for (accumulate, crate_only) in [(false, false), (true, false), (true, true)] {
                    let mut dst = vec![0.5f32; (m + 2) * rs];
                    if crate_only {
                        // The path of CPUs without AVX-512, tested on every machine.
                        let p = Product {
                            m,
                            n,
                            k,
                            a,
                            b,
                            dst_rs: rs,
                            scale: 0.25,
                            accumulate,
                        };
                        gemm_crate(&p, &mut dst, true);
                    } else {
                        gemm_into(m, n, k, &mut dst, rs, &a, &b, 0.25, accumulate, true);
                    }
                    for (idx, got) in dst.iter().enumerate() {
                        let (i, j) = (idx / rs, idx % rs);
                        let w = if i < m && j < n {
                            0.25 * want[i * n + j] + if accumulate { 0.5 } else { 0.0 }
                        } else {
                            0.5
                        };
                        let tol = 1e-5 * (1.0 + (k as f64).sqrt());
                        assert!(
                            (f64::from(*got) - w).abs() <= tol,
                            "{m}×{n}×{k} [{i}, {j}]: {got} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
