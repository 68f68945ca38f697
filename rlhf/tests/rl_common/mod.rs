//! Helpers of the PPO and GRPO tests: a tiny language a rule can score, a model pretrained on
//! it, prompt files, held-out scoring from a saved checkpoint, and run outputs.
#![allow(dead_code)] // each test file uses its own part

use crate::common::{TINY_MODEL, palm, stderr};
use palm_engine::{Rng, SafeFile};
use palm_model::checkpoint::{load_lora, load_model};
use palm_rlhf::data::{PromptRecord, write_jsonl};
use palm_rlhf::flags::{Actor, Optim, RlSchedule, Sources};
use palm_rlhf::labelers::Labeler;
use palm_rlhf::rl_run::RlSettings;
use palm_rlhf::rollout::{self, Sampling};
use palm_rlhf::sampling::Stop;
use std::path::{Path, PathBuf};

/// Lines "<word> say: <letters from abcde>\n": a tiny language whose answers a rule can score.
pub fn corpus(rng: &mut Rng) -> String {
    let words = ["now", "then", "so", "please", "ok", "well", "yes", "and"];
    let mut out = String::new();
    while out.len() < 30_000 {
        out.push_str(words[rng.below(words.len())]);
        out.push_str(" say: ");
        for _ in 0..2 + rng.below(9) {
            out.push(b"abcde"[rng.below(5)] as char);
        }
        out.push('\n');
    }
    out
}

/// Pretrain the tiny model on `corpus` with `palm train`.
pub fn pretrain(dir: &Path) -> PathBuf {
    let data = dir.join("corpus.txt");
    std::fs::write(&data, corpus(&mut Rng::new(11))).unwrap();
    let out = dir.join("base");
    let mut a = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend([
        "--steps",
        "80",
        "--batch",
        "8",
        "--seq-len",
        "48",
        "--lr",
        "5e-3",
        "--warmup",
        "5",
        "--val-windows",
        "2",
        "--sample-tokens",
        "8",
    ]);
    a.extend(TINY_MODEL);
    let o = palm(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    out.join("model.safetensors")
}

pub fn write_prompts(path: &Path, words: &[&str]) {
    let records: Vec<PromptRecord> = words
        .iter()
        .map(|w| PromptRecord {
            prompt: format!("{w} say: "),
        })
        .collect();
    write_jsonl(path, &records).unwrap();
}

/// Mean and standard error of `rule`'s score over 16 samples for each of `prompts`, from a
/// checkpoint (with its actor adapters when `lora`).
pub fn held_out_score(ckpt: &Path, lora: bool, prompts: &[&str], rule: &Labeler) -> (f64, f64) {
    let (params, file) = load_model(ckpt).unwrap();
    let actor = lora.then(|| load_lora(&file, &params.config, "actor").unwrap().unwrap());
    let tokens: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|p| {
            let t = params.tokenizer.encode(&format!("{p} say: ")).unwrap();
            std::iter::repeat_n(t, 16)
        })
        .collect();
    let s = Sampling {
        temperature: 1.0,
        max_new: 12,
        eos: Some(u32::from(b'\n')),
    };
    let episodes =
        rollout::sample_episodes(&params, actor.as_ref(), &tokens, &s, &mut Rng::new(1234))
            .unwrap();
    let scores: Vec<f64> = episodes
        .iter()
        .map(|e| rule.score(&params.tokenizer.decode(e.text())) as f64)
        .collect();
    let n = scores.len() as f64;
    let mean = scores.iter().sum::<f64>() / n;
    let var = scores.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

pub fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Metrics without the wall-clock fields.
pub fn deterministic(m: &[serde_json::Value]) -> Vec<serde_json::Value> {
    m.iter()
        .map(|v| {
            let mut v = v.clone();
            let o = v.as_object_mut().unwrap();
            o.retain(|k, _| !k.ends_with("_s"));
            v
        })
        .collect()
}

pub fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let f = SafeFile::open(path).unwrap();
    let mut names: Vec<String> = f.names().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let v = f.get(&n).unwrap().to_vec::<f32>().unwrap();
            (n, v)
        })
        .collect()
}

/// The unit tests' settings around an algorithm's own flags: the rule count:a, one update,
/// rank-4 adapters, responses of up to 8 tokens ending at `eos`, --lr 1e-3.
pub fn rl_settings<F>(algo: F, eos: Option<u32>) -> RlSettings<F> {
    RlSettings {
        sources: Sources {
            policy: PathBuf::new(),
            reward: None,
            rule: Some("count:a".into()),
            prompts: PathBuf::new(),
            tokenizer: None,
        },
        updates: 1,
        actor: Actor {
            lora_rank: 4,
            max_new: 8,
            max_prompt: 64,
            eos: Stop(eos),
            temperature: 1.0,
        },
        algo,
        optim: Optim {
            lr: 1e-3,
            weight_decay: 0.0,
            grad_clip: 1.0,
        },
        schedule: RlSchedule {
            sample_every: 0,
            ckpt_every: 0,
            seed: 0,
        },
    }
}
