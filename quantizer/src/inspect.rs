//! Being written by a helper.
#[derive(clap::Args)]
pub struct InspectArgs {}
#[derive(clap::Args)]
pub struct VerifyArgs {}
pub fn run_inspect(_: InspectArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn run_verify(_: VerifyArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
