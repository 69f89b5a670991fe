//! virtual-ip-agent: DNS for *.<tld> from the pushed name table.
//!
//! SCAFFOLD: replaced by the module's real implementation.

#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
