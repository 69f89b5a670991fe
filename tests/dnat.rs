//! `boshy dnat` against real iptables (nft and legacy) in fresh network namespaces. Needs root.
//!
//! Each test creates its own namespace `boshy-test-<random>` and deletes it when it ends, even on
//! failure. A Docker-like set of foreign rules is loaded first, so the tests also prove that our
//! install and remove leave everyone else's rules exactly as they were.
//!
//! The redirect check needs a route for the VIP range inside the namespace, since the routing
//! decision for a locally generated packet is made before the nat OUTPUT hook.
//! `ip route add local 169.254.255.0/24 dev lo` works best: the VIPs become local addresses, so
//! without the rules a connection is refused at once (no timeout), and with them REDIRECT sends
//! it to 127.0.0.1:15001. (A plain `dev lo` route also redirects, but unredirected connections
//! then hang until a timeout, and the source address is 0.0.0.0.)

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};

use boshy_test_support::netns::Netns;
use boshy_test_support::process::{check, exit_code};
use std::time::Duration;

const BACKENDS: [(&str, &str); 2] = [("nft", "iptables-nft"), ("legacy", "iptables-legacy")];

/// `boshy dnat ...` inside the namespace.
trait Dnat {
    fn dnat(&self, args: &[&str]) -> Output;
}

impl Dnat for Netns {
    fn dnat(&self, args: &[&str]) -> Output {
        let mut full = vec!["dnat"];
        full.extend_from_slice(args);
        self.exec(env!("CARGO_BIN_EXE_boshy"), &full)
    }
}

/// What a Docker host has: a DOCKER chain in nat with jumps from PREROUTING and OUTPUT, a
/// masquerade, an unrelated OUTPUT rule, and filter rules.
const FOREIGN_RULES: &str = "*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -d 10.9.8.0/24 -p udp -j RETURN
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
COMMIT
*filter
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -j RETURN
COMMIT
";

const JUMP: &str = "-A OUTPUT -d 169.254.255.0/24 -p tcp -m comment --comment \"boshy-istio: VIP traffic to Envoy\" -j BOSHY_OUTPUT";
const REDIRECT: &str = "-A BOSHY_OUTPUT -p tcp -j REDIRECT --to-ports 15001";

fn with_foreign_rules(variant: &str) -> Netns {
    let netns = Netns::new("boshy-test");
    let loaded = netns.exec_stdin(&format!("{variant}-restore"), &["--noflush"], FOREIGN_RULES);
    check(&loaded, "loading the foreign rules");
    netns
}

#[test]
fn install_is_idempotent_and_remove_is_exact_on_both_backends() {
    for (backend, variant) in BACKENDS {
        let netns = with_foreign_rules(variant);
        let before = netns.saved_rules(variant);
        assert_eq!(exit_code(&netns.dnat(&["status", "--backend", backend])), 3);

        check(&netns.dnat(&["install", "--backend", backend]), "install");
        let once = netns.saved_rules(variant);
        for _ in 0..2 {
            check(
                &netns.dnat(&["install", "--backend", backend]),
                "install again",
            );
        }
        assert_eq!(
            netns.saved_rules(variant),
            once,
            "{backend}: install 3x = install once"
        );

        // Ours is there, at the top of OUTPUT; everything else is unchanged and in order.
        let lines: Vec<&str> = once.lines().collect();
        assert!(lines.contains(&":BOSHY_OUTPUT - [0:0]"), "{once}");
        assert!(lines.contains(&REDIRECT), "{once}");
        let first_output = lines.iter().find(|l| l.starts_with("-A OUTPUT ")).unwrap();
        assert_eq!(*first_output, JUMP, "{once}");
        let without_ours: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.contains("BOSHY_OUTPUT"))
            .collect();
        assert_eq!(
            without_ours.join("\n"),
            before,
            "{backend}: foreign rules untouched"
        );
        let status = netns.dnat(&["status", "--backend", backend]);
        assert_eq!(exit_code(&status), 0, "{status:?}");

        check(&netns.dnat(&["remove", "--backend", backend]), "remove");
        assert_eq!(
            netns.saved_rules(variant),
            before,
            "{backend}: remove is exact"
        );
        assert_eq!(exit_code(&netns.dnat(&["status", "--backend", backend])), 3);
        check(
            &netns.dnat(&["remove", "--backend", backend]),
            "remove again",
        );
        assert_eq!(netns.saved_rules(variant), before);
    }
}

#[test]
fn partial_rules_are_reported_and_repaired() {
    for (backend, variant) in BACKENDS {
        let netns = with_foreign_rules(variant);
        let before = netns.saved_rules(variant);
        check(&netns.dnat(&["install", "--backend", backend]), "install");
        let installed = netns.saved_rules(variant);

        // Someone deletes our jump by hand.
        let jump_spec = JUMP.trim_start_matches("-A OUTPUT ");
        let delete = format!("*nat\n-D OUTPUT {jump_spec}\nCOMMIT\n");
        check(
            &netns.exec_stdin(&format!("{variant}-restore"), &["--noflush"], &delete),
            "deleting the jump",
        );
        let status = netns.dnat(&["status", "--backend", backend]);
        assert_eq!(exit_code(&status), 1, "{status:?}");
        assert!(
            String::from_utf8_lossy(&status.stdout).contains("jump"),
            "{status:?}"
        );

        check(&netns.dnat(&["install", "--backend", backend]), "repair");
        assert_eq!(netns.saved_rules(variant), installed, "{backend}: repaired");

        // A different port is "partially installed" for that spec, and install fixes the chain.
        let other_port = ["--backend", backend, "--redirect-port", "15002"];
        assert_eq!(
            exit_code(&netns.dnat(&[&["status"][..], &other_port].concat())),
            1
        );
        check(
            &netns.dnat(&[&["install"][..], &other_port].concat()),
            "reinstall",
        );
        assert!(netns
            .saved_rules(variant)
            .contains("-A BOSHY_OUTPUT -p tcp -j REDIRECT --to-ports 15002"));

        check(&netns.dnat(&["remove", "--backend", backend]), "remove");
        assert_eq!(
            netns.saved_rules(variant),
            before,
            "{backend}: remove is exact"
        );
    }
}

/// Connects to a VIP inside the namespace; true when the connection landed on the listener
/// standing in for Envoy on 127.0.0.1:15001.
fn vip_connection_reaches_envoy_port(netns: &Netns) -> bool {
    netns.within(|| {
        let listener = TcpListener::bind("127.0.0.1:15001").unwrap();
        let vip: SocketAddr = "169.254.255.7:80".parse().unwrap();
        match TcpStream::connect_timeout(&vip, Duration::from_secs(5)) {
            Ok(stream) => {
                let (accepted, peer) = listener.accept().unwrap();
                assert_eq!(peer, stream.local_addr().unwrap());
                // The client closes first, so that the TIME_WAIT is its own and not on
                // 127.0.0.1:15001, which the next check binds again.
                drop(stream);
                drop(accepted);
                true
            }
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
                false
            }
        }
    })
}

#[test]
fn vip_traffic_is_redirected_only_while_installed() {
    let netns = with_foreign_rules("iptables");
    check(
        &netns.exec(
            "ip",
            &["route", "add", "local", "169.254.255.0/24", "dev", "lo"],
        ),
        "route for the VIP range",
    );
    assert!(!vip_connection_reaches_envoy_port(&netns), "before install");
    check(&netns.dnat(&["install"]), "install");
    assert!(vip_connection_reaches_envoy_port(&netns), "after install");
    // Only the VIP range is captured: other local TCP is not.
    netns.within(|| {
        let _envoy = TcpListener::bind("127.0.0.1:15001").unwrap();
        let err = TcpStream::connect("127.0.0.1:80").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    });
    check(&netns.dnat(&["remove"]), "remove");
    assert!(!vip_connection_reaches_envoy_port(&netns), "after remove");
}

#[test]
fn missing_iptables_is_named_in_the_error() {
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_boshy"))
        .args(["dnat", "status", "--backend", "legacy"])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("iptables-legacy-save"), "{stderr}");
}

#[test]
fn a_bad_cidr_is_rejected_before_touching_iptables() {
    let output = Command::new(env!("CARGO_BIN_EXE_boshy"))
        .args(["dnat", "install", "--vip-cidr", "169.254.255.7/24"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("169.254.255.0/24"), "{stderr}");
}
