//! The `palm` binary end to end: train → sample → eval → info on a tiny model, bit-exact
//! resume, the seed's checkpoint, and bad inputs (one clear error line, non-zero exit, no panic).

mod common;

use common::{assert_same_tensors, corpus, losses, palm, scratch, stderr, stdout, train};
use std::path::{Path, PathBuf};
use std::process::Output;

/// `palm train` on `data` with every other setting at its default.
fn train_on(data: &Path) -> Output {
    palm(&["train", "--data", data.to_str().unwrap(), "--device", "cpu"])
}

fn assert_clean_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(
        err.contains(needle),
        "error should mention '{needle}': {err}"
    );
}

#[test]
fn train_sample_eval_info() {
    let dir = scratch("e2e");
    let data = corpus(&dir);
    let run = dir.join("run");
    let o = train(
        &run,
        &data,
        &[
            "--steps",
            "30",
            "--val-every",
            "10",
            "--lr",
            "3e-3",
            "--warmup",
            "5",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("bits/byte"));
    // Progress on stderr; the result, the one line a script wants, alone on stdout.
    let out = stdout(&o);
    assert!(
        out.lines().count() == 1 && out.starts_with("done: 30 steps"),
        "stdout: {out:?}"
    );
    assert!(!stderr(&o).contains("done:"));
    let ckpt = run.join("model.safetensors");
    assert!(ckpt.exists() && run.join("train_state.safetensors").exists());
    // The loss falls on this repetitive text.
    let l: Vec<f64> = losses(&run)
        .iter()
        .map(|s| s.split(':').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(l[l.len() - 1] < l[0] - 1.0, "loss did not fall: {l:?}");

    let o = palm(&[
        "sample",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--prompt",
        "We hold",
        "--max-tokens",
        "20",
        "--num",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).matches("We hold").count(), 2);
    // --json: one line per sample, what a script needs to know of it.
    let o = palm(&[
        "sample",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--prompt",
        "We hold",
        "--max-tokens",
        "20",
        "--num",
        "3",
        "--seed",
        "7",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(v["prompt"], "We hold");
        assert_eq!(v["tokens"], 20);
        assert_eq!(v["finish_reason"], "length");
        assert_eq!(v["seed"], 7);
        assert_eq!(v["sample"], i + 1);
        assert!(v["completion"].is_string());
    }

    let eval = |json: bool| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--seq-len",
            "32",
        ];
        if json {
            args.push("--json");
        }
        palm(&args)
    };
    let o = eval(false);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).trim().ends_with(&format!(
            "bits/byte over 14592 tokens of {}",
            data.display()
        )),
        "{}",
        stdout(&o)
    );
    let o = eval(true);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let (loss, bpb) = (
        v["loss"].as_f64().unwrap(),
        v["bits_per_byte"].as_f64().unwrap(),
    );
    assert!((bpb - loss / std::f64::consts::LN_2).abs() < 1e-9);
    // 14,600 bytes → (14600 − 1) / 32 = 456 windows of 32 targets.
    assert_eq!(v["tokens"].as_u64().unwrap(), 456 * 32);

    let o = palm(&["info", "--checkpoint", ckpt.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("layers.0.fn.fused_attn_ff_proj.weight"));
    let o = palm(&["info", "--checkpoint", ckpt.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["config"]["dim"], 32);
    assert!(v["parameters"].as_u64().unwrap() > 0);
    let tensors = v["tensors"].as_array().unwrap();
    assert!(
        tensors
            .iter()
            .any(|t| t["name"] == "token_emb.weight" && t["shape"] == serde_json::json!([256, 32]))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_is_bit_exact() {
    let dir = scratch("resume");
    let data = corpus(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    let common = ["--steps", "8", "--val-every", "4", "--ckpt-every", "0"];
    let o = train(&a, &data, &common);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut stop = common.to_vec();
    stop.extend(["--stop-at", "3"]);
    let o = train(&b, &data, &stop);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&b).len(), 3);
    let o = palm(&["train", "--resume", b.to_str().unwrap(), "--device", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&a), losses(&b));
    assert_same_tensors(&a.join("model.safetensors"), &b.join("model.safetensors"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_on_the_seed_checkpoint_gives_the_seed_loss() {
    // The seed's reference batch is two rows of 34 byte tokens (zeros are padding, ignored as
    // targets). Each row written as a 34-byte file is exactly one eval window at seq-len 33;
    // the seed's loss is the mean over both rows' counted targets.
    let exp =
        palm_engine::SafeFile::open(repo().join("tests/data/palm_seed_tiny.expected.safetensors"))
            .unwrap();
    let toks = exp.get("tokens").unwrap().to_vec::<i64>().unwrap();
    let want = exp.get("loss").unwrap().to_vec::<f32>().unwrap()[0] as f64;
    let dir = scratch("seed");
    let ckpt = repo().join("tests/data/palm_seed_tiny.safetensors");
    let (mut nats, mut count) = (0.0, 0u64);
    for (i, row) in toks.chunks(34).enumerate() {
        let data = dir.join(format!("row{i}.bin"));
        std::fs::write(&data, row.iter().map(|&t| t as u8).collect::<Vec<_>>()).unwrap();
        let o = palm(&[
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--seq-len",
            "33",
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        let n = v["tokens"].as_u64().unwrap();
        assert_eq!(n as usize, row[1..].iter().filter(|&&t| t != 0).count());
        nats += v["loss"].as_f64().unwrap() * n as f64;
        count += n;
    }
    let loss = nats / count as f64;
    assert!(
        (loss - want).abs() < 1e-4 * want,
        "palm eval {loss} vs the seed's {want}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn bad_inputs_give_one_clear_error() {
    let dir = scratch("bad");
    let data = corpus(&dir);
    let out = dir.join("run");
    let d = data.to_str().unwrap();
    let o = palm(&[
        "train",
        "--data",
        "/nonexistent/corpus.txt",
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_clean_error(&o, "/nonexistent/corpus.txt");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    assert_clean_error(&train_on(&empty), "empty");
    let bad_gz = dir.join("bad.txt.gz");
    std::fs::write(&bad_gz, "not gzip at all").unwrap();
    assert_clean_error(&train_on(&bad_gz), "gzip");
    let short = dir.join("short.txt");
    std::fs::write(&short, "too short").unwrap();
    assert_clean_error(&train_on(&short), "seq-len");
    assert_clean_error(
        &palm(&["train", "--data", d, "--lr=-1", "--device", "cpu"]),
        "--lr",
    );
    assert_clean_error(
        &palm(&["train", "--data", d, "--preset", "huge", "--device", "cpu"]),
        "unknown preset",
    );
    assert_clean_error(
        &palm(&["train", "--data", d, "--dim-head", "15", "--device", "cpu"]),
        "dim_head",
    );
    assert_clean_error(&palm(&["train", "--steps", "many"]), "invalid value");
    assert_clean_error(&palm(&["train", "--batch", "0"]), "batch");
    // A run of no steps, or stopping at step 0, is a mistake, not a silent success.
    for flag in ["--steps", "--stop-at"] {
        assert_clean_error(&palm(&["train", flag, "0"]), flag);
        assert_clean_error(&palm(&["sft", flag, "0"]), flag);
    }
    for cmd in ["ppo", "grpo", "rlhf-demo"] {
        assert_clean_error(&palm(&[cmd, "--updates", "0"]), "--updates");
    }
    for cmd in ["ppo", "grpo"] {
        assert_clean_error(&palm(&[cmd, "--stop-at", "0"]), "--stop-at");
    }
    assert_clean_error(&palm(&["train", "--device", "tpu"]), "unknown device");
    assert_clean_error(
        &palm(&[
            "train",
            "--resume",
            dir.to_str().unwrap(),
            "--device",
            "cpu",
        ]),
        "train_state.safetensors",
    );
    assert_clean_error(&palm(&["sample", "--checkpoint", d]), "corpus.txt");
    assert_clean_error(
        &palm(&["sample", "--checkpoint", "/nonexistent.safetensors"]),
        "/nonexistent.safetensors",
    );
    assert_clean_error(
        &palm(&[
            "eval",
            "--checkpoint",
            "/nonexistent.safetensors",
            "--data",
            d,
        ]),
        "/nonexistent",
    );
    let seed = repo().join("tests/data/palm_seed_tiny.safetensors");
    let s = seed.to_str().unwrap();
    assert_clean_error(
        &palm(&["sample", "--checkpoint", s, "--top-p", "2"]),
        "top-p",
    );
    assert_clean_error(
        &palm(&["sample", "--checkpoint", s, "--lora", "critic"]),
        "critic",
    );
    assert_clean_error(
        &palm(&["sample", "--checkpoint", s, "--prompt", ""]),
        "prompt",
    );
    assert_clean_error(
        &palm(&[
            "eval",
            "--checkpoint",
            s,
            "--data",
            short.to_str().unwrap(),
            "--seq-len",
            "64",
        ]),
        "window",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `PALM_DEVICE` steers `--device auto` (the default): cpu, cuda, or an error naming it.
#[test]
fn palm_device_steers_auto() {
    let eval = |device: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_palm"))
            .args([
                "eval",
                "--checkpoint",
                "no-such-model.safetensors",
                "--data",
                "x",
            ])
            .env("PALM_DEVICE", device)
            .output()
            .expect("run palm")
    };
    let bad = eval("tpu");
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("PALM_DEVICE='tpu'"),
        "{}",
        stderr(&bad)
    );
    // cpu: the device resolves and the missing checkpoint is the error.
    let cpu = eval("cpu");
    assert!(
        stderr(&cpu).contains("no-such-model.safetensors"),
        "{}",
        stderr(&cpu)
    );
    // cuda: without a usable GPU that is the error; with one, the checkpoint is.
    let cuda = stderr(&eval("cuda"));
    assert!(
        cuda.contains("CUDA is not available") || cuda.contains("no-such-model.safetensors"),
        "{cuda}"
    );
    assert_eq!(cuda.lines().count(), 1, "{cuda}");
}

/// Every flag of every command says what it does in `--help`.
#[test]
fn every_flag_of_every_command_has_help() {
    for cmd in [
        &["train"][..],
        &["sft"],
        &["reward", "train"],
        &["reward", "score"],
        &["dpo"],
        &["ppo"],
        &["grpo"],
        &["rlhf-demo"],
        &["label"],
        &["rank"],
        &["sample"],
        &["eval"],
        &["info"],
    ] {
        assert!(common::documented_flags(cmd) >= 1, "{cmd:?}");
    }
}

/// Without a usable GPU, `--device auto` explains its fallback to the CPU once the command has
/// checked its arguments: a bad flag gets its error alone; a good run gets the notice first.
#[test]
fn the_cpu_fallback_notice_waits_for_valid_arguments() {
    let dir = scratch("notice");
    let data = corpus(&dir);
    let auto = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_palm"))
            .args(args)
            .env_remove("PALM_DEVICE")
            .env_remove("PALM_CUDA_EMULATE")
            .output()
            .expect("run palm")
    };
    let bad_out = dir.join("bad");
    let bad = auto(&common::train_args(&bad_out, &data, &["--lr=-1"]));
    assert!(!bad.status.success());
    let err = stderr(&bad);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: --lr"), "{err}");
    let good_out = dir.join("good");
    let good = auto(&common::train_args(&good_out, &data, &["--steps", "2"]));
    assert!(good.status.success(), "{}", stderr(&good));
    let err = stderr(&good);
    // (With a usable GPU there is no notice to order.)
    if err.contains("CUDA is not available") {
        assert!(
            err.lines()
                .next()
                .is_some_and(|l| l.starts_with("note: CUDA is not available")),
            "{err}"
        );
        assert_eq!(err.matches("CUDA is not available").count(), 1, "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--quiet` (before or after the command) leaves standard error to warnings and errors: a
/// training run prints its result line on stdout and nothing else; a mistake still says why.
#[test]
fn quiet_runs_print_only_their_result() {
    let dir = scratch("quiet");
    let data = corpus(&dir);
    let run = dir.join("run");
    let o = train(&run, &data, &["--steps", "3", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert!(stdout(&o).starts_with("done: 3 steps"), "{}", stdout(&o));
    let o = palm(&["-q", "train", "--lr=-1", "--out", run.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}
