//! The repository stands alone: no file in it points at a folder beside the checkout (a clone
//! has nothing there), and every local link in the Markdown files names a file that exists.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The text files of the repository (not build outputs, not version control, not the GPU
/// staging folder).
fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(
                name.as_str(),
                "target" | ".git" | ".gpu" | "runs" | "corpus" | "artifacts"
            ) {
                text_files(&path, out);
            }
            continue;
        }
        let text_like = [
            ".rs", ".md", ".toml", ".py", ".cu", ".cuh", ".sh", ".yml", ".json",
        ]
        .iter()
        .any(|x| name.ends_with(x))
            || path
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|p| p == "scripts" || p == ".ci")
            || name == "gen-ptx";
        if text_like {
            out.push(path);
        }
    }
}

#[test]
fn nothing_points_outside_the_repository() {
    let mut files = Vec::new();
    text_files(&root(), &mut files);
    assert!(files.len() > 50, "found only {} files", files.len());
    let this = Path::new(file!()).file_name().unwrap();
    // Spelled in pieces so this file does not match itself.
    let outside = ["../", "shared"].concat();
    let design = ["DESIGN", " §"].concat();
    let mut bad = Vec::new();
    for f in files.iter().filter(|f| f.file_name() != Some(this)) {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            if line.contains(&outside) || line.contains(&design) {
                bad.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "references outside the repository:\n{}",
        bad.join("\n")
    );
}

#[test]
fn local_links_in_markdown_resolve() {
    let mut files = Vec::new();
    text_files(&root(), &mut files);
    let mut bad = Vec::new();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "md"))
    {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            // Inline code is not a link: keep the text outside backticks.
            let prose: String = line.split('`').step_by(2).collect();
            // [text](target): local targets only (no scheme, no anchor-only links).
            for part in prose.split("](").skip(1) {
                let Some(target) = part.split(')').next() else {
                    continue;
                };
                let target = target.split('#').next().unwrap_or("");
                // (A target with a space is code that happens to contain "](", not a link.)
                if target.is_empty()
                    || target.contains(char::is_whitespace)
                    || target.contains("://")
                    || target.starts_with("mailto:")
                {
                    continue;
                }
                let path = f.parent().unwrap().join(target);
                if !path.exists() {
                    bad.push(format!("{}:{}: {target}", f.display(), i + 1));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "links to missing files:\n{}",
        bad.join("\n")
    );
}
