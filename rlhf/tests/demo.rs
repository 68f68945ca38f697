//! `palm rlhf-demo` end to end at the quick preset: the artefacts exist and are well-formed
//! (summary.json with the table's fields, metrics.jsonl with a line per update, curves.svg with
//! the three curves), and the gold score rises on held-out prompts beyond sampling noise.
//!
//! The gold rule here is `count:e`, not AFINN: a model trained for seconds writes too few real
//! words for AFINN to score anything but 0, while the count of a letter varies from the start.
//! The reduced preset's AFINN run is the README's (minutes, not a test).

mod common;

use common::{assert_one_error, palm, scratch, stderr, stdout};
use serde_json::Value;
use std::path::Path;

const UPDATES: usize = 40;

fn demo(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut a = vec![
        "rlhf-demo",
        "--preset",
        "quick",
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    palm(&a)
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for k in path {
        x = &x[*k];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

/// Element names of an SVG document, checking that it is well-formed: one root, every element
/// closed in order, attribute quotes balanced.
fn svg_elements(svg: &str) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let mut rest = svg.trim();
    assert!(rest.starts_with("<svg "), "not an SVG document");
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("unclosed tag") + start;
        let tag = &rest[start + 1..end];
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            if stack.is_empty() {
                assert!(rest[end + 1..].trim().is_empty(), "content after the root");
            }
        } else {
            let name = tag.split_whitespace().next().unwrap().trim_end_matches('/');
            seen.push(name.to_string());
            if !tag.ends_with('/') {
                stack.push(name.to_string());
            }
        }
        rest = &rest[end + 1..];
    }
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    seen
}

#[test]
fn quick_demo_writes_its_artefacts_and_raises_the_gold_score() {
    let dir = scratch("demo");
    let out = dir.join("demo");
    let t = std::time::Instant::now();
    let o = demo(&out, &["--labeler", "count:e"]);
    let secs = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", stderr(&o));
    eprintln!("demo: {secs:.1}s\n{}\n{}", stderr(&o), stdout(&o));

    // The run folder of every stage.
    for f in [
        "pretrain/model.safetensors",
        "prompts.jsonl",
        "held_out_prompts.jsonl",
        "rankings.jsonl",
        "reward/reward.safetensors",
        "model.safetensors",
        "rl_state.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }

    // metrics.jsonl: one line per update with the curves' values.
    let metrics: Vec<Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(metrics.len(), UPDATES);
    for (i, m) in metrics.iter().enumerate() {
        assert_eq!(m["update"].as_u64(), Some(i as u64 + 1));
        for key in ["score_mean", "gold_score_mean", "kl", "entropy"] {
            assert!(num(m, &[key]).is_finite(), "{key} in {m}");
        }
    }
    // The actor starts as the reference.
    assert_eq!(num(&metrics[0], &["kl"]), 0.0);

    // curves.svg: well-formed, a legend and a polyline of every update for each curve.
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    let elements = svg_elements(&svg);
    assert_eq!(elements[0], "svg");
    for name in [
        "reward-model score",
        "gold score (labeler)",
        "KL",
        "entropy",
    ] {
        let line = svg
            .lines()
            .find(|l| l.starts_with(&format!(r#"<polyline data-series="{name}""#)))
            .unwrap_or_else(|| panic!("no polyline for {name}"));
        let points = line.split(r#"points=""#).nth(1).unwrap();
        let points = &points[..points.find('"').unwrap()];
        assert_eq!(points.split(' ').count(), UPDATES, "{name}");
        assert!(
            svg.contains(&format!(">{name}</text>")),
            "legend lacks {name}"
        );
    }
    assert!(svg.contains(r#"class="xtick""#) && svg.contains(r#"class="ytick""#));

    // summary.json: the table's numbers.
    let sum: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let held = &sum["held_out"];
    for side in ["before", "after"] {
        for key in [
            "gold_mean",
            "gold_std",
            "gold_se",
            "reward_mean",
            "reward_std",
            "kl_mean",
            "length_mean",
            "eos_rate",
            "prompts",
            "samples",
        ] {
            assert!(num(held, &[side, key]).is_finite(), "{side}.{key}");
        }
    }
    let prompts = num(held, &["before", "prompts"]);
    assert!(prompts >= 8.0, "{prompts} held-out prompts");
    let acc = num(&sum, &["reward_model", "accuracy"]);
    assert!((0.0..=1.0).contains(&acc));
    assert!(num(&sum, &["reward_model", "held_out_pairs"]) >= 1.0);
    assert!(sum["samples"].as_array().is_some_and(|s| !s.is_empty()));
    assert!(num(&sum, &["timings", "total_s"]) > 0.0);
    assert_eq!(sum["labeler"], "count:e");
    // The table is printed.
    let table = stdout(&o);
    for row in [
        "gold score (count:e)",
        "reward-model score",
        "KL to reference",
        "response length",
    ] {
        assert!(table.contains(row), "no '{row}' row:\n{table}");
    }

    // The gain is the paired per-prompt difference the summary says it is.
    let per = |side: &str| -> Vec<f64> {
        held[side]["per_prompt_gold"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (before, after) = (per("before"), per("after"));
    assert_eq!(before.len(), prompts as usize);
    let diffs: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let n = diffs.len() as f64;
    let gain = diffs.iter().sum::<f64>() / n;
    let sd = (diffs.iter().map(|d| (d - gain).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let se = sd / n.sqrt();
    assert!((gain - num(held, &["gold_gain"])).abs() < 1e-4);
    assert!((se - num(held, &["gold_gain_se"])).abs() < 1e-4);
    // The rise: the mean of the same-seed draws is higher by 4 standard errors of the paired
    // difference (p < 1e-4 by luck), and on most prompts.
    eprintln!("held-out gold gain {gain:.3} ± {se:.3}");
    assert!(gain > 4.0 * se && gain > 0.0, "gain {gain:.3} ± {se:.3}");
    let up = num(held, &["prompts_improved"]);
    let down = num(held, &["prompts_worse"]);
    assert!(up > 2.0 * down, "{up} prompts up, {down} down");
    // The KL to the reference: none before, bounded after.
    assert_eq!(num(held, &["before", "kl_mean"]), 0.0);
    let kl = num(held, &["after", "kl_mean"]);
    assert!(kl.is_finite() && kl > -1.0 && kl < 20.0, "KL {kl}");

    // The result is a PPO run folder: `palm sample --lora actor` reads it.
    let o = palm(&[
        "sample",
        "--checkpoint",
        out.join("model.safetensors").to_str().unwrap(),
        "--lora",
        "actor",
        "--prompt",
        "We ",
        "--max-tokens",
        "4",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_flag_has_help_and_bad_inputs_give_one_clear_error() {
    assert!(common::documented_flags(&["rlhf-demo"]) >= 15);

    let dir = scratch("demo-bad");
    let out = dir.join("out");
    assert_one_error(
        &palm(&[
            "rlhf-demo",
            "--preset",
            "huge",
            "--out",
            out.to_str().unwrap(),
        ]),
        "unknown preset 'huge'",
    );
    assert_one_error(&demo(&out, &["--samples", "1"]), "--samples");
    assert_one_error(
        &demo(
            &out,
            &["--policy", dir.join("none.safetensors").to_str().unwrap()],
        ),
        "none.safetensors",
    );
    assert_one_error(&demo(&out, &["--prompts", "100000"]), "sentence openings");
    // Found by the flag fuzzing: the two counts once wrapped around past 2^64 and panicked.
    assert_one_error(
        &demo(
            &out,
            &["--prompts", "18446744073709551615", "--held-out", "2"],
        ),
        "sentence openings",
    );
    assert_one_error(&demo(&out, &["--device", "tpu"]), "unknown device 'tpu'");
    std::fs::remove_dir_all(&dir).unwrap();
}
