//! `palm reward train` / `palm reward score` end to end on a tiny model: a learnable preference
//! (and its reverse) reaches a held-out pairwise accuracy far above chance, LoRA training leaves
//! the trunk untouched, `score` prints what the saved model computes, and bad inputs give one
//! clear error.

mod common;

use common::{assert_one_error, palm, scratch, stderr, stdout, tiny_checkpoint};
use palm_engine::{Rng, SafeFile};
use palm_rlhf::data::{PairRecord, RankingRecord, write_jsonl};
use palm_rlhf::labelers::Labeler;
use palm_rlhf::reward::RewardModel;
use std::path::{Path, PathBuf};
use std::process::Output;

/// A response of `len` letters with exactly `a` of them 'a', the rest from "bcd".
fn response(a: usize, len: usize, rng: &mut Rng) -> String {
    let mut letters: Vec<u8> = (0..len)
        .map(|i| if i < a { b'a' } else { b"bcd"[rng.below(3)] })
        .collect();
    for i in (1..len).rev() {
        letters.swap(i, rng.below(i + 1));
    }
    String::from_utf8(letters).unwrap()
}

/// `n` prompts with 3 responses of distinct 'a' counts each, ranked by the count-'a' labeler
/// (more is better), or the reverse.
fn a_rankings(n: usize, reverse: bool) -> Vec<RankingRecord> {
    let mut rng = Rng::new(7);
    (0..n)
        .map(|i| {
            let mut counts: Vec<usize> = Vec::new();
            while counts.len() < 3 {
                let c = rng.below(9);
                if !counts.contains(&c) {
                    counts.push(c);
                }
            }
            let responses = counts.iter().map(|&c| response(c, 10, &mut rng)).collect();
            let mut ranked = Labeler::Count('a').rank(responses);
            if reverse {
                ranked.reverse();
            }
            RankingRecord {
                prompt: format!("Q{i}: say it"),
                responses: ranked,
            }
        })
        .collect()
}

/// Flags that make the tiny task train in about a second.
const FAST: &[&str] = &[
    "--batch",
    "8",
    "--val-frac",
    "0.25",
    "--lr",
    "3e-3",
    "--warmup",
    "5",
    "--seed",
    "3",
    "--device",
    "cpu",
];

fn train(ckpt: &Path, data: &Path, out: &Path, epochs: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "reward",
        "train",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        epochs,
    ];
    args.extend_from_slice(FAST);
    args.extend_from_slice(extra);
    palm(&args)
}

/// The per-epoch held-out accuracies logged in metrics.jsonl, epoch 0 (untrained) first.
fn accuracies(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["val_accuracy"].as_f64()
        })
        .collect()
}

fn write(dir: &Path, name: &str, records: &[RankingRecord]) -> PathBuf {
    let p = dir.join(name);
    write_jsonl(&p, records).unwrap();
    p
}

#[test]
fn learns_a_preference_and_its_reverse() {
    let dir = scratch("rm-learn");
    let ckpt = tiny_checkpoint(&dir, 1);
    for reverse in [false, true] {
        let data = write(&dir, "rankings.jsonl", &a_rankings(160, reverse));
        let out = dir.join(format!("rm-{reverse}"));
        let t = std::time::Instant::now();
        let o = train(&ckpt, &data, &out, "4", &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        eprintln!(
            "reverse {reverse}: {:.1}s\n{}",
            t.elapsed().as_secs_f64(),
            stderr(&o)
        );
        let acc = accuracies(&out);
        // Untrained, then 4 epochs; 40 held-out rankings → 120 pairs, chance 0.5.
        assert_eq!(acc.len(), 5, "{acc:?}");
        // Same seed, same split and initialisation for both rules: a lucky start cannot serve
        // a rule and its reverse, so passing both shows learning.
        assert!(
            acc[4] >= 0.9,
            "reverse {reverse}: held-out accuracy {acc:?}"
        );
        assert!(stderr(&o).contains("pairwise accuracy"));
        assert!(out.join("reward.safetensors").exists());
    }

    // `reward score` prints what the saved model computes, in order; the model prefers 'a's.
    let out = dir.join("rm-false");
    let (good, bad) = ("aaaaaaaabc", "bcdbcdbcda");
    let o = palm(&[
        "reward",
        "score",
        "--checkpoint",
        out.to_str().unwrap(),
        "--prompt",
        "Q1: say it",
        "--response",
        good,
        "--response",
        bad,
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let printed: Vec<(String, f32)> = stdout(&o)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let score = v["score"].as_f64().unwrap() as f32;
            (v["response"].as_str().unwrap().to_string(), score)
        })
        .collect();
    let rm = RewardModel::load(&out.join("reward.safetensors")).unwrap();
    let want = rm.score_texts("Q1: say it", &[good, bad]).unwrap();
    assert_eq!(
        printed,
        vec![(good.to_string(), want[0]), (bad.to_string(), want[1])]
    );
    assert!(want[0] > want[1], "{want:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lora_trains_adapters_and_leaves_the_trunk() {
    let dir = scratch("rm-lora");
    let ckpt = tiny_checkpoint(&dir, 2);
    let data = write(&dir, "rankings.jsonl", &a_rankings(160, false));
    let out = dir.join("rm");
    let o = train(
        &ckpt,
        &data,
        &out,
        "4",
        &["--lora", "--lora-rank", "4", "--pooling", "last"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    eprintln!("{}", stderr(&o));
    let acc = accuracies(&out);
    // Last-token pooling sees one position, so the rule (a count over the whole response) is
    // harder; still far above chance.
    assert!(acc[acc.len() - 1] >= 0.75, "held-out accuracy {acc:?}");
    let (base, rm) = (
        SafeFile::open(&ckpt).unwrap(),
        SafeFile::open(out.join("reward.safetensors")).unwrap(),
    );
    let mut trunk = 0;
    for name in base.names() {
        let a = base.get(name).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(
            a,
            rm.get(name).unwrap().to_vec::<f32>().unwrap(),
            "{name} changed"
        );
        trunk += 1;
    }
    assert!(trunk > 5);
    // The adapters trained (B starts at 0).
    let b = rm
        .get("finetune_modules.reward.0.0.B")
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert!(b.iter().any(|x| *x != 0.0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pairs_with_margins_train() {
    let dir = scratch("rm-pairs");
    let ckpt = tiny_checkpoint(&dir, 1);
    let pairs: Vec<PairRecord> = a_rankings(40, false)
        .into_iter()
        .map(|r| PairRecord {
            prompt: r.prompt,
            chosen: r.responses[0].clone(),
            rejected: r.responses[2].clone(),
            margin: Some(0.5),
        })
        .collect();
    let data = dir.join("pairs.jsonl");
    write_jsonl(&data, &pairs).unwrap();
    let out = dir.join("rm");
    let o = train(&ckpt, &data, &out, "1", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // 10 held-out pairs, one comparison each.
    assert!(stderr(&o).contains("/10 pairs)"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_give_one_clear_error() {
    let dir = scratch("rm-bad");
    let ckpt = tiny_checkpoint(&dir, 1);
    let out = dir.join("rm");
    let good = r#"{"prompt": "p", "responses": ["a", "b"]}"#;
    let bad_files = [
        (
            "json.jsonl",
            format!("{good}\n{good}\n{{\"prompt\": \"p\", \n"),
            "json.jsonl:3: malformed JSON",
        ),
        (
            "one.jsonl",
            format!("{good}\n{{\"prompt\": \"p\", \"responses\": [\"a\"]}}\n"),
            "one.jsonl:2: a ranking needs at least 2",
        ),
        (
            "both.jsonl",
            r#"{"prompt": "p", "responses": ["a", "b"], "chosen": "a"}"#.to_string(),
            "both.jsonl:1: bad record: a record is a ranking",
        ),
        (
            "few.jsonl",
            format!("{good}\n"),
            "few.jsonl: need at least 2 rankings",
        ),
    ];
    for (name, text, needle) in bad_files {
        let data = dir.join(name);
        std::fs::write(&data, text).unwrap();
        assert_one_error(&train(&ckpt, &data, &out, "4", &[]), needle);
    }
    assert!(!out.exists(), "a failed run created its folder");

    // Checkpoints: not a model, a plain model where a reward model is wanted, a wrong head.
    let data = write(&dir, "rankings.jsonl", &a_rankings(8, false));
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    let o = train(&junk, &data, &out, "1", &[]);
    assert_one_error(&o, "junk.safetensors");
    let score = |rm: &Path| {
        palm(&[
            "reward",
            "score",
            "--checkpoint",
            rm.to_str().unwrap(),
            "--prompt",
            "p",
            "--response",
            "a",
        ])
    };
    assert_one_error(
        &score(&ckpt),
        "policy.safetensors: not a reward model (format 'palm'",
    );
    let o = train(&ckpt, &data, &out, "1", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rm_path = out.join("reward.safetensors");
    let file = SafeFile::open(&rm_path).unwrap();
    let mut tensors: Vec<(String, palm_engine::Tensor)> = file
        .names()
        .map(|n| (n.to_string(), file.get(n).unwrap()))
        .collect();
    for (name, t) in &mut tensors {
        if name == "to_pred.weight" {
            *t = palm_engine::Tensor::from_vec(vec![0.5f32; 31], &[1, 31]).unwrap();
        }
    }
    let broken = dir.join("broken.safetensors");
    palm_engine::save_safetensors(&broken, &tensors, file.metadata().clone()).unwrap();
    assert_one_error(
        &score(&broken),
        "'to_pred.weight' has shape [1, 31], expected [1, 32]",
    );
    assert_one_error(&score(&dir.join("missing")), "missing");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Stopped mid-epoch and at an epoch's end, resumed, the run ends bit-exactly where an
/// uninterrupted one does (full and LoRA).
#[test]
fn resume_is_bit_exact() {
    let dir = scratch("reward-resume");
    let ckpt = tiny_checkpoint(&dir, 4);
    let data = write(&dir, "rankings.jsonl", &a_rankings(40, false));
    for lora in [false, true] {
        let extra: &[&str] = if lora {
            &["--lora", "--lora-rank", "2"]
        } else {
            &[]
        };
        let full = dir.join(format!("full-{lora}"));
        let o = train(&ckpt, &data, &full, "3", extra);
        assert!(o.status.success(), "{}", stderr(&o));
        // 30 training rankings in batches of 8: 4 steps an epoch; stop mid-epoch 1, then at
        // the end of epoch 2.
        let part = dir.join(format!("part-{lora}"));
        let o = train(
            &ckpt,
            &data,
            &part,
            "3",
            &[extra, &["--stop-at", "2"]].concat(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
        let p = part.to_str().unwrap();
        let o = palm(&[
            "reward",
            "train",
            "--resume",
            p,
            "--stop-at",
            "8",
            "--device",
            "cpu",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = palm(&["reward", "train", "--resume", p, "--device", "cpu"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("done:"), "{}", stderr(&o));
        common::assert_resumed_like(
            &full,
            &part,
            &["reward.safetensors", "reward_state.safetensors"],
        );
    }
    // The flags a run fixed are refused on resume.
    let o = palm(&["reward", "train", "--resume", "x", "--epochs", "9"]);
    assert!(!o.status.success() && stderr(&o).contains("cannot be used with"));
    std::fs::remove_dir_all(&dir).unwrap();
}
