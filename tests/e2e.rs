//! End to end, in a lab of its own (`boshy-e2e`, 10.245.0.0/24): the real control plane
//! against the director simulator, one network namespace per VM with the real
//! virtual-ip-agent, iptables DNAT rules, Envoy and the sample workloads (example-httpbin,
//! bookinfo); checked with dig and curl as an operator would from `bosh ssh`. The bookinfo
//! traffic tasks (`e2e/bookinfo.rs`) and a VM outside BOSH joining the mesh
//! (`e2e/outside.rs`) run in the same lab.
//!
//! Needs root (CI runs as root) and Envoy (`scripts/test` installs it).

use boshy_test_support::lab as common;

#[path = "e2e/bookinfo.rs"]
mod bookinfo;
#[path = "e2e/console.rs"]
mod console;
#[path = "e2e/metrics.rs"]
mod metrics;
#[path = "e2e/outside.rs"]
mod outside;
#[path = "e2e/tracing.rs"]
mod tracing;

use std::collections::BTreeSet;

use boshy_lab::ready::parse_healthy_endpoints;
use common::{healthy_ips, host_snapshot, service, LabCli};

const LAB: LabCli = LabCli {
    name: "boshy-e2e",
    subnet: "10.245.0.0/24",
};
const BANANA: &str = "example-httpbin.banana.sample-deployment.boshy";
const APRICOT: &str = "example-httpbin.apricot.sample-deployment.boshy";

/// Waits until the instance at `ip` is out of banana's healthy endpoints, then checks that
/// apricot/3's Envoy sends it nothing.
fn assert_instance_out(banana_url: &str, ip: &str, why: &str) {
    LAB.wait_for_catalog(why, |services| {
        let healthy = healthy_ips(service(services, BANANA));
        healthy.len() == 2 && !healthy.contains(ip)
    });
    let answered: BTreeSet<String> = LAB
        .curl_instances("apricot/3", banana_url, 20)
        .into_iter()
        .collect();
    assert!(
        !answered.contains(ip) && answered.len() == 2,
        "{why}: {ip} still answered: {answered:?}"
    );
}

/// The log of the lab's one bosh-pilot.
fn pilot_log() -> String {
    let vms = format!("/tmp/boshy-lab/{}/vms", LAB.name);
    let pilot = std::fs::read_dir(&vms)
        .unwrap_or_else(|e| panic!("{vms}: {e}"))
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().contains("bosh-pilot"))
        .expect("the bosh-pilot VM");
    std::fs::read_to_string(pilot.path().join("sys/log/bosh-pilot/bosh-pilot.log"))
        .expect("the pilot's log")
}

/// Tears the lab down even when an assertion fails half-way.
struct LabGuard;
impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = LAB.run(&["down"]);
    }
}

#[test]
fn the_mesh_end_to_end() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the end-to-end test needs root (network namespaces, iptables)"
    );
    let _ = LAB.run(&["down"]);
    let before = host_snapshot();
    let guard = LabGuard;
    LAB.ok(&["up"]);

    // Each Envoy holds only what its VM asked for (docs/scope.md). Nothing has asked anything
    // on apricot/3 yet: its Envoy has no service of the mesh. The first request by name to a
    // service new to the VM succeeds (the DNS answer waited until Envoy had the listener and
    // cluster), over HTTP and over TCP; then Envoy holds those two services and nothing else.
    let services = LAB.registration();
    assert!(services.len() > 2, "the lab's mesh: {services:?}");
    // The pilot's API wants a mesh client certificate or a UAA token (docs/api.md): without
    // either it is a 401 with no data, and plain HTTP gets nothing; `/healthz` stays open;
    // `boshy-lab api` presents the lab's certificate.
    let pilot = LAB.pilot_ips().into_iter().next().expect("a bosh-pilot VM");
    let anonymous = |path: &str| {
        let target = (boshy_lab::pki::PILOT_SERVER_NAME, pilot.as_str(), 8080);
        LAB.https_status(target, "GET", path, None)
    };
    for path in [
        "/v1/registration",
        "/v1/rules",
        "/v1/graph",
        "/console/",
        "/metrics",
    ] {
        assert_eq!(anonymous(path), "401", "{path} without credentials");
    }
    assert_eq!(anonymous("/healthz"), "200");
    let plain = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "5"])
        .arg(format!("http://{pilot}:8080/v1/registration"))
        .output()
        .expect("run curl");
    assert!(!plain.status.success(), "plain HTTP is not served");
    let rules: serde_json::Value =
        serde_json::from_str(&LAB.ok(&["api", "/v1/rules"])).expect("`boshy-lab api` prints JSON");
    assert!(rules.is_array(), "{rules}");
    assert_eq!(
        LAB.mesh_clusters("apricot/3"),
        BTreeSet::new(),
        "nothing asked yet"
    );
    for (url, over) in [
        (format!("http://{BANANA}:9002/get"), "over HTTP"),
        (format!("http://{APRICOT}:9001/get"), "over tcp_proxy"),
    ] {
        assert_eq!(
            LAB.http_status("apricot/3", &url, &[]),
            "200",
            "the first request to a name new to the VM, {over}"
        );
    }
    assert_eq!(
        LAB.mesh_clusters("apricot/3"),
        BTreeSet::from([
            format!("outbound|9001||{APRICOT}"),
            format!("outbound|9002||{BANANA}")
        ]),
        "apricot/3's Envoy holds what apricot/3 resolved"
    );
    assert!(
        LAB.mesh_clusters("banana/0").is_empty(),
        "another VM's scope is its own"
    );
    // `boshy mesh config`: what the pilot sends apricot/3's Envoy is what that Envoy holds;
    // `boshy mesh diff`: once it has accepted all of it, in sync (exit 0).
    let config: serde_json::Value =
        serde_json::from_str(&LAB.ok(&["mesh", "config", "apricot/3", "clusters", "--json"]))
            .expect("`mesh config --json` prints JSON");
    let sent: BTreeSet<String> = config["types"][0]["resources"]
        .as_array()
        .expect("the clusters")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .filter(|name| name.starts_with("outbound|"))
        .map(str::to_string)
        .collect();
    assert_eq!(sent, LAB.mesh_clusters("apricot/3"), "{config}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let diff = LAB.run(&["mesh", "diff", "apricot/3"]);
        match diff.status.code() {
            Some(0) => break,
            Some(1) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(500))
            }
            _ => panic!(
                "apricot/3's Envoy never in sync: {}{}",
                String::from_utf8_lossy(&diff.stdout),
                String::from_utf8_lossy(&diff.stderr)
            ),
        }
    }

    // Every exposed service has a VIP in the CIDR and resolves to it from every VM.
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
    let status = LAB.ok(&["status"]);
    let addon_vms: Vec<String> = status
        .lines()
        .filter(|l| l.starts_with("sample-deployment/"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(addon_vms.len(), 8, "apricot (5) + banana (3) VMs: {status}");
    for vm in &addon_vms {
        for hostname in [BANANA, APRICOT] {
            let vip = service(&services, hostname)["vip"].as_str().unwrap();
            assert_eq!(LAB.dig(vm, hostname), vip, "{hostname} from {vm}");
        }
        // Case-insensitive, and unknown names under the tld do not resolve.
        assert_eq!(
            LAB.dig(vm, &BANANA.to_uppercase()),
            service(&services, BANANA)["vip"].as_str().unwrap()
        );
        assert_eq!(LAB.dig(vm, "nope.banana.sample-deployment.boshy"), "");
    }

    // curl by name reaches every healthy instance (http port via HCM, tcp port via tcp_proxy).
    let banana_url = format!("http://{BANANA}:9002/get");
    let banana_ips = healthy_ips(service(&services, BANANA));
    assert_eq!(banana_ips.len(), 3);
    let answered: BTreeSet<String> = LAB
        .curl_instances("apricot/3", &banana_url, 24)
        .into_iter()
        .collect();
    assert_eq!(answered, banana_ips, "every banana instance answers");
    let apricot_ips = healthy_ips(service(&services, APRICOT));
    let answered: BTreeSet<String> = LAB
        .curl_instances("banana/0", &format!("http://{APRICOT}:9001/get"), 40)
        .into_iter()
        .collect();
    assert_eq!(
        answered, apricot_ips,
        "every apricot instance answers over tcp_proxy"
    );

    // Request metrics, scraped by a real Prometheus (docs/telemetry.md).
    metrics::prometheus_counts_requests_with_bosh_names();
    // One request traced through the services it crosses (docs/telemetry.md).
    tracing::a_request_is_one_trace_through_every_service_it_crosses();
    // The live web console, in a real headless Chromium (docs/console.md).
    console::chromium_draws_the_lab_in_the_console();

    // A process killed on a VM: its agent's probe of the exposed port fails, and the instance
    // stops receiving new connections, with no help from the director (every task fails
    // meanwhile, so its job_state cannot be what took the instance out).
    LAB.ok(&["director", "fault", "http_500", "--path-prefix", "/tasks"]);
    LAB.ok(&["process", "banana/1", "example-httpbin", "kill"]);
    let banana1_ip = LAB.vm("sample-deployment/banana/1")["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert_instance_out(&banana_url, &banana1_ip, "banana/1's process killed");
    LAB.ok(&["process", "banana/1", "example-httpbin", "start"]);
    LAB.wait_for_catalog("banana/1 back once its process runs", |services| {
        healthy_ips(service(services, BANANA)).len() == 3
    });
    LAB.ok(&["director", "fault", "none"]);

    // With no agent on the VM, the director's job_state decides.
    LAB.ok(&["process", "banana/1", "virtual-ip-agent", "stop"]);
    LAB.ok(&["director", "set-state", "banana/1", "failing"]);
    assert_instance_out(&banana_url, &banana1_ip, "banana/1 failing at the director");
    LAB.ok(&["director", "set-state", "banana/1", "running"]);
    LAB.ok(&["process", "banana/1", "virtual-ip-agent", "start"]);
    LAB.wait_for_catalog("banana/1 back", |services| {
        healthy_ips(service(services, BANANA)).len() == 3
    });

    // An instance the director says is failing while its agent reports every port healthy:
    // the agent, which probes what Envoy connects to, decides.
    LAB.ok(&["director", "set-state", "banana/2", "failing"]);
    LAB.ok(&["process", "banana/0", "example-httpbin", "kill"]);
    LAB.wait_for_catalog("banana/0 out", |services| {
        healthy_ips(service(services, BANANA)).len() == 2
    });
    assert_eq!(
        healthy_ips(service(&LAB.registration(), BANANA)).len(),
        2,
        "banana/2 stays in: its agent reports it healthy"
    );
    LAB.ok(&["director", "set-state", "banana/2", "running"]);
    LAB.ok(&["process", "banana/0", "example-httpbin", "start"]);
    LAB.wait_for_catalog("every banana back", |services| {
        healthy_ips(service(services, BANANA)).len() == 3
    });

    // A rolling update of banana (BOSH's order: drain, jobs stopped, started, one instance at a
    // time) under a steady 50 requests a second from apricot: none fails, because each drain
    // returned only once no Envoy sent its instance new requests.
    // A drain returns only once no Envoy sends the instance new requests: right after
    // banana/0's, no VM's Envoy has it among banana's endpoints.
    let banana0 = format!(
        "{}:9002",
        LAB.vm("sample-deployment/banana/0")["ip"].as_str().unwrap()
    );
    LAB.ok(&["drain", "banana/0"]);
    for vm in &addon_vms {
        let clusters = LAB.ok(&["ssh", vm, "--", "curl", "-sS", "127.0.0.1:8001/clusters"]);
        let healthy = parse_healthy_endpoints(&clusters, &format!("outbound|9002||{BANANA}"));
        assert!(
            healthy.len() == 2 && !healthy.contains(&banana0),
            "{vm}'s Envoy right after banana/0's drain: {healthy:?}"
        );
    }
    let drains_before = pilot_log().matches("drained: no Envoy").count();
    let load = LAB.steady_load("apricot/3", &banana_url, 50);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let update = LAB.ok(&["update", "banana"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let outcomes = load.stop();
    let failed: Vec<&String> = outcomes.iter().filter(|o| !o.starts_with("200 ")).collect();
    assert!(
        outcomes.len() > 200,
        "a steady load through the update: {} requests",
        outcomes.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rolling update: {:?}\n{update}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(
        pilot_log().matches("drained: no Envoy").count() - drains_before,
        3,
        "the pilot drained each banana instance before its jobs stopped:\n{update}"
    );
    LAB.wait_for_catalog("every banana back after the update", |services| {
        healthy_ips(service(services, BANANA)).len() == 3
    });

    // A new instance starts receiving connections.
    LAB.ok(&["director", "add-instance", "sample-deployment", "banana"]);
    LAB.wait_for_catalog("the new banana instance", |services| {
        healthy_ips(service(services, BANANA)).len() == 4
    });
    let now_healthy = healthy_ips(service(&LAB.registration(), BANANA));
    assert_eq!(
        now_healthy.len(),
        4,
        "three old + one new healthy banana: {now_healthy:?}"
    );
    let answered: BTreeSet<String> = LAB
        .curl_instances("apricot/3", &banana_url, 40)
        .into_iter()
        .collect();
    assert_eq!(answered, now_healthy, "the new instance answers too");

    // Istio's traffic tasks on the bookinfo deployment, in this same lab.
    bookinfo::bookinfo_plays_istios_traffic_tasks();

    // A service outside BOSH, by a ServiceEntry with static addresses (played here by banana's
    // instances): a VIP and a name of its own, reached through Envoy like any other.
    let outside: Vec<String> = healthy_ips(service(&LAB.registration(), BANANA))
        .into_iter()
        .take(2)
        .collect();
    let entry = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: legacy}}\nspec:\n  hosts: [legacy.external.boshy]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports: [{{number: 9002, name: http}}]\n  endpoints: [{{address: {}}}, {{address: {}}}]\n",
        outside[0], outside[1]
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), entry).unwrap();
    LAB.ok(&[
        "rules",
        "apply",
        "--name",
        "external-legacy",
        file.path().to_str().unwrap(),
    ]);
    LAB.wait_for_catalog("legacy.external.boshy", |services| {
        services
            .iter()
            .any(|s| s["hostname"] == "legacy.external.boshy")
    });
    let legacy = service(&LAB.registration(), "legacy.external.boshy").clone();
    assert_eq!(legacy["service_entry"], "external-legacy/legacy");
    assert_eq!(
        LAB.dig("apricot/3", "legacy.external.boshy"),
        legacy["vip"].as_str().unwrap()
    );
    let answered: BTreeSet<String> = LAB
        .curl_instances("apricot/3", "http://legacy.external.boshy:9002/get", 8)
        .into_iter()
        .collect();
    assert_eq!(
        answered,
        outside.into_iter().collect(),
        "the listed addresses answer"
    );

    // A service outside the mesh by a DNS name of its own (played by banana/0, by the name
    // bosh-dns gives it on a real VM, which the lab's VMs resolve from their /etc/hosts):
    // each Envoy resolves the name itself, with the VM's resolver, and the service still has a
    // VIP and a mesh name every VM resolves.
    let banana0 = LAB.vm("sample-deployment/banana/0");
    let outside = banana0["ip"].as_str().unwrap().to_string();
    let name = format!(
        "{}.banana.default.sample-deployment.bosh",
        banana0["id"].as_str().unwrap()
    );
    let entry = |entry: &str, resolution: &str| {
        format!(
            "- apiVersion: networking.istio.io/v1\n  kind: ServiceEntry\n  metadata: {{name: {entry}}}\n  spec:\n    hosts: [{entry}.external.boshy]\n    resolution: {resolution}\n    ports: [{{number: 9002, name: http}}]\n    endpoints: [{{address: {name}}}]\n"
        )
    };
    let entries = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}{}",
        entry("legacy-dns", "DNS"),
        entry("legacy-dns-rr", "DNS_ROUND_ROBIN")
    );
    std::fs::write(file.path(), entries).unwrap();
    LAB.ok(&[
        "rules",
        "apply",
        "--name",
        "external-legacy-dns",
        file.path().to_str().unwrap(),
    ]);
    LAB.wait_for_catalog("legacy-dns.external.boshy", |services| {
        ["legacy-dns", "legacy-dns-rr"].iter().all(|entry| {
            let hostname = format!("{entry}.external.boshy");
            services.iter().any(|s| s["hostname"] == hostname.as_str())
        })
    });
    for (entry, resolution) in [("legacy-dns", "DNS"), ("legacy-dns-rr", "DNS_ROUND_ROBIN")] {
        let hostname = format!("{entry}.external.boshy");
        let legacy = service(&LAB.registration(), &hostname).clone();
        assert_eq!(
            legacy["service_entry"],
            format!("external-legacy-dns/{entry}")
        );
        assert_eq!(legacy["endpoints"], serde_json::json!([]));
        assert_eq!(legacy["dns"]["resolution"], resolution);
        assert_eq!(legacy["dns"]["endpoints"][0]["address"], name.as_str());
        assert_eq!(
            LAB.dig("apricot/3", &hostname),
            legacy["vip"].as_str().unwrap()
        );
        let answered: BTreeSet<String> = LAB
            .curl_instances("apricot/3", &format!("http://{hostname}:9002/get"), 4)
            .into_iter()
            .collect();
        assert_eq!(
            answered,
            BTreeSet::from([outside.clone()]),
            "{hostname}: the instance its name resolves to answers"
        );
    }

    // A VM outside BOSH joins a WorkloadGroup, is reached and reaches by name, and leaves.
    outside::a_vm_outside_bosh_joins_the_mesh_and_leaves_it_as_it_was();

    // A ServiceEntry's VIP, kept across the control plane's restart below like a job's.
    let reviews_vip = service(&LAB.registration(), "reviews.bookinfo.boshy")["vip"].clone();

    // Stopping the control plane breaks neither Envoy's config nor name resolution.
    LAB.ok(&["process", "bosh-istio/bosh-pilot/0", "bosh-pilot", "stop"]);
    let answered: BTreeSet<String> = LAB
        .curl_instances("apricot/3", &banana_url, 12)
        .into_iter()
        .collect();
    assert_eq!(answered, now_healthy, "with the control plane down");
    // Restarting the agent while the control plane is down still answers, from its disk table.
    LAB.ok(&["process", "apricot/3", "virtual-ip-agent", "restart"]);
    let vip = service(&services, BANANA)["vip"]
        .as_str()
        .unwrap()
        .to_string();
    let mut resolved = String::new();
    for _ in 0..20 {
        resolved = LAB.dig("apricot/3", BANANA);
        if resolved == vip {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(resolved, vip, "the restarted agent answers from disk");
    assert_eq!(LAB.curl_instances("apricot/3", &banana_url, 3).len(), 3);

    // The control plane comes back and the mesh converges again, with the same VIPs.
    LAB.ok(&["process", "bosh-istio/bosh-pilot/0", "bosh-pilot", "start"]);
    LAB.wait();
    assert_eq!(
        service(&LAB.registration(), BANANA)["vip"]
            .as_str()
            .unwrap(),
        vip,
        "VIP stable across a restart"
    );
    assert_eq!(
        service(&LAB.registration(), "reviews.bookinfo.boshy")["vip"],
        reviews_vip,
        "a ServiceEntry's VIP stable across a restart"
    );

    // `lab down` leaves the machine as it was.
    drop(guard);
    let after = host_snapshot();
    assert_eq!(before.0, after.0, "ip netns list after lab down");
    assert_eq!(before.1, after.1, "iptables-save after lab down");
    assert_eq!(
        LAB.netns_configs(),
        Vec::<String>::new(),
        "/etc/netns after lab down"
    );
}
