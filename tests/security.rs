//! Locked down by default (mutual TLS aside: tests/mtls.rs), checked on the real binaries:
//!
//! - the director's client secret is never in a process's argv (`ps`), in the pilot's log at
//!   trace level, in `/v1/registration`, `/v1/rules` or `/metrics`, nor in the errors a wrong
//!   director URL, an untrusted CA or a rejected client (401) produce;
//! - the agent answers only names under its tld (everything else is REFUSED, over UDP and
//!   TCP), listens on loopback by default and refuses a non-loopback `listen` unless
//!   `allow_non_loopback_listen` says so;
//! - the control plane's HTTP API answers 405 to every write method on every path;
//! - `boshy pilot` and `boshy virtual-ip-agent` run as `nobody` with no capability, on their default
//!   ports, and work (the pilot reads the director, the agent answers from its table).
//!
//! Needs root (namespaces, setpriv), iproute2 and curl-free loopback HTTP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use base64::Engine;
use boshy_lab::binaries::DIRECTOR_SIM;
use boshy_test_support::dns_agent::{
    free_port, query, tcp_exchange, udp_exchange, udp_socket, Agent,
};
use boshy_test_support::netns::Netns;
use boshy_test_support::process::{self, check, KilledOnDrop};
use boshy_test_support::{dns_agent as agent, workspace_binary};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const BOSHY: &str = env!("CARGO_BIN_EXE_boshy");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/director");

/// A process killed when the value is dropped, with its stderr in a file.
struct Process {
    child: KilledOnDrop,
    log: PathBuf,
}

impl Process {
    fn spawn(mut command: Command, log: PathBuf) -> Process {
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {command:?}: {e}"));
        Process {
            child: KilledOnDrop(child),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to 30 s) until the log contains `needle`; fails with the log otherwise.
    fn wait_for_log(&mut self, needle: &str) -> String {
        for _ in 0..300 {
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("exited with {status} before logging {needle:?}:\n{text}");
            }
            sleep(Duration::from_millis(100));
        }
        panic!("never logged {needle:?}:\n{}", self.log_text());
    }
}

/// A tiny HTTP/1.1 client (no dependency on curl): the status code and the body.
fn http(address: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

fn wait_for_http_ok(address: SocketAddr, path: &str, process: &mut Process) {
    for _ in 0..300 {
        if let Some(status) = process.child.try_wait().unwrap() {
            panic!("exited with {status}:\n{}", process.log_text());
        }
        if TcpStream::connect(address).is_ok() && http(address, "GET", path).0 == 200 {
            return;
        }
        sleep(Duration::from_millis(100));
    }
    panic!("{path} never answered 200:\n{}", process.log_text());
}

/// Every form in which the secret could leak: as is, URL-encoded, and in a Basic header.
fn secret_forms(client: &str, secret: &str) -> Vec<String> {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{client}:{secret}"));
    vec![secret.to_string(), basic]
}

fn assert_no_secret(what: &str, text: &str, forms: &[String]) {
    for form in forms {
        assert!(
            !text.contains(form.as_str()),
            "the director secret appears in {what}:\n{text}"
        );
    }
}

/// A director simulator on loopback ports, holding `secret` for client `pilot`.
struct Director {
    process: Process,
    url: String,
    control: SocketAddr,
    ca: PathBuf,
}

fn start_director(dir: &Path, secret: &str) -> Director {
    let secret_file = dir.join("director-secret");
    std::fs::write(&secret_file, secret).unwrap();
    let (api, uaa, control) = (free_port(), free_port(), free_port());
    let mut command = Command::new(workspace_binary(DIRECTOR_SIM));
    command
        .args(["--fixtures", FIXTURES, "--task-delay-ms", "10"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{api}"))
        .arg("--uaa-listen")
        .arg(format!("127.0.0.1:{uaa}"))
        .arg("--control-listen")
        .arg(format!("127.0.0.1:{control}"))
        .arg("--state-dir")
        .arg(dir)
        .arg("--client-secret-file")
        .arg(&secret_file);
    let mut process = Process::spawn(command, dir.join("director.log"));
    process.wait_for_log("director simulator up");
    Director {
        process,
        url: format!("https://127.0.0.1:{api}"),
        control: SocketAddr::from(([127, 0, 0, 1], control)),
        ca: dir.join("ca.pem"),
    }
}

/// Writes a pilot config; `listen` ports on loopback, VIPs in a file, trace-level logs.
fn pilot_config(dir: &Path, director_url: &str, ca: &Path, secret: &str) -> (PathBuf, SocketAddr) {
    let secret_file = dir.join("pilot-secret");
    std::fs::write(&secret_file, secret).unwrap();
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "director:\n  url: {director_url}\n  client: pilot\n  client_secret_file: {}\n  \
         ca_cert_path: {}\n  poll_interval_seconds: 1\n  request_timeout_seconds: 3\n\
         vip_store: file\nvip_state_path: {}\ninsecure_plaintext: true\n\
         api:\n  insecure_open: true\n\
         listen:\n  api: {api}\n  xds: 127.0.0.1:{}\n  names: 127.0.0.1:{}\n",
        secret_file.display(),
        ca.display(),
        dir.join("vips.json").display(),
        free_port(),
        free_port(),
    );
    let path = dir.join("pilot.yml");
    std::fs::write(&path, config).unwrap();
    (path, api)
}

fn start_pilot(dir: &Path, config: &Path, name: &str) -> Process {
    let mut command = Command::new(BOSHY);
    command
        .args(["pilot", "--config"])
        .arg(config)
        .env("RUST_LOG", "trace")
        .env_remove(boshy::config::CLIENT_SECRET_ENV);
    Process::spawn(command, dir.join(format!("{name}.log")))
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

fn random_secret() -> String {
    format!("s3cret-{:016x}", rand::random::<u64>())
}

#[test]
fn the_director_secret_never_leaks_into_argv_logs_or_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let secret = random_secret();
    let forms = secret_forms("pilot", &secret);
    let director = start_director(dir.path(), &secret);
    let (config, api) = pilot_config(dir.path(), &director.url, &director.ca, &secret);
    let mut pilot = start_pilot(dir.path(), &config, "pilot");
    wait_for_http_ok(api, "/healthz", &mut pilot);

    // A token rejected mid-flight: the pilot fetches a new one with the secret again.
    let fault = r#"{"mode":"reject_tokens"}"#;
    let mut stream = TcpStream::connect(director.control).unwrap();
    write!(
        stream,
        "PUT /_sim/fault HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{fault}",
        fault.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 2"), "{answer}");
    pilot.wait_for_log("kind=unauthorized");

    for process in [&pilot, &director.process] {
        assert_no_secret("argv", &cmdline(process.pid()), &forms);
    }
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    assert_no_secret("ps", &String::from_utf8_lossy(&ps.stdout), &forms);
    for path in ["/v1/registration", "/v1/rules", "/metrics", "/healthz"] {
        let (status, body) = http(api, "GET", path);
        assert_eq!(status, 200, "{path}");
        assert_no_secret(path, &body, &forms);
    }
    let log = pilot.log_text();
    assert!(log.contains("TRACE"), "the log is at trace level");
    assert_no_secret("the pilot's trace log", &log, &forms);
}

#[test]
fn errors_about_the_director_never_quote_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = random_secret();
    let forms = secret_forms("pilot", &secret);
    // The director knows another secret: UAA answers 401 to ours.
    let director = start_director(dir.path(), "another-secret");

    let cases: [(&str, String, PathBuf, &str); 3] = [
        (
            "wrong-url",
            format!("https://127.0.0.1:{}", free_port()),
            director.ca.clone(),
            "kind=connect",
        ),
        (
            "untrusted-ca",
            director.url.clone(),
            {
                let other = rcgen::generate_simple_self_signed(vec!["other-ca".into()]).unwrap();
                let path = dir.path().join("other-ca.pem");
                std::fs::write(&path, other.cert.pem()).unwrap();
                path
            },
            "kind=tls",
        ),
        (
            "rejected-client",
            director.url.clone(),
            director.ca.clone(),
            "kind=unauthorized",
        ),
    ];
    for (name, url, ca, expected) in cases {
        let case_dir = dir.path().join(name);
        std::fs::create_dir(&case_dir).unwrap();
        let (config, _) = pilot_config(&case_dir, &url, &ca, &secret);
        let mut pilot = start_pilot(&case_dir, &config, "pilot");
        let log = pilot.wait_for_log(expected);
        assert_no_secret(&format!("the {name} error"), &log, &forms);
    }

    // A config error: the secret inline and in a file at once.
    let case_dir = dir.path().join("config-error");
    std::fs::create_dir(&case_dir).unwrap();
    let (config, _) = pilot_config(&case_dir, &director.url, &director.ca, &secret);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen(
            "  client: pilot\n",
            &format!("  client: pilot\n  client_secret: {secret}\n"),
            1,
        ),
    )
    .unwrap();
    let output = Command::new(BOSHY)
        .args(["pilot", "--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("client_secret"), "{stderr}");
    assert_no_secret("a config error", &stderr, &forms);
}

#[test]
fn the_http_api_answers_405_to_every_write_method_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let secret = random_secret();
    let director = start_director(dir.path(), &secret);
    let (config, api) = pilot_config(dir.path(), &director.url, &director.ca, &secret);
    let mut pilot = start_pilot(dir.path(), &config, "pilot");
    wait_for_http_ok(api, "/healthz", &mut pilot);
    let paths = [
        "/",
        "/v1/registration",
        "/v1/rules",
        "/healthz",
        "/metrics",
        "/v1/names/watch",
        "/v1/registration/x",
        "/does/not/exist",
    ];
    for path in paths {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let (status, _) = http(api, method, path);
            assert_eq!(status, 405, "{method} {path}");
        }
    }
    assert_eq!(http(api, "GET", "/v1/registration").0, 200);
}

#[test]
fn the_agent_refuses_every_name_outside_its_tld() {
    let agent = Agent::start();
    let socket = udp_socket(Duration::from_secs(2));
    for (id, name) in [
        "example.com.",
        "boshy.example.com.",
        "notboshy.",
        ".",
        "localhost.",
        "169.254.255.7.in-addr.arpa.",
    ]
    .into_iter()
    .enumerate()
    {
        for qtype in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::NS,
            RecordType::PTR,
        ] {
            let packet = query(name, qtype, 0x3000 + id as u16);
            for response in [
                udp_exchange(&socket, agent.listen, &packet).expect("an answer"),
                tcp_exchange(agent.listen, &packet),
            ] {
                assert_eq!(
                    response.metadata.response_code,
                    ResponseCode::Refused,
                    "{name} {qtype}"
                );
                assert!(response.answers.is_empty() && response.authorities.is_empty());
                assert!(
                    !response.metadata.recursion_available,
                    "{name}: never a resolver"
                );
            }
        }
    }
}

#[test]
fn the_agent_listen_must_be_loopback_unless_explicitly_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yml");
    let check_config = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "pilots: [\"http://127.0.0.1:9\"]\ninsecure_plaintext: true\ntable_path: {}\n{extra}",
                dir.path().join("table.json").display()
            ),
        )
        .unwrap();
        Command::new(BOSHY)
            .args(["virtual-ip-agent", "--check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    check(&check_config(""), "the default listen");
    let exposed = check_config("listen: 0.0.0.0:8053\n");
    assert!(!exposed.status.success());
    let stderr = String::from_utf8_lossy(&exposed.stderr);
    assert!(
        stderr.contains("agent.yml") && stderr.contains("`listen`"),
        "{stderr}"
    );
    let allowed = check_config("listen: 0.0.0.0:8053\nallow_non_loopback_listen: true\n");
    check(&allowed, "an explicitly allowed 0.0.0.0");
    let stderr = String::from_utf8_lossy(&allowed.stderr);
    assert!(
        stderr.contains("WARN") && stderr.contains("0.0.0.0:8053"),
        "{stderr}"
    );
}

/// `/proc/<pid>/status` lines `Uid:` and `CapEff:`.
fn identity(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    (field("Uid:"), field("CapEff:"))
}

/// Runs `args` of boshy inside `netns` as nobody:nogroup with no capability at all.
fn unprivileged(netns: &Netns, args: &[&str]) -> Command {
    let mut command = netns.command("setpriv");
    command.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
        BOSHY,
    ]);
    command.args(args);
    command
}

#[test]
fn pilot_and_agent_run_as_nobody_without_capabilities_on_their_default_ports() {
    let netns = Netns::new("boshy-priv");
    let dir = tempfile::tempdir().unwrap();
    // nobody reads the configs and writes the state files in here.
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(dir.path())
        .output()
        .unwrap();
    check(&chown, "chown the test dir to nobody");
    let secret = random_secret();
    std::fs::write(dir.path().join("director-secret"), &secret).unwrap();

    // The director simulator (a stand-in, run as root) on its default ports in the namespace.
    let director_sim = workspace_binary(DIRECTOR_SIM);
    let mut director = netns.command(director_sim.to_str().expect("a UTF-8 path"));
    director
        .args(["--fixtures", FIXTURES, "--task-delay-ms", "10"])
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--client-secret-file")
        .arg(dir.path().join("director-secret"));
    let mut director = Process::spawn(director, dir.path().join("director.log"));
    director.wait_for_log("director simulator up");

    std::fs::write(dir.path().join("pilot-secret"), &secret).unwrap();
    let pilot_config = format!(
        "director:\n  url: https://127.0.0.1:25555\n  client: pilot\n  client_secret_file: {}\n  \
         ca_cert_path: {}\n  poll_interval_seconds: 1\nvip_store: file\nvip_state_path: {}\n\
         insecure_plaintext: true\napi:\n  insecure_open: true\n",
        dir.path().join("pilot-secret").display(),
        dir.path().join("ca.pem").display(),
        dir.path().join("vips.json").display(),
    );
    std::fs::write(dir.path().join("pilot.yml"), pilot_config).unwrap();
    let agent_config = format!(
        "pilots: [\"http://127.0.0.1:15011\"]\ninsecure_plaintext: true\ntable_path: {}\n",
        dir.path().join("table.json").display()
    );
    std::fs::write(dir.path().join("agent.yml"), agent_config).unwrap();
    for file in ["pilot-secret", "pilot.yml", "agent.yml"] {
        let path = dir.path().join(file);
        check(
            &process::run("chown", &["65534:65534", path.to_str().unwrap()]),
            "chown",
        );
    }

    let pilot_config = dir.path().join("pilot.yml");
    let mut pilot = Process::spawn(
        unprivileged(
            &netns,
            &["pilot", "--config", pilot_config.to_str().unwrap()],
        ),
        dir.path().join("pilot.log"),
    );
    let agent_config = dir.path().join("agent.yml");
    let mut agent = Process::spawn(
        unprivileged(
            &netns,
            &[
                "virtual-ip-agent",
                "--config",
                agent_config.to_str().unwrap(),
            ],
        ),
        dir.path().join("agent.log"),
    );

    // The pilot read the director and serves its API on the default 0.0.0.0:8080.
    let api = SocketAddr::from(([127, 0, 0, 1], 8080));
    let registration = netns.within(|| {
        wait_for_http_ok(api, "/healthz", &mut pilot);
        http(api, "GET", "/v1/registration").1
    });
    assert!(registration.contains("example-httpbin"), "{registration}");

    // The agent followed the pilot's table and answers on the default 127.0.0.1:8053.
    let dns = SocketAddr::from(([127, 0, 0, 1], 8053));
    let name = "example-httpbin.banana.sample-deployment.boshy";
    let answered = netns.within(|| {
        let socket = udp_socket(Duration::from_millis(200));
        (0..150).any(|_| {
            agent.assert_running_or_panic();
            let answer = udp_exchange(&socket, dns, &query(name, RecordType::A, 9));
            let found = answer.is_some_and(|a| !agent::a_records(&a).is_empty());
            if !found {
                sleep(Duration::from_millis(100));
            }
            found
        })
    });
    assert!(
        answered,
        "the agent never answered {name}:\n{}",
        agent.log_text()
    );
    let listening = netns.exec("ss", &["-lnu"]);
    let sockets = String::from_utf8_lossy(&listening.stdout);
    assert!(sockets.contains("127.0.0.1:8053"), "{sockets}");
    assert!(!sockets.contains("0.0.0.0:8053"), "{sockets}");

    for (what, process) in [("pilot", &pilot), ("virtual-ip-agent", &agent)] {
        let (uid, caps) = identity(process.pid());
        assert!(
            uid.split_whitespace().all(|id| id == "65534"),
            "{what}: Uid {uid}"
        );
        assert_eq!(caps, "0000000000000000", "{what}: effective capabilities");
        assert!(
            cmdline(process.pid()).contains(BOSHY),
            "{what} is the boshy process itself"
        );
    }
}

impl Process {
    fn assert_running_or_panic(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("exited with {status}:\n{}", self.log_text());
        }
    }
}
