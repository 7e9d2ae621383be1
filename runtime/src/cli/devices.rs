//! `mixq-run devices`: what the runtime can use on this machine.

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct DevicesArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `--device npu+cpu` / `npu+vulkan` run, whatever hardware is present.
const ENGINE_MODEL: &str = "engine model: emulated on the host (NPU arithmetic on the CPU, NPU time predicted by the timing model); use --device npu+cpu or npu+vulkan[:N]";

pub fn run(a: DevicesArgs) -> Result<()> {
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
