//! A full training step (forward, loss, backward, clipping, AdamW) at the torch anchor's
//! `tiny` (2 × 64 tokens) and `enwik8` (4 × 1024 tokens) workloads. Throughput is in tokens.
//! Compare with `python3 bench/torch_anchor.py train --config tiny|enwik8` on the same
//! machine (BENCHMARKS.md).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palm_bench::{TrainStep, train_workload};
use std::time::Duration;

fn train(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_step");
    for name in ["tiny", "enwik8"] {
        let Some((config, batch, seq)) = train_workload(name) else {
            continue;
        };
        let mut step = TrainStep::new(&config, batch, seq);
        g.sample_size(10);
        if name == "enwik8" {
            g.warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(60));
        }
        g.throughput(Throughput::Elements((batch * seq) as u64));
        g.bench_function(name, |b| {
            b.iter(|| palm_engine::cpu::on_workers(|| step.step()))
        });
    }
    g.finish();
}

criterion_group!(benches, train);
criterion_main!(benches);
