//! `boshy-bench`: the benchmarks of bench/results.md (`scripts/bench` runs them).

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
