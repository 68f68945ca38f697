//! `palm chat`: talk with a model in the terminal (or through a pipe): each line you type is a
//! turn, the reply streams as it is drawn, the conversation stays in the KV cache. Lines that
//! start with `/` are commands: /reset, /temp T, /top-p P, /save FILE, /quit. Ctrl-C stops a
//! reply without leaving; end of input (Ctrl-D) leaves.

use crate::chat::{Chat, ChatSettings, Finish, Reply};
use crate::data::{SftRecord, append_jsonl};
use crate::sampling::{Stop, parse_stop};
use crate::{Error, Result};
use clap::Args;
use palm_model::tokenizer::TextStream;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// Model checkpoint (an SFT or aligned model).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Apply this LoRA scope from the checkpoint (e.g. actor, for a PPO/GRPO/DPO run's model).
    #[arg(long)]
    pub lora: Option<String>,
    #[command(flatten)]
    pub tokenizer: crate::flags::TokenizerArg,
    /// How a line becomes a prompt: `{}` is replaced by the line. Match the prompts of the
    /// `palm sft` data the model learned from.
    #[arg(long, default_value = "User: {}\nAssistant:")]
    pub template: String,
    /// A reply ends at this character (a token of its own): newline, none, or one ASCII
    /// character.
    #[arg(long, default_value = "newline", value_parser = parse_stop)]
    pub eos: Stop,
    #[command(flatten)]
    pub decoding: super::Decoding,
    /// Tokens the conversation may hold; older turns are dropped from the front to make room.
    #[arg(long, default_value_t = 2048)]
    pub context: usize,
    /// Seeds the draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One JSON line per turn (turn, user, prompt, completion, tokens, finish_reason, seed)
    /// instead of the streamed reply.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let mut settings = ChatSettings {
        template: args.template.clone(),
        eos: None,
        context: args.context,
        sample: args.decoding.settings(),
    };
    settings.check()?;
    let (params, lora) = crate::sampling::model_with_adapters(
        &args.checkpoint,
        args.lora.as_deref(),
        &args.tokenizer,
        device,
    )?;
    settings.eos = args.eos.id(&params.tokenizer)?;
    let mut chat = Chat::new(&params, lora.as_ref(), settings, args.seed)?;
    // Ctrl-C stops the reply being drawn, not the program.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .map_err(|e| Error::Invalid(format!("cannot catch Ctrl-C: {e}")))?;
    crate::output::say(format!(
        "chatting with {} ({:.2}M parameters{}); /reset, /temp T, /top-p P, /save FILE, /quit; Ctrl-C stops a reply",
        args.checkpoint.display(),
        params.config.num_params() as f64 / 1e6,
        args.lora
            .as_ref()
            .map(|l| format!(", LoRA '{l}'"))
            .unwrap_or_default()
    ));
    let mut transcript: Vec<SftRecord> = Vec::new();
    let stdin = std::io::stdin();
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line.map_err(|e| Error::Invalid(format!("cannot read standard input: {e}")))?;
        if let Some(cmd) = line.strip_prefix('/') {
            if !command(cmd.trim(), &mut chat, &transcript)? {
                break;
            }
            continue;
        }
        let reply = if args.json {
            chat.turn(&line, &stop, |_| {})?
        } else {
            let mut out = std::io::stdout().lock();
            let tokenizer = chat.tokenizer.clone();
            let mut text = TextStream::new(&tokenizer);
            let mut show = |s: String| {
                let _ = out.write_all(s.as_bytes()).and_then(|()| out.flush());
            };
            // Text as it is drawn (a character split across tokens waits for its end).
            let reply = chat.turn(&line, &stop, |t| show(text.push(t)))?;
            show(text.finish());
            let _ = writeln!(out);
            reply
        };
        if args.json {
            super::emit(json_line(n + 1, &line, &reply, args.seed));
        } else if reply.finish == Finish::Interrupted {
            crate::output::say("(stopped)");
        }
        if reply.dropped_turns > 0 {
            crate::output::say(format!(
                "(the {} oldest turn(s) left the --context {})",
                reply.dropped_turns, args.context
            ));
        }
        transcript.push(SftRecord {
            prompt: reply.prompt.clone(),
            completion: reply.text.clone(),
        });
    }
    Ok(())
}

fn json_line(turn: usize, user: &str, r: &Reply, seed: u64) -> serde_json::Value {
    serde_json::json!({
        "turn": turn,
        "user": user,
        "prompt": r.prompt,
        "completion": r.text,
        "tokens": r.tokens.len(),
        "finish_reason": r.finish.name(),
        "seed": seed,
    })
}

/// One `/command`; false to leave.
fn command(cmd: &str, chat: &mut Chat, transcript: &[SftRecord]) -> Result<bool> {
    let (name, arg) = cmd.split_once(' ').unwrap_or((cmd, ""));
    let arg = arg.trim();
    let number = |what: &str| -> Option<f32> {
        let v = arg.parse::<f32>().ok();
        if v.is_none() {
            crate::output::warn(format!("/{what} needs a number, got '{arg}'"));
        }
        v
    };
    match name {
        "quit" | "exit" => return Ok(false),
        "reset" => {
            chat.reset();
            crate::output::say("(conversation reset)");
        }
        "temp" => {
            if let Some(t) = number("temp") {
                let mut s = chat.settings.sample.clone();
                s.temperature = t;
                match s.validate() {
                    Ok(()) => chat.settings.sample = s,
                    Err(e) => crate::output::warn(format!("/temp: {e}")),
                }
            }
        }
        "top-p" => {
            if let Some(p) = number("top-p") {
                let mut s = chat.settings.sample.clone();
                s.top_p = Some(p);
                match s.validate() {
                    Ok(()) => chat.settings.sample = s,
                    Err(e) => crate::output::warn(format!("/top-p: {e}")),
                }
            }
        }
        "save" => {
            if arg.is_empty() {
                crate::output::warn("/save needs a file name");
            } else {
                // The turns as {"prompt","completion"} lines: `palm sft` data.
                let path = PathBuf::from(arg);
                for r in transcript {
                    append_jsonl(&path, r)?;
                }
                crate::output::say(format!(
                    "({} turn(s) appended to {})",
                    transcript.len(),
                    path.display()
                ));
            }
        }
        other => crate::output::warn(format!(
            "unknown command /{other}: /reset, /temp T, /top-p P, /save FILE, /quit"
        )),
    }
    Ok(true)
}
