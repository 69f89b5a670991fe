//! Zero trust end to end, in a lab of its own (`boshy-z`, 10.250.0.0/24): every VM's Envoy
//! holds a workload certificate for its instance group's SPIFFE ID, signed by the pilot from a
//! CSR its agent made, served over SDS; calls between VMs are mutual TLS between the two
//! Envoys; the VMs' exposed ports are captured into their Envoy's inbound listener; Istio's
//! PeerAuthentication and AuthorizationPolicy, kept in the director, decide who gets in.
//! The lab's certificates live 72 s (`identity.certificate_ttl_hours` in the lab's bosh-istio
//! manifest), so they rotate every 36 s throughout.
//!
//! "Outside the mesh" is the director simulator's namespace: on the lab's network, no addon.
//!
//! Needs root (CI runs as root) and Envoy (`scripts/test` installs it).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use boshy_test_support::lab::LabCli;
use serde_json::Value;

const LAB: LabCli = LabCli {
    name: "boshy-z",
    subnet: "10.250.0.0/24",
};
const BANANA: &str = "example-httpbin.banana.sample-deployment.boshy";
/// apricot's example-httpbin port is TCP by its name (`some-port`).
const APRICOT_TCP: &str = "example-httpbin.apricot.sample-deployment.boshy";
const CLIENT_VM: &str = "apricot/3";
const THIRD_GROUP_VM: &str = "bookinfo/productpage/0";
const APRICOT_ID: &str = "spiffe://boshy/deployment/sample-deployment/instance_group/apricot";
const PILOT_VM: &str = "bosh-istio/bosh-pilot/0";
/// The lab's certificate lifetime, and a little more.
const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(75);
/// Upper bound for anything a test waits for; never a measured duration.
const PATIENCE: Duration = Duration::from_secs(90);

/// Tears the lab down even when an assertion fails half-way.
struct LabGuard;
impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = LAB.run(&["down"]);
    }
}

/// The status code and body of `curl` run on `vm` (`000` when no response came).
fn curl(vm: &str, args: &[&str]) -> (String, String) {
    let mut full = vec!["ssh", vm, "--", "curl", "-sS", "--max-time", "5"];
    full.extend_from_slice(&["-w", "\n%{http_code}"]);
    full.extend_from_slice(args);
    split_status(&LAB.run(&full).stdout)
}

/// The same from outside the mesh (the director simulator's namespace).
fn curl_outside(args: &[&str]) -> (String, String) {
    let output = Command::new("ip")
        .args(["netns", "exec", &format!("{}-director", LAB.name)])
        .args(["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl outside the mesh");
    split_status(&output.stdout)
}

fn split_status(stdout: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().to_string(), body.to_string())
}

/// Applies a rule config (`bosh update-config --type boshy-istio`).
fn apply_rules(name: &str, yaml: &str) {
    let file = tempfile::Builder::new()
        .suffix(".yml")
        .tempfile()
        .expect("a rule file");
    std::fs::write(file.path(), yaml).expect("write the rule file");
    LAB.ok(&[
        "rules",
        "apply",
        file.path().to_str().unwrap(),
        "--name",
        name,
    ]);
}

/// Waits until `check` holds, polling; panics naming `what` after [`PATIENCE`].
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("never happened: {what}");
}

/// The certificates of one kind (`cert_chain` or `ca_cert`) in the Envoy on `vm`'s admin
/// `/certs`, every context's.
fn envoy_certs(vm: &str, kind: &str) -> Vec<Value> {
    let certs = LAB.ok(&["ssh", vm, "--", "curl", "-sS", "127.0.0.1:8001/certs"]);
    let certs: Value = serde_json::from_str(&certs).expect("/certs is JSON");
    certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|entry| entry[kind].as_array().cloned().unwrap_or_default())
        .collect()
}

fn serial(cert: &Value) -> String {
    cert["serial_number"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The serial numbers of the workload certificates the Envoy on `vm` holds.
fn workload_serials(vm: &str) -> BTreeSet<String> {
    envoy_certs(vm, "cert_chain")
        .iter()
        .filter(|cert| {
            cert["subject_alt_names"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|san| {
                    san["uri"]
                        .as_str()
                        .is_some_and(|uri| uri.starts_with("spiffe://"))
                })
        })
        .map(serial)
        .collect()
}

/// What the virtual-ip-agent on `vm` logged so far.
fn agent_log(vm: &str) -> String {
    let namespace = LAB.vm(&format!("sample-deployment/{vm}"))["namespace"]
        .as_str()
        .expect("namespace")
        .to_string();
    let path = format!(
        "/tmp/boshy-lab/{}/vms/{namespace}/sys/log/virtual-ip-agent/virtual-ip-agent.log",
        LAB.name
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The serial numbers of the CAs the Envoy on `vm` trusts for workload certificates (the
/// inline `ROOTCA` from the agent, beside the mesh CA file of its xDS connection).
fn trusted_workload_cas(vm: &str) -> BTreeSet<String> {
    envoy_certs(vm, "ca_cert")
        .iter()
        .filter(|ca| ca["path"] == "<inline>")
        .map(serial)
        .collect()
}

/// The serial number of the lab's CA certificate `file` (in its mesh-tls directory), as
/// Envoy prints serials (lower-case hex).
fn lab_ca_serial(file: &str) -> String {
    let path = format!("/tmp/boshy-lab/{}/mesh-tls/{file}", LAB.name);
    let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
    let cert = pem.parse_x509().expect("a certificate");
    cert.raw_serial()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<String>()
        .trim_start_matches('0')
        .to_string()
}

/// The sum of the Envoy statistics on `vm` whose name contains every one of `parts`.
fn envoy_stat(vm: &str, parts: &[&str]) -> u64 {
    let stats = LAB.ok(&["ssh", vm, "--", "curl", "-sS", "127.0.0.1:8001/stats"]);
    stats
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(name, _)| parts.iter().all(|part| name.contains(part)))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

/// banana's VMs as the lab lists them.
fn bananas() -> Vec<Value> {
    LAB.state()["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .filter(|vm| vm["instance_group"] == "banana")
        .cloned()
        .collect()
}

fn banana_ips() -> Vec<String> {
    bananas()
        .iter()
        .map(|vm| vm["ip"].as_str().expect("ip").to_string())
        .collect()
}

/// banana's VMs by the names `lab ssh` takes (`banana/<index>`).
fn banana_vms() -> Vec<String> {
    bananas()
        .iter()
        .map(|vm| format!("banana/{}", vm["index"].as_u64().expect("an index")))
        .collect()
}

#[test]
fn zero_trust_end_to_end() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the end-to-end test needs root (network namespaces, iptables)"
    );
    let _ = LAB.run(&["down"]);
    let guard = LabGuard;
    LAB.ok(&["up"]);

    // apricot → banana is mutual TLS between the two Envoys: banana's workload is told who
    // called, as its Envoy verified it (the URI of a verified client certificate; anything a
    // caller sends in x-forwarded-client-cert is dropped), and prints it.
    let url = format!("http://{BANANA}:9002/get");
    // The lab is up once every serving VM's ports are captured and ready (docs/health.md):
    // the very first request succeeds.
    let (status, body) = curl(CLIENT_VM, &[&url]);
    assert_eq!(status, "200", "{body}");
    let answer: Value = serde_json::from_str(&body).expect("httpbin answers JSON");
    assert_eq!(answer["caller"], APRICOT_ID, "{answer}");

    // PERMISSIVE (the default): a caller outside the mesh reaching banana's address directly
    // is accepted, in plaintext, with no identity.
    let direct = format!("http://{}:9002/get", banana_ips()[0]);
    let (status, body) = curl_outside(&[&direct]);
    assert_eq!(
        status, "200",
        "PERMISSIVE accepts plaintext from outside: {body}"
    );
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert!(answer.get("caller").is_none(), "no identity: {answer}");

    // Certificates rotate under a steady load with no failed request.
    let before = workload_serials(CLIENT_VM);
    assert_eq!(before.len(), 1, "one workload certificate: {before:?}");
    let load = LAB.steady_load(CLIENT_VM, &url, 20);
    let mut seen = before.clone();
    let deadline = Instant::now() + PATIENCE;
    while seen.len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(2));
        seen.extend(workload_serials(CLIENT_VM));
    }
    let outcomes = load.stop();
    assert!(
        seen.len() >= 3,
        "two rotations within {PATIENCE:?}: {seen:?}"
    );
    let failed: Vec<&String> = outcomes.iter().filter(|o| !o.starts_with("200")).collect();
    assert!(outcomes.len() > 100, "the load ran: {}", outcomes.len());
    assert!(failed.is_empty(), "failed during rotations: {failed:?}");

    // STRICT mesh-wide: the outsider is refused, the mesh still works.
    apply_rules(
        "mtls-strict",
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
",
    );
    eventually("STRICT refusing plaintext from outside", || {
        curl_outside(&[&direct]).0 == "000"
    });
    for _ in 0..5 {
        assert_eq!(
            curl(CLIENT_VM, &[&url]).0,
            "200",
            "mesh clients still get in"
        );
    }

    // Only apricot may GET /get on banana: a POST is denied, a third instance group is denied.
    apply_rules(
        "banana-authz",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: banana-get-from-apricot
spec:
  selector:
    matchLabels:
      bosh.io/deployment: sample-deployment
      bosh.io/instance-group: banana
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"boshy/deployment/sample-deployment/instance_group/apricot\"]
    to:
    - operation:
        methods: [\"GET\"]
        paths: [\"/get\"]
",
    );
    let post = format!("http://{BANANA}:9002/post");
    eventually("the POST denied", || {
        curl(CLIENT_VM, &["-X", "POST", &post]).0 == "403"
    });
    for _ in 0..5 {
        assert_eq!(curl(CLIENT_VM, &[&url]).0, "200", "apricot may GET /get");
    }
    assert_eq!(
        curl(THIRD_GROUP_VM, &[&url]).0,
        "403",
        "productpage may not"
    );
    let denied: u64 = banana_vms()
        .iter()
        .map(|vm| envoy_stat(vm, &["rbac", "denied"]))
        .sum();
    assert!(denied >= 2, "denials are counted: {denied}");

    // A denied TCP connection is closed: banana may not reach apricot's TCP port.
    apply_rules(
        "apricot-authz",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-banana
spec:
  selector:
    matchLabels:
      bosh.io/instance-group: apricot
  action: DENY
  rules:
  - from:
    - source:
        principals: [\"boshy/deployment/sample-deployment/instance_group/banana\"]
",
    );
    let tcp = format!("http://{APRICOT_TCP}:9001/get");
    eventually("banana's TCP connection closed", || {
        curl("banana/0", &[&tcp]).0 == "000"
    });
    assert_eq!(
        curl(THIRD_GROUP_VM, &[&tcp]).0,
        "200",
        "others still reach it"
    );

    // The control plane down: certificates in hand keep working, the agents say how long
    // they have left, and rotation resumes when a pilot is back.
    let load = LAB.steady_load(CLIENT_VM, &url, 20);
    let agent_log = || agent_log(CLIENT_VM);
    let mark = agent_log().len();
    LAB.ok(&["process", PILOT_VM, "bosh-pilot", "stop"]);
    eventually(
        "apricot/3's agent saying how long its certificate has left",
        || agent_log()[mark..].contains("s left"),
    );
    let during_outage = workload_serials(CLIENT_VM);
    LAB.ok(&["process", PILOT_VM, "bosh-pilot", "start"]);
    eventually("a new certificate once a pilot is back", || {
        !workload_serials(CLIENT_VM).is_subset(&during_outage)
    });
    let outcomes = load.stop();
    let failed: Vec<&String> = outcomes.iter().filter(|o| !o.starts_with("200")).collect();
    assert!(
        failed.is_empty(),
        "failed with the control plane down: {failed:?}"
    );

    // The workload CA rotated as docs/security.md says, traffic flowing: the new CA trusted
    // everywhere, then signing, then alone; a certificate lifetime between steps so that
    // every VM has renewed.
    let load = LAB.steady_load(CLIENT_VM, &url, 20);
    for step in ["begin", "switch", "finish"] {
        LAB.ok(&["ca-rotate", step]);
        LAB.ok(&["update", "bosh-istio/bosh-pilot"]);
        std::thread::sleep(CERTIFICATE_LIFETIME);
    }
    let (status, body) = curl(CLIENT_VM, &[&url]);
    assert_eq!(status, "200", "after the CA rotation: {body}");
    let outcomes = load.stop();
    let failed: Vec<&String> = outcomes.iter().filter(|o| !o.starts_with("200")).collect();
    assert!(outcomes.len() > 1000, "the load ran: {}", outcomes.len());
    assert!(
        failed.is_empty(),
        "failed during the CA rotation: {failed:?}"
    );
    let trusted: BTreeSet<String> = trusted_workload_cas(CLIENT_VM)
        .into_iter()
        .map(|serial| serial.trim_start_matches('0').to_string())
        .collect();
    assert_eq!(
        trusted,
        BTreeSet::from([lab_ca_serial("workload-ca-next.pem")]),
        "the new CA alone is trusted"
    );

    // Keys never in logs or process arguments: neither the workload CAs' (the pilot's) nor a
    // line of any PEM private key.
    let tls = format!("/tmp/boshy-lab/{}/mesh-tls", LAB.name);
    let key_lines: Vec<String> = ["workload-ca.key", "workload-ca-next.key"]
        .iter()
        .flat_map(|file| {
            let path = format!("{tls}/{file}");
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{path}: {e}"))
                .lines()
                .filter(|line| !line.starts_with("-----"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!key_lines.is_empty());
    let mut logs = Vec::new();
    collect_logs(
        std::path::Path::new(&format!("/tmp/boshy-lab/{}/vms", LAB.name)),
        &mut logs,
    );
    assert!(logs.len() > 20, "the lab's logs: {logs:?}");
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            !text.contains("PRIVATE KEY"),
            "{} holds a private key",
            log.display()
        );
        for line in &key_lines {
            assert!(
                !text.contains(line.as_str()),
                "{} holds a CA key line",
                log.display()
            );
        }
    }
    let ps = Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    assert!(!String::from_utf8_lossy(&ps.stdout).contains("PRIVATE KEY"));

    drop(guard);
}

/// Every `*.log` file below `dir`.
fn collect_logs(dir: &std::path::Path, logs: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_logs(&path, logs);
        } else if path.extension().is_some_and(|extension| extension == "log") {
            logs.push(path);
        }
    }
}
