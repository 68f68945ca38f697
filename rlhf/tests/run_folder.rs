//! The run folder's promises (see `palm_rlhf::run_dir`): one writer at a time, a lock that a
//! killed run does not leave stuck, no silent replacement of another run, checkpoints that a
//! `kill -9` at any moment cannot tear, metrics without repeated steps after a resume, and no
//! leftover temporary files.

mod common;

use common::{
    assert_one_error, assert_same_tensors, corpus, losses, palm, scratch, stderr, train, train_args,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `palm train` into `dir` as a child process (to be killed).
fn spawn_train(dir: &Path, data: &Path, extra: &[&str]) -> Child {
    spawn(&train_args(dir, data, extra))
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_palm"))
        .args(args)
        .env("PALM_DEVICE", "cpu")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start palm")
}

fn resume(dir: &Path) -> Child {
    spawn(&[
        "train",
        "--resume",
        dir.to_str().unwrap(),
        "--device",
        "cpu",
    ])
}

/// Wait until `path` exists (the child has taken the folder), failing after 60 s.
fn wait_for(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before {} appeared",
            path.display()
        );
        assert!(start.elapsed() < Duration::from_secs(60), "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Files whose names say they are temporaries of an atomic write.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect()
}

/// The `step` of every training line of the metrics, in order.
fn logged_steps(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_second_run_into_a_busy_folder_is_refused_and_a_killed_run_leaves_no_lock() {
    let dir = scratch("run-lock");
    let data = corpus(&dir);
    let out = dir.join("run");
    let mut first = spawn_train(&out, &data, &["--steps", "100000", "--ckpt-every", "5"]);
    wait_for(&out.join("train_state.safetensors"), &mut first);

    // Neither a fresh run, nor --overwrite, nor a resume may write into it meanwhile.
    let o = train(&out, &data, &["--steps", "3", "--overwrite"]);
    assert_one_error(&o, "is in use by another palm process");
    assert!(
        stderr(&o).contains(&format!("pid {}", first.id())),
        "{}",
        stderr(&o)
    );
    let o = palm(&[
        "train",
        "--resume",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_one_error(&o, "is in use by");

    // A crash releases the lock: the run resumes at once.
    first.kill().unwrap();
    first.wait().unwrap();
    let o = palm(&[
        "train",
        "--resume",
        out.to_str().unwrap(),
        "--steps",
        "1",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_fresh_run_never_replaces_another_run_unless_told() {
    let dir = scratch("run-replace");
    let data = corpus(&dir);
    let out = dir.join("run");
    let o = train(&out, &data, &["--steps", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();

    let o = train(&out, &data, &["--steps", "2"]);
    assert_one_error(&o, "holds another run");
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), before);

    let o = train(&out, &data, &["--steps", "2", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(logged_steps(&out), [1, 2]);

    // A run that never reached a checkpoint has nothing to resume; the error says what to do.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("metrics.jsonl"), "{\"step\":1}\n").unwrap();
    let o = palm(&[
        "train",
        "--resume",
        empty.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_one_error(&o, "start it again with --overwrite");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_refuses_the_flags_the_run_fixed() {
    let dir = scratch("run-flags");
    for flag in [
        ["--out", "elsewhere"],
        ["--dim", "64"],
        ["--data", "x.txt"],
        ["--batch", "2"],
        ["--lr", "0.1"],
        ["--overwrite", "--steps=3"],
    ] {
        let mut args = vec!["train", "--resume", dir.to_str().unwrap()];
        args.extend(flag);
        let o = palm(&args);
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(err.contains("cannot be used with"), "{flag:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Kill a run at many moments (mid-step, mid-metrics-line, mid-checkpoint), resume it each
/// time, and compare with a run that was never interrupted.
#[test]
fn kills_at_any_moment_resume_to_the_same_result() {
    let dir = scratch("run-kill");
    let data = corpus(&dir);
    let settings = ["--steps", "60", "--ckpt-every", "3", "--val-every", "20"];
    let clean = dir.join("clean");
    let o = train(&clean, &data, &settings);
    assert!(o.status.success(), "{}", stderr(&o));

    let out = dir.join("killed");
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    let mut child = spawn_train(&out, &data, &settings);
    loop {
        // Kill after 0–40 ms (a step of this model takes about a millisecond).
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(rng % 40_000));
        // Past 30 kills (a machine so loaded that runs barely start), let it finish.
        if kills == 30 || child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        child = if out.join("train_state.safetensors").exists() {
            resume(&out)
        } else {
            spawn_train(&out, &data, &[&settings[..], &["--overwrite"]].concat())
        };
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "the last run failed after {kills} kills");
    assert!(kills >= 3, "only {kills} kills: the test did not test");
    assert_eq!(logged_steps(&out), (1..=60).collect::<Vec<_>>());
    assert_eq!(losses(&out), losses(&clean));
    assert_same_tensors(
        &clean.join("model.safetensors"),
        &out.join("model.safetensors"),
    );
    assert_same_tensors(
        &clean.join("train_state.safetensors"),
        &out.join("train_state.safetensors"),
    );
    assert_eq!(temporaries(&out), Vec::<PathBuf>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What a kill between the checkpoint's two files, or after it, leaves behind is repaired by the
/// resume: a model one checkpoint behind, metrics past the checkpoint (a torn line included),
/// and temporary files.
#[test]
fn resume_repairs_what_a_kill_leaves() {
    let dir = scratch("run-repair");
    let data = corpus(&dir);
    let settings = ["--steps", "8", "--ckpt-every", "2", "--val-every", "0"];
    let clean = dir.join("clean");
    let o = train(&clean, &data, &settings);
    assert!(o.status.success(), "{}", stderr(&o));

    let out = dir.join("run");
    let o = train(&out, &data, &[&settings[..], &["--stop-at", "2"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let old_model = std::fs::read(out.join("model.safetensors")).unwrap();
    let o = palm(&[
        "train",
        "--resume",
        out.to_str().unwrap(),
        "--stop-at",
        "4",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // As if killed after the state file of step 4 was written but before the model was, and
    // after two more steps were logged, the second only half.
    std::fs::write(out.join("model.safetensors"), old_model).unwrap();
    let mut metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    metrics.push_str("{\"step\":5,\"loss\":1.0}\n{\"step\":6,\"lo");
    std::fs::write(out.join("metrics.jsonl"), metrics).unwrap();
    std::fs::write(out.join(".model.safetensors.4242.0.tmp"), b"partial").unwrap();

    let o = palm(&[
        "train",
        "--resume",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is behind the run's state"),
        "{}",
        stderr(&o)
    );
    assert_eq!(logged_steps(&out), (1..=8).collect::<Vec<_>>());
    assert_eq!(losses(&out), losses(&clean));
    assert_same_tensors(
        &clean.join("model.safetensors"),
        &out.join("model.safetensors"),
    );
    assert_eq!(temporaries(&out), Vec::<PathBuf>::new());

    // A metrics file shorter than the checkpoint says is not silently extended.
    std::fs::write(out.join("metrics.jsonl"), "").unwrap();
    let o = palm(&[
        "train",
        "--resume",
        out.to_str().unwrap(),
        "--steps",
        "9",
        "--device",
        "cpu",
    ]);
    assert_one_error(&o, "the checkpoint was taken at byte");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A training state edited by hand to a learning rate the flags refuse is refused too.
#[test]
fn a_hand_edited_negative_learning_rate_is_refused() {
    let dir = scratch("run-bad-lr");
    let data = corpus(&dir);
    let out = dir.join("run");
    let o = train(&out, &data, &["--steps", "2", "--stop-at", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let path = out.join("train_state.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let settings = header["__metadata__"]["settings"]
        .as_str()
        .unwrap()
        .to_string();
    let mut settings: serde_json::Value = serde_json::from_str(&settings).unwrap();
    settings["optim"]["lr"] = (-0.01).into();
    header["__metadata__"]["settings"] = settings.to_string().into();
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut edited = (text.len() as u64).to_le_bytes().to_vec();
    edited.extend_from_slice(&text);
    edited.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&path, edited).unwrap();
    let o = palm(&[
        "train",
        "--resume",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_one_error(&o, "--lr must be a positive number");
    std::fs::remove_dir_all(&dir).unwrap();
}
