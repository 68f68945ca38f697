//! Finite-difference gradient checks for every differentiable primitive of the engine, on
//! random shapes (proptest) and random data (never zeros).
//!
//! Method: for inputs x₁…xₖ and an op producing outputs y₁…yₘ, the scalar loss is
//! L = Σⱼ sum(yⱼ · Rⱼ) with fixed random Rⱼ (so the upstream gradient is not uniform). The
//! analytic gradient comes from `backward()`; the numeric one from central differences
//! (L(x + ε) − L(x − ε)) / 2ε, each L evaluated in f32 by the engine and accumulated in f64.
//! They must agree to `tol` relative in norm (plus a floor for f32 rounding noise); a failure
//! reports the worst element.

use palm_engine::{Result, Rng, Tensor, no_grad};
use proptest::test_runner::Config as PtConfig;

// ---- data -------------------------------------------------------------------------------

pub fn n_of(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// N(0, 1) samples.
pub fn normal(dims: &[usize], seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n_of(dims)).map(|_| rng.normal()).collect()
}

/// Uniform in [0.5, 2): for log, sqrt.
pub fn positive(dims: &[usize], seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n_of(dims)).map(|_| 0.5 + 1.5 * rng.uniform()).collect()
}

/// ±[0.5, 2): for denominators.
pub fn away_from_zero(dims: &[usize], seed: u64) -> Vec<f32> {
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
pub struct Input {
    pub data: Vec<f32>,
    pub dims: Vec<usize>,
}

pub fn inp(data: Vec<f32>, dims: &[usize]) -> Input {
    assert_eq!(data.len(), n_of(dims));
    Input {
        data,
        dims: dims.to_vec(),
    }
}

pub fn randn(dims: &[usize], seed: u64) -> Input {
    inp(normal(dims, seed), dims)
}

// ---- the checker --------------------------------------------------------------------------

/// The fixed random weights Rⱼ for outputs of the given shapes.
pub fn weights(shapes: &[Vec<usize>]) -> Vec<Vec<f32>> {
    shapes
        .iter()
        .enumerate()
        .map(|(j, d)| normal(d, 0xC0FFEE + j as u64))
        .collect()
}

/// L = Σⱼ sum(yⱼ · Rⱼ) evaluated without recording, accumulated in f64.
pub fn numeric_loss<F>(f: &F, inputs: &[Input], rs: &[Vec<f32>]) -> f64
where
    F: Fn(&[Tensor]) -> Result<Vec<Tensor>>,
{
    loss_and_scale(f, inputs, rs).0
}

/// L and ‖y ∘ R‖₂, the scale of the f32 rounding noise in L.
pub fn loss_and_scale<F>(f: &F, inputs: &[Input], rs: &[Vec<f32>]) -> (f64, f64)
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
pub fn gradcheck<F>(name: &str, inputs: &[Input], eps: f32, tol: f64, f: F) -> Vec<Vec<f32>>
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
pub fn compare(
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

pub fn cfg(cases: u32) -> PtConfig {
    PtConfig {
        cases,
        failure_persistence: None,
        ..PtConfig::default()
    }
}

/// `dims` with the dims whose bit is set in `mask` made 1 and `drop` leading dims removed:
/// a shape that broadcasts to `dims`.
pub fn broadcastable(dims: &[usize], mask: u8, drop: usize) -> Vec<usize> {
    let d: Vec<usize> = dims
        .iter()
        .enumerate()
        .map(|(i, &s)| if mask >> i & 1 == 1 { 1 } else { s })
        .collect();
    d[drop.min(d.len())..].to_vec()
}

pub const TOL: f64 = 1e-2;
