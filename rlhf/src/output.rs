//! Where palm's lines go: results (a run's final line, scores, samples, reports) to standard
//! output, one line each, so a script can read them; progress bars, notices and warnings to
//! standard error.
//!
//! A notice about the setup (`--device auto` falling back to the CPU) waits until the command
//! has checked its arguments and starts its work — its first line, its first result or its
//! progress bar — so that a mistyped flag gets its error alone.
//!
//! `palm --quiet` keeps standard error to warnings and errors: no progress bars, notices or
//! progress lines.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static PENDING: Mutex<Vec<String>> = Mutex::new(Vec::new());
static QUIET: AtomicBool = AtomicBool::new(false);

/// Silence progress and notices from now on (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether progress and notices are silenced.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A warning on stderr (also under `--quiet`), after the waiting notices.
pub fn warn(line: impl std::fmt::Display) {
    start();
    eprintln!("{line}");
}

/// A notice printed (as `note: …` on stderr) when the command's work starts.
pub fn notice(line: impl Into<String>) {
    PENDING
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(line.into());
}

/// Print the waiting notices: the command's work starts.
pub fn start() {
    let lines = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|p| p.into_inner()));
    if quiet() {
        return;
    }
    for l in lines {
        eprintln!("note: {l}");
    }
}

/// A line about the run on stderr (after the waiting notices); nothing under `--quiet`.
pub fn say(line: impl std::fmt::Display) {
    start();
    if !quiet() {
        eprintln!("{line}");
    }
}

/// Print one result line to stdout. A closed pipe (`palm info … | head`) ends the program
/// quietly, as command-line tools do, instead of panicking.
pub fn emit(line: impl std::fmt::Display) {
    use std::io::Write;
    start();
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}
