//! `mixq-run devices`: what the runtime can use on this machine.

use anyhow::{anyhow, Result};
use clap::Args;
use mixq_runtime::backend::hybrid::projection::{prefill, ModelBytes, Projection};

#[derive(Args, Debug, Clone)]
pub struct DevicesArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Instead of listing devices: the hybrid scheduler's Phoenix projection (NPU attention
    /// from the engine's timing model + iGPU FFN from a bandwidth model: NOT measured) for a
    /// published Gemma 3 size with the `optimal` recipe's weight types, no model file needed:
    /// 270m, 1b, 4b, 12b or 27b.
    #[arg(long, value_name = "SIZE")]
    pub projection: Option<String>,
    /// The context length (KV positions) of the projected decode step.
    #[arg(long, default_value_t = 1, requires = "projection")]
    pub context: usize,
}

/// What `--device npu+cpu` / `npu+vulkan` run, whatever hardware is present.
const ENGINE_MODEL: &str = "engine model: emulated on the host (NPU arithmetic on the CPU, NPU time predicted by the timing model); use --device npu+cpu or npu+vulkan[:N]";

pub fn run(a: DevicesArgs) -> Result<()> {
    if let Some(size) = &a.projection {
        return projection(size, a.context);
    }
    let cpu = mixq_runtime::backend::cpu::features();
    // A missing Vulkan loader or driver is not an error here: `devices` reports what exists.
    let gpus = mixq_runtime::backend::vulkan::list_devices();
    let npu = mixq_npu::detect();
    if a.json {
        let gpus = match &gpus {
            Ok(list) => serde_json::json!(list.iter().map(|d| d.to_string()).collect::<Vec<_>>()),
            Err(e) => serde_json::json!({ "unavailable": format!("{e:#}") }),
        };
        let out = serde_json::json!({
            "cpu": cpu,
            "vulkan": gpus,
            "npu": {
                "present": npu.present(),
                "summary": npu.summary(),
                "can_do_today": npu.can_do_today(),
                "engine_model": ENGINE_MODEL,
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "cpu: {} threads; SIMD: {}",
        cpu.threads,
        cpu.simd.join(", ")
    );
    match gpus {
        Ok(list) if list.is_empty() => {
            println!(
                "vulkan: no devices (install a Vulkan driver; Mesa's lavapipe runs on the CPU)"
            )
        }
        Ok(list) => list.iter().for_each(|d| println!("{d}")),
        Err(e) => println!("vulkan: unavailable ({e:#})"),
    }
    println!("npu: {}", npu.summary());
    println!("  {}", npu.can_do_today());
    println!("  {ENGINE_MODEL}");
    Ok(())
}

/// `devices --projection SIZE`: the numbers `bench --device npu+...` prints for a loaded
/// model, computed from the shape alone.
fn projection(size: &str, context: usize) -> Result<()> {
    let size = size.trim_start_matches("gemma3-");
    let cfg = mixq_npu::shapes::gemma3(size).ok_or_else(|| {
        anyhow!(
            "unknown size `{size}`: expected one of {}",
            mixq_npu::shapes::SIZES.join(", ")
        )
    })?;
    let bytes = ModelBytes::optimal_recipe(&cfg)?;
    print!("{}", Projection::decode(&cfg, &bytes, context.max(1))?);
    let (tokens, chunk) = (512, 128);
    let pf = prefill(&cfg, &bytes, tokens, chunk)?;
    println!(
        "  prefill of {tokens} tokens in chunks of {chunk}: serial chain {:.1} ms, NPU || iGPU pipelined {:.1} ms (NPU busy {:.1} ms, iGPU busy {:.1} ms)",
        pf.serial_s * 1e3,
        pf.pipelined_s * 1e3,
        pf.npu_busy_s * 1e3,
        pf.gpu_busy_s * 1e3
    );
    Ok(())
}
