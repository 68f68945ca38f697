//! Where palm's lines go: results (a run's final line, scores, samples, reports) to standard
//! output, one line each, so a script can read them; progress bars, notices and warnings to
//! standard error.

/// Print one result line to stdout. A closed pipe (`palm info … | head`) ends the program
/// quietly, as command-line tools do, instead of panicking.
pub fn emit(line: impl std::fmt::Display) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}
