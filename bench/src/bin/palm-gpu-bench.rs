//! The GPU benchmark: the torch anchor's workloads (`../shared/anchors/torch_palm.py`) on our
//! engine, one JSON line per result with the anchor's field names, and a ratio table.
//!
//! ```text
//! palm-gpu-bench all                 # every workload at the anchor's shapes
//! palm-gpu-bench matmul|attention|train|generate|adamw|ceilings
//! palm-gpu-bench all --smoke         # tiny shapes: checks the harness (e.g. PALM_CUDA_EMULATE=1)
//! palm-gpu-bench ppo --cpu [--config enwik8|small] [--smoke]   # PPO episodes/s on the CPU
//! palm-gpu-bench compare OURS.jsonl TORCH.jsonl   # markdown table: ours, torch, ratio
//! ```
//!
//! Timing: warm-up, then the median of the iterations, each timed with CUDA events on the
//! device's stream (wall clock after a synchronize on the emulated device, which has no events).
//! Inputs are random normals, never zeros.

use palm_bench::{TrainStep, train_workload};
use palm_engine::cuda::CudaDevice;
use palm_engine::{AdamW, DType, Device, Result, Rng, Tensor, attention, no_grad};
use palm_model::{PalmParams, SampleSettings, generate};
use serde_json::{Value, json};
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
        use palm_rlhf::rl_run::RlRun;
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
            "usage: palm-gpu-bench {} [--smoke] | ppo --cpu | compare OURS TORCH",
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
