//! VMs outside BOSH in the mesh (docs/workloads.md, "Joining a VM"):
//!
//! - `boshy workload configure` (operator's machine): a join token for one WorkloadGroup from
//!   a pilot, and the join files to copy to the VM (`configure.rs`, `files.rs`);
//! - `boshy join` (on the VM, root): registers the VM with a pilot (`wire.rs`) and installs
//!   the agent, Envoy, their units, the DNAT rules and the resolver (`install.rs`, with the
//!   pure parts in `layout.rs`, `render.rs`, `units.rs`, `resolver.rs`), recording each change
//!   (`state.rs`);
//! - `boshy leave`: deregisters it and undoes exactly what join changed (`leave.rs`).

mod configure;
mod files;
mod install;
mod layout;
mod leave;
mod render;
mod resolver;
mod state;
mod units;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Result};
use clap::Subcommand;
use ipnet::Ipv4Net;

use state::ServiceManager;

/// `boshy workload ...`.
#[derive(clap::Args)]
pub struct WorkloadArgs {
    #[command(subcommand)]
    command: WorkloadCommand,
}

#[derive(Subcommand)]
enum WorkloadCommand {
    /// Gets a join token for a WorkloadGroup from a pilot and writes the files a VM joins
    /// with (`join.yml` with the token, the mesh CA, boshy and Envoy) into --out.
    Configure(ConfigureArgs),
}

#[derive(clap::Args)]
pub(crate) struct ConfigureArgs {
    /// The WorkloadGroup: `<director config>/<name>`.
    #[arg(long)]
    group: String,
    /// A pilot's API, `https://<pilot IP>:8080`; repeat for every pilot (the VM tries them in
    /// order).
    #[arg(long = "pilot", value_name = "URL", required = true)]
    pilots: Vec<String>,
    /// The mesh CA (PEM): the pilots' certificates are checked against it, here and on the VM.
    #[arg(long, value_name = "PEM")]
    ca: PathBuf,
    /// The name in the pilots' certificates.
    #[arg(long, value_name = "NAME", default_value = "bosh-pilot.boshy-istio")]
    server_name: String,
    /// How long the token lets VMs join: `1h`, `30m`, `7d`, or seconds.
    #[arg(long, default_value = "1h", value_parser = configure::parse_ttl)]
    ttl: u64,
    /// The Envoy binary the VM runs (default: `envoy` on PATH).
    #[arg(long, value_name = "PATH")]
    envoy: Option<PathBuf>,
    /// The environment variable holding a UAA token with `bosh.admin` (never the token
    /// itself: a command line is visible to every user).
    #[arg(long, value_name = "VAR", default_value = "BOSH_PILOT_TOKEN")]
    token_env: String,
    /// Where to write the join files.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// `boshy join`.
#[derive(clap::Args)]
pub struct JoinArgs {
    /// The join files `boshy workload configure` wrote.
    #[arg(long, value_name = "DIR")]
    files: PathBuf,
    /// Install under this directory instead of `/` (a lab or a test; needs
    /// `--service-manager none`). The configs and units name the files with it.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Who runs the agent and Envoy: systemd (enabled and started), or none (the units are
    /// written; their ExecStartPre=/ExecStart= lines are plain commands to run).
    #[arg(long, value_enum, default_value_t = ServiceManager::Systemd)]
    service_manager: ServiceManager,
    /// The agent's DNS address: loopback, not systemd-resolved's 127.0.0.53/54.
    #[arg(long, default_value = layout::DEFAULT_DNS_LISTEN, value_parser = layout::parse_dns_listen)]
    dns_listen: SocketAddr,
    /// A label of this VM, `key=value` (repeat): with the group's labels, what subsets and
    /// selectors match; added to `join.yml`'s `labels`. The pilot checks the syntax and refuses
    /// `bosh.io/` keys.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

/// `--label key=value`.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not key=value")),
    }
}

/// `boshy leave`.
#[derive(clap::Args)]
pub struct LeaveArgs {
    /// The root `boshy join` installed under.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// As given to `boshy join` (the join state says how the units were started, and leave
    /// stops them that way).
    #[arg(long, value_enum, default_value_t = ServiceManager::Systemd)]
    service_manager: ServiceManager,
}

pub async fn run_workload(args: WorkloadArgs) -> Result<()> {
    match args.command {
        WorkloadCommand::Configure(args) => configure::configure(args).await,
    }
}

pub async fn run_join(args: JoinArgs) -> Result<()> {
    install::join(args).await
}

pub async fn run_leave(args: LeaveArgs) -> Result<()> {
    leave::leave(args).await
}

/// The machine as join and leave change it: systemd (unless none), the DNAT rules and the
/// inbound capture's.
pub(crate) struct RealHost {
    manager: ServiceManager,
}

impl RealHost {
    /// Whether systemd-resolved runs (never, without systemd).
    fn resolved_active(&self) -> bool {
        self.manager == ServiceManager::Systemd
            && Command::new("systemctl")
                .args(["is-active", "--quiet", "systemd-resolved"])
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
    }
}

impl state::Host for RealHost {
    fn systemctl(&self, args: &[&str]) -> Result<()> {
        if self.manager == ServiceManager::None {
            return Ok(());
        }
        let output = Command::new("systemctl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|err| anyhow::anyhow!("cannot run systemctl: {err}"))?;
        if !output.status.success() {
            bail!(
                "`systemctl {}` failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    fn dnat_install(&self, vip_cidr: Ipv4Net) -> Result<bool> {
        crate::dnat::install_vip_redirect(vip_cidr)
    }

    fn dnat_remove(&self, vip_cidr: Ipv4Net) -> Result<bool> {
        crate::dnat::remove_vip_redirect(vip_cidr)
    }

    fn capture_install(&self, vip_cidr: Ipv4Net, ports_file: &std::path::Path) -> Result<bool> {
        crate::dnat::install_inbound_capture(vip_cidr, ports_file)
    }

    fn capture_remove(&self) -> Result<bool> {
        crate::dnat::remove_inbound_capture()
    }
}
