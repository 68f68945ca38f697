//! How fast the PTX VM runs the shipped kernels: warp instructions per second on the CPU.
//!
//! ```text
//! cargo bench -p palm-ptx-vm                   # all three
//! cargo bench -p palm-ptx-vm -- matmul         # one
//! ```
//!
//! Each case is one launch of a real kernel from `palm_kernels` at the shapes the engine plans
//! (kernels/README.md; engine/src/cuda/ops/{matmul,attention,elementwise}.rs):
//! - `matmul_nt_bf16_64`, M = N = K = 128 (grid 2×2, block 128, static smem);
//! - `attention_d64_fwd_bf16`, B = 1, H = 2, N = M = 128, d = 64 (grid 2×2×1, block 128,
//!   46080 B dynamic smem);
//! - `add_fwd_f32`, n = 65536 (grid 256, block 256; the engine's grid-stride plan at 16 SMs).
//!
//! Inputs are finite random values (a small LCG) written through [`Memory::write`], so every
//! launch passes initcheck. The throughput criterion reports is warp instructions per second:
//! `Throughput::Elements` is the launch's `Counters::warp_instructions`, counted once beforehand
//! (the count does not depend on the data).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palm_ptx_vm::{Arg, LaunchConfig, Memory, Module, Settings, launch, parse};
use std::hint::black_box;
use std::time::Duration;

/// A 64-bit LCG (Knuth's MMIX constants): the upper bits as a float in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// `n` random f32 values as little-endian bytes.
fn f32_bytes(n: usize, rng: &mut Lcg) -> Vec<u8> {
    (0..n).flat_map(|_| rng.next_f32().to_le_bytes()).collect()
}

/// `n` random bf16 values (f32 truncated to its upper half; finite) as little-endian bytes.
fn bf16_bytes(n: usize, rng: &mut Lcg) -> Vec<u8> {
    (0..n)
        .flat_map(|_| ((rng.next_f32().to_bits() >> 16) as u16).to_le_bytes())
        .collect()
}

/// An allocation holding `data`.
fn upload(mem: &Memory, data: &[u8]) -> u64 {
    let p = mem.alloc(data.len());
    mem.write(p, data).expect("host write");
    p
}

/// One launch to benchmark, with its memory.
struct Case {
    name: &'static str,
    module: Module,
    kernel: &'static str,
    cfg: LaunchConfig,
    args: Vec<Arg>,
    mem: Memory,
}

impl Case {
    fn run(&self, settings: &Settings) -> palm_ptx_vm::Counters {
        launch(
            &self.module,
            self.kernel,
            &self.cfg,
            &self.args,
            &self.mem,
            settings,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
}

fn module(fam: &palm_kernels::Family) -> Module {
    parse(&format!("{}.ptx", fam.name), fam.ptx).unwrap_or_else(|e| panic!("{e}"))
}

fn i32_arg(v: usize) -> Arg {
    Arg::B32(v as u32)
}

fn i64_arg(v: usize) -> Arg {
    Arg::B64(v as u64)
}

/// C (M, N) = A (M, K) · B (N, K)ᵀ, bf16, the 64×64 tile.
fn matmul_case() -> Case {
    let (m, n, k) = (128usize, 128usize, 128usize);
    let mem = Memory::new();
    let mut rng = Lcg(1);
    let a = upload(&mem, &bf16_bytes(m * k, &mut rng));
    let b = upload(&mem, &bf16_bytes(n * k, &mut rng));
    let c = mem.alloc(m * n * 2);
    Case {
        name: "matmul_nt_bf16_64 m=n=k=128",
        module: module(&palm_kernels::MATMUL),
        kernel: "matmul_nt_bf16_64",
        cfg: LaunchConfig {
            grid: [n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1],
            block: [128, 1, 1],
            shared_bytes: 0,
        },
        args: vec![
            Arg::B64(a),
            Arg::B64(b),
            Arg::B64(c),
            i32_arg(m),
            i32_arg(n),
            i32_arg(k),
            i32_arg(k), // lda
            i32_arg(k), // ldb
            i32_arg(n), // ldc
            i64_arg(0),
            i64_arg(0),
            i64_arg(m * n),
            Arg::B32(1.0f32.to_bits()),
            Arg::B32(0.0f32.to_bits()),
        ],
        mem,
    }
}

/// Causal MQA forward: q (B, H, N, d), k = v (B, M, d), d = 64.
fn attention_case() -> Case {
    let (bs, h, n, d) = (1usize, 2usize, 128usize, 64usize);
    let m = n;
    let mem = Memory::new();
    let mut rng = Lcg(2);
    let q = upload(&mem, &bf16_bytes(bs * h * n * d, &mut rng));
    let k = upload(&mem, &bf16_bytes(bs * m * d, &mut rng));
    let v = upload(&mem, &bf16_bytes(bs * m * d, &mut rng));
    let out = mem.alloc(bs * h * n * d * 2);
    let lse = mem.alloc(bs * h * n * 4);
    let mut args = vec![
        Arg::B64(q),
        Arg::B64(k),
        Arg::B64(v),
        Arg::B64(out),
        Arg::B64(lse),
    ];
    args.extend([bs, h, n, m].map(i32_arg));
    args.extend([h * n * d, n * d, d].map(i64_arg)); // q
    args.extend([m * d, d].map(i64_arg)); // k
    args.extend([m * d, d].map(i64_arg)); // v
    args.extend([h * n * d, n * d, d].map(i64_arg)); // out
    args.extend([Arg::B32((d as f32).powf(-0.5).to_bits()), Arg::B32(1)]);
    Case {
        name: "attention_d64_fwd_bf16 b1 h2 n128",
        module: module(&palm_kernels::ATTENTION),
        kernel: "attention_d64_fwd_bf16",
        cfg: LaunchConfig {
            grid: [n.div_ceil(64) as u32, h as u32, bs as u32],
            block: [128, 1, 1],
            shared_bytes: 46080,
        },
        args,
        mem,
    }
}

/// out = a + b over 65536 f32, the engine's grid-stride plan at 16 SMs.
fn add_case() -> Case {
    let n = 1usize << 16;
    let mem = Memory::new();
    let mut rng = Lcg(3);
    let a = upload(&mem, &f32_bytes(n, &mut rng));
    let b = upload(&mem, &f32_bytes(n, &mut rng));
    let out = mem.alloc(n * 4);
    Case {
        name: "add_fwd_f32 n=65536",
        module: module(&palm_kernels::ELEMENTWISE),
        kernel: "add_fwd_f32",
        cfg: LaunchConfig {
            grid: [n.div_ceil(256).min(16 * 16) as u32, 1, 1],
            block: [256, 1, 1],
            shared_bytes: 0,
        },
        args: vec![Arg::B64(a), Arg::B64(b), Arg::B64(out), i64_arg(n)],
        mem,
    }
}

fn vm_speed(c: &mut Criterion) {
    let settings = Settings::default();
    for case in [matmul_case(), attention_case(), add_case()] {
        let counters = case.run(&settings);
        eprintln!(
            "vm_speed: {}: {} warp instructions per launch ({} CTAs, {} mma, SIMT efficiency \
             {:.1}%); criterion's elem/s below = warp instructions/s",
            case.name,
            counters.warp_instructions,
            counters.ctas,
            counters.mma,
            100.0 * counters.simt_efficiency()
        );
        let mut g = c.benchmark_group("vm");
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements(counters.warp_instructions));
        g.bench_function(case.name, |b| b.iter(|| black_box(case.run(&settings))));
        g.finish();
    }
}

criterion_group!(benches, vm_speed);
criterion_main!(benches);
