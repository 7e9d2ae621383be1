fn main() -> anyhow::Result<()> {
    anyhow::bail!("mixq-quantize: not built yet (see issue: the .mixq format and mixq-quantize)")
}
