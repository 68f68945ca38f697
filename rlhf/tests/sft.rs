//! Supervised fine-tuning: prompt tokens are never targets, padding is ignored, and `palm sft`
//! learns completions from a checkpoint (and resumes bit-exactly through the shared loop).

use palm_rlhf::data::{SftRecord, write_jsonl};
use palm_rlhf::sft::{Example, batch_tensors};
mod common;

use common::{TINY_MODEL, palm, scratch, stderr};
use std::path::Path;

/// An example under the byte tokenizer.
fn example(r: &SftRecord, max_len: usize) -> Option<Example> {
    Example::new(r, max_len, &palm_model::Tokenizer::bytes()).unwrap()
}

fn rec(prompt: &str, completion: &str) -> SftRecord {
    SftRecord {
        prompt: prompt.into(),
        completion: completion.into(),
    }
}

#[test]
fn only_completion_tokens_are_targets() {
    let e = example(&rec("ab", "cd"), 100).unwrap();
    // tokens a b c d: inputs a b c, targets (b→masked) c d
    assert_eq!(e.inputs, vec![97, 98, 99]);
    assert_eq!(e.targets, vec![0, 99, 100]);
    // An empty prompt trains on every token after the first.
    let e = example(&rec("", "xyz"), 100).unwrap();
    assert_eq!(e.targets, vec![121, 122]);
    // Cut to max_len + 1 tokens; a prompt that fills the window leaves nothing to learn.
    let e = example(&rec("ab", "cdef"), 3).unwrap();
    assert_eq!((e.inputs.len(), e.targets), (3, vec![0, 99, 100]));
    assert!(example(&rec("abcdef", "gh"), 4).is_none());
}

#[test]
fn batches_pad_with_ignored_zeros() {
    let (a, b) = (
        example(&rec("a", "bc"), 10).unwrap(),
        example(&rec("a", "bcde"), 10).unwrap(),
    );
    let (inputs, targets) = batch_tensors(&[&a, &b]).unwrap();
    assert_eq!(inputs.dims(), &[2, 4]);
    assert_eq!(
        inputs.to_vec::<u32>().unwrap(),
        vec![97, 98, 0, 0, 97, 98, 99, 100]
    );
    assert_eq!(
        targets.to_vec::<u32>().unwrap(),
        vec![98, 99, 0, 0, 98, 99, 100, 101]
    );
}

fn val_losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["val_loss"].as_f64())
        .collect()
}

fn train_losses(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap()
                .get("loss")
                .map(|v| v.to_string())
        })
        .collect()
}

#[test]
fn sft_learns_completions_and_resumes() {
    let dir = scratch("e2e");
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, "Ask and answer. ".repeat(300)).unwrap();
    let base = dir.join("base");
    let mut a = vec![
        "train",
        "--data",
        corpus.to_str().unwrap(),
        "--out",
        base.to_str().unwrap(),
        "--steps",
        "10",
    ];
    a.extend([
        "--batch",
        "4",
        "--seq-len",
        "32",
        "--val-windows",
        "2",
        "--sample-tokens",
        "8",
    ]);
    a.extend(TINY_MODEL);
    let o = palm(&a);
    assert!(o.status.success(), "{}", stderr(&o));

    let colors = [
        "red", "blue", "green", "gold", "gray", "pink", "teal", "plum",
    ];
    let records: Vec<SftRecord> = (0..40)
        .map(|i| {
            rec(
                &format!("Q{i}: favourite colour? A:"),
                &format!(" {} is my favourite.", colors[i % 8]),
            )
        })
        .collect();
    let data = dir.join("sft.jsonl");
    write_jsonl(&data, &records).unwrap();
    let ckpt = base.join("model.safetensors");
    let run = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "sft",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ];
        a.extend([
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "60",
            "--val-every",
            "10",
            "--lr",
            "3e-3",
        ]);
        a.extend([
            "--batch",
            "8",
            "--seq-len",
            "48",
            "--warmup",
            "5",
            "--sample-every",
            "0",
            "--device",
            "cpu",
        ]);
        a.extend_from_slice(extra);
        palm(&a)
    };
    let (full, part) = (dir.join("full"), dir.join("part"));
    let o = run(&full, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = val_losses(&full);
    assert_eq!(v.len(), 6);
    assert!(
        v[5] < 0.5 * v[0],
        "completion loss did not fall enough: {v:?}"
    );

    let o = run(&part, &["--stop-at", "25"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = palm(&["sft", "--resume", part.to_str().unwrap(), "--device", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(train_losses(&full), train_losses(&part));

    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\"}\n",
    )
    .unwrap();
    let o = palm(&[
        "sft",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--data",
        bad.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("bad.jsonl:2:") && !err.contains("panicked"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
