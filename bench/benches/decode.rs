//! Sampling through the KV cache at the torch anchor's `generate` workload: for each row a
//! prompt of 64 random tokens, then 256 new tokens drawn at temperature 0.7. Throughput is in
//! new tokens. Compare with `python3 bench/torch_anchor.py generate --config tiny --batch 8`
//! on the same machine (BENCHMARKS.md).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palm_engine::Rng;
use palm_model::{PalmConfig, PalmParams, SampleSettings, generate};
use std::time::Duration;

const PROMPT: usize = 64;
const NEW: usize = 256;

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    for (name, batch) in [("tiny", 1), ("tiny", 8), ("enwik8", 1)] {
        let config = PalmConfig::preset(name).expect("a preset");
        let mut rng = Rng::new(0);
        let params = PalmParams::init(&config, &mut rng).expect("parameters");
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|_| {
                (0..PROMPT)
                    .map(|_| 1 + rng.below(config.num_tokens - 1) as u32)
                    .collect()
            })
            .collect();
        let settings = SampleSettings {
            temperature: 0.7,
            max_tokens: NEW,
            ..Default::default()
        };
        g.throughput(Throughput::Elements((batch * NEW) as u64));
        g.bench_function(format!("{name}_b{batch}"), |b| {
            b.iter(|| {
                palm_engine::cpu::on_workers(|| {
                    generate(&params, &prompts, &settings, None, &mut Rng::new(1))
                })
                .expect("generate")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
