//! Every CUDA op against the CPU oracle, forward and gradient, on random shapes that include odd
//! sizes that do not divide the kernels' tiles (docs/testing.md: ‖cuda − cpu‖/‖cpu‖ ≤ 1e-2 in bf16,
//! 1e-5 for f32 elementwise). Inputs are rounded to the tested dtype before the CPU sees them, so
//! only the kernels' own error is measured; new device memory is poisoned (NaN) so an output a
//! kernel forgets to write fails. Each test skips with a reason without a GPU and fails instead
//! under `PALM_REQUIRE_GPU=1`.

use palm_engine::cuda::gpu_or_skip;
use palm_engine::cuda::ops::sampling::{Sampling, sample};
use palm_engine::{
    AdamW, DType, Device, Rng, RopeTables, Tensor, attention, clip_grad_norm, cross_entropy,
    embedding, entropy, layer_norm, logprob, rope, swiglu,
};
use palm_tests::{assert_close, assert_close_elementwise};
use proptest::prelude::*;

const GPU: Device = Device::Cuda(0);

/// Whether a GPU is here (poisoning its new allocations); prints why not otherwise.
fn gpu(test: &str) -> bool {
    match gpu_or_skip(test) {
        Some(d) => {
            d.set_poison(true);
            true
        }
        None => false,
    }
}

/// `n` cases, or `PROPTEST_CASES` when set (the sanitizer runs use 2).
fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn randn(dims: &[usize], seed: u64) -> Tensor {
    Tensor::randn(dims, 1.0, &mut Rng::new(seed))
}

/// A gap of 0.2 to 1.2 with the sign of `self`'s elements, exactly representable in bf16,
/// except that the first element's is + and the second's − (at least two elements): each side
/// of a maximum or minimum then wins somewhere, so neither gradient is all zeros (a reference
/// of zeros proves nothing, and random signs gave one now and then at small sizes).
trait Apart {
    fn sign_apart(&self) -> Tensor;
}

impl Apart for Tensor {
    fn sign_apart(&self) -> Tensor {
        let v: Vec<f32> = self
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let sign = [1.0, -1.0].get(i).copied().unwrap_or(g.signum());
                sign * (0.25 + (g.abs().min(1.0) * 4.0).round() / 4.0)
            })
            .collect();
        Tensor::from_vec(v, self.dims()).unwrap()
    }
}

/// `t` as the CPU reference sees it: rounded to `dt`, back in f32.
fn rounded(t: &Tensor, dt: DType) -> Tensor {
    t.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap()
}

fn tol(dt: DType) -> f64 {
    if dt == DType::F32 { 1e-5 } else { 1e-2 }
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec().unwrap()
}

/// Run `f` on the CPU (f32, inputs rounded to `dt`) and on the GPU (inputs in `dt`); compare the
/// outputs and the gradients of Σ out·w for every input.
fn compare(name: &str, dt: DType, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) {
    // A bf16 gradient passes through several bf16-rounded ops (a composed backward), so its
    // largest elementwise error may reach a few roundings; the norm criterion stays 1e-2.
    let grad_tol = if dt == DType::F32 { 1e-5 } else { 2e-2 };
    compare_tol(name, dt, tol(dt), tol(dt), grad_tol, inputs, f)
}

/// Ops that reduce (sums, log-sum-exp, normalisation, scatter-add): in f32 the GPU's summation
/// order differs from the CPU's, which moves the smallest elements of a result by a few ULPs of
/// the largest — above 1e-5 of the scale (docs/testing.md's bound for elementwise f32), below 1e-4.
fn compare_reduced(name: &str, dt: DType, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) {
    let t = if dt == DType::F32 { 1e-4 } else { tol(dt) };
    let g = if dt == DType::F32 { 1e-4 } else { 2e-2 };
    compare_tol(name, dt, t, t, g, inputs, f)
}

/// Matmul runs on the tensor cores in bf16 whatever the operands' dtype (f32 operands are
/// rounded, the result stays f32), so both dtypes are held to the bf16 tolerance on inputs
/// already rounded to bf16.
fn compare_mm(name: &str, dt: DType, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) {
    let inputs: Vec<Tensor> = inputs.iter().map(|t| rounded(t, DType::BF16)).collect();
    compare_tol(name, dt, 1e-2, 1e-2, 2e-2, &inputs, f)
}

fn compare_tol(
    name: &str,
    dt: DType,
    out_tol: f64,
    out_elem_tol: f64,
    grad_tol: f64,
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Tensor,
) {
    let cpu: Vec<Tensor> = inputs.iter().map(|t| rounded(t, dt).as_var()).collect();
    let dev: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_device(GPU).unwrap().to_dtype(dt).unwrap().as_var())
        .collect();
    let (oc, og) = (f(&cpu), f(&dev));
    assert_eq!(og.device(), GPU, "{name}: result left the GPU");
    assert_eq!(oc.dims(), og.dims(), "{name}: shape");
    assert_close_elementwise(
        &format!("{name} ({dt:?})"),
        &host(&og),
        &host(&oc),
        out_tol,
        out_elem_tol,
    );
    let w = randn(oc.dims(), 99);
    let gc = oc.mul(&rounded(&w, og.dtype())).unwrap().sum_all().unwrap();
    let wg = w.to_device(GPU).unwrap().to_dtype(og.dtype()).unwrap();
    let gg = og.mul(&wg).unwrap().sum_all().unwrap();
    let (gc, gg) = (gc.backward().unwrap(), gg.backward().unwrap());
    for (i, (c, g)) in cpu.iter().zip(&dev).enumerate() {
        if let Some(want) = gc.get(c) {
            let got = gg
                .get(g)
                .unwrap_or_else(|| panic!("{name}: no GPU gradient for input {i}"));
            assert_eq!(got.device(), GPU);
            // The gradient of a broadcast input sums out/in terms of random sign, each rounded
            // to bf16 on the way: cancellation scales their relative error by about √(out/in)
            // (a sum of n random-sign terms is √n times smaller than the sum of their sizes),
            // bounded at 4× so the check stays tight.
            let (on, inn) = (oc.elem_count() as f64, c.elem_count().max(1) as f64);
            let amp = if dt == DType::BF16 {
                (on / inn).sqrt().max(1.0)
            } else {
                1.0
            };
            assert_close(
                &format!("{name} ({dt:?}) grad {i}"),
                &host(got),
                &host(want),
                grad_tol * amp,
            );
        }
    }
}

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

proptest! {
    #![proptest_config(cases(8))]

    #[test]
    fn elementwise_with_broadcast(r in 1usize..70, c in 1usize..300, seed in 0u64..1000) {
        if !gpu("elementwise_with_broadcast") { return Ok(()); }
        for dt in DTYPES {
            let (a, b) = (randn(&[r, c], seed), randn(&[1, c], seed + 1));
            let bpos = b.exp().unwrap();
            compare("add", dt, &[a.clone(), b.clone()], |x| x[0].add(&x[1]).unwrap());
            compare("sub", dt, &[a.clone(), b.clone()], |x| x[1].sub(&x[0]).unwrap());
            compare("mul", dt, &[a.clone(), randn(&[r, 1], seed + 2)], |x| x[0].mul(&x[1]).unwrap());
            compare("div", dt, &[a.clone(), bpos], |x| x[0].div(&x[1]).unwrap());
        }
    }

    /// max/min/clamp/select, and the ge mask they are built on, on operands that differ by at
    /// least 0.2 (so bf16 rounding never turns an order into a tie).
    #[test]
    fn maximum_minimum_clamp_select(r in 1usize..40, c in 2usize..300, seed in 0u64..1000) {
        if !gpu("maximum_minimum_clamp_select") { return Ok(()); }
        for dt in DTYPES {
            let a = rounded(&randn(&[r, c], seed), DType::BF16);
            let gap = randn(&[r, c], seed + 1);
            let b = a.add(&gap.sign_apart()).unwrap();
            compare("maximum", dt, &[a.clone(), b.clone()], |x| x[0].maximum(&x[1]).unwrap());
            compare("minimum", dt, &[a.clone(), b.clone()], |x| x[0].minimum(&x[1]).unwrap());
            compare("ge", dt, &[a.clone(), b.clone()], |x| x[0].ge(&x[1]).unwrap());
            compare("clamp", dt, std::slice::from_ref(&b), |x| x[0].clamp(-0.5, 0.75).unwrap());
            compare("select", dt, &[a.clone(), b.clone()], |x| {
                Tensor::select(&x[0].ge(&x[1]).unwrap(), &x[0], &x[1].scale(2.0).unwrap()).unwrap()
            });
        }
    }

    #[test]
    fn unary_maps(n in 1usize..5000, seed in 0u64..1000) {
        if !gpu("unary_maps") { return Ok(()); }
        for dt in DTYPES {
            let x = randn(&[n], seed);
            let pos = x.sqr().unwrap().affine(1.0, 0.1).unwrap();
            compare("neg", dt, std::slice::from_ref(&x), |x| x[0].neg().unwrap());
            compare("exp", dt, std::slice::from_ref(&x), |x| x[0].exp().unwrap());
            compare("sqr", dt, std::slice::from_ref(&x), |x| x[0].sqr().unwrap());
            compare("sigmoid", dt, std::slice::from_ref(&x), |x| x[0].sigmoid().unwrap());
            compare("silu", dt, std::slice::from_ref(&x), |x| x[0].silu().unwrap());
            compare("tanh", dt, std::slice::from_ref(&x), |x| x[0].tanh().unwrap());
            compare("affine", dt, std::slice::from_ref(&x), |x| x[0].affine(-1.5, 0.25).unwrap());
            compare("log", dt, std::slice::from_ref(&pos), |x| x[0].log().unwrap());
            compare("sqrt", dt, std::slice::from_ref(&pos), |x| x[0].sqrt().unwrap());
        }
    }

    #[test]
    fn views_copies_and_concatenation(a in 1usize..9, b in 1usize..40, c in 1usize..70, seed in 0u64..1000) {
        if !gpu("views_copies_and_concatenation") { return Ok(()); }
        for dt in DTYPES {
            let x = randn(&[a, b, c], seed);
            let y = randn(&[a, 3, c], seed + 1);
            compare("transpose+contiguous", dt, std::slice::from_ref(&x), |t| {
                t[0].transpose(0, 2).unwrap().contiguous().unwrap()
            });
            compare("narrow", dt, std::slice::from_ref(&x), |t| {
                t[0].narrow(2, c / 3, c - c / 3).unwrap().contiguous().unwrap()
            });
            compare("cat dim 1", dt, &[x.clone(), y.clone()], |t| Tensor::cat(&[&t[0], &t[1]], 1).unwrap());
            compare("cat dim 2 of views", dt, std::slice::from_ref(&x), |t| {
                let v = t[0].transpose(1, 2).unwrap();
                Tensor::cat(&[&v, &v.narrow(2, 0, 1).unwrap()], 2).unwrap()
            });
            compare("broadcast copy", dt, &[randn(&[1, b, 1], seed)], |t| {
                t[0].broadcast_as(&[a, b, c]).unwrap().contiguous().unwrap()
            });
        }
        // Casts are exact both ways for bf16-representable values; u32 ids round-trip.
        let x = rounded(&randn(&[a, b], seed), DType::BF16);
        let back = x.to_device(GPU).unwrap().to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        prop_assert_eq!(host(&back), host(&x));
        let ids: Vec<u32> = (0..a * b).map(|i| (i * 7919) as u32).collect();
        let t = Tensor::from_vec(ids.clone(), &[a, b]).unwrap().to_device(GPU).unwrap();
        prop_assert_eq!(t.to_vec::<u32>().unwrap(), ids);
    }

    // c ≥ 2: log-softmax over one element is identically 0, a reference that proves nothing.
    #[test]
    fn reductions(a in 1usize..6, b in 1usize..50, c in 2usize..300, seed in 0u64..1000) {
        if !gpu("reductions") { return Ok(()); }
        for dt in DTYPES {
            let x = randn(&[a, b, c], seed);
            for dims in [vec![2], vec![0], vec![1], vec![0, 2], vec![0, 1, 2]] {
                compare_reduced(&format!("sum {dims:?}"), dt, std::slice::from_ref(&x), |t| t[0].sum_keepdim(&dims).unwrap());
            }
            compare_reduced("log_softmax", dt, std::slice::from_ref(&x), |t| t[0].log_softmax().unwrap());
            let (mc, mg) = (rounded(&x, dt).max_last_keepdim().unwrap(), x.to_device(GPU).unwrap().to_dtype(dt).unwrap().max_last_keepdim().unwrap());
            prop_assert_eq!(host(&mg), host(&mc));
        }
    }

    #[test]
    fn matmul_layouts(m in 1usize..200, n in 1usize..200, k in 1usize..150, batch in 1usize..4, seed in 0u64..1000) {
        if !gpu("matmul_layouts") { return Ok(()); }
        for dt in DTYPES {
            let (a, b) = (randn(&[m, k], seed), randn(&[k, n], seed + 1));
            compare_mm("matmul nn", dt, &[a.clone(), b.clone()], |t| t[0].matmul(&t[1]).unwrap());
            compare_mm("matmul nt", dt, &[a.clone(), randn(&[n, k], seed + 2)], |t| t[0].matmul(&t[1].t().unwrap()).unwrap());
            compare_mm("matmul tn", dt, &[randn(&[k, m], seed + 3), b.clone()], |t| t[0].t().unwrap().matmul(&t[1]).unwrap());
            compare_mm("matmul tt", dt, &[randn(&[k, m], seed + 4), randn(&[n, k], seed + 5)], |t| {
                t[0].t().unwrap().matmul(&t[1].t().unwrap()).unwrap()
            });
            compare_mm("matmul batched", dt, &[randn(&[batch, m, k], seed + 6), randn(&[batch, k, n], seed + 7)], |t| {
                t[0].matmul(&t[1]).unwrap()
            });
            compare_mm("matmul rows", dt, &[randn(&[batch, m, k], seed + 8), b.clone()], |t| t[0].matmul(&t[1]).unwrap());
        }
    }

    #[test]
    fn embedding_gather_and_scatter(v in 2usize..300, d in 1usize..200, b in 1usize..4, n in 1usize..40, seed in 0u64..1000) {
        if !gpu("embedding_gather_and_scatter") { return Ok(()); }
        let mut rng = Rng::new(seed);
        let ids: Vec<u32> = (0..b * n).map(|_| rng.below(v) as u32).collect();
        let ids = Tensor::from_vec(ids, &[b, n]).unwrap();
        for dt in DTYPES {
            let table = randn(&[v, d], seed);
            let ids = ids.clone();
            compare_reduced("embedding", dt, &[table], move |t| {
                embedding(&t[0], &ids.to_device(t[0].device()).unwrap()).unwrap()
            });
        }
    }

    #[test]
    fn layer_norm_rows(r in 1usize..300, d in 1usize..1100, seed in 0u64..1000) {
        if !gpu("layer_norm_rows") { return Ok(()); }
        for dt in DTYPES {
            let x = randn(&[r, d], seed).affine(3.0, 1.0).unwrap();
            let g = randn(&[d], seed + 1).scale(0.1).unwrap();
            compare_reduced("layer_norm", dt, &[x, g], |t| layer_norm(&t[0], &t[1]).unwrap());
        }
    }

    #[test]
    fn rope_with_xpos(b in 1usize..3, h in 1usize..5, n in 1usize..70, half in 1usize..33, start in 0usize..50, seed in 0u64..1000) {
        if !gpu("rope_with_xpos") { return Ok(()); }
        let dh = 2 * half;
        let tables = RopeTables::shared(dh, start, n, (n / 2) as f64, true, 512.0).unwrap();
        for dt in DTYPES {
            for inverse in [false, true] {
                let t2 = tables.clone();
                compare("rope", dt, &[randn(&[b, h, n, dh], seed)], move |t| rope(&t[0], &t2, inverse).unwrap());
            }
        }
    }

    #[test]
    fn swiglu_in_place_and_separate(r in 1usize..100, f in 1usize..300, seed in 0u64..1000) {
        if !gpu("swiglu_in_place_and_separate") { return Ok(()); }
        for dt in DTYPES {
            // x and gate as column ranges of one projection (the model's case), and as two tensors.
            compare("swiglu fused", dt, &[randn(&[2, r, 2 * f + 8], seed)], |t| {
                let parts = t[0].split(2, &[8, f, f]).unwrap();
                swiglu(&parts[1], &parts[2]).unwrap()
            });
            compare("swiglu separate", dt, &[randn(&[r, f], seed), randn(&[r, f], seed + 1)], |t| {
                swiglu(&t[0], &t[1]).unwrap()
            });
        }
    }

    #[test]
    fn cross_entropy_rows(r in 1usize..200, v in 2usize..600, seed in 0u64..1000) {
        if !gpu("cross_entropy_rows") { return Ok(()); }
        let mut rng = Rng::new(seed);
        // Some targets are 0 (ignored), never all of them.
        let mut targets: Vec<u32> = (0..r).map(|_| rng.below(v) as u32).collect();
        targets[0] = 1;
        let targets = Tensor::from_vec(targets, &[r]).unwrap();
        for dt in DTYPES {
            let t2 = targets.clone();
            compare_reduced("cross_entropy", dt, &[randn(&[r, v], seed).scale(3.0).unwrap()], move |t| {
                cross_entropy(&t[0], &t2.to_device(t[0].device()).unwrap()).unwrap().0
            });
        }
    }

    #[test]
    fn logprob_and_entropy_rows(r in 1usize..100, v in 2usize..600, seed in 0u64..1000) {
        if !gpu("logprob_and_entropy_rows") { return Ok(()); }
        let mut rng = Rng::new(seed);
        let ids: Vec<u32> = (0..r).map(|_| rng.below(v) as u32).collect();
        let ids = Tensor::from_vec(ids, &[r]).unwrap();
        for dt in DTYPES {
            let i2 = ids.clone();
            let x = randn(&[r, v], seed).scale(2.0).unwrap();
            compare_reduced("logprob", dt, std::slice::from_ref(&x), move |t| {
                logprob(&t[0], &i2.to_device(t[0].device()).unwrap(), 0.8).unwrap()
            });
            compare_reduced("entropy", dt, &[x], |t| entropy(&t[0], 1.3).unwrap());
        }
    }

    #[test]
    fn causal_multi_query_attention(b in 1usize..3, h in 1usize..5, n in 1usize..150, extra in 0usize..70, di in 0usize..3, seed in 0u64..1000) {
        if !gpu("causal_multi_query_attention") { return Ok(()); }
        // 64 and 128 run the fused kernels; 32 the composed path.
        let d = [64, 128, 32][di];
        attention_case(b, h, n, n + extra, d, seed);
    }
}

/// Causal MQA attention on CUDA against the CPU. Head dim 32 runs the composed path: scores,
/// softmax and P·V each rounded to bf16, so one output may be off by a few bf16 steps (2% of the
/// scale; seen: 1.3%) while the norm stays within 1%; the fused kernels keep the 1% bound.
fn attention_case(b: usize, h: usize, n: usize, m: usize, d: usize, seed: u64) {
    let scale = (d as f32).powf(-0.5);
    let elem = if d == 32 { 2e-2 } else { 1e-2 };
    let inputs = [
        randn(&[b, h, n, d], seed),
        randn(&[b, m, d], seed + 1),
        randn(&[b, m, d], seed + 2),
    ];
    compare_tol("attention", DType::BF16, 1e-2, elem, 2e-2, &inputs, |t| {
        attention(&t[0], &t[1], &t[2], scale).unwrap()
    });
}

/// A case a CI run drew (proptest's shrunk input), kept: the composed path's largest element was
/// off by 7.8e-3 at scale 0.59 (1.3%), above the old 1% elementwise bound.
#[test]
fn composed_attention_case_from_ci() {
    if !gpu("composed_attention_case_from_ci") {
        return;
    }
    attention_case(1, 1, 12, 80, 32, 611);
}

#[test]
fn sampling_rules() {
    if !gpu("sampling_rules") {
        return;
    }
    let (rows, v) = (37, 1000);
    let logits = randn(&[rows, v], 5).scale(4.0).unwrap();
    let host_rows = host(&logits);
    let order = |r: usize| {
        let row = &host_rows[r * v..(r + 1) * v];
        let mut idx: Vec<usize> = (0..v).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        idx
    };
    let dev = logits.to_device(GPU).unwrap();
    let rule = |temperature, top_k, top_p, step| Sampling {
        temperature,
        top_k,
        top_p,
        seed: 11,
        step,
    };
    // Greedy, and top-k = 1 at any temperature, are the argmax.
    for s in [rule(0.0, 0, 1.0, 0), rule(1.5, 1, 1.0, 1)] {
        let got = sample(&dev, &s).unwrap().to_vec::<u32>().unwrap();
        for (r, &t) in got.iter().enumerate() {
            assert_eq!(t as usize, order(r)[0], "row {r} under {s:?}");
        }
    }
    // Top-k = 3: always one of the three largest; over many steps, more than one of them.
    let mut seen = std::collections::HashSet::new();
    for step in 0..40 {
        let got = sample(&dev, &rule(2.0, 3, 1.0, step))
            .unwrap()
            .to_vec::<u32>()
            .unwrap();
        for (r, &t) in got.iter().enumerate() {
            assert!(order(r)[..3].contains(&(t as usize)), "row {r}: {t}");
        }
        seen.insert(got[0]);
    }
    assert!(seen.len() > 1, "top-k 3 at temperature 2 never varied");
    // The same (seed, step) draws the same tokens.
    let a = sample(&dev, &rule(1.0, 0, 0.9, 7))
        .unwrap()
        .to_vec::<u32>()
        .unwrap();
    let b = sample(&dev, &rule(1.0, 0, 0.9, 7))
        .unwrap()
        .to_vec::<u32>()
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn adamw_refuses_parameters_it_was_not_made_for_on_the_gpu() {
    // The device kernel runs over the parameter's length: moments of 3 elements against a
    // parameter of 4 must be refused before the launch (it would read and write past them).
    if !gpu("adamw_refuses_parameters_it_was_not_made_for_on_the_gpu") {
        return;
    }
    palm_tests::assert_adamw_refuses_a_parameter_of_another_size(GPU);
}

#[test]
fn adamw_and_clipping_match_the_cpu() {
    if !gpu("adamw_and_clipping_match_the_cpu") {
        return;
    }
    let shapes: [&[usize]; 3] = [&[33, 17], &[17], &[5, 6]];
    let params: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| randn(s, i as u64).as_var())
        .collect();
    let run = |device: Device| {
        let mut ps: Vec<Tensor> = params
            .iter()
            .map(|p| p.to_device(device).unwrap().as_var())
            .collect();
        let mut opt = AdamW::new(Default::default(), &ps).unwrap();
        let mut norms = Vec::new();
        for step in 0..3 {
            let loss = ps
                .iter()
                .map(|p| {
                    p.sqr()
                        .unwrap()
                        .scale(3.0 + step as f32)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                })
                .reduce(|a, b| a.add(&b).unwrap())
                .unwrap();
            let mut grads = loss.backward().unwrap();
            // Clipping then stepping, and the fused form (the kernel reads scaled copies).
            if step % 2 == 0 {
                norms.push(clip_grad_norm(&mut grads, &ps, 1.0).unwrap());
                opt.step(&mut ps, &grads, 1e-2).unwrap();
            } else {
                norms.push(opt.clip_and_step(&mut ps, &grads, 1e-2, 1.0).unwrap());
            }
        }
        let (_, moments) = opt.state().unwrap();
        // The bf16 copies the optimizer wrote equal a fresh cast of the new weights.
        for p in &ps {
            let cast = host(&p.to_dtype(DType::BF16).unwrap());
            assert_eq!(
                cast,
                host(&rounded(&p.to_device(Device::Cpu).unwrap(), DType::BF16))
            );
        }
        (ps.iter().map(host).collect::<Vec<_>>(), norms, moments)
    };
    let (pc, nc, mc) = run(Device::Cpu);
    let (pg, ng, mg) = run(GPU);
    for (a, b) in ng.iter().zip(&nc) {
        assert!((a - b).abs() <= 1e-4 * b.abs(), "grad norm {a} vs {b}");
    }
    for (i, (a, b)) in pg.iter().zip(&pc).enumerate() {
        assert_close(&format!("param {i}"), a, b, 1e-5);
    }
    for (i, (a, b)) in mg.iter().zip(&mc).enumerate() {
        assert_close(&format!("m {i}"), &a.0, &b.0, 1e-5);
        assert_close(&format!("v {i}"), &a.1, &b.1, 1e-5);
    }
}

/// Rows as wide as the `small` preset's vocabulary and model dim: the kernels' grid-stride row
/// loops and block reductions at their real sizes (the property tests stay small).
#[test]
fn wide_rows_match_the_cpu() {
    if !gpu("wide_rows_match_the_cpu") {
        return;
    }
    let (r, v) = (3, 50_304);
    let mut targets: Vec<u32> = (0..r).map(|i| (i * 12_345 + 7) as u32).collect();
    targets[1] = 0; // ignored
    let targets = Tensor::from_vec(targets, &[r]).unwrap();
    for dt in DTYPES {
        let x = randn(&[r, v], 3).scale(4.0).unwrap();
        let t2 = targets.clone();
        compare_reduced(
            "cross_entropy V=50304",
            dt,
            std::slice::from_ref(&x),
            move |t| {
                cross_entropy(&t[0], &t2.to_device(t[0].device()).unwrap())
                    .unwrap()
                    .0
            },
        );
        let t3 = targets.clone();
        compare_reduced("logprob V=50304", dt, std::slice::from_ref(&x), move |t| {
            logprob(&t[0], &t3.to_device(t[0].device()).unwrap(), 0.7).unwrap()
        });
        compare_reduced(
            "layer_norm 6144",
            dt,
            &[randn(&[4, 6144], 5), randn(&[6144], 6)],
            |t| layer_norm(&t[0], &t[1]).unwrap(),
        );
        // Greedy sampling over the whole vocabulary is the argmax.
        let dev = x.to_device(GPU).unwrap().to_dtype(dt).unwrap();
        let rows = host(&rounded(&x, dt));
        let rule = Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 1,
            step: 0,
        };
        let got = sample(&dev, &rule).unwrap().to_vec::<u32>().unwrap();
        for (i, &g) in got.iter().enumerate() {
            let row = &rows[i * v..(i + 1) * v];
            let best = (0..v)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .unwrap();
            assert_eq!(g as usize, best, "row {i} ({dt:?})");
        }
    }
}

/// Operands on two devices are an error naming the op, from every entry point (the backend
/// boundary refuses them before any backend runs), never a panic or a silent copy.
#[test]
fn operands_on_two_devices_are_an_error_naming_the_op() {
    if !gpu("operands_on_two_devices_are_an_error_naming_the_op") {
        return;
    }
    let on_cpu = randn(&[2, 64], 1);
    let on_gpu = randn(&[2, 64], 2).to_device(GPU).unwrap();
    let ids = Tensor::from_vec(vec![1u32, 2], &[2]).unwrap();
    let table = randn(&[8, 64], 3).to_device(GPU).unwrap();
    let gamma = Tensor::zeros(&[64], DType::F32, Device::Cpu).unwrap();
    let q = randn(&[1, 1, 2, 64], 4);
    let kv = randn(&[1, 2, 64], 5).to_device(GPU).unwrap();
    let cases: Vec<(&str, palm_engine::Result<Tensor>)> = vec![
        ("add", on_cpu.add(&on_gpu)),
        ("maximum", on_gpu.maximum(&on_cpu)),
        ("matmul", on_cpu.matmul(&on_gpu.t().unwrap())),
        ("cat", Tensor::cat(&[&on_cpu, &on_gpu], 0)),
        ("embedding", embedding(&table, &ids)),
        ("layer_norm", layer_norm(&on_gpu, &gamma)),
        ("swiglu", swiglu(&on_cpu, &on_gpu)),
        ("attention", attention(&q, &kv, &kv, 0.125)),
        (
            "cross_entropy",
            cross_entropy(&on_gpu, &ids).map(|(t, _)| t),
        ),
        ("logprob", logprob(&on_gpu, &ids, 1.0)),
    ];
    for (op, got) in cases {
        let err = got.expect_err(op).to_string();
        assert!(
            err.contains(op) && err.contains("cpu") && err.contains("cuda"),
            "{op}: {err}"
        );
    }
}

/// `write_slice` (how the KV cache grows in place): the CPU result equals the concatenation it
/// replaces, a tensor sharing the data never sees the write, and bad writes are refused; the
/// device writes the same elements, from a strided source too, in both dtypes.
#[test]
fn write_slice_writes_in_place_and_guards_shared_data() {
    let base = randn(&[2, 8, 4], 1);
    let src = randn(&[2, 3, 4], 2);
    let expected = |base: &Tensor, src: &Tensor| {
        let parts = [
            base.narrow(1, 0, 2).unwrap(),
            src.clone(),
            base.narrow(1, 5, 3).unwrap(),
        ];
        host(&Tensor::cat(&[&parts[0], &parts[1], &parts[2]], 1).unwrap())
    };
    let before = host(&base);
    let mut shared = base.clone();
    shared.write_slice(1, 2, &src).unwrap();
    assert_eq!(host(&shared), expected(&base, &src));
    assert_eq!(
        host(&base),
        before,
        "a tensor sharing the data saw the write"
    );
    let mut wrong = randn(&[2, 8, 4], 3);
    let refused = [
        ("past the end", wrong.write_slice(1, 6, &src)),
        ("rank", wrong.write_slice(1, 0, &randn(&[3, 4], 4))),
        ("other dims", wrong.write_slice(1, 0, &randn(&[2, 3, 5], 4))),
        ("dim", wrong.write_slice(3, 0, &src)),
        (
            "dtype",
            wrong.write_slice(1, 0, &src.to_dtype(DType::BF16).unwrap()),
        ),
        ("tracked source", wrong.write_slice(1, 0, &src.as_var())),
        ("start overflow", wrong.write_slice(1, usize::MAX, &src)),
    ];
    for (case, got) in refused {
        assert!(got.is_err(), "{case}: accepted");
    }
    let mut var = randn(&[2, 8, 4], 3).as_var();
    assert!(
        var.write_slice(1, 0, &src).is_err(),
        "a parameter was written in place"
    );

    if !gpu("write_slice_writes_in_place_and_guards_shared_data") {
        return;
    }
    let strided = randn(&[4, 3, 2], 5).transpose(0, 2).unwrap();
    for dt in [DType::F32, DType::BF16] {
        for s in [src.clone(), strided.clone()] {
            let mut on_gpu = base.to_device(GPU).unwrap().to_dtype(dt).unwrap();
            on_gpu
                .write_slice(1, 2, &s.to_device(GPU).unwrap().to_dtype(dt).unwrap())
                .unwrap();
            assert_eq!(
                host(&on_gpu),
                expected(&rounded(&base, dt), &rounded(&s, dt)),
                "{dt:?}"
            );
        }
    }
    let mut on_gpu = base.to_device(GPU).unwrap();
    let err = on_gpu
        .write_slice(1, 0, &src)
        .expect_err("cpu into cuda")
        .to_string();
    assert!(
        err.contains("write_slice") && err.contains("cpu") && err.contains("cuda"),
        "{err}"
    );
}
