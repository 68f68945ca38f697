//! The model on the GPU: the seed's reference vectors in mixed precision, KV-cache decode against
//! the full forward, training that tracks the CPU's losses, device sampling, and checkpoints that
//! move between devices. Skips with a reason without a GPU; fails under `PALM_REQUIRE_GPU=1`.

use palm_engine::cuda::{CudaDevice, gpu_or_skip};
use palm_engine::{DType, Device, Rng, Tensor, no_grad};
use palm_model::checkpoint::{load_model, params_of, save_model};
use palm_model::{Forward, KvCache, PalmConfig, PalmParams, SampleSettings, generate};
use palm_tests::{assert_close, seed_expected, seed_model};

const GPU: Device = Device::Cuda(0);
/// bf16 compute through a whole model (two layers, residual stream in bf16).
const MODEL_TOL: f64 = 2e-2;

fn gpu(test: &str) -> bool {
    gpu_or_skip(test).is_some_and(|d| {
        d.set_poison(true);
        true
    })
}

fn seed_on(device: Device) -> (PalmParams, Tensor) {
    let params = params_of(&seed_model()).unwrap().to_device(device).unwrap();
    let tokens = seed_expected()
        .get("tokens")
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap();
    (params, tokens)
}

fn expected(name: &str) -> Vec<f32> {
    seed_expected().get(name).unwrap().to_vec::<f32>().unwrap()
}

#[test]
fn seed_reference_on_the_gpu() {
    if !gpu("seed_reference_on_the_gpu") {
        return;
    }
    let (params, tokens) = seed_on(GPU);
    let n = tokens.dims()[1];
    let inputs = tokens.narrow(1, 0, n - 1).unwrap().contiguous().unwrap();
    let logits = params.logits(&inputs, &mut Forward::default()).unwrap();
    assert_eq!((logits.device(), logits.dtype()), (GPU, DType::BF16));
    assert_close(
        "logits",
        &logits.to_f32_vec().unwrap(),
        &expected("logits"),
        MODEL_TOL,
    );
    let (loss, _) = params.loss(&tokens, &mut Forward::default()).unwrap();
    assert_close(
        "loss",
        &[loss.to_scalar().unwrap()],
        &expected("loss"),
        MODEL_TOL,
    );
    let grads = loss.backward().unwrap();
    for (name, p) in params.named() {
        let g = grads
            .get(p)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(g.dtype(), DType::F32, "{name}: master gradients are f32");
        assert_close(
            &format!("grad {name}"),
            &g.to_vec::<f32>().unwrap(),
            &expected(&format!("grad.{name}")),
            MODEL_TOL,
        );
    }
}

#[test]
fn kv_cache_decode_matches_the_full_forward_on_the_gpu() {
    if !gpu("kv_cache_decode_matches_the_full_forward_on_the_gpu") {
        return;
    }
    // dim_head 64: the fused attention kernels (the seed model's 16 takes the composed path).
    let config = PalmConfig::new(256, 128, 2, 2, 64);
    let params = PalmParams::init(&config, &mut Rng::new(1))
        .unwrap()
        .to_device(GPU)
        .unwrap();
    let _g = no_grad();
    let ids: Vec<u32> = (0..2 * 80).map(|i| 1 + (i * 37 % 250) as u32).collect();
    let tokens = Tensor::from_vec(ids, &[2, 80]).unwrap();
    let full = params.logits(&tokens, &mut Forward::default()).unwrap();
    let mut cache = KvCache::new(config.depth);
    let mut steps = Vec::new();
    // The last chunk grows the cache's buffers (64 positions to 128): the cached keys move to
    // the new buffers and attention reads them as strided views.
    for (at, len) in [(0, 25), (25, 1), (26, 30), (56, 24)] {
        let chunk = tokens.narrow(1, at, len).unwrap().contiguous().unwrap();
        let out = params
            .logits(
                &chunk,
                &mut Forward {
                    cache: Some(&mut cache),
                    ..Default::default()
                },
            )
            .unwrap();
        steps.push(out);
    }
    assert_eq!(cache.capacity(), 128);
    let refs: Vec<&Tensor> = steps.iter().collect();
    let cached = Tensor::cat(&refs, 1).unwrap();
    assert_close(
        "cached logits",
        &cached.to_f32_vec().unwrap(),
        &full.to_f32_vec().unwrap(),
        MODEL_TOL,
    );
}

#[test]
fn training_on_the_gpu_tracks_the_cpu() {
    if !gpu("training_on_the_gpu_tracks_the_cpu") {
        return;
    }
    let config = PalmConfig::new(256, 128, 2, 2, 64);
    let init = PalmParams::init(&config, &mut Rng::new(4)).unwrap();
    let mut data_rng = Rng::new(9);
    let batches: Vec<Tensor> = (0..30)
        .map(|_| {
            // A learnable sequence: each row counts up from a random start.
            let rows: Vec<u32> = (0..4)
                .flat_map(|_| {
                    let s = data_rng.below(200) as u32;
                    (0..33).map(move |i| 1 + (s + i) % 255)
                })
                .collect();
            Tensor::from_vec(rows, &[4, 33]).unwrap()
        })
        .collect();
    let run = |device: Device| {
        let mut params = init.to_device(device).unwrap();
        let mut opt = palm_engine::AdamW::new(
            palm_engine::AdamWConfig {
                lr: 3e-3,
                ..Default::default()
            },
            &params.tensors(),
        )
        .unwrap();
        let mut losses = Vec::new();
        for b in &batches {
            let (loss, _) = params.loss(b, &mut Forward::default()).unwrap();
            losses.push(loss.to_scalar().unwrap());
            let mut grads = loss.backward().unwrap();
            let mut ts = params.tensors();
            palm_engine::clip_grad_norm(&mut grads, &ts, 1.0).unwrap();
            opt.step(&mut ts, &grads, 3e-3).unwrap();
            params.set_tensors(ts).unwrap();
        }
        (losses, params)
    };
    let (cpu, _) = run(Device::Cpu);
    let (gpu_losses, trained) = run(GPU);
    eprintln!("cpu {cpu:?}\ngpu {gpu_losses:?}");
    for (i, (g, c)) in gpu_losses.iter().zip(&cpu).enumerate() {
        assert!(
            (g - c).abs() <= 0.05 * c.abs(),
            "step {i}: GPU loss {g} vs CPU {c}"
        );
    }
    assert!(
        gpu_losses[29] < 0.6 * gpu_losses[0],
        "GPU training did not learn"
    );
    // The GPU-trained checkpoint loads on the CPU and scores the same.
    let dir = std::env::temp_dir().join(format!("palm-gpu-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    save_model(&path, &trained, &[]).unwrap();
    let (back, _) = load_model(&path).unwrap();
    let _g = no_grad();
    let on_gpu = trained
        .loss(&batches[0], &mut Forward::default())
        .unwrap()
        .0;
    let on_cpu = back.loss(&batches[0], &mut Forward::default()).unwrap().0;
    assert_close(
        "loss of the reloaded model",
        &[on_gpu.to_scalar().unwrap()],
        &[on_cpu.to_scalar().unwrap()],
        MODEL_TOL,
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sampling_on_the_gpu() {
    if !gpu("sampling_on_the_gpu") {
        return;
    }
    let (params, _) = seed_on(GPU);
    let prompts = vec![vec![72u32, 101, 108], vec![84, 104, 101]];
    let greedy = SampleSettings {
        temperature: 0.0,
        max_tokens: 12,
        ..Default::default()
    };
    let a = generate(&params, &prompts, &greedy, None, &mut Rng::new(1)).unwrap();
    assert!(a.iter().all(|r| r.len() == 12));
    // Greedy decoding through the cache picks, at every step, a token whose full-forward logit
    // is within bf16 rounding of the best one.
    let _g = no_grad();
    for (row, prompt) in a.iter().zip(&prompts) {
        let mut seq = prompt.clone();
        for &t in row {
            let toks = Tensor::from_vec(seq.clone(), &[1, seq.len()]).unwrap();
            let logits = params.logits(&toks, &mut Forward::default()).unwrap();
            let last = logits
                .narrow(1, seq.len() - 1, 1)
                .unwrap()
                .to_f32_vec()
                .unwrap();
            let best = last.iter().cloned().fold(f32::MIN, f32::max);
            let spread = last.iter().cloned().fold(f32::MAX, f32::min);
            assert!(
                best - last[t as usize] <= 2e-2 * (best - spread).max(1e-3),
                "token {t} is not (near) the argmax"
            );
            seq.push(t);
        }
    }
    // Temperature sampling is seeded: the same seed repeats, another differs.
    let warm = SampleSettings {
        temperature: 1.0,
        top_k: Some(20),
        max_tokens: 30,
        ..Default::default()
    };
    let s1 = generate(&params, &prompts, &warm, None, &mut Rng::new(5)).unwrap();
    let s2 = generate(&params, &prompts, &warm, None, &mut Rng::new(5)).unwrap();
    let s3 = generate(&params, &prompts, &warm, None, &mut Rng::new(6)).unwrap();
    assert_eq!(s1, s2);
    assert_ne!(s1, s3);
}

#[test]
fn reward_model_and_rlhf_logprobs_on_the_gpu() {
    if !gpu("reward_model_and_rlhf_logprobs_on_the_gpu") {
        return;
    }
    use palm_rlhf::reward::{Pooling, RewardModel, Scored};
    // The seed's reward model (reference.rs checks it on the CPU), moved to the GPU.
    let (params, tokens) = seed_on(Device::Cpu);
    let exp = seed_expected();
    let mask = exp
        .get("reward.prompt_mask")
        .unwrap()
        .to_vec::<u8>()
        .unwrap();
    let ids = tokens.to_vec::<u32>().unwrap();
    let n = tokens.dims()[1];
    let mut rm = RewardModel::new(params.clone(), Pooling::Mean, &mut Rng::new(0)).unwrap();
    rm.prompt_embed = exp.get("reward.prompt_embed").unwrap();
    rm.response_embed = exp.get("reward.response_embed").unwrap();
    rm.head = exp.get("reward.to_pred.weight").unwrap();
    rm.move_to(GPU).unwrap();
    let batch: Vec<Scored> = ids
        .chunks(n)
        .zip(mask.chunks(n))
        .map(|(row, m)| {
            let plen = m.iter().take_while(|&&x| x != 0).count();
            Scored {
                prompt: &row[..plen],
                response: &row[plen..],
            }
        })
        .collect();
    let scores = rm.scores(&batch).unwrap();
    assert_eq!((scores.device(), scores.dtype()), (GPU, DType::F32));
    assert_close(
        "reward on the GPU",
        &scores.to_vec::<f32>().unwrap(),
        &expected("reward.expected"),
        MODEL_TOL,
    );
    // Per-token log-probs and entropies (PPO, DPO, GRPO) on the GPU against the CPU.
    let inputs = tokens.narrow(1, 0, n - 1).unwrap().contiguous().unwrap();
    let targets = tokens.narrow(1, 1, n - 1).unwrap().contiguous().unwrap();
    let _g = no_grad();
    let on = |p: &PalmParams| {
        let logits = p.logits(&inputs, &mut Forward::default()).unwrap();
        let lp = palm_rlhf::rl_math::token_logprobs(&logits, &targets).unwrap();
        let h = palm_rlhf::rl_math::token_entropy(&logits).unwrap();
        (lp.to_f32_vec().unwrap(), h.to_f32_vec().unwrap())
    };
    let (lc, hc) = on(&params);
    let (lg, hg) = on(&params.to_device(GPU).unwrap());
    assert_close("token log-probs", &lg, &lc, MODEL_TOL);
    assert_close("token entropies", &hg, &hc, MODEL_TOL);
}

/// The loss and every gradient of a model per head dim: 32 (the composed attention), 64 and 128
/// (the fused kernels), CUDA against the CPU — what `palm eval --device cuda` computes.
#[test]
fn every_head_dim_matches_the_cpu() {
    if !gpu("every_head_dim_matches_the_cpu") {
        return;
    }
    let mut data_rng = Rng::new(5);
    let rows: Vec<u32> = (0..2 * 41)
        .map(|_| 1 + data_rng.below(255) as u32)
        .collect();
    let tokens = Tensor::from_vec(rows, &[2, 41]).unwrap();
    for dh in [32, 64, 128] {
        let config = PalmConfig::new(256, 96, 2, 2, dh);
        let params = PalmParams::init(&config, &mut Rng::new(dh as u64)).unwrap();
        let run = |device: Device| {
            let p = params.to_device(device).unwrap();
            let ts = p.tensors();
            let (loss, _) = p.loss(&tokens, &mut Forward::default()).unwrap();
            let grads = loss.backward().unwrap();
            let g: Vec<Vec<f32>> = ts
                .iter()
                .map(|t| grads.get(t).unwrap().to_f32_vec().unwrap())
                .collect();
            (loss.to_scalar().unwrap(), g)
        };
        let (lc, gc) = run(Device::Cpu);
        let (lg, gg) = run(GPU);
        assert_close(&format!("loss, head dim {dh}"), &[lg], &[lc], 1e-3);
        for (i, (g, c)) in gg.iter().zip(&gc).enumerate() {
            assert_close(&format!("gradient {i}, head dim {dh}"), g, c, MODEL_TOL);
        }
    }
}

/// PPO's loss stays on the device: its clipped branches are chosen there (maximum, clamp,
/// ge), so a loss with its backward copies one thing to the host — the six statistics, in one
/// copy — where choosing the branches on the host copied the log-probs and values back; and it
/// matches the CPU's loss, statistics and gradients.
#[test]
fn ppo_loss_stays_on_the_device() {
    if gpu_or_skip("ppo_loss_stays_on_the_device").is_none() {
        return;
    }
    use palm_rlhf::rl_math::{PpoBatch, PpoConfig, ppo_loss};
    let (b, n) = (4, 37);
    let mut rng = Rng::new(5);
    let mut host = |scale: f32| -> Vec<f32> { (0..b * n).map(|_| rng.normal() * scale).collect() };
    let (logp, values, entropy) = (host(0.3), host(1.0), host(0.1));
    let (old_logp, old_values) = (host(0.3), host(1.0));
    let (adv, returns) = (host(1.0), host(1.0));
    let mask: Vec<f32> = (0..b * n)
        .map(|i| f32::from(u8::from(i % n < 30 - i / n)))
        .collect();
    let batch = PpoBatch {
        old_logp: &old_logp,
        old_values: &old_values,
        advantages: &adv,
        returns: &returns,
        mask: &mask,
    };
    let cfg = PpoConfig::default();
    let run = |device: Device| {
        let t = |v: &Vec<f32>| {
            Tensor::from_vec(v.clone(), &[b, n])
                .unwrap()
                .to_device(device)
                .unwrap()
                .as_var()
        };
        let (lp, v, h) = (t(&logp), t(&values), t(&entropy));
        // This thread's copies: tests running beside this one copy too.
        let before = CudaDevice::d2h_copies_on_this_thread();
        let out = ppo_loss(&lp, &h, &v, &batch, &cfg).unwrap();
        let grads = out.loss.backward().unwrap();
        let copies = CudaDevice::d2h_copies_on_this_thread() - before;
        let g = |x: &Tensor| grads.get(x).unwrap().to_vec::<f32>().unwrap();
        let stats = vec![
            out.policy_loss,
            out.value_loss,
            out.entropy,
            out.approx_kl,
            out.clip_frac,
        ];
        (copies, stats, g(&lp), g(&v))
    };
    let (copies, stats, glp, gv) = run(GPU);
    assert_eq!(copies, 1, "device→host copies in one PPO loss and backward");
    let (_, cpu_stats, cpu_glp, cpu_gv) = run(Device::Cpu);
    assert_close("PPO statistics", &stats, &cpu_stats, 1e-5);
    assert_close("PPO d/d log-probs", &glp, &cpu_glp, 1e-5);
    assert_close("PPO d/d values", &gv, &cpu_gv, 1e-5);
}

/// `palm chat` on the GPU: three greedy turns through one device KV cache (past a growth of its
/// buffers, and through a context that drops old turns) reply as the same chat on the CPU, on a
/// model with sharp logits (so bf16 rounding cannot change a greedy choice).
#[test]
fn a_chat_on_the_gpu_replies_as_on_the_cpu() {
    use palm_rlhf::chat::{Chat, ChatSettings};
    use std::sync::atomic::AtomicBool;
    if !gpu("a_chat_on_the_gpu_replies_as_on_the_cpu") {
        return;
    }
    // dim_head 64: the fused attention kernels.
    let mut params =
        PalmParams::init(&PalmConfig::new(256, 128, 2, 2, 64), &mut Rng::new(6)).unwrap();
    params.token_emb = params.token_emb.scale(40.0).unwrap().as_var();
    let settings = ChatSettings {
        template: "Q: {}\nA:".into(),
        eos: Some(u32::from(b'\n')),
        context: 90,
        sample: SampleSettings {
            temperature: 0.0,
            max_tokens: 24,
            ..Default::default()
        },
    };
    let replies = |params: &PalmParams| -> Vec<(Vec<u32>, usize)> {
        let mut chat = Chat::new(params, None, settings.clone(), 0).unwrap();
        let stop = AtomicBool::new(false);
        ["hello there", "and what then?", "why is that so?"]
            .iter()
            .map(|line| {
                let r = chat.turn(line, &stop, |_| {}).unwrap();
                (r.tokens, r.dropped_turns)
            })
            .collect()
    };
    let on_cpu = replies(&params);
    let on_gpu = replies(&params.to_device(GPU).unwrap());
    assert!(
        on_cpu.iter().any(|(_, dropped)| *dropped > 0),
        "the context dropped a turn"
    );
    assert!(on_cpu.iter().all(|(t, _)| !t.is_empty()));
    assert_eq!(on_gpu, on_cpu);
}

#[test]
fn non_finite_logits_stop_sampling_on_either_device() {
    // A NaN final norm makes every logit NaN: drawing from them is an error on the CPU and on
    // the device alike (the device samples without reading the logits back, so it checks their
    // sum), greedy or not.
    if !gpu("non_finite_logits_stop_sampling_on_either_device") {
        return;
    }
    for device in [Device::Cpu, GPU] {
        let (mut params, _) = seed_on(device);
        let dim = params.config.dim;
        params.norm_gamma = Tensor::from_vec(vec![f32::NAN; dim], &[dim])
            .unwrap()
            .to_device(device)
            .unwrap();
        for temperature in [0.0, 1.0] {
            let s = SampleSettings {
                temperature,
                max_tokens: 3,
                ..Default::default()
            };
            let err = generate(&params, &[vec![72u32, 101]], &s, None, &mut Rng::new(1))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("logits are NaN") && err.contains("after 0 generated tokens"),
                "{device:?}, temperature {temperature}: {err}"
            );
        }
    }
}
