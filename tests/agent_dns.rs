//! The real `virtual-ip-agent` binary (what the release runs) on a loopback port, queried with `dig` over UDP and TCP.
//! The pilots in its config are unreachable (a closed loopback port), so every answer comes from
//! the table on disk — which is exactly the restart-while-the-control-plane-is-down case.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::thread::sleep;
use std::time::Duration;

use boshy::catalog::model::Catalog;
use boshy::catalog::testing;
use boshy_test_support::process::KilledOnDrop;

const VIP: &str = "169.254.255.7";
const HOST: &str = "example-httpbin.banana.sample-deployment.boshy";
const TTL: u32 = 7;

/// The agent's two command lines: its own binary, which the release runs, and the multi-tool
/// `boshy virtual-ip-agent`; both take the same arguments (`boshy::virtual_ip_agent::Args`).
const AGENT_COMMANDS: [&[&str]; 2] = [
    &[env!("CARGO_BIN_EXE_virtual-ip-agent")],
    &[env!("CARGO_BIN_EXE_boshy"), "virtual-ip-agent"],
];

fn agent_command(command: &[&str]) -> Command {
    let mut agent = Command::new(command[0]);
    agent.args(&command[1..]);
    agent
}

/// The agent process; killed when the test ends, however it ends.
struct Agent {
    child: KilledOnDrop,
    port: u16,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, port: u16) -> Agent {
        let log = dir.join(format!("agent-{}.log", rand_suffix()));
        let child = agent_command(AGENT_COMMANDS[0])
            .arg("--config")
            .arg(dir.join("agent.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start virtual-ip-agent");
        let mut agent = Agent {
            child: KilledOnDrop(child),
            port,
            log,
        };
        agent.wait_until_answering();
        agent
    }

    /// Polls with dig until the agent answers; fails with its log if it exits or never answers.
    fn wait_until_answering(&mut self) {
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "virtual-ip-agent exited with {status}:\n{}",
                    self.log_text()
                );
            }
            if dig(self.port, &["boshy", "SOA"]).status.is_some() {
                return;
            }
            sleep(Duration::from_millis(100));
        }
        panic!("virtual-ip-agent never answered:\n{}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn rand_suffix() -> u32 {
    rand::random()
}

/// A port free for both UDP and TCP on 127.0.0.1 right now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok() {
            return port;
        }
    }
}

fn write_config(dir: &Path, port: u16) {
    // Port 9 (discard) on loopback: nothing listens there, so the pilot is unreachable.
    write_config_with_pilot(dir, port, "http://127.0.0.1:9");
}

fn write_config_with_pilot(dir: &Path, port: u16, pilot: &str) {
    let config = format!(
        "listen: 127.0.0.1:{port}\n\
         ttl_seconds: {TTL}\n\
         pilots: [\"{pilot}\"]\n\
         insecure_plaintext: true\n\
         table_path: {}\n\
         bosh_dns_handlers_path: {}\n",
        dir.join("table.json").display(),
        dir.join("handlers.json").display()
    );
    std::fs::write(dir.join("agent.yml"), config).unwrap();
}

fn write_table(dir: &Path) {
    let table = format!(
        r#"{{"version": 12, "tld": "boshy", "names": {{"{HOST}": "{VIP}", "db.apricot.other.boshy": "169.254.255.8"}}}}"#
    );
    std::fs::write(dir.join("table.json"), table).unwrap();
}

/// What dig printed, parsed.
#[derive(Debug, Default)]
struct Dig {
    status: Option<String>,
    flags: Vec<String>,
    answers: Vec<Vec<String>>,
    authority: Vec<Vec<String>>,
    has_opt: bool,
    raw: String,
}

fn dig(port: u16, query: &[&str]) -> Dig {
    let output = run_dig(port, query);
    parse_dig(&String::from_utf8_lossy(&output.stdout))
}

fn run_dig(port: u16, query: &[&str]) -> Output {
    Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=2"])
        .args(query)
        .output()
        .expect("dig is needed for this test (apt-get install dnsutils / bind9-dnsutils)")
}

fn parse_dig(text: &str) -> Dig {
    let mut dig = Dig {
        raw: text.to_string(),
        ..Dig::default()
    };
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            dig.status = rest.split(',').next().map(str::to_string);
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            let flags = rest.split(';').next().unwrap_or_default();
            dig.flags = flags.split_whitespace().map(str::to_string).collect();
        } else if line.starts_with(";; OPT PSEUDOSECTION") {
            dig.has_opt = true;
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.is_empty() || line.starts_with(';') {
            section = "";
        } else {
            let fields = line.split_whitespace().map(str::to_string).collect();
            match section {
                "answer" => dig.answers.push(fields),
                "authority" => dig.authority.push(fields),
                _ => {}
            }
        }
    }
    dig
}

fn assert_negative_answer(reply: &Dig, status: &str) {
    assert_eq!(reply.status.as_deref(), Some(status), "{}", reply.raw);
    assert!(reply.answers.is_empty(), "{}", reply.raw);
    assert_eq!(reply.authority.len(), 1, "{}", reply.raw);
    assert_eq!(reply.authority[0][0], "boshy.", "{}", reply.raw);
    assert_eq!(reply.authority[0][3], "SOA", "{}", reply.raw);
    assert!(reply.flags.contains(&"aa".to_string()), "{}", reply.raw);
}

fn assert_answers_from_table(port: u16) {
    for transport in ["+notcp", "+tcp"] {
        let reply = dig(port, &[transport, HOST, "A"]);
        assert_eq!(reply.status.as_deref(), Some("NOERROR"), "{}", reply.raw);
        assert!(reply.flags.contains(&"aa".to_string()), "{}", reply.raw);
        assert!(
            !reply.flags.contains(&"ra".to_string()),
            "never a resolver: {}",
            reply.raw
        );
        assert_eq!(
            reply.answers,
            [vec![
                format!("{HOST}."),
                TTL.to_string(),
                "IN".into(),
                "A".into(),
                VIP.into()
            ]],
            "{}",
            reply.raw
        );
    }
}

#[test]
fn answers_every_case_over_udp_and_tcp_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port);
    write_table(dir.path());
    let agent = Agent::start(dir.path(), port);

    assert_answers_from_table(port);

    // Case-insensitive, and the answer echoes the question's case.
    let mixed = "Example-HTTPBIN.Banana.sample-deployment.BOSHY";
    let reply = dig(port, &[mixed]);
    assert_eq!(reply.answers.len(), 1, "{}", reply.raw);
    assert_eq!(reply.answers[0][0], format!("{mixed}."));
    assert_eq!(reply.answers[0][4], VIP);

    for transport in ["+notcp", "+tcp"] {
        assert_negative_answer(
            &dig(port, &[transport, "nope.banana.sample-deployment.boshy"]),
            "NXDOMAIN",
        );
        assert_negative_answer(&dig(port, &[transport, HOST, "AAAA"]), "NOERROR");
        assert_negative_answer(
            &dig(port, &[transport, "banana.sample-deployment.boshy"]),
            "NOERROR",
        );
        let outside = dig(port, &[transport, "example.com"]);
        assert_eq!(
            outside.status.as_deref(),
            Some("REFUSED"),
            "{}",
            outside.raw
        );
        assert!(outside.answers.is_empty());
    }

    // EDNS: an OPT comes back exactly when the query had one.
    assert!(dig(port, &[HOST]).has_opt);
    let plain = dig(port, &["+noedns", HOST]);
    assert!(!plain.has_opt, "{}", plain.raw);
    assert_eq!(plain.answers.len(), 1);

    let any = dig(port, &[HOST, "ANY"]);
    assert_eq!(any.status.as_deref(), Some("NOTIMP"), "{}", any.raw);
    let soa = dig(port, &["boshy", "SOA"]);
    assert_eq!(soa.answers.len(), 1, "{}", soa.raw);
    assert_eq!(soa.answers[0][3], "SOA");
    assert_eq!(
        soa.answers[0][6], "12",
        "serial is the table version: {}",
        soa.raw
    );

    // Garbage does not take the server down.
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    for packet in [
        &b"\x00"[..],
        &[0xff; 40],
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc",
    ] {
        socket.send_to(packet, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    assert_answers_from_table(port);

    let handlers: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("handlers.json")).unwrap())
            .unwrap();
    assert_eq!(
        handlers,
        serde_json::json!([{
            "domain": "boshy.",
            "cache": {"enabled": false},
            "source": {"type": "dns", "recursors": [format!("127.0.0.1:{port}")]},
        }])
    );

    // Killed hard and restarted with the control plane still unreachable: the disk answers.
    agent.kill();
    let _restarted = Agent::start(dir.path(), port);
    assert_answers_from_table(port);
}

/// A pilot's name-table stream (the real `names::serve`) for a catalog holding `names`.
fn catalog(version: u64, names: &[(&str, [u8; 4])]) -> Arc<Catalog> {
    let services = names.iter().map(|(hostname, vip)| {
        let labels: Vec<&str> = hostname.split('.').collect();
        testing::service(labels[2], labels[1], labels[0]).vip(*vip)
    });
    Arc::new(testing::catalog(version, services))
}

fn answer_of(port: u16, name: &str) -> Option<String> {
    let reply = dig(port, &[name]);
    reply.answers.first().map(|fields| fields[4].clone())
}

/// Polls until `name` resolves to `vip` (the agent applies pushed tables asynchronously).
fn wait_for_answer(agent: &Agent, name: &str, vip: &str) {
    for _ in 0..100 {
        if answer_of(agent.port, name).as_deref() == Some(vip) {
            return;
        }
        sleep(Duration::from_millis(100));
    }
    panic!("{name} never resolved to {vip}:\n{}", agent.log_text());
}

#[test]
fn follows_the_pilot_saves_each_table_and_answers_from_disk_once_the_pilot_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (catalogs, catalog_rx) = tokio::sync::watch::channel(catalog(
        13,
        &[
            (HOST, [169, 254, 255, 7]),
            ("new.apricot.other.boshy", [169, 254, 255, 9]),
        ],
    ));
    let pilot = runtime
        .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .unwrap();
    let pilot_url = format!("http://{}", pilot.local_addr().unwrap());
    runtime.spawn(boshy::names::serve(
        pilot,
        catalog_rx,
        Default::default(),
        None,
    ));
    write_config_with_pilot(dir.path(), port, &pilot_url);
    write_table(dir.path());

    let agent = Agent::start(dir.path(), port);
    wait_for_answer(&agent, "new.apricot.other.boshy", "169.254.255.9");
    assert_negative_answer(&dig(port, &["db.apricot.other.boshy"]), "NXDOMAIN");

    // A VIP change is pushed and answered, and the table on disk follows.
    catalogs
        .send(catalog(14, &[(HOST, [169, 254, 255, 77])]))
        .unwrap();
    wait_for_answer(&agent, HOST, "169.254.255.77");
    // The agent answers from the new table first, then saves it (off the answering path).
    let read_saved = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("table.json")).unwrap())
            .unwrap()
    };
    let mut saved = read_saved();
    for _ in 0..100 {
        if saved["version"] == 14 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        saved = read_saved();
    }
    assert_eq!(saved["version"], 14, "{saved}");
    assert_eq!(saved["names"][HOST], "169.254.255.77", "{saved}");

    // The control plane goes away, the agent restarts: it answers at once from disk.
    agent.kill();
    drop(runtime);
    let restarted = Agent::start(dir.path(), port);
    assert_eq!(
        answer_of(port, HOST).as_deref(),
        Some("169.254.255.77"),
        "{}",
        restarted.log_text()
    );
    assert_negative_answer(&dig(port, &["new.apricot.other.boshy"]), "NXDOMAIN");
}

#[test]
fn a_corrupt_table_is_reported_and_the_agent_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port);
    std::fs::write(
        dir.path().join("table.json"),
        b"{\"version\": 3, \"names\": {",
    )
    .unwrap();
    let agent = Agent::start(dir.path(), port);
    assert_negative_answer(&dig(port, &[HOST]), "NXDOMAIN");
    let log = agent.log_text();
    assert!(log.contains("table.json") && log.contains("WARN"), "{log}");
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_key_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), 8053);
    let bad_path = dir.path().join("bad.yml");
    std::fs::write(
        &bad_path,
        "tld: \"no spaces\"\npilots: [\"http://a\"]\ntable_path: /t\n",
    )
    .unwrap();
    for command in AGENT_COMMANDS {
        let good = agent_command(command)
            .args(["--check-config", "--config"])
            .arg(dir.path().join("agent.yml"))
            .output()
            .unwrap();
        assert!(good.status.success(), "{command:?}: {good:?}");

        let bad = agent_command(command)
            .args(["--check-config", "--config"])
            .arg(&bad_path)
            .output()
            .unwrap();
        assert!(!bad.status.success(), "{command:?}");
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(
            stderr.contains("bad.yml") && stderr.contains("`tld`"),
            "{command:?}: {stderr}"
        );
    }
}
