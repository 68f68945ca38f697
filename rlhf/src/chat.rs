//! A conversation with a model: each turn is the user's line in a prompt template, fed after
//! everything said so far (one KV cache across turns), and the model's reply drawn token by
//! token until the end-of-sequence byte, `max_tokens`, or a stop request. When the next turn
//! would not fit in the context, whole turns are dropped from the front and the cache is
//! rebuilt from what is kept.

use crate::{Error, Result};
use palm_engine::Rng;
use palm_model::{Decoder, LoraScope, PalmParams, SampleSettings, Tokenizer};
use std::sync::atomic::{AtomicBool, Ordering};

/// How a conversation is held.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// The user's line goes where `{}` is.
    pub template: String,
    /// A reply ends at this token (not shown, but kept in the transcript to close the turn).
    pub eos: Option<u32>,
    /// Tokens the cache may hold: the turns kept plus the new prompt plus `max_tokens`.
    pub context: usize,
    pub sample: SampleSettings,
}

impl ChatSettings {
    pub fn check(&self) -> Result<()> {
        self.sample.validate()?;
        if !self.template.contains("{}") {
            return Err(Error::Invalid(
                "--template must contain {} (where the user's line goes)".into(),
            ));
        }
        if self.sample.max_tokens == 0 || self.context <= self.sample.max_tokens.saturating_add(1) {
            return Err(Error::Invalid(format!(
                "--context {} must exceed --max-tokens {} + 1",
                self.context, self.sample.max_tokens
            )));
        }
        Ok(())
    }
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The end-of-sequence token.
    Eos,
    /// `max_tokens` new tokens.
    Length,
    /// A stop request (Ctrl-C).
    Interrupted,
}

impl Finish {
    pub fn name(self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::Length => "length",
            Finish::Interrupted => "interrupted",
        }
    }
}

/// One reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The prompt the user's line became.
    pub prompt: String,
    pub tokens: Vec<u32>,
    /// The tokens as text.
    pub text: String,
    pub finish: Finish,
    /// Turns dropped from the front to make room for this one.
    pub dropped_turns: usize,
}

pub struct Chat<'a> {
    decoder: Decoder<'a>,
    /// The model's, for the prompts and the replies.
    pub tokenizer: Tokenizer,
    pub settings: ChatSettings,
    /// The tokens of each turn held in the cache: the previous turn's closing EOS, the prompt,
    /// the reply. Their concatenation is exactly what the cache holds.
    turns: Vec<Vec<u32>>,
    /// Tokens of the last reply not yet fed (its closing EOS).
    pending: Vec<u32>,
    rng: Rng,
}

impl<'a> Chat<'a> {
    pub fn new(
        params: &'a PalmParams,
        lora: Option<&'a LoraScope>,
        settings: ChatSettings,
        seed: u64,
    ) -> Result<Self> {
        settings.check()?;
        let what = format!("--context {}", settings.context);
        palm_model::check_decode_len(&params.config, settings.context, &what)?;
        palm_model::budget::check(
            &format!("a conversation of --context {}", settings.context),
            palm_model::budget::decoding(&params.config, 1, settings.context, 0),
            params.device(),
        )?;
        let mut rng = Rng::new(seed);
        Ok(Chat {
            decoder: Decoder::new(params, lora, 1, &mut rng)?,
            tokenizer: params.tokenizer.clone(),
            settings,
            turns: Vec::new(),
            pending: Vec::new(),
            rng,
        })
    }

    /// Forget the conversation.
    pub fn reset(&mut self) {
        self.decoder.clear();
        self.turns.clear();
        self.pending.clear();
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.decoder.len()
    }

    pub fn is_empty(&self) -> bool {
        self.decoder.is_empty()
    }

    /// Reply to `line`, handing each new token to `on_token` as it is drawn; `stop` ends the
    /// reply early when set (it is cleared here).
    pub fn turn(
        &mut self,
        line: &str,
        stop: &AtomicBool,
        mut on_token: impl FnMut(u32),
    ) -> Result<Reply> {
        let prompt = self.settings.template.replacen("{}", line, 1);
        let mut feed = std::mem::take(&mut self.pending);
        feed.extend(self.tokenizer.encode(&prompt)?);
        let max = self.settings.sample.max_tokens;
        // Room for the prompt and the reply: drop whole turns from the front.
        let mut dropped = 0;
        let held: usize = self.turns.iter().map(Vec::len).sum();
        if held + feed.len() + max > self.settings.context {
            let mut keep = held;
            while keep + feed.len() + max > self.settings.context && dropped < self.turns.len() {
                keep -= self.turns[dropped].len();
                dropped += 1;
            }
            self.turns.drain(..dropped);
            // A prompt longer than the whole context keeps its end.
            let room = self.settings.context - max;
            if feed.len() > room {
                feed.drain(..feed.len() - room);
            }
            self.decoder.clear();
            let kept: Vec<u32> = self.turns.concat();
            if !kept.is_empty() {
                self.decoder.feed(&kept)?;
            }
        }
        self.decoder.feed(&feed)?;
        stop.store(false, Ordering::Relaxed);
        let mut tokens = Vec::new();
        let mut finish = Finish::Length;
        for _ in 0..max {
            if stop.swap(false, Ordering::Relaxed) {
                finish = Finish::Interrupted;
                break;
            }
            let t = self.decoder.draw(&self.settings.sample, &mut self.rng)?[0];
            if Some(t) == self.settings.eos {
                finish = Finish::Eos;
                break;
            }
            on_token(t);
            tokens.push(t);
            self.decoder.feed(&[t])?;
        }
        // The cache now holds this turn's feed and reply. The EOS that closes the turn (drawn,
        // or added after a cut-short reply) is fed with the next prompt, as part of that turn.
        let mut turn = feed;
        turn.extend(&tokens);
        self.turns.push(turn);
        self.pending.extend(self.settings.eos);
        Ok(Reply {
            prompt,
            text: self.tokenizer.decode(&tokens),
            tokens,
            finish,
            dropped_turns: dropped,
        })
    }
}
