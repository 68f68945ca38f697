//! Helpers shared by the tests that run the `palm` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The smallest useful model, for end-to-end runs that must take well under a second.
#[allow(dead_code)] // not every test file trains
pub const TINY_MODEL: &[&str] = &[
    "--dim",
    "32",
    "--depth",
    "1",
    "--heads",
    "2",
    "--dim-head",
    "16",
    "--device",
    "cpu",
];

/// Run `palm` with `args` and collect its output. `--device auto` (every command's default)
/// means the CPU here, so results are the same on a machine with a GPU.
pub fn palm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palm"))
        .args(args)
        .env("PALM_DEVICE", "cpu")
        .output()
        .expect("run palm")
}

/// `palm` with `args` and `input` on its standard input.
#[allow(dead_code)] // not every test file pipes input
pub fn palm_with_input(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_palm"))
        .args(args)
        .env("PALM_DEVICE", "cpu")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run palm");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(input.as_bytes())
        .expect("write palm's input");
    drop(stdin);
    child.wait_with_output().expect("wait for palm")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[allow(dead_code)] // not every test file reads stdout
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// An empty scratch folder unique to this test and process.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("palm-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A freshly initialised model as small as `TINY_MODEL`, saved as a checkpoint in `dir`
/// (no training: a trunk for reward models and a policy to sample from).
#[allow(dead_code)] // not every test file needs a checkpoint
pub fn tiny_checkpoint(dir: &std::path::Path, seed: u64) -> PathBuf {
    let mut rng = palm_engine::Rng::new(seed);
    let config = palm_model::PalmConfig::new(256, 32, 1, 2, 16);
    let params = palm_model::PalmParams::init(&config, &mut rng).unwrap();
    let path = dir.join("policy.safetensors");
    palm_model::checkpoint::save_model(&path, &params, &[]).unwrap();
    path
}

/// A failed run that printed exactly one `error:` line mentioning `needle`, and no panic.
#[allow(dead_code)] // not every test file checks failures
pub fn assert_one_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line: {err}");
    assert!(
        lines[0].contains(needle),
        "error should mention '{needle}': {err}"
    );
}

/// Some English to train on (repeated so there is room for windows).
#[allow(dead_code)]
pub fn corpus(dir: &Path) -> PathBuf {
    let text =
        "We hold these truths to be self-evident, that all men are created equal. ".repeat(200);
    let p = dir.join("corpus.txt");
    std::fs::write(&p, text).unwrap();
    p
}

/// Training settings small enough for a test (on top of `TINY_MODEL`).
#[allow(dead_code)]
pub const TINY_RUN: &[&str] = &[
    "--batch",
    "4",
    "--seq-len",
    "32",
    "--val-windows",
    "4",
    "--sample-tokens",
    "16",
];

/// The arguments of `palm train` on `data` into `dir` at the test sizes, then `extra`.
#[allow(dead_code)]
pub fn train_args<'a>(dir: &'a Path, data: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(TINY_MODEL);
    args.extend_from_slice(TINY_RUN);
    args.extend_from_slice(extra);
    args
}

#[allow(dead_code)]
pub fn train(dir: &Path, data: &Path, extra: &[&str]) -> Output {
    palm(&train_args(dir, data, extra))
}

/// The training losses of a run, in order, exactly as logged.
#[allow(dead_code)]
pub fn losses(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("loss").map(|x| format!("{}:{x}", v["step"]))
        })
        .collect()
}

/// The same tensors, bit for bit, in two safetensors files (the metadata may differ).
#[allow(dead_code)]
pub fn assert_same_tensors(a: &Path, b: &Path) {
    let [fa, fb] = [a, b].map(|p| palm_engine::SafeFile::open(p).unwrap());
    assert_eq!(
        fa.names().collect::<Vec<_>>(),
        fb.names().collect::<Vec<_>>()
    );
    for n in fa.names() {
        let (x, y) = (
            fa.get(n).unwrap().to_vec::<f32>().unwrap(),
            fb.get(n).unwrap().to_vec::<f32>().unwrap(),
        );
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{n} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// The metrics of a run without its timings (`*_per_s`, `*_s`), which differ between runs.
#[allow(dead_code)]
pub fn metrics_without_timings(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.retain(|k, _| !k.ends_with("_per_s") && !k.ends_with("_s"));
            }
            v
        })
        .collect()
}

/// A run interrupted and resumed (`part`) ended where the uninterrupted one (`full`) did: the
/// same metrics line for line, and the same tensors in each of `files`.
#[allow(dead_code)]
pub fn assert_resumed_like(full: &Path, part: &Path, files: &[&str]) {
    assert_eq!(
        metrics_without_timings(full),
        metrics_without_timings(part),
        "metrics differ"
    );
    for f in files {
        assert_same_tensors(&full.join(f), &part.join(f));
    }
}

/// Check that every flag `palm CMD --help` lists has a line of help; returns how many there are.
#[allow(dead_code)]
pub fn documented_flags(cmd: &[&str]) -> usize {
    let o = palm(&[cmd, &["--help"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let help = stdout(&o);
    let lines: Vec<&str> = help.lines().collect();
    let mut flags = 0;
    for (i, l) in lines.iter().enumerate() {
        if !l.trim_start().starts_with("--") {
            continue;
        }
        flags += 1;
        // Clap puts the text after the flag ("--flag <V>  text") or on the next line.
        let same_line = l.trim_start().split_once("  ").map(|(_, r)| r.trim());
        let next = lines.get(i + 1).map(|n| n.trim()).unwrap_or("");
        let text = same_line.unwrap_or(next);
        assert!(
            !text.is_empty() && !text.starts_with('-') && !text.starts_with("[default"),
            "palm {cmd:?}: no help for: {l}"
        );
    }
    flags
}
