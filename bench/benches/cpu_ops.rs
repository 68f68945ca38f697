//! CPU kernels at PaLM shapes: matmul (the `enwik8` fused projection and output), causal
//! multi-query attention forward and forward+backward. Each iteration runs on the thread pool
//! (`cpu::on_workers`), as the training loop runs every op: the caller then does its share of a
//! parallel loop instead of waking both workers and waiting.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palm_engine::cpu::on_workers;
use palm_engine::{Rng, Tensor, attention};

fn matmul(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10);
    let mut rng = Rng::new(0);
    // (tokens, out, in): enwik8's fused projection and ff_out for one 1024-token sequence.
    for (name, m, n, k) in [
        ("fused_proj_enwik8", 1024, 4736, 512),
        ("ff_out_enwik8", 1024, 512, 2048),
        ("square_512", 512, 512, 512),
    ] {
        let a = Tensor::randn(&[m, k], 1.0, &mut rng);
        let w = Tensor::randn(&[n, k], 1.0, &mut rng);
        let wt = w.t().unwrap();
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(name, |b| b.iter(|| on_workers(|| a.matmul(&wt).unwrap())));
    }
    g.finish();
}

fn attention_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    g.sample_size(10);
    let mut rng = Rng::new(0);
    for (b, h, n, d) in [(1, 8, 1024, 64), (2, 4, 256, 32)] {
        let q = Tensor::randn(&[b, h, n, d], 1.0, &mut rng).as_var();
        let k = Tensor::randn(&[b, n, d], 1.0, &mut rng).as_var();
        let v = Tensor::randn(&[b, n, d], 1.0, &mut rng).as_var();
        let scale = (d as f32).powf(-0.5);
        let flops = 4 * b * h * n * n * d / 2;
        g.throughput(Throughput::Elements(flops as u64));
        g.bench_function(format!("fwd_b{b}_h{h}_n{n}_d{d}"), |bch| {
            bch.iter(|| {
                on_workers(|| {
                    let _ng = palm_engine::no_grad();
                    attention(&q, &k, &v, scale).unwrap()
                })
            })
        });
        let r = Tensor::randn(&[b, h, n, d], 1.0, &mut rng);
        g.throughput(Throughput::Elements((flops as f64 * 3.5) as u64));
        g.bench_function(format!("fwd_bwd_b{b}_h{h}_n{n}_d{d}"), |bch| {
            bch.iter(|| {
                on_workers(|| {
                    attention(&q, &k, &v, scale)
                        .unwrap()
                        .mul(&r)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, matmul, attention_bench);
criterion_main!(benches);
