//! The GPU benchmark: the torch anchor's workloads (`bench/torch_anchor.py`) on our
//! engine, one JSON line per result with the anchor's field names, and a ratio table.
//!
//! ```text
//! palm-gpu-bench all                 # every workload at the anchor's shapes
//! palm-gpu-bench matmul|attention|train|generate|adamw|ceilings
//! palm-gpu-bench all --smoke         # tiny shapes: checks the harness (e.g. PALM_CUDA_EMULATE=1)
//! palm-gpu-bench ppo --cpu [--config enwik8|small] [--smoke]   # PPO episodes/s on the CPU
//! palm-gpu-bench compare OURS.jsonl TORCH.jsonl   # markdown table: ours, torch, ratio
//! palm-gpu-bench vm-profile [--preset tiny|enwik8|small] [--batch B] [--seq-len N] [--json]
//! ```
//!
//! `vm-profile` runs one training step of a preset (the `train` workload's step: forward, loss,
//! backward, clip, AdamW) on the PTX VM after one warm-up step, and prints the VM's counters per
//! kernel: launches, warp instructions (and share), SIMT efficiency, global load/store sectors per
//! request, shared bank conflicts, tensor-core share, barriers; then totals and what to look at.
//! `--json`: one JSON line per kernel instead. It always runs on the VM: without
//! `PALM_CUDA_EMULATE=1` it re-runs itself with it set. Defaults: tiny batch 2 × 64 tokens (about
//! 5 s on one core, release build), enwik8 1 × 128 (about 100 s), small 1 × 64 (about 4.5 min and
//! 5 GB: the parameters, not the tokens, set the cost there). `PALM_VM_THREADS` / `PALM_VM_SMS`
//! apply as usual (engine/src/cuda/vm.rs).
//!
//! Timing: warm-up, then the median of the iterations, each timed with CUDA events on the
//! device's stream (wall clock after a synchronize on the PTX VM, which has no events).
//! Inputs are random normals, never zeros.

use palm_bench::{TrainStep, train_workload};
use palm_engine::cuda::{CudaDevice, KernelStats, VmCounters, emulation_requested};
use palm_engine::{AdamW, DType, Device, Result, Rng, Tensor, attention, no_grad};
use palm_model::{PalmParams, SampleSettings, generate};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

const GPU: Device = Device::Cuda(0);

struct Bench {
    dev: Arc<CudaDevice>,
    smoke: bool,
    warmup: usize,
    iters: usize,
}

impl Bench {
    /// Median seconds per call of `f`.
    fn time(&self, warmup: usize, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        for _ in 0..warmup {
            f()?;
        }
        self.dev.synchronize()?;
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters.max(1) {
            if self.dev.is_emulated() {
                let t = Instant::now();
                f()?;
                self.dev.synchronize()?;
                times.push(t.elapsed().as_secs_f64());
            } else {
                let t = self.dev.timer()?;
                f()?;
                times.push(t.elapsed_ms(&self.dev)? as f64 / 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    fn emit(&self, mut v: Value) {
        v["impl"] = "palm".into();
        v["device"] = self.dev.info().name.clone().into();
        if self.smoke {
            v["smoke"] = true.into();
        }
        println!("{v}");
    }
}

fn randn(dims: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
    Tensor::randn(dims, 1.0, &mut Rng::new(seed))
        .to_device(GPU)?
        .to_dtype(dtype)
}

fn ceilings(b: &Bench) -> Result<()> {
    let bytes = if b.smoke { 1 << 20 } else { 1 << 30 };
    let src = b.dev.alloc_zeroed(bytes)?;
    let s = b.time(b.warmup, b.iters, || {
        b.dev.copy_range(&src, 0, bytes).map(drop)
    })?;
    b.emit(json!({"bench": "ceilings", "what": "d2d_copy", "gbps": 2.0 * bytes as f64 / s / 1e9}));
    let n = if b.smoke { 256 } else { 8192 };
    let (x, y) = (
        randn(&[n, n], 1, DType::BF16)?,
        randn(&[n, n], 2, DType::BF16)?,
    );
    let _g = no_grad();
    let s = b.time(b.warmup, b.iters, || x.matmul(&y).map(drop))?;
    let tflops = 2.0 * (n as f64).powi(3) / s / 1e12;
    b.emit(json!({"bench": "ceilings", "what": format!("bf16_matmul_{n}"), "tflops": tflops}));
    Ok(())
}

fn matmul(b: &Bench) -> Result<()> {
    let (tok, d, f, fused, v) = if b.smoke {
        (128, 64, 256, 640, 256)
    } else {
        // The `small` config: 16 × 1024 tokens, dim 768.
        (16 * 1024, 768, 3072, 12 * 64 + 2 * 64 + 2 * 3072, 50304)
    };
    let mut shapes = vec![
        ("fused_proj_small", tok, fused, d),
        ("ff_out_small", tok, d, f),
        ("logits_small", tok, v, d),
    ];
    if !b.smoke {
        shapes.extend([
            ("square_4096", 4096, 4096, 4096),
            ("square_8192", 8192, 8192, 8192),
        ]);
    }
    let _g = no_grad();
    for (name, m, n, k) in shapes {
        let (a, w) = (
            randn(&[m, k], 3, DType::BF16)?,
            randn(&[n, k], 4, DType::BF16)?,
        );
        let wt = w.t()?;
        let s = b.time(b.warmup, b.iters, || a.matmul(&wt).map(drop))?;
        let tflops = 2.0 * (m * n * k) as f64 / s / 1e12;
        b.emit(
            json!({"bench": "matmul", "shape": name, "m": m, "n": n, "k": k,
            "ms": s * 1e3, "tflops": tflops}),
        );
    }
    Ok(())
}

fn attention_bench(b: &Bench) -> Result<()> {
    let shapes: &[(usize, usize, usize, usize)] = if b.smoke {
        &[(1, 2, 128, 64), (1, 2, 64, 128)]
    } else {
        &[(16, 12, 1024, 64), (8, 16, 2048, 128), (4, 16, 4096, 128)]
    };
    for &(bs, h, n, d) in shapes {
        let q = randn(&[bs, h, n, d], 5, DType::BF16)?.as_var();
        let k = randn(&[bs, n, d], 6, DType::BF16)?.as_var();
        let v = randn(&[bs, n, d], 7, DType::BF16)?.as_var();
        let g = randn(&[bs, h, n, d], 8, DType::BF16)?;
        let scale = (d as f32).powf(-0.5);
        let s_f = {
            let _g = no_grad();
            b.time(b.warmup, b.iters, || attention(&q, &k, &v, scale).map(drop))?
        };
        // fwd + bwd with upstream gradient g (as the anchor's autograd.grad(out, (q, k, v), g)),
        // through Σ out·g: one extra elementwise product and sum.
        let s_fb = b.time(b.warmup, b.iters, || {
            attention(&q, &k, &v, scale)?
                .mul(&g)?
                .sum_all()?
                .backward()
                .map(drop)
        })?;
        let flops_f = 4.0 * (bs * h * n * n * d) as f64 / 2.0;
        b.emit(
            json!({"bench": "attention", "b": bs, "heads": h, "seq": n, "dim_head": d,
            "fwd_ms": s_f * 1e3, "fwd_tflops": flops_f / s_f / 1e12,
            "fwd_bwd_ms": s_fb * 1e3, "fwd_bwd_tflops": 3.5 * flops_f / s_fb / 1e12}),
        );
    }
    Ok(())
}

fn train(b: &Bench) -> Result<()> {
    let names: &[&str] = if b.smoke {
        &["tiny"]
    } else {
        &["enwik8", "small", "1b"]
    };
    for &name in names {
        let Some((config, batch, seq)) = train_workload(name) else {
            continue;
        };
        b.dev.reset_peak();
        let mut step = TrainStep::on(&config, batch, seq, GPU)?;
        let s = b.time(b.warmup, b.iters, || step.try_step().map(drop))?;
        let tokens = batch * seq;
        let peak = b.dev.pool_stats().peak_in_use as f64 / (1u64 << 30) as f64;
        b.emit(json!({"bench": "train", "config": name, "compiled": false,
            "params": config.num_params(), "tokens_per_step": tokens, "step_ms": s * 1e3,
            "tokens_per_s": tokens as f64 / s,
            "model_tflops": config.train_flops_per_token(seq) * tokens as f64 / s / 1e12,
            "peak_mem_gib": peak}));
    }
    Ok(())
}

fn generate_bench(b: &Bench) -> Result<()> {
    let (name, prompt_len, new_tokens) = if b.smoke {
        ("tiny", 8, 8)
    } else {
        ("small", 64, 256)
    };
    let Some((config, _, _)) = train_workload(name) else {
        return Ok(());
    };
    let params = PalmParams::init(&config, &mut Rng::new(0))
        .and_then(|p| p.to_device(GPU))
        .map_err(|e| palm_engine::Error::Invalid(e.to_string()))?;
    for batch in [1usize, if b.smoke { 2 } else { 64 }] {
        let mut rng = Rng::new(1);
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|_| (0..prompt_len).map(|_| 1 + rng.below(250) as u32).collect())
            .collect();
        let settings = SampleSettings {
            temperature: 0.7,
            max_tokens: new_tokens,
            ..Default::default()
        };
        let s = b.time(1, 3, || {
            generate(&params, &prompts, &settings, None, &mut Rng::new(2))
                .map(drop)
                .map_err(|e| palm_engine::Error::Invalid(e.to_string()))
        })?;
        b.emit(
            json!({"bench": "generate", "config": name, "batch": batch, "prompt": prompt_len,
            "new_tokens": new_tokens, "s": s, "tokens_per_s": (batch * new_tokens) as f64 / s,
            "ms_per_token_step": s / new_tokens as f64 * 1e3}),
        );
    }
    Ok(())
}

fn adamw(b: &Bench) -> Result<()> {
    let n = if b.smoke { 100_000 } else { 124_000_000 };
    let mut params = vec![randn(&[n], 9, DType::F32)?.as_var()];
    let loss = params[0].mul(&randn(&[n], 10, DType::F32)?)?.sum_all()?;
    let grads = loss.backward()?;
    let mut opt = AdamW::new(Default::default(), &params)?;
    let s = b.time(b.warmup, b.iters, || {
        // The step replaces the parameter; keep the gradient keyed by the original.
        let mut ps = params.clone();
        opt.step(&mut ps, &grads, 1e-4)
    })?;
    params.clear();
    b.emit(json!({"bench": "adamw", "params": n, "ms": s * 1e3,
        "gbps": 7.0 * 4.0 * n as f64 / s / 1e9}));
    Ok(())
}

/// The original implementation's PPO throughput on an H200 (issue 5), for reference.
fn original_ppo(name: &str) -> Option<f64> {
    match name {
        "enwik8" => Some(1.43),
        "small" => Some(0.74),
        _ => None,
    }
}

/// PPO end to end (rollout through the KV cache + rule reward + learning: 4 epochs of clipped
/// policy/value losses on the actor and critic LoRA), prompt 64 + response 64 tokens: episodes
/// per second over timed updates after one warm-up update, on `device`.
fn ppo_on(device: Device, smoke: bool, batch: usize, only: Option<&str>) -> Result<Vec<Value>> {
    use clap::Parser;
    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: palm_rlhf::commands::ppo::PpoArgs,
    }
    let bad = |e: String| palm_engine::Error::Invalid(e);
    let (names, len, updates): (&[&str], usize, usize) = if smoke {
        (&["tiny"], 8, 2)
    } else {
        (&["enwik8", "small"], 64, 3)
    };
    let mut out = Vec::new();
    for &name in names.iter().filter(|n| only.is_none_or(|o| o == **n)) {
        let Some((config, _, _)) = train_workload(name) else {
            continue;
        };
        let dir =
            std::env::temp_dir().join(format!("palm-ppo-bench-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| bad(e.to_string()))?;
        let policy = dir.join("policy.safetensors");
        let params = PalmParams::init(&config, &mut Rng::new(0)).map_err(|e| bad(e.to_string()))?;
        palm_model::checkpoint::save_model(&policy, &params, &[])
            .map_err(|e| bad(e.to_string()))?;
        let mut rng = Rng::new(1);
        let prompts: String = (0..64)
            .map(|_| {
                let p: String = (0..len)
                    .map(|_| (b'a' + rng.below(26) as u8) as char)
                    .collect();
                format!("{}\n", json!({"prompt": p}))
            })
            .collect();
        let prompts_path = dir.join("prompts.jsonl");
        std::fs::write(&prompts_path, prompts).map_err(|e| bad(e.to_string()))?;
        let (b_s, len_s) = (batch.to_string(), len.to_string());
        let rule = format!("length:{len}");
        let cmd = Cmd::try_parse_from([
            "ppo",
            "--policy",
            &policy.to_string_lossy(),
            "--prompts",
            &prompts_path.to_string_lossy(),
            "--rule",
            &rule,
            "--eos",
            "none",
            "--max-new",
            &len_s,
            "--max-prompt",
            &len_s,
            "--batch",
            &b_s,
            "--updates",
            "1000",
            "--out",
            &dir.join("run").to_string_lossy(),
        ])
        .map_err(|e| bad(e.to_string()))?;
        let mut run =
            palm_rlhf::commands::ppo::start(&cmd.args, device).map_err(|e| bad(e.to_string()))?;
        run.update().map_err(|e| bad(e.to_string()))?;
        let t = Instant::now();
        for _ in 0..updates {
            run.update().map_err(|e| bad(e.to_string()))?;
        }
        let s = t.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&dir);
        let mut v = json!({"bench": "ppo", "config": name, "batch": batch, "prompt": len,
            "response": len, "updates": updates, "s_per_update": s / updates as f64,
            "episodes_per_s": (batch * updates) as f64 / s});
        if let Some(o) = original_ppo(name) {
            v["original_episodes_per_s_h200"] = o.into();
        }
        out.push(v);
    }
    Ok(out)
}

fn ppo(b: &Bench) -> Result<()> {
    for v in ppo_on(GPU, b.smoke, if b.smoke { 4 } else { 64 }, None)? {
        b.emit(v);
    }
    Ok(())
}

// ---- vm-profile ---------------------------------------------------------------------------

/// `palm-gpu-bench vm-profile`: one training step on the PTX VM, counters per kernel.
#[derive(clap::Parser, Debug)]
#[command(
    name = "palm-gpu-bench vm-profile",
    about = "One training step on the PTX VM (PALM_CUDA_EMULATE=1), the VM's counters per kernel"
)]
struct VmProfileArgs {
    /// Model preset.
    #[arg(long, default_value = "tiny", value_parser = ["tiny", "enwik8", "small"])]
    preset: String,
    /// Sequences per step (default: 2 for tiny, 1 otherwise).
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per sequence (default: 64 for tiny and small, 128 for enwik8).
    #[arg(long)]
    seq_len: Option<usize>,
    /// One JSON line per kernel instead of the table.
    #[arg(long)]
    json: bool,
}

/// (batch, seq) sized for the VM: a step of tiny takes seconds on two cores.
fn vm_profile_defaults(preset: &str) -> (usize, usize) {
    match preset {
        "tiny" => (2, 64),
        "enwik8" => (1, 128),
        _ => (1, 64),
    }
}

/// `num / den`, or `None` when there is nothing to divide.
fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Derived figures of one kernel's (or the total's) counters.
struct Derived {
    share: f64,
    simt: f64,
    ld_sectors: Option<f64>,
    st_sectors: Option<f64>,
    /// Bytes requested / bytes of the sectors touched (1 = perfectly coalesced).
    ld_eff: Option<f64>,
    st_eff: Option<f64>,
    conflicts: Option<f64>,
    tc: f64,
}

fn derive(c: &VmCounters, total_instructions: u64) -> Derived {
    Derived {
        share: ratio(c.warp_instructions, total_instructions).unwrap_or(0.0),
        simt: c.simt_efficiency(),
        ld_sectors: ratio(c.global_load_sectors, c.global_load_requests),
        st_sectors: ratio(c.global_store_sectors, c.global_store_requests),
        ld_eff: ratio(c.global_load_bytes, 32 * c.global_load_sectors),
        st_eff: ratio(c.global_store_bytes, 32 * c.global_store_sectors),
        conflicts: ratio(c.shared_bank_conflicts, c.shared_wavefronts),
        tc: ratio(c.mma, c.warp_instructions).unwrap_or(0.0),
    }
}

/// Kernels sorted by warp instructions (most first, then by name).
fn by_instructions(stats: &BTreeMap<String, KernelStats>) -> Vec<(&String, &KernelStats)> {
    let mut rows: Vec<_> = stats.iter().collect();
    rows.sort_by(|a, b| {
        b.1.counters
            .warp_instructions
            .cmp(&a.1.counters.warp_instructions)
            .then_with(|| a.0.cmp(b.0))
    });
    rows
}

fn total_of(stats: &BTreeMap<String, KernelStats>) -> (u64, VmCounters) {
    let mut total = VmCounters::default();
    let mut launches = 0;
    for s in stats.values() {
        launches += s.launches;
        total.add(&s.counters);
    }
    (launches, total)
}

/// One JSON line per kernel: the derived figures, then every counter.
fn vm_profile_json(stats: &BTreeMap<String, KernelStats>, context: &Value) -> Vec<String> {
    let (_, total) = total_of(stats);
    by_instructions(stats)
        .into_iter()
        .map(|(name, s)| {
            let d = derive(&s.counters, total.warp_instructions);
            let mut v = context.clone();
            v["kernel"] = name.as_str().into();
            v["launches"] = s.launches.into();
            v["instruction_share"] = d.share.into();
            v["load_sectors_per_request"] = d.ld_sectors.into();
            v["store_sectors_per_request"] = d.st_sectors.into();
            v["load_efficiency"] = d.ld_eff.into();
            v["store_efficiency"] = d.st_eff.into();
            v["bank_conflict_share"] = d.conflicts.into();
            v["tensor_core_share"] = d.tc.into();
            let fields: Value = serde_json::from_str(&format!("{{{}}}", s.counters.json_fields()))
                .unwrap_or(Value::Null);
            if let Value::Object(m) = fields {
                for (k, x) in m {
                    v[k] = x;
                }
            }
            v.to_string()
        })
        .collect()
}

/// The table, totals, footnotes and the "what to look at" paragraph.
fn vm_profile_table(stats: &BTreeMap<String, KernelStats>) -> String {
    use std::fmt::Write;
    let (launches, total) = total_of(stats);
    let rows = by_instructions(stats);
    let w = rows
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0)
        .max("kernel".len());
    let opt = |x: Option<f64>, prec: usize| x.map_or("-".to_string(), |x| format!("{x:.prec$}"));
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x));
    let mut out = String::new();
    let header = format!(
        "{:<w$} {:>8} {:>12} {:>6} {:>6} {:>9} {:>6} {:>9} {:>6} {:>9} {:>8} {:>8}",
        "kernel",
        "launches",
        "warp instr",
        "%",
        "SIMT",
        "ld sec/rq",
        "ld eff",
        "st sec/rq",
        "st eff",
        "bank cnf",
        "TC share",
        "barriers"
    );
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{}", "-".repeat(header.len()));
    let line = |out: &mut String, name: &str, launches: u64, c: &VmCounters| {
        let d = derive(c, total.warp_instructions);
        let _ = writeln!(
            out,
            "{:<w$} {:>8} {:>12} {:>6} {:>6} {:>9} {:>6} {:>9} {:>6} {:>9} {:>8} {:>8}",
            name,
            launches,
            c.warp_instructions,
            format!("{:.1}", 100.0 * d.share),
            pct(Some(d.simt)),
            opt(d.ld_sectors, 2),
            pct(d.ld_eff),
            opt(d.st_sectors, 2),
            pct(d.st_eff),
            pct(d.conflicts),
            pct(Some(d.tc)),
            c.barriers
        );
    };
    for (name, s) in &rows {
        line(&mut out, name, s.launches, &s.counters);
    }
    let _ = writeln!(out, "{}", "-".repeat(header.len()));
    line(&mut out, "total", launches, &total);
    let _ = writeln!(
        out,
        "\n{} kernels, {} launches, {} warp instructions ({} lane instructions), {} CTAs, {} warps.\n\
         SIMT: lane instructions whose guard held / (32 × warp instructions issued).\n\
         ld/st sec/rq: 32-byte sectors per global warp request (a cp.async counts as a global load and\n\
         a shared store; atomics are not in either). Ideal for a full, coalesced warp = bytes per lane:\n\
         2 for bf16, 4 for f32 (or one u32), 8 for 8-byte vectors, 16 for 16-byte vectors (32 lanes ×\n\
         16 B = 16 sectors); a warp whose lanes each hit their own sector costs 32.\n\
         ld/st eff: bytes the lanes asked for / bytes of the sectors touched (100% = coalesced; above\n\
         100%: lanes read the same bytes, a broadcast).\n\
         bank cnf: extra shared wavefronts caused by bank conflicts / all shared wavefronts (incl.\n\
         ldmatrix and cp.async writes); 0% = conflict-free.\n\
         TC share: mma.sync (m16n8k16, 4096 flops each) / warp instructions. barriers: bar.sync per warp.",
        rows.len(),
        launches,
        total.warp_instructions,
        total.lane_instructions,
        total.ctas,
        total.warps
    );
    let _ = writeln!(out, "\nWhat to look at: {}", what_to_look_at(stats));
    out
}

/// A paragraph computed from the counters: where the instructions go, and the kernels with the
/// worst divergence, coalescing and bank conflicts.
fn what_to_look_at(stats: &BTreeMap<String, KernelStats>) -> String {
    let (_, total) = total_of(stats);
    if total.warp_instructions == 0 {
        return "nothing ran.".into();
    }
    let rows = by_instructions(stats);
    let share = |c: &VmCounters| c.warp_instructions as f64 / total.warp_instructions as f64;
    let mut s = Vec::new();
    // Where the instructions go.
    let top: Vec<String> = rows
        .iter()
        .take(3)
        .map(|(n, k)| format!("{n} ({:.1}%)", 100.0 * share(&k.counters)))
        .collect();
    let top_share: f64 = rows.iter().take(3).map(|(_, k)| share(&k.counters)).sum();
    s.push(format!(
        "the top {} kernels issue {:.0}% of the warp instructions: {}.",
        top.len(),
        100.0 * top_share,
        top.join(", ")
    ));
    // Tensor cores.
    let mma_kernels: Vec<_> = rows.iter().filter(|(_, k)| k.counters.mma > 0).collect();
    let mma_share: f64 = mma_kernels.iter().map(|(_, k)| share(&k.counters)).sum();
    s.push(format!(
        "Tensor cores: {:.1}% of all warp instructions are mma.sync; the {} kernels that use them \
         issue {:.0}% of the instructions, the other {} kernels {:.0}%.",
        100.0 * ratio(total.mma, total.warp_instructions).unwrap_or(0.0),
        mma_kernels.len(),
        100.0 * mma_share,
        rows.len() - mma_kernels.len(),
        100.0 * (1.0 - mma_share)
    ));
    // Only kernels that matter: ≥ 1% of the instructions.
    let heavy: Vec<_> = rows
        .iter()
        .filter(|(_, k)| share(&k.counters) >= 0.01)
        .collect();
    if let Some((n, k)) = heavy.iter().min_by(|a, b| {
        a.1.counters
            .simt_efficiency()
            .total_cmp(&b.1.counters.simt_efficiency())
    }) && k.counters.simt_efficiency() < 0.9
    {
        s.push(format!(
            "Lowest SIMT efficiency among the kernels with ≥ 1% of the instructions: {n} ({:.0}%: \
             divergence, predicated-off lanes or partial warps).",
            100.0 * k.counters.simt_efficiency()
        ));
    }
    // Coalescing: the highest sectors per request among kernels with a real share of requests.
    let worst = |req: fn(&VmCounters) -> u64, sec: fn(&VmCounters) -> u64| {
        let all: u64 = rows.iter().map(|(_, k)| req(&k.counters)).sum();
        let mut v: Vec<(&String, f64, f64)> = rows
            .iter()
            .filter(|(_, k)| all > 0 && req(&k.counters) as f64 >= 0.01 * all as f64)
            .filter_map(|(n, k)| {
                Some((
                    *n,
                    ratio(sec(&k.counters), req(&k.counters))?,
                    req(&k.counters) as f64 / all as f64,
                ))
            })
            .collect();
        // Highest first (to 0.1 sector), then the kernel with more of the requests.
        v.sort_by(|a, b| {
            let r = |x: f64| (x * 10.0).round() as i64;
            r(b.1).cmp(&r(a.1)).then(b.2.total_cmp(&a.2))
        });
        v.into_iter()
            .take(2)
            .map(|(n, r, sh)| {
                format!(
                    "{n} ({r:.1} sectors/request, {:.0}% of the requests)",
                    100.0 * sh
                )
            })
            .collect::<Vec<_>>()
    };
    let ld = worst(|c| c.global_load_requests, |c| c.global_load_sectors);
    if !ld.is_empty() {
        s.push(format!(
            "Most sectors per global load: {} — above the access width in bytes means uncoalesced.",
            ld.join(", ")
        ));
    }
    let st = worst(|c| c.global_store_requests, |c| c.global_store_sectors);
    if !st.is_empty() {
        s.push(format!("Most sectors per global store: {}.", st.join(", ")));
    }
    // Bank conflicts: most extra wavefronts in absolute terms.
    let mut conf: Vec<_> = rows
        .iter()
        .filter(|(_, k)| k.counters.shared_bank_conflicts > 0)
        .collect();
    conf.sort_by(|a, b| {
        b.1.counters
            .shared_bank_conflicts
            .cmp(&a.1.counters.shared_bank_conflicts)
    });
    if conf.is_empty() {
        s.push("No shared-memory bank conflicts.".into());
    } else {
        let named: Vec<String> = conf
            .iter()
            .take(3)
            .map(|(n, k)| {
                format!(
                    "{n} ({} extra wavefronts, {:.0}% of its wavefronts, {:.0}% of all conflicts)",
                    k.counters.shared_bank_conflicts,
                    100.0
                        * ratio(
                            k.counters.shared_bank_conflicts,
                            k.counters.shared_wavefronts
                        )
                        .unwrap_or(0.0),
                    100.0
                        * ratio(
                            k.counters.shared_bank_conflicts,
                            total.shared_bank_conflicts
                        )
                        .unwrap_or(0.0)
                )
            })
            .collect();
        s.push(format!("Most bank conflicts: {}.", named.join(", ")));
    }
    // Launch overhead: many launches of little work.
    let (launches, _) = total_of(stats);
    let small: Vec<_> = rows
        .iter()
        .filter(|(_, k)| k.launches >= 8 && k.counters.warps / k.launches.max(1) < 64)
        .collect();
    if !small.is_empty() {
        let l: u64 = small.iter().map(|(_, k)| k.launches).sum();
        s.push(format!(
            "{} of the {launches} launches are of kernels averaging under 64 warps per launch \
             (fusion candidates on a GPU, where each launch costs microseconds).",
            l
        ));
    }
    s.join(" ")
}

/// The step, or the re-run with `PALM_CUDA_EMULATE=1` set.
fn vm_profile_main(args: &[String]) -> i32 {
    use clap::Parser;
    let cli = match VmProfileArgs::try_parse_from(
        std::iter::once("palm-gpu-bench vm-profile".to_string()).chain(args.iter().cloned()),
    ) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    if !emulation_requested() {
        // The device is chosen from the environment when it opens; re-run with the VM asked for
        // (setting the variable in this process would need `unsafe`).
        let exe = match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: vm-profile needs PALM_CUDA_EMULATE=1 (re-running failed: {e})");
                return 1;
            }
        };
        return match std::process::Command::new(exe)
            .arg("vm-profile")
            .args(args)
            .env("PALM_CUDA_EMULATE", "1")
            .status()
        {
            Ok(st) => st.code().unwrap_or(1),
            Err(e) => {
                eprintln!("error: vm-profile needs PALM_CUDA_EMULATE=1 (re-running failed: {e})");
                1
            }
        };
    }
    match vm_profile(&cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn vm_profile(cli: &VmProfileArgs) -> Result<()> {
    let bad = palm_engine::Error::Invalid;
    let (config, _, _) =
        train_workload(&cli.preset).ok_or_else(|| bad(format!("unknown preset {}", cli.preset)))?;
    let (db, ds) = vm_profile_defaults(&cli.preset);
    let (batch, seq) = (cli.batch.unwrap_or(db), cli.seq_len.unwrap_or(ds));
    if batch == 0 || seq == 0 {
        return Err(bad("--batch and --seq-len must be positive".into()));
    }
    let dev = CudaDevice::get(0)?;
    if !dev.is_emulated() {
        return Err(bad("vm-profile: the device is not the PTX VM".into()));
    }
    let t = Instant::now();
    let mut step = TrainStep::on(&config, batch, seq, GPU)?;
    let warm_loss = step.try_step()?;
    dev.synchronize()?;
    let warm_s = t.elapsed().as_secs_f64();
    dev.vm_take_stats();
    let t = Instant::now();
    let loss = step.try_step()?;
    dev.synchronize()?;
    let step_s = t.elapsed().as_secs_f64();
    let stats = dev
        .vm_take_stats()
        .ok_or_else(|| bad("vm-profile: no VM statistics".into()))?;
    if cli.json {
        let context = json!({"bench": "vm_profile", "preset": cli.preset, "batch": batch,
            "seq": seq, "device": dev.info().name.clone()});
        for l in vm_profile_json(&stats, &context) {
            println!("{l}");
        }
        return Ok(());
    }
    let (_, total) = total_of(&stats);
    println!(
        "vm-profile: {} (dim {}, depth {}, heads {}, dim_head {}, vocab {}, {} params), batch {batch} × \
         {seq} tokens: one training step (forward, loss, backward, clip 0.5, AdamW) on {}",
        cli.preset,
        config.dim,
        config.depth,
        config.heads,
        config.dim_head,
        config.num_tokens,
        config.num_params(),
        dev.info().name
    );
    println!(
        "setup + warm-up step {warm_s:.1} s (loss {warm_loss:.4}); profiled step {step_s:.1} s \
         (loss {loss:.4}), {:.2} M warp instructions/s\n",
        total.warp_instructions as f64 / step_s / 1e6
    );
    print!("{}", vm_profile_table(&stats));
    Ok(())
}

// ---- compare ------------------------------------------------------------------------------

fn read_lines(path: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// (row label, higher-is-better metric) for each comparable result.
fn key(v: &Value) -> Option<(String, &'static str)> {
    let s = |k: &str| v[k].to_string().trim_matches('"').to_string();
    match v["bench"].as_str()? {
        "matmul" => Some((format!("matmul {}", s("shape")), "tflops")),
        "attention" => Some((
            format!(
                "attention b{} h{} n{} d{}",
                s("b"),
                s("heads"),
                s("seq"),
                s("dim_head")
            ),
            "fwd_bwd_tflops",
        )),
        "train" if v["compiled"] == false => {
            Some((format!("train {}", s("config")), "tokens_per_s"))
        }
        "generate" if v.get("static_cache").is_none() => Some((
            format!("generate {} b{}", s("config"), s("batch")),
            "tokens_per_s",
        )),
        "adamw" => Some((format!("adamw {}", s("params")), "gbps")),
        "ppo" => Some((
            format!("ppo {} b{}", s("config"), s("batch")),
            "episodes_per_s",
        )),
        "ceilings" => Some((
            format!("ceiling {}", s("what")),
            if v.get("gbps").is_some() {
                "gbps"
            } else {
                "tflops"
            },
        )),
        _ => None,
    }
}

fn compare(ours: &str, torch: &str) {
    let theirs: Vec<(String, &'static str, f64)> = read_lines(torch)
        .iter()
        .filter_map(|v| key(v).and_then(|(k, m)| Some((k, m, v[m].as_f64()?))))
        .collect();
    println!("| workload | metric | ours | torch | ours/torch |");
    println!("|---|---|---:|---:|---:|");
    for v in read_lines(ours) {
        let Some((k, m)) = key(&v) else { continue };
        let Some(o) = v[m].as_f64() else { continue };
        match theirs.iter().find(|(tk, tm, _)| *tk == k && *tm == m) {
            Some((_, _, t)) => println!("| {k} | {m} | {o:.3} | {t:.3} | {:.2}× |", o / t),
            None => println!("| {k} | {m} | {o:.3} | – | – |"),
        }
        if k.starts_with("attention") {
            // The forward alone too.
            let fwd = |x: &Value| x["fwd_tflops"].as_f64();
            let t = read_lines(torch)
                .into_iter()
                .find(|x| key(x).is_some_and(|(tk, _)| tk == k))
                .and_then(|x| fwd(&x));
            if let (Some(o), Some(t)) = (fwd(&v), t) {
                println!("| {k} | fwd_tflops | {o:.3} | {t:.3} | {:.2}× |", o / t);
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map(String::as_str).unwrap_or("");
    if what == "vm-profile" {
        std::process::exit(vm_profile_main(&args[1..]));
    }
    if what == "compare" {
        match (args.get(1), args.get(2)) {
            (Some(a), Some(b)) => compare(a, b),
            _ => eprintln!("usage: palm-gpu-bench compare OURS.jsonl TORCH.jsonl"),
        }
        return;
    }
    let known = [
        "all",
        "ceilings",
        "matmul",
        "attention",
        "train",
        "generate",
        "adamw",
        "ppo",
    ];
    if !known.contains(&what) {
        eprintln!(
            "usage: palm-gpu-bench {} [--smoke] | ppo --cpu | compare OURS TORCH | vm-profile [--preset P] [--batch B] [--seq-len N] [--json]",
            known.join("|")
        );
        std::process::exit(2);
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    if args.iter().any(|a| a == "--cpu") {
        // The CPU backend: PPO only (the other workloads have criterion benches).
        let only = args
            .iter()
            .position(|a| a == "--config")
            .and_then(|i| args.get(i + 1))
            .map(String::as_str);
        match ppo_on(Device::Cpu, smoke, 8, only) {
            Ok(lines) => {
                for mut v in lines {
                    v["impl"] = "palm".into();
                    v["device"] = "cpu".into();
                    if smoke {
                        v["smoke"] = true.into();
                    }
                    println!("{v}");
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let dev = match CudaDevice::get(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let b = Bench {
        dev,
        smoke,
        warmup: if smoke { 1 } else { 3 },
        iters: if smoke { 2 } else { 10 },
    };
    let run = |name: &str, f: fn(&Bench) -> Result<()>| {
        if (what == "all" || what == name)
            && let Err(e) = f(&b)
        {
            eprintln!("error in {name}: {e}");
            println!(
                "{}",
                json!({"bench": name, "impl": "palm", "error": e.to_string()})
            );
        }
    };
    run("ceilings", ceilings);
    run("matmul", matmul);
    run("attention", attention_bench);
    run("train", train);
    run("generate", generate_bench);
    run("adamw", adamw);
    run("ppo", ppo);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> BTreeMap<String, KernelStats> {
        let mut m = BTreeMap::new();
        let mut mm = VmCounters {
            warp_instructions: 900,
            lane_instructions: 900 * 32,
            global_load_requests: 10,
            global_load_sectors: 160,
            global_store_requests: 4,
            global_store_sectors: 32,
            shared_wavefronts: 100,
            shared_bank_conflicts: 25,
            mma: 90,
            barriers: 8,
            ctas: 4,
            warps: 16,
            ..Default::default()
        };
        mm.by_family[0] = 900;
        m.insert(
            "matmul_nt_bf16_64".to_string(),
            KernelStats {
                launches: 2,
                counters: mm,
            },
        );
        m.insert(
            "add_fwd_f32".to_string(),
            KernelStats {
                launches: 1,
                counters: VmCounters {
                    warp_instructions: 100,
                    lane_instructions: 100 * 16,
                    global_load_requests: 20,
                    global_load_sectors: 640,
                    ctas: 1,
                    warps: 2,
                    ..Default::default()
                },
            },
        );
        m
    }

    #[test]
    fn vm_profile_table_sorts_and_derives() {
        let t = vm_profile_table(&stats());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("kernel"));
        // Most instructions first.
        assert!(lines[2].starts_with("matmul_nt_bf16_64"), "{t}");
        assert!(lines[3].starts_with("add_fwd_f32"), "{t}");
        // 160/10 sectors, 25% conflicts, 10% mma, 90% of the instructions.
        for want in ["16.00", "25.0%", "10.0%", "90.0", "100.0%"] {
            assert!(lines[2].contains(want), "{want} in {}", lines[2]);
        }
        // SIMT 50%, 32 sectors per load, no stores.
        assert!(
            lines[3].contains("50.0%") && lines[3].contains("32.00"),
            "{t}"
        );
        assert!(
            lines[5].starts_with("total") && lines[5].contains("1000"),
            "{t}"
        );
        assert!(
            t.contains("What to look at: the top 2 kernels issue 100%"),
            "{t}"
        );
        assert!(
            t.contains("Most bank conflicts: matmul_nt_bf16_64 (25 extra"),
            "{t}"
        );
        assert!(
            t.contains("Most sectors per global load: add_fwd_f32 (32.0"),
            "{t}"
        );
    }

    #[test]
    fn vm_profile_json_lines() {
        let lines = vm_profile_json(&stats(), &json!({"bench": "vm_profile"}));
        assert_eq!(lines.len(), 2);
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["kernel"], "matmul_nt_bf16_64");
        assert_eq!(v["launches"], 2);
        assert_eq!(v["instructions"], 900);
        assert_eq!(v["load_sectors_per_request"], 16.0);
        assert_eq!(v["by_family"]["int"], 900);
        let v: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(v["store_sectors_per_request"], Value::Null);
    }
}
