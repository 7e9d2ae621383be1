//! `mixq-run generate`: one prompt, streamed continuation (or one JSON object).

use super::model::{with_model, Loaded, ModelArgs, ModelTask};
use anyhow::Result;
use clap::Args;
use mixq_runtime::backend::Backend;
use mixq_runtime::chat;
use mixq_runtime::generate::{generate, GenerateOptions};
use mixq_runtime::sampling::SamplerConfig;
use std::io::Write;

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 = greedy (deterministic); higher = more random.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than min_p x the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise tokens seen in the last 64 (1 = off; 1.1 is mild).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed (default: from the clock; printed with --json).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this string appears (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// Generation options; stops on the model's eos ids and `<end_of_turn>`.
    pub fn options(&self, eos: &[u32]) -> (GenerateOptions, u64) {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let mut stop_ids = eos.to_vec();
        stop_ids.push(chat::END_OF_TURN);
        let opts = GenerateOptions {
            max_tokens: self.max_tokens,
            sampler: SamplerConfig {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repeat_penalty,
                repetition_window: 64,
                seed,
            },
            stop_ids,
            stop_strings: self.stop.clone(),
        };
        (opts, seed)
    }
}

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text (`<bos>` is added).
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Wrap the prompt in Gemma 3's chat template as one user turn.
    #[arg(long)]
    pub chat: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print one JSON object (prompt ids, generated ids, text, timings) instead of streaming.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let model = a.model.clone();
    with_model(&model, a)
}

impl ModelTask for GenerateArgs {
    fn run<B: Backend>(self, l: Loaded<B>) -> Result<()> {
        let a = self;
        let (model, tok) = (&l.model, &l.tokenizer);
        if !a.json {
            eprintln!(
                "mixq-run: {} on {} (loaded in {:.2}s)",
                l.store.describe(),
                model.backend_describe(),
                l.load_time.as_secs_f64()
            );
        }
        let text = if a.chat {
            chat::render(
                None,
                &[chat::Turn {
                    role: chat::Role::User,
                    text: a.prompt.clone(),
                }],
            )
        } else {
            a.prompt.clone()
        };
        let prompt_ids = tok.encode(&text, true)?;
        let (opts, seed) = a.sampling.options(&model.config.eos_token_ids);
        let mut session = model.new_session();
        let json = a.json;
        if !json {
            print!("{}", a.prompt);
            std::io::stdout().flush().ok();
        }
        let g = generate(
            model,
            &mut session,
            tok,
            &prompt_ids,
            &opts,
            |piece| {
                if !json {
                    print!("{piece}");
                    let _ = std::io::stdout().flush();
                }
            },
            &|| false,
        )?;
        let prefill_tps = prompt_ids.len() as f64 / g.prefill_time.as_secs_f64();
        // The first generated token comes out of the prefill; decode speed counts the rest.
        let decode_tps = if g.generated_ids.len() > 1 {
            (g.generated_ids.len() - 1) as f64 / g.decode_time.as_secs_f64()
        } else {
            0.0
        };
        if json {
            let out = serde_json::json!({
                "prompt": a.prompt,
                "prompt_ids": prompt_ids,
                "generated_ids": g.generated_ids,
                "text": g.text,
                "stop_reason": g.stop,
                "seed": seed,
                "temperature": a.sampling.temperature,
                "device": model.backend_describe(),
                "timings": {
                    "load_s": l.load_time.as_secs_f64(),
                    "prefill_s": g.prefill_time.as_secs_f64(),
                    "decode_s": g.decode_time.as_secs_f64(),
                    "prefill_tokens_per_s": prefill_tps,
                    "decode_tokens_per_s": decode_tps,
                },
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!();
            eprintln!(
                "[{} prompt tokens, {:.1} tok/s prefill | {} generated, {:.2} tok/s decode | stop: {:?}]",
                prompt_ids.len(),
                prefill_tps,
                g.generated_ids.len(),
                decode_tps,
                g.stop
            );
        }
        Ok(())
    }
}
