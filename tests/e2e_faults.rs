//! Faults in a lab of its own (`boshy-f`, 10.246.0.0/24) with several control planes: racing
//! pilots on a fresh VIP store, kill -9 of a pilot mid-push, director faults and process
//! faults, each while a curl loop runs through the mesh. Every test brings its own lab up
//! and down (a few seconds) and holds a lock, so they never share state.
//!
//! The figures (failed requests per fault, recovery times) are printed: run with
//! `cargo test --test e2e_faults -- --nocapture --test-threads 1` to see them.
//!
//! Needs root (CI runs as root) and Envoy (`scripts/test` installs it).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use boshy_test_support::lab as common;

use common::{healthy_ips, service, LabCli};

const LAB: LabCli = LabCli {
    name: "boshy-f",
    subnet: "10.246.0.0/24",
};
const DIRECTOR: &str = "10.246.0.6";
const BANANA: &str = "example-httpbin.banana.sample-deployment.boshy";
const CLIENT_VM: &str = "apricot/3";
/// Upper bound for anything a test waits for; never a measured duration.
const PATIENCE: Duration = Duration::from_secs(60);

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A lab with `pilots` control planes, torn down on drop (also when an assertion fails).
struct Lab {
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Lab {
    fn up(pilots: u32) -> Lab {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the fault tests need root (network namespaces, iptables)"
        );
        let guard = ONE_LAB_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = LAB.run(&["down"]);
        let lab_handle = Lab {
            _one_at_a_time: guard,
        };
        LAB.ok(&["up", "--pilots", &pilots.to_string()]);
        lab_handle
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = LAB.run(&["down"]);
    }
}

/// (name, ip, namespace) of every VM.
fn vms() -> Vec<(String, String, String)> {
    LAB.state()["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| {
            let index = vm["index"].as_u64().map(|i| i.to_string());
            let name = format!(
                "{}/{}/{}",
                vm["deployment"].as_str().unwrap(),
                vm["instance_group"].as_str().unwrap(),
                index.unwrap_or_else(|| vm["id"].as_str().unwrap().to_string())
            );
            (
                name,
                vm["ip"].as_str().unwrap().to_string(),
                vm["namespace"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn namespace_of(vm: &str) -> String {
    vms()
        .into_iter()
        .find(|(name, _, _)| name == vm || name.ends_with(&format!("/{vm}")))
        .unwrap_or_else(|| panic!("no VM {vm}"))
        .2
}

/// `bosh-istio/bosh-pilot/<i>` and its IP, in index order.
fn pilots() -> Vec<(String, String)> {
    let mut pilots: Vec<(String, String)> = vms()
        .into_iter()
        .filter(|(name, _, _)| name.starts_with("bosh-istio/"))
        .map(|(name, ip, _)| (name, ip))
        .collect();
    pilots.sort();
    pilots
}

fn pilot_log(pilot: &str) -> String {
    let index = pilot.rsplit('/').next().unwrap();
    let path = format!(
        "/tmp/boshy-lab/{lab}/vms/{lab}-bosh-istio-bosh-pilot-{index}/sys/log/bosh-pilot/bosh-pilot.log",
        lab = LAB.name
    );
    std::fs::read_to_string(&path).unwrap_or_default()
}

/// GET from the host (the bridge reaches every VM); `None` on any failure.
fn http_get(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "3", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_vm(vm: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &namespace_of(vm)])
        .args(args)
        .output()
        .expect("ip netns exec")
}

/// hostname → VIP as one pilot serves it.
fn vips_of(pilot_ip: &str) -> Option<BTreeMap<String, String>> {
    let body = LAB.api_get(pilot_ip, "/v1/registration")?;
    let services: Vec<Value> = serde_json::from_str(&body).ok()?;
    Some(
        services
            .iter()
            .map(|s| {
                (
                    s["hostname"].as_str().unwrap().to_string(),
                    s["vip"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
    )
}

fn healthy_banana_ips(pilot_ip: &str) -> BTreeSet<String> {
    healthy_ips(service(&LAB.registration_from(pilot_ip), BANANA))
}

/// Polls `check` every 100 ms; returns how long it took, or panics after `PATIENCE`.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// Calls the simulator's control API (plain HTTP).
fn sim_control(method: &str, path: &str, body: Option<Value>) {
    let mut command = Command::new("curl");
    command.args([
        "-sf",
        "--max-time",
        "10",
        "-X",
        method,
        &format!("http://{DIRECTOR}:25580{path}"),
    ]);
    if let Some(body) = body {
        command.args([
            "-H",
            "content-type: application/json",
            "-d",
            &body.to_string(),
        ]);
    }
    let out = command.output().expect("curl");
    assert!(
        out.status.success(),
        "simulator control {method} {path} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn director_fault(mode: &str, path_prefix: Option<&str>) {
    sim_control(
        "PUT",
        "/_sim/fault",
        Some(json!({"mode": mode, "path_prefix": path_prefix})),
    );
}

/// The director's request counters by route.
fn director_requests() -> Value {
    let body = http_get(&format!("http://{DIRECTOR}:25580/_sim/requests")).expect("counters");
    serde_json::from_str::<Value>(&body).unwrap()["by_route"].clone()
}

/// The VIP config in the director, read and written as the pilots do.
mod director_config {
    use super::*;
    use boshy::config::{DirectorConfig, Secret};
    use boshy::director::DirectorClient;
    use boshy::vip::{DirectorStore, VipState};

    fn client() -> DirectorClient {
        let dir = format!("/tmp/boshy-lab/{}/director", LAB.name);
        let cfg: DirectorConfig = serde_json::from_value(json!({
            "url": format!("https://{DIRECTOR}:25555"),
            "client": "pilot",
            "ca_cert_path": format!("{dir}/ca.pem"),
        }))
        .unwrap();
        let secret = std::fs::read_to_string(format!("{dir}/client-secret")).unwrap();
        DirectorClient::new(&cfg, Secret::new(secret.trim())).unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    pub fn read() -> VipState {
        runtime().block_on(async {
            DirectorStore::new(Arc::new(client()), "boshy")
                .load()
                .await
                .expect("read the VIP config")
                .state
        })
    }

    /// Deletes it: the director is fresh again as far as VIPs go.
    pub fn delete() {
        runtime().block_on(async {
            let response = client()
                .send(
                    reqwest::Method::DELETE,
                    "/configs?type=boshy-vips&name=boshy",
                    None,
                )
                .await
                .expect("DELETE /configs");
            assert!(
                [204, 404].contains(&response.status.as_u16()),
                "DELETE /configs: {}",
                response.status
            );
        });
    }
}

/// Requests through the mesh from one VM, one every 100 ms, until stopped.
struct CurlLoop {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<LoopReport>,
}

#[derive(Debug)]
struct LoopReport {
    requests: usize,
    /// (time since the loop started, what went wrong)
    failures: Vec<(Duration, String)>,
    /// When each request finished and whether it succeeded.
    outcomes: Vec<(Instant, bool)>,
}

impl LoopReport {
    /// How long after `since` the first success came.
    fn first_success_after(&self, since: Instant) -> Option<Duration> {
        self.outcomes
            .iter()
            .find(|(at, ok)| *at > since && *ok)
            .map(|(at, _)| *at - since)
    }

    fn assert_no_failures(&self, what: &str) {
        assert!(
            self.failures.is_empty(),
            "{what}: {} of {} requests failed: {:?}",
            self.failures.len(),
            self.requests,
            &self.failures[..self.failures.len().min(5)]
        );
    }
}

impl CurlLoop {
    /// Starts once a first request got through, so that a fault starts on a working mesh.
    fn start(vm: &str, url: &str) -> CurlLoop {
        let namespace = namespace_of(vm);
        wait_until("a first request through the mesh", || {
            in_vm(
                vm,
                &["curl", "-sf", "-o", "/dev/null", "--max-time", "3", url],
            )
            .status
            .success()
        });
        let url = url.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let mut report = LoopReport {
                requests: 0,
                failures: Vec::new(),
                outcomes: Vec::new(),
            };
            while !stopped.load(Ordering::Relaxed) {
                let out = Command::new("ip")
                    .args(["netns", "exec", &namespace])
                    .args(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"])
                    .args(["--max-time", "3", &url])
                    .output()
                    .expect("curl");
                let code = String::from_utf8_lossy(&out.stdout).into_owned();
                let ok = out.status.success() && code == "200";
                report.requests += 1;
                report.outcomes.push((Instant::now(), ok));
                if !ok {
                    let error = String::from_utf8_lossy(&out.stderr).trim().to_string();
                    report
                        .failures
                        .push((started.elapsed(), format!("HTTP {code} {error}")));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            report
        });
        CurlLoop { stop, handle }
    }

    fn stop(self) -> LoopReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("curl loop")
    }
}

fn banana_url() -> String {
    format!("http://{BANANA}:9002/get")
}

/// Every pilot serves the same VIPs, and the director config holds exactly those: one per
/// service, none twice.
fn assert_one_truth() -> BTreeMap<String, String> {
    let pilots = pilots();
    let served: Vec<BTreeMap<String, String>> = pilots
        .iter()
        .map(|(name, ip)| vips_of(ip).unwrap_or_else(|| panic!("{name} answers")))
        .collect();
    for (i, vips) in served.iter().enumerate() {
        assert_eq!(
            vips, &served[0],
            "{} serves other VIPs than {}",
            pilots[i].0, pilots[0].0
        );
    }
    let stored = director_config::read();
    let stored: BTreeMap<String, String> = stored
        .assignments
        .iter()
        .map(|(h, vip)| (h.clone(), vip.to_string()))
        .collect();
    assert_eq!(
        stored, served[0],
        "the director config and the pilots agree"
    );
    let distinct: BTreeSet<&String> = stored.values().collect();
    assert_eq!(distinct.len(), stored.len(), "no VIP twice: {stored:?}");
    stored
}

/// A deployment whose instance groups expose ports but have no instances: services with
/// VIPs and no VMs for the lab to boot.
fn vipless_deployment(name: &str, groups: usize) -> String {
    let mut manifest = format!(
        "name: {name}\nreleases:\n- name: boshy-istio\n  version: latest\nstemcells:\n\
         - alias: default\n  os: ubuntu-jammy\n  version: latest\ninstance_groups:\n"
    );
    for n in 0..groups {
        manifest.push_str(&format!(
            "- name: g{n}\n  instances: 0\n  azs: [z1]\n  networks:\n  - name: default\n  \
             jobs:\n  - name: example-httpbin\n    release: boshy-istio\n    expose_ports:\n    \
             - name: http\n      number: {}\n",
            8000 + n
        ));
    }
    manifest
}

fn wait_for_all_pilots(what: &str, check: impl Fn(&str) -> bool) -> Duration {
    wait_until(what, || pilots().iter().all(|(_, ip)| check(ip)))
}

#[test]
fn racing_pilots_on_a_fresh_director_agree() {
    let _lab = Lab::up(3);
    let before = assert_one_truth();
    assert_eq!(
        before.len(),
        9,
        "sample-deployment's apricot and banana, bookinfo's six instance groups and the \
         reviews ServiceEntry the lab applies: {before:?}"
    );
    let with_race = before.len() + 10;

    // All three stop; the director forgets every VIP and gains ten services; all three
    // start at once. Their first reads of the VIP config are held (the director hangs on
    // reads of boshy-vips configs) until all three are waiting, then released together: all
    // three decide on the same empty state and race to write it.
    for (pilot, _) in pilots() {
        LAB.ok(&["process", &pilot, "bosh-pilot", "kill"]);
    }
    sim_control(
        "POST",
        "/_sim/deployments",
        Some(
            json!({"name": "race-deployment", "manifest": vipless_deployment("race-deployment", 10)}),
        ),
    );
    director_config::delete();
    let count = |route: &str| director_requests()[route].as_u64().unwrap_or(0);
    let (reads_before, writes_before) = (count("GET /configs"), count("POST /configs"));
    director_fault("hang", Some("/configs?type=boshy-vips"));
    for (pilot, _) in pilots() {
        LAB.ok(&["process", &pilot, "bosh-pilot", "start"]);
    }
    // Each pilot reads the rule configs and its registration store (`boshy-workloads`) once
    // at start (not held), and the VIP config (held): three reads each. Counting two let the
    // fault go before every pilot waited on the VIP config, and the pilots did not race.
    wait_until(
        "every pilot to wait for its first read of the VIP config",
        || count("GET /configs") >= reads_before + 3 * 3,
    );
    director_fault("none", None);
    wait_for_all_pilots(
        &format!("every pilot to serve {with_race} services"),
        |ip| vips_of(ip).is_some_and(|vips| vips.len() == with_race),
    );
    // Replicas adopt each other's assignments at their next refresh.
    wait_until("the pilots to agree", || {
        let served: BTreeSet<_> = pilots().iter().map(|(_, ip)| vips_of(ip)).collect();
        served.len() == 1
    });
    let writes = count("POST /configs") - writes_before;
    assert!(
        writes >= 2,
        "the pilots did not race: {writes} config writes"
    );
    let stored = assert_one_truth();
    assert_eq!(stored.len(), with_race);
    println!(
        "race: 3 pilots released at once on an empty VIP config, {with_race} services: {writes} config \
         writes (one won; the others got 412, re-read and adopted), one VIP per service"
    );
    LAB.ok(&["wait", "--timeout-seconds", "60"]);
}

/// Stops the virtual-ip-agent of `vm`, so that its health is the director's `job_state`
/// (the agent's report, while it runs, overrides it): these tests change the director.
fn health_from_the_director(vm: &str) {
    LAB.ok(&["process", vm, "virtual-ip-agent", "stop"]);
}

#[test]
fn killing_a_pilot_mid_push_loses_nothing() {
    let _lab = Lab::up(2);
    health_from_the_director("banana/1");
    let vips = assert_one_truth();
    let curls = CurlLoop::start(CLIENT_VM, &banana_url());
    // The pilot the client VM's Envoy is connected to.
    let clusters = in_vm(CLIENT_VM, &["curl", "-s", "127.0.0.1:8001/clusters"]);
    let clusters = String::from_utf8_lossy(&clusters.stdout).into_owned();
    let (victim, victim_ip) = pilots()
        .into_iter()
        .find(|(_, ip)| clusters.contains(&format!("xds_cluster::{ip}:15010::cx_active::1")))
        .expect("the client's Envoy is connected to a pilot");
    let (_, survivor_ip) = pilots()
        .into_iter()
        .find(|(name, _)| name != &victim)
        .unwrap();

    // A director change, and the pilot dies the moment it has it, while pushing it.
    LAB.ok(&["director", "set-state", "banana/1", "failing"]);
    wait_until("the pilot to learn of the change", || {
        healthy_banana_ips(&victim_ip).len() == 2
    });
    LAB.ok(&["process", &victim, "bosh-pilot", "kill"]);
    let killed = Instant::now();
    wait_until("the surviving pilot to drop banana/1", || {
        healthy_banana_ips(&survivor_ip).len() == 2
    });
    LAB.ok(&["wait", "--timeout-seconds", "60"]);
    let converged = killed.elapsed();
    let report = curls.stop();
    report.assert_no_failures("curl loop while a pilot was killed mid-push");

    LAB.ok(&["process", &victim, "bosh-pilot", "start"]);
    let back = wait_until("the restarted pilot to serve", || {
        vips_of(&victim_ip).is_some_and(|v| v == vips)
    });
    assert_eq!(assert_one_truth(), vips, "same VIPs after the restart");
    // A restarted pilot presumes the VMs it finds running until its first health reading
    // (docs/director-api.md §8), and banana/1 has no agent to say otherwise here.
    wait_until("the restarted pilot to read banana/1 failing", || {
        healthy_banana_ips(&victim_ip).len() == 2
    });
    // The restarted pilot learned the client VM's scope from its agent reconnecting
    // (docs/scope.md): when the client's Envoy moves to it, it gets that scope, not the whole
    // mesh, and the name it uses keeps working.
    let scope_before = LAB.mesh_clusters(CLIENT_VM);
    assert!(
        !scope_before.is_empty() && scope_before.iter().all(|c| c.ends_with(BANANA)),
        "the client VM resolved banana only: {scope_before:?}"
    );
    let (survivor, _) = pilots()
        .into_iter()
        .find(|(_, ip)| ip == &survivor_ip)
        .unwrap();
    LAB.ok(&["process", &survivor, "bosh-pilot", "kill"]);
    wait_until("the client's Envoy to move to the restarted pilot", || {
        let clusters = in_vm(CLIENT_VM, &["curl", "-s", "127.0.0.1:8001/clusters"]);
        String::from_utf8_lossy(&clusters.stdout)
            .contains(&format!("xds_cluster::{victim_ip}:15010::cx_active::1"))
    });
    let moved = CurlLoop::start(CLIENT_VM, &banana_url());
    std::thread::sleep(Duration::from_secs(2));
    moved
        .stop()
        .assert_no_failures("the client VM's Envoy on the restarted pilot");
    assert_eq!(
        LAB.mesh_clusters(CLIENT_VM),
        scope_before,
        "the restarted pilot served the client's scope, not the whole mesh"
    );
    println!(
        "pilot kill -9 mid-push: {} requests, 0 failed; every VM converged on the other pilot \
         {:.1}s after the kill; the restarted pilot served the same VIPs {:.1}s after start",
        report.requests,
        converged.as_secs_f64(),
        back.as_secs_f64()
    );
}

/// Error and warning lines added to every pilot's log since `offsets`.
fn new_problem_lines(offsets: &[usize]) -> Vec<Vec<String>> {
    pilots()
        .iter()
        .zip(offsets)
        .map(|((pilot, _), offset)| {
            pilot_log(pilot)[*offset..]
                .lines()
                .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
                .map(str::to_string)
                .collect()
        })
        .collect()
}

fn log_offsets() -> Vec<usize> {
    pilots().iter().map(|(p, _)| pilot_log(p).len()).collect()
}

/// Runs one director fault for `duration` with a curl loop running; checks the catalog stays
/// what it was, no request fails and each pilot says what is wrong a few times at most, not
/// once per poll; and that `change`, made to the director during the fault, reaches every
/// pilot by itself once the fault ends.
fn director_fault_case(
    name: &str,
    duration: Duration,
    start_fault: impl FnOnce(),
    end_fault: impl FnOnce(),
    change: Option<(&str, &str)>,
) {
    let pilot_ips: Vec<String> = pilots().into_iter().map(|(_, ip)| ip).collect();
    let before: Vec<Vec<Value>> = pilot_ips
        .iter()
        .map(|ip| LAB.registration_from(ip))
        .collect();
    let offsets = log_offsets();
    let requests_before = director_requests();
    let curls = CurlLoop::start(CLIENT_VM, &banana_url());
    start_fault();
    if let Some((vm, job_state)) = change {
        LAB.ok(&["director", "set-state", vm, job_state]);
    }
    let started = Instant::now();
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(500));
        for (ip, was) in pilot_ips.iter().zip(&before) {
            let now = LAB.registration_from(ip);
            let gone: Vec<&Value> = was.iter().filter(|e| !now.contains(e)).collect();
            let new: Vec<&Value> = now.iter().filter(|e| !was.contains(e)).collect();
            assert!(
                gone.is_empty() && new.is_empty(),
                "{name}: pilot {ip} changed its catalog while the director gave no good answer: \
                 {gone:#?} became {new:#?}"
            );
        }
    }
    end_fault();
    let ended = Instant::now();
    let recovered = match change {
        Some(_) => {
            wait_for_all_pilots("the pilots to see the change made during the fault", |ip| {
                healthy_banana_ips(ip).len() == 2
            })
        }
        None => Duration::ZERO,
    };
    LAB.ok(&["wait", "--timeout-seconds", "60"]);
    let report = curls.stop();
    report.assert_no_failures(name);
    let problems = new_problem_lines(&offsets);
    for lines in &problems {
        assert!(
            lines.len() <= 6,
            "{name}: a pilot logged {} error/warning lines (once per poll?):\n{}",
            lines.len(),
            lines.join("\n")
        );
    }
    let requests_after = director_requests();
    let polls = |counters: &Value| counters["GET /deployments"].as_u64().unwrap_or(0);
    let configs = |counters: &Value| counters["GET /configs"].as_u64().unwrap_or(0);
    let seen_after = match change {
        Some((vm, job_state)) => format!(
            "; {vm} set {job_state} during the fault reached every pilot {:.1}s after it ended",
            recovered.as_secs_f64()
        ),
        None => String::new(),
    };
    println!(
        "{name}: {:.0}s, {} requests through the mesh, 0 failed; the pilots sent {} deployment \
         polls and {} VIP config reads meanwhile and logged {:?} error/warning lines each{seen_after}",
        ended.duration_since(started).as_secs_f64(),
        report.requests,
        polls(&requests_after) - polls(&requests_before),
        configs(&requests_after) - configs(&requests_before),
        problems.iter().map(Vec::len).collect::<Vec<_>>(),
    );
    for line in problems.iter().flatten() {
        println!(
            "    {}",
            line.split_once(" boshy::")
                .map_or(line.as_str(), |(_, rest)| rest)
        );
    }
}

#[test]
fn director_faults_leave_the_mesh_alone() {
    let _lab = Lab::up(2);
    health_from_the_director("banana/1");
    let vips = assert_one_truth();

    // A minute of 500s from the director, with an instance failing meanwhile: nothing
    // changes until the director answers again, then the change arrives by itself.
    director_fault_case(
        "director 500",
        Duration::from_secs(60),
        || director_fault("http_500", None),
        || director_fault("none", None),
        Some(("banana/1", "failing")),
    );
    director_fault_case(
        "director hanging",
        Duration::from_secs(15),
        || director_fault("hang", None),
        || director_fault("none", None),
        Some(("banana/1", "running")),
    );
    // UAA hands out tokens the director rejects (every bearer token gets the plain 401).
    director_fault_case(
        "tokens rejected",
        Duration::from_secs(15),
        || director_fault("reject_tokens", None),
        || director_fault("none", None),
        Some(("banana/1", "failing")),
    );
    director_fault_case(
        "UAA down",
        Duration::from_secs(10),
        || {
            sim_control("POST", "/_sim/tokens/expire", None);
            director_fault("http_500", Some("/oauth"));
        },
        || director_fault("none", None),
        None,
    );

    // The sample manifest turns into invalid YAML: the last good one stays.
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/director/sample-deployment.yml"
    );
    let broken = std::env::temp_dir().join("boshy-f-broken-manifest.yml");
    std::fs::write(
        &broken,
        "name: sample-deployment\ninstance_groups: [\n  - {name: x",
    )
    .unwrap();
    let broken = broken.display().to_string();
    director_fault_case(
        "invalid manifest YAML",
        Duration::from_secs(10),
        || {
            LAB.ok(&["director", "manifest", "sample-deployment", &broken]);
        },
        || {
            LAB.ok(&["director", "manifest", "sample-deployment", fixture]);
        },
        None,
    );
    assert_eq!(
        assert_one_truth(),
        vips,
        "no VIP changed through the faults"
    );

    // A deployment vanishes and comes back. The director says it is gone, so its services
    // leave the catalog: that is right, not a fault to paper over. Its VIPs are released
    // into quarantine with their hostnames, so when it comes back its services get the same
    // VIPs and clients that cached a name reach the same service. (A separate deployment is
    // used so that the curl loop measures the mesh, not the deletion of its own target.)
    let manifest = vipless_deployment("vanishing", 3);
    sim_control(
        "POST",
        "/_sim/deployments",
        Some(json!({"name": "vanishing", "manifest": manifest})),
    );
    wait_for_all_pilots("the new deployment", |ip| {
        vips_of(ip).is_some_and(|v| v.len() == vips.len() + 3)
    });
    let with_vanishing = assert_one_truth();
    let curls = CurlLoop::start(CLIENT_VM, &banana_url());
    sim_control("DELETE", "/_sim/deployments/vanishing", None);
    let gone = wait_for_all_pilots("the deployment to leave every catalog", |ip| {
        vips_of(ip).is_some_and(|v| v.len() == vips.len())
    });
    let quarantined = director_config::read();
    assert_eq!(quarantined.assignments.len(), vips.len());
    assert_eq!(
        quarantined.released.len(),
        3,
        "the vanished services' VIPs are quarantined: {quarantined:?}"
    );
    sim_control(
        "POST",
        "/_sim/deployments",
        Some(json!({"name": "vanishing", "manifest": manifest})),
    );
    let back = wait_for_all_pilots("the deployment to come back", |ip| {
        vips_of(ip).is_some_and(|v| v.len() == vips.len() + 3)
    });
    assert_eq!(
        assert_one_truth(),
        with_vanishing,
        "the returning deployment's services got their old VIPs"
    );
    curls
        .stop()
        .assert_no_failures("curl loop while another deployment vanished and came back");
    println!(
        "deployment vanished: left every catalog after {:.1}s, came back with the same 3 VIPs \
         after {:.1}s",
        gone.as_secs_f64(),
        back.as_secs_f64()
    );
}

/// (type, name, version) of every listener, cluster and route config one Envoy holds, and
/// the CDS/LDS `version_info` it last accepted.
fn envoy_config(vm: &str) -> (BTreeSet<(String, String, String)>, Vec<String>) {
    let out = in_vm(
        vm,
        &[
            "curl",
            "-sf",
            "--max-time",
            "3",
            "127.0.0.1:8001/config_dump",
        ],
    );
    assert!(out.status.success(), "{vm}: Envoy admin does not answer");
    let dump: Value = serde_json::from_slice(&out.stdout).expect("config_dump JSON");
    let mut resources = BTreeSet::new();
    let mut versions = Vec::new();
    for config in dump["configs"].as_array().unwrap() {
        let kind = config["@type"]
            .as_str()
            .unwrap()
            .rsplit('.')
            .next()
            .unwrap()
            .to_string();
        if kind == "ClustersConfigDump" || kind == "ListenersConfigDump" {
            versions.push(
                config["version_info"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        for (list, name_of) in [
            ("dynamic_active_clusters", "/cluster/name"),
            ("dynamic_listeners", "/name"),
            ("dynamic_route_configs", "/route_config/name"),
        ] {
            for resource in config[list].as_array().into_iter().flatten() {
                let version = resource["version_info"]
                    .as_str()
                    .or(resource["active_state"]["version_info"].as_str())
                    .unwrap_or_default();
                let name = resource
                    .pointer(name_of)
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                resources.insert((kind.clone(), name.to_string(), version.to_string()));
            }
        }
    }
    (resources, versions)
}

fn dig(vm: &str, name: &str) -> String {
    let out = in_vm(
        vm,
        &["dig", "+short", "+time=1", "+tries=1", "@127.0.0.1", name],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn killed_processes_recover_within_seconds() {
    let _lab = Lab::up(2);
    let vips = assert_one_truth();
    let banana_vip = vips[BANANA].clone();
    let by_vip = format!("http://{banana_vip}:9002/get");
    let mut figures = Vec::new();

    // The control plane: one of two dies; the other carries on, nobody notices.
    let (pilot, pilot_ip) = pilots()[0].clone();
    let curls = CurlLoop::start(CLIENT_VM, &banana_url());
    LAB.ok(&["process", &pilot, "bosh-pilot", "kill"]);
    std::thread::sleep(Duration::from_secs(3));
    LAB.ok(&["process", &pilot, "bosh-pilot", "start"]);
    let back = wait_until("the restarted pilot to serve its catalog", || {
        vips_of(&pilot_ip).is_some_and(|v| v == vips)
    });
    let report = curls.stop();
    report.assert_no_failures("curl loop while a pilot was killed");
    figures.push(format!(
        "pilot kill -9: {} requests, 0 failed; serving again {:.2}s after start",
        report.requests,
        back.as_secs_f64()
    ));

    // The agent: DNS is down until it is back, but traffic to a VIP never needs it; the
    // restarted agent answers from its disk table at once.
    let curls = CurlLoop::start(CLIENT_VM, &by_vip);
    LAB.ok(&["process", CLIENT_VM, "virtual-ip-agent", "kill"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_ne!(
        dig(CLIENT_VM, BANANA),
        banana_vip,
        "no DNS while the agent is dead"
    );
    LAB.ok(&["process", CLIENT_VM, "virtual-ip-agent", "start"]);
    let started = Instant::now();
    let answering = wait_until("the agent to answer again", || {
        dig(CLIENT_VM, BANANA) == banana_vip
    });
    let report = curls.stop();
    report.assert_no_failures("curl loop by VIP while the agent was killed");
    assert!(started.elapsed() >= answering);
    figures.push(format!(
        "virtual-ip-agent kill -9: {} requests by VIP, 0 failed; answering names {:.2}s after start",
        report.requests,
        answering.as_secs_f64()
    ));

    // Envoy: that VM's outbound traffic stops until it is back (it is the data path); other
    // VMs do not notice; the restarted Envoy gets exactly the current config.
    let others = CurlLoop::start("banana/0", &banana_url());
    let mine = CurlLoop::start(CLIENT_VM, &banana_url());
    LAB.ok(&["process", CLIENT_VM, "envoy", "kill"]);
    std::thread::sleep(Duration::from_secs(1));
    LAB.ok(&["process", CLIENT_VM, "envoy", "start"]);
    let started = Instant::now();
    wait_until("the restarted Envoy to carry traffic", || {
        let out = in_vm(
            CLIENT_VM,
            &[
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "--max-time",
                "2",
                &banana_url(),
            ],
        );
        out.status.success()
    });
    std::thread::sleep(Duration::from_millis(500));
    let mine = mine.stop();
    let recovered = mine
        .first_success_after(started)
        .expect("a request succeeded after Envoy's restart");
    others
        .stop()
        .assert_no_failures("curl loop on another VM while Envoy was killed");
    // The VM's agent reported its ports failing while its Envoy's inbound listener was down
    // (docs/health.md): the catalog changed twice around the restart. Those changes are in
    // the endpoints alone, which reach the untouched Envoy without a new CDS or LDS version,
    // while the restarted one got its clusters and listeners during them: the two compare
    // by each resource's own version, once the mesh has converged.
    LAB.ok(&["wait", "--timeout-seconds", "60"]);
    let (restarted, versions) = envoy_config(CLIENT_VM);
    let (untouched, _) = envoy_config("banana/0");
    // Each Envoy also holds its own instance group's inbound listener (docs/security.md).
    let own_inbound_split = |config: &BTreeSet<(String, String, String)>| {
        config
            .iter()
            .cloned()
            .partition::<BTreeSet<_>, _>(|(_, name, _)| name.starts_with("inbound|"))
    };
    let (restarted_inbound, restarted) = own_inbound_split(&restarted);
    let (_, untouched) = own_inbound_split(&untouched);
    assert_eq!(
        restarted, untouched,
        "the restarted Envoy holds what the others hold"
    );
    assert!(
        restarted_inbound
            .iter()
            .any(|(_, name, _)| name == "inbound|sample-deployment|apricot"),
        "and its own inbound listener: {restarted_inbound:?}"
    );
    figures.push(format!(
        "envoy kill -9: {} of {} requests from that VM failed while it was down; carrying \
         traffic {:.2}s after start, with versions {versions:?}; other VMs: 0 \
         failed",
        mine.failures.len(),
        mine.requests,
        recovered.as_secs_f64()
    ));
    LAB.ok(&["wait", "--timeout-seconds", "60"]);
    for line in figures {
        println!("{line}");
    }
}
