//! `boshy`: every boshy-istio process that runs on a VM or in the control plane is a
//! subcommand of this one binary (the virtual-ip-agent also has a smaller binary of its own).
//! The tools that exercise it (director simulator, lab, benchmarks) are binaries of their own
//! crates under `tools/`.

// A binary is a crate of its own: the library's deny does not reach it.
#![deny(unsafe_code)]

use std::process::ExitCode;

use anyhow::Result;
use boshy::{bookinfo, dnat, httpbin, join, mesh_cli, pilot, rules_check, virtual_ip_agent, xds};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "boshy",
    version,
    about = "boshy-istio: an Envoy service mesh for BOSH"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The control plane: polls the BOSH director, serves xDS, the name table and the API.
    Pilot(pilot::Args),
    /// The per-VM DNS agent: answers `*.<tld>` from the name table pushed by bosh-pilot
    /// (the release runs the same agent from its own, smaller binary, `virtual-ip-agent`).
    VirtualIpAgent(virtual_ip_agent::Args),
    /// Installs, removes or shows the iptables DNAT rules that send VIP traffic to Envoy.
    Dnat(dnat::Args),
    /// Prints an Envoy bootstrap that points ADS at the bosh-pilot instances.
    EnvoyBootstrap(xds::bootstrap::Args),
    /// The sample workload: a small HTTP server that says which instance answered.
    ExampleHttpbin(httpbin::Args),
    /// The bookinfo demo workload: plays one part of Istio's bookinfo (productpage, details,
    /// ratings, reviews v1/v2/v3), for the traffic rules of Istio's bookinfo tasks.
    ExampleBookinfo(bookinfo::Args),
    /// Traffic rules (Istio YAML kept as `boshy-istio` director configs): `check` them
    /// offline before `bosh update-config`.
    Rules(rules_check::Args),
    /// The mesh as a pilot sees it: `status` shows every connected Envoy's configuration
    /// (SYNCED, STALE, NACK) from the pilot's API.
    Mesh(mesh_cli::Args),
    /// VMs outside BOSH in the mesh: `configure` gets a join token for a WorkloadGroup and
    /// writes the files a VM joins with.
    Workload(join::WorkloadArgs),
    /// On a VM outside BOSH, as root: registers it with a pilot and installs the agent, Envoy,
    /// their systemd units, the DNAT rules and the resolver (docs/workloads.md).
    Join(join::JoinArgs),
    /// Undoes `boshy join`: deregisters the VM and puts back exactly what join changed.
    Leave(join::LeaveArgs),
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    boshy::logging::init();
    let done = match Cli::parse().command {
        Command::Pilot(args) => pilot::run(args).await,
        Command::VirtualIpAgent(args) => virtual_ip_agent::run(args).await,
        Command::Dnat(args) => dnat::run(args).await,
        Command::EnvoyBootstrap(args) => xds::bootstrap::run(args).await,
        Command::ExampleHttpbin(args) => httpbin::run(args).await,
        Command::ExampleBookinfo(args) => bookinfo::run(args).await,
        Command::Rules(args) => rules_check::run(args),
        Command::Mesh(args) => return mesh_cli::run(args).await,
        Command::Workload(args) => join::run_workload(args).await,
        Command::Join(args) => join::run_join(args).await,
        Command::Leave(args) => join::run_leave(args).await,
    };
    done.map(|()| ExitCode::SUCCESS)
}
