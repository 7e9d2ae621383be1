//! mixq-run: run Gemma 3 from the command line.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use mixq_format::tokenizer::Tokenizer;
use mixq_runtime::backend::cpu::CpuBackend;
use mixq_runtime::generate::{generate, GenerateOptions};
use mixq_runtime::sampling::SamplerConfig;
use mixq_runtime::{chat, weights, Gemma3};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "mixq-run",
    version,
    about = "Run Gemma 3 models (.mixq files or Hugging Face checkpoints)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text after a prompt, streaming it to stdout.
    ///
    /// Example: mixq-run generate --model models/gemma-3-270m --prompt "The capital of France is" --temperature 0
    Generate(GenerateArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// An HF checkpoint directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// CPU threads (default: all cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text (`<bos>` is added).
    #[arg(long, short = 'p')]
    prompt: String,
    /// Wrap the prompt in Gemma 3's chat template as one user turn.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128)]
    max_tokens: usize,
    /// 0 = greedy (deterministic); higher = more random.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than min_p x the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalise tokens seen in the last 64 (1 = off; 1.1 is mild).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Random seed (default: from the clock; printed with --json).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this string appears (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Print one JSON object (prompt ids, generated ids, text, timings) instead of streaming.
    #[arg(long)]
    json: bool,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(a) => cmd_generate(a),
    }
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let t_load = Instant::now();
    let store = weights::open_store(&a.model.model)?;
    let tok = Tokenizer::from_bytes(&store.tokenizer_json()?).context("loading the tokenizer")?;
    let model = Gemma3::load(store.as_ref(), CpuBackend::new(a.model.threads)?)
        .with_context(|| format!("loading {}", store.describe()))?;
    let load_time = t_load.elapsed();
    if !a.json {
        eprintln!(
            "mixq-run: {} on {} (loaded in {:.2}s)",
            store.describe(),
            model.backend_describe(),
            load_time.as_secs_f64()
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
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let mut stop_ids = model.config.eos_token_ids.clone();
    stop_ids.push(chat::END_OF_TURN);
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampler: SamplerConfig {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repetition_penalty: a.repeat_penalty,
            repetition_window: 64,
            seed,
        },
        stop_ids,
        stop_strings: a.stop.clone(),
    };
    let mut session = model.new_session();
    let json = a.json;
    let mut stdout = std::io::stdout();
    if !json {
        print!("{}", a.prompt);
        stdout.flush().ok();
    }
    let g = generate(
        &model,
        &mut session,
        &tok,
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
            "temperature": a.temperature,
            "timings": {
                "load_s": load_time.as_secs_f64(),
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
