//! Fuzz entry points: arbitrary bytes given to every reader of a file format, which must answer
//! with a value or a clean error — never a panic, never an allocation the input's size does not
//! justify. The same functions are driven by the proptest suite (`tests/tests/fuzz.rs`, in CI)
//! and by the libFuzzer targets under `fuzz/` (by hand, for as long as one likes).

use palm_engine::SafeFile;
use palm_rlhf::data::{
    PairRecord, PreferenceRecord, PromptRecord, RankingRecord, SftRecord, TextRecord, read_jsonl,
};
use std::path::{Path, PathBuf};

/// A scratch folder for one fuzz input, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("palm-fuzz-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch folder");
        Scratch(p)
    }
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("scratch file");
        p
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `bytes` as a safetensors file, through every loader: the raw reader (and every tensor of
/// it), the model, language-model and reward-model loaders, and a training state to resume.
pub fn safetensors_input(bytes: &[u8]) {
    let dir = Scratch::new("st");
    let path = dir.write("model.safetensors", bytes);
    if let Ok(file) = SafeFile::open(&path) {
        let names: Vec<String> = file.names().map(str::to_string).collect();
        for n in names {
            let _ = file.info(&n);
            if let Ok(t) = file.get(&n) {
                let _ = t.to_vec::<f32>();
            }
        }
        let _ = palm_model::checkpoint::config_of(&file);
        let _ = palm_model::checkpoint::params_of(&file);
    }
    let _ = palm_model::checkpoint::load_model(&path);
    let _ = palm_model::checkpoint::load_language_model(&path);
    let _ = palm_rlhf::reward::RewardModel::load(&path);
    let _ = palm_rlhf::rl_run::load_policy(&path);
    dir.write(palm_rlhf::trainer::STATE_FILE, bytes);
    let _ =
        palm_rlhf::trainer::Trainer::<palm_rlhf::pretrain::TrainDefaults>::resume(dir.path(), None);
}

/// `bytes` as a JSONL file (and, when they are gzip, as a `.jsonl.gz`), read as every record
/// type, and as a text corpus.
pub fn jsonl_input(bytes: &[u8]) {
    let dir = Scratch::new("jsonl");
    let gz = bytes.starts_with(&[0x1f, 0x8b]);
    let path = dir.write(if gz { "data.jsonl.gz" } else { "data.jsonl" }, bytes);
    let _ = read_jsonl::<TextRecord>(&path);
    let _ = read_jsonl::<SftRecord>(&path);
    let _ = read_jsonl::<PromptRecord>(&path);
    let _ = read_jsonl::<PairRecord>(&path);
    let _ = read_jsonl::<RankingRecord>(&path);
    let _ = read_jsonl::<PreferenceRecord>(&path);
    let _ = palm_rlhf::commands::rank::ranked_prompts(&path);
    let text = dir.write(if gz { "corpus.txt.gz" } else { "corpus.txt" }, bytes);
    let bytes_tokenizer = palm_model::Tokenizer::bytes();
    let _ = palm_rlhf::corpus::Corpus::load(Some(&text), 0.05, 16, &bytes_tokenizer);
    // The same bytes as a tokenizer.json: refused with an error or usable, never a panic.
    if let Ok(t) = palm_model::Tokenizer::from_json(&String::from_utf8_lossy(bytes), "fuzz") {
        let ids = t.encode("The state of the Union").unwrap_or_default();
        let _ = t.decode(&ids);
    }
}
