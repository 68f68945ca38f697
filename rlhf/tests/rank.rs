//! `palm rank` driven by scripted key presses: rankings appended one at a time as they are
//! confirmed (undo, skip, refused keys, quitting midway), resuming, escaping of model output,
//! sampling from a checkpoint, and the command line's errors without a terminal.

mod common;

use clap::Parser;
use common::{assert_one_error, palm, scratch, stderr, stdout, tiny_checkpoint};
use palm_rlhf::commands::rank::{Plan, RankArgs, ranked_prompts};
use palm_rlhf::data::{RankingRecord, read_jsonl, write_jsonl};
use palm_rlhf::rank::{Key, Scripted, Summary, Terminal, run_session};
use palm_rlhf::sampling::{Sampler, SamplingArgs};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn ranking(prompt: &str, responses: &[&str]) -> RankingRecord {
    RankingRecord {
        prompt: prompt.into(),
        responses: strings(responses),
    }
}

/// Rankings in the output so far (none before the file exists).
fn written(out: &Path) -> Vec<RankingRecord> {
    if out.exists() {
        read_jsonl(out).unwrap()
    } else {
        Vec::new()
    }
}

/// A scripted terminal that notes, each time a key is read, how many rankings the output
/// already holds: what a crash at that moment would keep.
struct Watching {
    keys: Scripted,
    out: PathBuf,
    saved_at_key: Vec<usize>,
}

impl Watching {
    fn new(keys: Vec<Key>, out: &Path) -> Watching {
        Watching {
            keys: Scripted::new(keys),
            out: out.to_path_buf(),
            saved_at_key: Vec::new(),
        }
    }
}

impl Terminal for Watching {
    fn read_key(&mut self) -> palm_rlhf::Result<Key> {
        self.saved_at_key.push(written(&self.out).len());
        self.keys.read_key()
    }
    fn show(&mut self, lines: &[String]) -> palm_rlhf::Result<()> {
        self.keys.show(lines)
    }
    fn size(&self) -> (usize, usize) {
        self.keys.size()
    }
}

fn typed(text: &str) -> Vec<Key> {
    text.chars().map(Key::Char).collect()
}

/// The screens whose message line (the last) contains `needle`.
fn screens_saying(term: &Scripted, needle: &str) -> usize {
    term.screens
        .iter()
        .filter(|s| s.last().is_some_and(|m| m.contains(needle)))
        .count()
}

#[test]
fn each_ranking_is_appended_as_soon_as_it_is_confirmed() {
    let dir = scratch("rank-session");
    let out = dir.join("rankings.jsonl");
    let candidates: HashMap<&str, Vec<String>> = [
        ("A", strings(&["a1", "a2", "a3"])),
        ("B", strings(&["b1", "b2", "b3", "b4"])),
        ("E", strings(&["only one"])),
        ("C", strings(&["c1", "c2"])),
        ("D", strings(&["d1", "d2", "d3"])),
    ]
    .into_iter()
    .collect();
    let prompts = strings(&["A", "B", "E", "C", "D"]);
    let mut keys = Vec::new();
    // A: 2 first, an unknown key, 2 again (refused: no ties), then 1; 3 is implied. Save.
    keys.extend(typed("2x21"));
    keys.push(Key::Enter);
    // B: 9 (no such response), 4, 1, Backspace (undo), 3, Enter too early, 2 (1 implied), u
    // (takes back 2 and the implied 1), 1 (2 implied), save.
    keys.extend(typed("941"));
    keys.push(Key::Backspace);
    keys.push(Key::Char('3'));
    keys.push(Key::Enter);
    keys.extend(typed("2u1"));
    keys.push(Key::Enter);
    // E has one response and is passed over without a key. C: skipped. D: one pick, then quit.
    keys.extend(typed("s3q"));
    let n_keys = keys.len();
    let mut term = Watching::new(keys, &out);
    let lookup = |p: &str| Ok(candidates[p].clone());
    let summary = run_session(&mut term, &prompts, lookup, &out).unwrap();
    assert_eq!(
        summary,
        Summary {
            written: 2,
            skipped: 1,
            unrankable: 1,
            left: 1,
        }
    );
    // Every key was used, and each ranking was on disk before the next key was read.
    assert_eq!(term.saved_at_key.len(), n_keys);
    let mut expected_saved = vec![0; 5];
    expected_saved.extend([1; 10]);
    expected_saved.extend([2; 3]);
    assert_eq!(term.saved_at_key, expected_saved);
    assert_eq!(
        written(&out),
        [
            ranking("A", &["a2", "a1", "a3"]),
            ranking("B", &["b4", "b3", "b1", "b2"]),
        ]
    );
    // What the person was told along the way.
    let s = &term.keys;
    assert_eq!(screens_saying(s, "key 'x' does nothing"), 1);
    assert_eq!(screens_saying(s, "response 2 is already #1"), 1);
    assert_eq!(screens_saying(s, "there is no response 9; press 1-4"), 1);
    assert_eq!(screens_saying(s, "pick 1 more first"), 1);
    let last = s.last_screen();
    assert_eq!(last[0], "palm rank | prompt 5 of 5 | 2 written, 1 skipped");
    assert!(last.contains(&" 3 [#1] d3".to_string()), "{last:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn model_output_cannot_reach_the_terminal_raw() {
    let dir = scratch("rank-escape");
    let out = dir.join("rankings.jsonl");
    let nasty = "\x1b[2J\x1b]0;pwned\x07evil\r\n\u{202e}txt\u{9b}";
    let responses = strings(&[nasty, "plain"]);
    let mut term = Scripted::new(vec![Key::Char('1'), Key::Enter]);
    let summary = run_session(&mut term, &strings(&["p"]), |_| Ok(responses.clone()), &out);
    assert_eq!(summary.unwrap().written, 1);
    for line in term.screens.iter().flatten() {
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
    let screen = term.screens[1].join("\n");
    assert!(
        screen.contains(" 1 [  ] \\x1b[2J\\x1b]0;pwned\\x07evil\\r\\n\n"),
        "{screen}"
    );
    assert!(screen.contains("\\u{202e}txt\\u{9b}"), "{screen}");
    // Only the screen is escaped: the ranking keeps the text as sampled.
    assert_eq!(written(&out), [ranking("p", &[nasty, "plain"])]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `palm rank` arguments as the command line would give them.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: RankArgs,
}

fn rank_args(args: &[&str]) -> RankArgs {
    Cli::try_parse_from(std::iter::once("rank").chain(args.iter().copied()))
        .unwrap()
        .args
}

#[test]
fn a_rerun_resumes_after_the_ranked_prompts() {
    let dir = scratch("rank-resume");
    let input = dir.join("responses.jsonl");
    let out = dir.join("rankings.jsonl");
    write_jsonl(
        &input,
        &[
            ranking("P1", &["x", "y"]),
            ranking("P2", &["u", "v", "w"]),
            ranking("P1", &["other", "set"]),
            ranking("P3", &["m", "n"]),
        ],
    )
    .unwrap();
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let args = rank_args(&["--responses", i, "--out", o, "--keep-order"]);
    let mut plan = Plan::load(&args).unwrap();
    assert_eq!(plan.pending, strings(&["P1", "P2", "P3"]));
    assert_eq!((plan.done, plan.repeated), (0, 1));
    // First sitting: P1, then quit at P2.
    let mut term = Scripted::new(vec![
        Key::Char('2'),
        Key::Enter,
        Key::Char('1'),
        Key::Escape,
    ]);
    let s = plan.rank(&mut term, &out).unwrap();
    assert_eq!((s.written, s.left), (1, 2));
    assert_eq!(written(&out), [ranking("P1", &["y", "x"])]);
    // Second sitting starts at P2.
    let mut plan = Plan::load(&args).unwrap();
    assert_eq!(plan.pending, strings(&["P2", "P3"]));
    assert_eq!(plan.done, 1);
    let mut keys = typed("31");
    keys.push(Key::Enter);
    keys.push(Key::Char('1'));
    keys.push(Key::Enter);
    let s = plan.rank(&mut Scripted::new(keys), &out).unwrap();
    assert_eq!((s.written, s.left), (2, 0));
    assert_eq!(
        written(&out),
        [
            ranking("P1", &["y", "x"]),
            ranking("P2", &["w", "u", "v"]),
            ranking("P3", &["m", "n"]),
        ]
    );
    assert_eq!(ranked_prompts(&out).unwrap().len(), 3);
    // Nothing left: the command says so and needs no terminal.
    let o = palm(&["rank", "--responses", i, "--out", o]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resuming: 3 prompt(s) already ranked"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("nothing to rank"), "{}", stderr(&o));
    // An empty output (say, created by hand) is a fresh start.
    std::fs::write(&out, "\n").unwrap();
    assert_eq!(Plan::load(&args).unwrap().pending.len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The text shown as response `n` (first line) on a screen.
fn shown(screen: &[String], n: usize) -> String {
    let label = format!("{n:>2} [  ] ");
    let line = screen.iter().find(|l| l.starts_with(&label)).unwrap();
    line[label.len()..].to_string()
}

#[test]
fn responses_from_a_file_are_shown_shuffled_by_seed() {
    let dir = scratch("rank-shuffle");
    let input = dir.join("responses.jsonl");
    let five = ["r1", "r2", "r3", "r4", "r5"];
    let records: Vec<RankingRecord> = (0..4).map(|i| ranking(&format!("P{i}"), &five)).collect();
    write_jsonl(&input, &records).unwrap();
    let shown_orders = |seed: &str, out: &Path| {
        let args = rank_args(&[
            "--responses",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--seed",
            seed,
        ]);
        let mut plan = Plan::load(&args).unwrap();
        let mut keys = Vec::new();
        for _ in 0..4 {
            keys.extend(typed("1234"));
            keys.push(Key::Enter);
        }
        let mut term = Scripted::new(keys);
        assert_eq!(plan.rank(&mut term, out).unwrap().written, 4);
        // The first screen of each prompt shows its responses unranked.
        let firsts: Vec<Vec<String>> = term
            .screens
            .iter()
            .filter(|s| s.len() > 1 && s.iter().all(|l| !l.contains("[#")))
            .map(|s| (1..=5).map(|n| shown(s, n)).collect())
            .collect();
        assert_eq!(firsts.len(), 4);
        // Keys 1-4 in turn rank the responses in the order they were shown.
        assert_eq!(
            written(out)
                .into_iter()
                .map(|r| r.responses)
                .collect::<Vec<_>>(),
            firsts
        );
        firsts
    };
    let a = shown_orders("7", &dir.join("a.jsonl"));
    assert_eq!(a, shown_orders("7", &dir.join("b.jsonl")));
    assert_ne!(a, shown_orders("8", &dir.join("c.jsonl")));
    for order in &a {
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, strings(&five));
    }
    assert!(a.iter().any(|o| *o != strings(&five)), "{a:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn responses_sampled_from_a_checkpoint_are_ranked() {
    let dir = scratch("rank-sample");
    let ckpt = tiny_checkpoint(&dir, 3);
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"Hello\"}\n{\"prompt\": \"Bye\"}\n").unwrap();
    let out = dir.join("rankings.jsonl");
    let sampling = ["--max-tokens", "8", "--stop", "none", "--seed", "11"];
    let mut argv = vec![
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--samples",
        "3",
        "--out",
        out.to_str().unwrap(),
    ];
    argv.extend(sampling);
    let mut plan = Plan::load(&rank_args(&argv)).unwrap();
    let mut keys = typed("31");
    keys.push(Key::Enter);
    keys.extend(typed("12"));
    keys.push(Key::Enter);
    let mut term = Scripted::new(keys);
    assert_eq!(plan.rank(&mut term, &out).unwrap().written, 2);
    // The same samples, drawn again with the same seed, in the order the keys gave.
    #[derive(Parser)]
    struct S {
        #[command(flatten)]
        s: SamplingArgs,
    }
    let s = S::try_parse_from(std::iter::once("s").chain(sampling))
        .unwrap()
        .s;
    let mut sampler = Sampler::load(&ckpt, &s, palm_engine::Device::Cpu).unwrap();
    let first = sampler.distinct_responses("Hello", 3).unwrap();
    let second = sampler.distinct_responses("Bye", 3).unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(
        written(&out),
        [
            RankingRecord {
                prompt: "Hello".into(),
                responses: vec![first[2].clone(), first[0].clone(), first[1].clone()],
            },
            RankingRecord {
                prompt: "Bye".into(),
                responses: second,
            },
        ]
    );
    // Random bytes from an untrained model: whatever they hold stays off the terminal.
    for line in term.screens.iter().flatten() {
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_a_terminal_the_command_fails_clearly() {
    let dir = scratch("rank-cli");
    let input = dir.join("responses.jsonl");
    write_jsonl(&input, &[ranking("P", &["a", "b"])]).unwrap();
    let out = dir.join("rankings.jsonl");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    // The test harness gives the command no terminal: stdin is empty, stdout a pipe.
    assert_one_error(
        &palm(&["rank", "--responses", i, "--out", o]),
        "stdin and stdout must be a terminal",
    );
    let ckpt = tiny_checkpoint(&dir, 1);
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"Hi\"}\n").unwrap();
    let c = ckpt.to_str().unwrap();
    let p = prompts.to_str().unwrap();
    assert_one_error(
        &palm(&["rank", "--checkpoint", c, "--prompts", p, "--out", o]),
        "must be a terminal",
    );
    assert!(!out.exists());
    // Input errors come first, named by file and line.
    let big = dir.join("big.jsonl");
    let ten: Vec<String> = (0..10).map(|n| format!("r{n}")).collect();
    let refs: Vec<&str> = ten.iter().map(String::as_str).collect();
    write_jsonl(&big, &[ranking("ok", &["a", "b"]), ranking("P", &refs)]).unwrap();
    let b = big.to_str().unwrap();
    assert_one_error(
        &palm(&["rank", "--responses", b, "--out", o]),
        "big.jsonl:2: 10 responses; palm rank shows at most 9",
    );
    let gz = dir.join("r.jsonl.gz");
    assert_one_error(
        &palm(&["rank", "--responses", i, "--out", gz.to_str().unwrap()]),
        "use a plain .jsonl output",
    );
    let broken = dir.join("broken.jsonl");
    std::fs::write(&broken, "{\"prompt\": \"P\", \"responses\": [\"a\"]}\n").unwrap();
    assert_one_error(
        &palm(&["rank", "--responses", i, "--out", broken.to_str().unwrap()]),
        "broken.jsonl:1: a ranking needs at least 2 responses",
    );
    // Argument mistakes (clap's own errors).
    let o_none = palm(&["rank", "--out", o]);
    assert_one_error(&o_none, "required arguments were not provided");
    assert!(stderr(&o_none).contains("<--responses <RESPONSES>|--checkpoint <CHECKPOINT>>"));
    assert_one_error(
        &palm(&["rank", "--responses", i, "--checkpoint", c, "--out", o]),
        "cannot be used with",
    );
    assert_one_error(
        &palm(&[
            "rank",
            "--checkpoint",
            c,
            "--prompts",
            p,
            "--samples",
            "10",
            "--out",
            o,
        ]),
        "10 is not in 2..=9",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_documents_every_argument_and_the_keys() {
    let o = palm(&["rank", "--help"]);
    assert!(o.status.success());
    let help = stdout(&o);
    for needle in [
        "--checkpoint",
        "--prompts",
        "--samples",
        "--responses",
        "--keep-order",
        "--out",
        "--max-tokens",
        "--seed",
        "--device",
        "Keys: 1-9 place the best remaining response",
        "u or Backspace undoes",
        "Enter saves",
        "s skips",
        "q or Esc quits",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}
