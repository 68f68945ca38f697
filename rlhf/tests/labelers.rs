//! Labelers: rankings of hand-made responses by each rule, and `palm label` end to end (sample
//! from a tiny policy, rank, write rankings that `palm reward train` accepts).

mod common;

use common::{assert_one_error, palm, scratch, stderr, tiny_checkpoint};
use palm_rlhf::data::{PromptRecord, RankingRecord, read_jsonl, write_jsonl};
use palm_rlhf::labelers::Labeler;
use std::path::Path;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn hand_made_responses_rank_by_each_rule() {
    let responses = strings(&[
        "It was a terrible, awful day.",
        "Fine.",
        "I love it, a great and happy time!",
        "The table is brown and made of oak",
        "Not good, but no problem",
    ]);
    // AFINN by hand from data/afinn-96.csv: terrible −3 + awful −3 = −6; fine +2; love +3,
    // great +3, happy +3 = 9; no word of the table sentence is listed, 0; "not good" −2, no −1,
    // problem −2 = −5 (AFINN-96 has no phrase "no problem").
    assert_eq!(
        Labeler::Afinn.rank(responses.clone()),
        strings(&[
            "I love it, a great and happy time!",
            "Fine.",
            "The table is brown and made of oak",
            "Not good, but no problem",
            "It was a terrible, awful day.",
        ])
    );
    // Bytes: 29, 5, 34, 34, 24; closest to 30 first, the two 34s in their given order.
    assert_eq!(
        Labeler::Length(30).rank(responses.clone()),
        strings(&[
            "It was a terrible, awful day.",
            "I love it, a great and happy time!",
            "The table is brown and made of oak",
            "Not good, but no problem",
            "Fine.",
        ])
    );
    // 'a' counts: 4, 0, 4, 4, 0; ties in their given order.
    assert_eq!(
        Labeler::Count('a').rank(responses),
        strings(&[
            "It was a terrible, awful day.",
            "I love it, a great and happy time!",
            "The table is brown and made of oak",
            "Fine.",
            "Not good, but no problem",
        ])
    );
}

fn label(
    ckpt: &Path,
    prompts: &Path,
    out: &Path,
    by: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "label",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--by",
        by,
        "--out",
        out.to_str().unwrap(),
        "--samples",
        "4",
        "--max-tokens",
        "12",
        "--stop",
        "none",
    ];
    args.extend_from_slice(extra);
    palm(&args)
}

#[test]
fn label_writes_rankings_a_reward_model_trains_on() {
    let dir = scratch("label");
    let ckpt = tiny_checkpoint(&dir, 4);
    let prompts: Vec<PromptRecord> = (0..6)
        .map(|i| PromptRecord {
            prompt: format!("Tell me about {i}:"),
        })
        .collect();
    let prompts_path = dir.join("prompts.jsonl");
    write_jsonl(&prompts_path, &prompts).unwrap();
    for by in ["count:e", "length:8", "afinn"] {
        let labeler: Labeler = by.parse().unwrap();
        let out = dir.join("rankings.jsonl");
        let o = label(&ckpt, &prompts_path, &out, by, &["--seed", "5"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("wrote"), "{}", stderr(&o));
        let rankings: Vec<RankingRecord> = read_jsonl(&out).unwrap();
        // A near-uniform random policy gives distinct samples: no prompt is skipped.
        assert_eq!(rankings.len(), prompts.len());
        for (r, p) in rankings.iter().zip(&prompts) {
            assert_eq!(r.prompt, p.prompt);
            assert!((2..=4).contains(&r.responses.len()));
            let scores: Vec<i64> = r.responses.iter().map(|x| labeler.score(x)).collect();
            assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{by}: {scores:?}");
        }
        // The same seed writes the same file; another seed samples other responses.
        let again = dir.join("again.jsonl");
        assert!(
            label(&ckpt, &prompts_path, &again, by, &["--seed", "5"])
                .status
                .success()
        );
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
        let other = dir.join("other.jsonl");
        assert!(
            label(&ckpt, &prompts_path, &other, by, &["--seed", "6"])
                .status
                .success()
        );
        assert_ne!(std::fs::read(&out).unwrap(), std::fs::read(&other).unwrap());
    }
    // The last file (afinn) trains a reward model.
    let o = palm(&[
        "reward",
        "train",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--data",
        dir.join("rankings.jsonl").to_str().unwrap(),
        "--out",
        dir.join("rm").to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("rm/reward.safetensors").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn label_errors_are_clear() {
    let dir = scratch("label-bad");
    let ckpt = tiny_checkpoint(&dir, 4);
    let out = dir.join("rankings.jsonl");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"a\"}\n{\"prompt\": \"  \"}\n").unwrap();
    assert_one_error(
        &label(&ckpt, &bad, &out, "afinn", &[]),
        "bad.jsonl:2: empty prompt",
    );
    let sft = dir.join("sft.jsonl");
    std::fs::write(&sft, "{\"prompt\": \"a\", \"completion\": \"b\"}\n").unwrap();
    assert_one_error(
        &label(&ckpt, &sft, &out, "afinn", &[]),
        "sft.jsonl:1: bad record: unknown field `completion`",
    );
    let good = dir.join("prompts.jsonl");
    std::fs::write(&good, "{\"prompt\": \"a\"}\n").unwrap();
    // The output may not be an input (it would be overwritten), however it is spelled.
    let same = dir.join(".").join("prompts.jsonl");
    assert_one_error(
        &label(&ckpt, &good, &same, "afinn", &[]),
        "is the --prompts file",
    );
    assert_eq!(
        std::fs::read_to_string(&good).unwrap(),
        "{\"prompt\": \"a\"}\n"
    );
    assert_one_error(
        &label(&ckpt, &good, &ckpt, "afinn", &[]),
        "is the --checkpoint file",
    );
    // Greedy sampling gives K identical responses: nothing to rank.
    let o = label(&ckpt, &good, &out, "afinn", &["--temperature", "0"]);
    assert_one_error(&o, "no prompt of");
    assert_one_error(
        &label(&ckpt, &good, &out, "count:xy", &[]),
        "exactly one character",
    );
    assert_one_error(&label(&good, &good, &out, "afinn", &[]), "prompts.jsonl");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
