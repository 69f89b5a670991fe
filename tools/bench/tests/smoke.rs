//! Every benchmark harness of `scripts/bench`, run at tiny sizes so it cannot rot: each must
//! finish and write rows that the report renders. The figures themselves are not checked (they
//! are benchmark results, not behaviour); the rows' presence and shape are.
//!
//! Needs root (namespaces, the lab), dnsperf, dnsmasq, taskset, unshare and Envoy
//! (`BOSHY_ENVOY` or `envoy` on PATH), as `scripts/test` provides.

use std::path::Path;
use std::process::Command;

use boshy_bench::report::{read_rows, Row};

fn bench(args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_boshy-bench"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run boshy-bench");
    assert!(
        output.status.success(),
        "`boshy-bench {}` failed:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn rows(path: &Path) -> Vec<Row> {
    serde_json::from_slice(&std::fs::read(path).expect("a rows file")).expect("rows JSON")
}

fn figures(rows: &[Row]) -> Vec<&str> {
    rows.iter().map(|r| r.figure.as_str()).collect()
}

#[test]
fn build_harness_writes_rows_for_every_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("build.json");
    bench(&[
        "build",
        "--sizes",
        "10,30",
        "--repeat",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let rows = rows(&out);
    let names = figures(&rows);
    assert!(
        names.contains(&"10 services: VIPs + catalog + xDS, cold"),
        "{names:?}"
    );
    assert!(
        names.contains(&"30 services: build time per service"),
        "{names:?}"
    );
    assert!(
        rows.iter().all(|r| r.value.is_finite() && r.value > 0.0),
        "{rows:?}"
    );
}

#[test]
fn dns_harness_measures_the_agent_and_dnsmasq() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dns.json");
    bench(&[
        "dns",
        "--names",
        "200",
        "--seconds",
        "1",
        "--latency-seconds",
        "1",
        "--latency-qps",
        "500",
        "--rounds",
        "1",
        "--port",
        "18253",
        "--out",
        out.to_str().unwrap(),
    ]);
    let rows = rows(&out);
    let qps = rows
        .iter()
        .find(|r| r.figure == "agent queries/s measured (fast path)")
        .expect("the agent's queries/s");
    assert!(
        qps.value > 0.0 && qps.reference.as_ref().unwrap().value > 0.0,
        "{qps:?}"
    );
    assert!(figures(&rows).contains(&"agent RSS with 200 names"));
}

#[test]
fn envoy_memory_harness_reads_a_configured_envoys_rss() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("envoy-memory.json");
    bench(&[
        "envoy-memory",
        "--services",
        "5",
        "--instances",
        "2",
        "--scoped",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let rows = rows(&out);
    assert_eq!(
        figures(&rows),
        [
            "Envoy RSS with 5 services × 2 instances in its config",
            "Envoy RSS with 5 services × 0 instances in its config",
            "Envoy RSS with 2 services × 2 instances in its config",
            "Envoy anonymous memory, mesh of 5 services × 2, VM using 2",
            "Envoy RSS with request metrics on, 10 services × 2 instances",
            "Envoy RSS with request metrics on, 5 services × 2 instances",
        ]
    );
    for metrics in &rows[4..] {
        assert!(
            metrics.value > 0.0 && metrics.reference.as_ref().is_some_and(|r| r.value > 0.0),
            "metrics on, beside off: {metrics:?}"
        );
    }
    let scoped = &rows[3];
    assert!(
        scoped.reference.as_ref().is_some_and(|r| r.value > 0.0),
        "the same VM in a small mesh beside it: {scoped:?}"
    );
    assert!(
        scoped
            .note
            .as_deref()
            .unwrap_or_default()
            .starts_with("4 clusters"),
        "the scope's 2 services, 2 ports each: {scoped:?}"
    );
    assert!(rows.iter().all(|r| r.value > 1.0), "{rows:?}");
}

#[test]
fn director_harness_measures_the_first_catalog_and_the_health_budget() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("director.json");
    bench(&[
        "director",
        "--deployments",
        "3",
        "--groups",
        "2",
        "--instances",
        "2",
        "--task-delay-ms",
        "20",
        "--steady-seconds",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let rows = rows(&out);
    let first = rows
        .iter()
        .find(|r| r.figure == "first catalog, 3 deployments")
        .unwrap_or_else(|| panic!("no first catalog row: {:?}", figures(&rows)));
    assert!(first.value > 0.0 && first.reference.is_some(), "{first:?}");
    assert!(
        figures(&rows).contains(&"health tasks a minute, 1 deployment"),
        "{:?}",
        figures(&rows)
    );
}

#[test]
fn csr_harness_measures_signing_over_the_names_port_a_burst_and_xds_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("csr.json");
    bench(&[
        "csr",
        "--clients",
        "1,2",
        "--seconds",
        "1",
        "--burst",
        "20",
        "--xds-streams",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    let rows = rows(&out);
    assert_eq!(
        figures(&rows),
        [
            "signing alone, one core",
            "signed a second, 1 client",
            "signed a second, 2 clients",
            "20 requests at once: the last certificate",
            "3 new Envoys' whole configuration during the burst",
        ]
    );
    assert!(
        rows[4].reference.is_some(),
        "the same Envoys with the pilot idle: {:?}",
        rows[4]
    );
    assert!(
        rows.iter().all(|r| r.value.is_finite() && r.value > 0.0),
        "{rows:?}"
    );
    let burst = &rows[3];
    assert_eq!(burst.met, Some(true), "every request answered: {burst:?}");
}

#[test]
fn fleet_harness_measures_a_pilot_with_agents_and_envoys_through_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fleet.json");
    bench(&[
        "fleet",
        "--clients",
        "6",
        "--reference",
        "3",
        "--deployments",
        "2",
        "--groups",
        "2",
        "--instances",
        "2",
        "--steady-seconds",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let rows = rows(&out);
    let names = figures(&rows);
    for figure in [
        "pilot RSS, 6 agents + 6 Envoys connected (steady)",
        "mass reconnect after kill -9: last of 6 Envoys fully synced",
        "mass reconnect after kill -9: all 6 agents report again",
        "pilot RSS, 6 + 6 connected, with every agent's calls window",
    ] {
        assert!(names.contains(&figure), "{figure}: {names:?}");
    }
    // The harness itself fails unless the graph has every edge of the agents' windows.
    let graph = rows
        .iter()
        .find(|r| r.figure == "GET /v1/graph with 6 agents' calls windows current")
        .expect("the graph's row");
    assert!(
        graph.value > 0.0 && graph.reference.as_ref().is_some_and(|r| r.value > 0.0),
        "{graph:?}"
    );
    let timed: Vec<&Row> = rows.iter().filter(|r| r.unit == "s").collect();
    assert!(
        timed
            .iter()
            .filter(|r| !r.figure.starts_with("pilot CPU"))
            .all(|r| r.value > 0.0 && r.reference.is_some()),
        "{rows:?}"
    );
}

#[test]
fn push_harness_measures_delta_beside_state_of_the_world() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("push.json");
    bench(&[
        "push",
        "--streams",
        "3",
        "--ads",
        "delta,sotw",
        "--services",
        "4",
        "--instances",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let rows = rows(&out);
    for change in ["service", "rule"] {
        let figure =
            format!("delta, 3 streams, 4 services × 2 with rules: {change} change → last ACK");
        let row = rows
            .iter()
            .find(|r| r.figure == figure)
            .unwrap_or_else(|| panic!("no {figure:?} row: {:?}", figures(&rows)));
        let reference = row.reference.as_ref().expect("the same figure over SotW");
        assert!(row.value > 0.0 && reference.value > 0.0, "{row:?}");
    }
}

#[test]
fn rules_harness_measures_rules_beside_the_build_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rules.json");
    bench(&[
        "rules",
        "--services",
        "20",
        "--repeat",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let rows = rows(&out);
    assert!(
        figures(&rows).contains(&"20 services: parse + validate + compile every service's rules"),
        "{rows:?}"
    );
    assert!(
        rows.iter().all(|r| r.value > 0.0 && r.ratio().is_some()),
        "{rows:?}"
    );
}

/// The lab harness in a lab of its own, as short as it goes: one trial of each change, a
/// two-second idle window and one second of load.
#[test]
fn lab_harness_measures_convergence_requests_and_the_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    bench(&[
        "lab",
        "--lab",
        "boshy-bs",
        "--subnet",
        "10.248.0.0/24",
        "--trials",
        "1",
        "--steady-seconds",
        "2",
        "--load-seconds",
        "1",
        "--load-rate",
        "50",
        "--update-seconds",
        "14",
        "--out-dir",
        dir.path().to_str().unwrap(),
    ]);
    let all = read_rows(dir.path()).unwrap();
    let convergence = figures(&all["convergence"]);
    for figure in [
        "instance added: p99 to every Envoy",
        "process killed (agent): p99 to every Envoy",
        "failed requests during a rolling update of banana, 50 req/s",
    ] {
        assert!(convergence.contains(&figure), "{figure} in {convergence:?}");
    }
    assert!(figures(&all["steady"]).contains(&"topology-check requests per poll tick"));
    assert!(figures(&all["dataplane"])
        .contains(&"added p99 latency through the mesh (two Envoys, mutual TLS)"));

    let results = dir.path().join("results.md");
    bench(&[
        "report",
        "--rows",
        dir.path().to_str().unwrap(),
        "--notes",
        "/nonexistent",
        "--out",
        results.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(results).unwrap();
    assert!(text.contains("## Convergence"), "{text}");
    assert!(
        text.contains("Not measured yet"),
        "DNS was not run here: {text}"
    );
}

#[test]
fn workloads_harness_registers_vms_that_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("workloads.json");
    bench(&[
        "workloads",
        "--vms",
        "12",
        "--burst",
        "5",
        "--heartbeat-seconds",
        "1",
        "--steady-seconds",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    let rows = rows(&out);
    let names = figures(&rows);
    for figure in [
        "pilot RSS, 12 VMs registered and heartbeating",
        "pilot RSS, 12 BOSH VMs' agents connected, no registration",
        "director writes a minute, 12 VMs heartbeating",
        "director writes for 5 joins at once",
    ] {
        assert!(names.contains(&figure), "{figure}: {names:?}");
    }
    // The harness itself fails unless every VM joined and shows healthy; a burst costs at
    // least one write (the registrations are in the director) and heartbeats none.
    let writes = |figure: &str| rows.iter().find(|r| r.figure == figure).unwrap().value;
    assert!(
        writes("director writes for 5 joins at once") >= 1.0,
        "{rows:?}"
    );
    assert_eq!(
        writes("director writes a minute, 12 VMs heartbeating"),
        0.0,
        "{rows:?}"
    );
}
