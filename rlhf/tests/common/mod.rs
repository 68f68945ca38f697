//! Helpers shared by the tests that run the `palm` binary.

use std::path::PathBuf;
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
