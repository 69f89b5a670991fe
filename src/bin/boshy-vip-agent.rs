//! `boshy-vip-agent`: the virtual-ip-agent alone (the same agent as `boshy vip-agent`), so that
//! the process on every VM maps only the agent's code: see `boshy::agent::Cli`.

// A binary is a crate of its own: the library's deny does not reach it.
#![deny(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    boshy::logging::init();
    boshy::agent::run(boshy::agent::Cli::parse().args).await
}
