//! `boshy-bench`: the benchmarks of bench/results.md (`scripts/bench` runs them).

#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    args: boshy_bench::Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    boshy::logging::init();
    boshy_bench::run(Cli::parse().args).await
}
