//! The rules themselves, as text: what `iptables-restore --noflush` input makes the nat table
//! right, read from what `iptables-save -t nat` printed. Pure: no process is run here, so every
//! case is unit-tested on saved tables.
//!
//! Outbound (nat table): a chain we own, `BOSHY_OUTPUT` by default, and one jump to it at the
//! top of OUTPUT that matches only `-d <vip cidr> -p tcp` and carries [`COMMENT`]. The chain
//! first RETURNs what must never reach Envoy even if the CIDR is wider than it should be —
//! bosh-dns (169.254.0.0/24), the cloud metadata service (169.254.169.254) and the ports of
//! ssh, monit and the BOSH agent, director, NATS, blobstore and registry ([`PROTECTED_PORTS`])
//! — then redirects the rest with `-p tcp -j REDIRECT --to-ports <redirect port>`. Envoy dials
//! real instance IPs, so its own outbound traffic never loops back.
//!
//! Inbound (optional, [`InboundSpec`]): a second chain, `BOSHY_INBOUND` by default, reached
//! from PREROUTING (connections arriving from the network) and from OUTPUT for connections
//! from this VM to one of its own addresses other than loopback (`-o lo ! -d 127.0.0.0/8`:
//! a client Envoy whose endpoint is its own VM). It RETURNs connections from `127.0.0.6`,
//! the address Envoy's inbound listener dials the local process from, so that hop never loops
//! back, and connections to link-local addresses (VIPs: where the VIP range is routed through
//! `lo`, a call from this VM to a service on one of its own exposed port numbers would
//! otherwise be taken for inbound before the outbound chain sees it), then redirects the
//! exposed ports, and only those, to Envoy's inbound listener. Connections to 127.0.0.1 are
//! never captured.
//!
//! The rendered input is one atomic transaction that touches only our chains and the jumps to
//! them, never flushing or reordering anything else. Install when already installed renders
//! nothing; remove deletes exactly what install added.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

/// Marks the jump as ours in `iptables-save` output.
const COMMENT: &str = "boshy-istio: VIP traffic to Envoy";
/// Marks the inbound jumps as ours.
const INBOUND_COMMENT: &str = "boshy-istio: inbound to Envoy";
/// Destinations inside the link-local range that are never VIPs: bosh-dns and the cloud
/// metadata service. RETURNed before the redirect.
const PROTECTED_DESTINATIONS: [&str; 2] = ["169.254.0.0/24", "169.254.169.254/32"];
/// TCP ports that are never redirected: ssh (22), monit (2822), the BOSH agent (2825, 6868),
/// NATS (4222), the director (25555), its blobstore (25250) and registry (25777). A VIP never
/// listens on them, so RETURNing them costs nothing and keeps a misconfigured CIDR from cutting
/// the VM off from BOSH.
pub const PROTECTED_PORTS: [u16; 8] = [22, 2822, 2825, 4222, 6868, 25250, 25555, 25777];

/// Whether the inbound capture leaves `port` alone even when it is exposed: BOSH's ports, the
/// mesh's own, and Envoy's inbound listener (`redirect_port`).
pub fn never_captured(port: u16, redirect_port: u16) -> bool {
    PROTECTED_PORTS.contains(&port)
        || MESH_PORTS.contains(&port)
        || port == redirect_port
        || port == 0
}
/// The mesh's own ports, never captured inbound even if a job claims one: DNS (53), Envoy's
/// outbound and inbound listeners (15001, 15006), the pilot's xDS, names and API ports
/// (15010, 15011, 15014).
const MESH_PORTS: [u16; 6] = [53, 15001, 15006, 15010, 15011, 15014];
/// iptables' multiport match takes at most 15 ports.
const MULTIPORT_MAX: usize = 15;

/// What the rules should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleSpec {
    pub(crate) vip_cidr: Ipv4Net,
    pub(crate) redirect_port: u16,
    pub(crate) chain: String,
    /// The inbound capture, when the VM's exposed ports are known.
    pub(crate) inbound: Option<InboundSpec>,
}

/// The inbound capture: which ports, to which Envoy port, through which chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InboundSpec {
    pub(crate) chain: String,
    pub(crate) redirect_port: u16,
    /// Never a protected or mesh port: see [`InboundSpec::new`].
    ports: BTreeSet<u16>,
}

impl InboundSpec {
    /// The capture of `exposed` ports, leaving out (with a warning each) those that must never
    /// be captured: BOSH's own ports, the mesh's, and Envoy's inbound port itself.
    pub(crate) fn new(
        chain: String,
        redirect_port: u16,
        exposed: impl IntoIterator<Item = u16>,
    ) -> (InboundSpec, Vec<String>) {
        let mut warnings = Vec::new();
        let ports = exposed
            .into_iter()
            .filter(|port| {
                let refused = never_captured(*port, redirect_port);
                if refused {
                    warnings.push(format!(
                        "port {port} is exposed but never captured inbound: it belongs to BOSH \
                         or to the mesh itself"
                    ));
                }
                !refused
            })
            .collect();
        (
            InboundSpec {
                chain,
                redirect_port,
                ports,
            },
            warnings,
        )
    }

    pub(crate) fn ports(&self) -> &BTreeSet<u16> {
        &self.ports
    }

    fn owned_chain(&self) -> OwnedChain {
        let jump_from = |builtin: &str, matches: &[&str]| Rule {
            chain: builtin.to_string(),
            spec: [
                matches,
                &[
                    "-p",
                    "tcp",
                    "-m",
                    "comment",
                    "--comment",
                    INBOUND_COMMENT,
                    "-j",
                ],
                &[self.chain.as_str()],
            ]
            .concat()
            .iter()
            .map(|word| word.to_string())
            .collect(),
        };
        let source = format!("{}/32", super::INBOUND_HOP_SOURCE);
        let mut rules = vec![
            words(&["-s", &source, "-j", "RETURN"]),
            words(&["-d", super::LINK_LOCAL, "-j", "RETURN"]),
        ];
        let ports: Vec<u16> = self.ports.iter().copied().collect();
        let redirect_port = self.redirect_port.to_string();
        for chunk in ports.chunks(MULTIPORT_MAX) {
            rules.push(tcp_ports_rule(
                chunk,
                &["REDIRECT", "--to-ports", &redirect_port],
            ));
        }
        OwnedChain {
            name: self.chain.clone(),
            rules,
            jumps: vec![
                jump_from("PREROUTING", &[]),
                jump_from("OUTPUT", &["!", "-d", "127.0.0.0/8", "-o", "lo"]),
            ],
        }
    }
}

/// One chain we own: its rules in order and the jumps into it, each in `iptables-save` form.
struct OwnedChain {
    name: String,
    rules: Vec<Vec<String>>,
    jumps: Vec<Rule>,
}

impl RuleSpec {
    /// Every chain we own with its jumps: the outbound one, then the inbound one if any.
    fn owned_chains(&self) -> Vec<OwnedChain> {
        let outbound = OwnedChain {
            name: self.chain.clone(),
            rules: self.chain_rules(),
            jumps: vec![Rule {
                chain: "OUTPUT".into(),
                spec: self.jump(),
            }],
        };
        std::iter::once(outbound)
            .chain(self.inbound.as_ref().map(InboundSpec::owned_chain))
            .collect()
    }

    /// The jump from OUTPUT, in the exact form `iptables-save` prints it (without `-A OUTPUT`).
    fn jump(&self) -> Vec<String> {
        words(&[
            "-d",
            &self.vip_cidr.to_string(),
            "-p",
            "tcp",
            "-m",
            "comment",
            "--comment",
            COMMENT,
            "-j",
            &self.chain,
        ])
    }

    /// The rules of our chain, in order, in `iptables-save` form (without `-A <chain>`): the
    /// RETURNs for what must never be captured, then the redirect.
    fn chain_rules(&self) -> Vec<Vec<String>> {
        let mut rules: Vec<Vec<String>> = PROTECTED_DESTINATIONS
            .iter()
            .map(|destination| words(&["-d", destination, "-j", "RETURN"]))
            .collect();
        rules.push(tcp_ports_rule(&PROTECTED_PORTS, &["RETURN"]));
        rules.push(self.redirect());
        rules
    }

    /// The last rule of our chain, in `iptables-save` form (without `-A <chain>`).
    fn redirect(&self) -> Vec<String> {
        words(&[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &self.redirect_port.to_string(),
        ])
    }
}

/// `-p tcp -m multiport --dports <ports> -j <target...>` (at most [`MULTIPORT_MAX`] ports).
fn tcp_ports_rule(ports: &[u16], target: &[&str]) -> Vec<String> {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let ports = ports.join(",");
    let mut rule = words(&["-p", "tcp", "-m", "multiport", "--dports", &ports, "-j"]);
    rule.extend(words(target));
    rule
}

fn words(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// One `-A <chain> <spec...>` line of `iptables-save`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    chain: String,
    spec: Vec<String>,
}

impl Rule {
    fn jumps_to(&self, target: &str) -> bool {
        self.spec
            .windows(2)
            .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == target)
    }
}

/// The nat table as `iptables-save -t nat` printed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NatTable {
    chains: Vec<String>,
    rules: Vec<Rule>,
}

/// Parses the `*nat` section of `iptables-save` output; comments, counters and other tables
/// are ignored.
pub(crate) fn parse_nat(save_output: &str) -> Result<NatTable> {
    let mut table = NatTable::default();
    let mut in_nat = false;
    for (number, line) in save_output.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            in_nat = name == "nat";
            continue;
        }
        if !in_nat || line == "COMMIT" {
            continue;
        }
        if let Some(declaration) = line.strip_prefix(':') {
            let name = declaration.split_whitespace().next().unwrap_or_default();
            table.chains.push(name.to_string());
        } else if line.starts_with("-A ") {
            let mut tokens = split_words(line)
                .with_context(|| format!("iptables-save line {}: `{line}`", number + 1))?
                .into_iter()
                .skip(1);
            let chain = tokens.next().unwrap_or_default();
            table.rules.push(Rule {
                chain,
                spec: tokens.collect(),
            });
        } else {
            bail!(
                "iptables-save line {}: unexpected `{line}` in the nat table",
                number + 1
            );
        }
    }
    Ok(table)
}

/// Splits a rule line into words the way iptables-restore does: whitespace separates, double
/// quotes group, backslash escapes inside quotes.
fn split_words(line: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => current.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        bail!("unterminated quote");
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

/// Renders words for iptables-restore, quoting those with spaces.
fn join_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.is_empty() || w.contains(char::is_whitespace) || w.contains('"') {
                format!("\"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""))
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How the current rules compare with the wanted ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Status {
    Installed,
    NotInstalled,
    /// Some of it is there, or something of ours is wrong: each entry says what.
    Partial(Vec<String>),
}

impl Status {
    /// The exit code of `boshy dnat status`.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Status::Installed => 0,
            Status::Partial(_) => 1,
            Status::NotInstalled => 3,
        }
    }
}

/// How `table` compares with what `spec` wants.
pub(crate) fn status(spec: &RuleSpec, table: &NatTable) -> Status {
    let chains = spec.owned_chains();
    let nothing_of_ours = chains.iter().all(|owned| {
        !table.chains.contains(&owned.name) && !table.rules.iter().any(|r| r.jumps_to(&owned.name))
    });
    if nothing_of_ours {
        return Status::NotInstalled;
    }
    let problems: Vec<String> = chains
        .iter()
        .flat_map(|owned| chain_problems(owned, table))
        .collect();
    if problems.is_empty() {
        Status::Installed
    } else {
        Status::Partial(problems)
    }
}

/// What is wrong with one chain of ours and its jumps.
fn chain_problems(owned: &OwnedChain, table: &NatTable) -> Vec<String> {
    let mut problems = Vec::new();
    let ours: Vec<&Vec<String>> = table
        .rules
        .iter()
        .filter(|r| r.chain == owned.name)
        .map(|r| &r.spec)
        .collect();
    if !table.chains.contains(&owned.name) {
        problems.push(format!("chain {} is missing", owned.name));
    } else if ours.iter().copied().ne(owned.rules.iter()) {
        let last = owned.rules.last().expect("every chain of ours has rules");
        problems.push(format!(
            "chain {} should hold {} rules ending in `-A {} {}`, it holds {} other(s)",
            owned.name,
            owned.rules.len(),
            owned.name,
            join_words(last),
            ours.len()
        ));
    }
    let jumps: Vec<&Rule> = table
        .rules
        .iter()
        .filter(|r| r.jumps_to(&owned.name))
        .collect();
    for wanted in &owned.jumps {
        let good = jumps.iter().filter(|r| **r == wanted).count();
        if good == 0 {
            problems.push(format!(
                "the jump `-A {} {}` is missing",
                wanted.chain,
                join_words(&wanted.spec)
            ));
        }
        if good > 1 {
            problems.push(format!(
                "{} duplicate jump(s) to {} from {}",
                good - 1,
                owned.name,
                wanted.chain
            ));
        }
    }
    let other_jumps = jumps.iter().filter(|r| !owned.jumps.contains(r)).count();
    if other_jumps > 0 {
        problems.push(format!(
            "{other_jumps} other jump(s) to {} (another CIDR, or from another chain)",
            owned.name
        ));
    }
    problems
}

/// The `iptables-restore --noflush` input that installs the rules, or `None` when they are
/// already exactly right.
pub(crate) fn render_install(spec: &RuleSpec, table: &NatTable) -> Option<String> {
    if status(spec, table) == Status::Installed {
        return None;
    }
    let mut lines = vec!["*nat".to_string()];
    for owned in spec.owned_chains() {
        // With --noflush, declaring a chain creates it, or flushes it when it exists: only our
        // own chains are ever declared.
        lines.push(format!(":{} - [0:0]", owned.name));
        for rule in &owned.rules {
            lines.push(format!("-A {} {}", owned.name, join_words(rule)));
        }
        let mut kept = vec![false; owned.jumps.len()];
        for rule in table.rules.iter().filter(|r| r.jumps_to(&owned.name)) {
            match owned.jumps.iter().position(|wanted| wanted == rule) {
                Some(at) if !kept[at] => kept[at] = true,
                _ => lines.push(format!("-D {} {}", rule.chain, join_words(&rule.spec))),
            }
        }
        for (wanted, _) in owned.jumps.iter().zip(kept).filter(|(_, kept)| !kept) {
            // At the top, so no earlier rule can divert the traffic; the relative order of
            // everyone else's rules is unchanged.
            lines.push(format!(
                "-I {} 1 {}",
                wanted.chain,
                join_words(&wanted.spec)
            ));
        }
    }
    lines.push("COMMIT".into());
    Some(lines.join("\n") + "\n")
}

/// The `iptables-restore --noflush` input that removes every jump to our chains and the chains
/// themselves, or `None` when nothing of ours is there.
pub(crate) fn render_remove(spec: &RuleSpec, table: &NatTable) -> Option<String> {
    if status(spec, table) == Status::NotInstalled {
        return None;
    }
    Some(remove_chains(&spec.owned_chains(), table))
}

/// The input that removes the inbound capture alone (its jumps and its chain), keeping the
/// outbound rules; `None` when none of it is there. `boshy leave` removes the capture its
/// unit kept apart from the outbound rules: either may have been there before the join.
pub(crate) fn render_remove_inbound(inbound: &InboundSpec, table: &NatTable) -> Option<String> {
    let owned = inbound.owned_chain();
    let there = table.chains.contains(&owned.name)
        || table.rules.iter().any(|rule| rule.jumps_to(&owned.name));
    there.then(|| remove_chains(&[owned], table))
}

/// Deletes every jump to `chains`, then flushes and deletes those of them that exist.
fn remove_chains(chains: &[OwnedChain], table: &NatTable) -> String {
    let mut lines = vec!["*nat".to_string()];
    for owned in chains {
        for rule in table.rules.iter().filter(|r| r.jumps_to(&owned.name)) {
            lines.push(format!("-D {} {}", rule.chain, join_words(&rule.spec)));
        }
    }
    for owned in chains
        .iter()
        .filter(|owned| table.chains.contains(&owned.name))
    {
        lines.push(format!("-F {}", owned.name));
        lines.push(format!("-X {}", owned.name));
    }
    lines.push("COMMIT".into());
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RuleSpec {
        RuleSpec {
            vip_cidr: "169.254.255.0/24".parse().unwrap(),
            redirect_port: 15001,
            chain: "BOSHY_OUTPUT".into(),
            inbound: None,
        }
    }

    /// What a Docker host's nat table looks like, plus our rules when `ours` is given.
    fn save_output(ours: &[&str]) -> String {
        let mut text = String::from(
            "# Generated by iptables-nft-save v1.8.9 (nf_tables) on Tue Nov 24 03:08:53 2026\n\
             *nat\n\
             :PREROUTING ACCEPT [12:720]\n\
             :INPUT ACCEPT [0:0]\n\
             :OUTPUT ACCEPT [3:180]\n\
             :POSTROUTING ACCEPT [0:0]\n\
             :DOCKER - [0:0]\n",
        );
        for line in ours.iter().filter(|l| l.starts_with(':')) {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(
            "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
             -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n\
             -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n\
             -A DOCKER -i docker0 -j RETURN\n",
        );
        for line in ours.iter().filter(|l| l.starts_with('-')) {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("COMMIT\n# Completed on Tue Nov 24 03:08:53 2026\n");
        text
    }

    const CHAIN: &str = ":BOSHY_OUTPUT - [0:0]";
    const JUMP: &str = "-A OUTPUT -d 169.254.255.0/24 -p tcp -m comment --comment \"boshy-istio: VIP traffic to Envoy\" -j BOSHY_OUTPUT";
    const RETURN_DNS: &str = "-A BOSHY_OUTPUT -d 169.254.0.0/24 -j RETURN";
    const RETURN_METADATA: &str = "-A BOSHY_OUTPUT -d 169.254.169.254/32 -j RETURN";
    const RETURN_PORTS: &str = "-A BOSHY_OUTPUT -p tcp -m multiport --dports 22,2822,2825,4222,6868,25250,25555,25777 -j RETURN";
    const REDIRECT: &str = "-A BOSHY_OUTPUT -p tcp -j REDIRECT --to-ports 15001";

    fn table(ours: &[&str]) -> NatTable {
        parse_nat(&save_output(ours)).unwrap()
    }

    #[test]
    fn parses_chains_and_rules_of_the_nat_table_only() {
        let text = format!(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n{}",
            save_output(&[
                CHAIN,
                JUMP,
                RETURN_DNS,
                RETURN_METADATA,
                RETURN_PORTS,
                REDIRECT
            ])
        );
        let nat = parse_nat(&text).unwrap();
        assert_eq!(
            nat.chains,
            [
                "PREROUTING",
                "INPUT",
                "OUTPUT",
                "POSTROUTING",
                "DOCKER",
                "BOSHY_OUTPUT"
            ]
        );
        assert_eq!(nat.rules.len(), 9);
        let jump = nat
            .rules
            .iter()
            .find(|r| r.jumps_to("BOSHY_OUTPUT"))
            .unwrap();
        assert_eq!(jump.chain, "OUTPUT");
        assert_eq!(jump.spec, spec().jump());
        assert!(nat
            .rules
            .iter()
            .all(|r| r.chain != "INPUT" || r.spec != ["-j", "ACCEPT"]));
    }

    #[test]
    fn install_on_a_clean_table_creates_chain_redirect_and_jump_only() {
        let input = render_install(&spec(), &table(&[])).unwrap();
        assert_eq!(
            input,
            "*nat\n\
             :BOSHY_OUTPUT - [0:0]\n\
             -A BOSHY_OUTPUT -d 169.254.0.0/24 -j RETURN\n\
             -A BOSHY_OUTPUT -d 169.254.169.254/32 -j RETURN\n\
             -A BOSHY_OUTPUT -p tcp -m multiport --dports 22,2822,2825,4222,6868,25250,25555,25777 -j RETURN\n\
             -A BOSHY_OUTPUT -p tcp -j REDIRECT --to-ports 15001\n\
             -I OUTPUT 1 -d 169.254.255.0/24 -p tcp -m comment --comment \"boshy-istio: VIP traffic to Envoy\" -j BOSHY_OUTPUT\n\
             COMMIT\n"
        );
        assert!(!input.contains("DOCKER"), "foreign chains are never named");
    }

    #[test]
    fn install_when_installed_renders_nothing() {
        let installed = table(&[
            CHAIN,
            JUMP,
            RETURN_DNS,
            RETURN_METADATA,
            RETURN_PORTS,
            REDIRECT,
        ]);
        assert_eq!(status(&spec(), &installed), Status::Installed);
        assert_eq!(render_install(&spec(), &installed), None);
    }

    #[test]
    fn install_repairs_only_what_is_ours() {
        // A jump for an old CIDR, a duplicate of the right one, and a wrong port in our chain.
        let stale = "-A OUTPUT -d 169.254.0.0/16 -p tcp -m comment --comment \"boshy-istio: VIP traffic to Envoy\" -j BOSHY_OUTPUT";
        let wrong_port = "-A BOSHY_OUTPUT -p tcp -j REDIRECT --to-ports 15999";
        let messy = table(&[CHAIN, stale, JUMP, JUMP, wrong_port]);
        assert!(matches!(status(&spec(), &messy), Status::Partial(_)));
        let input = render_install(&spec(), &messy).unwrap();
        let lines: Vec<&str> = input.lines().collect();
        assert_eq!(
            lines,
            [
                "*nat",
                ":BOSHY_OUTPUT - [0:0]",
                RETURN_DNS,
                RETURN_METADATA,
                RETURN_PORTS,
                REDIRECT,
                &stale.replacen("-A", "-D", 1),
                &JUMP.replacen("-A", "-D", 1),
                "COMMIT",
            ]
        );
    }

    #[test]
    fn install_adds_the_jump_when_only_the_chain_exists() {
        let input = render_install(
            &spec(),
            &table(&[CHAIN, RETURN_DNS, RETURN_METADATA, RETURN_PORTS, REDIRECT]),
        )
        .unwrap();
        assert!(
            input.contains("\n-I OUTPUT 1 -d 169.254.255.0/24 "),
            "{input}"
        );
        assert!(!input.contains("-D "), "{input}");
    }

    #[test]
    fn remove_deletes_every_jump_and_the_chain() {
        let foreign_jump = "-A PREROUTING -p tcp -j BOSHY_OUTPUT";
        let input = render_remove(
            &spec(),
            &table(&[
                CHAIN,
                JUMP,
                RETURN_DNS,
                RETURN_METADATA,
                RETURN_PORTS,
                REDIRECT,
                foreign_jump,
            ]),
        )
        .unwrap();
        assert_eq!(
            input,
            format!(
                "*nat\n{}\n-D PREROUTING -p tcp -j BOSHY_OUTPUT\n-F BOSHY_OUTPUT\n-X BOSHY_OUTPUT\nCOMMIT\n",
                JUMP.replacen("-A", "-D", 1)
            )
        );
    }

    #[test]
    fn remove_when_not_installed_renders_nothing() {
        let clean = table(&[]);
        assert_eq!(status(&spec(), &clean), Status::NotInstalled);
        assert_eq!(render_remove(&spec(), &clean), None);
    }

    #[test]
    fn remove_of_a_dangling_jump_does_not_delete_a_missing_chain() {
        let input = render_remove(&spec(), &table(&[JUMP])).unwrap();
        assert!(!input.contains("-X"), "{input}");
    }

    #[test]
    fn status_names_what_is_wrong() {
        let Status::Partial(problems) = status(
            &spec(),
            &table(&[CHAIN, RETURN_DNS, RETURN_METADATA, RETURN_PORTS, REDIRECT]),
        ) else {
            panic!("partial expected");
        };
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("jump"), "{problems:?}");

        let Status::Partial(problems) = status(&spec(), &table(&[CHAIN, JUMP])) else {
            panic!("partial expected");
        };
        assert!(
            problems[0].contains("REDIRECT --to-ports 15001"),
            "{problems:?}"
        );

        let other_port = RuleSpec {
            redirect_port: 15002,
            ..spec()
        };
        assert!(matches!(
            status(
                &other_port,
                &table(&[
                    CHAIN,
                    JUMP,
                    RETURN_DNS,
                    RETURN_METADATA,
                    RETURN_PORTS,
                    REDIRECT
                ])
            ),
            Status::Partial(_)
        ));
        assert_eq!(Status::Installed.exit_code(), 0);
        assert_eq!(Status::Partial(vec![]).exit_code(), 1);
        assert_eq!(Status::NotInstalled.exit_code(), 3);
    }

    #[test]
    fn other_cidr_and_chain_are_rendered() {
        let custom = RuleSpec {
            vip_cidr: "169.254.0.0/16".parse().unwrap(),
            redirect_port: 16001,
            chain: "MESH_OUT".into(),
            inbound: None,
        };
        let input = render_install(
            &custom,
            &table(&[
                CHAIN,
                JUMP,
                RETURN_DNS,
                RETURN_METADATA,
                RETURN_PORTS,
                REDIRECT,
            ]),
        )
        .unwrap();
        assert!(
            input.contains("\n-A MESH_OUT -p tcp -j REDIRECT --to-ports 16001\n"),
            "{input}"
        );
        assert!(input.contains(":MESH_OUT - [0:0]\n-A MESH_OUT -d 169.254.0.0/24 -j RETURN\n"));
        assert!(input.contains("-I OUTPUT 1 -d 169.254.0.0/16 -p tcp"));
        assert!(
            !input.contains("BOSHY_OUTPUT"),
            "another chain's rules are not ours: {input}"
        );
    }

    #[test]
    fn words_round_trip_through_quotes() {
        let line = r#"-A X -m comment --comment "a \"quoted\" word" -j Y"#;
        let words = split_words(line).unwrap();
        assert_eq!(words[5], "a \"quoted\" word");
        assert_eq!(split_words(&join_words(&words)).unwrap(), words);
        assert!(split_words("-A X --comment \"open").is_err());
    }

    #[test]
    fn the_chain_returns_protected_destinations_and_ports_before_redirecting() {
        let rules = spec().chain_rules();
        assert_eq!(rules.last().unwrap(), &spec().redirect());
        let text: Vec<String> = rules.iter().map(|r| join_words(r)).collect();
        assert!(text.contains(&"-d 169.254.0.0/24 -j RETURN".to_string()));
        assert!(text.contains(&"-d 169.254.169.254/32 -j RETURN".to_string()));
        let ports = text.iter().find(|r| r.contains("multiport")).unwrap();
        for port in ["22", "2822", "2825", "6868", "25250"] {
            assert!(
                ports.split([' ', ',']).any(|w| w == port),
                "{port} in {ports}"
            );
        }
    }

    #[test]
    fn unexpected_lines_are_errors_with_line_numbers() {
        let err = parse_nat("*nat\n:OUTPUT ACCEPT [0:0]\n-Z what\nCOMMIT\n").unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    fn with_inbound(ports: &[u16]) -> RuleSpec {
        let (inbound, warnings) = InboundSpec::new("BOSHY_INBOUND".into(), 15006, ports.to_vec());
        assert!(warnings.is_empty(), "{warnings:?}");
        RuleSpec {
            inbound: Some(inbound),
            ..spec()
        }
    }

    /// The lines `iptables-save` prints for `spec`'s rules, as install leaves them.
    fn installed_lines(spec: &RuleSpec) -> Vec<String> {
        let mut lines = Vec::new();
        for owned in spec.owned_chains() {
            lines.push(format!(":{} - [0:0]", owned.name));
            for jump in &owned.jumps {
                lines.push(format!("-A {} {}", jump.chain, join_words(&jump.spec)));
            }
            for rule in &owned.rules {
                lines.push(format!("-A {} {}", owned.name, join_words(rule)));
            }
        }
        lines
    }

    fn table_of(spec: &RuleSpec) -> NatTable {
        let lines = installed_lines(spec);
        table(&lines.iter().map(String::as_str).collect::<Vec<_>>())
    }

    const INBOUND_PREROUTING: &str = "-A PREROUTING -p tcp -m comment --comment \"boshy-istio: inbound to Envoy\" -j BOSHY_INBOUND";
    const INBOUND_OUTPUT: &str = "-A OUTPUT ! -d 127.0.0.0/8 -o lo -p tcp -m comment --comment \"boshy-istio: inbound to Envoy\" -j BOSHY_INBOUND";

    #[test]
    fn inbound_captures_exposed_ports_from_the_network_and_from_the_vm_itself_but_not_envoys_own_hop(
    ) {
        let spec = with_inbound(&[9002, 8080]);
        let input = render_install(&spec, &table(&[])).unwrap();
        assert!(
            input.contains(
                ":BOSHY_INBOUND - [0:0]\n\
                 -A BOSHY_INBOUND -s 127.0.0.6/32 -j RETURN\n\
                 -A BOSHY_INBOUND -d 169.254.0.0/16 -j RETURN\n\
                 -A BOSHY_INBOUND -p tcp -m multiport --dports 8080,9002 -j REDIRECT --to-ports 15006\n"
            ),
            "{input}"
        );
        assert!(input.contains(&INBOUND_PREROUTING.replace("-A PREROUTING", "-I PREROUTING 1")));
        assert!(input.contains(&INBOUND_OUTPUT.replace("-A OUTPUT", "-I OUTPUT 1")));
        let installed = table_of(&spec);
        assert!(installed_lines(&spec).contains(&INBOUND_PREROUTING.to_string()));
        assert!(installed_lines(&spec).contains(&INBOUND_OUTPUT.to_string()));
        assert_eq!(status(&spec, &installed), Status::Installed);
        assert_eq!(render_install(&spec, &installed), None);
    }

    #[test]
    fn the_inbound_capture_is_removed_alone_and_only_when_there() {
        let capturing = with_inbound(&[9002]);
        let inbound = capturing.inbound.clone().unwrap();
        assert_eq!(render_remove_inbound(&inbound, &table_of(&spec())), None);
        let input = render_remove_inbound(&inbound, &table_of(&capturing)).unwrap();
        assert_eq!(
            input,
            format!(
                "*nat\n{}\n{}\n-F BOSHY_INBOUND\n-X BOSHY_INBOUND\nCOMMIT\n",
                INBOUND_PREROUTING.replace("-A ", "-D "),
                INBOUND_OUTPUT.replace("-A ", "-D ")
            ),
            "the outbound chain and its jump stay"
        );
    }

    #[test]
    fn a_change_of_exposed_ports_rewrites_only_the_inbound_chain() {
        let before = table_of(&with_inbound(&[9002]));
        let after = with_inbound(&[9002, 9003]);
        let Status::Partial(problems) = status(&after, &before) else {
            panic!("a port more is a change");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("BOSHY_INBOUND"), "{problems:?}");
        let input = render_install(&after, &before).unwrap();
        assert!(input.contains("--dports 9002,9003 -j REDIRECT"), "{input}");
        assert!(
            !input.contains("-D "),
            "the jumps are right and stay: {input}"
        );
        assert!(!input.contains("-I "), "{input}");
    }

    #[test]
    fn remove_deletes_both_chains_and_every_jump() {
        let spec = with_inbound(&[9002]);
        let input = render_remove(&spec, &table_of(&spec)).unwrap();
        for line in [JUMP, INBOUND_PREROUTING, INBOUND_OUTPUT] {
            assert!(
                input.contains(&line.replacen("-A", "-D", 1)),
                "{line} in {input}"
            );
        }
        for chain in ["BOSHY_OUTPUT", "BOSHY_INBOUND"] {
            assert!(
                input.contains(&format!("-F {chain}\n-X {chain}\n")),
                "{input}"
            );
        }
        // Only the inbound chain left over (an older install): still removed, still exact.
        let only_inbound = with_inbound(&[]);
        let leftover = table(&[
            ":BOSHY_INBOUND - [0:0]",
            INBOUND_PREROUTING,
            "-A BOSHY_INBOUND -s 127.0.0.6/32 -j RETURN",
        ]);
        let input = render_remove(&only_inbound, &leftover).unwrap();
        assert!(input.contains("-X BOSHY_INBOUND"), "{input}");
        assert!(!input.contains("BOSHY_OUTPUT"), "{input}");
    }

    #[test]
    fn bosh_and_mesh_ports_are_never_captured_inbound() {
        let (inbound, warnings) = InboundSpec::new(
            "BOSHY_INBOUND".into(),
            15006,
            [22, 53, 9002, 15006, 15001, 2822, 0],
        );
        assert_eq!(inbound.ports().iter().copied().collect::<Vec<_>>(), [9002]);
        assert_eq!(warnings.len(), 6, "{warnings:?}");
        assert!(
            warnings.iter().any(|w| w.contains("port 22 ")),
            "{warnings:?}"
        );
    }

    #[test]
    fn more_than_fifteen_ports_take_several_multiport_rules() {
        let ports: Vec<u16> = (9000..9020).collect();
        let owned = with_inbound(&ports).inbound.unwrap().owned_chain();
        let redirects: Vec<String> = owned.rules[2..].iter().map(|r| join_words(r)).collect();
        assert_eq!(redirects.len(), 2, "{redirects:?}");
        assert!(redirects[0].contains("9000,9001") && redirects[0].contains(",9014 "));
        assert!(redirects[1].contains("--dports 9015,9016,9017,9018,9019 "));
    }
}
