//! The backend boundary: what every backend (the CPU reference, CUDA) implements, and the
//! descriptions of ops that the front end (`ops/`) and the backends share.
//!
//! A leaf module: it knows layouts, dtypes and errors, nothing of `Tensor`, autograd or any
//! backend. An op's entry point in `ops/<family>.rs` checks its arguments, turns each operand
//! into a (storage, layout) pair, calls the one method below through `Storage` (which routes to
//! the operands' backend), and records its autograd `Op` once on the result. Backends return new
//! contiguous storage (the front end knows the result's shape) and never build tensors.

use crate::layout::Layout;
use crate::{DType, Result};
use std::any::Any;
use std::sync::{Arc, OnceLock};

/// Binary elementwise ops (operands already broadcast to one shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// The larger; NaN if either is NaN (as `torch.maximum`).
    Max,
    /// The smaller; NaN if either is NaN.
    Min,
    /// 1 where a ≥ b, else 0 (NaN compares false): a mask, carrying no gradient.
    Ge,
}

impl BinaryOp {
    #[inline]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            // When neither comparison holds one is NaN, and so is a + b.
            BinaryOp::Max => {
                if a >= b {
                    a
                } else if b > a {
                    b
                } else {
                    a + b
                }
            }
            BinaryOp::Min => {
                if a <= b {
                    a
                } else if b < a {
                    b
                } else {
                    a + b
                }
            }
            BinaryOp::Ge => f32::from(u8::from(a >= b)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqr,
    Sqrt,
    Sigmoid,
    Silu,
    Tanh,
    /// `x * mul + add`.
    Affine(f32, f32),
}

impl UnaryOp {
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqr => x * x,
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Affine(m, a) => x * m + a,
        }
    }
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// LayerNorm's ε (the seed's `F.layer_norm` default).
pub const LAYER_NORM_EPS: f32 = 1e-5;

/// Sizes of one (batched) product: C (batch, m, n) = A (batch, m, k) · B (batch, k, n).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatmulDims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// Sizes of one attention call: q (b, h, n, d), k = v (b, m, d).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    pub b: usize,
    pub h: usize,
    pub n: usize,
    pub m: usize,
    pub d: usize,
    /// Query row i sits at absolute position i + offset and sees keys j ≤ i + offset.
    pub offset: usize,
    pub scale: f32,
}

/// One AdamW step's hyperparameters (PyTorch's formulation, decoupled decay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1 − β₁ᵗ and 1 − β₂ᵗ for the current step.
    pub bias1: f32,
    pub bias2: f32,
}

/// cos, sin and xPos scale for a run of positions, each (positions × dh).
pub struct RopeTables {
    pub dh: usize,
    pub n: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub scale: Vec<f32>,
    /// 1 / scale (keys take the inverse), divided once here instead of per element per use.
    pub inv_scale: Vec<f32>,
    /// A backend's own copy of the tables (CUDA: uploaded on first use there), kept with them.
    pub(crate) on_device: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl RopeTables {
    /// How far from the centre a position may sit under xPos. Its scale is ζ^((pos − centre) /
    /// scale_base) with ζ ≥ 2/7, and keys take the inverse, so (7/2)^(distance / scale_base) must
    /// stay well inside f32's (and bf16's) range: here ≤ 1e30, about 28,000 positions for the
    /// seed's scale base of 512. Past it, scales overflow and the logits turn to NaN.
    pub fn xpos_reach(scale_base: f64) -> usize {
        (scale_base * 1e30f64.ln() / 3.5f64.ln()).floor() as usize
    }

    /// Tables for absolute positions `start .. start + n`. With `xpos == false` the scale is 1.
    pub fn new(
        dh: usize,
        start: usize,
        n: usize,
        center: f64,
        xpos: bool,
        scale_base: f64,
    ) -> Result<Arc<Self>> {
        if dh == 0 || !dh.is_multiple_of(2) {
            return Err(crate::Error::shape(
                "rope",
                format!("head dim {dh} must be even"),
            ));
        }
        let reach = Self::xpos_reach(scale_base) as f64;
        let far = [start as f64, (start + n) as f64 - 1.0]
            .iter()
            .map(|p| (p - center).abs())
            .fold(0.0, f64::max);
        if xpos && n > 0 && far > reach {
            return Err(crate::Error::shape(
                "rope",
                format!(
                    "positions {start}..{} are up to {far} from the centre {center}: xPos's \
                     scales overflow past {reach} (scale base {scale_base})",
                    start + n
                ),
            ));
        }
        let h = dh / 2;
        let mut t = RopeTables {
            dh,
            n,
            cos: vec![0.0; n * dh],
            sin: vec![0.0; n * dh],
            scale: vec![1.0; n * dh],
            inv_scale: Vec::new(),
            on_device: OnceLock::new(),
        };
        for r in 0..n {
            let pos = (start + r) as f64;
            let power = (pos - center) / scale_base;
            for j in 0..h {
                let theta = 1.0 / 10000f64.powf(2.0 * j as f64 / dh as f64);
                let f = pos * theta;
                let zeta = (2.0 * j as f64 + 0.4 * dh as f64) / (1.4 * dh as f64);
                let s = if xpos { zeta.powf(power) } else { 1.0 };
                for jj in [j, j + h] {
                    t.cos[r * dh + jj] = f.cos() as f32;
                    t.sin[r * dh + jj] = f.sin() as f32;
                    t.scale[r * dh + jj] = s as f32;
                }
            }
        }
        t.inv_scale = t.scale.iter().map(|s| 1.0 / s).collect();
        Ok(Arc::new(t))
    }

    /// [`RopeTables::new`] through a small process-wide cache, so a training run builds (and on
    /// a GPU uploads) its tables once instead of on every forward.
    pub fn shared(
        dh: usize,
        start: usize,
        n: usize,
        center: f64,
        xpos: bool,
        scale_base: f64,
    ) -> Result<Arc<Self>> {
        type Key = (usize, usize, usize, u64, bool, u64);
        static CACHE: std::sync::Mutex<Vec<(Key, Arc<RopeTables>)>> =
            std::sync::Mutex::new(Vec::new());
        const KEEP: usize = 16;
        let key = (dh, start, n, center.to_bits(), xpos, scale_base.to_bits());
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, t)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(t.clone());
        }
        let t = Self::new(dh, start, n, center, xpos, scale_base)?;
        if cache.len() >= KEEP {
            cache.remove(0);
        }
        cache.push((key, t.clone()));
        Ok(t)
    }
}

/// An operand: a backend's storage and the layout to read it through.
pub type Arg<'a, S> = (&'a S, &'a Layout);

/// Two results, as separate buffers or as two views of one (the CUDA SwiGLU backward writes
/// dx and dgate side by side, as the fused projection's gradient wants them).
pub enum Two<S> {
    Separate(S, S),
    Shared(S, Layout, Layout),
}

impl<S> Two<S> {
    /// Two results of dims `dims` side by side in one contiguous (…, 2f) buffer: the first in
    /// the first f columns of each row, the second in the last f.
    pub fn side_by_side(both: S, dims: &[usize]) -> Result<Self> {
        let (Some(&f), Some(last)) = (dims.last(), dims.len().checked_sub(1)) else {
            return Err(crate::Error::Invalid(
                "two results side by side need a dim".into(),
            ));
        };
        let mut wide = dims.to_vec();
        wide[last] = 2 * f;
        let whole = Layout::contiguous(&wide);
        Ok(Two::Shared(
            both,
            whole.narrow(last, 0, f)?,
            whole.narrow(last, f, f)?,
        ))
    }
}

/// The ops a backend computes. Every input comes with its layout (strided views are read in
/// place or gathered by the backend); every output is new contiguous storage, f32 unless said.
/// Shapes and dtypes were checked by the entry point; ids come as u32.
pub(crate) trait Backend: Sized {
    /// `op(a, b)`, both laid out over the same (broadcast) dims, one float dtype.
    fn binary(a: Arg<Self>, b: Arg<Self>, op: BinaryOp) -> Result<Self>;
    fn unary(x: Arg<Self>, op: UnaryOp) -> Result<Self>;
    /// A contiguous copy, any dtype.
    fn copy(x: Arg<Self>) -> Result<Self>;
    /// Convert the element type (the front end has checked the pair is supported).
    fn cast(x: Arg<Self>, to: DType) -> Result<Self>;
    /// Concatenate along `dim` into `dims`.
    fn cat(parts: &[Arg<Self>], dim: usize, dims: &[usize]) -> Result<Self>;
    /// Write `src` (same dims and dtype as `slot`) into the elements of `dst` that `slot`
    /// addresses, in place: the one op that mutates storage (a KV cache growing in place).
    fn write_into(dst: &mut Self, slot: &Layout, src: Arg<Self>) -> Result<()>;
    /// (batch ×) m×k · k×n, in the operands' dtype.
    fn matmul(a: Arg<Self>, b: Arg<Self>, d: MatmulDims) -> Result<Self>;
    /// Sum down to `keep` (same rank, 1 where summed), in the input's dtype.
    fn sum_to(x: Arg<Self>, keep: &[usize]) -> Result<Self>;
    /// Σ x² over every element of every operand (f32 or bf16), as f64.
    fn sum_of_squares(xs: &[Arg<Self>]) -> Result<f64>;
    /// Row maxima over the last dim.
    fn max_last(x: Arg<Self>) -> Result<Self>;
    fn log_softmax(x: Arg<Self>) -> Result<Self>;
    fn log_softmax_backward(y: Arg<Self>, g: Arg<Self>) -> Result<Self>;
    /// Rows of the (v, d) table for each id; an id ≥ v is an error or a zero row.
    fn embedding(table: Arg<Self>, ids: Arg<Self>) -> Result<Self>;
    /// The (v, d) table's gradient in `table_dtype`: rows of g added at their ids.
    fn embedding_backward(
        table_dims: [usize; 2],
        table_dtype: DType,
        ids: Arg<Self>,
        g: Arg<Self>,
    ) -> Result<Self>;
    /// (y, per-row mean and rstd (2 × rows, f32)).
    fn layer_norm(x: Arg<Self>, gamma: Arg<Self>) -> Result<(Self, Self)>;
    /// (dx, dgamma) in the dtypes of x and gamma.
    fn layer_norm_backward(
        x: Arg<Self>,
        gamma: Arg<Self>,
        stats: Arg<Self>,
        g: Arg<Self>,
    ) -> Result<(Self, Self)>;
    /// Forward rotation, or (`backward`) its transpose applied to the upstream gradient.
    fn rope(x: Arg<Self>, tables: &RopeTables, inverse: bool, backward: bool) -> Result<Self>;
    /// Whether the fused attention covers head dim `d` (else the front end composes it).
    fn fuses_attention(d: usize) -> bool;
    /// (out in q's dtype, log-sum-exp (b, h, n) f32).
    fn attention(
        q: Arg<Self>,
        k: Arg<Self>,
        v: Arg<Self>,
        s: &AttentionShape,
    ) -> Result<(Self, Self)>;
    /// (dq, dk, dv) in the dtypes of q, k, v.
    fn attention_backward(
        qkv: [Arg<Self>; 3],
        out: Arg<Self>,
        lse: Arg<Self>,
        g: Arg<Self>,
        s: &AttentionShape,
    ) -> Result<(Self, Self, Self)>;
    fn swiglu(x: Arg<Self>, gate: Arg<Self>) -> Result<Self>;
    /// (dx, dgate) in x's dtype.
    fn swiglu_backward(x: Arg<Self>, gate: Arg<Self>, g: Arg<Self>) -> Result<Two<Self>>;
    /// (mean loss over the `count` targets ≠ IGNORE_ID as a scalar, per-row lse).
    fn cross_entropy(logits: Arg<Self>, targets: Arg<Self>, count: usize) -> Result<(Self, Self)>;
    /// dlogits for the scalar upstream gradient `g` (f32) of the mean.
    fn cross_entropy_backward(
        logits: Arg<Self>,
        targets: Arg<Self>,
        lse: Arg<Self>,
        count: usize,
        g: Arg<Self>,
    ) -> Result<Self>;
    /// (log-prob of `ids`, or the entropy when `ids` is `None`; per-row lse), both f32.
    fn logprob(logits: Arg<Self>, ids: Option<Arg<Self>>, inv_temp: f32) -> Result<(Self, Self)>;
    /// dlogits from the upstream gradient `g` (f32) of the log-prob (with `ids`) or of the
    /// entropy (with its saved output `entropy`).
    fn logprob_backward(
        logits: Arg<Self>,
        ids: Option<Arg<Self>>,
        lse: Arg<Self>,
        entropy: Option<Arg<Self>>,
        inv_temp: f32,
        g: Arg<Self>,
    ) -> Result<Self>;
}
