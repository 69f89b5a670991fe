//! End to end, in a lab of its own (`boshy-e2e`, 10.245.0.0/24): the real control plane
//! against the director simulator, one network namespace per VM with the real
//! virtual-ip-agent, iptables DNAT rules, Envoy and example-httpbin; checked with dig and
//! curl as an operator would from `bosh ssh`.
//!
//! Needs root (CI runs as root) and Envoy (`scripts/test` installs it).

use std::collections::BTreeSet;
use std::process::{Command, Output};

use serde_json::Value;

const LAB: &str = "boshy-e2e";
const SUBNET: &str = "10.245.0.0/24";
const BANANA: &str = "example-httpbin.banana.sample-deployment.boshy";
const APRICOT: &str = "example-httpbin.apricot.sample-deployment.boshy";

fn lab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_boshy"))
        .arg("lab")
        .args(args)
        .env("BOSHY_LAB_NAME", LAB)
        .env("BOSHY_LAB_SUBNET", SUBNET)
        .output()
        .expect("run boshy lab")
}

fn lab_ok(args: &[&str]) -> String {
    let output = lab(args);
    assert!(
        output.status.success(),
        "`boshy lab {}` failed:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn host_snapshot() -> (String, String) {
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program).args(args).output().expect(program);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let netns = run("ip", &["netns", "list"]);
    // Counters and the generation comment change on their own; the rules must not.
    let rules: String = run("iptables-save", &[])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l).to_string() + "\n")
        .collect();
    (netns, rules)
}

/// Tears the lab down even when an assertion fails half-way.
struct LabGuard;
impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = lab(&["down"]);
    }
}

fn registration() -> Vec<Value> {
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/tmp/boshy-lab/{LAB}/lab.json")).unwrap(),
    )
    .unwrap();
    let pilot_ip = state["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|vm| vm["deployment"] == "bosh-istio")
        .expect("a bosh-istio VM")["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let out = Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "5",
            &format!("http://{pilot_ip}:8080/v1/registration"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET /v1/registration failed");
    serde_json::from_slice(&out.stdout).expect("registration is JSON")
}

fn service<'a>(services: &'a [Value], hostname: &str) -> &'a Value {
    services
        .iter()
        .find(|s| s["hostname"] == hostname)
        .unwrap_or_else(|| panic!("{hostname} not in /v1/registration: {services:?}"))
}

fn dig(vm: &str, name: &str) -> String {
    lab_ok(&[
        "ssh", vm, "--", "dig", "+short", "+time=1", "+tries=2", name,
    ])
    .trim()
    .to_string()
}

/// curls `url` from `vm` `n` times; returns the IPs of the instances that answered.
fn curl_instances(vm: &str, url: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let body = lab_ok(&["ssh", vm, "--", "curl", "-sS", "--max-time", "5", url]);
            let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| {
                panic!("request {i} to {url} from {vm}: not JSON ({e}): {body}")
            });
            json["instance"]["ip"].as_str().unwrap().to_string()
        })
        .collect()
}

fn healthy_ips(service: &Value) -> BTreeSet<String> {
    service["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["healthy"] == true)
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect()
}

fn wait() {
    lab_ok(&["wait", "--timeout-seconds", "60"]);
}

/// Waits until the control plane's catalog satisfies `ready` (it learns health from the
/// director on its own timer), then until every VM has converged on it.
fn wait_for_catalog(what: &str, ready: impl Fn(&[Value]) -> bool) {
    for _ in 0..120 {
        if ready(&registration()) {
            wait();
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!(
        "the control plane never showed {what}: {:?}",
        registration()
    );
}

#[test]
fn the_mesh_end_to_end() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the end-to-end test needs root (network namespaces, iptables)"
    );
    let _ = lab(&["down"]);
    let before = host_snapshot();
    let guard = LabGuard;
    lab_ok(&["up"]);

    // Every exposed service has a VIP in the CIDR and resolves to it from every VM.
    let services = registration();
    let vip_cidr: ipnet::Ipv4Net = "169.254.255.0/24".parse().unwrap();
    for hostname in [BANANA, APRICOT] {
        let vip: std::net::Ipv4Addr = service(&services, hostname)["vip"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            vip_cidr.contains(&vip),
            "{hostname} has VIP {vip} outside {vip_cidr}"
        );
    }
    let status = lab_ok(&["status"]);
    let addon_vms: Vec<String> = status
        .lines()
        .filter(|l| l.starts_with("sample-deployment/"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(addon_vms.len(), 8, "apricot (5) + banana (3) VMs: {status}");
    for vm in &addon_vms {
        for hostname in [BANANA, APRICOT] {
            let vip = service(&services, hostname)["vip"].as_str().unwrap();
            assert_eq!(dig(vm, hostname), vip, "{hostname} from {vm}");
        }
        // Case-insensitive, and unknown names under the tld do not resolve.
        assert_eq!(
            dig(vm, &BANANA.to_uppercase()),
            service(&services, BANANA)["vip"].as_str().unwrap()
        );
        assert_eq!(dig(vm, "nope.banana.sample-deployment.boshy"), "");
    }

    // curl by name reaches every healthy instance (http port via HCM, tcp port via tcp_proxy).
    let banana_url = format!("http://{BANANA}:9002/get");
    let banana_ips = healthy_ips(service(&services, BANANA));
    assert_eq!(banana_ips.len(), 3);
    let answered: BTreeSet<String> = curl_instances("apricot/3", &banana_url, 24)
        .into_iter()
        .collect();
    assert_eq!(answered, banana_ips, "every banana instance answers");
    let apricot_ips = healthy_ips(service(&services, APRICOT));
    let answered: BTreeSet<String> =
        curl_instances("banana/0", &format!("http://{APRICOT}:9001/get"), 40)
            .into_iter()
            .collect();
    assert_eq!(
        answered, apricot_ips,
        "every apricot instance answers over tcp_proxy"
    );

    // An instance set to failing stops receiving new connections.
    lab_ok(&["director", "set-state", "banana/1", "failing"]);
    wait_for_catalog("banana/1 unhealthy", |services| {
        healthy_ips(service(services, BANANA)).len() == 2
    });
    let failing_ip = service(&registration(), BANANA)["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["index"] == 1)
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let answered: BTreeSet<String> = curl_instances("apricot/3", &banana_url, 20)
        .into_iter()
        .collect();
    assert!(
        !answered.contains(&failing_ip),
        "failing banana/1 ({failing_ip}) still answered: {answered:?}"
    );
    assert_eq!(answered.len(), 2);

    // A new instance starts receiving connections.
    lab_ok(&["director", "add-instance", "sample-deployment", "banana"]);
    wait_for_catalog("the new banana instance", |services| {
        healthy_ips(service(services, BANANA)).len() == 3
    });
    let now_healthy = healthy_ips(service(&registration(), BANANA));
    assert_eq!(
        now_healthy.len(),
        3,
        "two old + one new healthy banana: {now_healthy:?}"
    );
    let answered: BTreeSet<String> = curl_instances("apricot/3", &banana_url, 30)
        .into_iter()
        .collect();
    assert_eq!(answered, now_healthy, "the new instance answers too");

    // Stopping the control plane breaks neither Envoy's config nor name resolution.
    lab_ok(&["process", "bosh-istio/bosh-pilot/0", "bosh-pilot", "stop"]);
    let answered: BTreeSet<String> = curl_instances("apricot/3", &banana_url, 12)
        .into_iter()
        .collect();
    assert_eq!(answered, now_healthy, "with the control plane down");
    // Restarting the agent while the control plane is down still answers, from its disk table.
    lab_ok(&["process", "apricot/3", "vip-agent", "restart"]);
    let vip = service(&services, BANANA)["vip"]
        .as_str()
        .unwrap()
        .to_string();
    let mut resolved = String::new();
    for _ in 0..20 {
        resolved = dig("apricot/3", BANANA);
        if resolved == vip {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(resolved, vip, "the restarted agent answers from disk");
    assert_eq!(curl_instances("apricot/3", &banana_url, 3).len(), 3);

    // The control plane comes back and the mesh converges again, with the same VIPs.
    lab_ok(&["process", "bosh-istio/bosh-pilot/0", "bosh-pilot", "start"]);
    wait();
    assert_eq!(
        service(&registration(), BANANA)["vip"].as_str().unwrap(),
        vip,
        "VIP stable across a restart"
    );

    // `lab down` leaves the machine as it was.
    drop(guard);
    let after = host_snapshot();
    assert_eq!(before.0, after.0, "ip netns list after lab down");
    assert_eq!(before.1, after.1, "iptables-save after lab down");
}
