//! BPE tokenizers: one trained on the shipped corpus, and a GPT-2-style `tokenizer.json` built
//! here (its id 0 is an ordinary token, so the model's ids are shifted by one). A model trained
//! with one carries it in its checkpoint; every command decodes with it; mismatches are clear
//! errors; bits per byte compare across tokenizers.

mod common;

use common::{TINY_MODEL, TINY_RUN, assert_one_error, corpus, palm, scratch, stderr, stdout};
use palm_model::{PalmConfig, PalmParams, Tokenizer};
use std::path::{Path, PathBuf};

/// GPT-2's byte ↔ symbol table: printable bytes stand for themselves (first, in byte order),
/// the others take the symbols from U+0100 on.
fn byte_symbols() -> Vec<char> {
    let mut bytes: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut symbols = bytes.clone();
    let mut extra = 0;
    for b in 0..256 {
        if !bytes.contains(&b) {
            bytes.push(b);
            symbols.push(256 + extra);
            extra += 1;
        }
    }
    symbols.into_iter().filter_map(char::from_u32).collect()
}

/// A GPT-2-style byte-level BPE file: the 256 byte symbols in GPT-2's order (so `!` is id 0),
/// three merges (" t", "he", " the") and `<|endoftext|>` last.
fn gpt2_style_json() -> String {
    let mut vocab = serde_json::Map::new();
    for (i, c) in byte_symbols().into_iter().enumerate() {
        vocab.insert(c.to_string(), i.into());
    }
    for (i, t) in ["Ġt", "he", "Ġthe"].iter().enumerate() {
        vocab.insert(t.to_string(), (256 + i).into());
    }
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": 259, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false,
            "vocab": vocab, "merges": ["Ġ t", "h e", "Ġt he"]
        }
    })
    .to_string()
}

const SAMPLES: [&str; 4] = [
    "The state of the Union is strong.\n",
    "  two spaces, a tab\tand a café — ünïcödé ✓ 🦀",
    "",
    "!!!",
];

#[test]
fn a_bpe_trained_on_the_shipped_corpus_round_trips_and_compresses() {
    let (_, bytes) = palm_rlhf::corpus::read_bytes(None).unwrap();
    let text = String::from_utf8(bytes[..1 << 20].to_vec()).unwrap();
    let t = Tokenizer::train_bpe(&text, 1000).unwrap();
    assert_eq!(t.ids(), 1000);
    assert_eq!(t.encode("<pad>").unwrap(), [0], "id 0 is the padding token");
    for s in SAMPLES {
        let ids = t.encode(s).unwrap();
        assert!(
            ids.iter().all(|&i| i > 0 && (i as usize) < t.ids()),
            "{ids:?}"
        );
        assert_eq!(t.decode(&ids), s);
    }
    let ids = t.encode_corpus(&text).unwrap();
    let per_token = text.len() as f64 / ids.len() as f64;
    assert!(per_token > 3.0, "{per_token:.2} bytes per token");
    // The chunked parallel encoding decodes back to the text.
    assert_eq!(t.decode(&ids), text);
    // Its JSON is the tokenizer.
    let again = Tokenizer::from_json(t.json().unwrap(), "copy").unwrap();
    assert_eq!(again, t);
    assert_eq!(
        again.encode(SAMPLES[1]).unwrap(),
        t.encode(SAMPLES[1]).unwrap()
    );
    // Sizes out of range are refused.
    assert_eq!(
        Tokenizer::train_bpe(&text, 257).unwrap().ids(),
        257,
        "no merges"
    );
    for vocab in [0, 256, usize::MAX] {
        assert!(
            Tokenizer::train_bpe(&text, vocab).is_err(),
            "--vocab {vocab}"
        );
    }
    assert!(Tokenizer::train_bpe("", 300).is_err());
}

#[test]
fn a_gpt2_style_file_is_shifted_past_padding() {
    let t = Tokenizer::from_json(&gpt2_style_json(), "gpt2-style").unwrap();
    assert_eq!(t.ids(), 261, "260 ids of the file, shifted by one");
    assert_eq!(
        t.encode("!").unwrap(),
        [1],
        "the file's id 0 is the model's 1"
    );
    assert_eq!(t.encode(" the").unwrap(), [259]);
    assert_eq!(t.encode("<|endoftext|>").unwrap(), [260]);
    for s in SAMPLES {
        assert_eq!(t.decode(&t.encode(s).unwrap()), s);
    }
    // Padding and ids past the vocabulary decode to nothing.
    assert_eq!(t.decode(&[0, 1, 0, 5000]), "!");
    let bad = Tokenizer::from_json("{\"model\": 3}", "bad.json").unwrap_err();
    assert!(bad.to_string().contains("bad.json"), "{bad}");
}

/// `palm tokenizer train --vocab N --data DATA --out OUT`, which must succeed; its stdout.
fn train_tokenizer(data: &Path, vocab: usize, out: &Path) -> String {
    let o = palm(&[
        "tokenizer",
        "train",
        "--vocab",
        &vocab.to_string(),
        "--data",
        s(data),
        "--out",
        s(out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// `palm sft` from `checkpoint` (with `extra` flags) on four copies of the JSONL `record`, in
/// `dir/sft`; the tokenizer `palm info` reports for the fine-tuned model.
fn fine_tuned_tokenizer(dir: &Path, checkpoint: &str, record: &str, extra: &[&str]) -> String {
    let data = write(dir, "sft.jsonl", &format!("{record}\n").repeat(4));
    let out = dir.join("sft");
    let mut args = vec![
        "sft",
        "--checkpoint",
        checkpoint,
        "--data",
        s(&data),
        "--out",
        s(&out),
    ];
    args.extend_from_slice(&[
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--device",
        "cpu",
    ]);
    args.extend_from_slice(extra);
    let o = palm(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let info = json_of(&palm(&[
        "info",
        "--checkpoint",
        s(&out.join("model.safetensors")),
        "--json",
    ]));
    info["tokenizer"].as_str().unwrap().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn json_of(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_str(stdout(o).lines().last().unwrap()).unwrap()
}

/// The whole path from a clone: train a tokenizer, a model with it, then sample, evaluate,
/// inspect, chat and fine-tune with the checkpoint alone; a wrong tokenizer is refused.
#[test]
fn a_model_trained_with_a_bpe_carries_it_everywhere() {
    let dir = scratch("bpe-cli");
    let data = corpus(&dir);
    let tok = dir.join("tokenizer.json");
    let done = train_tokenizer(&data, 300, &tok);
    assert!(done.starts_with("done: 300 ids"), "{done}");
    let o = palm(&[
        "tokenizer",
        "encode",
        "--tokenizer",
        s(&tok),
        "--json",
        "all men are",
    ]);
    let enc = json_of(&o);
    assert!(enc["ids"].as_array().unwrap().len() < 11, "{enc}");

    let run = dir.join("run");
    let mut args = vec![
        "train",
        "--tokenizer",
        s(&tok),
        "--data",
        s(&data),
        "--out",
        s(&run),
    ];
    args.extend_from_slice(TINY_MODEL);
    args.extend_from_slice(TINY_RUN);
    args.extend_from_slice(&["--steps", "4", "--val-every", "2", "--sample-every", "0"]);
    let o = palm(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("byte-level BPE of 300 ids"),
        "{}",
        stderr(&o)
    );
    let model_path = run.join("model.safetensors");
    let model = s(&model_path);

    let info = json_of(&palm(&["info", "--checkpoint", model, "--json"]));
    assert_eq!(info["config"]["num_tokens"], 300);
    assert_eq!(info["tokenizer"], "byte-level BPE of 300 ids");
    assert!(info["metadata"].get("tokenizer").is_none());

    let o = palm(&[
        "sample",
        "--checkpoint",
        model,
        "--max-tokens",
        "12",
        "--json",
        "--prompt",
        "We hold",
    ]);
    let sample = json_of(&o);
    assert_eq!(sample["tokens"], 12);
    assert!(
        sample["completion"].as_str().unwrap().len() >= 12,
        "{sample}"
    );

    // Bits per byte: per-token loss scaled by the file's tokens per byte.
    let e = json_of(&palm(&[
        "eval",
        "--checkpoint",
        model,
        "--data",
        s(&data),
        "--seq-len",
        "16",
        "--json",
    ]));
    let (loss, bpb) = (
        e["loss"].as_f64().unwrap(),
        e["bits_per_byte"].as_f64().unwrap(),
    );
    assert!(bpb > 0.0 && bpb < loss / std::f64::consts::LN_2, "{e}");

    // Chat from a pipe: the reply is the model's decoded text.
    let o = common::palm_with_input(
        &["chat", "--checkpoint", model, "--max-tokens", "6", "--json"],
        "hello\n",
    );
    let turn = json_of(&o);
    assert_eq!(turn["prompt"], "User: hello\nAssistant:");
    assert!(turn["tokens"].as_u64().unwrap() <= 6);

    // Fine-tuning keeps the tokenizer in the new checkpoint.
    let record = "{\"prompt\":\"Q: all men\",\"completion\":\" are equal\"}";
    assert_eq!(
        fine_tuned_tokenizer(&dir, model, record, &[]),
        "byte-level BPE of 300 ids"
    );

    // The same tokenizer again is accepted; another one is refused with one error.
    let o = palm(&[
        "sample",
        "--checkpoint",
        model,
        "--tokenizer",
        s(&tok),
        "--max-tokens",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let other = dir.join("other.json");
    train_tokenizer(&data, 290, &other);
    let o = palm(&["sample", "--checkpoint", model, "--tokenizer", s(&other)]);
    assert_one_error(&o, "trained with a different tokenizer");
    // A byte-level checkpoint has 256 ids: a BPE of 300 does not fit it.
    let bytes_model = common::tiny_checkpoint(&dir, 1);
    let o = palm(&[
        "eval",
        "--checkpoint",
        s(&bytes_model),
        "--data",
        s(&data),
        "--tokenizer",
        s(&tok),
    ]);
    assert_one_error(&o, "vocabulary size mismatch");
    // A tokenizer.json that is not one.
    let junk = write(&dir, "junk.json", "{\"version\": \"1.0\"}");
    let o = palm(&["train", "--tokenizer", s(&junk), "--steps", "1"]);
    assert_one_error(&o, "junk.json");
    // Hostile files: empty, cut in half, and (sparse, nothing written) larger than any
    // tokenizer.json, refused by its size before it is read.
    let good = std::fs::read_to_string(&tok).unwrap();
    let empty = write(&dir, "empty.json", "");
    let half = write(
        &dir,
        "half.json",
        &good[..good.floor_char_boundary(good.len() / 2)],
    );
    let huge = dir.join("huge.json");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    for (bad, why) in [
        (&empty, "empty.json"),
        (&half, "half.json"),
        (&huge, "larger than"),
    ] {
        let o = palm(&["sample", "--checkpoint", model, "--tokenizer", s(bad)]);
        assert_one_error(&o, why);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A GPT-2-style tokenizer given to a checkpoint that has none (as the seed's files have none):
/// it is used when every id fits, and the fine-tuned model carries it from then on.
#[test]
fn a_checkpoint_without_a_tokenizer_takes_one_that_fits() {
    let dir = scratch("bpe-untagged");
    let tok = write(&dir, "gpt2.json", &gpt2_style_json());
    let mut rng = palm_engine::Rng::new(3);
    let params = PalmParams::init(&PalmConfig::new(512, 32, 1, 2, 16), &mut rng).unwrap();
    let ckpt = dir.join("seed-like.safetensors");
    palm_model::checkpoint::save_model(&ckpt, &params, &[]).unwrap();

    let o = palm(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--tokenizer",
        s(&tok),
        "--max-tokens",
        "5",
        "--json",
        "--prompt",
        "the",
    ]);
    assert_eq!(json_of(&o)["tokens"], 5);
    let record = "{\"prompt\":\"Q: the\",\"completion\":\" the!\"}";
    assert_eq!(
        fine_tuned_tokenizer(&dir, s(&ckpt), record, &["--tokenizer", s(&tok)]),
        "byte-level BPE of 261 ids, shifted by one for padding"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A BPE training run stopped and resumed ends bit-exactly where the uninterrupted one does,
/// and its validation is in bits per byte of the held-out text.
#[test]
fn a_bpe_run_resumes_bit_exactly() {
    let dir = scratch("bpe-resume");
    let data = corpus(&dir);
    let tok = dir.join("tokenizer.json");
    train_tokenizer(&data, 280, &tok);
    let (full, part) = (dir.join("full"), dir.join("part"));
    let extra = [
        "--tokenizer",
        s(&tok),
        "--steps",
        "6",
        "--val-every",
        "3",
        "--ckpt-every",
        "3",
    ];
    let o = common::train(&full, &data, &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = common::train(&part, &data, &[&extra[..], &["--stop-at", "3"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = palm(&["train", "--resume", s(&part), "--device", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    common::assert_resumed_like(&full, &part, &["model.safetensors"]);
    let bpb: Vec<f64> = common::metrics_without_timings(&full)
        .iter()
        .filter_map(|m| m.get("val_bpb").and_then(|v| v.as_f64()))
        .collect();
    assert!(
        !bpb.is_empty() && bpb.iter().all(|b| b.is_finite() && *b > 0.0),
        "{bpb:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A reward model reads text with its trunk's tokenizer: one that differs from the policy's is
/// refused before an RL run starts (scores of misread text would be noise), and one that
/// matches carries the tokenizer through its file.
#[test]
fn a_reward_model_must_share_the_policys_tokenizer() {
    use palm_rlhf::reward::{Pooling, RewardModel};
    use palm_rlhf::rollout::RewardSource;
    let dir = scratch("bpe-reward");
    let bpe = Tokenizer::from_json(&gpt2_style_json(), "gpt2-style").unwrap();
    let mut rng = palm_engine::Rng::new(5);
    let trunk = PalmParams::init(&PalmConfig::new(261, 32, 1, 2, 16), &mut rng).unwrap();
    let bytes_rm = RewardModel::new(trunk.clone(), Pooling::Mean, &mut rng).unwrap();
    let path = dir.join("bytes-rm.safetensors");
    bytes_rm.save(&path).unwrap();
    let err = RewardSource::load(Some(&path), None, &bpe).err().unwrap();
    assert!(
        err.to_string().contains("share the policy's tokenizer"),
        "{err}"
    );
    let bpe_rm = RewardModel::new(
        trunk.with_tokenizer(bpe.clone()).unwrap(),
        Pooling::Mean,
        &mut rng,
    )
    .unwrap();
    let path = dir.join("bpe-rm.safetensors");
    bpe_rm.save(&path).unwrap();
    assert!(RewardSource::load(Some(&path), None, &bpe).is_ok());
    assert_eq!(RewardModel::load(&path).unwrap().trunk.tokenizer, bpe);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Streaming a reply token by token shows exactly the text of the whole reply, for bytes (a
/// character split across byte tokens waits for its end) and for a BPE.
#[test]
fn streamed_text_is_the_decoded_text() {
    use palm_model::tokenizer::TextStream;
    let (_, bytes) = palm_rlhf::corpus::read_bytes(None).unwrap();
    let text = String::from_utf8(bytes[..1 << 18].to_vec()).unwrap();
    let bpe = Tokenizer::train_bpe(&text, 600).unwrap();
    let gpt2 = Tokenizer::from_json(&gpt2_style_json(), "gpt2-style").unwrap();
    for t in [Tokenizer::bytes(), bpe, gpt2] {
        for sample in SAMPLES.iter().chain([&"naïve café — 🦀 über…\nnext line"]) {
            let ids = t.encode(sample).unwrap();
            let mut stream = TextStream::new(&t);
            let mut out = String::new();
            for &id in &ids {
                let piece = stream.push(id);
                assert!(!piece.contains('\u{FFFD}'), "{piece:?} of {sample:?}");
                out.push_str(&piece);
            }
            out.push_str(&stream.finish());
            assert_eq!(out, t.decode(&ids), "{}", t.describe());
        }
    }
    // A reply cut inside a character ends with U+FFFD, shown once at the finish.
    let t = Tokenizer::bytes();
    let mut stream = TextStream::new(&t);
    let cut: Vec<u32> = "é".bytes().take(1).map(u32::from).collect();
    assert_eq!(stream.push(cut[0]), "");
    assert_eq!(stream.finish(), "\u{FFFD}");
}
