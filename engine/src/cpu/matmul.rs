//! Matrix multiply on the `gemm` crate, which takes arbitrary row/column strides, so transposed
//! and narrowed views multiply without a copy.

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
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_rs + n <= dst.len(),
        "matmul destination too small"
    );
    check_bounds(m, k, a);
    check_bounds(k, n, b);
    let threads = rayon::current_num_threads();
    let par = if parallel && m * n * k >= 1 << 22 && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `dst` holds the m×n result at row stride dst_rs, column stride 1 (asserted above);
    // `check_bounds` proved every element a and b address lies inside their slices; `dst` is a
    // unique borrow, so it cannot alias the shared borrows of a and b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr().add(a.offset),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr().add(b.offset),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
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

/// Every element a (rows × cols) view touches must lie in its buffer.
fn check_bounds(rows: usize, cols: usize, x: &MatRef) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = x.offset + (rows - 1) * x.row_stride + (cols - 1) * x.col_stride;
    assert!(last < x.data.len(), "matmul operand view out of bounds");
}
