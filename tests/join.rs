//! `boshy workload configure`, `boshy join` and `boshy leave`, the built binary, against a
//! stub of the pilot's workload API over HTTPS (issue 13's contract: the token request, the
//! join with a bearer token, the leave with the VM's certificate), in a fresh network namespace
//! (real iptables) with `--root` a temporary directory and `--service-manager none`. Needs root,
//! iproute2, iptables, Envoy and `systemd-analyze` (scripts/lib/prereqs.sh); a missing one
//! fails the test naming it.
//!
//! What is checked: after join, the files, units, DNAT rules and resolver are as
//! docs/workloads.md says (the agent's config read by the agent, Envoy's bootstrap validated by
//! a real Envoy: env `BOSHY_ENVOY`, else `envoy` on PATH), and the inbound capture unit's
//! command captures the ports the agent writes; after leave, the nat table and the whole root
//! tree (bytes, modes, symlinks) are exactly as before join; join twice = join once; a refused
//! join and a join that fails midway leave nothing behind.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use boshy::config::ServerTls;
use boshy_lab::pki::{Ca, PILOT_SERVER_NAME};
use boshy_test_support::netns::Netns;
use boshy_test_support::process::{check, KilledOnDrop};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

const GROUP: &str = "legacy/rabbitmq";
const JOIN_TOKEN: &str = "boshy-join.3f2a9c1e5b7d4a60.c2VjcmV0LW9mLXRoZS10ZXN0";
const UAA_TOKEN: &str = "uaa-admin-token-of-the-test";
const REGISTRATION: &str = "6c1f3a52-1d0e-4a8b-9d7e-2f1c0b9a8e77";
const ORIGINAL_RESOLV_CONF: &str =
    "# written by the cloud\nsearch corp.example\nnameserver 10.0.0.2\noptions edns0\n";

/// What the stub pilot was asked, in order.
type Seen = Arc<Mutex<Vec<String>>>;

/// The mesh CA, the pilot's certificate, and a stub of the pilot's workload API listening
/// inside the namespace.
struct Pilot {
    dir: tempfile::TempDir,
    url: String,
    seen: Seen,
    _runtime: tokio::runtime::Runtime,
}

impl Pilot {
    /// `refuse`: every join is answered 401 with a reason.
    fn start(netns: &Netns, refuse: bool) -> Pilot {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("mesh CA of the join test").unwrap();
        let server = ca.server(PILOT_SERVER_NAME).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(dir.path().join("server.key"), &server.key_pem).unwrap();
        let tls = boshy::tls::api_server_config(&ServerTls {
            ca_cert_path: dir.path().join("ca.pem"),
            cert_path: dir.path().join("server.pem"),
            key_path: dir.path().join("server.key"),
        })
        .unwrap();
        // A socket made on a thread inside the namespace belongs to it.
        let listener = netns.within(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        listener.set_nonblocking(true).unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let seen = Seen::default();
        let signer = Arc::new((ca.cert_pem(), ca.key_pem()));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let stub_seen = seen.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, peer) = listener.accept().await.unwrap();
                let (acceptor, seen, signer) =
                    (acceptor.clone(), stub_seen.clone(), signer.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client_certificate = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|certs| !certs.is_empty());
                    let service = hyper::service::service_fn(move |request| {
                        let (seen, signer) = (seen.clone(), signer.clone());
                        async move {
                            let answer =
                                answer(request, peer, client_certificate, refuse, &seen, &signer)
                                    .await;
                            Ok::<_, Infallible>(answer)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Pilot {
            dir,
            url,
            seen,
            _runtime: runtime,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn settings() -> Value {
    json!({"tld": "boshy", "virtual_ip_cidr": "169.254.255.0/24",
           "server_name": PILOT_SERVER_NAME, "trust_domain": "boshy.example",
           "ports": {"xds": 15010, "names": 15011, "api": 8080},
           "heartbeat_seconds": 10, "ttl_seconds": 30})
}

/// The stub's answer to one request: the contract's token, join and leave.
async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    client_certificate: bool,
    refuse: bool,
    seen: &Seen,
    (ca_pem, ca_key): &(String, String),
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let bearer = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let route = format!("{} {}", parts.method, parts.uri.path());
    let respond = |status: u16, body: Value| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match route.as_str() {
        "POST /v1/workloads/tokens" => {
            seen.lock().unwrap().push(format!("tokens {}", asked));
            if bearer.to_ascii_lowercase() != format!("bearer {UAA_TOKEN}") {
                return respond(401, json!({"error": "no UAA token"}));
            }
            respond(
                201,
                json!({"id": "3f2a9c1e5b7d4a60", "group": asked["group"], "created_at": 1,
                       "expires_at": 4_000_000_000u64, "token": JOIN_TOKEN,
                       "settings": settings()}),
            )
        }
        "POST /v1/workloads/join" => {
            seen.lock().unwrap().push(format!(
                "join from {} with labels {}",
                peer.ip(),
                asked["labels"]
            ));
            if refuse {
                return respond(
                    401,
                    json!({"error": "join token 3f2a9c1e5b7d4a60 is revoked"}),
                );
            }
            if bearer != format!("Bearer {JOIN_TOKEN}") || asked["group"] != GROUP {
                return respond(401, json!({"error": "bad join token"}));
            }
            let certificate = sign(asked["csr"].as_str().unwrap(), ca_pem, ca_key);
            respond(
                200,
                json!({"id": REGISTRATION, "deployment": "legacy", "instance_group": "rabbitmq",
                       "instance": format!("rabbitmq/{REGISTRATION}"),
                       "address": peer.ip().to_string(), "certificate": certificate,
                       "ca": ca_pem, "settings": settings()}),
            )
        }
        "POST /v1/workloads/leave" => {
            seen.lock()
                .unwrap()
                .push(format!("leave with a certificate: {client_certificate}"));
            if client_certificate {
                respond(200, json!({}))
            } else {
                respond(401, json!({"error": "no client certificate"}))
            }
        }
        _ => respond(404, json!({"error": route})),
    }
}

/// Signs the VM's CSR as the pilot does: its public key, the pilot's SAN, clientAuth.
fn sign(csr: &str, ca_pem: &str, ca_key: &str) -> String {
    let key = rcgen::KeyPair::from_pem(ca_key).unwrap();
    let issuer = rcgen::CertificateParams::from_ca_cert_pem(ca_pem)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut request = rcgen::CertificateSigningRequestParams::from_pem(csr).unwrap();
    request.params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("urn:boshy:workload:legacy:rabbitmq:{REGISTRATION}")
            .try_into()
            .unwrap(),
    )];
    request.params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    request.signed_by(&issuer, &key).unwrap().pem()
}

/// A VM: its namespace, its root tree, and the join files written by `boshy workload
/// configure` against the stub.
struct Vm {
    netns: Netns,
    work: tempfile::TempDir,
    /// One VM at a time: each copies the boshy binary twice (join files, root), hundreds of MB
    /// in a debug build.
    _serial: std::sync::MutexGuard<'static, ()>,
}

static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

impl Vm {
    fn new() -> Vm {
        for tool in ["iptables-save", "iptables-restore"] {
            let found = std::process::Command::new(tool).arg("--version").output();
            assert!(
                found.is_ok_and(|o| o.status.success()),
                "`{tool}` cannot run: this test needs iptables (apt-get install iptables), as root"
            );
        }
        let serial = ONE_VM_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let vm = Vm {
            netns: Netns::new("boshy-join"),
            work: tempfile::tempdir().unwrap(),
            _serial: serial,
        };
        std::fs::create_dir_all(vm.root().join("etc")).unwrap();
        std::fs::create_dir_all(vm.root().join("var/lib")).unwrap();
        std::fs::write(vm.root().join("etc/hostname"), "vm-1\n").unwrap();
        vm
    }

    fn root(&self) -> PathBuf {
        self.work.path().join("root")
    }

    fn files(&self) -> PathBuf {
        self.work.path().join("join-files")
    }

    fn boshy(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.netns.command(env!("CARGO_BIN_EXE_boshy"));
        command.args(args).envs(env.iter().copied());
        command.output().unwrap()
    }

    /// `boshy workload configure` against the stub, with a stand-in Envoy binary.
    fn configure(&self, pilot: &Pilot) {
        self.configure_with(&[&pilot.url], pilot);
    }

    /// `configure` with these pilot URLs, in order (the stub's among them).
    fn configure_with(&self, urls: &[&str], pilot: &Pilot) {
        let envoy = self.work.path().join("envoy");
        std::fs::write(&envoy, "#!/bin/sh\nexit 0\n").unwrap();
        let mut args = vec!["workload", "configure", "--group", GROUP];
        for url in urls {
            args.extend(["--pilot", url]);
        }
        let out = self.boshy(
            &[
                &args[..],
                &[
                    "--ca",
                    pilot.ca().to_str().unwrap(),
                    "--ttl",
                    "2h",
                    "--envoy",
                    envoy.to_str().unwrap(),
                    "--out",
                    self.files().to_str().unwrap(),
                ],
            ]
            .concat(),
            &[("BOSH_PILOT_TOKEN", UAA_TOKEN)],
        );
        check(&out, "boshy workload configure");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !printed.contains("c2VjcmV0"),
            "the token was printed: {printed}"
        );
        let mode = std::fs::metadata(self.files().join("join.yml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(std::fs::read_to_string(self.files().join("join.yml"))
            .unwrap()
            .contains(JOIN_TOKEN));
        assert_eq!(
            std::fs::read(self.files().join("bin/boshy")).unwrap(),
            std::fs::read(env!("CARGO_BIN_EXE_boshy")).unwrap()
        );
    }

    fn join(&self) -> Output {
        self.boshy(
            &[
                "join",
                "--label",
                "rack=r7",
                "--files",
                self.files().to_str().unwrap(),
                "--root",
                self.root().to_str().unwrap(),
                "--service-manager",
                "none",
            ],
            &[],
        )
    }

    fn leave(&self) -> Output {
        self.boshy(
            &[
                "leave",
                "--root",
                self.root().to_str().unwrap(),
                "--service-manager",
                "none",
            ],
            &[],
        )
    }

    fn nat(&self) -> String {
        let output = self.netns.exec("iptables-save", &["-t", "nat"]);
        check(&output, "iptables-save -t nat");
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| match (line.starts_with(':'), line.rfind('[')) {
                (true, Some(at)) => format!("{}[0:0]", &line[..at]),
                _ => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every entry under the root: its kind, mode and bytes (or a symlink's target).
    fn tree(&self) -> BTreeMap<String, String> {
        let mut tree = BTreeMap::new();
        walk(&self.root(), &self.root(), &mut tree);
        tree
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.root().join(path.trim_start_matches('/')))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Starts a unit's `ExecStart=` line in the VM's namespace, as the lab does (join writes
    /// plain commands: whitespace separates the words).
    fn start_unit(&self, unit: &str) -> KilledOnDrop {
        let text = self.read(&format!("/etc/systemd/system/{unit}"));
        let line = text
            .lines()
            .find_map(|line| line.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{unit}: no ExecStart= line"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut command = self.netns.command(words[0]);
        command
            .args(&words[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        KilledOnDrop(command.spawn().unwrap_or_else(|e| panic!("{line}: {e}")))
    }

    /// Waits (polling, at most 30 s) until the nat table holds `line`.
    fn wait_for_nat(&self, line: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let nat = self.nat();
            if nat.lines().any(|l| l == line) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no `{line}` in\n{nat}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

fn walk(root: &Path, dir: &Path, tree: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.strip_prefix(root).unwrap().display().to_string();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            tree.insert(
                name,
                format!("link -> {}", std::fs::read_link(&path).unwrap().display()),
            );
        } else if meta.is_dir() {
            tree.insert(name, format!("dir {mode:o}"));
            walk(root, &path, tree);
        } else {
            // Every byte, but of the binaries join copies in (hundreds of MB in a debug build,
            // only ever in the tree between join and leave, never compared byte for byte).
            let entry = if meta.len() > 1 << 20 {
                format!("file {mode:o} of {} bytes", meta.len())
            } else {
                let bytes = std::fs::read(&path).unwrap();
                format!("file {mode:o} {}", String::from_utf8_lossy(&bytes))
            };
            tree.insert(name, entry);
        }
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn join_installs_everything_and_leave_puts_back_every_byte() {
    let vm = Vm::new();
    let pilot = Pilot::start(&vm.netns, false);
    std::fs::write(vm.root().join("etc/resolv.conf"), ORIGINAL_RESOLV_CONF).unwrap();
    vm.configure(&pilot);
    let (tree_before, nat_before) = (vm.tree(), vm.nat());

    let joined = vm.join();
    check(&joined, "boshy join");
    assert!(!text(&joined).contains("c2VjcmV0"), "{}", text(&joined));

    // The agent: the registration, the VM's certificate, the pilots' names port.
    let root = vm.root();
    let r = root.display();
    let agent: Value = serde_yaml::from_str(&vm.read("/etc/boshy/agent.yml")).unwrap();
    assert_eq!(agent["instance"]["deployment"], "legacy");
    assert_eq!(agent["instance"]["id"], REGISTRATION);
    assert_eq!(agent["instance"]["instance_group"], "rabbitmq");
    assert_eq!(agent["listen"], "127.0.1.53:53");
    assert_eq!(agent["pilots"], json!(["https://127.0.0.1:15011"]));
    assert_eq!(
        agent["tls"]["key_path"],
        format!("{r}/etc/boshy/tls/vm.key")
    );
    // As the virtual-ip-agent job with identity, inbound capture and metrics.
    assert_eq!(
        agent["identity"]["sds_socket"],
        format!("{r}/run/boshy/sds.sock")
    );
    assert_eq!(agent["inbound_capture_port"], 15006);
    assert_eq!(
        agent["telemetry"]["access_log_socket"],
        format!("{r}/run/boshy/als.sock")
    );
    assert_eq!(
        agent["table_path"],
        format!("{r}/var/lib/boshy/agent/names.json")
    );
    let check_config = vm.netns.exec(
        env!("CARGO_BIN_EXE_boshy"),
        &[
            "virtual-ip-agent",
            "--config",
            &format!("{r}/etc/boshy/agent.yml"),
            "--check-config",
        ],
    );
    check(
        &check_config,
        "virtual-ip-agent --check-config of the joined VM's config",
    );
    let key_mode = std::fs::metadata(root.join("etc/boshy/tls/vm.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(vm
        .read("/etc/boshy/tls/vm.pem")
        .contains("BEGIN CERTIFICATE"));
    // Envoy: the registration as a node, ADS to the xDS port.
    let envoy = vm.read("/etc/boshy/envoy.yaml");
    assert!(
        envoy.contains(&format!("sidecar~127.0.0.1~rabbitmq/{REGISTRATION}~legacy")),
        "{envoy}"
    );
    assert!(envoy.contains("port_value: 15010"), "{envoy}");
    let validate = std::process::Command::new(boshy_test_support::envoy::envoy_binary())
        .args([
            "--mode",
            "validate",
            "-c",
            &format!("{r}/etc/boshy/envoy.yaml"),
        ])
        .output()
        .expect("run envoy");
    check(
        &validate,
        "envoy --mode validate of the joined VM's bootstrap",
    );
    let bootstrap: Value = serde_yaml::from_str(&envoy).unwrap();
    let clusters: Vec<&str> = bootstrap["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        clusters,
        [
            "xds_cluster",
            "sds-grpc",
            "boshy-telemetry",
            "boshy-agent-metrics",
            "envoy-admin"
        ]
    );
    assert_eq!(
        bootstrap["static_resources"]["listeners"][0]["name"],
        "metrics"
    );
    assert_eq!(
        std::fs::read(root.join("usr/local/lib/boshy/bin/boshy")).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_boshy")).unwrap()
    );
    assert!(root.join("usr/local/lib/boshy/bin/envoy").is_file());
    // The units: plain absolute commands, the DNAT install first.
    let agent_unit = vm.read("/etc/systemd/system/boshy-agent.service");
    let capture = format!(
        "--vip-cidr 169.254.255.0/24 --inbound-ports-file {r}/var/lib/boshy/agent/inbound_ports.json \
         --inbound-redirect-port 15006"
    );
    assert!(agent_unit.contains(&format!(
        "ExecStartPre={r}/usr/local/lib/boshy/bin/boshy dnat install {capture}\n\
         ExecStart={r}/usr/local/lib/boshy/bin/boshy virtual-ip-agent --config {r}/etc/boshy/agent.yml\n"
    )), "{agent_unit}");
    let capture_unit = vm.read("/etc/systemd/system/boshy-capture.service");
    assert!(
        capture_unit.contains(&format!(
            "ExecStart={r}/usr/local/lib/boshy/bin/boshy dnat follow {capture}\n"
        )),
        "{capture_unit}"
    );
    let envoy_unit = vm.read("/etc/systemd/system/boshy-envoy.service");
    assert!(
        envoy_unit.contains(&format!(
            "ExecStart={r}/usr/local/lib/boshy/bin/envoy -c {r}/etc/boshy/envoy.yaml"
        )),
        "{envoy_unit}"
    );
    // systemd reads them as written (no systemd runs here: it checks, it cannot start them).
    let units: Vec<String> = ["boshy-agent", "boshy-envoy", "boshy-capture"]
        .iter()
        .map(|unit| format!("{r}/etc/systemd/system/{unit}.service"))
        .collect();
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect(
            "systemd-analyze cannot run: this test needs systemd's tools (scripts/lib/prereqs.sh)",
        );
    check(&verify, "systemd-analyze verify of the units join wrote");
    // The DNAT rules and the resolver.
    let nat = vm.nat();
    assert!(
        nat.contains("-A BOSHY_OUTPUT -p tcp -j REDIRECT --to-ports 15001"),
        "{nat}"
    );
    // The inbound capture, empty until the agent says which ports the group exposes.
    assert!(
        nat.contains("-A BOSHY_INBOUND -s 127.0.0.6/32 -j RETURN"),
        "{nat}"
    );
    assert!(!nat.contains("--to-ports 15006"), "{nat}");
    let resolv = vm.read("/etc/resolv.conf");
    let first = resolv
        .lines()
        .find(|l| l.starts_with("nameserver"))
        .unwrap();
    assert_eq!(first, "nameserver 127.0.1.53", "{resolv}");
    assert!(resolv.contains("nameserver 10.0.0.2\n"), "{resolv}");
    let state: Value = serde_json::from_str(&vm.read("/var/lib/boshy/join-state.json")).unwrap();
    assert_eq!(state["registration"]["id"], REGISTRATION);

    // Join twice = join once: the same files, rules and resolver.
    let tree_joined = vm.tree();
    check(&vm.join(), "boshy join again");
    let tree_again = vm.tree();
    // The certificate is a new generation (`..<stamp>/`) of the same names.
    let paths = |tree: &BTreeMap<String, String>| -> Vec<String> {
        tree.keys()
            .filter(|k| !k.starts_with("etc/boshy/tls/..") || k.as_str() == "etc/boshy/tls/..data")
            .cloned()
            .collect()
    };
    assert_eq!(paths(&tree_again), paths(&tree_joined));
    for same in [
        "etc/resolv.conf",
        "etc/boshy/agent.yml",
        "etc/systemd/system/boshy-agent.service",
    ] {
        assert_eq!(tree_again[same], tree_joined[same], "{same}");
    }
    assert_eq!(vm.nat(), nat);
    let state: Value = serde_json::from_str(&vm.read("/var/lib/boshy/join-state.json")).unwrap();
    let resolv_change = state["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "resolv-conf")
        .unwrap();
    use base64::Engine;
    let original = base64::engine::general_purpose::STANDARD
        .decode(resolv_change["original"]["bytes"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        original,
        ORIGINAL_RESOLV_CONF.as_bytes(),
        "the state keeps the resolver as it was before the first join"
    );

    // The capture unit, as the lab runs it: the ports the agent writes are captured.
    std::fs::write(
        root.join("var/lib/boshy/agent/inbound_ports.json"),
        r#"{"ports": [15672]}"#,
    )
    .unwrap();
    let capturing = vm.start_unit("boshy-capture.service");
    vm.wait_for_nat(
        "-A BOSHY_INBOUND -p tcp -m multiport --dports 15672 -j REDIRECT --to-ports 15006",
    );
    // Stopped (its rules stay, as on a BOSH VM), then leave removes them.
    drop(capturing);

    let left = vm.leave();
    check(&left, "boshy leave");
    assert_eq!(vm.nat(), nat_before, "the nat table is as before join");
    assert_eq!(vm.tree(), tree_before, "the root is as before join");
    assert_eq!(
        pilot.seen(),
        [
            format!("tokens {}", json!({"group": GROUP, "ttl_seconds": 7200})),
            r#"join from 127.0.0.1 with labels {"rack":"r7"}"#.to_string(),
            r#"join from 127.0.0.1 with labels {"rack":"r7"}"#.to_string(),
            "leave with a certificate: true".to_string(),
        ]
    );

    // Leaving again: the VM has not joined.
    let again = vm.leave();
    assert!(!again.status.success());
    assert!(text(&again).contains("has not joined"), "{}", text(&again));
    assert_eq!(vm.tree(), tree_before);
}

#[test]
fn a_vm_with_systemd_resolved_gets_a_drop_in_and_its_symlink_is_kept() {
    let vm = Vm::new();
    let pilot = Pilot::start(&vm.netns, false);
    std::os::unix::fs::symlink(
        "/run/systemd/resolve/stub-resolv.conf",
        vm.root().join("etc/resolv.conf"),
    )
    .unwrap();
    std::fs::create_dir_all(vm.root().join("etc/systemd")).unwrap();
    std::fs::write(vm.root().join("etc/systemd/resolved.conf"), "[Resolve]\n").unwrap();
    // A pilot that does not answer comes first: configure, join and leave go on to the next.
    vm.configure_with(&["https://127.0.0.1:1", &pilot.url], &pilot);
    let (tree_before, nat_before) = (vm.tree(), vm.nat());

    check(&vm.join(), "boshy join");
    let drop_in = vm.read("/etc/systemd/resolved.conf.d/boshy.conf");
    assert!(
        drop_in.contains("[Resolve]\nDNS=127.0.1.53\nDomains=~boshy\n"),
        "{drop_in}"
    );
    assert_eq!(
        std::fs::read_link(vm.root().join("etc/resolv.conf")).unwrap(),
        Path::new("/run/systemd/resolve/stub-resolv.conf")
    );
    let agent: Value = serde_yaml::from_str(&vm.read("/etc/boshy/agent.yml")).unwrap();
    assert_eq!(agent["pilots"].as_array().unwrap().len(), 2);

    check(&vm.leave(), "boshy leave");
    assert_eq!(vm.tree(), tree_before);
    assert_eq!(vm.nat(), nat_before);
    assert_eq!(
        pilot.seen().last().map(String::as_str),
        Some("leave with a certificate: true")
    );
}

#[test]
fn a_refused_join_leaves_nothing_behind_and_says_why() {
    let vm = Vm::new();
    let pilot = Pilot::start(&vm.netns, true);
    std::fs::write(vm.root().join("etc/resolv.conf"), ORIGINAL_RESOLV_CONF).unwrap();
    vm.configure(&pilot);
    let (tree_before, nat_before) = (vm.tree(), vm.nat());

    let refused = vm.join();
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("join token 3f2a9c1e5b7d4a60 is revoked"),
        "{}",
        text(&refused)
    );
    assert!(text(&refused).contains("401"), "{}", text(&refused));
    assert_eq!(vm.tree(), tree_before);
    assert_eq!(vm.nat(), nat_before);
}

#[test]
fn a_join_that_fails_midway_undoes_what_it_did_and_names_the_step() {
    let vm = Vm::new();
    let pilot = Pilot::start(&vm.netns, false);
    std::fs::write(vm.root().join("etc/resolv.conf"), ORIGINAL_RESOLV_CONF).unwrap();
    // The units' directory is a file: writing the units fails after the configs are written.
    std::fs::create_dir_all(vm.root().join("etc/systemd")).unwrap();
    std::fs::write(vm.root().join("etc/systemd/system"), "not a directory\n").unwrap();
    vm.configure(&pilot);
    let (tree_before, nat_before) = (vm.tree(), vm.nat());

    let failed = vm.join();
    assert!(!failed.status.success(), "{}", text(&failed));
    assert!(
        text(&failed).contains("step 2 (installing the files)"),
        "{}",
        text(&failed)
    );
    assert!(text(&failed).contains("undone"), "{}", text(&failed));
    assert_eq!(vm.tree(), tree_before);
    assert_eq!(vm.nat(), nat_before);
    // The pilot was told, so the registration does not wait for its grace period.
    assert_eq!(
        pilot.seen().last().map(String::as_str),
        Some("leave with a certificate: true")
    );
}

#[test]
fn leave_without_a_pilot_still_cleans_up_and_says_the_registration_expires() {
    let vm = Vm::new();
    let pilot = Pilot::start(&vm.netns, false);
    std::fs::write(vm.root().join("etc/resolv.conf"), ORIGINAL_RESOLV_CONF).unwrap();
    vm.configure(&pilot);
    let (tree_before, nat_before) = (vm.tree(), vm.nat());
    check(&vm.join(), "boshy join");
    drop(pilot);

    let left = vm.leave();
    check(&left, "boshy leave with no pilot");
    assert!(
        text(&left).contains("no pilot answered the leave"),
        "{}",
        text(&left)
    );
    assert!(text(&left).contains("grace period"), "{}", text(&left));
    assert_eq!(vm.tree(), tree_before);
    assert_eq!(vm.nat(), nat_before);
}

#[test]
fn a_bind_mounted_resolv_conf_is_edited_in_place_and_restored() {
    // `ip netns exec` and container runtimes bind-mount a resolv.conf of their own over
    // /etc/resolv.conf; nothing can be renamed over a mount point.
    let vm = Vm::new();
    let pilot = Pilot::start(&vm.netns, false);
    vm.configure(&pilot);
    let mounted = vm.work.path().join("netns-resolv.conf");
    std::fs::write(&mounted, ORIGINAL_RESOLV_CONF).unwrap();
    std::fs::write(vm.root().join("etc/resolv.conf"), "under the mount\n").unwrap();
    let tree_before = vm.tree();
    let (root, files, work) = (vm.root(), vm.files(), vm.work.path());
    let boshy = env!("CARGO_BIN_EXE_boshy");
    let script = format!(
        "set -e\nmount --bind {m} {r}/etc/resolv.conf\n\
         {boshy} join --files {f} --root {r} --service-manager none\n\
         cp {r}/etc/resolv.conf {w}/after-join\n\
         {boshy} leave --root {r} --service-manager none\n",
        m = mounted.display(),
        r = root.display(),
        f = files.display(),
        w = work.display(),
    );
    let output = vm.netns.exec(
        "unshare",
        &["--mount", "--propagation", "private", "sh", "-c", &script],
    );
    check(&output, "join and leave with a bind-mounted resolv.conf");
    let after_join = std::fs::read_to_string(work.join("after-join")).unwrap();
    let first = after_join
        .lines()
        .find(|l| l.starts_with("nameserver"))
        .unwrap();
    assert_eq!(first, "nameserver 127.0.1.53", "{after_join}");
    assert_eq!(
        std::fs::read_to_string(&mounted).unwrap(),
        ORIGINAL_RESOLV_CONF
    );
    assert_eq!(vm.tree(), tree_before);
}
