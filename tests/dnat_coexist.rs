//! `boshy dnat` living next to other people's iptables rules, on both the nft and the legacy
//! backend, in namespaces the tests create and delete. Needs root, iproute2 and iptables.
//!
//! - Docker- and garden-like rules in every table are loaded first; installing 100 times
//!   leaves the same full `iptables-save` as installing once, and removing restores it byte for
//!   byte (every table, counters zeroed).
//! - A reboot-like re-apply (every table flushed, the foreign rules loaded again, before or
//!   after us) converges to the same rules.
//! - ssh, monit and the BOSH agent's ports, bosh-dns and the metadata address are never
//!   captured, even with the widest VIP range allowed (169.254.0.0/16): checked with real
//!   connections. A VIP range outside 169.254.0.0/16 is refused without touching iptables.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Output;
use std::time::Duration;

use boshy_test_support::netns::Netns;
use boshy_test_support::process::{check, exit_code};

const BACKENDS: [(&str, &str); 2] = [("nft", "iptables-nft"), ("legacy", "iptables-legacy")];

/// What a VM running Docker and garden (Cloud Foundry's container runtime) has, in every table:
/// jumps from PREROUTING, OUTPUT and POSTROUTING to chains of their own, DNATs, masquerades,
/// a per-container chain, filter and mangle rules.
const FOREIGN_RULES: &str = "*nat
:DOCKER - [0:0]
:w--prerouting - [0:0]
:w--postrouting - [0:0]
:w--instance-1a2b3c - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A PREROUTING -j w--prerouting
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -d 10.9.8.0/24 -p udp -j RETURN
-A OUTPUT -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:8181
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -j w--postrouting
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
-A w--prerouting -j w--instance-1a2b3c
-A w--instance-1a2b3c -d 10.254.0.2/32 -p tcp -m tcp --dport 61001 -j DNAT --to-destination 10.255.0.2:8080
-A w--postrouting -s 10.254.0.0/22 ! -d 10.254.0.0/22 -j MASQUERADE
COMMIT
*filter
:DOCKER-USER - [0:0]
:w--forward - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j w--forward
-A DOCKER-USER -j RETURN
-A w--forward -i w+ -j DROP
-A OUTPUT -p tcp -m tcp --dport 9 -j REJECT --reject-with tcp-reset
COMMIT
*mangle
-A OUTPUT -p tcp -m tcp --dport 5432 -j MARK --set-xmark 0x1/0xffffffff
COMMIT
";

struct Host {
    netns: Netns,
    backend: &'static str,
    variant: &'static str,
}

impl Host {
    fn with_foreign_rules(backend: &'static str, variant: &'static str) -> Host {
        let host = Host {
            netns: Netns::new("boshy-coex"),
            backend,
            variant,
        };
        host.load_foreign_rules();
        host
    }

    fn load_foreign_rules(&self) {
        let loaded = self.netns.exec_stdin(
            &format!("{}-restore", self.variant),
            &["--noflush"],
            FOREIGN_RULES,
        );
        check(
            &loaded,
            &format!("{}: loading the foreign rules", self.variant),
        );
    }

    fn dnat(&self, action: &str, extra: &[&str]) -> Output {
        let mut args = vec!["dnat", action, "--backend", self.backend];
        args.extend_from_slice(extra);
        self.netns.exec(env!("CARGO_BIN_EXE_boshy"), &args)
    }

    fn saved_rules(&self) -> String {
        self.netns.saved_rules(self.variant)
    }

    /// What a reboot does to the rules: every table of every chain flushed, user chains gone.
    fn flush_everything(&self) {
        let empty = "*nat\nCOMMIT\n*filter\nCOMMIT\n*mangle\nCOMMIT\n";
        let flushed = self
            .netns
            .exec_stdin(&format!("{}-restore", self.variant), &[], empty);
        check(&flushed, "flushing every table");
    }
}

/// The rules of a save, independent of the order in which chains were created (which a reboot
/// changes): per table, the chain declarations sorted, then each chain's rules in their order.
fn canonical(save: &str) -> Vec<String> {
    let mut table = String::new();
    let mut declarations = Vec::new();
    let mut rules: Vec<(String, String, &str)> = Vec::new();
    for line in save.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.to_string();
        } else if line.starts_with(':') {
            declarations.push(format!("{table} {line}"));
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            rules.push((table.clone(), chain.to_string(), line));
        }
    }
    declarations.sort();
    // A stable sort: the rules of one chain keep their order.
    rules.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    declarations
        .into_iter()
        .chain(
            rules
                .into_iter()
                .map(|(table, _, line)| format!("{table} {line}")),
        )
        .collect()
}

fn without_ours(save: &str) -> String {
    save.lines()
        .filter(|line| !line.contains("BOSHY_OUTPUT"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn install_100_times_is_install_once_and_remove_restores_the_full_save() {
    for (backend, variant) in BACKENDS {
        let host = Host::with_foreign_rules(backend, variant);
        let before = host.saved_rules();
        check(&host.dnat("install", &[]), "install");
        let once = host.saved_rules();
        assert_ne!(once, before, "{backend}: install changed nothing");
        assert_eq!(
            without_ours(&once),
            before,
            "{backend}: foreign rules untouched, in order"
        );
        for round in 1..100 {
            let output = host.dnat("install", &[]);
            check(&output, &format!("install #{}", round + 1));
            assert!(
                String::from_utf8_lossy(&output.stdout).starts_with("already installed"),
                "{backend}: install #{} did something: {output:?}",
                round + 1
            );
        }
        assert_eq!(
            host.saved_rules(),
            once,
            "{backend}: install 100x = install once"
        );
        assert_eq!(exit_code(&host.dnat("status", &[])), 0);

        check(&host.dnat("remove", &[]), "remove");
        let after = host.saved_rules();
        assert_eq!(
            after, before,
            "{backend}: remove restores iptables-save exactly"
        );
        println!(
            "{backend}: iptables-save after install+remove is identical ({} lines)",
            after.lines().count()
        );
    }
}

#[test]
fn a_reboot_like_reapply_converges_to_the_same_rules() {
    for (backend, variant) in BACKENDS {
        let host = Host::with_foreign_rules(backend, variant);
        check(&host.dnat("install", &[]), "install");
        let installed = host.saved_rules();

        // Reboot, the foreign rules come back first, then we install.
        host.flush_everything();
        assert_eq!(
            exit_code(&host.dnat("status", &[])),
            3,
            "{backend}: gone after the flush"
        );
        host.load_foreign_rules();
        check(&host.dnat("install", &[]), "install after reboot");
        assert_eq!(
            canonical(&host.saved_rules()),
            canonical(&installed),
            "{backend}: same rules after the reboot"
        );

        // Reboot, we install first, the foreign rules come back after us: our jump stays the
        // first rule of OUTPUT and install again changes nothing.
        host.flush_everything();
        check(&host.dnat("install", &[]), "install on an empty table");
        host.load_foreign_rules();
        let late = host.saved_rules();
        let first_output = late
            .lines()
            .skip_while(|l| *l != "*nat")
            .find(|l| l.starts_with("-A OUTPUT "))
            .unwrap();
        assert!(
            first_output.contains("-j BOSHY_OUTPUT"),
            "{backend}: {late}"
        );
        assert_eq!(exit_code(&host.dnat("status", &[])), 0, "{backend}");
        check(&host.dnat("install", &[]), "install again");
        assert_eq!(host.saved_rules(), late, "{backend}");

        // Someone flushes only nat OUTPUT: install puts the jump back, nothing else changes.
        check(
            &host.netns.exec(variant, &["-t", "nat", "-F", "OUTPUT"]),
            "flushing nat OUTPUT",
        );
        assert_eq!(
            exit_code(&host.dnat("status", &[])),
            1,
            "{backend}: partial"
        );
        check(&host.dnat("install", &[]), "repair");
        assert_eq!(exit_code(&host.dnat("status", &[])), 0, "{backend}");

        check(&host.dnat("remove", &[]), "remove");
        assert!(!host.saved_rules().contains("BOSHY"), "{backend}");
    }
}

/// Where a connection to `destination` landed: on the stand-in for Envoy (127.0.0.1:15001),
/// on the service really listening on that port, or nowhere.
#[derive(Debug, PartialEq, Eq)]
enum Landed {
    Envoy,
    Service,
    Refused,
}

/// The stand-in for Envoy (127.0.0.1:15001) and a real service on 0.0.0.0 for every port the
/// test connects to, bound once inside the namespace so no test step ever rebinds a port.
struct Listeners {
    envoy: TcpListener,
    services: BTreeMap<u16, TcpListener>,
}

impl Listeners {
    fn bind(netns: &Netns, ports: &[u16]) -> Listeners {
        netns.within(|| {
            let nonblocking = |address: SocketAddr| {
                let listener =
                    TcpListener::bind(address).unwrap_or_else(|e| panic!("binding {address}: {e}"));
                listener.set_nonblocking(true).unwrap();
                listener
            };
            Listeners {
                envoy: nonblocking("127.0.0.1:15001".parse().unwrap()),
                services: ports
                    .iter()
                    .map(|port| (*port, nonblocking(SocketAddr::from(([0, 0, 0, 0], *port)))))
                    .collect(),
            }
        })
    }

    /// Connects to `destination`:`port` from inside `netns` and says which listener accepted.
    fn connect_and_see(&self, netns: &Netns, destination: &str, port: u16) -> Landed {
        let target: SocketAddr = format!("{destination}:{port}").parse().unwrap();
        let stream = netns.within(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)));
        let stream = match stream {
            Err(err) => {
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
                return Landed::Refused;
            }
            Ok(stream) => stream,
        };
        let local = stream.local_addr().unwrap();
        // The handshake is complete when connect returns, so the connection is already
        // queued on whichever listener it reached.
        let accepted_by = |listener: &TcpListener| {
            std::iter::from_fn(|| listener.accept().ok()).any(|(_, peer)| peer == local)
        };
        let service = &self.services[&port];
        match (accepted_by(&self.envoy), accepted_by(service)) {
            (true, false) => Landed::Envoy,
            (false, true) => Landed::Service,
            other => panic!("{target}: accepted by (envoy, service) = {other:?}"),
        }
    }
}

#[test]
fn bosh_ports_dns_and_metadata_are_never_captured_even_with_the_widest_range() {
    for (backend, variant) in BACKENDS {
        let host = Host::with_foreign_rules(backend, variant);
        // The widest range allowed, and every address in it local, so that a connection that
        // is not redirected reaches the listener on that port instead of timing out.
        check(
            &host.netns.exec(
                "ip",
                &["route", "add", "local", "169.254.0.0/16", "dev", "lo"],
            ),
            "route for the link-local range",
        );
        check(
            &host.dnat("install", &["--vip-cidr", "169.254.0.0/16"]),
            "install",
        );
        let mut ports = vec![80, 9002, 53, 8181];
        ports.extend(boshy::dnat::PROTECTED_PORTS);
        let listeners = Listeners::bind(&host.netns, &ports);
        let vip = "169.254.255.7";
        assert_eq!(
            listeners.connect_and_see(&host.netns, vip, 80),
            Landed::Envoy,
            "{backend}: a VIP port"
        );
        assert_eq!(
            listeners.connect_and_see(&host.netns, vip, 9002),
            Landed::Envoy,
            "{backend}"
        );
        for port in boshy::dnat::PROTECTED_PORTS {
            assert_eq!(
                listeners.connect_and_see(&host.netns, vip, port),
                Landed::Service,
                "{backend}: port {port} must never be captured"
            );
        }
        assert_eq!(
            listeners.connect_and_see(&host.netns, "169.254.0.2", 53),
            Landed::Service,
            "{backend}: bosh-dns over TCP"
        );
        // The foreign rule DNATs the metadata address to 127.0.0.1:8181; what matters is that
        // ours does not take it to Envoy.
        assert_ne!(
            listeners.connect_and_see(&host.netns, "169.254.169.254", 8181),
            Landed::Envoy,
            "{backend}: the metadata service"
        );
        check(&host.dnat("remove", &[]), "remove");
        assert_eq!(
            listeners.connect_and_see(&host.netns, vip, 80),
            Landed::Service,
            "{backend}: nothing captured after remove"
        );
    }
}

#[test]
fn a_range_outside_link_local_is_refused_before_touching_iptables() {
    let host = Host::with_foreign_rules("nft", "iptables-nft");
    let before = host.saved_rules();
    for cidr in [
        "10.0.0.0/24",
        "0.0.0.0/16",
        "172.17.0.0/16",
        "169.254.0.0/15",
    ] {
        let output = host.dnat("install", &["--vip-cidr", cidr]);
        assert!(!output.status.success(), "{cidr} accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--vip-cidr") && stderr.contains(cidr),
            "{stderr}"
        );
    }
    assert_eq!(host.saved_rules(), before);
}
