//! Fuzzing that runs in CI: arbitrary safetensors files and JSONL files (structured, mutated
//! from valid ones, and raw bytes) given to every reader (`palm_tests::fuzz`). Each must answer
//! with a value or a clean error: never a panic, and never more than 256 MB of resident memory
//! on top of what the process held before the input (peak RSS, reset before each input). The
//! whole run happens in a child process limited to 8 GB of address space, so an input that makes
//! a reader reserve a huge allocation without touching it fails too (as an abort).
//!
//! `PALM_FUZZ_CASES` sets the number of inputs per format (default 256). For longer runs, use the
//! libFuzzer targets in `fuzz/` (see its README).

use palm_tests::fuzz::{jsonl_input, safetensors_input};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};

const BUDGET_KIB: u64 = 256 * 1024;

fn status_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Run `f` on `input`, failing if it panics or its peak RSS grows past the budget.
fn bounded(f: fn(&[u8]), input: &[u8]) -> Result<(), TestCaseError> {
    // "5" resets the peak-RSS watermark (VmHWM) of this process (Linux ≥ 4.0).
    let measured = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = status_kib("VmRSS:").unwrap_or(0);
    f(input);
    if measured && let Some(peak) = status_kib("VmHWM:") {
        prop_assert!(
            peak.saturating_sub(before) <= BUDGET_KIB,
            "peak RSS rose by {} MiB on a {}-byte input",
            peak.saturating_sub(before) / 1024,
            input.len()
        );
    }
    Ok(())
}

// ---- safetensors ------------------------------------------------------------------------------

fn dim() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..40,
        1 => Just(256),
        1 => Just(1 << 31),
        1 => Just(1 << 62),
        1 => Just(u64::MAX),
    ]
}

fn tensor_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("token_emb.weight".to_string()),
        Just("norm.gamma".to_string()),
        Just("to_logits.weight".to_string()),
        Just("layers.0.fn.fused_attn_ff_proj.weight".to_string()),
        Just("layers.0.fn.attn_out.weight".to_string()),
        Just("layers.0.fn.ff_out.1.weight".to_string()),
        Just("layers.0.norm.gamma".to_string()),
        Just("layers.7.norm.gamma".to_string()),
        Just("optim.m.token_emb.weight".to_string()),
        Just("prompt_embed".to_string()),
        Just("to_pred.weight".to_string()),
        Just("finetune_modules.actor.0.q.A".to_string()),
        "[a-z_.0-9]{0,24}",
    ]
}

fn config_json() -> impl Strategy<Value = Value> {
    let size = || {
        prop_oneof![
            3 => 0u64..300,
            1 => Just(1u64 << 20),
            1 => Just(1u64 << 40),
            1 => Just(u64::MAX),
        ]
    };
    (
        size(),
        size(),
        size(),
        size(),
        size(),
        size(),
        any::<bool>(),
    )
        .prop_map(|(num_tokens, dim, depth, heads, dim_head, ff_mult, xpos)| {
            json!({"num_tokens": num_tokens, "dim": dim, "depth": depth, "heads": heads,
                   "dim_head": dim_head, "ff_mult": ff_mult, "use_xpos": xpos})
        })
}

fn metadata() -> impl Strategy<Value = Map<String, Value>> {
    let format = prop_oneof![
        Just("palm"),
        Just("palm-reward"),
        Just("palm-train-state"),
        Just("palm-ppo-state"),
        Just("nonsense"),
    ];
    let value = prop_oneof![
        Just(Value::String("{}".into())),
        Just(Value::String("-1".into())),
        Just(Value::String("18446744073709551616".into())),
        Just(Value::String("[1,2,3,4]".into())),
        "[ -~]{0,16}".prop_map(Value::String),
    ];
    (
        prop::option::of(config_json()),
        prop::option::of(format),
        prop::collection::vec(
            (
                prop_oneof![
                    Just("step"),
                    Just("optim"),
                    Just("extra"),
                    Just("rng"),
                    Just("checkpoint_step"),
                    Just("metrics_offset"),
                    Just("reward"),
                    Just("lora.actor"),
                ],
                value,
            ),
            0..5,
        ),
    )
        .prop_map(|(config, format, extra)| {
            let mut m = Map::new();
            if let Some(c) = config {
                m.insert("config".into(), Value::String(c.to_string()));
            }
            if let Some(f) = format {
                m.insert("format".into(), Value::String(f.into()));
            }
            for (k, v) in extra {
                m.insert(k.into(), v);
            }
            m
        })
}

/// A file built from a header of plausible names, dtypes, shapes and offsets, with a body that
/// may or may not match it.
fn structured_file() -> impl Strategy<Value = Vec<u8>> {
    let dtype = prop_oneof![
        4 => Just("F32"),
        2 => Just("BF16"),
        1 => Just("F16"),
        1 => Just("I64"),
        1 => Just("U8"),
        1 => Just("F64"),
        1 => Just("Q4"),
    ];
    let tensor = (
        tensor_name(),
        dtype,
        prop::collection::vec(dim(), 0..4),
        any::<bool>(),
        0u64..200,
        0u64..200,
    );
    (
        prop::collection::vec(tensor, 0..6),
        metadata(),
        prop::collection::vec(any::<u8>(), 0..2048),
        any::<bool>(),
    )
        .prop_map(|(tensors, meta, body, consistent)| {
            let mut header = Map::new();
            let mut offset = 0u64;
            for (name, dtype, shape, exact, a, b) in tensors {
                let numel = shape.iter().fold(1u64, |n, &d| n.saturating_mul(d));
                let width = if dtype == "F32" { 4 } else { 2 };
                let (start, end) = if exact {
                    let end = offset.saturating_add(numel.saturating_mul(width));
                    (offset, end)
                } else {
                    (a, a + b)
                };
                offset = end;
                header.insert(
                    name,
                    json!({"dtype": dtype, "shape": shape, "data_offsets": [start, end]}),
                );
            }
            header.insert("__metadata__".into(), Value::Object(meta));
            let text = Value::Object(header).to_string();
            let mut out = (text.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(text.as_bytes());
            let len = if consistent {
                offset.min(1 << 16) as usize
            } else {
                body.len()
            };
            out.extend((0..len).map(|i| body.get(i % body.len().max(1)).copied().unwrap_or(0)));
            out
        })
}

/// A real checkpoint (a tiny model, saved by us) with bytes flipped, cut or inserted.
fn mutated_model(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len();
    prop::collection::vec((0..n, any::<u8>(), 0u8..4), 1..8).prop_map(move |edits| {
        let mut v = valid.clone();
        for (at, byte, kind) in edits {
            let at = at.min(v.len().saturating_sub(1));
            match kind {
                0 | 1 if !v.is_empty() => v[at] ^= byte | 1,
                2 => v.truncate(at),
                _ => v.insert(at.min(v.len()), byte),
            }
        }
        v
    })
}

fn tiny_model_bytes() -> Vec<u8> {
    let dir = palm_tests::fuzz::Scratch::new("valid");
    let config = palm_model::PalmConfig::new(256, 16, 1, 2, 8);
    let params =
        palm_model::PalmParams::init(&config, &mut palm_engine::Rng::new(0)).expect("init");
    let path = dir.path().join("m.safetensors");
    palm_model::checkpoint::save_model(&path, &params, &[]).expect("save");
    std::fs::read(&path).expect("read")
}

// ---- JSONL ------------------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ -~]{0,24}",
        1 => "[\\x00-\\x1f\"\\\\é🙂\u{feff}]{0,8}",
        1 => Just(String::new()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|x| json!(x)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("prompt".to_string()),
                        Just("text".to_string()),
                        Just("completion".to_string()),
                        Just("chosen".to_string()),
                        Just("rejected".to_string()),
                        Just("responses".to_string()),
                        Just("margin".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner
                ),
                0..4
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn record_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (text(), text()).prop_map(|(p, c)| json!({"prompt": p, "completion": c}).to_string().into_bytes()),
        3 => (text(), prop::collection::vec(text(), 0..5)).prop_map(|(p, r)| json!({"prompt": p, "responses": r}).to_string().into_bytes()),
        2 => (text(), text(), text()).prop_map(|(p, a, b)| json!({"prompt": p, "chosen": a, "rejected": b}).to_string().into_bytes()),
        2 => text().prop_map(|t| json!({"text": t}).to_string().into_bytes()),
        3 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn jsonl_file() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((record_line(), any::<bool>(), 0u8..3), 0..12),
        any::<bool>(),
        0u8..5,
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(lines, trailing, gz, junk)| {
            let mut out = Vec::new();
            for (mut line, crlf, cut) in lines {
                if cut == 0 {
                    line.truncate(line.len() / 2);
                }
                out.extend_from_slice(&line);
                out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            }
            if !trailing {
                out.pop();
            }
            let compress = |b: &[u8]| {
                use std::io::Write;
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(b).expect("gzip");
                e.finish().expect("gzip")
            };
            match gz {
                // Plain, one member, two members, a cut member, trailing garbage.
                0 | 1 => out,
                2 => compress(&out),
                3 => {
                    let (a, b) = out.split_at(out.len() / 2);
                    [compress(a), compress(b)].concat()
                }
                _ => {
                    let mut z = compress(&out);
                    if junk.len() % 2 == 0 {
                        z.truncate(z.len() * 2 / 3);
                    } else {
                        z.extend_from_slice(&junk);
                    }
                    z
                }
            }
        })
}

// ---- the run ----------------------------------------------------------------------------------

fn cases() -> u32 {
    std::env::var("PALM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn run(name: &str, strategy: impl Strategy<Value = Vec<u8>>, f: fn(&[u8])) {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, |input| bounded(f, &input)) {
        panic!("{name}: {e}");
    }
}

/// The inner run (in the limited child): every strategy of both formats, one after another, so
/// the peak-RSS measurements of one input are not another thread's.
#[test]
#[ignore = "run by readers_survive_arbitrary_files under an address-space limit"]
fn fuzz_inner() {
    if std::env::var("PALM_FUZZ_CHILD").is_err() {
        return;
    }
    let valid = tiny_model_bytes();
    run(
        "safetensors (structured)",
        structured_file(),
        safetensors_input,
    );
    run(
        "safetensors (mutated)",
        mutated_model(valid),
        safetensors_input,
    );
    run(
        "safetensors (raw)",
        prop::collection::vec(any::<u8>(), 0..256),
        safetensors_input,
    );
    run("jsonl (structured)", jsonl_file(), jsonl_input);
    run(
        "jsonl (raw)",
        prop::collection::vec(any::<u8>(), 0..512),
        jsonl_input,
    );
    println!("FUZZ DONE");
}

#[test]
fn readers_survive_arbitrary_files() {
    let exe = std::env::current_exe().expect("test binary");
    let script = format!(
        "ulimit -v 8000000 && exec '{}' --exact fuzz_inner --ignored --nocapture --test-threads 1",
        exe.display()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("PALM_FUZZ_CHILD", "1")
        .output()
        .expect("run the fuzz child");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("FUZZ DONE"),
        "fuzzing failed ({}):\n{}",
        out.status,
        text.lines()
            .filter(|l| !l.starts_with("warning:") && !l.starts_with("note:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
