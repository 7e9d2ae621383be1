//! The model flags every subcommand shares, and opening a model on the chosen device.
//!
//! The model is generic over its backend, so a subcommand is written once as a [`ModelTask`]
//! and [`with_model`] instantiates it for the device the user picked.

use anyhow::{bail, Context, Result};
use clap::Args;
use mixq_format::tokenizer::Tokenizer;
use mixq_runtime::backend::cpu::CpuBackend;
use mixq_runtime::backend::hybrid::HybridBackend;
use mixq_runtime::backend::vulkan::VulkanBackend;
use mixq_runtime::backend::Backend;
use mixq_runtime::weights::{self, WeightStore};
use mixq_runtime::Gemma3;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A .mixq file, or an HF checkpoint directory (config.json, *.safetensors, tokenizer.json).
    #[arg(
        value_name = "MODEL",
        required_unless_present = "model_flag",
        conflicts_with = "model_flag"
    )]
    file: Option<PathBuf>,
    /// The model, as a flag (the same as the positional MODEL).
    #[arg(long = "model", short = 'm', id = "model_flag", value_name = "MODEL")]
    model_flag: Option<PathBuf>,
    /// The model path, from MODEL or --model: [`ModelArgs::resolve`] fills it after parsing.
    #[arg(skip)]
    pub model: PathBuf,
    /// Where to run: `cpu`, `vulkan`, `vulkan:N`, or the hybrid scheduler `npu+cpu`,
    /// `npu+vulkan[:N]` (attention on the NPU engine model, emulated on the host CPU: no
    /// XDNA hardware is used; FFN and the rest on the CPU or GPU). See `mixq-run devices`.
    #[arg(long, short = 'd', default_value = "cpu")]
    pub device: String,
    /// CPU threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// CPU: use the exact reference kernels (f32 activations, f32 KV cache) instead of the fast
    /// ones (activations quantized to int8 per group for integer dot products, f16 KV cache).
    #[arg(long)]
    pub cpu_exact: bool,
    /// Vulkan: run prefill matmuls on the portable f32 tile kernel even where the tensor-core
    /// (cooperative-matrix) one is available (`mixq-run devices` says which a GPU gets), e.g.
    /// to compare speed or results.
    #[arg(long)]
    pub vk_portable_prefill: bool,
}

impl ModelArgs {
    /// Takes the model path from whichever of MODEL and --model was given (clap makes sure
    /// exactly one was).
    pub fn resolve(&mut self) -> Result<()> {
        self.model = match (self.file.take(), self.model_flag.take()) {
            (Some(p), None) | (None, Some(p)) => p,
            (Some(_), Some(_)) => bail!("give the model once: as MODEL or as --model, not both"),
            (None, None) if !self.model.as_os_str().is_empty() => return Ok(()),
            (None, None) => bail!("no model given: mixq-run <COMMAND> MODEL (a .mixq file or an HF checkpoint directory)"),
        };
        Ok(())
    }

    /// The Vulkan backend on device `index`, with the Vulkan flags applied.
    pub fn vulkan_backend(&self, index: Option<usize>) -> Result<VulkanBackend> {
        let be = VulkanBackend::new(index)?;
        if mixq_runtime::backend::vulkan::ops::barriers_off() {
            eprintln!("warning: MIXQ_VK_BARRIER=none: no barriers between GPU commands; the output is wrong, only the timing is meant (a bound for hiding dependencies)");
        }
        if mixq_runtime::backend::vulkan::sg_probe() {
            eprintln!("warning: MIXQ_VK_SG_PROBE=1: decode matvecs read their codes without decoding them; the output is wrong, only the timing is meant");
        }
        be.set_coop_matmul(!self.vk_portable_prefill);
        Ok(be)
    }

    pub fn cpu_backend(&self) -> Result<CpuBackend> {
        if self.cpu_exact {
            CpuBackend::new(self.threads)
        } else {
            CpuBackend::fast(self.threads)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Vulkan(Option<usize>),
    /// The hybrid scheduler: attention on the (emulated) NPU engine, the rest on the CPU.
    NpuCpu,
    /// The hybrid scheduler: attention on the (emulated) NPU engine, the rest on a GPU.
    NpuVulkan(Option<usize>),
}

impl Device {
    pub fn parse(s: &str) -> Result<Device> {
        let vulkan_index = |t: &str| match t.strip_prefix("vulkan:").map(str::parse::<usize>) {
            Some(Ok(i)) => Some(i),
            _ => None,
        };
        match s {
            "cpu" => Ok(Device::Cpu),
            "vulkan" | "gpu" => Ok(Device::Vulkan(None)),
            "npu+cpu" => Ok(Device::NpuCpu),
            "npu+vulkan" | "npu+gpu" => Ok(Device::NpuVulkan(None)),
            _ => match (vulkan_index(s), s.strip_prefix("npu+").and_then(vulkan_index)) {
                (Some(i), _) => Ok(Device::Vulkan(Some(i))),
                (_, Some(i)) => Ok(Device::NpuVulkan(Some(i))),
                _ => bail!("unknown device `{s}`: expected cpu, vulkan, vulkan:N, npu+cpu, npu+vulkan or npu+vulkan:N (list them with `mixq-run devices`)"),
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
            let model = Gemma3::load(store.as_ref(), args.cpu_backend()?)
                .with_context(|| format!("loading {}", store.describe()))?;
            task.run(Loaded {
                model,
                tokenizer,
                store,
                load_time: t0.elapsed(),
            })
        }
        Device::Vulkan(index) => {
            let model = Gemma3::load(store.as_ref(), args.vulkan_backend(index)?)
                .with_context(|| format!("loading {}", store.describe()))?;
            task.run(Loaded {
                model,
                tokenizer,
                store,
                load_time: t0.elapsed(),
            })
        }
        Device::NpuCpu => {
            let be = HybridBackend::new(args.cpu_backend()?, "cpu", store.config())?;
            let model = Gemma3::load(store.as_ref(), be)
                .with_context(|| format!("loading {}", store.describe()))?;
            task.run(Loaded {
                model,
                tokenizer,
                store,
                load_time: t0.elapsed(),
            })
        }
        Device::NpuVulkan(index) => {
            let be = HybridBackend::new(args.vulkan_backend(index)?, "vulkan", store.config())?;
            let model = Gemma3::load(store.as_ref(), be)
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
