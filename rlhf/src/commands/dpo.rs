//! `palm dpo`: Direct Preference Optimisation of a policy checkpoint on preference pairs or
//! rankings, against a frozen reference that is the same checkpoint.

use crate::data::{PreferenceRecord, read_jsonl};
use crate::dpo::{self, LORA_SCOPE, MODEL_FILE, Policy, TrainSettings};
use crate::epochs::{Session, Start};
use crate::reward_train::split_held_out;
use crate::run_dir::{RunDir, SavedState};
use crate::{Error, Result};
use clap::Args;
use palm_engine::Rng;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DpoArgs {
    /// The policy to train, usually an SFT checkpoint; it is also the frozen reference. Actor
    /// adapters it holds (a LoRA run of `palm dpo`) are merged in first.
    #[arg(long, required_unless_present = "resume")]
    pub policy: Option<PathBuf>,
    /// JSONL of pairs {"prompt","chosen","rejected"} and/or rankings {"prompt","responses":[best
    /// … worst]} (a ranking of K gives its K(K−1)/2 pairs; a pair's "margin" is not used by DPO);
    /// .gz is decompressed.
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// Run folder: model.safetensors (loadable by `palm sample`), dpo_state.safetensors and
    /// metrics.jsonl.
    #[arg(long, default_value = "runs/dpo")]
    pub out: PathBuf,
    #[command(flatten)]
    pub folder: super::RunFolder,
    /// Continue the run in this folder (its saved settings apply) bit-exactly.
    /// Flags the run fixed (all but --device and --stop-at) are refused.
    #[arg(long, conflicts_with_all = ["policy", "data", "out", "overwrite", "beta", "lora", "epochs", "batch", "seq_len", "val_frac", "val_every", "log_every", "seed"])]
    pub resume: Option<PathBuf>,
    /// Train LoRA adapters of this rank (scope `actor`, alpha = rank) in front of the frozen
    /// weights instead of all weights; sample the result with `palm sample --lora actor`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub lora: Option<u64>,
    #[command(flatten)]
    pub train: TrainSettings,
    /// Longest sequence (prompt + response) in tokens: responses keep at most N − 1 (cut at the
    /// end), and the prompt loses its front until the longest response of its record fits.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..))]
    pub seq_len: u64,
    /// Fraction of the records held out (chosen with --seed) for validation; the pairs of one
    /// ranking stay on one side.
    #[arg(long, default_value_t = 0.1)]
    pub val_frac: f64,
    /// Seeds the held-out split, the adapters' initialisation and the pair order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

/// What a DPO run is: saved with its checkpoints, so `--resume` rebuilds the same run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DpoRun {
    policy: PathBuf,
    data: PathBuf,
    lora: Option<u64>,
    seq_len: u64,
    val_frac: f64,
    seed: u64,
    #[serde(flatten)]
    train: TrainSettings,
}

impl DpoRun {
    fn of(a: &DpoArgs) -> Result<DpoRun> {
        let (Some(policy), Some(data)) = (&a.policy, &a.data) else {
            return Err(Error::Invalid(
                "--policy and --data are required (or --resume DIR)".into(),
            ));
        };
        Ok(DpoRun {
            policy: policy.clone(),
            data: data.clone(),
            lora: a.lora,
            seq_len: a.seq_len,
            val_frac: a.val_frac,
            seed: a.seed,
            train: a.train.clone(),
        })
    }

    /// The flags' checks, also applied to settings read back from a state.
    fn check(&self) -> Result<()> {
        let (bad, t) = (|m: &str| Err(Error::Invalid(m.to_string())), &self.train);
        if !(t.beta > 0.0 && t.beta.is_finite()) {
            return bad("--beta must be a positive number");
        }
        if !(self.val_frac > 0.0 && self.val_frac < 1.0) {
            return bad("--val-frac must be between 0 and 1 (exclusive)");
        }
        if t.epochs == 0 || t.batch == 0 || self.seq_len < 2 || self.lora == Some(0) {
            return bad("--epochs, --batch and --lora must be ≥ 1 and --seq-len ≥ 2");
        }
        t.optim.check()
    }
}

pub fn run(args: DpoArgs) -> Result<()> {
    let device = args.device.resolve()?;
    // A resumed run is locked before its state is read; a fresh one checks its data and
    // checkpoint before anything is created on disk.
    let (resumed, r) = match &args.resume {
        Some(dir) => {
            let (run, state) = RunDir::resume(dir, dpo::STATE_FILE, |d| {
                let state = SavedState::open(&d.join(dpo::STATE_FILE), dpo::STATE_FORMAT)?;
                let offset = state.metrics_offset;
                Ok((state, offset))
            })?;
            let r: DpoRun = state.settings_as()?;
            eprintln!("resuming {} at step {}", dir.display(), state.step);
            (Some((run, state)), r)
        }
        None => (None, DpoRun::of(&args)?),
    };
    r.check()?;
    let records = read_jsonl::<PreferenceRecord>(&r.data)?;
    let params = crate::rl_run::load_merged_policy(&r.policy)?;
    let mut rng = Rng::new(r.seed);
    let (train_idx, val_idx) = split_held_out(records.len(), r.val_frac, &mut rng)
        .map_err(|e| Error::data(&r.data, None, e.to_string()))?;
    let seq_len = r.seq_len as usize;
    let pick = |idx: &[usize]| idx.iter().map(|&i| &records[i]).collect::<Vec<_>>();
    let (train_pairs, cut_t) = dpo::pairs_of(&pick(&train_idx), seq_len);
    let (val_pairs, cut_v) = dpo::pairs_of(&pick(&val_idx), seq_len);
    if cut_t + cut_v > 0 {
        eprintln!(
            "note: {} record(s) cut to --seq-len {}",
            cut_t + cut_v,
            r.seq_len
        );
    }
    // Each step scores the chosen and the rejected response of `--batch` pairs.
    let rows = r.train.batch.min(train_pairs.len()).saturating_mul(2);
    // Sequences are as long as the data's (already cut to --seq-len).
    let longest = train_pairs
        .iter()
        .map(|p| p.prompt.len() + p.chosen.len().max(p.rejected.len()))
        .max()
        .unwrap_or(0);
    let c = &params.config;
    let need = match r.lora {
        Some(rank) => {
            let trainable = palm_model::budget::lora(c, rank as usize);
            palm_model::budget::adapter_training(c, trainable, rows, longest)
        }
        None => palm_model::budget::training(c, rows, longest),
    };
    palm_model::budget::check(
        &format!("DPO with --batch {} --seq-len {seq_len}", r.train.batch),
        need,
        device,
    )?;
    let params = params.to_device(device)?;
    let mut policy = match r.lora {
        Some(rank) => Policy::with_lora(params, rank as usize, &mut rng)?,
        None => Policy::full(params),
    };
    let what = match r.lora {
        Some(rank) => format!("frozen, LoRA rank {rank} (scope {LORA_SCOPE}) trained"),
        None => "all weights trained".to_string(),
    };
    let batch = r.train.batch;
    eprintln!(
        "DPO (β = {}) of a {:.2}M-parameter policy ({what}) from {}; {} pairs to train, {} held out, from {}; {} epoch(s) of {} steps of {} pairs",
        r.train.beta,
        policy.params.config.num_params() as f64 / 1e6,
        r.policy.display(),
        train_pairs.len(),
        val_pairs.len(),
        r.data.display(),
        r.train.epochs,
        train_pairs.len().div_ceil(batch),
        batch
    );
    let steps = (train_pairs.len().div_ceil(batch) as u64).saturating_mul(r.train.epochs);
    let (mut run, state) = match resumed {
        Some((run, state)) => (run, Some(state)),
        None => {
            let run = RunDir::create(&args.out, &dpo::RUN_FILES, args.folder.replace.overwrite)?;
            (run, None)
        }
    };
    let timer = std::time::Instant::now();
    // The policy has not trained yet (a resumed one gets its trained tensors after this), so it
    // is the reference.
    let train = dpo::score_reference(&policy, train_pairs, batch)?;
    let val = dpo::score_reference(&policy, val_pairs, batch)?;
    let start = match &state {
        Some(state) => {
            let start = Start::resumed(state, &mut policy, r.train.optim.adam())?;
            let p = &policy;
            run.repair_model(MODEL_FILE, state.step, |path, marks| p.save(path, marks))?;
            start
        }
        None => Start::fresh(rng),
    };
    let session = Session {
        start,
        settings: serde_json::to_value(&r)
            .map_err(|e| Error::Invalid(format!("cannot serialise the settings: {e}")))?,
        stop_at: args.folder.stop_at,
    };
    let results = dpo::train(&mut policy, &train, &val, &r.train, session, &mut run)?;
    if args.folder.stop_at.is_some_and(|s| s < steps) {
        return Ok(());
    }
    let last = results
        .last()
        .ok_or_else(|| Error::Invalid("DPO ran no validation".into()))?;
    let sample_hint = if r.lora.is_some() {
        format!(" (sample with --lora {LORA_SCOPE})")
    } else {
        String::new()
    };
    eprintln!(
        "done: {}, {:.1}s; model in {}{sample_hint}",
        dpo::held_line(last),
        timer.elapsed().as_secs_f64(),
        run.join(MODEL_FILE).display()
    );
    Ok(())
}
