//! Memory stays flat over a long run: `palm train` (the README's main command, at a smaller
//! batch) for a few hundred steps peaks no higher than a short run of the same shape, plus a
//! small allowance. A cache that kept every dropped buffer once grew a `tiny` run by ~2.4 MB a
//! step (5 GB after 2,000 steps).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Peak resident memory (VmHWM, KiB) of `palm train --steps N`, read from /proc while it runs.
fn peak_rss_kib(steps: usize, out: &std::path::Path) -> Option<u64> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palm"))
        .args([
            "train",
            "--device",
            "cpu",
            "--batch",
            "4",
            "--seq-len",
            "64",
        ])
        .args(["--steps", &steps.to_string()])
        .args([
            "--val-every",
            "100000",
            "--sample-every",
            "0",
            "--sample-tokens",
            "4",
        ])
        .args(["--ckpt-every", "0", "--out"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("palm runs");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = None;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(line) = s.lines().find(|l| l.starts_with("VmHWM:"))
        {
            peak = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .or(peak);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            assert!(status.success(), "palm train failed: {err}");
            return peak;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn training_memory_stays_flat() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("skipped: training_memory_stays_flat: needs /proc (Linux)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("palm-memory-{}", std::process::id()));
    let short = peak_rss_kib(30, &dir.join("short")).expect("VmHWM readable");
    let long = peak_rss_kib(400, &dir.join("long")).expect("VmHWM readable");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("peak RSS: 30 steps {short} KiB, 400 steps {long} KiB");
    // 370 more steps may not add more than 32 MiB (the old cache added ~2 MB a step here).
    assert!(
        long <= short + 32 * 1024,
        "peak RSS grew from {short} KiB (30 steps) to {long} KiB (400 steps)"
    );
}

/// Found by the flag fuzzing (`palm sample --max-tokens 65537` under a 4 GB address-space
/// limit): a long generation ran out of address space. Each token rebuilt every layer's keys
/// and values by concatenation, and attention's scratch, one length longer every token, was
/// kept by the recycled buffers at every length. The KV cache is now written in place (its
/// buffers double when full) and the buffers are recycled by capacity class.
#[test]
fn a_long_generation_stays_within_4_gb() {
    let dir = std::env::temp_dir().join(format!("palm-long-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("m.safetensors");
    let mut rng = palm_engine::Rng::new(1);
    let params =
        palm_model::PalmParams::init(&palm_model::PalmConfig::new(256, 32, 1, 2, 16), &mut rng)
            .unwrap();
    palm_model::checkpoint::save_model(&ckpt, &params, &[]).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4000000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_palm"))
        .args(["sample", "--max-tokens", "20000", "--checkpoint"])
        .arg(&ckpt)
        .env("PALM_DEVICE", "cpu")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(status.success(), "{status}");
}
