//! Finite-difference gradient checks for every differentiable primitive of the engine, on
//! random shapes (proptest) and random data (never zeros).
//!
//! Method: for inputs x₁…xₖ and an op producing outputs y₁…yₘ, the scalar loss is
//! L = Σⱼ sum(yⱼ · Rⱼ) with fixed random Rⱼ (so the upstream gradient is not uniform). The
//! analytic gradient comes from `backward()`; the numeric one from central differences
//! (L(x + ε) − L(x − ε)) / 2ε, each L evaluated in f32 by the engine and accumulated in f64.
//! They must agree to `tol` relative in norm (plus a floor for f32 rounding noise); a failure
//! reports the worst element.

use palm_engine::{
    DType, Device, Result, Rng, RopeTables, Tensor, attention, cross_entropy, embedding,
    layer_norm, no_grad, rope, swiglu,
};
use proptest::prelude::*;
use proptest::test_runner::Config as PtConfig;

// ---- data -------------------------------------------------------------------------------

fn n_of(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// N(0, 1) samples.
fn normal(dims: &[usize], seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n_of(dims)).map(|_| rng.normal()).collect()
}

/// Uniform in [0.5, 2): for log, sqrt.
fn positive(dims: &[usize], seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n_of(dims)).map(|_| 0.5 + 1.5 * rng.uniform()).collect()
}

/// ±[0.5, 2): for denominators.
fn away_from_zero(dims: &[usize], seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n_of(dims))
        .map(|_| {
            let v = 0.5 + 1.5 * rng.uniform();
            if rng.uniform() < 0.5 { -v } else { v }
        })
        .collect()
}

/// One input of a check: its data and shape.
#[derive(Clone, Debug)]
struct Input {
    data: Vec<f32>,
    dims: Vec<usize>,
}

fn inp(data: Vec<f32>, dims: &[usize]) -> Input {
    assert_eq!(data.len(), n_of(dims));
    Input {
        data,
        dims: dims.to_vec(),
    }
}

fn randn(dims: &[usize], seed: u64) -> Input {
    inp(normal(dims, seed), dims)
}

// ---- the checker --------------------------------------------------------------------------

/// The fixed random weights Rⱼ for outputs of the given shapes.
fn weights(shapes: &[Vec<usize>]) -> Vec<Vec<f32>> {
    shapes
        .iter()
        .enumerate()
        .map(|(j, d)| normal(d, 0xC0FFEE + j as u64))
        .collect()
}

/// L = Σⱼ sum(yⱼ · Rⱼ) evaluated without recording, accumulated in f64.
fn numeric_loss<F>(f: &F, inputs: &[Input], rs: &[Vec<f32>]) -> f64
where
    F: Fn(&[Tensor]) -> Result<Vec<Tensor>>,
{
    loss_and_scale(f, inputs, rs).0
}

/// L and ‖y ∘ R‖₂, the scale of the f32 rounding noise in L.
fn loss_and_scale<F>(f: &F, inputs: &[Input], rs: &[Vec<f32>]) -> (f64, f64)
where
    F: Fn(&[Tensor]) -> Result<Vec<Tensor>>,
{
    let _guard = no_grad();
    let ts: Vec<Tensor> = inputs
        .iter()
        .map(|i| Tensor::from_vec(i.data.clone(), &i.dims).unwrap())
        .collect();
    let outs = f(&ts).unwrap();
    assert_eq!(outs.len(), rs.len());
    let (mut sum, mut sq) = (0f64, 0f64);
    for (y, r) in outs.iter().zip(rs) {
        let y = y.to_f32_vec().unwrap();
        assert_eq!(y.len(), r.len());
        for (&a, &b) in y.iter().zip(r) {
            let t = a as f64 * b as f64;
            sum += t;
            sq += t * t;
        }
    }
    (sum, sq.sqrt())
}

/// Check the gradients of every input of `f` by central differences; returns the analytic
/// gradients for further assertions.
fn gradcheck<F>(name: &str, inputs: &[Input], eps: f32, tol: f64, f: F) -> Vec<Vec<f32>>
where
    F: Fn(&[Tensor]) -> Result<Vec<Tensor>>,
{
    for (i, x) in inputs.iter().enumerate() {
        assert!(
            x.data.iter().any(|&v| v != 0.0),
            "{name}: input {i} is all zeros; the check would prove little"
        );
    }
    // Analytic.
    let vars: Vec<Tensor> = inputs
        .iter()
        .map(|i| Tensor::from_vec(i.data.clone(), &i.dims).unwrap().as_var())
        .collect();
    let outs = f(&vars).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
    let shapes: Vec<Vec<usize>> = outs.iter().map(|y| y.dims().to_vec()).collect();
    let rs = weights(&shapes);
    let mut loss = Tensor::scalar(0.0);
    for (y, r) in outs.iter().zip(&rs) {
        assert!(y.tracks(), "{name}: an output does not track gradients");
        let r = Tensor::from_vec(r.clone(), y.dims()).unwrap();
        loss = loss.add(&y.mul(&r).unwrap().sum_all().unwrap()).unwrap();
    }
    let grads = loss
        .backward()
        .unwrap_or_else(|e| panic!("{name}: backward failed: {e}"));

    // The analytic loss must match the host-side loss the numeric gradient differentiates.
    let l_engine = loss.to_scalar().unwrap() as f64;
    let (l_host, yr_norm) = loss_and_scale(&f, inputs, &rs);
    // Each f32 output carries a few ulps of rounding, which the difference quotient divides
    // by 2ε: a per-element noise floor for the numeric gradient.
    let floor = 8.0 * f32::EPSILON as f64 * yr_norm / eps as f64;
    assert!(
        (l_engine - l_host).abs() <= 1e-4 * (1.0 + l_host.abs()),
        "{name}: loss with recording {l_engine} differs from loss without {l_host}"
    );

    let mut analytic_all = Vec::new();
    for (i, x) in inputs.iter().enumerate() {
        let g = grads
            .get(&vars[i])
            .unwrap_or_else(|| panic!("{name}: no gradient for input {i} {:?}", x.dims));
        assert_eq!(
            g.dims(),
            &x.dims[..],
            "{name}: gradient of input {i} has the wrong shape"
        );
        let analytic = g.to_f32_vec().unwrap();
        let mut numeric = vec![0f64; x.data.len()];
        let mut work = inputs.to_vec();
        for (k, slot) in numeric.iter_mut().enumerate() {
            let orig = x.data[k];
            work[i].data[k] = orig + eps;
            let lp = numeric_loss(&f, &work, &rs);
            work[i].data[k] = orig - eps;
            let lm = numeric_loss(&f, &work, &rs);
            work[i].data[k] = orig;
            // The step actually taken in f32.
            let h = (orig + eps) as f64 - (orig - eps) as f64;
            *slot = (lp - lm) / h;
        }
        compare(name, i, &x.dims, &analytic, &numeric, tol, floor);
        analytic_all.push(analytic);
    }
    analytic_all
}

/// ‖analytic − numeric‖ ≤ tol·‖numeric‖ + floor·√len.
fn compare(
    name: &str,
    input: usize,
    dims: &[usize],
    analytic: &[f32],
    numeric: &[f64],
    tol: f64,
    floor: f64,
) {
    let num_norm = numeric.iter().map(|v| v * v).sum::<f64>().sqrt();
    let err_norm = analytic
        .iter()
        .zip(numeric)
        .map(|(&a, &n)| (a as f64 - n).powi(2))
        .sum::<f64>()
        .sqrt();
    let floor_norm = floor * (numeric.len() as f64).sqrt();
    if num_norm <= 1e-6 {
        // A gradient that is truly zero (e.g. attention with one visible key has none for q
        // and k): then the analytic one must be zero too.
        let a_norm = analytic
            .iter()
            .map(|&a| (a as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            a_norm <= 1e-4 + floor_norm,
            "{name}: numeric gradient of input {input} {dims:?} is ~0 but the analytic one has \
             norm {a_norm:.3e}"
        );
        return;
    }
    let rel = err_norm / num_norm;
    // Written so that a NaN anywhere fails.
    let within = err_norm <= tol * num_norm + floor_norm;
    if !within {
        let (worst, diff) = analytic
            .iter()
            .zip(numeric)
            .map(|(&a, &n)| (a as f64 - n).abs())
            .enumerate()
            .fold(
                (0, -1.0),
                |acc, (k, d)| if d > acc.1 { (k, d) } else { acc },
            );
        panic!(
            "{name}: gradient of input {input} {dims:?}: relative error {rel:.3e} > {tol:.0e} \
             (noise floor {floor_norm:.1e}); \
             worst element {worst}: analytic {} vs numeric {:.6} (|diff| {diff:.3e})",
            analytic[worst], numeric[worst]
        );
    }
}

fn cfg(cases: u32) -> PtConfig {
    PtConfig {
        cases,
        failure_persistence: None,
        ..PtConfig::default()
    }
}

/// `dims` with the dims whose bit is set in `mask` made 1 and `drop` leading dims removed:
/// a shape that broadcasts to `dims`.
fn broadcastable(dims: &[usize], mask: u8, drop: usize) -> Vec<usize> {
    let d: Vec<usize> = dims
        .iter()
        .enumerate()
        .map(|(i, &s)| if mask >> i & 1 == 1 { 1 } else { s })
        .collect();
    d[drop.min(d.len())..].to_vec()
}

const TOL: f64 = 1e-2;

// ---- elementwise ----------------------------------------------------------------------------

fn binary_case(op: usize, a: &[usize], b: &[usize], seed: u64) {
    let names = ["add", "sub", "mul", "div"];
    let bdata = if op == 3 {
        away_from_zero(b, seed + 1)
    } else {
        normal(b, seed + 1)
    };
    let inputs = [randn(a, seed), inp(bdata, b)];
    let name = format!("{} {a:?} with {b:?}", names[op]);
    gradcheck(&name, &inputs, 1e-2, TOL, |t| {
        Ok(vec![match op {
            0 => t[0].add(&t[1])?,
            1 => t[0].sub(&t[1])?,
            2 => t[0].mul(&t[1])?,
            _ => t[0].div(&t[1])?,
        }])
    });
}

#[test]
fn binary_fixed_broadcasts() {
    for op in 0..4 {
        binary_case(op, &[3, 1, 4], &[2, 4], 1);
        binary_case(op, &[2, 4], &[3, 1, 4], 2);
        binary_case(op, &[3, 4], &[3, 4], 3);
        binary_case(op, &[3, 4], &[], 4);
        binary_case(op, &[1, 5], &[4, 1], 5);
    }
}

proptest! {
    #![proptest_config(cfg(64))]

    #[test]
    fn binary_random_broadcasts(
        op in 0usize..4,
        dims in prop::collection::vec(1usize..5, 0..4),
        mask_a in any::<u8>(),
        mask_b in any::<u8>(),
        drop_a in 0usize..3,
        drop_b in 0usize..3,
        seed in any::<u64>(),
    ) {
        let a = broadcastable(&dims, mask_a, drop_a);
        let b = broadcastable(&dims, mask_b, drop_b);
        binary_case(op, &a, &b, seed);
    }

    #[test]
    fn unary_ops(
        op in 0usize..9,
        dims in prop::collection::vec(1usize..6, 1..4),
        seed in any::<u64>(),
    ) {
        let names = ["neg", "exp", "log", "sqr", "sqrt", "sigmoid", "silu", "tanh", "affine"];
        let data = match op {
            2 | 4 => positive(&dims, seed),
            _ => normal(&dims, seed),
        };
        gradcheck(&format!("{} {dims:?}", names[op]), &[inp(data, &dims)], 1e-2, TOL, |t| {
            let x = &t[0];
            Ok(vec![match op {
                0 => x.neg()?,
                1 => x.exp()?,
                2 => x.log()?,
                3 => x.sqr()?,
                4 => x.sqrt()?,
                5 => x.sigmoid()?,
                6 => x.silu()?,
                7 => x.tanh()?,
                _ => x.affine(-1.7, 0.3)?,
            }])
        });
    }
}

#[test]
fn scale_and_affine_with_zero_mul() {
    gradcheck("scale", &[randn(&[3, 4], 9)], 1e-2, TOL, |t| {
        Ok(vec![t[0].scale(2.5)?])
    });
    // affine(0, c) is constant: its gradient must be exactly zero (checked directly, the
    // numeric check would be vacuous).
    let x = Tensor::from_vec(normal(&[5], 10), &[5]).unwrap().as_var();
    let y = x
        .affine(0.0, 3.0)
        .unwrap()
        .mul(&x)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = y
        .backward()
        .unwrap()
        .get(&x)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert!(g.iter().all(|&v| (v - 3.0).abs() < 1e-6), "{g:?}");
}

#[test]
fn to_dtype_f32_round_trip() {
    gradcheck("to_dtype f32", &[randn(&[3, 5], 11)], 1e-2, TOL, |t| {
        Ok(vec![
            t[0].to_dtype(DType::F32)?.to_dtype(DType::F32)?.sqr()?,
        ])
    });
    // Integer → float casts carry no gradient.
    let ids = Tensor::from_vec(vec![1u32, 2, 3], &[3]).unwrap();
    assert!(!ids.to_dtype(DType::F32).unwrap().tracks());
}

// ---- matmul ---------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cfg(32))]

    #[test]
    fn matmul_2d(m in 1usize..6, k in 1usize..6, n in 1usize..6, seed in any::<u64>()) {
        gradcheck(&format!("matmul ({m},{k})x({k},{n})"),
            &[randn(&[m, k], seed), randn(&[k, n], seed + 1)], 1e-2, TOL,
            |t| Ok(vec![t[0].matmul(&t[1])?]));
    }

    #[test]
    fn matmul_batched(
        b in 1usize..4,
        m in 1usize..5,
        k in 1usize..5,
        n in 1usize..5,
        seed in any::<u64>(),
    ) {
        gradcheck(&format!("matmul ({b},{m},{k})x({b},{k},{n})"),
            &[randn(&[b, m, k], seed), randn(&[b, k, n], seed + 1)], 1e-2, TOL,
            |t| Ok(vec![t[0].matmul(&t[1])?]));
    }

    #[test]
    fn matmul_rank3_by_rank2(
        b in 1usize..4,
        m in 1usize..5,
        k in 1usize..5,
        n in 1usize..5,
        seed in any::<u64>(),
    ) {
        gradcheck(&format!("matmul ({b},{m},{k})x({k},{n})"),
            &[randn(&[b, m, k], seed), randn(&[k, n], seed + 1)], 1e-2, TOL,
            |t| Ok(vec![t[0].matmul(&t[1])?]));
    }

    #[test]
    fn matmul_transposed_and_narrowed_views(
        m in 1usize..5, k in 1usize..5, n in 1usize..5, pad in 1usize..3, seed in any::<u64>()
    ) {
        // Aᵀ·Bᵀ with A (k, m), B (n, k) stored transposed.
        gradcheck("matmul transposed operands",
            &[randn(&[k, m], seed), randn(&[n, k], seed + 1)], 1e-2, TOL,
            |t| Ok(vec![t[0].t()?.matmul(&t[1].t()?)?]));
        // Column and row windows of wider/taller matrices.
        gradcheck("matmul narrowed operands",
            &[randn(&[m, k + pad], seed + 2), randn(&[k + pad, n], seed + 3)], 1e-2, TOL,
            |t| Ok(vec![t[0].narrow(1, pad, k)?.matmul(&t[1].narrow(0, 0, k)?)?]));
        // Batched, with the batch dim coming from a transpose (non-standard batch stride).
        gradcheck("matmul batched transposed",
            &[randn(&[m, 2, k], seed + 4), randn(&[2, n, k], seed + 5)], 1e-2, TOL,
            |t| Ok(vec![t[0].transpose(0, 1)?.matmul(&t[1].transpose(1, 2)?)?]));
        // Rank-4 × rank-4 (folded into a batch) and rank-3 view × rank-2 view.
        gradcheck("matmul rank 4",
            &[randn(&[2, 2, m, k], seed + 6), randn(&[2, 2, k, n], seed + 7)], 1e-2, TOL,
            |t| Ok(vec![t[0].matmul(&t[1])?]));
        gradcheck("matmul rank-3 view x rank-2 view",
            &[randn(&[2, m, k + pad], seed + 8), randn(&[n, k], seed + 9)], 1e-2, TOL,
            |t| Ok(vec![t[0].narrow(2, 0, k)?.matmul(&t[1].t()?)?]));
    }
}

#[test]
fn matmul_same_tensor_both_sides() {
    // x·xᵀ: both operands are the one tensor, gradients add up.
    gradcheck("x @ x^T", &[randn(&[3, 4], 21)], 1e-2, TOL, |t| {
        Ok(vec![t[0].matmul(&t[0].t()?)?])
    });
}

// ---- reductions and broadcasting ---------------------------------------------------------

proptest! {
    #![proptest_config(cfg(32))]

    #[test]
    fn sums_and_means(
        dims in prop::collection::vec(1usize..5, 1..4),
        mask in any::<u8>(),
        seed in any::<u64>(),
    ) {
        let sel: Vec<usize> = (0..dims.len()).filter(|i| mask >> i & 1 == 1).collect();
        let x = [randn(&dims, seed)];
        gradcheck(&format!("sum_keepdim {dims:?} over {sel:?}"), &x, 1e-2, TOL,
            |t| Ok(vec![t[0].sum_keepdim(&sel)?]));
        gradcheck(&format!("mean_keepdim {dims:?} over {sel:?}"), &x, 1e-2, TOL,
            |t| Ok(vec![t[0].mean_keepdim(&sel)?]));
        gradcheck(&format!("sum_all {dims:?}"), &x, 1e-2, TOL,
            |t| Ok(vec![t[0].sum_all()?]));
        gradcheck(&format!("mean_all {dims:?}"), &x, 1e-2, TOL,
            |t| Ok(vec![t[0].mean_all()?]));
    }

    #[test]
    fn broadcast_as_random(
        dims in prop::collection::vec(1usize..5, 1..4),
        mask in any::<u8>(),
        drop in 0usize..3,
        seed in any::<u64>(),
    ) {
        let src = broadcastable(&dims, mask, drop);
        gradcheck(&format!("broadcast_as {src:?} -> {dims:?}"), &[randn(&src, seed)], 1e-2, TOL,
            |t| Ok(vec![t[0].broadcast_as(&dims)?]));
    }
}

#[test]
fn broadcast_then_nonlinear() {
    // A broadcast operand inside a nonlinearity: the gradient is summed back correctly.
    gradcheck("tanh(broadcast)", &[randn(&[3, 1], 31)], 1e-2, TOL, |t| {
        Ok(vec![t[0].broadcast_as(&[2, 3, 4])?.tanh()?])
    });
}

// ---- views, split and cat ---------------------------------------------------------------

proptest! {
    #![proptest_config(cfg(32))]

    #[test]
    fn reshape_transpose_contiguous(
        a in 1usize..5,
        b in 1usize..5,
        c in 1usize..5,
        seed in any::<u64>(),
    ) {
        let x = [randn(&[a, b, c], seed)];
        gradcheck("reshape", &x, 1e-2, TOL, |t| Ok(vec![t[0].reshape(&[a * b, c])?.sqr()?]));
        gradcheck("transpose", &x, 1e-2, TOL, |t| Ok(vec![t[0].transpose(0, 2)?]));
        gradcheck("transpose+contiguous", &x, 1e-2, TOL,
            |t| Ok(vec![t[0].transpose(1, 2)?.contiguous()?]));
        // Reshape of a non-contiguous view (copies first).
        gradcheck("transpose+reshape", &x, 1e-2, TOL,
            |t| Ok(vec![t[0].transpose(0, 1)?.reshape(&[a * b * c])?]));
        gradcheck("contiguous", &x, 1e-2, TOL, |t| Ok(vec![t[0].contiguous()?.exp()?]));
    }

    #[test]
    fn narrow_single(
        dims in prop::collection::vec(2usize..6, 1..4),
        dim_sel in 0usize..3,
        start_frac in 0.0f64..1.0,
        seed in any::<u64>(),
    ) {
        let dim = dim_sel % dims.len();
        let start = ((dims[dim] - 1) as f64 * start_frac) as usize;
        let len = dims[dim] - start;
        let name = format!("narrow {dims:?} dim {dim} {start}+{len}");
        gradcheck(&name, &[randn(&dims, seed)], 1e-2, TOL,
            |t| Ok(vec![t[0].narrow(dim, start, len)?]));
    }

    #[test]
    fn split_all_pieces_receive_gradients(
        sizes in prop::collection::vec(1usize..4, 1..5),
        rows in 1usize..4,
        seed in any::<u64>(),
    ) {
        let total: usize = sizes.iter().sum();
        gradcheck(&format!("split {sizes:?}"), &[randn(&[rows, total], seed)], 1e-2, TOL, |t| {
            let parts = t[0].split(1, &sizes)?;
            // A different op on each piece, so the gradient differs piece by piece.
            parts.iter().enumerate().map(|(i, p)| match i % 3 {
                0 => p.sqr(),
                1 => p.tanh(),
                _ => p.scale(-2.0),
            }).collect()
        });
    }

    #[test]
    fn cat_random(
        sizes in prop::collection::vec(1usize..4, 1..4),
        other in 1usize..4,
        dim in 0usize..2,
        seed in any::<u64>(),
    ) {
        let inputs: Vec<Input> = sizes.iter().enumerate().map(|(i, &s)| {
            let dims = if dim == 0 { vec![s, other] } else { vec![other, s] };
            randn(&dims, seed + i as u64)
        }).collect();
        gradcheck(&format!("cat {sizes:?} on dim {dim}"), &inputs, 1e-2, TOL, |t| {
            let refs: Vec<&Tensor> = t.iter().collect();
            Ok(vec![Tensor::cat(&refs, dim)?.sqr()?])
        });
    }
}

#[test]
fn split_with_empty_piece() {
    gradcheck("split [2, 0, 3]", &[randn(&[2, 5], 41)], 1e-2, TOL, |t| {
        let parts = t[0].split(1, &[2, 0, 3])?;
        Ok(vec![parts[0].sqr()?, parts[1].clone(), parts[2].exp()?])
    });
}

#[test]
fn narrows_with_gaps_and_overlaps() {
    let x = [randn(&[3, 8], 51)];
    // Pieces that leave gaps: columns 2..3 and 7..8 get no gradient.
    let g = gradcheck("narrows with gaps", &x, 1e-2, TOL, |t| {
        Ok(vec![
            t[0].narrow(1, 0, 2)?.sqr()?,
            t[0].narrow(1, 3, 4)?.tanh()?,
        ])
    });
    for r in 0..3 {
        for c in [2, 7] {
            assert_eq!(g[0][r * 8 + c], 0.0, "gap column {c} got a gradient");
        }
    }
    // Overlapping pieces: their gradients add.
    gradcheck("overlapping narrows", &x, 1e-2, TOL, |t| {
        Ok(vec![
            t[0].narrow(1, 0, 5)?.sqr()?,
            t[0].narrow(1, 2, 6)?.exp()?,
            t[0].narrow(1, 2, 6)?,
        ])
    });
    // The same window twice, plus the whole tensor used directly.
    gradcheck("same narrow twice + whole", &x, 1e-2, TOL, |t| {
        let a = t[0].narrow(1, 1, 3)?;
        let b = t[0].narrow(1, 1, 3)?;
        Ok(vec![a.mul(&b)?, t[0].sigmoid()?])
    });
    // Narrows along two different dims of one tensor, and a narrow of a narrow.
    gradcheck("narrows on two dims", &x, 1e-2, TOL, |t| {
        Ok(vec![
            t[0].narrow(0, 1, 2)?.sqr()?,
            t[0].narrow(1, 4, 4)?.tanh()?,
            t[0].narrow(1, 1, 6)?
                .narrow(0, 0, 2)?
                .narrow(1, 2, 3)?
                .exp()?,
        ])
    });
    // Pieces reassembled out of order with cat.
    gradcheck("split then cat reversed", &x, 1e-2, TOL, |t| {
        let p = t[0].split(1, &[3, 1, 4])?;
        Ok(vec![Tensor::cat(&[&p[2], &p[0], &p[1]], 1)?.sqr()?])
    });
}

// ---- embedding, layer norm, rope --------------------------------------------------------

proptest! {
    #![proptest_config(cfg(32))]

    #[test]
    fn embedding_repeated_ids(
        v in 2usize..8,
        d in 1usize..5,
        n in 1usize..10,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed ^ 0xE);
        let mut ids: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
        ids.push(ids[0]); // at least one repeat
        let ids = Tensor::from_vec(ids.clone(), &[ids.len()]).unwrap();
        gradcheck(&format!("embedding V={v} d={d}"), &[randn(&[v, d], seed)], 1e-2, TOL,
            |t| Ok(vec![embedding(&t[0], &ids)?]));
    }

    #[test]
    fn layer_norm_random(rows in 1usize..5, d in 4usize..10, seed in any::<u64>()) {
        let x = randn(&[rows, d], seed);
        let gamma = randn(&[d], seed + 1);
        // Forward: (x − mean)/sqrt(var + 1e-5) · (gamma + 1).
        let y = layer_norm(&Tensor::from_vec(x.data.clone(), &[rows, d]).unwrap(),
            &Tensor::from_vec(gamma.data.clone(), &[d]).unwrap()).unwrap().to_vec::<f32>().unwrap();
        for r in 0..rows {
            let row = &x.data[r * d..(r + 1) * d];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            for c in 0..d {
                let want =
                    (row[c] as f64 - mean) / (var + 1e-5).sqrt() * (gamma.data[c] as f64 + 1.0);
                prop_assert!((y[r * d + c] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "layer_norm forward ({r},{c}): {} vs {want}", y[r * d + c]);
            }
        }
        gradcheck(&format!("layer_norm ({rows},{d})"), &[x, gamma], 3e-3, TOL,
            |t| Ok(vec![layer_norm(&t[0], &t[1])?]));
    }

    #[test]
    fn rope_all_modes(
        n in 1usize..7, half in 1usize..4, start in 0usize..5, lead in 1usize..3,
        inverse in any::<bool>(), xpos in any::<bool>(), small_base in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dh = 2 * half;
        // A small scale base makes the xPos scale far from 1 at these positions.
        let base = if small_base { 4.0 } else { 512.0 };
        let center = (start + n / 2) as f64;
        let tables = RopeTables::new(dh, start, n, center, xpos, base).unwrap();
        // Forward against the formula: (x·cos + rot(x)·sin)·s, or /s for keys.
        let x = randn(&[lead, 2, n, dh], seed);
        let y = rope(&Tensor::from_vec(x.data.clone(), &x.dims).unwrap(), &tables, inverse)
            .unwrap().to_vec::<f32>().unwrap();
        for (row, (xr, yr)) in x.data.chunks(dh).zip(y.chunks(dh)).enumerate() {
            let pos = (start + row % n) as f64;
            for c in 0..dh {
                let j = c % half;
                let theta = pos / 10000f64.powf(2.0 * j as f64 / dh as f64);
                let zeta = (2.0 * j as f64 + 0.4 * dh as f64) / (1.4 * dh as f64);
                let sc = if xpos { zeta.powf((pos - center) / base) } else { 1.0 };
                let rot = if c < half { -(xr[c + half] as f64) } else { xr[c - half] as f64 };
                let v = xr[c] as f64 * theta.cos() + rot * theta.sin();
                let want = if inverse { v / sc } else { v * sc };
                prop_assert!((yr[c] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "rope forward row {row} col {c}: {} vs {want}", yr[c]);
            }
        }
        gradcheck(&format!("rope n={n} dh={dh} inverse={inverse} xpos={xpos}"),
            &[x], 1e-2, TOL,
            |t| Ok(vec![rope(&t[0], &tables, inverse)?]));
    }
}

#[test]
fn rope_on_transposed_view() {
    // As in the model: q comes out of a projection as (b, n, h, dh) and is transposed.
    let tables = RopeTables::new(4, 3, 5, 2.0, true, 4.0).unwrap();
    for inverse in [false, true] {
        gradcheck(
            "rope of transposed view",
            &[randn(&[1, 5, 2, 4], 61)],
            1e-2,
            TOL,
            |t| Ok(vec![rope(&t[0].transpose(1, 2)?, &tables, inverse)?]),
        );
    }
}

// ---- attention ------------------------------------------------------------------------------

/// Naive f64 causal multi-query attention: query i sits at position i + (m − n).
fn attention_naive(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (b, h, n, m, d): (usize, usize, usize, usize, usize),
    scale: f64,
) -> Vec<f64> {
    let mut out = vec![0f64; b * h * n * d];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..n {
                let qi = &q[((bi * h + hi) * n + i) * d..][..d];
                let visible = i + (m - n) + 1;
                let s: Vec<f64> = (0..visible)
                    .map(|j| {
                        let kj = &k[(bi * m + j) * d..][..d];
                        qi.iter()
                            .zip(kj)
                            .map(|(&a, &c)| a as f64 * c as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                for (j, sj) in s.iter().enumerate() {
                    let p = (sj - mx).exp() / z;
                    for c in 0..d {
                        out[((bi * h + hi) * n + i) * d + c] += p * v[(bi * m + j) * d + c] as f64;
                    }
                }
            }
        }
    }
    out
}

fn attention_case(b: usize, h: usize, n: usize, extra: usize, d: usize, seed: u64) {
    let m = n + extra;
    let scale = 1.0 / (d as f32).sqrt();
    let q = randn(&[b, h, n, d], seed);
    let k = randn(&[b, m, d], seed + 1);
    let v = randn(&[b, m, d], seed + 2);
    let got = attention(
        &Tensor::from_vec(q.data.clone(), &q.dims).unwrap(),
        &Tensor::from_vec(k.data.clone(), &k.dims).unwrap(),
        &Tensor::from_vec(v.data.clone(), &v.dims).unwrap(),
        scale,
    )
    .unwrap()
    .to_vec::<f32>()
    .unwrap();
    let want = attention_naive(&q.data, &k.data, &v.data, (b, h, n, m, d), scale as f64);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (*g as f64 - w).abs() < 1e-4 * (1.0 + w.abs()),
            "attention forward b={b} h={h} n={n} m={m} d={d}, element {i}: {g} vs {w}"
        );
    }
    gradcheck(
        &format!("attention b={b} h={h} n={n} m={m} d={d}"),
        &[q, k, v],
        5e-3,
        TOL,
        |t| Ok(vec![attention(&t[0], &t[1], &t[2], scale)?]),
    );
}

#[test]
fn attention_fixed_shapes() {
    // m = n and m = n + 3 (a KV-cache offset); n below, at and above the 64-row block.
    attention_case(1, 2, 5, 0, 4, 71);
    attention_case(2, 1, 5, 3, 4, 72);
    attention_case(1, 2, 70, 0, 4, 73);
    attention_case(1, 1, 70, 3, 4, 74);
    attention_case(1, 1, 1, 6, 4, 75); // one new token against a cache
    attention_case(1, 1, 130, 3, 2, 76); // three blocks, the last partial
}

proptest! {
    #![proptest_config(cfg(16))]

    #[test]
    fn attention_random(
        b in 1usize..3,
        h in 1usize..4,
        n in 1usize..12,
        extra in 0usize..5,
        d in 1usize..6,
        seed in any::<u64>(),
    ) {
        attention_case(b, h, n, extra, d, seed);
    }
}

#[test]
fn attention_with_shared_kv_and_views() {
    // k and v the same tensor (gradients add), q a transposed view of (b, n, h, d).
    let (n, d) = (6, 4);
    gradcheck(
        "attention k = v, q transposed",
        &[randn(&[1, n, 2, d], 81), randn(&[1, n + 3, d], 82)],
        5e-3,
        TOL,
        |t| Ok(vec![attention(&t[0].transpose(1, 2)?, &t[1], &t[1], 0.5)?]),
    );
}

// ---- swiglu, softmax, cross-entropy --------------------------------------------------------

proptest! {
    #![proptest_config(cfg(32))]

    #[test]
    fn swiglu_random(dims in prop::collection::vec(1usize..6, 1..4), seed in any::<u64>()) {
        let x = randn(&dims, seed);
        let gate = randn(&dims, seed + 1);
        // Forward equals the composite silu(gate) · x.
        let (xt, gt) = (Tensor::from_vec(x.data.clone(), &dims).unwrap(),
            Tensor::from_vec(gate.data.clone(), &dims).unwrap());
        let fused = swiglu(&xt, &gt).unwrap().to_vec::<f32>().unwrap();
        let composite = gt.silu().unwrap().mul(&xt).unwrap().to_vec::<f32>().unwrap();
        for (a, b) in fused.iter().zip(&composite) {
            prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "swiglu {a} vs composite {b}");
        }
        gradcheck(&format!("swiglu {dims:?}"), &[x, gate], 1e-2, TOL,
            |t| Ok(vec![swiglu(&t[0], &t[1])?]));
    }

    #[test]
    fn softmax_and_log_softmax(
        lead in prop::collection::vec(1usize..5, 0..3),
        cols in 2usize..7,
        seed in any::<u64>(),
    ) {
        // (A last dim of 1 makes both constant: nothing to check.)
        let mut dims = lead.clone();
        dims.push(cols);
        let x = [inp(normal(&dims, seed).iter().map(|v| 2.0 * v).collect(), &dims)];
        gradcheck(&format!("log_softmax {dims:?}"), &x, 1e-2, TOL,
            |t| Ok(vec![t[0].log_softmax()?]));
        gradcheck(&format!("softmax {dims:?}"), &x, 1e-2, TOL,
            |t| Ok(vec![t[0].softmax()?]));
    }

    #[test]
    fn cross_entropy_with_ignored_targets(
        rows in 2usize..6,
        v in 2usize..7,
        lead in 1usize..3,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed ^ 0xCE);
        // Row 0 always ignored, row 1 always counted, the rest random (including id 0).
        let targets: Vec<u32> = (0..lead * rows).map(|i| match i % rows {
            0 => 0,
            1 => 1 + rng.below(v - 1) as u32,
            _ => rng.below(v) as u32,
        }).collect();
        let counted = targets.iter().filter(|&&t| t != 0).count();
        let tt = Tensor::from_vec(targets.clone(), &[lead, rows]).unwrap();
        let dims = [lead, rows, v];
        let logits = inp(normal(&dims, seed).iter().map(|x| 1.5 * x).collect(), &dims);

        // Forward: mean over counted rows of lse − logit[target].
        let lt = Tensor::from_vec(logits.data.clone(), &logits.dims).unwrap();
        let (loss, count) = cross_entropy(&lt, &tt).unwrap();
        prop_assert_eq!(count, counted);
        let mut want = 0f64;
        for (r, &t) in targets.iter().enumerate() {
            if t == 0 { continue; }
            let row = &logits.data[r * v..(r + 1) * v];
            let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let lse = mx + row.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln();
            want += lse - row[t as usize] as f64;
        }
        want /= counted as f64;
        let got = loss.to_scalar().unwrap() as f64;
        prop_assert!((got - want).abs() < 1e-5 * (1.0 + want.abs()),
            "cross_entropy {got} vs {want}");

        let g = gradcheck(&format!("cross_entropy ({lead},{rows},{v})"), &[logits], 1e-2, TOL,
            |t| Ok(vec![cross_entropy(&t[0], &tt)?.0]));
        for (r, &t) in targets.iter().enumerate() {
            if t == 0 {
                prop_assert!(g[0][r * v..(r + 1) * v].iter().all(|&x| x == 0.0),
                    "ignored row {r} got a gradient: {:?}", &g[0][r * v..(r + 1) * v]);
            }
        }
    }
}

#[test]
fn cross_entropy_all_ignored_is_zero_with_zero_gradient() {
    let logits = Tensor::from_vec(normal(&[3, 4], 91), &[3, 4])
        .unwrap()
        .as_var();
    let targets = Tensor::from_vec(vec![0u32; 3], &[3]).unwrap();
    let (loss, count) = cross_entropy(&logits, &targets).unwrap();
    assert_eq!(count, 0);
    assert_eq!(loss.to_scalar().unwrap(), 0.0);
    let grads = loss.backward().unwrap();
    let g = grads.get(&logits).unwrap().to_vec::<f32>().unwrap();
    assert!(g.iter().all(|&x| x == 0.0), "{g:?}");
}

// ---- ops on strided views, as the model uses them ------------------------------------------

#[test]
fn fused_ops_on_views_of_one_projection() {
    // As in a PaLM layer: one projection P (b, n, W) split into q, k, v, ff_x, ff_gate column
    // ranges; every fused op then reads a strided view, and all pieces flow back into P.
    let (b, n, h, d, f) = (1, 5, 2, 4, 3);
    let w = h * d + 2 * d + 2 * f;
    let tables = RopeTables::new(d, 0, n, (n / 2) as f64, true, 4.0).unwrap();
    gradcheck(
        "PaLM-style split of one projection",
        &[randn(&[b, n, w], 131)],
        5e-3,
        TOL,
        |t| {
            let p = t[0].split(2, &[h * d, d, d, f, f])?;
            let q = p[0]
                .reshape(&[b, n, h, d])
                .or_else(|_| p[0].contiguous()?.reshape(&[b, n, h, d]))?;
            let q = rope(&q.transpose(1, 2)?, &tables, false)?;
            let k = rope(&p[1], &tables, true)?;
            let o = attention(&q, &k, &p[2], 0.5)?;
            Ok(vec![o, swiglu(&p[3], &p[4])?])
        },
    );
}

#[test]
fn other_ops_on_strided_inputs() {
    let x = [randn(&[4, 3, 5], 141)];
    gradcheck("sum of transposed", &x, 1e-2, TOL, |t| {
        Ok(vec![t[0].transpose(0, 2)?.sum_keepdim(&[1])?])
    });
    gradcheck("log_softmax of transposed", &x, 1e-2, TOL, |t| {
        Ok(vec![t[0].transpose(1, 2)?.log_softmax()?])
    });
    gradcheck(
        "layer_norm of transposed",
        &[randn(&[6, 2, 5], 142), randn(&[6], 143)],
        1e-3,
        TOL,
        |t| Ok(vec![layer_norm(&t[0].transpose(0, 2)?, &t[1])?]),
    );
    gradcheck(
        "cat of transposed views",
        &[randn(&[3, 2], 144), randn(&[4, 2], 145)],
        1e-2,
        TOL,
        |t| Ok(vec![Tensor::cat(&[&t[0].t()?, &t[1].t()?], 1)?.sqr()?]),
    );
    // Next-token loss over logits[:, :-1] (a narrowed, non-contiguous view).
    let targets = Tensor::from_vec(vec![3u32, 0, 1, 2, 4, 0], &[2, 3]).unwrap();
    gradcheck(
        "cross_entropy of narrowed logits",
        &[randn(&[2, 4, 5], 146)],
        1e-3,
        TOL,
        |t| Ok(vec![cross_entropy(&t[0].narrow(1, 0, 3)?, &targets)?.0]),
    );
    // 2-D ids for embedding.
    let ids = Tensor::from_vec(vec![1u32, 4, 1, 0, 4, 4], &[2, 3]).unwrap();
    gradcheck(
        "embedding 2-D ids",
        &[randn(&[5, 3], 147)],
        1e-2,
        TOL,
        |t| Ok(vec![embedding(&t[0], &ids)?]),
    );
    // The table a transposed view.
    gradcheck(
        "embedding of a transposed table",
        &[randn(&[3, 5], 148)],
        1e-2,
        TOL,
        |t| Ok(vec![embedding(&t[0].t()?, &ids)?]),
    );
}

// ---- autograd mechanics ----------------------------------------------------------------------

#[test]
fn no_grad_stops_recording() {
    let x = Tensor::from_vec(normal(&[4], 101), &[4]).unwrap().as_var();
    assert!(x.tracks());
    let y = {
        let _guard = no_grad();
        let y = x.sqr().unwrap().exp().unwrap();
        assert!(!y.tracks(), "a tensor made under no_grad tracks gradients");
        y
    };
    assert!(!y.tracks());
    // Recording resumes when the guard is dropped.
    let z = x.sqr().unwrap();
    assert!(z.tracks());
    // A loss through the no_grad tensor gives x no gradient.
    let loss = y.mul(&z).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = grads.get(&x).unwrap().to_vec::<f32>().unwrap();
    let (xv, yv) = (x.to_vec::<f32>().unwrap(), y.to_vec::<f32>().unwrap());
    for i in 0..4 {
        // d/dx (y · x²) with y constant = 2·x·y.
        let want = 2.0 * xv[i] * yv[i];
        assert!(
            (g[i] - want).abs() < 1e-4 * (1.0 + want.abs()),
            "{} vs {want}",
            g[i]
        );
    }
    // Nested guards restore the outer state.
    {
        let _a = no_grad();
        {
            let _b = no_grad();
        }
        assert!(!x.sqr().unwrap().tracks());
    }
    assert!(x.sqr().unwrap().tracks());
    // A fresh non-var tensor never tracks.
    let c = Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap();
    assert!(!c.add(&c).unwrap().tracks());
}

#[test]
fn gradient_accumulates_when_used_twice() {
    let data = normal(&[5], 111);
    let x = Tensor::from_vec(data.clone(), &[5]).unwrap().as_var();
    let loss = x.mul(&x).unwrap().sum_all().unwrap();
    let g = loss
        .backward()
        .unwrap()
        .get(&x)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    for (gi, xi) in g.iter().zip(&data) {
        assert!((gi - 2.0 * xi).abs() < 1e-6, "{gi} vs {}", 2.0 * xi);
    }
    // Also through the checker: x used in three places.
    gradcheck("x*x + exp(x)", &[randn(&[2, 3], 112)], 1e-2, TOL, |t| {
        Ok(vec![t[0].mul(&t[0])?.add(&t[0].exp()?)?])
    });
}

#[test]
#[should_panic(expected = "relative error")]
fn checker_catches_a_wrong_gradient() {
    // exp(x) − exp(x).detach() is 0 for every x, but its analytic gradient is exp(x): the
    // numeric side sees nothing, so the checker must fail. (Guards against a vacuous checker.)
    gradcheck("deliberately wrong", &[randn(&[4], 121)], 1e-2, TOL, |t| {
        let e = t[0].exp()?;
        Ok(vec![t[0].sqr()?.add(&e.sub(&e.detach())?)?])
    });
}
