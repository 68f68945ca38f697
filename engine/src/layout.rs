//! Shapes and strided views. A view (reshape of contiguous data, transpose, narrow, broadcast)
//! changes only the layout; the data stays shared.

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    dims: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

pub fn elem_count(dims: &[usize]) -> usize {
    dims.iter().product()
}

fn contiguous_strides(dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; dims.len()];
    let mut acc = 1;
    for (s, d) in strides.iter_mut().zip(dims).rev() {
        *s = acc;
        acc *= *d;
    }
    strides
}

impl Layout {
    pub fn contiguous(dims: &[usize]) -> Self {
        Layout {
            dims: dims.to_vec(),
            strides: contiguous_strides(dims),
            offset: 0,
        }
    }
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn rank(&self) -> usize {
        self.dims.len()
    }
    pub fn elem_count(&self) -> usize {
        elem_count(&self.dims)
    }
    /// Row-major with no gaps (offset may be non-zero).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1;
        for (d, s) in self.dims.iter().zip(&self.strides).rev() {
            if *d != 1 && *s != acc {
                return false;
            }
            acc *= *d;
        }
        true
    }
    /// The view as `(rows, row length, row stride)` when it is rows of contiguous elements at
    /// one stride (a contiguous tensor, or a narrowed last dim of one: each row a run, the
    /// rows evenly spaced); `None` otherwise.
    pub fn uniform_rows(&self) -> Option<(usize, usize, usize)> {
        let rank = self.rank();
        let len = self.dims.last().copied().unwrap_or(1);
        if len > 1 && self.strides[rank - 1] != 1 {
            return None;
        }
        // The outer dims must merge into one: each stride the next one's times its size.
        let outer: Vec<(usize, usize)> = self.dims[..rank.saturating_sub(1)]
            .iter()
            .zip(&self.strides)
            .filter(|(d, _)| **d != 1)
            .map(|(d, s)| (*d, *s))
            .collect();
        let merges = outer.windows(2).all(|w| w[0].1 == w[1].1 * w[1].0);
        let rows = outer.iter().map(|(d, _)| d).product();
        let stride = outer.last().map_or(len, |(_, s)| *s);
        merges.then_some((rows, len, stride))
    }

    /// The contiguous range of the buffer, when there is one.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous()
            .then(|| self.offset..self.offset + self.elem_count())
    }

    pub fn reshape(&self, dims: &[usize]) -> Result<Self> {
        if elem_count(dims) != self.elem_count() {
            return Err(Error::shape(
                "reshape",
                format!("cannot reshape {:?} to {:?}", self.dims, dims),
            ));
        }
        if !self.is_contiguous() {
            return Err(Error::shape(
                "reshape",
                "view is not contiguous; call contiguous() first",
            ));
        }
        Ok(Layout {
            dims: dims.to_vec(),
            strides: contiguous_strides(dims),
            offset: self.offset,
        })
    }

    pub fn transpose(&self, a: usize, b: usize) -> Result<Self> {
        if a >= self.rank() || b >= self.rank() {
            return Err(Error::shape(
                "transpose",
                format!("dims {a},{b} out of range for {:?}", self.dims),
            ));
        }
        let mut out = self.clone();
        out.dims.swap(a, b);
        out.strides.swap(a, b);
        Ok(out)
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        if dim >= self.rank() || start + len > self.dims[dim] {
            return Err(Error::shape(
                "narrow",
                format!(
                    "dim {dim} range {start}..{} out of {:?}",
                    start + len,
                    self.dims
                ),
            ));
        }
        let mut out = self.clone();
        out.offset += start * self.strides[dim];
        out.dims[dim] = len;
        Ok(out)
    }

    /// Broadcast to `dims` (numpy rules, leading dims added); broadcast dims get stride 0.
    pub fn broadcast_as(&self, dims: &[usize]) -> Result<Self> {
        let err = || {
            Error::shape(
                "broadcast_as",
                format!("cannot broadcast {:?} to {:?}", self.dims, dims),
            )
        };
        if dims.len() < self.rank() {
            return Err(err());
        }
        let lead = dims.len() - self.rank();
        let mut strides = vec![0; dims.len()];
        for (i, &d) in dims.iter().enumerate().skip(lead) {
            let (sd, ss) = (self.dims[i - lead], self.strides[i - lead]);
            strides[i] = if sd == d {
                ss
            } else if sd == 1 {
                0
            } else {
                return Err(err());
            };
        }
        Ok(Layout {
            dims: dims.to_vec(),
            strides,
            offset: self.offset,
        })
    }

    /// Contiguous runs `(start, len)` covering the view in row-major order: whole rows of the
    /// last dim when its stride is 1 (rows merge into longer runs when they are adjacent).
    pub fn for_each_run(&self, mut f: impl FnMut(usize, usize)) {
        if self.elem_count() == 0 {
            return;
        }
        if let Some(r) = self.contiguous_range() {
            return f(r.start, r.len());
        }
        let rank = self.rank();
        let (last, last_stride) = (self.dims[rank - 1], self.strides[rank - 1]);
        let outer = &self.dims[..rank - 1];
        let mut index = vec![0usize; outer.len()];
        let mut base = self.offset;
        loop {
            if last_stride == 1 {
                f(base, last);
            } else {
                for j in 0..last {
                    f(base + j * last_stride, 1);
                }
            }
            // Advance the odometer over the outer dims.
            let mut d = outer.len();
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                index[d] += 1;
                base += self.strides[d];
                if index[d] < outer[d] {
                    break;
                }
                base -= self.strides[d] * index[d];
                index[d] = 0;
            }
        }
    }

    /// Buffer offsets of every element, in row-major order of the view.
    pub fn offsets(&self) -> StridedOffsets<'_> {
        StridedOffsets {
            layout: self,
            index: vec![0; self.rank()],
            next: if self.elem_count() == 0 {
                None
            } else {
                Some(self.offset)
            },
        }
    }
}

pub struct StridedOffsets<'a> {
    layout: &'a Layout,
    index: Vec<usize>,
    next: Option<usize>,
}

impl Iterator for StridedOffsets<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        let cur = self.next?;
        let mut off = cur;
        let mut done = true;
        for d in (0..self.layout.rank()).rev() {
            self.index[d] += 1;
            off += self.layout.strides[d];
            if self.index[d] < self.layout.dims[d] {
                done = false;
                break;
            }
            off -= self.layout.strides[d] * self.index[d];
            self.index[d] = 0;
        }
        self.next = if done { None } else { Some(off) };
        Some(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_transpose() {
        let l = Layout::contiguous(&[2, 3]).transpose(0, 1).unwrap();
        assert_eq!(l.offsets().collect::<Vec<_>>(), vec![0, 3, 1, 4, 2, 5]);
        assert!(!l.is_contiguous());
    }

    #[test]
    fn offsets_of_narrow_and_broadcast() {
        let l = Layout::contiguous(&[3, 4]).narrow(1, 1, 2).unwrap();
        assert_eq!(l.offsets().collect::<Vec<_>>(), vec![1, 2, 5, 6, 9, 10]);
        let b = Layout::contiguous(&[3]).broadcast_as(&[2, 3]).unwrap();
        assert_eq!(b.offsets().collect::<Vec<_>>(), vec![0, 1, 2, 0, 1, 2]);
    }

    /// Evenly spaced rows are found through any outer dims, and only then: every row the
    /// reported geometry names is the view's row, checked against `offsets`.
    #[test]
    fn uniform_rows_of_views() {
        let rows_match = |l: &Layout| {
            let (count, len, stride) = l.uniform_rows().expect("uniform rows");
            let want: Vec<usize> = l.offsets().collect();
            let got: Vec<usize> = (0..count)
                .flat_map(|i| (0..len).map(move |j| l.offset() + i * stride + j))
                .collect();
            assert_eq!(got, want, "{l:?}");
        };
        // SwiGLU's halves of the fused projection: (b, n, 4736) narrowed to 2048 columns.
        let fused = Layout::contiguous(&[2, 3, 10]);
        rows_match(&fused);
        rows_match(&fused.narrow(2, 6, 4).unwrap());
        rows_match(&fused.narrow(0, 1, 1).unwrap().narrow(2, 2, 3).unwrap());
        rows_match(&Layout::contiguous(&[4, 1, 5]).narrow(2, 1, 3).unwrap());
        rows_match(&Layout::contiguous(&[5]));
        rows_match(&Layout::contiguous(&[]));
        // Not rows at one stride: a transposed last dim, a narrowed middle dim under an outer
        // one (rows spaced unevenly), and a transposed pair of outer dims.
        assert_eq!(fused.transpose(1, 2).unwrap().uniform_rows(), None);
        assert_eq!(fused.narrow(1, 0, 2).unwrap().uniform_rows(), None);
        assert_eq!(fused.transpose(0, 1).unwrap().uniform_rows(), None);
    }
}
