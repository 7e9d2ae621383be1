//! tokenizer.json loading (HF `tokenizers` crate) and streaming detokenisation.
//!
//! Conventions the runtime relies on:
//! - `encode(text, add_bos)` never depends on the file's post-processor: Gemma's tokenizer.json
//!   adds `<bos>` there, other exports do not, and chat prompts already spell `<bos>` out. We
//!   encode without special tokens and prepend exactly one `<bos>` when asked and not already
//!   present.
//! - `decode` skips special tokens (`<bos>`, `<eos>`, `<start_of_turn>`, `<end_of_turn>`, ...):
//!   generated text must not show control tokens. `decode_with(ids, false)` keeps them, for
//!   debugging and for round-tripping prompts.

use crate::error::{FormatError, Result};
use std::path::{Path, PathBuf};

/// Name used in errors for tokenizers loaded from memory (a .mixq file's embedded copy).
const EMBEDDED: &str = "<embedded tokenizer.json>";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Where it came from, for error messages.
    source: PathBuf,
    bos_id: Option<u32>,
    /// Ids including added tokens. Computed once: `tokenizers` builds the whole 262k-entry
    /// vocabulary map on every `get_vocab_size(true)` call (~0.3 s), and `decode` checks it.
    vocab_size: usize,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
        Self::from_bytes_named(&bytes, path)
    }

    /// From tokenizer.json bytes (as embedded in a .mixq file).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_named(bytes, Path::new(EMBEDDED))
    }

    /// From tokenizer.json bytes; `source` names them in errors (e.g. the .mixq file).
    pub fn from_bytes_named(bytes: &[u8], source: &Path) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| FormatError::Tokenizer {
                path: source.to_path_buf(),
                problem: format!("cannot parse tokenizer.json: {e}"),
            })?;
        let bos_id = inner.token_to_id("<bos>");
        let vocab_size = inner.get_vocab_size(true);
        Ok(Tokenizer {
            inner,
            source: source.to_path_buf(),
            bos_id,
            vocab_size,
        })
    }

    fn err(&self, problem: String) -> FormatError {
        FormatError::Tokenizer {
            path: self.source.clone(),
            problem,
        }
    }

    /// Token ids of `text`; `add_bos` prepends `<bos>` as the post-processor does.
    /// With `add_bos` the result starts with exactly one `<bos>` (one already spelled out at the
    /// start of `text` is not doubled); without it none is added.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| self.err(format!("cannot encode text: {e}")))?;
        let ids = enc.get_ids();
        if !add_bos {
            return Ok(ids.to_vec());
        }
        let bos = self.bos_id.ok_or_else(|| {
            self.err("add_bos requested but the vocabulary has no `<bos>`".into())
        })?;
        if ids.first() == Some(&bos) {
            return Ok(ids.to_vec());
        }
        let mut out = Vec::with_capacity(ids.len() + 1);
        out.push(bos);
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// Text of `ids`, special tokens skipped (see the module docs).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, true)
    }

    /// Text of `ids`; `skip_special` drops `<bos>`, `<eos>`, turn markers and other special tokens.
    /// Unknown ids are an error rather than silently dropped: they mean a model/tokenizer mismatch.
    pub fn decode_with(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let n = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(self.err(format!(
                "token id {bad} is outside the vocabulary of {n} tokens"
            )));
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| self.err(format!("cannot decode ids: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// A streaming decoder over this tokenizer that skips special tokens.
    pub fn stream(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self, true)
    }
}

/// Turns a growing token sequence into text increments.
///
/// A byte-fallback token (`<0xE2>`) may carry part of a UTF-8 character, and decoders may change
/// how a token renders depending on its neighbours, so tokens cannot be decoded one at a time.
/// Instead we decode a short window ending at the new token and emit the difference from the same
/// window without it, holding back output while it ends in U+FFFD (an incomplete character).
/// The window restarts at each emission, so the cost per token stays constant (the scheme of
/// HF text-generation-inference and `tokenizers::DecodeStream`).
pub struct StreamDecoder<'t> {
    tok: &'t Tokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    /// Start of the window whose text has already been emitted up to `read_offset`.
    prefix_offset: usize,
    /// Tokens before this index have been emitted.
    read_offset: usize,
}

impl<'t> StreamDecoder<'t> {
    pub fn new(tok: &'t Tokenizer, skip_special: bool) -> Self {
        StreamDecoder {
            tok,
            skip_special,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Appends `id` and returns the text it completes (often empty while a character is split).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = self.tok.decode_with(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = self
            .tok
            .decode_with(&self.ids[self.prefix_offset..], self.skip_special)?;
        if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        // If a decoder rewrote the already-emitted prefix (it should not), emit from the first
        // difference rather than splitting a character or repeating text.
        let common = match full.strip_prefix(prefix.as_str()) {
            Some(_) => prefix.len(),
            None => common_prefix_len(&prefix, &full),
        };
        let text = full[common..].to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(text)
    }

    /// Text still held back at the end of the stream (an incomplete character decodes to U+FFFD).
    pub fn flush(&mut self) -> Result<String> {
        let prefix = self.tok.decode_with(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = self
            .tok
            .decode_with(&self.ids[self.prefix_offset..], self.skip_special)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        let common = common_prefix_len(&prefix, &full);
        Ok(full[common..].to_string())
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// Byte length of the longest common prefix of `a` and `b` that ends on a char boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
        .min(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny Gemma-like tokenizer.json: BPE with byte fallback, `▁` for spaces, a template
    /// post-processor adding `<bos>`, and the ByteFallback + Fuse decoder.
    const TINY: &str = r#"{
      "version": "1.0", "truncation": null, "padding": null,
      "added_tokens": [
        {"id":0,"content":"<pad>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
        {"id":1,"content":"<eos>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
        {"id":2,"content":"<bos>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}
      ],
      "normalizer": {"type":"Replace","pattern":{"String":" "},"content":"▁"},
      "pre_tokenizer": null,
      "post_processor": {"type":"TemplateProcessing",
        "single":[{"SpecialToken":{"id":"<bos>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
        "pair":[{"SpecialToken":{"id":"<bos>","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"Sequence":{"id":"B","type_id":1}}],
        "special_tokens":{"<bos>":{"id":"<bos>","ids":[2],"tokens":["<bos>"]}}},
      "decoder": {"type":"Sequence","decoders":[
        {"type":"Replace","pattern":{"String":"▁"},"content":" "},
        {"type":"ByteFallback"},{"type":"Fuse"}]},
      "model": {"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,
        "end_of_word_suffix":null,"fuse_unk":true,"byte_fallback":true,"ignore_merges":false,
        "vocab":{"<pad>":0,"<eos>":1,"<bos>":2,"<0xE2>":3,"<0x82>":4,"<0xAC>":5,
                 "a":6,"b":7,"▁":8,"ab":9,"▁ab":10},
        "merges":["a b","▁ ab"]}
    }"#;

    fn tiny() -> Tokenizer {
        Tokenizer::from_bytes(TINY.as_bytes()).unwrap()
    }

    #[test]
    fn encode_adds_exactly_one_bos_only_when_asked() {
        let t = tiny();
        assert_eq!(t.encode("ab ab", false).unwrap(), vec![9, 10]);
        assert_eq!(t.encode("ab ab", true).unwrap(), vec![2, 9, 10]);
        assert_eq!(t.encode("<bos>ab", true).unwrap(), vec![2, 9]);
        assert_eq!(t.encode("", true).unwrap(), vec![2]);
        assert_eq!(t.token_to_id("<eos>"), Some(1));
        assert_eq!(t.bos_id(), Some(2));
    }

    #[test]
    fn decode_skips_special_tokens_and_byte_fallback_fuses() {
        let t = tiny();
        assert_eq!(t.encode("€", false).unwrap(), vec![3, 4, 5]);
        assert_eq!(t.decode(&[2, 9, 10, 3, 4, 5, 1]).unwrap(), "ab ab€");
        assert_eq!(t.decode_with(&[2, 9], false).unwrap(), "<bos>ab");
        let e = t.decode(&[9, 99]).unwrap_err().to_string();
        assert!(
            e.contains("<embedded tokenizer.json>") && e.contains("token id 99"),
            "{e}"
        );
    }

    #[test]
    fn stream_decoder_holds_back_split_characters() {
        let t = tiny();
        let mut s = t.stream();
        let ids = [2, 9, 3, 4, 5, 10, 1];
        let parts: Vec<String> = ids.iter().map(|&id| s.push(id).unwrap()).collect();
        assert_eq!(parts, ["", "ab", "", "", "€", " ab", ""]);
        assert_eq!(s.flush().unwrap(), "");
        assert_eq!(parts.concat(), t.decode(&ids).unwrap());

        // A stream cut inside a character releases the replacement character at the end.
        let mut s = t.stream();
        assert_eq!(s.push(9).unwrap(), "ab");
        assert_eq!(s.push(3).unwrap(), "");
        assert_eq!(s.flush().unwrap(), "\u{FFFD}");
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        let e = Tokenizer::from_file(&p).err().unwrap().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
        std::fs::write(&p, "{ not json").unwrap();
        let e = Tokenizer::from_file(&p).err().unwrap().to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("cannot parse"),
            "{e}"
        );
        std::fs::write(&p, TINY).unwrap();
        assert_eq!(
            Tokenizer::from_file(&p).unwrap().encode("a", true).unwrap(),
            vec![2, 6]
        );
    }
}
