//! A full disk during `palm rank`'s appends (item 6 of issue 11): the failed append is cut back,
//! so the rankings file holds whole records and every later reader accepts it. The disk is
//! "filled" by a file-size limit (`ulimit -f`) on a child process running the inner test.

use palm_rlhf::data::{RankingRecord, append_jsonl, read_jsonl};
use std::path::PathBuf;
use std::process::Command;

fn ranking(i: usize) -> RankingRecord {
    RankingRecord {
        prompt: format!("prompt number {i} with some words to fill the line"),
        responses: vec![format!("a good answer {i}"), format!("a worse answer {i}")],
    }
}

/// Run by `appends_on_a_full_disk_leave_whole_records` under a file-size limit: append until
/// the limit refuses, and check that the error says the file is left as it was.
#[test]
#[ignore = "run by appends_on_a_full_disk_leave_whole_records under ulimit -f"]
fn append_until_full() {
    let Ok(path) = std::env::var("PALM_FULL_DISK_FILE") else {
        return;
    };
    let path = PathBuf::from(path);
    for i in 0.. {
        if let Err(e) = append_jsonl(&path, &ranking(i)) {
            let e = e.to_string();
            assert!(e.contains("record not appended"), "{e}");
            assert!(e.contains("left as it was"), "{e}");
            println!("FULL after {i} records: {e}");
            return;
        }
        assert!(i < 100_000, "the size limit never applied");
    }
}

#[test]
fn appends_on_a_full_disk_leave_whole_records() {
    let dir = std::env::temp_dir().join(format!("palm-full-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rankings.jsonl");
    let exe = std::env::current_exe().unwrap();
    // 8 blocks (4 or 8 KiB, by the shell's unit); SIGXFSZ ignored so the write fails with EFBIG
    // instead of killing the process, as ENOSPC would on a full disk.
    let script = format!(
        "ulimit -f 8 && trap '' XFSZ && exec '{}' --exact append_until_full --ignored --nocapture",
        exe.display()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("PALM_FULL_DISK_FILE", &file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("FULL after"), "{text}");
    // Whole records only: every line parses, and the file ends with a newline.
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.last(), Some(&b'\n'));
    let records: Vec<RankingRecord> = read_jsonl(&file).unwrap();
    assert!(!records.is_empty());
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r, &ranking(i));
    }
    // With room again, appending continues after the last whole record.
    append_jsonl(&file, &ranking(records.len())).unwrap();
    assert_eq!(
        read_jsonl::<RankingRecord>(&file).unwrap().len(),
        records.len() + 1
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
