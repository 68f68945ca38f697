//! Flag fuzzing: every command, started from a valid invocation, with one to three of its flags
//! (found in its own `--help`, so new flags are covered without editing this file) set to
//! hostile values — zero, negative, 2^64 and past it, NaN, empty, paths that are folders or do
//! not exist. Each run must end as a success, one clean `error:` line (exit 1) or a usage error
//! (exit 2), or still be working when stopped after a few seconds; never a panic, an abort or a
//! signal, and never more than the 4 GB of address space it is given.
//!
//! `PALM_FUZZ_CASES` sets the number of runs (default 96).

mod common;

use common::{scratch, tiny_checkpoint};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(4);

/// The flags `palm <cmd…> --help` lists, with whether each takes a value.
fn flags_of(cmd: &[&str]) -> Vec<(String, bool)> {
    let out = Command::new(env!("CARGO_BIN_EXE_palm"))
        .args(cmd)
        .arg("--help")
        .output()
        .expect("palm --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.lines()
        .filter_map(|l| {
            let t = l.trim_start();
            let t = t.strip_prefix("-h, ").unwrap_or(t);
            let t = t.split_once(", ").map_or(t, |(_, b)| b);
            let flag = t.split_whitespace().next()?;
            if !flag.starts_with("--") || flag == "--help" || flag == "--version" {
                return None;
            }
            let takes = t[flag.len()..].trim_start().starts_with('<');
            Some((flag.to_string(), takes))
        })
        .collect()
}

/// What the run did.
enum Ending {
    Exit(i32, String),
    StillRunning,
    Signal(String),
}

/// Run palm in `cwd` (a scratch folder: a fuzzed relative `--out` such as `2` or `NaN` lands
/// there, not in the source tree).
fn run_limited(args: &[String], cwd: &Path) -> Ending {
    let mut child = Command::new("sh")
        .current_dir(cwd)
        .arg("-c")
        .arg("ulimit -v 4000000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_palm"))
        .args(args)
        .env("PALM_DEVICE", "cpu")
        // `palm chat` reads its turns from stdin: give it two lines and the end of input.
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start palm");
    if let Some(mut input) = child.stdin.take() {
        use std::io::Write;
        // A closed pipe (a command that reads nothing) is not a failure here.
        let _ = input.write_all(b"hello\n/temp 0\nagain\n");
    }
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return match status.code() {
                Some(c) => Ending::Exit(c, err),
                None => Ending::Signal(format!("{status}: {err}")),
            };
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Ending::StillRunning;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_command_survives_hostile_flag_values() {
    let dir = scratch("fuzz-flags");
    let d = |p: &Path| p.to_str().unwrap().to_string();
    let ckpt = d(&tiny_checkpoint(&dir, 0));
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        d(&p)
    };
    let corpus = write("corpus.txt", "Some words to train on. ".repeat(50));
    let prompts = write("prompts.jsonl", "{\"prompt\":\"Hello\"}\n".repeat(3));
    let sft = write(
        "sft.jsonl",
        "{\"prompt\":\"Q\",\"completion\":\"A\"}\n".repeat(3),
    );
    let rankings = write(
        "rankings.jsonl",
        "{\"prompt\":\"p\",\"responses\":[\"good\",\"bad\"]}\n".repeat(4),
    );
    let tok = d(&dir.join("tokenizer.json"));
    let made = Command::new(env!("CARGO_BIN_EXE_palm"))
        .args([
            "-q",
            "tokenizer",
            "train",
            "--vocab",
            "300",
            "--data",
            &corpus,
            "--out",
            &tok,
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let tiny = [
        "--dim",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--dim-head",
        "8",
    ];
    let base = |cmd: &str| -> Vec<&str> {
        let v: Vec<&str> = match cmd {
            "train" => [
                &[
                    "--data",
                    &corpus,
                    "--steps",
                    "2",
                    "--batch",
                    "2",
                    "--seq-len",
                    "16",
                ][..],
                &tiny[..],
                &["--val-windows", "2", "--sample-tokens", "4"][..],
            ]
            .concat(),
            "sft" => vec![
                "--checkpoint",
                &ckpt,
                "--data",
                &sft,
                "--steps",
                "2",
                "--batch",
                "2",
                "--seq-len",
                "16",
            ],
            "reward train" => vec![
                "--checkpoint",
                &ckpt,
                "--data",
                &rankings,
                "--batch",
                "2",
                "--seq-len",
                "16",
            ],
            "reward score" => vec!["--checkpoint", &ckpt, "--prompt", "p", "--response", "r"],
            "dpo" => vec![
                "--policy",
                &ckpt,
                "--data",
                &rankings,
                "--batch",
                "2",
                "--seq-len",
                "16",
            ],
            "ppo" | "grpo" => vec![
                "--policy",
                &ckpt,
                "--prompts",
                &prompts,
                "--rule",
                "afinn",
                "--updates",
                "1",
                "--batch",
                "2",
                "--max-new",
                "4",
                "--max-prompt",
                "8",
            ],
            "rlhf-demo" => vec![
                "--preset",
                "quick",
                "--pretrain-steps",
                "2",
                "--updates",
                "1",
                "--prompts",
                "4",
                "--held-out",
                "2",
            ],
            "label" => vec![
                "--checkpoint",
                &ckpt,
                "--prompts",
                &prompts,
                "--by",
                "afinn",
                "--samples",
                "2",
                "--max-tokens",
                "4",
            ],
            "rank" => vec!["--checkpoint", &ckpt, "--prompts", &prompts],
            "sample" => vec!["--checkpoint", &ckpt, "--max-tokens", "4"],
            "chat" => vec!["--checkpoint", &ckpt, "--max-tokens", "4"],
            "eval" => vec!["--checkpoint", &ckpt, "--data", &corpus],
            "info" => vec!["--checkpoint", &ckpt],
            "tokenizer train" => vec!["--data", &corpus, "--vocab", "280", "--out", "tok.json"],
            "tokenizer encode" => vec!["--tokenizer", &tok, "some text"],
            other => panic!("no base invocation for `palm {other}`: add one"),
        };
        v
    };
    let commands = [
        "train",
        "sft",
        "reward train",
        "reward score",
        "dpo",
        "ppo",
        "grpo",
        "rlhf-demo",
        "label",
        "rank",
        "sample",
        "chat",
        "eval",
        "info",
        "tokenizer train",
        "tokenizer encode",
    ];
    // Every command `palm --help` lists must be fuzzed.
    let listed = Command::new(env!("CARGO_BIN_EXE_palm"))
        .arg("--help")
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&listed.stdout)
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
    {
        let Some(name) = line.split_whitespace().next() else {
            break;
        };
        if line.starts_with("Options") || name == "help" {
            continue;
        }
        assert!(
            commands.iter().any(|c| c.split(' ').next() == Some(name)),
            "`palm {name}` is not fuzzed"
        );
    }
    let flags: Vec<Vec<(String, bool)>> = commands
        .iter()
        .map(|c| flags_of(&c.split(' ').collect::<Vec<_>>()))
        .collect();
    // Numbers most of the time (most flags are numbers: other values stop at the parser).
    let numbers = [
        "0",
        "1",
        "2",
        "3",
        "-1",
        "-0",
        "1e9",
        "1000000000",
        "4294967296",
        "18446744073709551615",
        "18446744073709551616",
        "NaN",
        "inf",
        "-inf",
        "1e-45",
        "3.4e38",
        "0.5",
        "65537",
    ];
    let others = [
        "",
        " ",
        "a",
        "é",
        "none",
        "newline",
        "/",
        "/nonexistent/file",
        "/dev/null",
    ];
    let values: Vec<String> = numbers
        .iter()
        .chain(&numbers)
        .chain(&numbers)
        .chain(&others)
        .map(|s| s.to_string())
        .chain([
            d(&dir),
            ckpt.clone(),
            corpus.clone(),
            prompts.clone(),
            tok.clone(),
        ])
        .collect();

    let cases = std::env::var("PALM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    });
    let strategy = (
        0..commands.len(),
        prop::collection::vec(
            (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
            1..3,
        ),
    );
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let tally = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    let result = runner.run(&strategy, |(c, picks)| {
        let cmd = commands[c];
        let mut args: Vec<String> = cmd.split(' ').map(String::from).collect();
        let mut pairs: Vec<(String, Option<String>)> = base(cmd)
            .chunks(2)
            .map(|p| (p[0].to_string(), p.get(1).map(|v| v.to_string())))
            .collect();
        for (f, v) in picks {
            let (flag, takes) = f.get(&flags[c]).clone();
            let value = takes.then(|| v.get(&values).clone());
            match pairs.iter_mut().find(|(name, _)| *name == flag) {
                Some(p) => p.1 = value,
                None => pairs.push((flag, value)),
            }
        }
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = dir.join(format!("out{n}"));
        if flags[c].iter().any(|(f, _)| f == "--out") && !pairs.iter().any(|(f, _)| f == "--out") {
            pairs.push(("--out".into(), Some(d(&out))));
        }
        // `--flag=value`, so that values such as -1 are values, not flags.
        for (f, v) in pairs {
            args.push(match v {
                Some(v) => format!("{f}={v}"),
                None => f,
            });
        }
        let ending = run_limited(&args, &dir);
        let kind = match &ending {
            Ending::Exit(c, _) => format!("exit {c}"),
            Ending::StillRunning => "still running".into(),
            Ending::Signal(_) => "signal".into(),
        };
        if let (Ending::Exit(2, err), Ok(_)) = (&ending, std::env::var("PALM_FUZZ_SHOW_USAGE")) {
            eprintln!("{}", err.lines().next().unwrap_or_default());
        }
        *tally.lock().unwrap().entry(kind).or_insert(0usize) += 1;
        match ending {
            Ending::Exit(0 | 2, _) | Ending::StillRunning => Ok(()),
            Ending::Exit(1, err) => err_check(&args, &err),
            Ending::Exit(code, err) => Err(TestCaseError::fail(format!(
                "palm {args:?}: exit {code}: {err}"
            ))),
            Ending::Signal(s) => Err(TestCaseError::fail(format!("palm {args:?}: {s}"))),
        }
    });
    std::fs::remove_dir_all(&dir).unwrap();
    if let Err(e) = result {
        panic!("{e}");
    }
    let tally = tally.into_inner().unwrap();
    eprintln!("endings: {tally:?}");
    // A good share of runs must get past the argument parser, or the fuzzing only tests clap.
    let usage = tally.get("exit 2").copied().unwrap_or(0);
    assert!(
        usage * 3 < cases as usize * 2,
        "{usage} of {cases} runs were usage errors"
    );
}

/// A failed run printed one `error:` line and no panic.
fn err_check(args: &[String], err: &str) -> Result<(), TestCaseError> {
    prop_assert!(!err.contains("panicked"), "palm {args:?} panicked: {err}");
    let lines = err.lines().filter(|l| l.starts_with("error:")).count();
    prop_assert_eq!(
        lines,
        1,
        "palm {:?}: expected one error line: {}",
        args,
        err
    );
    Ok(())
}
