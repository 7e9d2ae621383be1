//! The `mixq-run` command line: one file per subcommand.

pub mod bench;
pub mod chat;
pub mod devices;
pub mod generate;
pub mod model;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mixq-run",
    version,
    about = "Run Gemma 3 models (.mixq files or Hugging Face checkpoints) on CPU or Vulkan GPUs",
    long_about = "Run Gemma 3 models (.mixq files or Hugging Face checkpoints) on CPU or Vulkan GPUs.\n\n\
        Examples:\n  mixq-run generate --model g270.mixq --prompt \"The capital of France is\" --temperature 0\n  \
        mixq-run devices"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate text after a prompt, streaming it to stdout.
    Generate(generate::GenerateArgs),
    /// Talk with the model: Gemma 3's chat template, multi-turn, streamed replies.
    Chat(chat::ChatArgs),
    /// Measure prefill and decode speed, time to first token, load time and peak memory.
    Bench(bench::BenchArgs),
    /// List the devices mixq can use here (CPU features, GPUs, NPU).
    Devices(devices::DevicesArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Devices(a) => devices::run(a),
    }
}
