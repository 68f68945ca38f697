//! Every `.entry` in `kernels/ptx` is launched at least once, on shapes that reach every path of
//! the launch plans (the 128×128 matmul tile, the 64×64 one, the unaligned variant, f32 and bf16
//! outputs; head dims 64 and 128; u32 copies and fills; bf16 gradients in the optimizer), and
//! the paths only this test reaches are checked against the CPU. Runs on the PTX VM (no GPU, or
//! `PALM_CUDA_EMULATE=1`), where every launch is counted; on a GPU it skips with a reason.

use palm_engine::cuda::gpu_or_skip;
use palm_engine::cuda::ops::sampling::{Sampling, sample};
use palm_engine::{
    AdamW, DType, Device, Grads, Rng, RopeTables, Tensor, attention, clip_grad_norm, cross_entropy,
    embedding, entropy, layer_norm, logprob, rope, swiglu,
};
use palm_tests::assert_close;

const GPU: Device = Device::Cuda(0);
const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

/// Entries no engine path launches, with the reason. Empty: every kernel is used.
const NOT_LAUNCHED: &[(&str, &str)] = &[];

fn randn(dims: &[usize], seed: u64) -> Tensor {
    Tensor::randn(dims, 1.0, &mut Rng::new(seed))
}

fn on(t: &Tensor, dt: DType) -> Tensor {
    t.to_device(GPU).unwrap().to_dtype(dt).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec().unwrap()
}

/// Run `f` forward and backward (Σ out, so every input gets a gradient) on the device.
fn fwd_bwd(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) -> Tensor {
    let vars: Vec<Tensor> = inputs.iter().map(|t| t.as_var()).collect();
    let out = f(&vars);
    let grads = out
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for v in &vars {
        if let Some(g) = grads.get(v) {
            host(g);
        }
    }
    out
}

/// The matmul variants: a shape per tile path (with 4 SMs, 256² has 4 tiles of 128², enough
/// for the big tile; 64² one tile; odd sizes force the unaligned kernel), each layout, both
/// output dtypes, compared with the CPU on bf16-rounded operands.
fn matmuls() {
    for (m, n, k) in [(256, 256, 64), (64, 72, 40), (33, 17, 9)] {
        for dt in DTYPES {
            let r = |t: Tensor| {
                t.to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
            };
            let cases: [(&str, Tensor, Tensor); 3] = [
                ("nn", r(randn(&[m, k], 1)), r(randn(&[k, n], 2))),
                ("nt", r(randn(&[m, k], 3)), r(randn(&[n, k], 4))),
                ("tn", r(randn(&[k, m], 5)), r(randn(&[k, n], 6))),
            ];
            for (layout, a, b) in cases {
                let f = |a: &Tensor, b: &Tensor| match layout {
                    "nn" => a.matmul(b).unwrap(),
                    "nt" => a.matmul(&b.t().unwrap()).unwrap(),
                    _ => a.t().unwrap().matmul(b).unwrap(),
                };
                let want = f(&a, &b);
                let got = f(&on(&a, dt), &on(&b, dt));
                assert_close(
                    &format!("matmul {layout} {m}x{n}x{k} {dt:?}"),
                    &host(&got),
                    &host(&want),
                    1e-2,
                );
            }
        }
    }
}

fn elementwise_and_copies() {
    for dt in DTYPES {
        let (a, b) = (randn(&[7, 300], 1), randn(&[1, 300], 2));
        let pos = a.sqr().unwrap().affine(1.0, 0.1).unwrap();
        fwd_bwd(&[on(&a, dt), on(&b, dt)], |x| {
            let s = x[0].add(&x[1]).unwrap().sub(&x[1]).unwrap();
            let p = s.mul(&x[1]).unwrap().div(&x[1].exp().unwrap()).unwrap();
            p.neg()
                .unwrap()
                .sigmoid()
                .unwrap()
                .add(&p.silu().unwrap())
                .unwrap()
                .add(&p.tanh().unwrap())
                .unwrap()
                .add(&p.sqr().unwrap().affine(0.5, 0.25).unwrap())
                .unwrap()
        });
        fwd_bwd(&[on(&pos, dt)], |x| {
            x[0].log().unwrap().add(&x[0].sqrt().unwrap()).unwrap()
        });
        // max/min and their ge masks (the clamp PPO's losses use).
        fwd_bwd(&[on(&a, dt), on(&b, dt)], |x| {
            x[0].maximum(&x[1])
                .unwrap()
                .add(&x[0].minimum(&x[1]).unwrap())
                .unwrap()
                .add(&x[0].clamp(-0.5, 0.5).unwrap())
                .unwrap()
        });
        // Copies: strided gather, concatenation into a slice, fills; reductions.
        let x = on(&randn(&[3, 5, 70], 3), dt);
        host(&x.transpose(0, 2).unwrap().contiguous().unwrap());
        host(&Tensor::cat(&[&x, &x.narrow(1, 0, 2).unwrap()], 1).unwrap());
        host(&Tensor::full(1.5, &[1000], dt, GPU).unwrap());
        host(&x.max_last_keepdim().unwrap());
        for dims in [vec![2], vec![0], vec![1]] {
            host(&x.sum_keepdim(&dims).unwrap());
        }
    }
    // u32 ids: fill, strided copy, concatenation.
    let ids = Tensor::from_vec((0..60u32).collect(), &[6, 10])
        .unwrap()
        .to_device(GPU)
        .unwrap();
    let t = ids.t().unwrap().contiguous().unwrap();
    assert_eq!(t.to_vec::<u32>().unwrap()[1], 10);
    let c = Tensor::cat(&[&ids, &ids.narrow(1, 3, 2).unwrap()], 1).unwrap();
    assert_eq!(c.to_vec::<u32>().unwrap()[10], 3);
    let f = Tensor::full(7.0, &[33], DType::U32, GPU).unwrap();
    assert_eq!(f.to_vec::<u32>().unwrap(), vec![7; 33]);
}

fn model_ops() {
    let mut rng = Rng::new(9);
    for dt in DTYPES {
        let ids: Vec<u32> = (0..24).map(|_| rng.below(50) as u32).collect();
        let ids = Tensor::from_vec(ids, &[2, 12])
            .unwrap()
            .to_device(GPU)
            .unwrap();
        fwd_bwd(&[on(&randn(&[50, 40], 1), dt)], |x| {
            embedding(&x[0], &ids).unwrap()
        });
        fwd_bwd(
            &[on(&randn(&[30, 200], 2), dt), on(&randn(&[200], 3), dt)],
            |x| layer_norm(&x[0], &x[1]).unwrap(),
        );
        let tables = RopeTables::shared(32, 3, 20, 10.0, true, 512.0).unwrap();
        for inverse in [false, true] {
            fwd_bwd(&[on(&randn(&[2, 3, 20, 32], 4), dt)], |x| {
                rope(&x[0], &tables, inverse).unwrap()
            });
        }
        fwd_bwd(&[on(&randn(&[9, 2 * 70 + 8], 5), dt)], |x| {
            let p = x[0].split(1, &[8, 70, 70]).unwrap();
            swiglu(&p[1], &p[2]).unwrap()
        });
        let targets: Vec<u32> = (0..40).map(|i| (i * 7 % 300) as u32).collect();
        let targets = Tensor::from_vec(targets, &[40])
            .unwrap()
            .to_device(GPU)
            .unwrap();
        fwd_bwd(&[on(&randn(&[40, 300], 6), dt)], |x| {
            cross_entropy(&x[0], &targets).unwrap().0
        });
        fwd_bwd(&[on(&randn(&[40, 300], 7), dt)], |x| {
            logprob(&x[0], &targets, 0.8)
                .unwrap()
                .add(&entropy(&x[0], 1.2).unwrap())
                .unwrap()
        });
        let logits = on(&randn(&[5, 400], 8).scale(3.0).unwrap(), dt);
        let rule = Sampling {
            temperature: 0.9,
            top_k: 20,
            top_p: 0.9,
            seed: 3,
            step: 0,
        };
        let got = sample(&logits, &rule).unwrap().to_vec::<u32>().unwrap();
        assert!(got.iter().all(|&t| t < 400));
    }
    for d in [64, 128] {
        let scale = (d as f32).powf(-0.5);
        fwd_bwd(
            &[
                on(&randn(&[1, 2, 70, d], 10), DType::BF16),
                on(&randn(&[1, 75, d], 11), DType::BF16),
                on(&randn(&[1, 75, d], 12), DType::BF16),
            ],
            |x| attention(&x[0], &x[1], &x[2], scale).unwrap(),
        );
    }
}

/// AdamW and the gradient norm with f32 gradients (the model's) and bf16 ones, checked against
/// the CPU's optimizer on the same gradients.
fn optimizer() {
    for gdt in DTYPES {
        let params: Vec<Tensor> = [[33usize, 17], [5, 6]]
            .iter()
            .enumerate()
            .map(|(i, s)| randn(s, 20 + i as u64))
            .collect();
        let grads: Vec<Tensor> = params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                randn(p.dims(), 30 + i as u64)
                    .to_dtype(gdt)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
            })
            .collect();
        let run = |device: Device, gdt: DType| {
            let mut ps: Vec<Tensor> = params
                .iter()
                .map(|p| p.to_device(device).unwrap().as_var())
                .collect();
            let mut g = Grads::default();
            for (p, gr) in ps.iter().zip(&grads) {
                g.insert(p, gr.to_device(device).unwrap().to_dtype(gdt).unwrap());
            }
            let mut opt = AdamW::new(Default::default(), &ps).unwrap();
            let norm = clip_grad_norm(&mut g, &ps, 1.0).unwrap();
            opt.step(&mut ps, &g, 1e-2).unwrap();
            (norm, ps.iter().map(host).collect::<Vec<_>>())
        };
        let (norm_cpu, want) = run(Device::Cpu, DType::F32);
        let (norm_gpu, got) = run(GPU, gdt);
        assert!(
            (norm_cpu - norm_gpu).abs() <= 1e-4 * norm_cpu,
            "{norm_cpu} vs {norm_gpu}"
        );
        for (w, g) in want.iter().zip(&got) {
            assert_close(&format!("adamw with {gdt:?} gradients"), g, w, 1e-5);
        }
    }
}

#[test]
fn every_kernel_is_launched() {
    let Some(dev) = gpu_or_skip("every_kernel_is_launched") else {
        return;
    };
    if dev.vm_stats().is_none() {
        eprintln!(
            "skipped: every_kernel_is_launched: launch counts come from the PTX VM, this is a GPU"
        );
        return;
    }
    dev.set_poison(true);
    dev.set_vm_sms(4).unwrap();
    matmuls();
    elementwise_and_copies();
    model_ops();
    optimizer();
    let stats = dev.vm_stats().unwrap();
    let mut missing = Vec::new();
    for fam in palm_kernels::FAMILIES {
        for &k in fam.functions {
            let listed = NOT_LAUNCHED.iter().any(|(n, _)| *n == k);
            let launched = stats.get(k).is_some_and(|s| s.launches > 0);
            if !launched && !listed {
                missing.push(format!("{}/{k}", fam.name));
            }
            assert!(
                !(launched && listed),
                "{k} is launched: take it off NOT_LAUNCHED"
            );
        }
    }
    assert!(missing.is_empty(), "kernels never launched: {missing:?}");
}
