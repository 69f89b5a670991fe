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

/// Where a connection landed: the port of the listener that accepted it.
fn landed_on(
    from: &Netns,
    source: Option<&str>,
    to: &str,
    listeners: &[std::sync::Arc<TcpListener>],
) -> Option<u16> {
    let to: SocketAddr = to.parse().unwrap();
    let connected = from.within(|| {
        let socket = client_socket(source);
        socket.connect_timeout(&to.into(), Duration::from_secs(5))
    });
    if let Err(err) = connected {
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        return None;
    }
    listeners.iter().find_map(|listener| {
        listener.set_nonblocking(true).unwrap();
        (0..100).find_map(|_| match listener.accept() {
            Ok(_) => Some(listener.local_addr().unwrap().port()),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                None
            }
        })
    })
}

/// A TCP socket, bound to `source` when given (Envoy's inbound hop binds 127.0.0.6).
fn client_socket(source: Option<&str>) -> socket2::Socket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(source) = source {
        let address: SocketAddr = format!("{source}:0").parse().unwrap();
        socket.bind(&address.into()).unwrap();
    }
    socket
}

#[test]
fn inbound_capture_takes_exposed_ports_only_and_never_envoys_own_hop() {
    const VM: &str = "10.77.0.2";
    const PEER: &str = "10.77.0.1";
    let vm = with_foreign_rules("iptables");
    let peer = Netns::new("boshy-test");
    check(
        &run_ip(&[
            "link", "add", "vm0", "netns", &vm.name, "type", "veth", "peer", "name", "peer0",
            "netns", &peer.name,
        ]),
        "veth pair",
    );
    for (netns, device, address) in [(&vm, "vm0", VM), (&peer, "peer0", PEER)] {
        check(
            &netns.exec(
                "ip",
                &["addr", "add", &format!("{address}/24"), "dev", device],
            ),
            "address",
        );
        check(&netns.exec("ip", &["link", "set", device, "up"]), "link up");
    }
    let dir = tempfile::tempdir().unwrap();
    let ports_file = dir.path().join("inbound_ports.json");
    // What the agent waits for before it reports a port healthy: the ports captured now.
    let captured = || {
        std::fs::read_to_string(boshy::dnat::captured_ports_path(&ports_file))
            .unwrap_or_else(|err| format!("{err}"))
    };
    std::fs::write(&ports_file, r#"{"ports": [9002, 22]}"#).unwrap();
    let path = ports_file.to_str().unwrap();
    let install = vm.dnat(&["install", "--inbound-ports-file", path]);
    check(&install, "install with inbound");
    assert!(
        String::from_utf8_lossy(&install.stderr).contains("port 22 is exposed but never captured"),
        "{install:?}"
    );
    assert_eq!(captured(), r#"{"ports":[9002]}"#, "ssh is never captured");
    let status = vm.dnat(&["status", "--inbound-ports-file", path]);
    assert_eq!(
        exit_code(&status),
        0,
        "iptables-save prints what we render: {status:?}"
    );

    // Envoy's inbound listener, the job on 9002, an unexposed job on 9003, sshd on 22.
    let listeners: Vec<std::sync::Arc<TcpListener>> = vm.within(|| {
        [15006, 9002, 9003, 22]
            .map(|port| std::sync::Arc::new(TcpListener::bind(("0.0.0.0", port)).unwrap()))
            .to_vec()
    });
    let vm_port = |port: u16| format!("{VM}:{port}");
    assert_eq!(
        landed_on(&peer, None, &vm_port(9002), &listeners),
        Some(15006),
        "from the network"
    );
    assert_eq!(
        landed_on(&peer, None, &vm_port(9003), &listeners),
        Some(9003),
        "not exposed"
    );
    assert_eq!(
        landed_on(&peer, None, &vm_port(22), &listeners),
        Some(22),
        "ssh is never captured"
    );
    assert_eq!(
        landed_on(&vm, None, &vm_port(9002), &listeners),
        Some(15006),
        "from the VM itself"
    );
    assert_eq!(
        landed_on(&vm, Some("127.0.0.6"), &vm_port(9002), &listeners),
        Some(9002),
        "Envoy's own hop to the job never loops back"
    );
    assert_eq!(
        landed_on(&vm, None, "127.0.0.1:9002", &listeners),
        Some(9002),
        "loopback is never captured"
    );

    // The exposed ports change: install (as `follow` does) rewrites the capture.
    std::fs::write(&ports_file, r#"{"ports": [9003]}"#).unwrap();
    check(
        &vm.dnat(&["install", "--inbound-ports-file", path]),
        "install again",
    );
    assert_eq!(captured(), r#"{"ports":[9003]}"#);
    assert_eq!(
        landed_on(&peer, None, &vm_port(9002), &listeners),
        Some(9002)
    );
    assert_eq!(
        landed_on(&peer, None, &vm_port(9003), &listeners),
        Some(15006)
    );

    // A bad ports file is an error naming the file, and changes nothing.
    let before = vm.saved_rules("iptables");
    std::fs::write(&ports_file, "ports: 9002").unwrap();
    let bad = vm.dnat(&["install", "--inbound-ports-file", path]);
    assert_ne!(exit_code(&bad), 0);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains(path),
        "{bad:?}"
    );
    assert_eq!(vm.saved_rules("iptables"), before);
    assert_eq!(captured(), r#"{"ports":[9003]}"#);

    check(
        &vm.dnat(&["remove", "--inbound-ports-file", path]),
        "remove",
    );
    assert!(
        !boshy::dnat::captured_ports_path(&ports_file).exists(),
        "nothing captured: {}",
        captured()
    );
    assert_eq!(
        landed_on(&peer, None, &vm_port(9003), &listeners),
        Some(9003)
    );
    assert!(
        !vm.saved_rules("iptables").contains("BOSHY"),
        "remove is exact"
    );
}

fn run_ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().unwrap()
}

#[test]
fn inbound_install_is_idempotent_and_remove_is_exact_on_both_backends() {
    let ports_file = tempfile::NamedTempFile::new().unwrap();
    let ports: Vec<String> = (9000..9020).map(|port| port.to_string()).collect();
    std::fs::write(
        ports_file.path(),
        format!(r#"{{"ports": [{}]}}"#, ports.join(",")),
    )
    .unwrap();
    let path = ports_file.path().to_str().unwrap();
    for (backend, variant) in BACKENDS {
        let netns = with_foreign_rules(variant);
        let before = netns.saved_rules(variant);
        let args = ["--backend", backend, "--inbound-ports-file", path];
        check(&netns.dnat(&[&["install"][..], &args].concat()), "install");
        let once = netns.saved_rules(variant);
        assert!(once.contains(":BOSHY_INBOUND - [0:0]"), "{once}");
        check(
            &netns.dnat(&[&["install"][..], &args].concat()),
            "install again",
        );
        assert_eq!(
            netns.saved_rules(variant),
            once,
            "{backend}: install 2x = install once"
        );
        let status = netns.dnat(&[&["status"][..], &args].concat());
        assert_eq!(exit_code(&status), 0, "{backend}: {status:?}");
        // `remove` without the ports file still removes the inbound capture.
        check(&netns.dnat(&["remove", "--backend", backend]), "remove");
        assert_eq!(
            netns.saved_rules(variant),
            before,
            "{backend}: remove is exact"
        );
    }
}
