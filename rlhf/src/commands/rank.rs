//! `palm rank`: a person orders K responses per prompt in the terminal; each ranking is
//! appended to a rankings JSONL as soon as it is confirmed, and a rerun resumes after the
//! prompts already there.

use crate::data::{RankingRecord, Validate, read_jsonl};
use crate::rank::{Summary, Terminal, run_session};
use crate::sampling::{Sampler, SamplingArgs};
use crate::{Error, Result};
use clap::{ArgGroup, Args};
use console::{Key, Term};
use palm_engine::Rng;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// The most responses per prompt: one digit key picks each.
pub const MAX_RESPONSES: usize = 9;

const KEYS_HELP: &str = "Keys: 1-9 place the best remaining response next (the last place is \
    implied), u or Backspace undoes the last pick, Enter saves the finished order, s skips the \
    prompt (it comes back next run), q or Esc quits (Ctrl-C too), Up/Down, PgUp/PgDn (Space), \
    Home/End scroll long responses.";

#[derive(Args, Debug)]
#[command(after_help = KEYS_HELP)]
#[command(group(ArgGroup::new("source").required(true).args(["responses", "checkpoint"])))]
pub struct RankArgs {
    /// Policy checkpoint to sample the responses from (with --prompts).
    #[arg(long, requires = "prompts")]
    pub checkpoint: Option<PathBuf>,
    /// JSONL of {"prompt"} to sample responses for (with --checkpoint; .gz is decompressed).
    #[arg(long, requires = "checkpoint")]
    pub prompts: Option<PathBuf>,
    /// Responses sampled per prompt (2-9); duplicates are dropped, and a prompt with fewer than
    /// two distinct responses is passed over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=9))]
    pub samples: u64,
    /// Instead of sampling: a JSONL of {"prompt","responses":[…]} with 2-9 distinct candidates
    /// per prompt, in any order (a rankings file such as `palm label` writes will do). They are
    /// shown shuffled (by --seed), so their order in the file does not sway the person.
    #[arg(long, conflicts_with_all = ["checkpoint", "prompts"])]
    pub responses: Option<PathBuf>,
    /// Show --responses in their order in the file instead of shuffled.
    #[arg(long, requires = "responses")]
    pub keep_order: bool,
    /// The rankings JSONL ({"prompt","responses":[best … worst]}) each ranking is appended to
    /// (plain, not .gz). Prompts already in it are skipped, so rerunning resumes.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

/// A `--responses` line: a prompt and its candidates, at most [`MAX_RESPONSES`] of them.
#[derive(Deserialize)]
#[serde(transparent)]
struct Candidates(RankingRecord);

impl Validate for Candidates {
    fn validate(&self) -> std::result::Result<(), String> {
        self.0.validate()?;
        let k = self.0.responses.len();
        if k > MAX_RESPONSES {
            return Err(format!(
                "{k} responses; palm rank shows at most {MAX_RESPONSES} (one digit key each)"
            ));
        }
        Ok(())
    }
}

/// Where the responses come from.
enum Source {
    Sample {
        sampler: Box<Sampler>,
        k: usize,
    },
    /// Each prompt's candidates, and the RNG that shuffles them (None: keep the file's order).
    File {
        candidates: HashMap<String, Vec<String>>,
        shuffle: Option<Rng>,
    },
}

/// A loaded run: the prompts left to rank and where their responses come from.
pub struct Plan {
    pub pending: Vec<String>,
    /// Prompts of the input already ranked in the output.
    pub done: usize,
    /// Prompts listed more than once in the input (each is ranked once).
    pub repeated: usize,
    source: Source,
}

/// The prompts already ranked in `out` (none when it does not exist or is empty).
pub fn ranked_prompts(out: &Path) -> Result<HashSet<String>> {
    let text = match std::fs::read(out) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(Error::io(out, e)),
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(HashSet::new());
    }
    let records = read_jsonl::<RankingRecord>(out)?;
    Ok(records.into_iter().map(|r| r.prompt).collect())
}

/// Fisher-Yates.
fn shuffle(v: &mut [String], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

impl Plan {
    /// Read the inputs and the output so far, and load the policy when sampling; every input
    /// error shows here, before the terminal is taken over.
    pub fn load(args: &RankArgs) -> Result<Plan> {
        if args.out.extension().is_some_and(|e| e == "gz") {
            return Err(Error::data(
                &args.out,
                None,
                "palm rank appends each ranking as it is made; use a plain .jsonl output",
            ));
        }
        let (prompts, source) = match (&args.responses, &args.checkpoint, &args.prompts) {
            (Some(path), _, _) => {
                let records = read_jsonl::<Candidates>(path)?;
                let prompts: Vec<String> = records.iter().map(|c| c.0.prompt.clone()).collect();
                let mut candidates = HashMap::new();
                for Candidates(r) in records {
                    // The first line of a repeated prompt is the one ranked.
                    candidates.entry(r.prompt).or_insert(r.responses);
                }
                let shuffle = (!args.keep_order).then(|| Rng::new(args.sampling.seed));
                (
                    prompts,
                    Source::File {
                        candidates,
                        shuffle,
                    },
                )
            }
            (None, Some(checkpoint), Some(prompts)) => {
                let device = args.device.resolve()?;
                let records = read_jsonl::<crate::data::PromptRecord>(prompts)?;
                let sampler = Sampler::load(checkpoint, &args.sampling, device)?;
                (
                    records.into_iter().map(|r| r.prompt).collect(),
                    Source::Sample {
                        sampler: Box::new(sampler),
                        k: args.samples as usize,
                    },
                )
            }
            // clap requires --responses or both --checkpoint and --prompts.
            _ => {
                return Err(Error::Invalid(
                    "give --responses, or --checkpoint and --prompts".into(),
                ));
            }
        };
        let ranked = ranked_prompts(&args.out)?;
        let mut seen = HashSet::new();
        let (mut pending, mut done, mut repeated) = (Vec::new(), 0, 0);
        for p in prompts {
            if !seen.insert(p.clone()) {
                repeated += 1;
            } else if ranked.contains(&p) {
                done += 1;
            } else {
                pending.push(p);
            }
        }
        Ok(Plan {
            pending,
            done,
            repeated,
            source,
        })
    }

    /// Run the session on `term`, appending to `out`.
    pub fn rank<T: Terminal>(&mut self, term: &mut T, out: &Path) -> Result<Summary> {
        let source = &mut self.source;
        run_session(
            term,
            &self.pending,
            |prompt| match source {
                Source::Sample { sampler, k } => sampler.distinct_responses(prompt, *k),
                Source::File {
                    candidates,
                    shuffle: rng,
                } => {
                    let mut c = candidates.get(prompt).cloned().unwrap_or_default();
                    if let Some(rng) = rng {
                        shuffle(&mut c, rng);
                    }
                    Ok(c)
                }
            },
            out,
        )
    }
}

/// The real terminal: keys from the keyboard (console reads one key at a time in raw mode and
/// restores the mode before returning it, so no exit path leaves the terminal raw), screens on
/// stdout.
pub struct Console {
    term: Term,
}

impl Console {
    /// Stdout, when both stdin and stdout are a terminal.
    pub fn open() -> Result<Console> {
        let term = Term::stdout();
        if !std::io::stdin().is_terminal() || !term.is_term() {
            return Err(Error::Invalid(
                "palm rank is interactive: stdin and stdout must be a terminal (to rank by \
                 rule without one, use palm label)"
                    .into(),
            ));
        }
        Ok(Console { term })
    }

    /// Leave a clean screen for the summary.
    fn finish(&self) {
        // Best effort: the summary and any error follow on stderr either way.
        let _ = self.term.clear_screen();
    }
}

fn terminal_error(e: std::io::Error) -> Error {
    Error::Invalid(format!("terminal: {e}"))
}

impl Terminal for Console {
    fn read_key(&mut self) -> Result<Key> {
        // The raw variant hands Ctrl-C over as a key (read_key would raise SIGINT), so it
        // quits like q, with the summary printed.
        self.term.read_key_raw().map_err(terminal_error)
    }
    fn show(&mut self, lines: &[String]) -> Result<()> {
        self.term.clear_screen().map_err(terminal_error)?;
        // One write per screen, so it appears at once.
        self.term
            .write_str(&lines.join("\n"))
            .map_err(terminal_error)
    }
    fn size(&self) -> (usize, usize) {
        let (rows, cols) = self.term.size();
        (usize::from(rows), usize::from(cols))
    }
}

pub fn run(args: RankArgs) -> Result<()> {
    let mut plan = Plan::load(&args)?;
    let out = args.out.display();
    if plan.done > 0 {
        crate::output::say(format!(
            "resuming: {} prompt(s) already ranked in {out} are skipped",
            plan.done
        ));
    }
    if plan.repeated > 0 {
        crate::output::say(format!(
            "note: {} repeated prompt(s) in the input are ranked once",
            plan.repeated
        ));
    }
    if plan.pending.is_empty() {
        crate::output::say(format!(
            "nothing to rank: every prompt is already ranked in {out}"
        ));
        return Ok(());
    }
    let mut term = Console::open()?;
    let result = plan.rank(&mut term, &args.out);
    term.finish();
    let s = result?;
    crate::output::say(format!(
        "wrote {} ranking(s) to {out}; {} skipped, {} with fewer than 2 distinct responses, {} \
         not reached{}",
        s.written,
        s.skipped,
        s.unrankable,
        s.left,
        if s.left + s.skipped > 0 {
            " (rerun the same command to go on)"
        } else {
            ""
        }
    ));
    Ok(())
}
