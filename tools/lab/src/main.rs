//! `boshy-lab`: the local lab, the whole mesh on one machine, one network namespace per VM
//! (`scripts/lab` builds the workspace and runs this).

#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    args: boshy_lab::Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    boshy::logging::init();
    boshy_lab::run(Cli::parse().args).await
}
