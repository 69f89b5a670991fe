//! A VM outside BOSH joins the mesh (docs/workloads.md), in the shared end-to-end lab: a
//! namespace the director knows nothing of, running the sample workload, joins the
//! WorkloadGroup `legacy/rabbitmq` with a join token, is reached by name from apricot/3,
//! reaches banana by name, drops out when its probe fails and comes back, drops out within the
//! TTL when its agent dies, is still registered after the pilot restarts, and leaves the VM
//! exactly as it found it. A forged token, an expired one and one for another group are
//! refused, and leave nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use boshy_test_support::envoy::{certificate_serial, held_serials};
use serde_json::Value;

use super::{healthy_ips, service, LAB};

const VM: &str = "rabbit-1";
const GROUP: &str = "legacy/rabbitmq";
const SERVICE: &str = "rabbitmq.rabbitmq.legacy.boshy";
const PORT: &str = "15672";
/// The identity of the group's VMs, and of the BOSH VM calling them.
const GROUP_ID: &str = "spiffe://boshy/deployment/legacy/instance_group/rabbitmq";
const APRICOT_ID: &str = "spiffe://boshy/deployment/sample-deployment/instance_group/apricot";
/// The joined VM's agent's request metrics, and its Envoy's certificates (admin, loopback).
const AGENT_METRICS: &str = "http://127.0.0.1:15020/metrics";
const ENVOY_CERTS: &str = "http://127.0.0.1:8001/certs";

/// What joining may change on the VM and leaving must put back: its nat rules (no counters),
/// its root's files (path → content) and the links among them.
#[derive(Debug, PartialEq, Eq)]
struct VmSnapshot {
    nat: String,
    files: BTreeMap<PathBuf, Vec<u8>>,
}

fn outside_vm() -> Value {
    LAB.state()["outside"]
        .as_array()
        .expect("outside VMs in the lab state")
        .iter()
        .find(|vm| vm["name"] == VM)
        .unwrap_or_else(|| panic!("no outside VM {VM}"))
        .clone()
}

fn snapshot(vm: &Value) -> VmSnapshot {
    let namespace = vm["namespace"].as_str().expect("namespace");
    let out = Command::new("ip")
        .args(["netns", "exec", namespace, "iptables-save", "-t", "nat"])
        .output()
        .expect("iptables-save");
    assert!(out.status.success(), "iptables-save in {namespace}");
    let nat = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.split_once(" [") {
            // `:CHAIN POLICY [packets:bytes]`: counters move on their own.
            Some((chain, _)) if l.starts_with(':') => chain.to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut files = BTreeMap::new();
    collect(Path::new(vm["root"].as_str().expect("root")), &mut files);
    VmSnapshot { nat, files }
}

fn collect(dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        if meta.is_dir() {
            files.insert(path.clone(), b"<dir>".to_vec());
            collect(&path, files);
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).expect("link");
            files.insert(path, format!("-> {}", target.display()).into_bytes());
        } else {
            files.insert(path.clone(), std::fs::read(&path).expect("read"));
        }
    }
}

/// `lab outside join` with `files`: its output, and whether it succeeded.
fn join(files: &Path) -> (bool, String) {
    let out = LAB.run(&[
        "outside",
        "join",
        VM,
        "--files",
        files.to_str().expect("utf-8"),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Join files for `group` with a token living `ttl`, in a directory of their own.
fn configure(group: &str, ttl: &str, dir: &str) -> PathBuf {
    let out = PathBuf::from(format!("/tmp/boshy-lab/{}/outside/{dir}", LAB.name));
    let _ = std::fs::remove_dir_all(&out);
    LAB.ok(&[
        "outside",
        "configure",
        group,
        "--ttl",
        ttl,
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    out
}

/// A copy of `files` with `edit` applied to its join.yml.
fn edited(files: &Path, dir: &str, edit: impl Fn(&mut serde_yaml::Mapping)) -> PathBuf {
    let out = files.with_file_name(dir);
    let _ = std::fs::remove_dir_all(&out);
    let copied = Command::new("cp")
        .args(["-a"])
        .arg(files)
        .arg(&out)
        .status()
        .expect("cp");
    assert!(copied.success());
    let path = out.join("join.yml");
    let mut doc: serde_yaml::Mapping =
        serde_yaml::from_str(&std::fs::read_to_string(&path).expect("join.yml")).expect("YAML");
    edit(&mut doc);
    std::fs::write(&path, serde_yaml::to_string(&doc).expect("YAML")).expect("write join.yml");
    out
}

fn string(doc: &serde_yaml::Mapping, key: &str) -> String {
    doc.get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("join.yml has no `{key}`: {doc:?}"))
        .to_string()
}

/// The first pilot's `GET /v1/workloads`.
/// A command run in the VM's namespace; its stdout.
fn on_vm(command: &[&str]) -> String {
    let mut args = vec!["outside", "ssh", VM, "--"];
    args.extend_from_slice(command);
    LAB.ok(&args)
}

fn json_from(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The serial number of the VM's mesh certificate, as Envoy's `/certs` shows it.
fn serial(vm: &Value) -> String {
    let path = Path::new(vm["root"].as_str().expect("root")).join("etc/boshy/tls/vm.pem");
    let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    certificate_serial(&pem)
}

/// Waits (up to twice the lab's 72 s certificate lifetime) for the VM's certificate to be
/// another than `before`; its serial. Exactly one generation of the pair is left.
fn wait_for_renewal(vm: &Value, before: &str) -> String {
    let tls = Path::new(vm["root"].as_str().expect("root")).join("etc/boshy/tls");
    for _ in 0..576 {
        let now = serial(vm);
        if now != before {
            let generations: Vec<_> = std::fs::read_dir(&tls)
                .expect("the tls directory")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("..") && name != "..data")
                .collect();
            assert_eq!(generations.len(), 1, "one generation left: {generations:?}");
            return now;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!("the VM's certificate {before} was not renewed within 144 s");
}

/// Waits until the VM at `ip` is an endpoint its agent reports taking mutual TLS (no
/// `plaintext`), then until every VM has converged.
fn wait_for_mutual_tls(ip: &str) {
    let pilot = LAB.pilot_ips().into_iter().next().expect("a pilot");
    for _ in 0..240 {
        let endpoint = LAB
            .api_get(&pilot, "/v1/registration")
            .and_then(|body| serde_json::from_str::<Vec<Value>>(&body).ok())
            .and_then(|services| {
                service(&services, SERVICE)["endpoints"]
                    .as_array()?
                    .iter()
                    .find(|e| e["address"] == ip)
                    .cloned()
            });
        if endpoint.is_some_and(|e| e.get("plaintext").is_none()) {
            LAB.wait();
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!(
        "the joined VM {ip} never took mutual TLS: {:?}",
        LAB.api_get(&pilot, "/v1/registration")
    );
}

fn workloads() -> Value {
    let pilot = LAB.pilot_ips().into_iter().next().expect("a pilot");
    let body = LAB
        .api_get(&pilot, "/v1/workloads")
        .expect("GET /v1/workloads");
    serde_json::from_str(&body).expect("JSON")
}

fn registrations_at(ip: &str) -> Vec<Value> {
    workloads()["registrations"]
        .as_array()
        .expect("registrations")
        .iter()
        .filter(|r| r["address"] == ip)
        .cloned()
        .collect()
}

/// Waits until the VM at `ip` is (or is not) a healthy endpoint of the group's service, then
/// until every VM has converged; a pilot that does not answer yet (restarting) is waited for.
fn wait_for_endpoint(ip: &str, healthy: bool, why: &str) {
    let pilot = LAB.pilot_ips().into_iter().next().expect("a pilot");
    let shown = || -> Option<bool> {
        let body = LAB.api_get(&pilot, "/v1/registration")?;
        let services: Vec<Value> = serde_json::from_str(&body).ok()?;
        let group = services.iter().find(|s| s["hostname"] == SERVICE)?;
        Some(healthy_ips(group).contains(ip) == healthy)
    };
    for _ in 0..240 {
        if shown() == Some(true) {
            LAB.wait();
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!(
        "{why}: never shown: {:?}",
        LAB.api_get(&pilot, "/v1/workloads")
    );
}

pub fn a_vm_outside_bosh_joins_the_mesh_and_leaves_it_as_it_was() {
    LAB.ok(&[
        "rules",
        "apply",
        "--name",
        "legacy",
        "fixtures/rules/legacy/workload-groups.yml",
    ]);
    LAB.wait_for_catalog("the WorkloadGroup's service", |services| {
        services.iter().any(|s| s["hostname"] == SERVICE)
    });
    LAB.ok(&["outside", "create", VM, "--port", PORT]);
    let vm = outside_vm();
    let ip = vm["ip"].as_str().expect("ip").to_string();
    let before = snapshot(&vm);

    // Refused: nothing registered, nothing left on the VM.
    let files = configure(GROUP, "1h", "files-rabbitmq");
    let forged = edited(&files, "files-forged", |doc| {
        let token = string(doc, "token");
        let (head, secret) = token.rsplit_once('.').expect("a token's secret");
        let flipped: String = secret
            .chars()
            .map(|c| if c == 'A' { 'B' } else { 'A' })
            .collect();
        doc.insert("token".into(), format!("{head}.{flipped}").into());
    });
    let other_group = configure("legacy/postgres", "1h", "files-postgres");
    let wrong_group = edited(&other_group, "files-wrong-group", |doc| {
        doc.insert("group".into(), GROUP.into());
    });
    let expired = configure(GROUP, "1s", "files-expired");
    std::thread::sleep(std::time::Duration::from_secs(2));
    for (files, why) in [
        (&forged, "forged"),
        (&wrong_group, "for another group"),
        (&expired, "expired"),
    ] {
        let (joined, output) = join(files);
        assert!(!joined, "a {why} token joined: {output}");
        assert!(
            output.to_lowercase().contains("token"),
            "the refusal of a {why} token names the token: {output}"
        );
        assert!(registrations_at(&ip).is_empty(), "{why}: {:?}", workloads());
        assert_eq!(
            snapshot(&vm),
            before,
            "a refused join ({why}) changed the VM"
        );
    }

    // Joined: reachable by name from a BOSH VM, and it reaches BOSH jobs by name.
    let (joined, output) = join(&files);
    assert!(joined, "join: {output}");
    wait_for_endpoint(&ip, true, "the joined VM healthy in its group's service");
    let url = format!("http://{SERVICE}:{PORT}/get");
    assert_eq!(
        LAB.curl_instances("apricot/3", &url, 3),
        vec![ip.clone(); 3],
        "apricot/3 reaches the VM by name"
    );
    // Over mutual TLS both ways: the VM's agent reports its port captured by its Envoy (the
    // endpoint is not `plaintext`), whose inbound listener tells the workload who called; and
    // banana's workload is told the VM's group's identity.
    wait_for_mutual_tls(&ip);
    let answer = json_from(&LAB.ok(&[
        "ssh",
        "apricot/3",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "5",
        &url,
    ]));
    assert_eq!(answer["instance"]["ip"], ip.as_str(), "{answer}");
    assert_eq!(answer["caller"], APRICOT_ID, "{answer}");
    let banana = format!("http://{}:9002/get", super::BANANA);
    let answer = json_from(&on_vm(&["curl", "-sS", "--max-time", "5", &banana]));
    assert_eq!(answer["instance"]["instance_group"], "banana", "{answer}");
    assert_eq!(answer["caller"], GROUP_ID, "{answer}");
    let registration = registrations_at(&ip);
    assert_eq!(registration.len(), 1, "{registration:?}");
    assert_eq!(registration[0]["group"], GROUP);

    // Its telemetry: its agent counts its calls, and they reach the console from its
    // WorkloadGroup's box.
    // Envoy sends its access log to the agent in batches: the call is counted within seconds.
    let counted = |metrics: &str| {
        metrics.lines().any(|l| {
            l.starts_with("boshy_requests_total{")
                && l.contains(r#"reporter="source""#)
                && l.contains(r#"source_deployment="legacy""#)
                && l.contains(r#"destination_instance_group="banana""#)
        })
    };
    let mut metrics = String::new();
    for _ in 0..60 {
        metrics = on_vm(&["curl", "-sS", "--max-time", "5", AGENT_METRICS]);
        if counted(&metrics) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(
        counted(&metrics),
        "the VM's agent counts its call to banana within 30 s: {metrics}"
    );
    super::console::wait_for_edge_from(("WorkloadGroup", GROUP), super::BANANA, |_| true);
    // The console lists it beside the BOSH instances, with its liveness and probe.
    let console = super::console::Console::start();
    let dom = boshy_test_support::chromium::dump_dom(&console.url);
    let id = registration[0]["id"].as_str().expect("id");
    let row = dom
        .split_once(&format!(r#"data-registration="{id}""#))
        .and_then(|(_, rest)| rest.split_once("</tr>"))
        .map_or_else(
            || panic!("the console lists the VM {id}: {dom}"),
            |(row, _)| row,
        );
    for cell in [GROUP, ip.as_str(), "healthy", "passing"] {
        assert!(
            row.contains(&format!(">{cell}<")),
            "{cell} in the VM's row: {row}"
        );
    }
    drop(console);
    let first_certificate = serial(&vm);

    // Its probe fails: out of every Envoy; it passes again: back.
    LAB.ok(&["outside", "process", VM, "workload", "kill"]);
    wait_for_endpoint(&ip, false, "the VM out once its probe fails");
    LAB.ok(&["outside", "process", VM, "workload", "start"]);
    wait_for_endpoint(&ip, true, "the VM back once its probe passes");

    // The pilot restarts: the registration was in the director all along.
    LAB.ok(&[
        "process",
        "bosh-istio/bosh-pilot/0",
        "bosh-pilot",
        "restart",
    ]);
    wait_for_endpoint(&ip, true, "the VM healthy after the pilot restarted");
    assert_eq!(registrations_at(&ip).len(), 1, "{:?}", workloads());

    // Its mesh certificate is renewed (the lab's live 72 s, renewed at half): a new key and
    // certificate swapped in as one generation, which its Envoy takes without a restart; the
    // mesh still reaches it and it the mesh.
    let renewed = wait_for_renewal(&vm, &first_certificate);
    let certs = json_from(&on_vm(&["curl", "-sS", "--max-time", "5", ENVOY_CERTS]));
    assert!(
        held_serials(&certs).contains(&renewed),
        "the VM's Envoy holds the renewed certificate {renewed}: {certs}"
    );
    assert_eq!(
        LAB.curl_instances("apricot/3", &url, 1),
        vec![ip.clone()],
        "apricot/3 reaches the VM after its renewal"
    );
    let answer = json_from(&on_vm(&["curl", "-sS", "--max-time", "5", &banana]));
    assert_eq!(answer["caller"], GROUP_ID, "after its renewal: {answer}");

    // Its agent dies: no heartbeat, out within the TTL; back when it runs again.
    LAB.ok(&["outside", "process", VM, "boshy-agent", "kill"]);
    wait_for_endpoint(&ip, false, "the silent VM out after the TTL");
    assert_eq!(registrations_at(&ip)[0]["state"], "silent");
    LAB.ok(&["outside", "process", VM, "boshy-agent", "start"]);
    wait_for_endpoint(&ip, true, "the VM back once it heartbeats again");

    // Leave: deregistered at once, and the VM is as it was before it joined.
    let left = LAB.ok(&["outside", "leave", VM]);
    assert!(
        registrations_at(&ip).is_empty(),
        "{left}: {:?}",
        workloads()
    );
    LAB.wait_for_catalog("the VM gone from its group's service", |services| {
        service(services, SERVICE)["endpoints"]
            .as_array()
            .is_some_and(|e| !e.iter().any(|e| e["address"] == ip.as_str()))
    });
    assert_eq!(snapshot(&vm), before, "leave did not restore the VM");
    LAB.ok(&["outside", "delete", VM]);
}
