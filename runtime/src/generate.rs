//! The generation loop: prefill the prompt, then sample one token at a time, streaming text.

use crate::backend::Backend;
use crate::model::gemma3::{Gemma3, Session};
use crate::sampling::{Sampler, SamplerConfig};
use anyhow::Result;
use mixq_format::tokenizer::Tokenizer;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Token ids that end generation (not included in the output).
    pub stop_ids: Vec<u32>,
    /// Strings that end generation; the text is cut where the first one starts.
    pub stop_strings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    StopToken,
    StopString,
    MaxTokens,
    ContextFull,
    Interrupted,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

/// Streams text increments of a growing token sequence. Byte-fallback tokens can split a UTF-8
/// character across tokens, so text is only released once it no longer ends in U+FFFD.
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream {
    pub fn new() -> Self {
        TextStream {
            ids: Vec::new(),
            emitted: 0,
        }
    }
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}')
            || text.len() < self.emitted
            || !text.is_char_boundary(self.emitted)
        {
            return Ok(String::new());
        }
        let new = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(new)
    }
}

impl Default for TextStream {
    fn default() -> Self {
        Self::new()
    }
}

/// Generates after `prompt` (already tokenised) in `session`, calling `on_text` with each
/// printable increment. `interrupted` is polled between tokens (Ctrl-C in chat).
pub fn generate<B: Backend>(
    model: &Gemma3<B>,
    session: &mut Session<B>,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str),
    interrupted: &dyn Fn() -> bool,
) -> Result<Generation> {
    let mut sampler = Sampler::new(opts.sampler.clone());
    let mut history: Vec<u32> = prompt.to_vec();
    let t0 = Instant::now();
    let mut logits = model.forward_last(session, prompt)?;
    // A GPU backend has only recorded the prefill so far: it ends when the first sampling
    // reads its logits back, so the prefill is timed up to there and decoding from there.
    let mut prefill_time = None;
    let mut t1 = t0;
    let mut stream = TextStream::new();
    let (mut generated, mut text) = (Vec::new(), String::new());
    let max_pos = model.config.max_position_embeddings;
    let stop = loop {
        if generated.len() >= opts.max_tokens {
            break StopReason::MaxTokens;
        }
        if interrupted() {
            break StopReason::Interrupted;
        }
        let next = sampler.next(&logits, &history);
        if prefill_time.is_none() {
            prefill_time = Some(t0.elapsed());
            t1 = Instant::now();
        }
        if opts.stop_ids.contains(&next) {
            break StopReason::StopToken;
        }
        generated.push(next);
        history.push(next);
        let piece = stream.push(tok, next)?;
        if !piece.is_empty() {
            let before = text.len();
            text.push_str(&piece);
            // A stop string may straddle pieces: search from where it could begin.
            let from =
                before.saturating_sub(opts.stop_strings.iter().map(|s| s.len()).max().unwrap_or(0));
            let from = (0..=from)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            if let Some(cut) = opts
                .stop_strings
                .iter()
                .filter_map(|s| text[from..].find(s.as_str()).map(|i| from + i))
                .min()
            {
                if cut > before {
                    on_text(&text[before..cut]);
                }
                text.truncate(cut);
                break StopReason::StopString;
            }
            on_text(&piece);
        }
        if session.pos >= max_pos {
            break StopReason::ContextFull;
        }
        logits = model.forward_last(session, &[next])?;
    };
    Ok(Generation {
        generated_ids: generated,
        text,
        stop,
        prefill_time: prefill_time.unwrap_or_else(|| t0.elapsed()),
        decode_time: t1.elapsed(),
    })
}
