//! The `palm` command line: train, fine-tune, sample, evaluate and inspect PaLM models; train
//! and use reward models; label sampled responses by rule or rank them by hand; DPO, PPO and GRPO;
//! the RLHF demo.

use clap::{Parser, Subcommand};
use palm_rlhf::commands::{
    chat, demo, dpo, eval, grpo, info, label, ppo, rank, reward, sample, sft, tokenizer, train,
};

#[derive(Parser)]
#[command(name = "palm", version, about = "PaLM + RLHF on our own tensor engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Only results (stdout), warnings and errors: no progress bars, notices or progress lines.
    #[arg(long, short, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain a PaLM on a text corpus (default: the shipped State of the Union addresses), on
    /// bytes or a BPE tokenizer's ids.
    Train(train::TrainArgs),
    /// Train a byte-level BPE tokenizer on a corpus (`train`), or show how it splits a text.
    Tokenizer(tokenizer::TokenizerArgs),
    /// Supervised fine-tuning on prompt/completion pairs (loss on the completion only).
    Sft(sft::SftArgs),
    /// Reward model: `train` it on rankings or pairs, `score` responses with it.
    Reward(reward::RewardArgs),
    /// Direct Preference Optimisation of a policy on preference pairs or rankings.
    Dpo(dpo::DpoArgs),
    /// PPO of a policy (LoRA actor + critic) against a reward model or a scripted rule.
    Ppo(ppo::PpoArgs),
    /// GRPO of a policy (LoRA actor, groups of sampled responses) against a reward model or a rule.
    Grpo(grpo::GrpoArgs),
    /// The whole RLHF pipeline on the shipped corpus: pretrain (or --policy), label with a
    /// scripted human, train a reward model, PPO, and a held-out before/after comparison.
    RlhfDemo(demo::DemoArgs),
    /// Sample responses per prompt and rank them with a scripted labeler (AFINN, length, count).
    Label(label::LabelArgs),
    /// Rank K responses per prompt yourself in the terminal; each ranking is appended at once.
    Rank(rank::RankArgs),
    /// Continue a prompt from a checkpoint.
    Sample(sample::SampleArgs),
    /// Talk with a model: a line is a turn, the reply streams, the conversation stays cached.
    Chat(chat::ChatArgs),
    /// Loss and bits per byte of a checkpoint on a text file.
    Eval(eval::EvalArgs),
    /// Describe a checkpoint: config, parameter count, tensors.
    Info(info::InfoArgs),
}

fn main() {
    let cli = Cli::parse();
    palm_rlhf::output::set_quiet(cli.quiet);
    let result = match cli.command {
        Command::Train(a) => train::run(a),
        Command::Tokenizer(a) => tokenizer::run(a),
        Command::Sft(a) => sft::run(a),
        Command::Reward(a) => reward::run(a),
        Command::Dpo(a) => dpo::run(a),
        Command::Ppo(a) => ppo::run(a),
        Command::Grpo(a) => grpo::run(a),
        Command::RlhfDemo(a) => demo::run(a),
        Command::Label(a) => label::run(a),
        Command::Rank(a) => rank::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Info(a) => info::run(a),
    };
    match result {
        // A notice still waiting belongs to a command that did its work silently.
        Ok(()) => palm_rlhf::output::start(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
