//! DPO: pairs from rankings, sequence log-probs that count only response tokens and do not
//! depend on padding, and `palm dpo` end to end on a tiny model — a learnable preference and its
//! reverse raise the implicit-reward accuracy on fresh pairs far above chance and the policy's
//! logπ(chosen) − logπ(rejected) above the reference's; LoRA trains only the adapters and the
//! result samples; bad inputs give one clear error.

mod common;

use common::{assert_one_error, palm, scratch, stderr, stdout, tiny_checkpoint};
use palm_engine::{Rng, SafeFile, Tensor, no_grad};
use palm_model::Forward;
use palm_model::checkpoint::{load_lora, load_model};
use palm_rlhf::data::{PairRecord, PreferenceRecord, RankingRecord};
use palm_rlhf::dpo::{Pair, Policy, pairs_of};
use palm_rlhf::labelers::Labeler;
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

/// `n` prompts, each with 3 responses of distinct 'a' counts ranked by the count (more is
/// better, or fewer with `reverse`), best first.
fn a_rankings(n: usize, reverse: bool, seed: u64) -> Vec<RankingRecord> {
    let mut rng = Rng::new(seed);
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

/// A JSONL file mixing both record kinds: odd records as rankings, even ones as their
/// (best, worst) pair.
fn write_mixed(path: &Path, rankings: &[RankingRecord]) {
    let lines: Vec<String> = rankings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if i % 2 == 1 {
                serde_json::to_string(r).unwrap()
            } else {
                serde_json::to_string(&PairRecord {
                    prompt: r.prompt.clone(),
                    chosen: r.responses[0].clone(),
                    rejected: r.responses[2].clone(),
                    margin: None,
                })
                .unwrap()
            }
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn rankings_expand_to_all_their_pairs() {
    let ranking = PreferenceRecord::Ranking(RankingRecord {
        prompt: "p".into(),
        responses: vec!["x".into(), "y".into(), "z".into()],
    });
    let pair = PreferenceRecord::Pair(PairRecord {
        prompt: "q".into(),
        chosen: "u".into(),
        rejected: "v".into(),
        margin: Some(1.0),
    });
    let (pairs, cut) = pairs_of(&[&ranking, &pair], 100, &palm_model::Tokenizer::bytes()).unwrap();
    let t = |s: &str| palm_model::Tokenizer::bytes().encode(s).unwrap();
    let want = |p: &str, c: &str, r: &str| Pair {
        prompt: t(p),
        chosen: t(c),
        rejected: t(r),
    };
    assert_eq!(
        pairs,
        vec![
            want("p", "x", "y"),
            want("p", "x", "z"),
            want("p", "y", "z"),
            want("q", "u", "v")
        ]
    );
    assert_eq!(cut, 0);
}

#[test]
fn response_logprobs_count_response_tokens_only() {
    let mut rng = Rng::new(5);
    let config = palm_model::PalmConfig::new(256, 32, 1, 2, 16);
    let params = palm_model::PalmParams::init(&config, &mut rng).unwrap();
    let policy = Policy::full(params.clone());
    let (p1, r1) = (
        palm_model::Tokenizer::bytes().encode("Hi: ").unwrap(),
        palm_model::Tokenizer::bytes().encode("yes").unwrap(),
    );
    let (p2, r2) = (
        palm_model::Tokenizer::bytes().encode("Tell me: ").unwrap(),
        palm_model::Tokenizer::bytes().encode("no, thanks").unwrap(),
    );
    let _g = no_grad();
    let alone = policy
        .response_logprobs(&[(&p1, &r1)])
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let both = policy
        .response_logprobs(&[(&p1, &r1), (&p2, &r2)])
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert!((alone[0] - both[0]).abs() < 1e-4, "{alone:?} vs {both:?}");
    // Directly: Σ over response tokens of log softmax(logits at the previous position).
    let tokens: Vec<u32> = p2.iter().chain(&r2).copied().collect();
    let n = tokens.len();
    let logits = params
        .logits(
            &Tensor::from_vec(tokens[..n - 1].to_vec(), &[1, n - 1]).unwrap(),
            &mut Forward::default(),
        )
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let mut want = 0f64;
    for t in p2.len() - 1..n - 1 {
        let row = &logits[t * 256..(t + 1) * 256];
        let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        want += row[tokens[t + 1] as usize] as f64 - lse;
    }
    assert!(
        (both[1] as f64 - want).abs() < 1e-3,
        "{} vs {want}",
        both[1]
    );
    // An empty response has log-prob 0.
    let empty = policy
        .response_logprobs(&[(&p1, &[]), (&p2, &r2)])
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(empty[0], 0.0);
}

/// Flags that make the tiny task train in a few seconds.
const FAST: &[&str] = &[
    "--batch",
    "16",
    "--val-frac",
    "0.25",
    "--lr",
    "3e-3",
    "--min-lr",
    "3e-4",
    "--warmup",
    "3",
    "--seed",
    "3",
    "--val-every",
    "0",
    "--device",
    "cpu",
];

fn dpo(policy: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "dpo",
        "--policy",
        policy.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(FAST);
    args.extend_from_slice(extra);
    palm(&args)
}

/// Validation lines of metrics.jsonl: (step, accuracy, margin).
fn validations(out: &Path) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let acc = v.get("val_accuracy")?.as_f64()?;
            Some((v["step"].as_u64()?, acc, v["val_margin"].as_f64()?))
        })
        .collect()
}

/// On fresh pairs (never trained on): the fraction where the trained policy's implicit reward
/// prefers the chosen response, and the mean of
/// (logπ(c) − logπ(r)) − (logπ_ref(c) − logπ_ref(r)).
fn fresh_pairs_check(reference: &Path, trained: &Path, lora: bool, reverse: bool) -> (f64, f64) {
    let records: Vec<PreferenceRecord> = a_rankings(30, reverse, 99)
        .into_iter()
        .map(PreferenceRecord::Ranking)
        .collect();
    let refs: Vec<&PreferenceRecord> = records.iter().collect();
    let (pairs, _) = pairs_of(&refs, 256, &palm_model::Tokenizer::bytes()).unwrap();
    let (base, _) = load_model(reference).unwrap();
    let (params, file) = load_model(trained).unwrap();
    let mut policy = Policy::full(params.clone());
    if lora {
        policy.lora = Some(load_lora(&file, &params.config, "actor").unwrap().unwrap());
    }
    let reference = Policy::full(base);
    let _g = no_grad();
    let logp = |p: &Policy, pick: &dyn Fn(&Pair) -> &[u32]| -> Vec<f32> {
        let rows: Vec<(&[u32], &[u32])> = pairs.iter().map(|q| (&q.prompt[..], pick(q))).collect();
        p.response_logprobs(&rows).unwrap().to_vec::<f32>().unwrap()
    };
    let (c, r) = (
        logp(&policy, &|q| &q.chosen),
        logp(&policy, &|q| &q.rejected),
    );
    let (rc, rr) = (
        logp(&reference, &|q| &q.chosen),
        logp(&reference, &|q| &q.rejected),
    );
    let (mut correct, mut shift) = (0usize, 0f64);
    for i in 0..pairs.len() {
        let h = ((c[i] - rc[i]) - (r[i] - rr[i])) as f64;
        correct += usize::from(h > 0.0);
        shift += h;
    }
    let n = pairs.len() as f64;
    (correct as f64 / n, shift / n)
}

#[test]
fn dpo_learns_a_preference_and_its_reverse() {
    let dir = scratch("dpo-learn");
    let ckpt = tiny_checkpoint(&dir, 1);
    for reverse in [false, true] {
        let data = dir.join("prefs.jsonl");
        write_mixed(&data, &a_rankings(120, reverse, 7));
        let out = dir.join(format!("dpo-{reverse}"));
        let t = std::time::Instant::now();
        let o = dpo(&ckpt, &data, &out, &["--epochs", "2"]);
        assert!(o.status.success(), "{}", stderr(&o));
        eprintln!(
            "reverse {reverse}: {:.1}s\n{}",
            t.elapsed().as_secs_f64(),
            stderr(&o)
        );
        let v = validations(&out);
        // Before training (policy = reference): every reward 0, a tie, so accuracy 0.
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!((v[0].0, v[0].1, v[0].2), (0, 0.0, 0.0));
        // Same seed, split and start for both rules: a lucky start cannot serve a rule and its
        // reverse, so passing both shows learning. 30 held-out records, chance 0.5.
        let (_, acc, margin) = v[1];
        assert!(acc >= 0.85 && margin > 0.0, "reverse {reverse}: {v:?}");
        assert!(stderr(&o).contains("reward accuracy"));
        // Fresh pairs, scored here from the saved model rather than taken from the run's log.
        let (acc, shift) = fresh_pairs_check(&ckpt, &out.join("model.safetensors"), false, reverse);
        eprintln!("fresh pairs: accuracy {acc:.3}, mean log-ratio shift {shift:.3}");
        assert!(
            acc >= 0.85 && shift > 2.0,
            "reverse {reverse}: fresh-pair accuracy {acc}, log-ratio shift {shift}"
        );
        // The saved policy is a plain model `palm sample` reads.
        let o = palm(&[
            "sample",
            "--checkpoint",
            out.join("model.safetensors").to_str().unwrap(),
            "--prompt",
            "Q1: say it",
            "--max-tokens",
            "8",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lora_trains_only_the_adapters_and_samples() {
    let dir = scratch("dpo-lora");
    let ckpt = tiny_checkpoint(&dir, 2);
    let data = dir.join("prefs.jsonl");
    write_mixed(&data, &a_rankings(120, false, 7));
    let out = dir.join("dpo");
    let o = dpo(&ckpt, &data, &out, &["--epochs", "2", "--lora", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The result line (on stdout) says how to sample the adapters.
    assert!(stdout(&o).contains("--lora actor"), "{}", stdout(&o));
    let model = out.join("model.safetensors");
    let (base, trained) = (
        SafeFile::open(&ckpt).unwrap(),
        SafeFile::open(&model).unwrap(),
    );
    for name in base.names() {
        assert_eq!(
            base.get(name).unwrap().to_vec::<f32>().unwrap(),
            trained.get(name).unwrap().to_vec::<f32>().unwrap(),
            "{name} changed"
        );
    }
    let b = trained
        .get("finetune_modules.actor.0.0.B")
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert!(b.iter().any(|x| *x != 0.0), "the adapters did not train");
    let (acc, shift) = fresh_pairs_check(&ckpt, &model, true, false);
    eprintln!("fresh pairs (LoRA): accuracy {acc:.3}, mean log-ratio shift {shift:.3}");
    assert!(
        acc >= 0.75 && shift > 0.5,
        "fresh-pair accuracy {acc}, log-ratio shift {shift}"
    );
    let o = palm(&[
        "sample",
        "--checkpoint",
        model.to_str().unwrap(),
        "--lora",
        "actor",
        "--prompt",
        "Q1: say it",
        "--max-tokens",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("Q1: say it"));
    // A LoRA-trained policy as the next run's start: its adapters are merged (and it says so),
    // and the new run starts from policy = reference again.
    let next = dir.join("next");
    let o = dpo(&model, &data, &next, &["--lora", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("holds 'actor' adapters"),
        "{}",
        stderr(&o)
    );
    assert_eq!(validations(&next)[0], (0, 0.0, 0.0));
    // The merged adapters are now part of the frozen base it saved.
    let name = "layers.0.fn.attn_out.weight";
    let merged = SafeFile::open(next.join("model.safetensors")).unwrap();
    assert_ne!(
        base.get(name).unwrap().to_vec::<f32>().unwrap(),
        merged.get(name).unwrap().to_vec::<f32>().unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_give_one_clear_error() {
    let dir = scratch("dpo-bad");
    let ckpt = tiny_checkpoint(&dir, 1);
    let out = dir.join("dpo");
    let good = r#"{"prompt": "p", "chosen": "a", "rejected": "b"}"#;
    let cases: [(&str, String, &str); 4] = [
        (
            "json.jsonl",
            format!("{good}\n{good}\n{{\"prompt\": \"p\", \n"),
            "json.jsonl:3: malformed JSON",
        ),
        (
            "same.jsonl",
            format!("{good}\n{{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"a\"}}\n"),
            "same.jsonl:2: chosen and rejected are identical",
        ),
        (
            "half.jsonl",
            r#"{"prompt": "p", "chosen": "a"}"#.to_string(),
            "half.jsonl:1: bad record: a pair needs both",
        ),
        (
            "few.jsonl",
            format!("{good}\n"),
            "few.jsonl: need at least 2",
        ),
    ];
    for (name, text, needle) in cases {
        let data = dir.join(name);
        std::fs::write(&data, text).unwrap();
        assert_one_error(&dpo(&ckpt, &data, &out, &[]), needle);
    }
    let data: PathBuf = dir.join("ok.jsonl");
    std::fs::write(&data, format!("{good}\n{good}\n")).unwrap();
    assert_one_error(&dpo(&ckpt, &data, &out, &["--beta", "0"]), "--beta");
    assert_one_error(&dpo(&dir.join("none"), &data, &out, &[]), "none");
    assert!(!out.exists(), "a failed run created its folder");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Stopped between validations and at one, resumed, the run ends bit-exactly where an
/// uninterrupted one does (all weights and LoRA).
#[test]
fn resume_is_bit_exact() {
    let dir = scratch("dpo-resume");
    let ckpt = tiny_checkpoint(&dir, 6);
    let data = dir.join("prefs.jsonl");
    write_mixed(&data, &a_rankings(16, false, 1));
    for lora in [false, true] {
        // 12 training rankings → 36 pairs, 3 steps an epoch at FAST's batch of 16.
        let mut flags = vec!["--epochs", "2"];
        if lora {
            flags.extend(["--lora", "2"]);
        }
        let full = dir.join(format!("full-{lora}"));
        let o = dpo(&ckpt, &data, &full, &flags);
        assert!(o.status.success(), "{}", stderr(&o));
        let part = dir.join(format!("part-{lora}"));
        let o = dpo(
            &ckpt,
            &data,
            &part,
            &[&flags[..], &["--stop-at", "2"]].concat(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
        let p = part.to_str().unwrap();
        let o = palm(&["dpo", "--resume", p, "--stop-at", "3", "--device", "cpu"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = palm(&["dpo", "--resume", p, "--device", "cpu"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("done:"), "{}", stderr(&o));
        common::assert_resumed_like(
            &full,
            &part,
            &["model.safetensors", "dpo_state.safetensors"],
        );
    }
    let o = palm(&["dpo", "--resume", "x", "--beta", "0.5"]);
    assert!(!o.status.success() && stderr(&o).contains("cannot be used with"));
    std::fs::remove_dir_all(&dir).unwrap();
}
