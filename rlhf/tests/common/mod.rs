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

/// Run `palm` with `args` and collect its output.
pub fn palm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palm"))
        .args(args)
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
