//! `palm dpo`: Direct Preference Optimisation of a policy checkpoint on preference pairs or
//! rankings, against a frozen reference that is the same checkpoint.

use crate::data::{PreferenceRecord, read_jsonl};
use crate::dpo::{self, LORA_SCOPE, MODEL_FILE, Policy, TrainSettings};
use crate::reward_train::split_held_out;
use crate::run_dir::RunDir;
use crate::{Error, Result};
use clap::Args;
use palm_engine::Rng;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DpoArgs {
    /// The policy to train, usually an SFT checkpoint; it is also the frozen reference. Actor
    /// adapters it holds (a LoRA run of `palm dpo`) are merged in first.
    #[arg(long)]
    pub policy: PathBuf,
    /// JSONL of pairs {"prompt","chosen","rejected"} and/or rankings {"prompt","responses":[best
    /// … worst]} (a ranking of K gives its K(K−1)/2 pairs; a pair's "margin" is not used by DPO);
    /// .gz is decompressed.
    #[arg(long)]
    pub data: PathBuf,
    /// Run folder: model.safetensors (loadable by `palm sample`) and metrics.jsonl.
    #[arg(long, default_value = "runs/dpo")]
    pub out: PathBuf,
    #[command(flatten)]
    pub replace: super::Overwrite,
    /// DPO's β: the strength of the implicit KL penalty toward the reference.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f32,
    /// Train LoRA adapters of this rank (scope `actor`, alpha = rank) in front of the frozen
    /// weights instead of all weights; sample the result with `palm sample --lora actor`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub lora: Option<u64>,
    /// Passes over the training pairs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: u64,
    /// Pairs per step (chosen and rejected responses go through one forward pass).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Longest sequence (prompt + response) in tokens: responses keep at most N − 1 (cut at the
    /// end), and the prompt loses its front until the longest response of its record fits.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..))]
    pub seq_len: u64,
    /// Fraction of the records held out (chosen with --seed) for validation; the pairs of one
    /// ranking stay on one side.
    #[arg(long, default_value_t = 0.1)]
    pub val_frac: f64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f32,
    /// Final learning rate of the cosine schedule.
    #[arg(long, default_value_t = 1e-5)]
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
    /// Validate on the held-out pairs (and save the model) every N steps as well as at the
    /// end; 0 = only at the end.
    #[arg(long, default_value_t = 50)]
    pub val_every: u64,
    /// Print loss, reward accuracy and margin every N steps (every step goes to
    /// metrics.jsonl); 0 = never.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// Seeds the held-out split, the adapters' initialisation and the pair order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

fn check_args(a: &DpoArgs) -> Result<()> {
    let bad = |m: &str| Err(Error::Invalid(m.to_string()));
    if !(a.beta > 0.0 && a.beta.is_finite()) {
        return bad("--beta must be a positive number");
    }
    if !(a.val_frac > 0.0 && a.val_frac < 1.0) {
        return bad("--val-frac must be between 0 and 1 (exclusive)");
    }
    crate::trainer::check_optim(a.lr, a.min_lr, a.grad_clip, a.weight_decay)
}

pub fn run(args: DpoArgs) -> Result<()> {
    let device = super::resolve_device(&args.device)?;
    check_args(&args)?;
    // Data and checkpoint are checked before anything is created on disk.
    let records = read_jsonl::<PreferenceRecord>(&args.data)?;
    let params = crate::rl_run::load_merged_policy(&args.policy)?;
    let mut rng = Rng::new(args.seed);
    let (train_idx, val_idx) = split_held_out(records.len(), args.val_frac, &mut rng)
        .map_err(|e| Error::data(&args.data, None, e.to_string()))?;
    let seq_len = args.seq_len as usize;
    let pick = |idx: &[usize]| idx.iter().map(|&i| &records[i]).collect::<Vec<_>>();
    let (train_pairs, cut_t) = dpo::pairs_of(&pick(&train_idx), seq_len);
    let (val_pairs, cut_v) = dpo::pairs_of(&pick(&val_idx), seq_len);
    if cut_t + cut_v > 0 {
        eprintln!(
            "note: {} record(s) cut to --seq-len {}",
            cut_t + cut_v,
            args.seq_len
        );
    }
    // Each step scores the chosen and the rejected response of `--batch` pairs.
    let rows = (args.batch as usize)
        .min(train_pairs.len())
        .saturating_mul(2);
    // Sequences are as long as the data's (already cut to --seq-len).
    let longest = train_pairs
        .iter()
        .map(|p| p.prompt.len() + p.chosen.len().max(p.rejected.len()))
        .max()
        .unwrap_or(0);
    let c = &params.config;
    let need = match args.lora {
        Some(r) => {
            let trainable = palm_model::budget::lora(c, r as usize);
            palm_model::budget::adapter_training(c, trainable, rows, longest)
        }
        None => palm_model::budget::training(c, rows, longest),
    };
    palm_model::budget::check(
        &format!("DPO with --batch {} --seq-len {seq_len}", args.batch),
        need,
        device,
    )?;
    let params = params.to_device(device)?;
    let mut policy = match args.lora {
        Some(r) => Policy::with_lora(params, r as usize, &mut rng)?,
        None => Policy::full(params),
    };
    let what = match args.lora {
        Some(r) => format!("frozen, LoRA rank {r} (scope {LORA_SCOPE}) trained"),
        None => "all weights trained".to_string(),
    };
    let batch = args.batch as usize;
    eprintln!(
        "DPO (β = {}) of a {:.2}M-parameter policy ({what}) from {}; {} pairs to train, {} held out, from {}; {} epoch(s) of {} steps of {} pairs",
        args.beta,
        policy.params.config.num_params() as f64 / 1e6,
        args.policy.display(),
        train_pairs.len(),
        val_pairs.len(),
        args.data.display(),
        args.epochs,
        train_pairs.len().div_ceil(batch),
        batch
    );
    let mut run = RunDir::create(&args.out, &[MODEL_FILE], args.replace.overwrite)?;
    let timer = std::time::Instant::now();
    // The policy has not trained yet, so it is the reference.
    let train = dpo::score_reference(&policy, train_pairs, batch)?;
    let val = dpo::score_reference(&policy, val_pairs, batch)?;
    let settings = TrainSettings {
        beta: args.beta,
        epochs: args.epochs,
        batch,
        lr: args.lr,
        min_lr: args.min_lr,
        warmup: args.warmup,
        weight_decay: args.weight_decay,
        grad_clip: args.grad_clip,
        val_every: args.val_every,
        log_every: args.log_every,
    };
    let results = dpo::train(&mut policy, &train, &val, &settings, &mut rng, &mut run)?;
    let last = results
        .last()
        .ok_or_else(|| Error::Invalid("DPO ran no validation".into()))?;
    let sample_hint = if args.lora.is_some() {
        format!(" (sample with --lora {LORA_SCOPE})")
    } else {
        String::new()
    };
    eprintln!(
        "done: {}, {:.1}s; model in {}{sample_hint}",
        dpo::held_line(last),
        timer.elapsed().as_secs_f64(),
        args.out.join(MODEL_FILE).display()
    );
    Ok(())
}
