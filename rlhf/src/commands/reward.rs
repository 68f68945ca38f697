//! `palm reward train` and `palm reward score`: fit a reward model to rankings (or pairs) from a
//! policy checkpoint, and score responses with one.

use crate::data::{PreferenceRecord, read_jsonl};
use crate::epochs::{Session, Start};
use crate::reward::{Pooling, RewardModel};
use crate::reward_train::{self, MODEL_FILE, Ranked, TrainSettings};
use crate::run_dir::{RunDir, SavedState};
use crate::{Error, Result};
use clap::{Args, Subcommand};
use palm_engine::Rng;
use palm_model::checkpoint::load_model;
use serde::{Deserialize, Serialize};
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
    #[arg(long, required_unless_present = "resume")]
    pub checkpoint: Option<PathBuf>,
    /// JSONL of rankings {"prompt","responses":[best … worst]} and/or pairs
    /// {"prompt","chosen","rejected"[,"margin"]} (.gz is decompressed).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// Run folder: reward.safetensors and reward_state.safetensors (saved after every epoch)
    /// and metrics.jsonl.
    #[arg(long, default_value = "runs/reward")]
    pub out: PathBuf,
    #[command(flatten)]
    pub folder: super::RunFolder,
    /// Continue the run in this folder (its saved settings apply) bit-exactly.
    /// Flags the run fixed (all but --device and --stop-at) are refused.
    #[arg(long, conflicts_with_all = ["checkpoint", "data", "out", "overwrite", "pooling", "lora", "lora_rank", "epochs", "batch", "seq_len", "val_frac", "seed"])]
    pub resume: Option<PathBuf>,
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
    #[command(flatten)]
    pub train: TrainSettings,
    /// Longest sequence (prompt + response) in tokens: responses keep at most N − 1 (cut at
    /// the end), and the prompt loses its front until the longest response fits.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..))]
    pub seq_len: u64,
    /// Fraction of the rankings held out (chosen with --seed) for the loss and pairwise accuracy
    /// reported after every epoch.
    #[arg(long, default_value_t = 0.1)]
    pub val_frac: f64,
    /// Seeds the held-out split, the head (and adapter) initialisation and the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: super::DeviceArg,
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
    #[command(flatten)]
    pub device: super::DeviceArg,
}

pub fn run(args: RewardArgs) -> Result<()> {
    match args.command {
        RewardCommand::Train(a) => train(a),
        RewardCommand::Score(a) => score(a),
    }
}

/// What a reward-model run is: saved with its checkpoints, so `--resume` rebuilds the same run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RewardRun {
    checkpoint: PathBuf,
    data: PathBuf,
    pooling: Pooling,
    /// The LoRA rank (with --lora).
    lora: Option<u64>,
    seq_len: u64,
    val_frac: f64,
    seed: u64,
    #[serde(flatten)]
    train: TrainSettings,
}

impl RewardRun {
    fn of(a: &TrainArgs) -> Result<RewardRun> {
        let (Some(checkpoint), Some(data)) = (&a.checkpoint, &a.data) else {
            return Err(Error::Invalid(
                "--checkpoint and --data are required (or --resume DIR)".into(),
            ));
        };
        Ok(RewardRun {
            checkpoint: checkpoint.clone(),
            data: data.clone(),
            pooling: a.pooling,
            lora: a.lora.then_some(a.lora_rank),
            seq_len: a.seq_len,
            val_frac: a.val_frac,
            seed: a.seed,
            train: a.train.clone(),
        })
    }

    /// The flags' checks, also applied to settings read back from a state.
    fn check(&self) -> Result<()> {
        if !(self.val_frac > 0.0 && self.val_frac < 1.0) {
            return Err(Error::Invalid(
                "--val-frac must be between 0 and 1 (exclusive)".into(),
            ));
        }
        let t = &self.train;
        if t.epochs == 0 || t.batch == 0 || self.seq_len < 2 || self.lora == Some(0) {
            return Err(Error::Invalid(
                "--epochs, --batch and --lora-rank must be ≥ 1 and --seq-len ≥ 2".into(),
            ));
        }
        t.optim.check()
    }
}

fn train(args: TrainArgs) -> Result<()> {
    let device = args.device.resolve()?;
    // A resumed run is locked before its state is read; a fresh one checks its data and
    // checkpoint before anything is created on disk.
    let (resumed, r) = match &args.resume {
        Some(dir) => {
            let (run, state) = RunDir::resume(dir, reward_train::STATE_FILE, |d| {
                let path = d.join(reward_train::STATE_FILE);
                let state = SavedState::open(&path, reward_train::STATE_FORMAT)?;
                let offset = state.metrics_offset;
                Ok((state, offset))
            })?;
            let r: RewardRun = state.settings_as()?;
            eprintln!("resuming {} at step {}", dir.display(), state.step);
            (Some((run, state)), r)
        }
        None => (None, RewardRun::of(&args)?),
    };
    r.check()?;
    let records = read_jsonl::<PreferenceRecord>(&r.data)?;
    let (trunk, file) = load_model(&r.checkpoint)?;
    if resumed.is_none()
        && file.metadata().get("format").map(String::as_str) == Some(crate::reward::FORMAT)
    {
        eprintln!(
            "note: {} is a reward model; only its trunk is used (a fresh head and segment embeddings)",
            r.checkpoint.display()
        );
    }
    let mut rng = Rng::new(r.seed);
    let (train, val, cut) =
        reward_train::split_records(&records, r.val_frac, r.seq_len as usize, &mut rng)
            .map_err(|e| Error::data(&r.data, None, e.to_string()))?;
    if cut > 0 {
        eprintln!("note: {cut} ranking(s) cut to --seq-len {}", r.seq_len);
    }
    // Each step scores every response of `--batch` rankings at once.
    let widest = train.iter().map(|r| r.responses.len()).max().unwrap_or(2);
    let rows = r.train.batch.min(train.len()).saturating_mul(widest);
    // Sequences are as long as the data's, up to --seq-len.
    let seq = train
        .iter()
        .map(|r| r.prompt.len() + r.responses.iter().map(Vec::len).max().unwrap_or(0))
        .max()
        .unwrap_or(0)
        .min(r.seq_len as usize);
    let c = &trunk.config;
    let need = match r.lora {
        Some(rank) => {
            let trainable =
                palm_model::budget::lora(c, rank as usize).saturating_add(c.dim as u128);
            palm_model::budget::adapter_training(c, trainable, rows, seq)
        }
        None => palm_model::budget::training(c, rows, seq),
    };
    palm_model::budget::check(
        &format!(
            "reward training with --batch {} --seq-len {seq}",
            r.train.batch
        ),
        need,
        device,
    )?;
    let mut rm = RewardModel::new(trunk, r.pooling, &mut rng)?;
    if let Some(rank) = r.lora {
        rm.add_lora(rank as usize, &mut rng)?;
    }
    let (mut run, start) = match resumed {
        Some((mut run, state)) => {
            let start = Start::resumed(&state, &mut rm, r.train.optim.adam())?;
            run.repair_model(MODEL_FILE, state.step, |path, marks| {
                rm.save_with(path, marks)
            })?;
            (run, start)
        }
        None => {
            let run = RunDir::create(
                &args.out,
                &reward_train::RUN_FILES,
                args.folder.replace.overwrite,
            )?;
            (run, Start::fresh(rng))
        }
    };
    rm.move_to(device)?;
    let pairs = |rs: &[Ranked]| rs.iter().map(Ranked::pairs).sum::<usize>();
    let c = &rm.trunk.config;
    let what = match r.lora {
        Some(rank) => format!("frozen, LoRA rank {rank} trained"),
        None => "trained".to_string(),
    };
    let steps_per_epoch = train.len().div_ceil(r.train.batch) as u64;
    eprintln!(
        "reward model on a {:.2}M-parameter trunk ({what}), {} pooling; {} rankings ({} pairs) to train, {} held out ({} pairs) from {}; {} epoch(s) of {steps_per_epoch} steps of {}",
        c.num_params() as f64 / 1e6,
        r.pooling.name(),
        train.len(),
        pairs(&train),
        val.len(),
        pairs(&val),
        r.data.display(),
        r.train.epochs,
        r.train.batch
    );
    let timer = std::time::Instant::now();
    let saved = serde_json::to_value(&r)
        .map_err(|e| Error::Invalid(format!("cannot serialise the settings: {e}")))?;
    let session = Session {
        start,
        settings: saved,
        stop_at: args.folder.stop_at,
    };
    let results = reward_train::train(&mut rm, &train, &val, &r.train, session, &mut run)?;
    if args
        .folder
        .stop_at
        .is_some_and(|s| s < steps_per_epoch.saturating_mul(r.train.epochs))
    {
        return Ok(());
    }
    let last = results
        .last()
        .ok_or_else(|| Error::Invalid("reward training ran no epoch".into()))?;
    eprintln!(
        "done: {} epoch(s), {}, {:.1}s; model in {}",
        r.train.epochs,
        reward_train::held_line(last),
        timer.elapsed().as_secs_f64(),
        run.join(MODEL_FILE).display()
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
    let device = args.device.resolve()?;
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
