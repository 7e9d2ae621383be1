//! `mixq-run bench`: prefill and decode speed, time to first token, load time and peak memory,
//! in the spirit of llama-bench's pp/tg tests.
//!
//! One run = a fresh session, prefill of `--prompt-tokens` tokens (a fixed English text, its
//! tokens repeated), then `--gen-tokens` greedy decode steps that ignore end-of-sequence, read
//! back as `generate` reads them (the device's top-1, not the whole vocabulary). Runs
//! repeat (`--reps`, after `--warmup` uncounted ones); each figure is the median over runs, with
//! the minimum and maximum beside it. Timing is wall clock around the forward passes and the
//! sampling, as a user sees it.
//!
//! The first run also gives a cold-ish start: open + load + first prefill + first token, as a
//! fresh process sees it (the page cache may still hold the file from an earlier process).

use super::model::{with_model, Loaded, ModelArgs, ModelTask};
use anyhow::{bail, Result};
use clap::Args;
use mixq_runtime::backend::Backend;
use mixq_runtime::sampling::{Sampler, SamplerConfig};
use mixq_runtime::Gemma3;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length for the prefill test (llama-bench's pp).
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens to decode after the prompt (llama-bench's tg).
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Measured runs; figures are medians over them.
    #[arg(long, short = 'r', default_value_t = 3)]
    pub reps: usize,
    /// Uncounted runs before measuring (page in the weights, warm the caches).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// After the timed runs, one more run with per-op device timestamps (Vulkan), printed as
    /// a breakdown. Kept out of the timed runs: the timestamps cost time themselves.
    #[arg(long)]
    pub profile: bool,
}

/// Text whose tokens, repeated, make the synthetic prompt: fixed, so every run and every engine
/// reads the same tokens (`--json` prints them).
const PROMPT_TEXT: &str = "The river rises in the hills above the town and runs for forty miles \
    through farms, woods and three villages before it reaches the sea. In spring the water is \
    high and brown with snowmelt; by late summer children can wade across at the ford below the \
    old mill. The mill ground wheat for two hundred years, then wool, then nothing at all, and \
    now it is a museum where visitors can watch the great wheel turn on Sunday afternoons.";

/// Median, minimum and maximum of a set of measurements.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// `None` for an empty set. The median of an even count is the mean of the middle two.
    pub fn of(xs: &[f64]) -> Option<Stats> {
        if xs.is_empty() {
            return None;
        }
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub prefill_s: f64,
    /// From the start of prefill to the first sampled token.
    pub ttft_s: f64,
    pub decode_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

/// Prefills `prompt` in a fresh session and decodes `gen` tokens greedily (no stop tokens).
pub fn run_once<B: Backend>(model: &Gemma3<B>, prompt: &[u32], gen: usize) -> Result<Run> {
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: 0.0,
        ..SamplerConfig::default()
    });
    let mut session = model.new_session();
    let mut history = prompt.to_vec();
    let t0 = Instant::now();
    let logits = model.forward_last(&mut session, prompt)?;
    // A GPU backend has only recorded the prefill so far: it ends when the first token's
    // top-1 comes back, so prefill and time to first token are the same moment.
    let mut next = sampler.next(&logits, &history);
    let ttft = t0.elapsed();
    let prefill = ttft;
    let t1 = Instant::now();
    for _ in 0..gen {
        history.push(next);
        let logits = model.forward_last(&mut session, &[next])?;
        next = sampler.next(&logits, &history);
    }
    let decode = t1.elapsed();
    let per_s = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    Ok(Run {
        prefill_s: prefill.as_secs_f64(),
        ttft_s: ttft.as_secs_f64(),
        decode_s: decode.as_secs_f64(),
        prefill_tokens_per_s: per_s(prompt.len(), prefill),
        decode_tokens_per_s: per_s(gen, decode),
    })
}

/// `VmHWM` (peak resident set) or `VmRSS` from /proc/self/status, in bytes.
fn proc_status_bytes(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Bytes of the model on disk: the file, or a checkpoint directory's safetensors shards.
fn model_size(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    } else {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }
}

/// `ids` repeated (after `<bos>`) to exactly `n` tokens.
pub fn synthetic_prompt(bos: Option<u32>, text_ids: &[u32], n: usize) -> Vec<u32> {
    let mut out: Vec<u32> = bos.into_iter().collect();
    while out.len() < n && !text_ids.is_empty() {
        let take = (n - out.len()).min(text_ids.len());
        out.extend(&text_ids[..take]);
    }
    out.truncate(n);
    out
}

pub fn run(a: BenchArgs) -> Result<()> {
    let model = a.model.clone();
    let start = Instant::now();
    with_model(&model, Task { a, start })
}

struct Task {
    a: BenchArgs,
    start: Instant,
}

impl ModelTask for Task {
    fn run<B: Backend>(self, l: Loaded<B>) -> Result<()> {
        let a = &self.a;
        let model = &l.model;
        if a.prompt_tokens == 0 || a.reps == 0 {
            bail!("--prompt-tokens and --reps must be at least 1");
        }
        let max_pos = model.config.max_position_embeddings;
        if a.prompt_tokens + a.gen_tokens > max_pos {
            bail!(
                "--prompt-tokens {} + --gen-tokens {} exceed the model's {max_pos} positions",
                a.prompt_tokens,
                a.gen_tokens
            );
        }
        let rss_after_load = proc_status_bytes("VmRSS:");
        let text_ids = l.tokenizer.encode(PROMPT_TEXT, false)?;
        let prompt = synthetic_prompt(l.tokenizer.bos_id(), &text_ids, a.prompt_tokens);
        let threads = a
            .model
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if !a.json {
            eprintln!(
                "mixq-run bench: {} on {} | pp{} tg{} | {} warm-up + {} runs",
                l.store.describe(),
                model.backend_describe(),
                a.prompt_tokens,
                a.gen_tokens,
                a.warmup,
                a.reps
            );
        }

        model.backend.reset_report();
        // The first run is the cold-ish start; it also counts as warm-up.
        let first = run_once(model, &prompt, a.gen_tokens)?;
        // run_once ends right after its decode loop: take that off to land on the first token.
        let cold_first_token_s = self.start.elapsed().as_secs_f64() - first.decode_s;
        for _ in 1..a.warmup {
            run_once(model, &prompt, a.gen_tokens)?;
        }
        let mut runs = Vec::with_capacity(a.reps);
        // Per-device accounting (the hybrid scheduler's) covers the timed runs only.
        if a.warmup > 0 {
            model.backend.reset_report();
        }
        if a.warmup == 0 {
            runs.push(first.clone());
        }
        while runs.len() < a.reps {
            let r = run_once(model, &prompt, a.gen_tokens)?;
            if !a.json {
                eprintln!(
                    "  run {}: pp {:.1} tok/s, tg {:.2} tok/s, ttft {:.0} ms",
                    runs.len() + 1,
                    r.prefill_tokens_per_s,
                    r.decode_tokens_per_s,
                    r.ttft_s * 1e3
                );
            }
            runs.push(r);
        }
        // The timed runs' per-device breakdown (the hybrid scheduler's, with its Phoenix
        // projection), before --profile resets the accounting.
        let device_report = model.backend.report();
        if let (Some(r), false) = (&device_report, a.json) {
            println!("{r}");
        }
        if a.profile {
            model.backend.reset_report();
            model.backend.set_profiling(true);
            run_once(model, &prompt, a.gen_tokens)?;
            model.backend.set_profiling(false);
            match model.backend.report() {
                Some(r) => eprintln!(
                    "profiled run (pp{} + tg{}):\n{r}",
                    a.prompt_tokens, a.gen_tokens
                ),
                None => eprintln!("profiled run: this device reports no per-op timings"),
            }
        }
        let stat = |f: fn(&Run) -> f64| Stats::of(&runs.iter().map(f).collect::<Vec<_>>()).unwrap();
        let pp = stat(|r| r.prefill_tokens_per_s);
        let tg = stat(|r| r.decode_tokens_per_s);
        let ttft = stat(|r| r.ttft_s);
        let peak_rss = proc_status_bytes("VmHWM:");
        let size = model_size(&a.model.model);
        // Decode roofline: every weight byte is read once per token.
        let weight_bytes = l.store.tensor_bytes();
        let copy_bw = model.backend.copy_bandwidth();
        let efficiency = copy_bw
            .zip(weight_bytes)
            .map(|(bw, w)| w as f64 * tg.median / bw);

        if a.json {
            let out = serde_json::json!({
                "model": a.model.model,
                "describe": l.store.describe(),
                "device": model.backend_describe(),
                "threads": threads,
                "file_size_bytes": size,
                "prompt_tokens": a.prompt_tokens,
                "gen_tokens": a.gen_tokens,
                "warmup": a.warmup,
                "reps": a.reps,
                "load_s": l.load_time.as_secs_f64(),
                "cold_first_token_s": cold_first_token_s,
                "rss_after_load_bytes": rss_after_load,
                "peak_rss_bytes": peak_rss,
                "prefill_tokens_per_s": pp,
                "decode_tokens_per_s": tg,
                "ttft_s": ttft,
                "weight_bytes_per_token": weight_bytes,
                "copy_bandwidth_bytes_per_s": copy_bw,
                "bandwidth_efficiency": efficiency,
                "device_report": device_report,
                "runs": runs,
                "prompt_ids": prompt,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "model      {} ({:.1} MB on disk)",
            a.model.model.display(),
            mb(size)
        );
        println!("device     {}", model.backend_describe());
        println!(
            "load       {:.3} s; open to first token (cold-ish, pp{}): {:.3} s",
            l.load_time.as_secs_f64(),
            a.prompt_tokens,
            cold_first_token_s
        );
        println!(
            "memory     RSS after load {:.1} MB, peak {:.1} MB",
            rss_after_load.map_or(f64::NAN, mb),
            peak_rss.map_or(f64::NAN, mb)
        );
        println!("{:<10} {:>12} {:>22}", "test", "median", "min .. max");
        println!(
            "{:<10} {:>8.1} t/s {:>10.1} .. {:<10.1}",
            format!("pp{}", a.prompt_tokens),
            pp.median,
            pp.min,
            pp.max
        );
        println!(
            "{:<10} {:>8.2} t/s {:>10.2} .. {:<10.2}",
            format!("tg{}", a.gen_tokens),
            tg.median,
            tg.min,
            tg.max
        );
        println!(
            "{:<10} {:>9.1} ms {:>10.1} .. {:<10.1}",
            "ttft",
            ttft.median * 1e3,
            ttft.min * 1e3,
            ttft.max * 1e3
        );
        let gb = |b: f64| b / 1e9;
        match (weight_bytes, copy_bw, efficiency) {
            (Some(weight_bytes), Some(bw), Some(eff)) => println!(
                "roofline   {:.2} GB of weights per token x {:.2} t/s = {:.1} GB/s = {:.0} % of the measured copy bandwidth {:.0} GB/s (read+write)",
                gb(weight_bytes as f64),
                tg.median,
                gb(weight_bytes as f64 * tg.median),
                eff * 100.0,
                gb(bw)
            ),
            (Some(weight_bytes), _, _) => println!(
                "roofline   {:.2} GB of weights per token x {:.2} t/s = {:.1} GB/s",
                gb(weight_bytes as f64),
                tg.median,
                gb(weight_bytes as f64 * tg.median)
            ),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Stats::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(
            s,
            Stats {
                median: 3.0,
                min: 1.0,
                max: 5.0
            }
        );
        let s = Stats::of(&[4.0, 1.0, 3.0, 10.0]).unwrap();
        assert_eq!(
            s,
            Stats {
                median: 3.5,
                min: 1.0,
                max: 10.0
            }
        );
        assert_eq!(Stats::of(&[2.5]).unwrap().median, 2.5);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn the_synthetic_prompt_has_exactly_n_tokens() {
        let p = synthetic_prompt(Some(2), &[10, 11, 12], 8);
        assert_eq!(p, [2, 10, 11, 12, 10, 11, 12, 10]);
        assert_eq!(synthetic_prompt(Some(2), &[10], 1), [2]);
        assert_eq!(synthetic_prompt(None, &[7, 8], 3), [7, 8, 7]);
    }
}
