//! The RLHF data layer: round trips, gzip, ranking expansion, preference files mixing rankings
//! and pairs, and every bad input named by file and line.

use palm_rlhf::Error;
use palm_rlhf::data::{
    PairRecord, PreferenceRecord, PromptRecord, RankingRecord, SftRecord, TextRecord, Validate,
    append_jsonl, read_jsonl, write_jsonl,
};
use serde::de::DeserializeOwned;
use std::io::Write;
use std::path::PathBuf;

/// A unique temporary folder, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("palm-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }
    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn pair(prompt: &str, chosen: &str, rejected: &str, margin: Option<f32>) -> PairRecord {
    PairRecord {
        prompt: prompt.into(),
        chosen: chosen.into(),
        rejected: rejected.into(),
        margin,
    }
}

fn ranking(prompt: &str, responses: &[&str]) -> RankingRecord {
    RankingRecord {
        prompt: prompt.into(),
        responses: responses.iter().map(|s| s.to_string()).collect(),
    }
}

fn texts() -> Vec<TextRecord> {
    vec![
        TextRecord { text: "one".into() },
        TextRecord {
            text: "two \"quoted\"\nwith a newline and ünïcödé".into(),
        },
    ]
}

fn sfts() -> Vec<SftRecord> {
    vec![
        SftRecord {
            prompt: "Q: 2+2?".into(),
            completion: " 4".into(),
        },
        SftRecord {
            prompt: "Continue: ".into(),
            completion: "free text".into(),
        },
    ]
}

fn pairs() -> Vec<PairRecord> {
    vec![
        pair("p", "good", "bad", None),
        pair("q", "a", "", Some(0.5)),
    ]
}

fn rankings() -> Vec<RankingRecord> {
    vec![
        ranking("p", &["a", "b"]),
        ranking("q", &["x", "y", "z", ""]),
    ]
}

/// write → read, write .gz → read, append one by one → read: all equal `records`.
fn round_trip<T>(tmp: &Tmp, name: &str, records: &[T])
where
    T: serde::Serialize + DeserializeOwned + Validate + PartialEq + std::fmt::Debug,
{
    let p = tmp.0.join(format!("{name}.jsonl"));
    write_jsonl(&p, records).unwrap();
    assert_eq!(read_jsonl::<T>(&p).unwrap(), records);
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().count(), records.len());
    assert!(text.ends_with('\n'));

    let gz = tmp.0.join(format!("{name}.jsonl.gz"));
    write_jsonl(&gz, records).unwrap();
    assert_eq!(&std::fs::read(&gz).unwrap()[..2], &[0x1f, 0x8b]);
    assert_eq!(read_jsonl::<T>(&gz).unwrap(), records);

    let a = tmp.0.join("new/sub").join(format!("{name}.append.jsonl"));
    for r in records {
        append_jsonl(&a, r).unwrap();
    }
    assert_eq!(read_jsonl::<T>(&a).unwrap(), records);
    assert_eq!(std::fs::read_to_string(&a).unwrap(), text);
}

#[test]
fn round_trips() {
    let tmp = Tmp::new("rt");
    round_trip(&tmp, "text", &texts());
    round_trip(&tmp, "sft", &sfts());
    round_trip(&tmp, "pair", &pairs());
    round_trip(&tmp, "ranking", &rankings());
    // No margin: the field is left out, not written as null.
    let p = tmp.0.join("pair.jsonl");
    let first = std::fs::read_to_string(&p).unwrap();
    assert_eq!(
        first.lines().next().unwrap(),
        r#"{"prompt":"p","chosen":"good","rejected":"bad"}"#
    );
}

#[test]
fn reads_hand_written_gz() {
    let tmp = Tmp::new("gz");
    let body = b"{\"prompt\":\"p\",\"responses\":[\"a\",\"b\",\"c\"]}\n\n{\"prompt\":\"q\",\"responses\":[\"d\",\"e\"]}";
    let p = tmp.file("r.jsonl.gz", &gzip(body));
    let got: Vec<RankingRecord> = read_jsonl(&p).unwrap();
    assert_eq!(
        got,
        vec![ranking("p", &["a", "b", "c"]), ranking("q", &["d", "e"])]
    );
    // A file of several gzip members (cat a.gz b.gz, pigz, bgzip) is read whole.
    let multi = [
        gzip(b"{\"prompt\":\"p\",\"responses\":[\"a\",\"b\",\"c\"]}\n"),
        gzip(b"{\"prompt\":\"q\",\"responses\":[\"d\",\"e\"]}\n"),
    ]
    .concat();
    let p = tmp.file("multi.jsonl.gz", &multi);
    let got: Vec<RankingRecord> = read_jsonl(&p).unwrap();
    assert_eq!(got.len(), 2, "every gzip member is read");
    // Bytes after the gzip data are an error naming the file, not ignored.
    let mut junk = gzip(b"{\"text\":\"a\"}\n");
    junk.extend_from_slice(b"garbage");
    let p = tmp.file("junk.jsonl.gz", &junk);
    let e = read_jsonl::<TextRecord>(&p).unwrap_err().to_string();
    assert!(e.contains("junk.jsonl.gz") && e.contains("gzip"), "{e}");
    // A bad line inside a gzip file is named too.
    let p = tmp.file("bad.jsonl.gz", &gzip(b"{\"text\":\"a\"}\n{\"text\":1}\n"));
    let e = read_jsonl::<TextRecord>(&p).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl.gz:2:"), "{e}");
    // Not gzip at all.
    let p = tmp.file("plain.jsonl.gz", b"{\"text\":\"a\"}\n");
    let e = read_jsonl::<TextRecord>(&p).unwrap_err().to_string();
    assert!(e.contains("plain.jsonl.gz") && e.contains("gzip"), "{e}");
}

#[test]
fn ranking_expands_to_all_pairs_in_order() {
    let r2 = ranking("p", &["a", "b"]);
    assert_eq!(r2.pairs(), vec![pair("p", "a", "b", None)]);
    let r3 = ranking("p", &["a", "b", "c"]);
    assert_eq!(
        r3.pairs(),
        vec![
            pair("p", "a", "b", None),
            pair("p", "a", "c", None),
            pair("p", "b", "c", None),
        ]
    );
    let r4 = ranking("p", &["a", "b", "c", "d"]);
    let got: Vec<(String, String)> = r4
        .pairs()
        .into_iter()
        .map(|p| (p.chosen, p.rejected))
        .collect();
    let want: Vec<(String, String)> = [
        ("a", "b"),
        ("a", "c"),
        ("a", "d"),
        ("b", "c"),
        ("b", "d"),
        ("c", "d"),
    ]
    .iter()
    .map(|(c, r)| (c.to_string(), r.to_string()))
    .collect();
    assert_eq!(got, want);
    assert!(
        r4.pairs()
            .iter()
            .all(|p| p.prompt == "p" && p.margin.is_none())
    );
    // A pair is a ranking of two, and back.
    let pr = pair("p", "good", "bad", Some(1.0));
    let r = pr.into_ranking();
    assert_eq!(r, ranking("p", &["good", "bad"]));
    assert_eq!(r.pairs(), vec![pair("p", "good", "bad", None)]);
}

/// Five-line file whose line `at` (1-based) is `bad`; the others are `good`.
fn five_lines(good: &str, bad: &str, at: usize) -> String {
    (1..=5)
        .map(|i| if i == at { bad } else { good })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Reading `bad` at line 3 of a five-line file fails, naming `name:3:` and containing `want`.
fn bad_line<T: DeserializeOwned + Validate + std::fmt::Debug>(
    tmp: &Tmp,
    name: &str,
    good: &str,
    bad: &str,
    want: &[&str],
) {
    assert!(
        read_jsonl::<T>(&tmp.file("ok.jsonl", good.as_bytes())).is_ok(),
        "{good}"
    );
    let p = tmp.file(name, five_lines(good, bad, 3).as_bytes());
    let e = read_jsonl::<T>(&p).unwrap_err();
    assert!(matches!(e, Error::Data { line: Some(3), .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("{name}:3:")), "{msg}");
    for w in want {
        assert!(msg.contains(w), "{msg:?} lacks {w:?}");
    }
}

#[test]
fn bad_lines_are_named() {
    let tmp = Tmp::new("bad");
    let text = r#"{"text":"hello"}"#;
    let sft = r#"{"prompt":"p","completion":"c"}"#;
    let pr = r#"{"prompt":"p","chosen":"a","rejected":"b","margin":0.5}"#;
    let rk = r#"{"prompt":"p","responses":["a","b","c"]}"#;

    // Malformed JSON: serde's message and the column.
    bad_line::<TextRecord>(
        &tmp,
        "t1.jsonl",
        text,
        r#"{"text":"a""#,
        &["malformed JSON", "EOF", "column"],
    );
    bad_line::<TextRecord>(
        &tmp,
        "t2.jsonl",
        text,
        r#"{"text" "a"}"#,
        &["expected `:`", "column 9"],
    );
    bad_line::<TextRecord>(&tmp, "t3.jsonl", text, "not json", &["malformed JSON"]);
    bad_line::<TextRecord>(
        &tmp,
        "t4.jsonl",
        text,
        r#"{"text":"a"} x"#,
        &["trailing characters"],
    );
    // Missing, unknown, mistyped, duplicated fields; not an object.
    bad_line::<SftRecord>(
        &tmp,
        "s1.jsonl",
        sft,
        r#"{"prompt":"p"}"#,
        &["missing field `completion`"],
    );
    bad_line::<SftRecord>(
        &tmp,
        "s2.jsonl",
        sft,
        r#"{"prompt":"p","completion":"c","x":1}"#,
        &["unknown field `x`"],
    );
    bad_line::<SftRecord>(
        &tmp,
        "s3.jsonl",
        sft,
        r#"{"prompt":1,"completion":"c"}"#,
        &["invalid type: integer `1`", "column"],
    );
    bad_line::<SftRecord>(
        &tmp,
        "s4.jsonl",
        sft,
        r#"{"prompt":"p","prompt":"q","completion":"c"}"#,
        &["duplicate field `prompt`"],
    );
    bad_line::<SftRecord>(
        &tmp,
        "s5.jsonl",
        sft,
        r#"["p","c"]"#,
        &["bad record", "expected a JSON object"],
    );
    bad_line::<SftRecord>(
        &tmp,
        "s6.jsonl",
        sft,
        r#"{"prompt":"p","completion":"  "}"#,
        &["empty completion"],
    );
    bad_line::<TextRecord>(&tmp, "t5.jsonl", text, r#"{"text":""}"#, &["empty text"]);
    // Prompts, texts and completions are not empty (responses may be); nothing holds a NUL.
    bad_line::<SftRecord>(
        &tmp,
        "s7.jsonl",
        sft,
        r#"{"prompt":"","completion":"c"}"#,
        &["empty prompt"],
    );
    bad_line::<TextRecord>(
        &tmp,
        "t6.jsonl",
        text,
        r#"{"text":"a\u0000b"}"#,
        &["text contains a NUL byte at byte 1"],
    );
    bad_line::<PairRecord>(
        &tmp,
        "p0.jsonl",
        pr,
        r#"{"prompt":"p","chosen":"a\u0000","rejected":""}"#,
        &["chosen contains a NUL byte at byte 1"],
    );
    bad_line::<RankingRecord>(
        &tmp,
        "r0.jsonl",
        r#"{"prompt":"p","responses":["a","b"]}"#,
        r#"{"prompt":"p","responses":["a","b\u0000"]}"#,
        &["response 2 contains a NUL byte"],
    );
    // Pairs: empty prompt, identical responses, bad margins.
    bad_line::<PairRecord>(
        &tmp,
        "p1.jsonl",
        pr,
        r#"{"prompt":"","chosen":"a","rejected":"b"}"#,
        &["empty prompt"],
    );
    bad_line::<PairRecord>(
        &tmp,
        "p2.jsonl",
        pr,
        r#"{"prompt":"p","chosen":"a","rejected":"a"}"#,
        &["identical"],
    );
    bad_line::<PairRecord>(
        &tmp,
        "p3.jsonl",
        pr,
        r#"{"prompt":"p","chosen":"a","rejected":"b","margin":1e39}"#,
        &["margin must be finite", "inf"],
    );
    bad_line::<PairRecord>(
        &tmp,
        "p4.jsonl",
        pr,
        r#"{"prompt":"p","chosen":"a","rejected":"b","margin":-1}"#,
        &["margin must be ≥ 0"],
    );
    bad_line::<PairRecord>(
        &tmp,
        "p5.jsonl",
        pr,
        r#"{"prompt":"p","chosen":"a","rejected":"b","margin":NaN}"#,
        &["malformed JSON"],
    );
    bad_line::<PairRecord>(
        &tmp,
        "p6.jsonl",
        pr,
        r#"{"prompt":"p","chosen":"a","rejected":"b","margin":"1"}"#,
        &["invalid type: string"],
    );
    // Rankings: K < 2, duplicates, empty prompt, a pair record in a ranking file.
    bad_line::<RankingRecord>(
        &tmp,
        "r1.jsonl",
        rk,
        r#"{"prompt":"p","responses":["a"]}"#,
        &["at least 2 responses, got 1"],
    );
    bad_line::<RankingRecord>(
        &tmp,
        "r2.jsonl",
        rk,
        r#"{"prompt":"p","responses":[]}"#,
        &["got 0"],
    );
    bad_line::<RankingRecord>(
        &tmp,
        "r3.jsonl",
        rk,
        r#"{"prompt":"p","responses":["a","b","a"]}"#,
        &["responses 1 and 3 are identical"],
    );
    bad_line::<RankingRecord>(
        &tmp,
        "r4.jsonl",
        rk,
        r#"{"prompt":" ","responses":["a","b"]}"#,
        &["empty prompt"],
    );
    bad_line::<RankingRecord>(&tmp, "r5.jsonl", rk, pr, &["unknown field `chosen`"]);
    bad_line::<RankingRecord>(
        &tmp,
        "r6.jsonl",
        rk,
        r#"{"prompt":"p","responses":"a"}"#,
        &["invalid type"],
    );
}

#[test]
fn bad_files_are_named() {
    let tmp = Tmp::new("files");
    // Invalid UTF-8 on line 2.
    let p = tmp.file("utf.jsonl", b"{\"text\":\"a\"}\n{\"text\":\"\xff\"}\n");
    let e = read_jsonl::<TextRecord>(&p).unwrap_err().to_string();
    assert!(e.contains("utf.jsonl:2:") && e.contains("UTF-8"), "{e}");
    // No records: empty, blank lines only, BOM only.
    for (name, body) in [
        ("empty.jsonl", &b""[..]),
        ("blank.jsonl", b"\n  \n\r\n"),
        ("bom.jsonl", b"\xef\xbb\xbf\n"),
    ] {
        let p = tmp.file(name, body);
        let e = read_jsonl::<TextRecord>(&p).unwrap_err();
        assert!(matches!(e, Error::Data { line: None, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(name) && msg.contains("no records"), "{msg}");
    }
    // A missing file: Io naming the path.
    let p = tmp.0.join("missing.jsonl");
    let e = read_jsonl::<TextRecord>(&p).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("missing.jsonl"), "{e}");
    // Line numbers count blank lines: the bad record is on physical line 4.
    let p = tmp.file("gaps.jsonl", b"\n{\"text\":\"a\"}\n\n{\"text\":2}\n");
    let e = read_jsonl::<TextRecord>(&p).unwrap_err().to_string();
    assert!(e.contains("gaps.jsonl:4:"), "{e}");
}

#[test]
fn blank_lines_crlf_and_bom_are_accepted() {
    let tmp = Tmp::new("lenient");
    let body = b"\xef\xbb\xbf{\"prompt\":\"p\",\"completion\":\"a\"}\r\n\r\n   \n{\"prompt\":\"q\",\"completion\":\"b\\r\\n\"}\r\n\n";
    let p = tmp.file("ok.jsonl", body);
    let got: Vec<SftRecord> = read_jsonl(&p).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].prompt.as_str(), got[0].completion.as_str()),
        ("p", "a")
    );
    assert_eq!(got[1].completion, "b\r\n");
    // Last line without a newline.
    let p = tmp.file("nonl.jsonl", b"{\"text\":\"a\"}\n{\"text\":\"b\"}");
    assert_eq!(read_jsonl::<TextRecord>(&p).unwrap().len(), 2);
    // A BOM later than the first line is not stripped: it is malformed JSON there.
    let p = tmp.file(
        "bom2.jsonl",
        b"{\"text\":\"a\"}\n\xef\xbb\xbf{\"text\":\"b\"}\n",
    );
    let e = read_jsonl::<TextRecord>(&p).unwrap_err().to_string();
    assert!(e.contains("bom2.jsonl:2:"), "{e}");
}

#[test]
fn append_after_a_crash() {
    let tmp = Tmp::new("crash");
    // The last record was written but its newline was not: the append starts a new line.
    let p = tmp.file("r.jsonl", br#"{"prompt":"p","responses":["a","b"]}"#);
    append_jsonl(&p, &ranking("q", &["c", "d"])).unwrap();
    let got: Vec<RankingRecord> = read_jsonl(&p).unwrap();
    assert_eq!(
        got,
        vec![ranking("p", &["a", "b"]), ranking("q", &["c", "d"])]
    );
    // A record cut short mid-line (a kill or a full disk): readers name it and read without it,
    // and the next append cuts it off, so the file holds whole records again.
    let p = tmp.file("cut.jsonl", b"{\"text\":\"a\"}\n{\"text\":\"b");
    assert_eq!(
        read_jsonl::<TextRecord>(&p).unwrap(),
        vec![TextRecord { text: "a".into() }]
    );
    append_jsonl(&p, &TextRecord { text: "c".into() }).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text, "{\"text\":\"a\"}\n{\"text\":\"c\"}\n");
    // Only a last line without its newline is taken for torn: bad JSON elsewhere is an error.
    let p = tmp.file(
        "mid.jsonl",
        b"{\"text\":\"a\"}\n{\"text\":\"b\n{\"text\":\"c\"}\n",
    );
    let e = read_jsonl::<TextRecord>(&p).unwrap_err().to_string();
    assert!(e.contains("mid.jsonl:2:"), "{e}");
    // Nor is a last line that is complete but wrong.
    let p = tmp.file("wrong.jsonl", b"{\"text\":\"a\"}\n{\"text\":1}");
    let e = read_jsonl::<TextRecord>(&p).unwrap_err().to_string();
    assert!(e.contains("wrong.jsonl:2:"), "{e}");
}

#[test]
fn writers_refuse_what_cannot_be_read_back() {
    let tmp = Tmp::new("refuse");
    let p = tmp.0.join("w.jsonl");
    let e = write_jsonl::<TextRecord>(&p, &[]).unwrap_err().to_string();
    assert!(e.contains("no records"), "{e}");
    let rs = [ranking("p", &["a", "b"]), ranking("p", &["a", "a"])];
    let e = write_jsonl(&p, &rs).unwrap_err().to_string();
    assert!(e.contains("w.jsonl:2:") && e.contains("identical"), "{e}");
    assert!(!p.exists());
    let e = append_jsonl(&p, &pair("p", "a", "b", Some(f32::NAN)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("w.jsonl") && e.contains("finite"), "{e}");
    assert!(!p.exists());
    let gz = tmp.0.join("w.jsonl.gz");
    let e = append_jsonl(&gz, &TextRecord { text: "a".into() })
        .unwrap_err()
        .to_string();
    assert!(e.contains("w.jsonl.gz") && e.contains(".gz"), "{e}");
    // write_jsonl replaces a whole file.
    write_jsonl(&p, &texts()).unwrap();
    write_jsonl(&p, &texts()[..1]).unwrap();
    assert_eq!(read_jsonl::<TextRecord>(&p).unwrap(), texts()[..1]);
}

#[test]
fn preference_files_mix_rankings_and_pairs() {
    let tmp = Tmp::new("pref");
    let body = concat!(
        r#"{"prompt":"p","responses":["a","b","c"]}"#,
        "\n",
        r#"{"prompt":"q","chosen":"d","rejected":"e","margin":0.5}"#,
        "\n",
        r#"{"prompt":"r","chosen":"f","rejected":"g"}"#,
        "\n",
    );
    let got: Vec<PreferenceRecord> = read_jsonl(&tmp.file("mixed.jsonl", body.as_bytes())).unwrap();
    assert_eq!(
        got,
        vec![
            PreferenceRecord::Ranking(ranking("p", &["a", "b", "c"])),
            PreferenceRecord::Pair(pair("q", "d", "e", Some(0.5))),
            PreferenceRecord::Pair(pair("r", "f", "g", None)),
        ]
    );
    assert_eq!(got[0].ranking(), ("p", vec!["a", "b", "c"], 0.0));
    assert_eq!(got[1].ranking(), ("q", vec!["d", "e"], 0.5));
    assert_eq!(got[2].ranking(), ("r", vec!["f", "g"], 0.0));
    // Each kind's own checks still apply, named by line.
    for (line, needle) in [
        (r#"{"prompt":"p","chosen":"a","rejected":"a"}"#, "identical"),
        (
            r#"{"prompt":"p","chosen":"a","rejected":"b","margin":-1}"#,
            "margin must be ≥ 0",
        ),
        (
            r#"{"prompt":"p","responses":["a"]}"#,
            "at least 2 responses",
        ),
        (r#"{"prompt":"p","chosen":"a"}"#, "a pair needs both"),
        (r#"{"prompt":"p"}"#, "expected \"responses\""),
    ] {
        let p = tmp.file(
            "bad.jsonl",
            format!("{}\n{line}\n", &body[..body.find('\n').unwrap()]).as_bytes(),
        );
        let e = read_jsonl::<PreferenceRecord>(&p).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl:2:") && e.contains(needle), "{e}");
    }
}

#[test]
fn prompt_records() {
    let tmp = Tmp::new("prompts");
    let prompts = vec![
        PromptRecord {
            prompt: "Hi".into(),
        },
        PromptRecord {
            prompt: "Tell me ✓".into(),
        },
    ];
    round_trip(&tmp, "prompt", &prompts);
    let p = tmp.file("bad.jsonl", b"{\"prompt\":\"a\"}\n{\"prompt\":\" \"}\n");
    let e = read_jsonl::<PromptRecord>(&p).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:2: empty prompt"), "{e}");
}
