//! mixq-quantize: convert a Hugging Face Gemma 3 checkpoint once into a calibrated .mixq file.

use clap::{Parser, Subcommand};
use mixq_quantizer::{convert, inspect, report, synth};

#[derive(Parser)]
#[command(
    name = "mixq-quantize",
    version,
    about = "Convert Hugging Face Gemma 3 checkpoints into calibrated mixed INT8/INT4/INT2 .mixq files",
    long_about = "Convert Hugging Face Gemma 3 checkpoints into calibrated mixed INT8/INT4/INT2 .mixq files.\n\n\
        Typical use:\n  mixq-quantize convert models/gemma-3-270m -o g270.mixq\n  mixq-quantize report g270.mixq\n  \
        mixq-run generate --model g270.mixq --prompt \"The capital of France is\""
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Calibrate, quantize and write a .mixq file, plus its quality-retention report.
    Convert(convert::ConvertArgs),
    /// Show a file's quality-retention report, or recompute its end-to-end figures on another text.
    Report(report::ReportArgs),
    /// List a file's sections (budget and fill) and every tensor's type, size and section.
    Inspect(inspect::InspectArgs),
    /// Check every checksum of a file.
    Verify(inspect::VerifyArgs),
    /// Write a valid file with random weights of a Gemma 3 shape (benchmarks at scale).
    Synth(synth::SynthArgs),
}

fn main() {
    let result = match Cli::parse().command {
        Command::Convert(a) => convert::run(a),
        Command::Report(a) => report::run(a),
        Command::Inspect(a) => inspect::run_inspect(a),
        Command::Verify(a) => inspect::run_verify(a),
        Command::Synth(a) => synth::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
