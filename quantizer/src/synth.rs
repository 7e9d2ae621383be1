//! Being written by a helper.
#[derive(clap::Args)]
pub struct SynthArgs {}
pub fn run(_: SynthArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
