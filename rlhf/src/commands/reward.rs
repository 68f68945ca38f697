//! `palm reward train` and `palm reward score`: fit a reward model to rankings (or pairs) from a
//! policy checkpoint, and score responses with one.

use crate::data::{PreferenceRecord, read_jsonl};
use crate::reward::{Pooling, RewardModel};
use crate::reward_train::{self, MODEL_FILE, Ranked, TrainSettings};
use crate::run_dir::RunDir;
use crate::{Error, Result};
use clap::{Args, Subcommand};
use palm_engine::Rng;
use palm_model::checkpoint::load_model;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct RewardArgs {
    #[command(subcommand)]
    pub command: RewardCommand,
}

#[derive(Subcommand, Debug)]
pub enum RewardCommand {
    /// Train a reward model on rankings or pairs, starting from a policy checkpoint.
    Train(TrainArgs),
    /// Score responses to a prompt with a trained reward model.
    Score(ScoreArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Policy checkpoint whose trunk the reward model starts from (copied; the file is not changed).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// JSONL of rankings {"prompt","responses":[best … worst]} and/or pairs
    /// {"prompt","chosen","rejected"[,"margin"]} (.gz is decompressed).
    #[arg(long)]
    pub data: PathBuf,
    /// Run folder: reward.safetensors (saved after every epoch) and metrics.jsonl.
    #[arg(long, default_value = "runs/reward")]
    pub out: PathBuf,
    #[command(flatten)]
    pub replace: super::Overwrite,
    /// Pool the final-LayerNorm output by its mean over the sequence (the seed) or take the
    /// last token (TRL).
    #[arg(long, value_enum, default_value_t = Pooling::Mean)]
    pub pooling: Pooling,
    /// Freeze the trunk and train LoRA adapters (scope `reward`) with the segment embeddings and
    /// the head.
    #[arg(long)]
    pub lora: bool,
    /// Rank of the LoRA adapters (with --lora).
    #[arg(long, default_value_t = 8, requires = "lora", value_parser = clap::value_parser!(u64).range(1..))]
    pub lora_rank: u64,
    /// Passes over the training rankings.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: u64,
    /// Rankings per step (every response of a ranking is scored in the same batch).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Longest sequence (prompt + response) in tokens: responses keep at most N − 1 (cut at
    /// the end), and the prompt loses its front until the longest response fits.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..))]
    pub seq_len: u64,
    /// Fraction of the rankings held out (chosen with --seed) for the loss and pairwise accuracy
    /// reported after every epoch.
    #[arg(long, default_value_t = 0.1)]
    pub val_frac: f64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f32,
    /// Final learning rate of the cosine schedule.
    #[arg(long, default_value_t = 3e-5)]
    pub min_lr: f32,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
    /// AdamW weight decay (matrices only).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this.
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f32,
    /// Seeds the held-out split, the head (and adapter) initialisation and the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// A reward model: reward.safetensors, or the run folder holding it.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The prompt the responses answer.
    #[arg(long)]
    pub prompt: String,
    /// A response to score; repeat for several. Prints one JSON line per response, in order.
    #[arg(long, required = true)]
    pub response: Vec<String>,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(args: RewardArgs) -> Result<()> {
    match args.command {
        RewardCommand::Train(a) => train(a),
        RewardCommand::Score(a) => score(a),
    }
}

fn check_args(a: &TrainArgs) -> Result<()> {
    let bad = |m: &str| Err(Error::Invalid(m.to_string()));
    if !(a.val_frac > 0.0 && a.val_frac < 1.0) {
        return bad("--val-frac must be between 0 and 1 (exclusive)");
    }
    crate::trainer::check_optim(a.lr, a.min_lr, a.grad_clip, a.weight_decay)
}

fn train(args: TrainArgs) -> Result<()> {
    let device = super::resolve_device(&args.device)?;
    check_args(&args)?;
    // Data and checkpoint are checked before anything is created on disk.
    let records = read_jsonl::<PreferenceRecord>(&args.data)?;
    let (trunk, file) = load_model(&args.checkpoint)?;
    if file.metadata().get("format").map(String::as_str) == Some(crate::reward::FORMAT) {
        eprintln!(
            "note: {} is a reward model; only its trunk is used (a fresh head and segment embeddings)",
            args.checkpoint.display()
        );
    }
    let mut rng = Rng::new(args.seed);
    let (train, val, cut) =
        reward_train::split_records(&records, args.val_frac, args.seq_len as usize, &mut rng)
            .map_err(|e| Error::data(&args.data, None, e.to_string()))?;
    if cut > 0 {
        eprintln!("note: {cut} ranking(s) cut to --seq-len {}", args.seq_len);
    }
    // Each step scores every response of `--batch` rankings at once.
    let widest = train.iter().map(|r| r.responses.len()).max().unwrap_or(2);
    let rows = (args.batch as usize)
        .min(train.len())
        .saturating_mul(widest);
    // Sequences are as long as the data's, up to --seq-len.
    let seq = train
        .iter()
        .map(|r| r.prompt.len() + r.responses.iter().map(Vec::len).max().unwrap_or(0))
        .max()
        .unwrap_or(0)
        .min(args.seq_len as usize);
    let c = &trunk.config;
    let need = if args.lora {
        let trainable =
            palm_model::budget::lora(c, args.lora_rank as usize).saturating_add(c.dim as u128);
        palm_model::budget::adapter_training(c, trainable, rows, seq)
    } else {
        palm_model::budget::training(c, rows, seq)
    };
    palm_model::budget::check(
        &format!(
            "reward training with --batch {} --seq-len {seq}",
            args.batch
        ),
        need,
        device,
    )?;
    let mut rm = RewardModel::new(trunk, args.pooling, &mut rng)?;
    if args.lora {
        rm.add_lora(args.lora_rank as usize, &mut rng)?;
    }
    rm.move_to(device)?;
    let pairs = |rs: &[Ranked]| rs.iter().map(Ranked::pairs).sum::<usize>();
    let c = &rm.trunk.config;
    let what = if args.lora {
        format!("frozen, LoRA rank {} trained", args.lora_rank)
    } else {
        "trained".to_string()
    };
    eprintln!(
        "reward model on a {:.2}M-parameter trunk ({what}), {} pooling; {} rankings ({} pairs) to train, {} held out ({} pairs) from {}; {} epoch(s) of {} steps of {}",
        c.num_params() as f64 / 1e6,
        args.pooling.name(),
        train.len(),
        pairs(&train),
        val.len(),
        pairs(&val),
        args.data.display(),
        args.epochs,
        train.len().div_ceil(args.batch as usize),
        args.batch
    );
    let settings = TrainSettings {
        epochs: args.epochs,
        batch: args.batch as usize,
        lr: args.lr,
        min_lr: args.min_lr,
        warmup: args.warmup,
        weight_decay: args.weight_decay,
        grad_clip: args.grad_clip,
    };
    let mut run = RunDir::create(&args.out, &[MODEL_FILE], args.replace.overwrite)?;
    let timer = std::time::Instant::now();
    let results = reward_train::train(&mut rm, &train, &val, &settings, &mut rng, &mut run)?;
    let last = results
        .last()
        .ok_or_else(|| Error::Invalid("reward training ran no epoch".into()))?;
    eprintln!(
        "done: {} epoch(s), {}, {:.1}s; model in {}",
        args.epochs,
        reward_train::held_line(last),
        timer.elapsed().as_secs_f64(),
        args.out.join(MODEL_FILE).display()
    );
    Ok(())
}

/// A reward-model file, or the run folder that holds one.
fn model_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join(MODEL_FILE)
    } else {
        p.to_path_buf()
    }
}

fn score(args: ScoreArgs) -> Result<()> {
    let device = super::resolve_device(&args.device)?;
    if args.prompt.is_empty() {
        return Err(Error::Invalid("--prompt must not be empty".into()));
    }
    let mut rm = RewardModel::load(&model_path(&args.checkpoint))?;
    rm.move_to(device)?;
    let responses: Vec<&str> = args.response.iter().map(String::as_str).collect();
    let scores = rm.score_texts(&args.prompt, &responses)?;
    for (r, s) in responses.iter().zip(scores) {
        super::emit(serde_json::json!({"score": s, "response": r}));
    }
    Ok(())
}
