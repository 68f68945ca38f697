//! PPO: rollout log-probs are a fresh forward's, the reference equals the fresh actor (KL 0 at
//! the start), the prompt, padding and tokens after EOS take no part in the losses, `palm ppo`
//! raises a rule reward on held-out prompts with a bounded KL, resumes bit-exactly, and bad
//! inputs give one clear error.

mod common;
mod rl_common;

use common::{assert_one_error, palm, scratch, stderr, stdout, tiny_checkpoint};
use palm_engine::{Rng, Tensor, no_grad};
use palm_model::{Forward, LoraScope, PalmConfig, PalmParams};
use palm_rlhf::critic::Critic;
use palm_rlhf::labelers::Labeler;
use palm_rlhf::ppo::{self, KlEstimator, PpoFlags, PpoSettings};
use palm_rlhf::rl_run::Learner;
use palm_rlhf::rollout::{self, Episode, Padded, Sampling};
use rl_common::{
    deterministic, held_out_score, metrics, pretrain, rl_settings, tensors, write_prompts,
};
use std::path::Path;
use std::process::Output;

fn tiny_params(seed: u64) -> PalmParams {
    let mut rng = Rng::new(seed);
    PalmParams::init(&PalmConfig::new(256, 32, 1, 2, 16), &mut rng).unwrap()
}

/// Adapters with B ≠ 0, so the actor differs from the reference.
fn perturbed_lora(params: &PalmParams, name: &str, seed: u64) -> LoraScope {
    let mut rng = Rng::new(seed);
    let mut l = LoraScope::new(&params.config, name, 4, None, &mut rng).unwrap();
    for t in l.tensors_mut() {
        if t.dims()[0] == 4 {
            *t = Tensor::randn(t.dims(), 0.05, &mut rng).as_var();
        }
    }
    l
}

/// log softmax(logits[t])[target] in f64, by hand.
fn log_softmax_at(row: &[f32], target: u32) -> f64 {
    let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    row[target as usize] as f64 - lse
}

#[test]
fn rollout_logprobs_are_a_fresh_forwards_and_kl_starts_at_zero() {
    let params = tiny_params(3);
    let actor = perturbed_lora(&params, "actor", 4);
    let prompts: Vec<Vec<u32>> = ["Hi: ", "Tell me: ", "Hi: ", "Q: "]
        .iter()
        .map(|p| palm_model::Tokenizer::bytes().encode(p).unwrap())
        .collect();
    let s = Sampling {
        temperature: 1.0,
        max_new: 10,
        eos: Some(u32::from(b'e')),
    };
    let episodes =
        rollout::sample_episodes(&params, Some(&actor), &prompts, &s, &mut Rng::new(9)).unwrap();
    // Rows keep their prompts' order though they were decoded in groups of equal length.
    for (e, p) in episodes.iter().zip(&prompts) {
        assert_eq!(&e.prompt, p);
        assert!(!e.response.is_empty() && e.response.len() <= 10);
        assert_eq!(e.ended, e.response.last() == Some(&u32::from(b'e')));
    }
    let again =
        rollout::sample_episodes(&params, Some(&actor), &prompts, &s, &mut Rng::new(9)).unwrap();
    assert_eq!(episodes, again, "sampling is not deterministic for a seed");

    let batch = Padded::new(&episodes, s.eos).unwrap();
    let logp = rollout::logprobs_host(&params, Some(&actor), &batch, 0.7).unwrap();
    let n = batch.n;
    let _g = no_grad();
    for (row, e) in episodes.iter().enumerate() {
        let tokens: Vec<u32> = e.prompt.iter().chain(&e.response).copied().collect();
        let len = tokens.len() - 1;
        let input = Tensor::from_vec(tokens[..len].to_vec(), &[1, len]).unwrap();
        let opts = &mut Forward {
            lora: Some(&actor),
            ..Default::default()
        };
        let logits = params
            .logits(&input, opts)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let mut counted = 0;
        for t in 0..n {
            let m = batch.mask[row * n + t];
            if m == 0.0 {
                continue;
            }
            counted += 1;
            let scaled: Vec<f32> = logits[t * 256..(t + 1) * 256]
                .iter()
                .map(|x| x / 0.7)
                .collect();
            let want = log_softmax_at(&scaled, tokens[t + 1]);
            let got = logp[row * n + t] as f64;
            assert!(
                (got - want).abs() < 1e-4,
                "row {row} t {t}: {got} vs {want}"
            );
        }
        assert_eq!(counted, e.response.len(), "row {row}");
    }

    // A fresh actor (B = 0) is the reference exactly: KL 0 at the first update.
    let mut rng = Rng::new(1);
    let fresh = LoraScope::new(&params.config, "actor", 4, None, &mut rng).unwrap();
    let a = rollout::logprobs_host(&params, Some(&fresh), &batch, 1.0).unwrap();
    let r = rollout::logprobs_host(&params, None, &batch, 1.0).unwrap();
    assert_eq!(a, r);
}

fn settings(eos: Option<u32>) -> PpoSettings {
    let ppo = PpoFlags {
        batch: 2,
        kl: KlEstimator::K1,
        beta: 0.1,
        target_kl: None,
        kl_horizon: 10000.0,
        score_clip: None,
        missing_eos_penalty: None,
        gamma: 1.0,
        lam: 0.95,
        clip: 0.2,
        value_clip: 0.2,
        vf_coef: 0.1,
        ent_coef: 0.01,
        ppo_epochs: 1,
        minibatches: 1,
    };
    rl_settings(ppo, eos)
}

#[test]
fn prompt_padding_and_post_eos_tokens_take_no_part() {
    let t = |s: &str| palm_model::Tokenizer::bytes().encode(s).unwrap();
    let nl = u32::from(b'\n');
    let episodes = vec![
        Episode {
            prompt: t("ab"),
            response: t("cd\n"),
            ended: true,
        },
        // Tokens after the first EOS (never sampled, but a batch may be built from any rows).
        Episode {
            prompt: t("xyz"),
            response: t("q\nrs"),
            ended: true,
        },
    ];
    let batch = Padded::new(&episodes, Some(nl)).unwrap();
    // Targets are the next tokens: row 0 "b c d \n" then padding, row 1 "y z q \n r s".
    assert_eq!(batch.n, 6);
    assert_eq!(
        batch.mask,
        vec![0., 1., 1., 1., 0., 0., 0., 0., 1., 1., 0., 0.]
    );
    assert_eq!(batch.lengths(), vec![3.0, 2.0]);

    let params = tiny_params(5);
    let mut rng = Rng::new(6);
    let learner = Learner {
        actor: perturbed_lora(&params, "actor", 7),
        extra: Critic::new(&params.config, 4, &mut rng).unwrap(),
    };
    let s = settings(Some(nl));
    let scores = vec![2.0, -1.0];
    let exp = ppo::experience(
        &params,
        &learner,
        &episodes,
        scores.clone(),
        s.algo.beta,
        &s,
    )
    .unwrap();
    for i in 0..batch.mask.len() {
        if batch.mask[i] == 0.0 {
            let zero = [exp.kl[i], exp.rewards[i], exp.advantages[i], exp.returns[i]];
            assert_eq!(zero, [0.0; 4], "position {i}");
        }
    }
    // The score lands on the last counted token, with that token's KL penalty.
    for (row, last) in [(0usize, 3usize), (1, 3)] {
        let i = row * 6 + last;
        let want = scores[row] - s.algo.beta * exp.kl[i];
        assert!((exp.rewards[i] - want).abs() < 1e-6, "row {row}");
    }
    // The actor differs from the reference, so the KL of counted tokens is not 0.
    assert!(exp.kl.iter().any(|&k| k != 0.0));

    let all = [0usize, 1];
    let (base, _) = ppo::minibatch_loss(&params, &learner, &exp, &all, &s).unwrap();
    let base = base.loss.to_scalar().unwrap();
    // Garbage wherever the mask is 0 — rollout numbers and the padded tokens themselves —
    // leaves the loss as it was.
    let mut junk = ppo::Experience {
        batch: exp.batch.clone(),
        scores: exp.scores.clone(),
        old_logp: exp.old_logp.clone(),
        ref_logp: exp.ref_logp.clone(),
        values: exp.values.clone(),
        kl: exp.kl.clone(),
        rewards: exp.rewards.clone(),
        advantages: exp.advantages.clone(),
        returns: exp.returns.clone(),
    };
    for i in 0..junk.batch.mask.len() {
        if junk.batch.mask[i] == 0.0 {
            junk.old_logp[i] = -300.0;
            junk.values[i] = 1e3;
            junk.advantages[i] = 1e3;
            junk.returns[i] = -1e3;
        }
    }
    // Row 0's padding inputs (positions 5, 6 of its tokens) may be anything under the causal
    // mask: they only feed positions that are not counted.
    junk.batch.inputs[5] = 77;
    junk.batch.targets[4] = 200;
    junk.batch.targets[5] = 201;
    let (j, _) = ppo::minibatch_loss(&params, &learner, &junk, &all, &s).unwrap();
    let j = j.loss.to_scalar().unwrap();
    assert!(
        (j - base).abs() <= 1e-6 * base.abs().max(1.0),
        "{j} vs {base}"
    );

    // Penalty for a missing EOS, then the clip.
    let cut = Episode {
        prompt: t("a"),
        response: t("bb"),
        ended: false,
    };
    let shaped = ppo::shape_scores(
        &[5.0, 5.0, -9.0],
        &[episodes[0].clone(), cut.clone(), cut],
        Some(1.5),
        Some(4.0),
    );
    assert_eq!(shaped, vec![4.0, 3.5, -4.0]);
}

fn ppo_cmd(policy: &Path, prompts: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut a = vec![
        "ppo",
        "--policy",
        policy.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    palm(&a)
}

#[test]
fn ppo_raises_a_rule_reward_on_held_out_prompts() {
    let dir = scratch("ppo-learn");
    let t = std::time::Instant::now();
    let base = pretrain(&dir);
    eprintln!("pretraining: {:.1}s", t.elapsed().as_secs_f64());
    let prompts = dir.join("prompts.jsonl");
    write_prompts(&prompts, &["now", "then", "so", "please", "ok", "well"]);
    let out = dir.join("ppo");
    let t = std::time::Instant::now();
    let o = ppo_cmd(
        &base,
        &prompts,
        &out,
        &[
            "--rule",
            "count:a",
            "--updates",
            "30",
            "--batch",
            "16",
            "--max-new",
            "12",
            "--ppo-epochs",
            "2",
            "--minibatches",
            "2",
            "--lr",
            "3e-3",
            "--beta",
            "0.02",
            "--seed",
            "5",
            "--sample-every",
            "10",
        ],
    );
    let secs = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", stderr(&o));
    eprintln!("ppo: {secs:.1}s\n{}", stderr(&o));
    let m = metrics(&out);
    assert_eq!(m.len(), 30);
    for key in [
        "score_mean",
        "score_std",
        "kl",
        "non_score_reward",
        "entropy",
        "approx_kl",
        "clip_frac",
        "policy_loss",
        "value_loss",
        "value_clip_frac",
        "explained_variance",
        "response_length",
        "eos_rate",
        "rollout_s",
        "train_s",
        "beta",
    ] {
        assert!(m[0][key].is_number(), "{key} missing: {}", m[0]);
    }
    // The actor starts as the reference.
    assert_eq!(m[0]["kl"].as_f64(), Some(0.0));
    assert!(stderr(&o).contains("sample (score"));

    let rule = Labeler::Count('a');
    let held = ["yes", "and"];
    let (before, se_b) = held_out_score(&base, false, &held, &rule);
    let trained = out.join("model.safetensors");
    let (after, se_a) = held_out_score(&trained, true, &held, &rule);
    eprintln!("held-out count:a {before:.3}±{se_b:.3} → {after:.3}±{se_a:.3}");
    // Far beyond sampling noise: 6 standard errors of the difference, and at least +1 'a'.
    let se = (se_a * se_a + se_b * se_b).sqrt();
    assert!(
        after - before > (6.0 * se).max(1.0),
        "score {before:.3} → {after:.3} (se {se:.3})"
    );
    // The KL to the reference stays bounded (nats per response).
    let kls: Vec<f64> = m.iter().map(|v| v["kl"].as_f64().unwrap()).collect();
    eprintln!("kl per update: {kls:?}");
    assert!(kls.iter().all(|k| k.is_finite() && *k > -1.0 && *k < 20.0));

    // The result samples with `palm sample --lora actor`.
    let o = palm(&[
        "sample",
        "--checkpoint",
        trained.to_str().unwrap(),
        "--lora",
        "actor",
        "--prompt",
        "yes say: ",
        "--max-tokens",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("yes say: "));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_is_bit_exact() {
    let dir = scratch("ppo-resume");
    let ckpt = tiny_checkpoint(&dir, 3);
    let prompts = dir.join("prompts.jsonl");
    write_prompts(&prompts, &["a", "bb", "ccc"]);
    let flags = [
        "--rule",
        "length:6",
        "--updates",
        "4",
        "--batch",
        "4",
        "--max-new",
        "6",
        "--eos",
        "e",
        "--ppo-epochs",
        "2",
        "--minibatches",
        "2",
        "--lr",
        "1e-2",
        "--target-kl",
        "0.5",
        "--kl-horizon",
        "20",
        "--seed",
        "2",
    ];
    let (full, part) = (dir.join("full"), dir.join("part"));
    let o = ppo_cmd(&ckpt, &prompts, &full, &flags);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut stop = flags.to_vec();
    stop.extend(["--stop-at", "1"]);
    let o = ppo_cmd(&ckpt, &prompts, &part, &stop);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    let first_model = std::fs::read(part.join("model.safetensors")).unwrap();
    let p = part.to_str().unwrap();
    let o = palm(&["ppo", "--resume", p, "--stop-at", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics(&part).len(), 2);
    // As if killed after update 2's state file was written but before its model was, and
    // after the next update's metrics line was half written: the resume repairs both.
    std::fs::write(part.join("model.safetensors"), first_model).unwrap();
    let mut m = std::fs::OpenOptions::new()
        .append(true)
        .open(part.join("metrics.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut m, b"{\"update\":3,\"score_me").unwrap();
    let o = palm(&["ppo", "--resume", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is behind the run's state"),
        "{}",
        stderr(&o)
    );

    let (a, b) = (metrics(&full), metrics(&part));
    assert_eq!(deterministic(&a), deterministic(&b));
    // The adaptive controller moved β, and the resumed run continued from the saved one.
    assert_ne!(a[0]["beta"], a[3]["beta"]);
    for file in ["model.safetensors", "rl_state.safetensors"] {
        assert_eq!(
            tensors(&full.join(file)),
            tensors(&part.join(file)),
            "{file}"
        );
    }
    // Nothing left to do: a clear note, no change.
    let o = palm(&["ppo", "--resume", part.to_str().unwrap()]);
    assert!(o.status.success() && stderr(&o).contains("nothing to do"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_give_one_clear_error() {
    let dir = scratch("ppo-bad");
    let ckpt = tiny_checkpoint(&dir, 1);
    let prompts = dir.join("prompts.jsonl");
    write_prompts(&prompts, &["a", "b"]);
    let out = dir.join("out");
    let rule = ["--rule", "count:a", "--updates", "1", "--batch", "2"];
    let missing = dir.join("missing.jsonl");
    assert_one_error(&ppo_cmd(&ckpt, &missing, &out, &rule), "missing.jsonl");
    assert_one_error(
        &ppo_cmd(&dir.join("none.safetensors"), &prompts, &out, &rule),
        "none.safetensors",
    );
    assert_one_error(
        &ppo_cmd(&ckpt, &prompts, &out, &["--rule", "count:ab"]),
        "count:CHAR",
    );
    assert_one_error(&ppo_cmd(&ckpt, &prompts, &out, &[]), "--rule");
    // A plain model is not a reward model.
    assert_one_error(
        &ppo_cmd(&ckpt, &prompts, &out, &["--reward", ckpt.to_str().unwrap()]),
        "not a reward model",
    );
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n").unwrap();
    assert_one_error(&ppo_cmd(&ckpt, &bad, &out, &rule), "bad.jsonl:2:");
    assert_one_error(
        &ppo_cmd(&ckpt, &prompts, &out, &["--rule", "afinn", "--beta=-1"]),
        "--beta",
    );
    assert!(!out.exists(), "a failed run created its folder");
    assert_one_error(
        &palm(&["ppo", "--resume", dir.to_str().unwrap()]),
        "rl_state.safetensors",
    );

    // A run whose model file is swapped for another model's: the state does not match it.
    let run = dir.join("run");
    let o = ppo_cmd(&ckpt, &prompts, &run, &rule);
    assert!(o.status.success(), "{}", stderr(&o));
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let mut rng = Rng::new(1);
    let big = PalmParams::init(&PalmConfig::new(256, 48, 1, 2, 16), &mut rng).unwrap();
    palm_model::checkpoint::save_model(&run.join("model.safetensors"), &big, &[]).unwrap();
    assert_one_error(
        &palm(&["ppo", "--resume", run.to_str().unwrap(), "--updates", "2"]),
        "does not match",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reward_model_scores_responses_without_their_eos() {
    use palm_rlhf::reward::{Pooling, RewardModel};
    use palm_rlhf::rollout::RewardSource;
    let dir = scratch("ppo-rm");
    let mut rng = Rng::new(8);
    let rm = RewardModel::new(tiny_params(9), Pooling::Last, &mut rng).unwrap();
    let rm_path = dir.join("rm.safetensors");
    rm.save(&rm_path).unwrap();
    let t = |s: &str| palm_model::Tokenizer::bytes().encode(s).unwrap();
    let episodes = vec![
        Episode {
            prompt: t("Hi: "),
            response: t("good\n"),
            ended: true,
        },
        Episode {
            prompt: t("Say it: "),
            response: t("bad news"),
            ended: false,
        },
        Episode {
            prompt: t("Hi: "),
            response: t("\n"),
            ended: true,
        },
    ];
    let source = RewardSource::load(Some(&rm_path), None, &rm.trunk.tokenizer).unwrap();
    // Two per forward, so the first forward pads its shorter row.
    let got = source.score(&episodes, 2).unwrap();
    let want = [
        rm.score_texts("Hi: ", &["good"]).unwrap()[0],
        rm.score_texts("Say it: ", &["bad news"]).unwrap()[0],
        rm.score_texts("Hi: ", &[""]).unwrap()[0],
    ];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
    assert!(got[0] != got[1] && got[0] != got[2]);

    // And `palm ppo --reward` trains against it.
    let ckpt = tiny_checkpoint(&dir, 2);
    let prompts = dir.join("prompts.jsonl");
    write_prompts(&prompts, &["a", "b"]);
    let out = dir.join("run");
    let flags = ["--reward", rm_path.to_str().unwrap(), "--updates", "2"];
    let o = ppo_cmd(
        &ckpt,
        &prompts,
        &out,
        &[&flags[..], &["--batch", "4", "--max-new", "6"]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("a reward model (last pooling)"),
        "{}",
        stderr(&o)
    );
    let m = metrics(&out);
    assert_eq!(m.len(), 2);
    assert!(m[1]["score_std"].as_f64().unwrap() > 0.0, "{}", m[1]);
    std::fs::remove_dir_all(&dir).unwrap();
}
