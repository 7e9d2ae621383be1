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
        Examples:\n  mixq-run generate g270.mixq --prompt \"The capital of France is\" --temperature 0\n  \
        mixq-run chat g270.mixq\n  \
        mixq-run bench g270.mixq --device npu+cpu\n  \
        mixq-run devices\n\n\
        The model (a .mixq file or an HF checkpoint directory) is the first argument; \
        --model/-m FILE still works."
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
        Command::Generate(mut a) => {
            a.model.resolve()?;
            generate::run(a)
        }
        Command::Chat(mut a) => {
            a.model.resolve()?;
            chat::run(a)
        }
        Command::Bench(mut a) => {
            a.model.resolve()?;
            bench::run(a)
        }
        Command::Devices(a) => devices::run(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_of(args: &[&str]) -> anyhow::Result<std::path::PathBuf> {
        let cli = Cli::try_parse_from(args)?;
        let mut m = match cli.command {
            Command::Generate(a) => a.model,
            Command::Chat(a) => a.model,
            Command::Bench(a) => a.model,
            Command::Devices(_) => anyhow::bail!("no model"),
        };
        m.resolve()?;
        Ok(m.model)
    }

    #[test]
    fn the_model_is_positional_or_a_flag() {
        for cmd in [
            &["mixq-run", "chat", "a.mixq"][..],
            &["mixq-run", "chat", "-m", "a.mixq"],
            &["mixq-run", "generate", "a.mixq", "-p", "hi"],
            &[
                "mixq-run", "generate", "--prompt", "hi", "--model", "a.mixq",
            ],
            &["mixq-run", "bench", "a.mixq", "--device", "npu+cpu"],
            &["mixq-run", "bench", "-m", "a.mixq"],
        ] {
            assert_eq!(
                model_of(cmd).unwrap(),
                std::path::Path::new("a.mixq"),
                "{cmd:?}"
            );
        }
        for cmd in [
            &["mixq-run", "chat"][..],
            &["mixq-run", "chat", "a.mixq", "-m", "b.mixq"],
            &["mixq-run", "bench", "a.mixq", "b.mixq"],
        ] {
            assert!(model_of(cmd).is_err(), "{cmd:?} must be refused");
        }
    }
}
