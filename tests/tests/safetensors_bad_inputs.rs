//! Bad checkpoints: every corrupt or mismatched file gives one clear `Err` — naming the file
//! and, where there is one, the tensor — and never a panic. Valid files are written with
//! `save_model` into a temp folder, then corrupted by hand (format: 8-byte little-endian header
//! length, JSON header `{name: {dtype, shape, data_offsets}, "__metadata__": {...}}`, data).
//! Also: saves are atomic (no temp file left behind) and replace an existing file fully.

use palm_engine::{Rng, SafeFile, Tensor, save_safetensors};
use palm_model::checkpoint::{load_model, model_metadata, model_tensors, save_model};
use palm_model::{PalmConfig, PalmParams};
use palm_tests::badfiles::*;
use serde_json::json;
use std::collections::HashMap;

#[test]
fn hand_built_file_is_valid_even_misaligned() {
    // Positive control for the builder: 5 floats at an odd header length (data misaligned for
    // f32, so the loader must copy instead of mapping).
    let dir = TempDir::new("control");
    let vals = [1.5f32, -2.0, 3.25, 4.0, -0.5];
    for pad in 0..4 {
        let header = format!("{}{}", two_tensor_header([0, 8], [8, 20]), " ".repeat(pad));
        let p = dir.write("ok.safetensors", &frame(&header, &f32_bytes(&vals)));
        let f = SafeFile::open(&p).unwrap();
        assert_eq!(f.get("a").unwrap().to_vec::<f32>().unwrap(), &vals[..2]);
        assert_eq!(f.get("b").unwrap().to_vec::<f32>().unwrap(), &vals[2..]);
    }
}

// ---- SafeFile::open on corrupt bytes -----------------------------------------------------------

#[test]
fn missing_file_and_directory() {
    let dir = TempDir::new("missing");
    let p = dir.file("does-not-exist.safetensors");
    let msg = open_err(&p);
    assert_mentions(&msg, &["does-not-exist.safetensors"]);
    assert_mentions(&load_err(&p), &["does-not-exist.safetensors"]);
    // A folder where a file is expected.
    let sub = dir.file("a-folder.safetensors");
    std::fs::create_dir(&sub).unwrap();
    assert_mentions(&open_err(&sub), &["a-folder.safetensors"]);
}

#[test]
fn empty_file() {
    let dir = TempDir::new("empty");
    let p = dir.write("empty.safetensors", &[]);
    assert_format_err(&p, &["header too small"]);
}

#[test]
fn shorter_than_eight_bytes() {
    let dir = TempDir::new("short");
    for n in 1..8 {
        let p = dir.write("short.safetensors", &vec![2u8; n]);
        assert_format_err(&p, &["header too small"]);
    }
}

#[test]
fn header_length_larger_than_file() {
    let dir = TempDir::new("hdrlen");
    let mut bytes = frame("{}", &[]);
    bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
    let p = dir.write("long-header.safetensors", &bytes);
    assert_format_err(&p, &["invalid header length"]);
    // Exactly one byte too long.
    let mut bytes = frame_json(&two_tensor_header([0, 8], [8, 20]), &[1; 20]);
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    bytes[..8].copy_from_slice(&(n + 21).to_le_bytes());
    let p = dir.write("long-header2.safetensors", &bytes);
    assert_format_err(&p, &[]);
}

#[test]
fn header_length_absurd() {
    let dir = TempDir::new("absurd");
    for n in [u64::MAX, u64::MAX - 7, 1 << 40] {
        let mut bytes = frame("{}", &[0; 32]);
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        let p = dir.write("absurd.safetensors", &bytes);
        assert_format_err(&p, &["header too large"]);
    }
}

#[test]
fn header_not_json() {
    let dir = TempDir::new("notjson");
    for header in ["this is not json", "{\"a\": ", "{]"] {
        let p = dir.write("notjson.safetensors", &frame(header, &[]));
        assert_format_err(&p, &["JSON"]);
    }
    // Not even UTF-8.
    let mut bytes = 4u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0x80, 0x7b]);
    let p = dir.write("notutf8.safetensors", &bytes);
    assert_format_err(&p, &["UTF-8"]);
}

#[test]
fn header_json_not_an_object() {
    let dir = TempDir::new("notobj");
    for header in ["[1, 2, 3]", "\"a string\"", "null", "42", "true"] {
        let p = dir.write("notobj.safetensors", &frame(header, &[]));
        assert_format_err(&p, &["JSON"]);
    }
    // An object whose entries are not tensor descriptions.
    for header in [
        r#"{"a": 5}"#,
        r#"{"a": {"dtype": "F32"}}"#,
        r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}"#,
        r#"{"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}"#,
        r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}"#,
        r#"{"__metadata__": {"config": 5}}"#,
        r#"{"__metadata__": [1]}"#,
    ] {
        let data: &[u8] = if header.contains("__metadata__") {
            &[]
        } else {
            &[0; 8]
        };
        let p = dir.write("badentry.safetensors", &frame(header, data));
        assert_format_err(&p, &[]);
    }
}

#[test]
fn unknown_dtype() {
    let dir = TempDir::new("dtype");
    for dtype in ["F33", "float32", "", "f32"] {
        let header = json!({"a": {"dtype": dtype, "shape": [2], "data_offsets": [0, 8]}});
        let p = dir.write("dtype.safetensors", &frame_json(&header, &[1; 8]));
        assert_format_err(&p, &["JSON"]);
    }
}

#[test]
fn dtype_known_to_safetensors_but_unsupported_errors_on_get() {
    let dir = TempDir::new("unsupported");
    let header = json!({
        "ok": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "weird": {"dtype": "I8", "shape": [4], "data_offsets": [4, 8]},
    });
    let p = dir.write("i8.safetensors", &frame_json(&header, &[1; 8]));
    let f = SafeFile::open(&p).unwrap();
    assert!(f.get("ok").is_ok());
    match f.get("weird") {
        Ok(_) => panic!("an I8 tensor loaded"),
        Err(e) => assert_mentions(&e.to_string(), &["weird", "i8.safetensors", "I8"]),
    }
}

#[test]
fn get_of_a_missing_name() {
    let dir = TempDir::new("getmissing");
    let p = dir.write(
        "two.safetensors",
        &frame_json(&two_tensor_header([0, 8], [8, 20]), &[1; 20]),
    );
    let f = SafeFile::open(&p).unwrap();
    match f.get("c") {
        Ok(_) => panic!("a missing tensor loaded"),
        Err(e) => assert_mentions(&e.to_string(), &["'c'", "two.safetensors"]),
    }
}

#[test]
fn data_offsets_out_of_range() {
    let dir = TempDir::new("range");
    // Second tensor runs past the end of the data.
    let p = dir.write(
        "range.safetensors",
        &frame_json(&two_tensor_header([0, 8], [8, 20]), &[1; 16]),
    );
    assert_format_err(&p, &[]);
    // Offsets far beyond the file, and end before start.
    for (a, b) in [([0, 8], [8, 1 << 40]), ([0, 8], [20, 8]), ([8, 0], [8, 20])] {
        let p = dir.write(
            "range2.safetensors",
            &frame_json(&two_tensor_header(a, b), &[1; 20]),
        );
        assert_format_err(&p, &[]);
    }
    // Data longer than the tensors claim (trailing bytes).
    let p = dir.write(
        "trailing.safetensors",
        &frame_json(&two_tensor_header([0, 8], [8, 20]), &[1; 24]),
    );
    assert_format_err(&p, &["not fully covered"]);
}

#[test]
fn overlapping_offsets() {
    let dir = TempDir::new("overlap");
    // a = bytes 0..8, b = bytes 4..16: both sizes right, but they overlap.
    let header = json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [3], "data_offsets": [4, 16]},
    });
    let p = dir.write("overlap.safetensors", &frame_json(&header, &[1; 16]));
    assert_format_err(&p, &["invalid offset"]);
    // Two names for the very same bytes.
    let header = json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    });
    let p = dir.write("alias.safetensors", &frame_json(&header, &[1; 8]));
    assert_format_err(&p, &["invalid offset"]);
}

#[test]
fn offsets_with_a_gap() {
    let dir = TempDir::new("gap");
    // a = 0..8, b = 12..24: bytes 8..12 belong to nothing.
    let p = dir.write(
        "gap.safetensors",
        &frame_json(&two_tensor_header([0, 8], [12, 24]), &[1; 24]),
    );
    assert_format_err(&p, &["invalid offset"]);
    // A leading gap.
    let header = json!({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}});
    let p = dir.write("gap2.safetensors", &frame_json(&header, &[1; 12]));
    assert_format_err(&p, &["invalid offset"]);
}

#[test]
fn shape_and_size_mismatch() {
    let dir = TempDir::new("size");
    for (dtype, shape, bytes) in [
        ("F32", json!([3]), 8usize),
        ("F32", json!([2, 2]), 12),
        ("BF16", json!([4]), 4),
        ("F64", json!([1]), 4),
        ("U8", json!([]), 2),
    ] {
        let header = json!({"a": {"dtype": dtype, "shape": shape, "data_offsets": [0, bytes]}});
        let p = dir.write("size.safetensors", &frame_json(&header, &vec![1u8; bytes]));
        assert_format_err(&p, &["invalid shape, data type, or offset"]);
    }
    // A shape whose element count overflows.
    let header = json!({"a": {"dtype": "F32", "shape": [u64::MAX / 2, 4], "data_offsets": [0, 8]}});
    let p = dir.write("overflow.safetensors", &frame_json(&header, &[1; 8]));
    assert_format_err(&p, &["overflow"]);
}

#[test]
fn truncated_and_bit_flipped_model_files() {
    let dir = TempDir::new("truncated");
    let (path, _) = valid_model(&dir);
    let bytes = std::fs::read(&path).unwrap();
    // Cut anywhere: in the length, in the header, in the data, one byte short.
    for cut in [3, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        let p = dir.write("cut.safetensors", &bytes[..cut]);
        assert_format_err(&p, &[]);
    }
    // One extra byte.
    let mut longer = bytes.clone();
    longer.push(0);
    let p = dir.write("longer.safetensors", &longer);
    assert_format_err(&p, &[]);
    // Header length off by one either way.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    for m in [n - 1, n + 1] {
        let mut b = bytes.clone();
        b[..8].copy_from_slice(&m.to_le_bytes());
        let p = dir.write("flip.safetensors", &b);
        assert_format_err(&p, &[]);
    }
}

// ---- saving ------------------------------------------------------------------------------------

#[test]
fn save_leaves_no_temp_file() {
    let dir = TempDir::new("atomic");
    let (path, _) = valid_model(&dir);
    assert_eq!(dir.listing(), ["model.safetensors"]);
    // Again over itself, and through the engine's writer.
    save_model(&path, &small_params(8), &[]).unwrap();
    let t = Tensor::from_vec(vec![1f32, 2.0, 3.0], &[3]).unwrap();
    save_safetensors(
        dir.file("plain.safetensors"),
        &[("t".into(), t)],
        HashMap::new(),
    )
    .unwrap();
    assert_eq!(dir.listing(), ["model.safetensors", "plain.safetensors"]);
}

#[test]
fn save_over_existing_file_replaces_it_fully() {
    let dir = TempDir::new("replace");
    let path = dir.file("model.safetensors");
    // A larger file first: garbage, then a bigger model.
    std::fs::write(&path, vec![0xAB; 1 << 20]).unwrap();
    let small = small_params(1);
    save_model(&path, &small, &[]).unwrap();
    let fresh = dir.file("fresh.safetensors");
    save_model(&fresh, &small, &[]).unwrap();
    let (a, b) = (
        std::fs::read(&path).unwrap(),
        std::fs::read(&fresh).unwrap(),
    );
    assert_eq!(a.len(), b.len(), "old bytes survived past the new end");
    let big_config = PalmConfig::new(32, 16, 3, 2, 4);
    let big = PalmParams::init(&big_config, &mut Rng::new(2)).unwrap();
    save_model(&path, &big, &[]).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > b.len() as u64);
    // Now the small one over the big one.
    save_model(&path, &small, &[]).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), b.len() as u64);
    let (loaded, _) = load_model(&path).unwrap();
    assert_eq!(loaded.config, small.config);
    for ((n, x), (_, y)) in small.named().into_iter().zip(loaded.named()) {
        assert_eq!(
            x.to_vec::<f32>().unwrap(),
            y.to_vec::<f32>().unwrap(),
            "{n}"
        );
    }
    // A mapping of the old file stays intact while the new one replaces it (rename, not
    // rewrite in place).
    let old = SafeFile::open(&path).unwrap();
    let before = old
        .get("token_emb.weight")
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    save_model(&path, &big, &[]).unwrap();
    assert_eq!(
        old.get("token_emb.weight")
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        before
    );
    let (reloaded, _) = load_model(&path).unwrap();
    assert_eq!(reloaded.config, big_config);
    assert_eq!(dir.listing(), ["fresh.safetensors", "model.safetensors"]);
}

#[test]
fn save_into_missing_folder_is_an_error() {
    let dir = TempDir::new("nofolder");
    let path = dir.file("no/such/folder/model.safetensors");
    match save_model(&path, &small_params(3), &[]) {
        Ok(()) => panic!("saved into a folder that does not exist"),
        Err(e) => assert_mentions(&e.to_string(), &["no/such/folder"]),
    }
}

#[test]
fn failed_save_leaves_no_temp_file() {
    let dir = TempDir::new("failedsave");
    let target = dir.file("model.safetensors");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    match save_model(&target, &small_params(4), &[]) {
        Ok(()) => panic!("saved over a folder"),
        Err(e) => assert_mentions(&e.to_string(), &["model.safetensors"]),
    }
    assert_eq!(
        dir.listing(),
        ["model.safetensors"],
        "a temp file was left behind"
    );
}

/// Writing an output through a symlink replaces its target (the link stays a link), and a path
/// that is not a regular file is written to, never renamed over: `palm label --out /dev/null`,
/// run as root, once replaced the machine's /dev/null with a regular file.
#[test]
fn saves_write_through_symlinks_and_into_special_files() {
    use std::os::unix::fs::FileTypeExt;
    let dir = TempDir::new("special");
    let real = dir.file("real.jsonl");
    std::fs::write(&real, b"old").unwrap();
    let link = dir.file("link.jsonl");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    palm_engine::write_atomic(&link, b"new").unwrap();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&real).unwrap(), b"new");

    let fifo = dir.file("pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped the FIFO half: no mkfifo");
        return;
    }
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    palm_engine::write_atomic(&fifo, b"through the pipe").unwrap();
    assert_eq!(reader.join().unwrap(), b"through the pipe");
    let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(kind.is_fifo(), "the FIFO was replaced by a regular file");
    assert_eq!(
        dir.listing(),
        ["link.jsonl", "pipe", "real.jsonl"],
        "a temp file was left behind"
    );
}

#[test]
fn saving_the_same_model_twice_gives_the_same_bytes() {
    let dir = TempDir::new("deterministic");
    let params = small_params(6);
    let (a, b) = (dir.file("a.safetensors"), dir.file("b.safetensors"));
    save_model(&a, &params, &[]).unwrap();
    let first = std::fs::read(&a).unwrap();
    for _ in 0..16 {
        save_model(&b, &params, &[]).unwrap();
        assert!(
            std::fs::read(&b).unwrap() == first,
            "two saves of one model differ"
        );
    }
}

#[test]
fn model_tensors_and_metadata_round_trip_through_engine_writer() {
    // The pieces save_model is made of, written by the engine's writer, load back.
    let dir = TempDir::new("pieces");
    let params = small_params(5);
    let path = dir.file("pieces.safetensors");
    save_safetensors(
        &path,
        &model_tensors(&params, &[]).unwrap(),
        model_metadata(&params.config, &params.tokenizer, &[]).unwrap(),
    )
    .unwrap();
    let (loaded, _) = load_model(&path).unwrap();
    assert_eq!(loaded.config, params.config);
}
