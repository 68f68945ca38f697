//! `palm rank`'s interaction, apart from the terminal: a person orders the K responses to each
//! prompt with the keyboard, and each finished ranking is appended to the output at once. The
//! terminal is behind [`Terminal`], so tests drive a session with scripted keys and read the
//! screens it drew.

pub mod order;
pub mod screen;

use crate::data::{RankingRecord, append_jsonl};
use crate::{Error, Result};
pub use console::Key;
use order::{Order, Refused};
use screen::{Progress, View, escape, render};
use std::collections::VecDeque;
use std::path::Path;

/// A key source and a screen.
pub trait Terminal {
    /// The next key press.
    fn read_key(&mut self) -> Result<Key>;
    /// Replace what the screen shows with these lines.
    fn show(&mut self, lines: &[String]) -> Result<()>;
    /// Rows and columns.
    fn size(&self) -> (usize, usize);
}

/// A terminal for tests and demos: keys from a list, screens kept in memory.
pub struct Scripted {
    keys: VecDeque<Key>,
    pub screens: Vec<Vec<String>>,
    pub rows: usize,
    pub cols: usize,
}

impl Scripted {
    /// 24 × 80, the classic terminal.
    pub fn new(keys: impl IntoIterator<Item = Key>) -> Scripted {
        Scripted {
            keys: keys.into_iter().collect(),
            screens: Vec::new(),
            rows: 24,
            cols: 80,
        }
    }

    /// Keys from text: each character is a key press.
    pub fn typing(text: &str) -> Scripted {
        Scripted::new(text.chars().map(Key::Char))
    }

    pub fn last_screen(&self) -> &[String] {
        self.screens.last().map_or(&[], Vec::as_slice)
    }
}

impl Terminal for Scripted {
    fn read_key(&mut self) -> Result<Key> {
        self.keys
            .pop_front()
            .ok_or_else(|| Error::Invalid("the scripted keys ran out".into()))
    }
    fn show(&mut self, lines: &[String]) -> Result<()> {
        self.screens.push(lines.to_vec());
        Ok(())
    }
    fn size(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// What a key asks for.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    /// A digit: the 1-based number of the response to place next.
    Pick(usize),
    Undo,
    Confirm,
    Skip,
    Quit,
    /// Scroll by this many lines (negative: up); `isize::MIN`/`MAX` for the top/bottom.
    Scroll(isize),
    Unknown(String),
}

fn action(key: &Key, page: isize) -> Action {
    match key {
        Key::Char(c) if c.is_ascii_digit() => Action::Pick(*c as usize - '0' as usize),
        Key::Char('u' | 'U') | Key::Backspace | Key::Del => Action::Undo,
        Key::Enter => Action::Confirm,
        Key::Char('s' | 'S') => Action::Skip,
        // Ctrl-C and Ctrl-D arrive as characters: the terminal is in raw mode while a key is read.
        Key::Char('q' | 'Q' | '\x03' | '\x04') | Key::Escape | Key::CtrlC => Action::Quit,
        Key::ArrowUp => Action::Scroll(-1),
        Key::ArrowDown => Action::Scroll(1),
        Key::PageUp => Action::Scroll(-page),
        Key::PageDown | Key::Char(' ') => Action::Scroll(page),
        Key::Home => Action::Scroll(isize::MIN),
        Key::End => Action::Scroll(isize::MAX),
        Key::Char(c) => Action::Unknown(format!("'{}'", escape(&c.to_string()))),
        other => Action::Unknown(format!("{other:?}")),
    }
}

/// How one prompt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Best to worst.
    Ranked(Vec<String>),
    Skipped,
    Quit,
}

/// Let the person order `responses` (K ≥ 2, shown in the given order) for `prompt`.
pub fn rank_one<T: Terminal>(
    term: &mut T,
    prompt: &str,
    responses: &[String],
    progress: Progress,
) -> Result<Outcome> {
    let k = responses.len();
    let mut order = Order::new(k);
    let mut message = String::new();
    let mut scroll = 0usize;
    loop {
        let (rows, cols) = term.size();
        let view = View {
            prompt,
            responses,
            order: &order,
            progress,
            message: &message,
            scroll,
        };
        let (lines, max_scroll) = render(&view, rows, cols);
        scroll = scroll.min(max_scroll);
        term.show(&lines)?;
        let page = rows.saturating_sub(6).max(1) as isize;
        message.clear();
        match action(&term.read_key()?, page) {
            Action::Pick(n) => match order.pick(n) {
                Ok(()) => {}
                Err(Refused::Complete) => {
                    message = "the order is complete: Enter saves it, u undoes the last pick".into()
                }
                Err(Refused::NoSuchResponse(n)) => {
                    message = format!("there is no response {n}; press 1-{k}")
                }
                Err(Refused::AlreadyPlaced { number, place }) => {
                    message = format!(
                        "response {number} is already #{place} (ties are not allowed); \
                         u undoes the last pick"
                    )
                }
            },
            Action::Undo => {
                if !order.undo() {
                    message = "nothing to undo".into();
                }
            }
            Action::Confirm => match order.apply(responses) {
                Some(ranked) => return Ok(Outcome::Ranked(ranked)),
                None => {
                    let n = order.remaining_picks();
                    message = format!(
                        "pick {n} more first (the best remaining each time; the last is implied)"
                    )
                }
            },
            Action::Skip => return Ok(Outcome::Skipped),
            Action::Quit => return Ok(Outcome::Quit),
            Action::Scroll(d) => scroll = scroll.saturating_add_signed(d).min(max_scroll),
            Action::Unknown(key) => {
                message = format!("key {key} does nothing here; see the keys above")
            }
        }
    }
}

/// How a session went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Rankings appended to the output.
    pub written: usize,
    pub skipped: usize,
    /// Prompts with fewer than two distinct responses, which cannot be ranked.
    pub unrankable: usize,
    /// Prompts not reached because the person quit (the one on screen included).
    pub left: usize,
}

/// Rank `prompts` in turn. `responses` gives each prompt's candidates in display order (it may
/// sample them, so it is called only when the prompt comes up). Each confirmed ranking is
/// appended to `out` before the next prompt shows, so quitting or a crash loses at most the
/// ranking on screen.
pub fn run_session<T: Terminal>(
    term: &mut T,
    prompts: &[String],
    mut responses: impl FnMut(&str) -> Result<Vec<String>>,
    out: &Path,
) -> Result<Summary> {
    let mut summary = Summary::default();
    for (i, prompt) in prompts.iter().enumerate() {
        let progress = Progress {
            prompt: i + 1,
            prompts: prompts.len(),
            written: summary.written,
            skipped: summary.skipped,
        };
        term.show(&[format!(
            "palm rank | prompt {} of {}: preparing the responses...",
            i + 1,
            prompts.len()
        )])?;
        let candidates = responses(prompt)?;
        if candidates.len() < 2 {
            summary.unrankable += 1;
            continue;
        }
        match rank_one(term, prompt, &candidates, progress)? {
            Outcome::Ranked(ranked) => {
                let record = RankingRecord {
                    prompt: prompt.clone(),
                    responses: ranked,
                };
                append_jsonl(out, &record)?;
                summary.written += 1;
            }
            Outcome::Skipped => summary.skipped += 1,
            Outcome::Quit => {
                summary.left = prompts.len() - i;
                break;
            }
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn progress() -> Progress {
        Progress {
            prompt: 1,
            prompts: 1,
            written: 0,
            skipped: 0,
        }
    }

    #[test]
    fn keys_map_to_actions() {
        assert_eq!(action(&Key::Char('3'), 10), Action::Pick(3));
        assert_eq!(action(&Key::Char('0'), 10), Action::Pick(0));
        assert_eq!(action(&Key::Backspace, 10), Action::Undo);
        assert_eq!(action(&Key::Char('U'), 10), Action::Undo);
        assert_eq!(action(&Key::Enter, 10), Action::Confirm);
        assert_eq!(action(&Key::Char('s'), 10), Action::Skip);
        for quit in [Key::Char('q'), Key::Escape, Key::Char('\x03'), Key::CtrlC] {
            assert_eq!(action(&quit, 10), Action::Quit, "{quit:?}");
        }
        assert_eq!(action(&Key::PageDown, 10), Action::Scroll(10));
        assert_eq!(action(&Key::ArrowUp, 10), Action::Scroll(-1));
        // An unknown control character is named safely.
        assert_eq!(
            action(&Key::Char('\x1b'), 10),
            Action::Unknown("'\\x1b'".into())
        );
        assert_eq!(action(&Key::Tab, 10), Action::Unknown("Tab".into()));
    }

    #[test]
    fn enter_before_the_order_is_complete_only_says_so() {
        let responses = strings(&["a", "b", "c"]);
        let mut term = Scripted::new([
            Key::Enter,
            Key::Char('2'),
            Key::Enter,
            Key::Char('3'),
            Key::Enter,
        ]);
        let outcome = rank_one(&mut term, "p", &responses, progress()).unwrap();
        assert_eq!(outcome, Outcome::Ranked(strings(&["b", "c", "a"])));
        assert_eq!(
            term.screens[1].last().unwrap(),
            "pick 2 more first (the best remaining each time; the last is implied)"
        );
        assert_eq!(
            term.screens[3].last().unwrap(),
            "pick 1 more first (the best remaining each time; the last is implied)"
        );
    }

    #[test]
    fn scrolling_stays_within_the_text() {
        let responses = vec!["many words ".repeat(200), "b".into()];
        let keys = [
            Key::ArrowUp,
            Key::End,
            Key::ArrowDown,
            Key::Home,
            Key::Char('q'),
        ];
        let mut term = Scripted::new(keys);
        term.rows = 10;
        assert_eq!(
            rank_one(&mut term, "p", &responses, progress()).unwrap(),
            Outcome::Quit
        );
        // The rule above the footer tells which lines show.
        let rule = |i: usize| {
            let screen = &term.screens[i];
            screen.iter().find(|l| l.starts_with("--")).unwrap().clone()
        };
        assert!(rule(0).starts_with("-- lines 1-5 of"), "{}", rule(0));
        assert_eq!(rule(1), rule(0), "Up at the top stays at the top");
        assert!(!rule(2).contains("lines 1-"), "{}", rule(2));
        assert_eq!(rule(3), rule(2), "Down at the end stays at the end");
        assert_eq!(rule(4), rule(0));
    }
}
