//! `boshy dnat`: installs, removes or shows the iptables rules that send TCP connections for the
//! VIP range into the local Envoy and, with `--inbound-ports-file`, connections to the VM's
//! exposed ports into its inbound listener; `follow` keeps the inbound capture in step with
//! that file, which the virtual-ip-agent writes from what the pilot says the VM exposes.
//!
//! Three layers, outermost first:
//! - this file: the command line (the checks of `--vip-cidr` and `--chain`) and [`run`], which
//!   reads the nat table, renders what to change and applies it;
//! - `rules`: the pure part, from `iptables-save` text to `iptables-restore` text (the shape
//!   of the rules is described there);
//! - `iptables`: running `iptables-save` and `iptables-restore` of the chosen backend.

mod iptables;
mod rules;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;

use iptables::Backend;
pub use rules::{never_captured, PROTECTED_PORTS};
use rules::{parse_nat, render_install, render_remove, status, InboundSpec, RuleSpec, Status};

/// The source address of Envoy's inbound connections to the local jobs (Istio's choice), and
/// of the agent's health probes: the inbound capture lets connections from it through.
pub const INBOUND_HOP_SOURCE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 6);

/// How often `follow` looks at the ports file.
const FOLLOW_POLL: Duration = Duration::from_secs(1);
/// How often `follow` checks the table even when the file has not changed: a flushed or
/// edited nat table is repaired within this.
const FOLLOW_RECHECK: Duration = Duration::from_secs(30);

/// Envoy's outbound listener, where the VIP traffic goes.
const DEFAULT_REDIRECT_PORT: u16 = 15001;
/// The nat chain of the outbound rules.
const DEFAULT_CHAIN: &str = "BOSHY_OUTPUT";
/// The nat chain of the inbound capture.
const DEFAULT_INBOUND_CHAIN: &str = "BOSHY_INBOUND";

/// The widest VIP range accepted; a wider one would capture real traffic.
const MIN_PREFIX_LEN: u8 = 16;
/// VIPs are link-local: a range outside it would capture traffic for real hosts.
pub(crate) const LINK_LOCAL: &str = "169.254.0.0/16";
/// iptables' limit on chain names (XT_EXTENSION_MAXNAMELEN - 1).
const MAX_CHAIN_LEN: usize = 28;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// install: add the rules (idempotent); remove: delete them exactly; status: exit 0 when
    /// installed, 3 when not installed, 1 when partially installed or wrong.
    #[arg(value_enum)]
    action: Action,
    /// The VIP range whose TCP traffic is redirected (at most a /16).
    #[arg(long, default_value = "169.254.255.0/24", value_parser = parse_vip_cidr)]
    vip_cidr: Ipv4Net,
    /// Where Envoy's outbound listener accepts the redirected connections.
    #[arg(long, default_value_t = DEFAULT_REDIRECT_PORT)]
    redirect_port: u16,
    /// The nat chain boshy-istio owns.
    #[arg(long, default_value = DEFAULT_CHAIN, value_parser = parse_chain)]
    chain: String,
    /// auto: whatever `iptables` is on this machine; nft / legacy: that variant explicitly.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// The VM's exposed ports, `{"ports": [...]}`, written by the virtual-ip-agent: with it,
    /// connections to those ports go to Envoy's inbound listener. A missing file is no ports.
    #[arg(long)]
    inbound_ports_file: Option<PathBuf>,
    /// Where Envoy's inbound listener accepts the captured connections.
    #[arg(long, default_value_t = 15006)]
    inbound_redirect_port: u16,
    /// The nat chain of the inbound capture; `remove` deletes it whether or not
    /// `--inbound-ports-file` is given.
    #[arg(long, default_value = DEFAULT_INBOUND_CHAIN, value_parser = parse_chain)]
    inbound_chain: String,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Install,
    Remove,
    Status,
    /// Install, then keep the inbound capture in step with `--inbound-ports-file` (checked
    /// every second, the whole table every 30 s) until stopped; the rules stay when it stops.
    Follow,
}

/// The ports file the agent writes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PortsFile {
    ports: Vec<u16>,
}

/// The exposed ports in `bytes`, read from `path` (named in the error).
pub(crate) fn parse_ports_file(path: &Path, bytes: &[u8]) -> Result<Vec<u16>> {
    let file: PortsFile = serde_json::from_slice(bytes).with_context(|| {
        format!(
            "{}: not a ports file (`{{\"ports\": [9002, ...]}}`)",
            path.display()
        )
    })?;
    Ok(file.ports)
}

/// The exposed ports in `path`: none when it does not exist.
pub(crate) fn read_ports_file(path: &Path) -> Result<Vec<u16>> {
    match std::fs::read(path) {
        Ok(bytes) => parse_ports_file(path, &bytes),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the ports file `dnat` reads (the agent's side).
pub fn write_ports_file(path: &Path, ports: &std::collections::BTreeSet<u16>) -> Result<()> {
    let body = serde_json::json!({ "ports": ports });
    crate::fsutil::write_atomically(path, body.to_string().as_bytes())
}

/// Where `dnat` records the ports that `ports_file` asked for and the nat table now captures
/// (the same format), beside it: `inbound_ports.json` → `inbound_ports.captured.json`. The
/// agent reports an exposed port healthy only once it is captured, so no mesh client reaches
/// it before the VM's Envoy does (docs/health.md).
pub fn captured_ports_path(ports_file: &Path) -> PathBuf {
    ports_file.with_extension("captured.json")
}

/// After an install with `--inbound-ports-file`: records the ports the capture now takes,
/// unless the record already says so.
fn record_captured(args: &Args, spec: &RuleSpec) -> Result<()> {
    let (Some(file), Some(inbound)) = (&args.inbound_ports_file, &spec.inbound) else {
        return Ok(());
    };
    let path = captured_ports_path(file);
    let ports = inbound.ports();
    if path.exists() && read_ports_file(&path).is_ok_and(|recorded| recorded.iter().eq(ports)) {
        return Ok(());
    }
    write_ports_file(&path, ports)
}

/// `--vip-cidr`: an IPv4 network with no host bits set inside 169.254.0.0/16.
pub(crate) fn parse_vip_cidr(text: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = text
        .parse()
        .map_err(|_| format!("`{text}` is not an IPv4 CIDR like 169.254.255.0/24"))?;
    if net.network() != net.addr() {
        return Err(format!(
            "`{text}` has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    if net.prefix_len() < MIN_PREFIX_LEN {
        return Err(format!(
            "`{text}` is wider than a /{MIN_PREFIX_LEN}; it would capture traffic that is not \
             for a VIP"
        ));
    }
    let link_local: Ipv4Net = LINK_LOCAL.parse().expect("valid CIDR");
    if !link_local.contains(&net) {
        return Err(format!(
            "`{text}` is outside {LINK_LOCAL}: VIPs are link-local, and any other range would \
             capture traffic for real hosts"
        ));
    }
    Ok(net)
}

/// `--chain`: a name iptables accepts for a user chain.
fn parse_chain(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= MAX_CHAIN_LEN
        && !text.starts_with('-')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(format!(
            "`{text}` is not a usable chain name (1-{MAX_CHAIN_LEN} letters, digits, `_` or `-`)"
        ));
    }
    if ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD"].contains(&text) {
        return Err(format!(
            "`{text}` is a built-in chain, not one boshy-istio can own"
        ));
    }
    Ok(text.to_string())
}

/// The outbound rules for `vip_cidr` as `boshy dnat install` makes them by default (chain
/// `BOSHY_OUTPUT`, Envoy's outbound port 15001, the system's iptables): what `boshy join`
/// installs on a VM outside BOSH. Blocking. True when the table changed, false when the rules
/// were already exactly there (then they are not `join`'s to remove).
pub(crate) fn install_vip_redirect(vip_cidr: Ipv4Net) -> Result<bool> {
    let spec = vip_redirect(vip_cidr);
    let table = parse_nat(&iptables::save_nat(Backend::Auto)?)?;
    Ok(install(&spec, Backend::Auto, &table)?.is_some())
}

/// Removes exactly what [`install_vip_redirect`] installed (the jump and the chain), leaving
/// every other rule as it is. Blocking. True when the table changed.
pub(crate) fn remove_vip_redirect(vip_cidr: Ipv4Net) -> Result<bool> {
    let spec = vip_redirect(vip_cidr);
    let table = parse_nat(&iptables::save_nat(Backend::Auto)?)?;
    match render_remove(&spec, &table) {
        None => Ok(false),
        Some(input) => iptables::restore(Backend::Auto, &input).map(|()| true),
    }
}

/// The inbound capture of the ports in `ports_file` (none when it does not exist) to Envoy's
/// inbound listener, as `boshy dnat install --inbound-ports-file` makes it by default (chain
/// `BOSHY_INBOUND`), beside the outbound rules of [`install_vip_redirect`]: what `boshy join`
/// installs on a VM with workload identities before its capture unit follows the file.
/// Blocking. True when the table changed (the capture was not there as asked).
pub(crate) fn install_inbound_capture(vip_cidr: Ipv4Net, ports_file: &Path) -> Result<bool> {
    let spec = RuleSpec {
        inbound: Some(inbound_capture(read_ports_file(ports_file)?)),
        ..vip_redirect(vip_cidr)
    };
    let table = parse_nat(&iptables::save_nat(Backend::Auto)?)?;
    Ok(install(&spec, Backend::Auto, &table)?.is_some())
}

/// Removes the inbound capture alone (its jumps and chain, whatever ports it holds), leaving
/// the outbound rules and every other rule as they are. Blocking. True when the table changed.
pub(crate) fn remove_inbound_capture() -> Result<bool> {
    let table = parse_nat(&iptables::save_nat(Backend::Auto)?)?;
    match rules::render_remove_inbound(&inbound_capture(Vec::new()), &table) {
        None => Ok(false),
        Some(input) => iptables::restore(Backend::Auto, &input).map(|()| true),
    }
}

/// The default inbound capture of `ports` (warnings are `dnat`'s own to print when it follows).
fn inbound_capture(ports: Vec<u16>) -> InboundSpec {
    InboundSpec::new(
        DEFAULT_INBOUND_CHAIN.to_string(),
        crate::xds::inbound::INBOUND_PORT,
        ports,
    )
    .0
}

fn vip_redirect(vip_cidr: Ipv4Net) -> RuleSpec {
    RuleSpec {
        vip_cidr,
        redirect_port: DEFAULT_REDIRECT_PORT,
        chain: DEFAULT_CHAIN.to_string(),
        inbound: None,
    }
}

/// `boshy dnat <action>`. `status` exits with its own code (see [`Args`]) unless installed.
pub async fn run(args: Args) -> Result<()> {
    // iptables is a blocking subprocess; keep it off the async workers.
    tokio::task::spawn_blocking(move || match args.action {
        Action::Follow => follow(&args),
        action => apply(&args, action, &spec_of(&args, action)?),
    })
    .await
    .context("the iptables task did not finish")?
}

/// The rules `args` ask for. `remove` always names the inbound chain, so that it is deleted
/// even when the ports file is not given.
fn spec_of(args: &Args, action: Action) -> Result<RuleSpec> {
    let ports = match (&args.inbound_ports_file, action) {
        (_, Action::Remove) => Some(Vec::new()),
        (Some(path), _) => Some(read_ports_file(path)?),
        (None, _) => None,
    };
    let inbound = ports.map(|ports| {
        let (inbound, warnings) = InboundSpec::new(
            args.inbound_chain.clone(),
            args.inbound_redirect_port,
            ports,
        );
        for warning in warnings {
            eprintln!("warning: {warning}");
        }
        inbound
    });
    Ok(RuleSpec {
        vip_cidr: args.vip_cidr,
        redirect_port: args.redirect_port,
        chain: args.chain.clone(),
        inbound,
    })
}

/// `follow`: applies the rules whenever the ports file changes, and every [`FOLLOW_RECHECK`].
/// A ports file that cannot be read keeps the rules as they are, with its error printed once.
fn follow(args: &Args) -> Result<()> {
    let Some(path) = &args.inbound_ports_file else {
        anyhow::bail!("`dnat follow` needs --inbound-ports-file: it follows that file");
    };
    let stamp = |path: &Path| -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    let mut applied: Option<(Option<(SystemTime, u64)>, std::time::Instant)> = None;
    let mut last_error = None;
    loop {
        let seen = stamp(path);
        let due = applied
            .as_ref()
            .is_none_or(|(stamp, at)| *stamp != seen || at.elapsed() >= FOLLOW_RECHECK);
        if due {
            let outcome = spec_of(args, Action::Follow).and_then(|spec| {
                let table = parse_nat(&iptables::save_nat(args.backend)?)?;
                let done = install(&spec, args.backend, &table)?;
                record_captured(args, &spec)?;
                Ok(done)
            });
            match outcome {
                Ok(done) => {
                    if let Some(done) = done {
                        println!("{done}");
                    }
                    last_error = None;
                    applied = Some((seen, std::time::Instant::now()));
                }
                Err(err) => {
                    let message = format!("{err:#}");
                    if last_error.as_ref() != Some(&message) {
                        eprintln!("error: {message}; the rules stay as they are");
                    }
                    last_error = Some(message);
                }
            }
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Installs the rules; says what it did when it changed something (`follow` prints only that).
fn install(spec: &RuleSpec, backend: Backend, table: &rules::NatTable) -> Result<Option<String>> {
    match render_install(spec, table) {
        None => Ok(None),
        Some(input) => {
            iptables::restore(backend, &input)?;
            Ok(Some(format!("installed: {}", describe(spec))))
        }
    }
}

fn apply(args: &Args, action: Action, spec: &RuleSpec) -> Result<()> {
    let backend = args.backend;
    let table = parse_nat(&iptables::save_nat(backend)?)?;
    match action {
        Action::Install | Action::Follow => {
            match install(spec, backend, &table)? {
                None => println!("already installed: {}", describe(spec)),
                Some(done) => println!("{done}"),
            }
            record_captured(args, spec)?;
        }
        Action::Remove => {
            match render_remove(spec, &table) {
                None => println!("not installed: nothing to remove"),
                Some(input) => {
                    iptables::restore(backend, &input)?;
                    println!("removed the chains of boshy-istio and their jumps");
                }
            }
            if let Some(file) = &args.inbound_ports_file {
                let captured = captured_ports_path(file);
                match std::fs::remove_file(&captured) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        return Err(err).with_context(|| format!("removing {}", captured.display()))
                    }
                    _ => {}
                }
            }
        }
        Action::Status => {
            let status = status(spec, &table);
            match &status {
                Status::Installed => println!("installed: {}", describe(spec)),
                Status::NotInstalled => println!("not installed"),
                Status::Partial(problems) => {
                    println!("partially installed:");
                    for problem in problems {
                        println!("  - {problem}");
                    }
                }
            }
            if status != Status::Installed {
                std::io::stdout().flush().ok();
                std::process::exit(status.exit_code());
            }
        }
    }
    Ok(())
}

fn describe(spec: &RuleSpec) -> String {
    let outbound = format!(
        "TCP to {} -> {} -> REDIRECT :{}",
        spec.vip_cidr, spec.chain, spec.redirect_port
    );
    match &spec.inbound {
        None => outbound,
        Some(inbound) => format!(
            "{outbound}; inbound TCP to ports {:?} -> {} -> REDIRECT :{}",
            inbound.ports(),
            inbound.chain,
            inbound.redirect_port
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_cidrs_are_rejected_clearly() {
        assert_eq!(parse_vip_cidr("169.254.255.0/24").unwrap().prefix_len(), 24);
        assert!(parse_vip_cidr("nope")
            .unwrap_err()
            .contains("not an IPv4 CIDR"));
        assert!(parse_vip_cidr("169.254.255.7/24")
            .unwrap_err()
            .contains("169.254.255.0/24"));
        assert!(parse_vip_cidr("0.0.0.0/0").unwrap_err().contains("wider"));
        assert!(parse_vip_cidr("fd00::/64").is_err());
    }

    #[test]
    fn vip_cidrs_outside_link_local_are_refused() {
        for bad in [
            "10.0.0.0/16",
            "169.255.0.0/24",
            "0.0.0.0/16",
            "169.254.0.0/15",
        ] {
            assert!(parse_vip_cidr(bad).is_err(), "{bad}");
        }
        assert!(parse_vip_cidr("10.0.0.0/24")
            .unwrap_err()
            .contains("outside 169.254.0.0/16"));
        for good in ["169.254.0.0/16", "169.254.255.0/24", "169.254.200.0/22"] {
            assert!(parse_vip_cidr(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn bad_chain_names_are_rejected() {
        assert!(parse_chain("BOSHY_OUTPUT").is_ok());
        for bad in ["", "OUTPUT", "-x", "has space", &"C".repeat(29)] {
            assert!(parse_chain(bad).is_err(), "{bad:?}");
        }
    }
}
