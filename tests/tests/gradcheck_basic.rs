//! Gradient checks (see `palm_tests::gradcheck`): elementwise ops, matmul, reductions and
//! broadcasting, views, split and cat.

use palm_engine::{DType, Tensor};
use palm_tests::gradcheck::*;
use proptest::prelude::*;

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

/// `a` and a `b` that differs from it everywhere by 0.2 to 1.2, either way, so finite
/// differences never cross a tie.
fn apart(dims: &[usize], seed: u64) -> (Input, Input) {
    let a = normal(dims, seed);
    let gap = away_from_zero(dims, seed + 1);
    let b: Vec<f32> = a
        .iter()
        .zip(&gap)
        .map(|(x, g)| x + g.signum() * (0.2 + g.abs().min(1.0)))
        .collect();
    (inp(a, dims), inp(b, dims))
}

#[test]
fn maximum_minimum_clamp_select() {
    for (seed, dims) in [(1, vec![3, 4]), (2, vec![7]), (3, vec![2, 3, 5])] {
        let (a, b) = apart(&dims, seed);
        let ab = [a.clone(), b.clone()];
        gradcheck("maximum", &ab, 1e-2, TOL, |t| {
            Ok(vec![t[0].maximum(&t[1])?])
        });
        gradcheck("minimum", &ab, 1e-2, TOL, |t| {
            Ok(vec![t[0].minimum(&t[1])?])
        });
        // Away from the bounds ±0.5 by at least the step: values pushed off them.
        let x: Vec<f32> = normal(&dims, seed + 7)
            .iter()
            .map(|v| {
                if (v.abs() - 0.5).abs() < 0.05 {
                    v * 1.3
                } else {
                    *v
                }
            })
            .collect();
        gradcheck("clamp", &[inp(x, &dims)], 1e-2, TOL, |t| {
            Ok(vec![t[0].clamp(-0.5, 0.5)?])
        });
        gradcheck("select", &ab, 1e-2, TOL, |t| {
            let mask = t[0].ge(&t[1])?;
            Ok(vec![Tensor::select(&mask, &t[0].sqr()?, &t[1].exp()?)?])
        });
    }
}

#[test]
fn maximum_minimum_exact_values() {
    let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap();
    let (a, b) = (
        t(&[1.0, 2.0, 3.0, f32::NAN, 0.0]),
        t(&[1.0, 5.0, -1.0, 0.0, f32::NAN]),
    );
    let max = a.maximum(&b).unwrap().to_vec::<f32>().unwrap();
    let min = a.minimum(&b).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(&max[..3], &[1.0, 5.0, 3.0]);
    assert_eq!(&min[..3], &[1.0, 2.0, -1.0]);
    assert!(max[3].is_nan() && max[4].is_nan() && min[3].is_nan() && min[4].is_nan());
    let ge = a.ge(&b).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(ge, vec![1.0, 0.0, 1.0, 0.0, 0.0]);
    assert_eq!(
        t(&[-3.0, 0.2, 9.0])
            .clamp(-1.0, 1.0)
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        vec![-1.0, 0.2, 1.0]
    );
    assert!(t(&[1.0]).clamp(1.0, 0.0).is_err());
    // A tie sends the whole gradient to the left operand.
    let (x, y) = (t(&[2.0]).as_var(), t(&[2.0]).as_var());
    let grads = x
        .maximum(&y)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec::<f32>().unwrap(), vec![1.0]);
    assert_eq!(grads.get(&y).unwrap().to_vec::<f32>().unwrap(), vec![0.0]);
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
