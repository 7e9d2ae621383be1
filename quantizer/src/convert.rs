//! Being written by a helper.
#[derive(clap::Args)]
pub struct ConvertArgs {}
pub fn run(_: ConvertArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
