//! Calibration text -> token sequences.
//!
//! The text is tokenized once without special tokens and cut, from its start, into sequences of
//! `seq_len` tokens, each `<bos>` followed by `seq_len - 1` consecutive text tokens, until
//! `total_tokens` are taken. Every sequence starts at `<bos>` because that is how the model
//! sees text at inference time (Gemma's first-position activations are unlike any other, and
//! calibrating on them matters).

use crate::{CalibError, Result};
use mixq_format::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

/// The calibration token sequences.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalibSet {
    /// Where the text came from (a path, for the report).
    pub source: String,
    /// Each `<bos>` + `seq_len - 1` text tokens.
    pub sequences: Vec<Vec<u32>>,
    pub seq_len: usize,
    /// Tokens in the whole text (without `<bos>`), for the report.
    pub text_tokens: usize,
}

impl CalibSet {
    /// Tokenizes `text` and cuts it into `ceil(total_tokens / seq_len)` sequences of `seq_len`
    /// (fewer if the text runs out; the last one may be shorter, but at least 16 tokens).
    /// Errors if the text gives fewer than 64 tokens.
    pub fn from_text(
        tok: &Tokenizer,
        text: &str,
        source: &str,
        total_tokens: usize,
        seq_len: usize,
    ) -> Result<CalibSet> {
        let bos = tok.bos_id().ok_or_else(|| CalibError::Text {
            source_name: source.into(),
            problem: "the tokenizer has no <bos> token".into(),
        })?;
        let ids = tok.encode(text, false)?;
        const MIN_TOKENS: usize = 64;
        if ids.len() < MIN_TOKENS {
            return Err(CalibError::Text {
                source_name: source.into(),
                problem: format!(
                    "too short: {} tokens, calibration needs at least {MIN_TOKENS} (ideally thousands)",
                    ids.len()
                ),
            });
        }
        if total_tokens == 0 || seq_len < 2 {
            return Err(CalibError::Shape {
                problem: format!("need calib tokens > 0 and sequence length >= 2 (got {total_tokens}, {seq_len})"),
            });
        }
        let seq_len = seq_len.min(total_tokens);
        let mut sequences = Vec::new();
        let mut taken = 0;
        for chunk in ids.chunks(seq_len - 1) {
            if taken >= total_tokens {
                break;
            }
            let want = (total_tokens - taken).min(seq_len) - 1;
            let body = &chunk[..want.min(chunk.len())];
            if body.len() + 1 < 16 && !sequences.is_empty() {
                break;
            }
            let mut s = Vec::with_capacity(body.len() + 1);
            s.push(bos);
            s.extend_from_slice(body);
            taken += s.len();
            sequences.push(s);
        }
        Ok(CalibSet {
            source: source.into(),
            sequences,
            seq_len,
            text_tokens: ids.len(),
        })
    }

    /// Tokens over all sequences (`<bos>` included).
    pub fn tokens(&self) -> usize {
        self.sequences.iter().map(|s| s.len()).sum()
    }
}
