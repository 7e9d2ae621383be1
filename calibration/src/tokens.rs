//! Calibration text -> token sequences.
//!
//! The text is tokenized once without special tokens and cut into sequences of `seq_len` tokens,
//! each `<bos>` followed by `seq_len - 1` consecutive text tokens, until `total_tokens` are
//! taken. Every sequence starts at `<bos>` because that is how the model sees text at inference
//! time (Gemma's first-position activations are unlike any other, and calibrating on them
//! matters).
//!
//! By default ([`Sampling::Spread`]) the sequences start at evenly spaced points of the whole
//! text, not at its beginning: a calibration file is usually several sources one after another
//! (ours: five speeches, then sentences of film reviews, fiction, chat...), and 4096 tokens from
//! the start would all come from the first. Hessians from one register fit that register.

use crate::{CalibError, Result};
use mixq_format::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

/// Where in the text the calibration sequences come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sampling {
    /// Start points spread evenly over the whole text (the default).
    Spread,
    /// Consecutive sequences from the start of the text (how files were made before the
    /// spread; kept to reproduce them).
    Start,
}

impl Sampling {
    /// The short name the recipe options record.
    pub fn name(self) -> &'static str {
        match self {
            Sampling::Spread => "spread",
            Sampling::Start => "start",
        }
    }

    /// How the report describes the placement.
    pub fn describe(self) -> &'static str {
        match self {
            Sampling::Spread => "spread evenly over the text",
            Sampling::Start => "one after another from the start of the text",
        }
    }
}

/// The calibration token sequences.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalibSet {
    /// Where the text came from (a path, for the report).
    pub source: String,
    /// Each `<bos>` + `seq_len - 1` text tokens.
    pub sequences: Vec<Vec<u32>>,
    pub seq_len: usize,
    /// How the sequences were placed in the text.
    pub sampling: Sampling,
    /// Tokens in the whole text (without `<bos>`), for the report.
    pub text_tokens: usize,
}

impl CalibSet {
    /// Tokenizes `text` and cuts it into `ceil(total_tokens / seq_len)` sequences of `seq_len`
    /// (fewer if the text runs out; the last one may be shorter, but at least 16 tokens), placed
    /// by `sampling`. Errors if the text gives fewer than 64 tokens.
    pub fn from_text(
        tok: &Tokenizer,
        text: &str,
        source: &str,
        total_tokens: usize,
        seq_len: usize,
        sampling: Sampling,
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
        let body_lens = body_lengths(total_tokens, seq_len);
        let starts = match sampling {
            Sampling::Spread => spread_starts(&body_lens, ids.len()),
            Sampling::Start => None,
        }
        .unwrap_or_else(|| consecutive_starts(&body_lens));
        let mut sequences = Vec::new();
        for (&start, &want) in starts.iter().zip(&body_lens) {
            let body = &ids[start.min(ids.len())..(start + want).min(ids.len())];
            if body.len() + 1 < 16 && !sequences.is_empty() {
                break;
            }
            let mut s = Vec::with_capacity(body.len() + 1);
            s.push(bos);
            s.extend_from_slice(body);
            sequences.push(s);
        }
        Ok(CalibSet {
            source: source.into(),
            sequences,
            seq_len,
            sampling,
            text_tokens: ids.len(),
        })
    }

    /// Tokens over all sequences (`<bos>` included).
    pub fn tokens(&self) -> usize {
        self.sequences.iter().map(|s| s.len()).sum()
    }
}

/// Text tokens (after `<bos>`) of each sequence: `seq_len - 1`, the last one what is left.
fn body_lengths(total_tokens: usize, seq_len: usize) -> Vec<usize> {
    (0..total_tokens.div_ceil(seq_len))
        .map(|k| (total_tokens - k * seq_len).min(seq_len) - 1)
        .collect()
}

fn consecutive_starts(body_lens: &[usize]) -> Vec<usize> {
    body_lens
        .iter()
        .scan(0, |at, &len| {
            let start = *at;
            *at += len;
            Some(start)
        })
        .collect()
}

/// Evenly spaced, non-overlapping starts from the first token to the last full body; `None`
/// when the text is too short to leave any room between the sequences.
fn spread_starts(body_lens: &[usize], text_len: usize) -> Option<Vec<usize>> {
    let need: usize = body_lens.iter().sum();
    if need >= text_len || body_lens.len() < 2 {
        return None;
    }
    // The slack between sequences, shared out evenly: gap k comes after sequence k.
    let slack = text_len - need;
    let gaps = body_lens.len() - 1;
    let mut starts = Vec::with_capacity(body_lens.len());
    let mut at = 0;
    for (k, &len) in body_lens.iter().enumerate() {
        starts.push(at + slack * k / gaps);
        at += len;
    }
    Some(starts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_add_up_to_the_requested_tokens() {
        let lens = body_lengths(4096, 512);
        assert_eq!(lens, vec![511; 8]);
        let lens = body_lengths(1000, 512);
        assert_eq!(lens, vec![511, 487]);
        // Each body plus its <bos> gives the total.
        assert_eq!(lens.iter().map(|l| l + 1).sum::<usize>(), 1000);
    }

    #[test]
    fn spread_starts_cover_the_text_without_overlap() {
        let lens = body_lengths(4096, 512);
        let starts = spread_starts(&lens, 64000).unwrap();
        assert_eq!(starts[0], 0);
        // The last sequence ends at the end of the text.
        assert_eq!(starts[7] + lens[7], 64000);
        for k in 1..8 {
            assert!(
                starts[k] >= starts[k - 1] + lens[k - 1],
                "sequences {} and {k} overlap",
                k - 1
            );
        }
        // Evenly: the gaps differ by at most one token.
        let gaps: Vec<usize> = (1..8)
            .map(|k| starts[k] - starts[k - 1] - lens[k - 1])
            .collect();
        assert!(
            gaps.iter().max().unwrap() - gaps.iter().min().unwrap() <= 1,
            "{gaps:?}"
        );
    }

    #[test]
    fn a_text_too_short_to_spread_is_taken_from_the_start() {
        let lens = body_lengths(4096, 512);
        assert_eq!(spread_starts(&lens, 4088), None);
        assert_eq!(spread_starts(&lens, 3000), None);
        assert_eq!(consecutive_starts(&lens)[..3], [0, 511, 1022]);
        // One sequence has nowhere to spread.
        assert_eq!(spread_starts(&body_lengths(300, 512), 10000), None);
    }
}
