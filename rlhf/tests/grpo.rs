//! GRPO: groups are G consecutive responses to one prompt with standardised advantages, `palm
//! grpo` raises a rule reward on held-out prompts with a bounded KL, resumes bit-exactly, and
//! bad inputs give one clear error.

mod common;
mod rl_common;

use common::{assert_one_error, palm, scratch, stderr, tiny_checkpoint};
use palm_engine::Rng;
use palm_model::{LoraScope, PalmConfig, PalmParams};
use palm_rlhf::grpo::{self, GrpoFlags, GrpoSettings};
use palm_rlhf::labelers::Labeler;
use palm_rlhf::rl_run::{Learner, NoExtra};
use palm_rlhf::rollout::{self, Sampling};
use rl_common::{
    deterministic, held_out_score, metrics, pretrain, rl_settings, tensors, write_prompts,
};
use std::path::Path;
use std::process::Output;

fn settings(group: usize) -> GrpoSettings {
    let grpo = GrpoFlags {
        batch: 2,
        group,
        beta: 0.04,
        clip: 0.2,
        epochs: 1,
        minibatches: 1,
    };
    rl_settings(grpo, Some(u32::from(b'\n')))
}

#[test]
fn groups_standardise_scores_per_prompt() {
    let mut rng = Rng::new(2);
    let params = PalmParams::init(&PalmConfig::new(256, 32, 1, 2, 16), &mut rng).unwrap();
    let learner = Learner {
        actor: LoraScope::new(&params.config, "actor", 4, None, &mut rng).unwrap(),
        extra: NoExtra,
    };
    let s = settings(3);
    let prompts: Vec<Vec<u32>> = [b"Hi: ".as_slice(), b"Tell me: ".as_slice()]
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.iter().map(|&b| u32::from(b)).collect(), 3))
        .collect();
    let sampling = Sampling {
        temperature: 1.0,
        max_new: 6,
        eos: s.actor.eos.0,
    };
    let episodes =
        rollout::sample_episodes(&params, Some(&learner.actor), &prompts, &sampling, &mut rng)
            .unwrap();
    let scores = vec![1.0, 2.0, 6.0, 5.0, 5.0, 5.0];
    let g = grpo::groups(&params, &learner, &episodes, scores, &s).unwrap();
    // Group 1: mean 3, std (unbiased) √7; group 2 all alike, so no signal.
    let sd = 7f32.sqrt();
    let want = [-2.0 / sd, -1.0 / sd, 3.0 / sd, 0.0, 0.0, 0.0];
    for (a, w) in g.advantages.iter().zip(want) {
        assert!((a - w).abs() < 1e-3, "{:?} vs {want:?}", g.advantages);
    }
    // The fresh actor is the reference: the KL term starts at exactly 0.
    assert_eq!(g.old_logp, g.ref_logp);
    // Scores of a group count only against their own group.
    assert!(grpo::groups(&params, &learner, &episodes, vec![1.0; 5], &s).is_err());
}

fn grpo_cmd(policy: &Path, prompts: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut a = vec![
        "grpo",
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
fn grpo_raises_a_rule_reward_on_held_out_prompts() {
    let dir = scratch("grpo-learn");
    let base = pretrain(&dir);
    let prompts = dir.join("prompts.jsonl");
    write_prompts(&prompts, &["now", "then", "so", "please", "ok", "well"]);
    let out = dir.join("grpo");
    let t = std::time::Instant::now();
    let o = grpo_cmd(
        &base,
        &prompts,
        &out,
        &[
            "--rule",
            "count:a",
            "--updates",
            "30",
            "--batch",
            "4",
            "--group",
            "4",
            "--max-new",
            "12",
            "--epochs",
            "2",
            "--minibatches",
            "2",
            "--lr",
            "3e-3",
            "--beta",
            "0.02",
            "--seed",
            "5",
        ],
    );
    let secs = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", stderr(&o));
    eprintln!("grpo: {secs:.1}s\n{}", stderr(&o));
    let m = metrics(&out);
    assert_eq!(m.len(), 30);
    for key in [
        "score_mean",
        "score_std",
        "kl",
        "loss",
        "entropy",
        "clip_frac",
        "ratio_mean",
        "flat_groups",
        "response_length",
        "eos_rate",
        "rollout_s",
        "train_s",
        "beta",
    ] {
        assert!(m[0][key].is_number(), "{key} missing: {}", m[0]);
    }
    assert_eq!(m[0]["kl"].as_f64(), Some(0.0));

    let rule = Labeler::Count('a');
    let held = ["yes", "and"];
    let (before, se_b) = held_out_score(&base, false, &held, &rule);
    let (after, se_a) = held_out_score(&out.join("model.safetensors"), true, &held, &rule);
    eprintln!("held-out count:a {before:.3}±{se_b:.3} → {after:.3}±{se_a:.3}");
    let se = (se_a * se_a + se_b * se_b).sqrt();
    assert!(
        after - before > (6.0 * se).max(1.0),
        "score {before:.3} → {after:.3} (se {se:.3})"
    );
    let kls: Vec<f64> = m.iter().map(|v| v["kl"].as_f64().unwrap()).collect();
    eprintln!("kl per update: {kls:?}");
    assert!(kls.iter().all(|k| k.is_finite() && *k >= 0.0 && *k < 20.0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_is_bit_exact() {
    let dir = scratch("grpo-resume");
    let ckpt = tiny_checkpoint(&dir, 4);
    let prompts = dir.join("prompts.jsonl");
    write_prompts(&prompts, &["a", "bb", "ccc"]);
    let flags = [
        "--rule",
        "length:5",
        "--updates",
        "4",
        "--batch",
        "2",
        "--group",
        "3",
        "--max-new",
        "6",
        "--eos",
        "e",
        "--epochs",
        "2",
        "--minibatches",
        "2",
        "--lr",
        "1e-2",
        "--seed",
        "3",
    ];
    let (full, part) = (dir.join("full"), dir.join("part"));
    let o = grpo_cmd(&ckpt, &prompts, &full, &flags);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut stop = flags.to_vec();
    stop.extend(["--stop-at", "1"]);
    let o = grpo_cmd(&ckpt, &prompts, &part, &stop);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = palm(&["grpo", "--resume", part.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        deterministic(&metrics(&full)),
        deterministic(&metrics(&part))
    );
    for file in ["model.safetensors", "rl_state.safetensors"] {
        assert_eq!(
            tensors(&full.join(file)),
            tensors(&part.join(file)),
            "{file}"
        );
    }
    // A GRPO state is not a PPO one.
    assert_one_error(
        &palm(&["ppo", "--resume", part.to_str().unwrap()]),
        "palm-grpo-state",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_give_one_clear_error() {
    let dir = scratch("grpo-bad");
    let ckpt = tiny_checkpoint(&dir, 1);
    let prompts = dir.join("prompts.jsonl");
    write_prompts(&prompts, &["a", "b"]);
    let out = dir.join("out");
    let rule = ["--rule", "length:4", "--updates", "1"];
    assert_one_error(
        &grpo_cmd(&ckpt, &dir.join("missing.jsonl"), &out, &rule),
        "missing.jsonl",
    );
    assert_one_error(
        &grpo_cmd(&ckpt, &prompts, &out, &["--rule", "length:x"]),
        "length:N",
    );
    assert_one_error(
        &grpo_cmd(&ckpt, &prompts, &out, &["--rule", "afinn", "--group", "1"]),
        "--group",
    );
    assert_one_error(
        &grpo_cmd(&ckpt, &prompts, &out, &["--reward", ckpt.to_str().unwrap()]),
        "not a reward model",
    );
    assert!(!out.exists(), "a failed run created its folder");
    std::fs::remove_dir_all(&dir).unwrap();
}
