//! Every launch plan checked against the PTX it will run — argument count and kinds, grid and
//! block limits, dynamic shared memory — on the CPU, for shapes that do and do not divide the
//! tiles. A wrong argument list would be undefined behaviour on the device; here it is a test
//! failure without one.

use super::*;
use crate::cuda::launch::{check_launch, find_family, ptx_params};
use crate::ops::elementwise::{BinaryOp, UnaryOp};

/// The H100/H200 opt-in shared memory per block (227 KB).
const SMEM_OPTIN: u32 = 232_448;
const SMS: u32 = 132;

fn check(plan: &Launch) {
    let fam = find_family(&plan.kernel)
        .unwrap_or_else(|| panic!("no family declares kernel {}", plan.kernel));
    let params = ptx_params(fam.ptx, &plan.kernel)
        .unwrap_or_else(|| panic!("no .entry {} in {}.ptx", plan.kernel, fam.name));
    check_launch(&plan.kernel, &params, &plan.args, &plan.cfg, SMEM_OPTIN)
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(smem) = crate::cuda::launch::declared_dynamic_smem(&plan.kernel) {
        assert!(
            plan.cfg.shared_bytes <= smem,
            "{}: more smem than declared",
            plan.kernel
        );
    }
}

const P: u64 = 0x7f00_0000_0000;
const SIZES: [usize; 6] = [1, 7, 64, 129, 1000, 65_537];

#[test]
fn elementwise_plans_match_the_ptx() {
    for sfx in ["f32", "bf16"] {
        for n in SIZES {
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
                check(&elementwise::plan_binary(op, sfx, P, P, P, n, SMS));
            }
            for op in [
                UnaryOp::Neg,
                UnaryOp::Exp,
                UnaryOp::Log,
                UnaryOp::Sqr,
                UnaryOp::Sqrt,
                UnaryOp::Sigmoid,
                UnaryOp::Silu,
                UnaryOp::Tanh,
                UnaryOp::Affine(2.0, 1.0),
            ] {
                check(&elementwise::plan_unary(op, sfx, P, P, n, SMS));
            }
        }
    }
    for dt in [DType::F32, DType::BF16] {
        check(&elementwise::plan_cast(dt, P, P, 1000, SMS));
    }
    for dt in [DType::F32, DType::BF16, DType::U32] {
        check(&elementwise::plan_fill(dt, P, 77, 1.5, SMS).unwrap());
        check(&elementwise::plan_copy(dt, P, P, [2, 3, 4, 5], [60, 1, 3, 12], 7, SMS).unwrap());
        check(
            &elementwise::plan_copy_into(
                dt,
                P,
                P,
                [1, 2, 3, 4],
                [0, 12, 4, 1],
                0,
                [0, 24, 8, 1],
                4,
                SMS,
            )
            .unwrap(),
        );
    }
    assert!(elementwise::plan_fill(DType::I64, P, 1, 0.0, SMS).is_err());
}

#[test]
fn reduce_and_row_plans_match_the_ptx() {
    for sfx in ["f32", "bf16"] {
        for (rows, cols) in [(1, 1), (3, 7), (100_000, 256), (5, 50_304)] {
            // Sums run in f32 (bf16 inputs are widened first); maxima in either dtype.
            if sfx == "f32" {
                check(&reduce::plan_rows("sum", sfx, P, P, rows, cols).unwrap());
                check(&reduce::plan_cols(sfx, P, P, rows, cols).unwrap());
            }
            check(&reduce::plan_rows("max", sfx, P, P, rows, cols).unwrap());
            check(&reduce::plan_sumsq_multi(sfx, P, 7, rows * cols, P, SMS).unwrap());
            check(&layernorm::plan_fwd(sfx, P, P, P, P, P, rows, cols.min(12_288)).unwrap());
            check(
                &layernorm::plan_bwd(sfx, P, P, P, P, P, P, P, rows, cols.min(12_288), SMS)
                    .unwrap(),
            );
            check(&cross_entropy::plan_fwd(sfx, P, P, P, P, rows, cols).unwrap());
            check(&cross_entropy::plan_bwd(sfx, P, P, P, P, rows, cols, 0.5, P).unwrap());
            check(&logprob::plan_fwd(sfx, P, P, P, 0, P, rows, cols, 1.25).unwrap());
            check(&logprob::plan_bwd(sfx, P, P, P, P, 0, P, P, rows, cols, 1.25).unwrap());
            check(&embedding::plan(false, sfx, P, P, P, rows, cols.min(4096), 256).unwrap());
            check(&embedding::plan(true, sfx, P, P, P, rows, cols.min(4096), 256).unwrap());
            check(&swiglu::plan_fwd(sfx, P, 3 * cols, 0, cols, P, rows, cols).unwrap());
            check(&swiglu::plan_bwd(sfx, P, 3 * cols, cols, 2 * cols, P, P, rows, cols).unwrap());
            let s = sampling::Sampling {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.9,
                seed: 7,
                step: 3,
            };
            check(&sampling::plan(sfx, P, P, rows, cols, &s).unwrap());
        }
        for (rows, dh, n) in [(1, 2, 1), (2 * 4 * 128, 64, 128), (8 * 1024, 128, 1024)] {
            check(&rope::plan(false, sfx, P, P, P, rows, dh, n, 1, SMS).unwrap());
            check(&rope::plan(true, sfx, P, P, P, rows, dh, n, -1, SMS).unwrap());
        }
        let h = adamw::Step {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            bias1: 0.1,
            bias2: 0.05,
        };
        check(&adamw::plan_multi(sfx, P, 18, &h, SMS));
    }
    check(&layernorm::plan_dgamma(P, P, 264, 4096).unwrap());
}

#[test]
fn matmul_plans_pick_a_variant_the_ptx_has() {
    let op = |trans: bool, ld: usize, bs: usize, ptr: u64| matmul::Operand {
        ptr,
        trans,
        ld,
        batch_stride: bs,
    };
    for (m, n, k) in [
        (1, 1, 1),
        (7, 9, 5),
        (128, 128, 32),
        (4096, 2560, 768),
        (16 * 256, 50_304, 512),
    ] {
        for (ta, tb) in [(false, false), (false, true), (true, false)] {
            for f32_out in [false, true] {
                let lda = if ta { m } else { k };
                let ldb = if tb { k } else { n };
                for (pa, batch) in [(P, 1), (P + 2, 3)] {
                    let d = matmul::Dims { batch, m, n, k };
                    let plan = matmul::plan_matmul(
                        op(ta, lda, m * k, pa),
                        op(tb, ldb, 0, P),
                        P,
                        d,
                        f32_out,
                        SMS,
                    )
                    .unwrap();
                    check(&plan);
                    let aligned = lda % 8 == 0
                        && ldb % 8 == 0
                        && n % 8 == 0
                        && (m * k) % 8 == 0
                        && pa % 16 == 0;
                    assert_eq!(
                        !plan.kernel.contains("unaligned"),
                        aligned,
                        "{}",
                        plan.kernel
                    );
                }
            }
        }
    }
    let d = matmul::Dims {
        batch: 1,
        m: 8,
        n: 8,
        k: 8,
    };
    assert!(matmul::plan_matmul(op(true, 8, 0, P), op(true, 8, 0, P), P, d, false, SMS).is_err());
}

#[test]
fn matmul_operands_read_views_in_place() {
    // Row-major (m, k) with padding between rows.
    let o = matmul::operand_of(&[4, 6], &[8, 1], P).unwrap();
    assert_eq!((o.trans, o.ld), (false, 8));
    // W.t() of a row-major (n, k): stored transposed with ld k.
    let o = matmul::operand_of(&[6, 4], &[1, 6], P).unwrap();
    assert_eq!((o.trans, o.ld), (true, 6));
    // Batched with a shared (stride 0) batch dim of size > 1.
    let o = matmul::operand_of(&[3, 4, 6], &[24, 6, 1], P).unwrap();
    assert_eq!(o.batch_stride, 24);
    // A strided view in both dims needs a copy.
    assert!(matmul::operand_of(&[4, 6], &[12, 2], P).is_none());
}

#[test]
fn attention_plans_match_the_ptx() {
    for d in [64, 128] {
        for (b, h, n, m) in [
            (1, 1, 1, 1),
            (2, 8, 100, 100),
            (1, 16, 1, 777),
            (4, 4, 4096, 4096),
        ] {
            let s = attention::Shape { b, h, n, m, d };
            let q = attention::View {
                ptr: P,
                sb: h * n * d,
                sh: n * d,
                sn: d,
            };
            let kv = attention::View {
                ptr: P,
                sb: m * 3 * d,
                sh: 0,
                sn: 3 * d,
            };
            check(&attention::plan_fwd(s, q, kv, kv, q, P, 0.125).unwrap());
            check(&attention::plan_bwd_pre(s, q, q, P, SMS).unwrap());
            check(&attention::plan_bwd(s, q, kv, kv, q, P, P, P, P, P, 0.125, SMS).unwrap());
            let g = attention::head_groups(s, SMS);
            assert!((1..=h).contains(&g));
        }
    }
    let s = attention::Shape {
        b: 1,
        h: 1,
        n: 4,
        m: 4,
        d: 32,
    };
    let v = attention::View {
        ptr: P,
        sb: 0,
        sh: 0,
        sn: 32,
    };
    let err = attention::plan_fwd(s, v, v, v, v, P, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("64 and 128"), "{err}");
}

#[test]
fn collapse_merges_contiguous_runs() {
    // A contiguous (2, 3, 4, 5, 6) collapses to one dim.
    let dims = [2, 3, 4, 5, 6];
    let st = crate::layout::Layout::contiguous(&dims).strides().to_vec();
    let (d, [s]) = collapse(&dims, [&st]).unwrap();
    assert_eq!(d, [1, 1, 1, 720]);
    assert_eq!(s[3], 1);
    // A transposed (b, n, h, d) → (b, h, n, d) view keeps 4 dims.
    let (d, [s]) = collapse(&[2, 4, 8, 16], [&[512, 16, 64, 1]]).unwrap();
    assert_eq!(d, [2, 4, 8, 16]);
    assert_eq!(s, [512, 16, 64, 1]);
    // Broadcast (stride 0) dims and size-1 dims.
    let (d, [s]) = collapse(&[1, 3, 5], [&[0, 0, 1]]).unwrap();
    assert_eq!((d, s), ([1, 1, 3, 5], [0, 0, 0, 1]));
    // Two layouts merge only where both are contiguous.
    let (d, [a, b]) = collapse(&[2, 3, 4], [&[12, 4, 1], &[24, 8, 1]]).unwrap();
    assert_eq!(d, [1, 1, 6, 4]);
    assert_eq!((a[2], b[2]), (4, 8));
    // Five non-mergeable dims are refused with a message.
    assert!(collapse(&[2, 2, 2, 2, 2], [&[64, 16, 4, 1, 128]]).is_err());
}
