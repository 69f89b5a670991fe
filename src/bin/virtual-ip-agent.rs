//! `virtual-ip-agent`: the virtual-ip-agent alone (the same agent as `boshy virtual-ip-agent`), so that
//! the process on every VM maps only the agent's code: see `boshy::virtual_ip_agent::Cli`.

// A binary is a crate of its own: the library's deny does not reach it.
#![deny(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    boshy::logging::init();
    boshy::virtual_ip_agent::run(boshy::virtual_ip_agent::Cli::parse().args).await
}
