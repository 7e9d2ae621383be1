//! The model flags every subcommand shares, and opening a model on the chosen device.
//!
//! The model is generic over its backend, so a subcommand is written once as a [`ModelTask`]
//! and [`with_model`] instantiates it for the device the user picked.

use anyhow::{bail, Context, Result};
use clap::Args;
use mixq_format::tokenizer::Tokenizer;
use mixq_runtime::backend::cpu::CpuBackend;
use mixq_runtime::backend::vulkan::VulkanBackend;
use mixq_runtime::backend::Backend;
use mixq_runtime::weights::{self, WeightStore};
use mixq_runtime::Gemma3;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A .mixq file, or an HF checkpoint directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Where to run: `cpu`, `vulkan` or `vulkan:N` (see `mixq-run devices`).
    #[arg(long, short = 'd', default_value = "cpu")]
    pub device: String,
    /// CPU threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Vulkan(Option<usize>),
}

impl Device {
    pub fn parse(s: &str) -> Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "vulkan" | "gpu" => Ok(Device::Vulkan(None)),
            _ => match s.strip_prefix("vulkan:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(Device::Vulkan(Some(i))),
                _ => bail!("unknown device `{s}`: expected cpu, vulkan or vulkan:N (list them with `mixq-run devices`)"),
            },
        }
    }
}

/// What a subcommand gets once the model is open.
pub struct Loaded<B: Backend> {
    pub model: Gemma3<B>,
    pub tokenizer: Tokenizer,
    pub store: Box<dyn WeightStore>,
    pub load_time: Duration,
}

/// A subcommand body, generic over the backend.
pub trait ModelTask {
    fn run<B: Backend>(self, loaded: Loaded<B>) -> Result<()>;
}

/// Opens `args.model` on `args.device` and runs `task` with it.
pub fn with_model<T: ModelTask>(args: &ModelArgs, task: T) -> Result<()> {
    let device = Device::parse(&args.device)?;
    let t0 = Instant::now();
    let store = weights::open_store(&args.model)?;
    let tokenizer =
        Tokenizer::from_bytes(&store.tokenizer_json()?).context("loading the tokenizer")?;
    match device {
        Device::Cpu => {
            let model = Gemma3::load(store.as_ref(), CpuBackend::new(args.threads)?)
                .with_context(|| format!("loading {}", store.describe()))?;
            task.run(Loaded {
                model,
                tokenizer,
                store,
                load_time: t0.elapsed(),
            })
        }
        Device::Vulkan(index) => {
            let model = Gemma3::load(store.as_ref(), VulkanBackend::new(index)?)
                .with_context(|| format!("loading {}", store.describe()))?;
            task.run(Loaded {
                model,
                tokenizer,
                store,
                load_time: t0.elapsed(),
            })
        }
    }
}
