//! Gradient checks (see `palm_tests::gradcheck`): embedding, layer norm, rope, attention,
//! swiglu, softmax, cross-entropy, logprob/entropy, and autograd itself.

use palm_engine::{
    DType, Device, Rng, RopeTables, Tensor, attention, cross_entropy, embedding, entropy,
    layer_norm, logprob, no_grad, rope, swiglu,
};
use palm_tests::gradcheck::*;
use proptest::prelude::*;

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

    /// SwiGLU on views: halves of one wider tensor (rows read in place at the wider stride, as
    /// the model's slices of the fused projection are) and transposed operands (gathered) give
    /// what contiguous copies give, with gradients through the views.
    #[test]
    fn swiglu_on_views(r in 1usize..5, f in 1usize..7, extra in 0usize..3, seed in any::<u64>()) {
        let width = 2 * f + extra;
        let fused = randn(&[2, r, width], seed);
        let ft = Tensor::from_vec(fused.data.clone(), &[2, r, width]).unwrap();
        let (x, gate) = (ft.narrow(2, extra, f).unwrap(), ft.narrow(2, extra + f, f).unwrap());
        let copies = swiglu(&x.contiguous().unwrap(), &gate.contiguous().unwrap()).unwrap();
        let (xt, gt) = (x.transpose(1, 2).unwrap(), gate.transpose(1, 2).unwrap());
        let transposed = swiglu(&xt, &gt).unwrap().transpose(1, 2).unwrap();
        let want = copies.to_vec::<f32>().unwrap();
        for got in [swiglu(&x, &gate).unwrap(), transposed] {
            prop_assert_eq!(got.contiguous().unwrap().to_vec::<f32>().unwrap(), want.clone());
        }
        gradcheck(&format!("swiglu views r{r} f{f} +{extra}"), &[fused], 1e-2, TOL, |t| {
            let (x, gate) = (t[0].narrow(2, extra, f)?, t[0].narrow(2, extra + f, f)?);
            Ok(vec![swiglu(&x, &gate)?, swiglu(&x.transpose(1, 2)?, &gate.transpose(1, 2)?)?])
        });
    }

    /// The SwiGLU backward writes dx and dgate side by side in one buffer; when x and gate are
    /// the two halves of one tensor in that order, autograd takes that buffer as the tensor's
    /// gradient without copying. Halves in the other order (gate first) share the buffer too
    /// but lie swapped, and must be reassembled: both give the true gradient.
    #[test]
    fn swiglu_halves_in_either_order(r in 1usize..5, f in 1usize..7, seed in any::<u64>()) {
        let fused = randn(&[r, 2 * f], seed);
        for swapped in [false, true] {
            gradcheck(&format!("swiglu halves r{r} f{f} swapped {swapped}"),
                std::slice::from_ref(&fused),
                1e-2, TOL, |t| {
                    let (first, second) = (t[0].narrow(1, 0, f)?, t[0].narrow(1, f, f)?);
                    let (x, gate) = if swapped { (second, first) } else { (first, second) };
                    Ok(vec![swiglu(&x, &gate)?])
                });
        }
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

proptest! {
    #![proptest_config(cfg(32))]

    /// logprob and entropy: values against a direct f64 computation, gradients by finite
    /// differences; an id beyond the vocabulary gives 0 and no gradient.
    #[test]
    fn logprob_and_entropy(
        rows in 1usize..6,
        v in 2usize..9,
        temp_i in 0usize..3,
        seed in any::<u64>(),
    ) {
        let temperature = [1.0f32, 0.7, 1.6][temp_i];
        let mut rng = Rng::new(seed ^ 0x1B);
        let mut ids: Vec<u32> = (0..rows).map(|_| rng.below(v) as u32).collect();
        ids[0] = v as u32; // out of range
        let it = Tensor::from_vec(ids.clone(), &[rows]).unwrap();
        let dims = [rows, v];
        // Unit-scale logits: a saturated softmax (p ≈ 1) leaves gradients near f32 rounding.
        let logits = inp(normal(&dims, seed), &dims);
        let lt = Tensor::from_vec(logits.data.clone(), &dims).unwrap();
        let lp = logprob(&lt, &it, temperature).unwrap().to_vec::<f32>().unwrap();
        let h = entropy(&lt, temperature).unwrap().to_vec::<f32>().unwrap();
        for r in 0..rows {
            let z: Vec<f64> = logits.data[r * v..(r + 1) * v].iter().map(|&x| x as f64 / temperature as f64).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
            let want_lp = if (ids[r] as usize) < v { z[ids[r] as usize] - lse } else { 0.0 };
            let want_h = -z.iter().map(|z| (z - lse).exp() * (z - lse)).sum::<f64>();
            prop_assert!((lp[r] as f64 - want_lp).abs() < 1e-5 * (1.0 + want_lp.abs()), "logp {} vs {want_lp}", lp[r]);
            prop_assert!((h[r] as f64 - want_h).abs() < 1e-5 * (1.0 + want_h), "entropy {} vs {want_h}", h[r]);
        }
        let g = gradcheck(&format!("logprob ({rows},{v}) T={temperature}"), std::slice::from_ref(&logits), 1e-2, TOL,
            |t| Ok(vec![logprob(&t[0], &it, temperature)?]));
        prop_assert!(g[0][..v].iter().all(|&x| x == 0.0), "out-of-range id got a gradient");
        gradcheck(&format!("entropy ({rows},{v}) T={temperature}"), &[logits], 1e-2, TOL,
            |t| Ok(vec![entropy(&t[0], temperature)?]));
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

#[test]
fn attention_with_an_empty_dimension() {
    // No batch, no heads, no queries (with and without cached keys), no width: an empty or
    // all-zero result of the right shape and zero gradients, never a panic.
    for (b, h, n, m, d) in [
        (0, 2, 3, 3, 4),
        (1, 0, 3, 3, 4),
        (1, 2, 0, 0, 4),
        (1, 2, 0, 3, 4),
        (1, 2, 3, 3, 0),
    ] {
        let case = format!("b={b} h={h} n={n} m={m} d={d}");
        let q = Tensor::from_vec(vec![0.5f32; b * h * n * d], &[b, h, n, d])
            .unwrap()
            .as_var();
        let k = Tensor::from_vec(vec![0.25f32; b * m * d], &[b, m, d])
            .unwrap()
            .as_var();
        let v = Tensor::from_vec(vec![1.0f32; b * m * d], &[b, m, d])
            .unwrap()
            .as_var();
        let out = attention(&q, &k, &v, 0.5).unwrap();
        assert_eq!(out.dims(), &[b, h, n, d], "{case}");
        let grads = out.sum_all().unwrap().backward().unwrap();
        for (t, name) in [(&q, "q"), (&k, "k"), (&v, "v")] {
            let g = grads.get(t).map(|g| g.to_vec::<f32>().unwrap());
            if let Some(g) = g {
                assert_eq!(
                    g.len(),
                    t.dims().iter().product::<usize>(),
                    "{case}: d{name}"
                );
                assert!(g.iter().all(|x| *x == 0.0), "{case}: d{name} not zero");
            }
        }
    }
}
