//! `mixq-run devices`: what the runtime can use on this machine.

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct DevicesArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: DevicesArgs) -> Result<()> {
    let cpu = mixq_runtime::backend::cpu::features();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "cpu": cpu }))?
        );
    } else {
        println!(
            "cpu: {} threads; SIMD: {}",
            cpu.threads,
            cpu.simd.join(", ")
        );
    }
    Ok(())
}
