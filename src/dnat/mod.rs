//! `boshy dnat`: installs, removes or shows the iptables rules that send TCP connections for the
//! VIP range into the local Envoy.
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

use anyhow::{Context, Result};
use ipnet::Ipv4Net;

use iptables::Backend;
pub use rules::PROTECTED_PORTS;
use rules::{parse_nat, render_install, render_remove, status, RuleSpec, Status};

/// The widest VIP range accepted; a wider one would capture real traffic.
const MIN_PREFIX_LEN: u8 = 16;
/// VIPs are link-local: a range outside it would capture traffic for real hosts.
const LINK_LOCAL: &str = "169.254.0.0/16";
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
    #[arg(long, default_value_t = 15001)]
    redirect_port: u16,
    /// The nat chain boshy-istio owns.
    #[arg(long, default_value = "BOSHY_OUTPUT", value_parser = parse_chain)]
    chain: String,
    /// auto: whatever `iptables` is on this machine; nft / legacy: that variant explicitly.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Install,
    Remove,
    Status,
}

/// `--vip-cidr`: an IPv4 network with no host bits set inside 169.254.0.0/16.
fn parse_vip_cidr(text: &str) -> Result<Ipv4Net, String> {
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

/// `boshy dnat <action>`. `status` exits with its own code (see [`Args`]) unless installed.
pub async fn run(args: Args) -> Result<()> {
    let spec = RuleSpec {
        vip_cidr: args.vip_cidr,
        redirect_port: args.redirect_port,
        chain: args.chain,
    };
    let backend = args.backend;
    let action = args.action;
    // iptables is a blocking subprocess; keep it off the async workers.
    tokio::task::spawn_blocking(move || apply(action, &spec, backend))
        .await
        .context("the iptables task did not finish")?
}

fn apply(action: Action, spec: &RuleSpec, backend: Backend) -> Result<()> {
    let table = parse_nat(&iptables::save_nat(backend)?)?;
    match action {
        Action::Install => match render_install(spec, &table) {
            None => println!("already installed: {}", describe(spec)),
            Some(input) => {
                iptables::restore(backend, &input)?;
                println!("installed: {}", describe(spec));
            }
        },
        Action::Remove => match render_remove(spec, &table) {
            None => println!("not installed: nothing to remove"),
            Some(input) => {
                iptables::restore(backend, &input)?;
                println!("removed chain {} and its jumps", spec.chain);
            }
        },
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
    format!(
        "TCP to {} -> {} -> REDIRECT :{}",
        spec.vip_cidr, spec.chain, spec.redirect_port
    )
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
