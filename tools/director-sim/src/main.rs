//! `boshy-director-sim`: the BOSH director + UAA simulator (HTTPS) for the lab and the tests.

#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    args: boshy_director_sim::Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // To stderr, filtered by RUST_LOG (the lab keeps it in the director VM's log file).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    boshy_director_sim::run(Cli::parse().args).await
}
