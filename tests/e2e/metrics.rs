//! Request metrics (docs/telemetry.md), in the lab of `tests/e2e.rs`, scraped by a real
//! Prometheus with the configuration `lab prometheus-config` prints (the one the README
//! shows): every pilot and every VM's Envoy metrics listener is up over mutual TLS; a known
//! number of requests and connections is counted exactly, on the caller's VM and on the
//! callee's, with both sides' BOSH names; Envoy's own stats come through the same listener.

use std::time::Duration;

use boshy_test_support::prometheus::{Prometheus, Sample};

use super::{APRICOT, BANANA, LAB};

const SCRAPED: Duration = Duration::from_secs(60);

fn total(samples: &[Sample]) -> f64 {
    samples.iter().map(|sample| sample.value).sum()
}

/// Prometheus's `bosh_instance` target label of a VM of sample-deployment.
fn bosh_instance(vm: &str) -> String {
    let vm = LAB.vm(&format!("sample-deployment/{vm}"));
    format!(
        "{}/{}",
        vm["instance_group"].as_str().unwrap(),
        vm["id"].as_str().unwrap()
    )
}

/// Envoy's metrics listener on a VM: nothing without a client certificate the mesh CA signed,
/// and with one, `GET /metrics` and `GET /stats/prometheus` alone (the admin API stays on
/// loopback).
fn only_the_metrics_and_only_to_a_mesh_certificate() {
    let ip = LAB.vm("sample-deployment/banana/0")["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    let target = (
        boshy_lab::pki::ADDON_SERVER_NAME,
        ip.as_str(),
        boshy_lab::prometheus::METRICS_PORT,
    );
    let curl = |certificate: bool, method: &str, path: &str| {
        LAB.https_status(target, method, path, certificate.then_some("prometheus"))
    };
    assert_eq!(
        curl(false, "GET", "/metrics"),
        "000",
        "no handshake without a certificate"
    );
    assert_eq!(curl(true, "GET", "/metrics"), "200");
    assert_eq!(curl(true, "GET", "/stats/prometheus"), "200");
    for (method, path) in [
        ("POST", "/quitquitquit"),
        ("GET", "/config_dump"),
        ("POST", "/stats/prometheus"),
        ("GET", "/stats"),
    ] {
        assert_eq!(curl(true, method, path), "404", "{method} {path}");
    }
}

pub(crate) fn prometheus_counts_requests_with_bosh_names() {
    let config = LAB.ok(&["prometheus-config", "--scrape-interval-seconds", "1"]);
    let targets = config.matches("targets:").count();
    let prometheus = Prometheus::start(&config);
    prometheus.wait_for(
        "every pilot and every VM's metrics listener scraped over mutual TLS",
        "up",
        SCRAPED,
        |up| up.len() == targets && up.iter().all(|target| target.value == 1.0),
    );
    let pilot = prometheus.query(r#"boshy_catalog_services{job="boshy-pilot"}"#);
    assert!(
        pilot.len() == 1 && pilot[0].value > 0.0,
        "the pilot's own metrics: {pilot:?}"
    );
    let vms = targets.saturating_sub(LAB.pilot_ips().len()) / 2;
    only_the_metrics_and_only_to_a_mesh_certificate();
    let live = prometheus.query(r#"envoy_server_live{job="envoy"}"#);
    assert_eq!(live.len(), vms, "Envoy's own stats from every VM: {live:?}");

    // HTTP: 7 requests that banana's httpbin answers with a code nothing else in the lab asks
    // for, from apricot/2.
    let requests = 7;
    for _ in 0..requests {
        let code = LAB.http_status(
            "apricot/2",
            &format!("http://{BANANA}:9002/status/418"),
            &[],
        );
        assert_eq!(code, "418");
    }
    let caller = bosh_instance("apricot/2");
    let outbound = r#"boshy_requests_total{reporter="source",response_code="418"}"#;
    let inbound = r#"boshy_requests_total{reporter="destination",response_code="418"}"#;
    for (promql, what) in [(outbound, "on the caller"), (inbound, "on the callees")] {
        prometheus.wait_for(what, promql, SCRAPED, |samples| {
            total(samples) >= f64::from(requests)
        });
    }
    // Two more scrapes: nothing counted twice, nothing late.
    std::thread::sleep(Duration::from_secs(3));
    let sent = prometheus.query(outbound);
    assert_eq!(total(&sent), f64::from(requests), "{sent:?}");
    let received = prometheus.query(inbound);
    assert_eq!(total(&received), f64::from(requests), "{received:?}");
    for sample in sent.iter().chain(&received) {
        for (label, value) in [
            ("source_deployment", "sample-deployment"),
            ("source_instance_group", "apricot"),
            ("destination_deployment", "sample-deployment"),
            ("destination_instance_group", "banana"),
            ("destination_job", "example-httpbin"),
            ("destination_service", BANANA),
            ("destination_port", "9002"),
            ("response_code_class", "4xx"),
            ("response_flags", "-"),
        ] {
            assert_eq!(sample.labels[label], value, "{label}: {sample:?}");
        }
    }
    assert!(
        sent.iter()
            .all(|sample| sample.labels["bosh_instance"] == caller),
        "counted on apricot/2's Envoy: {sent:?}"
    );
    assert!(
        received
            .iter()
            .all(|sample| sample.labels["bosh_instance"].starts_with("banana/")),
        "counted on banana's Envoys: {received:?}"
    );
    let durations = prometheus.query(
        r#"sum(boshy_request_duration_milliseconds_count{reporter="source",response_code_class="4xx",destination_service="example-httpbin.banana.sample-deployment.boshy"})"#,
    );
    assert_eq!(total(&durations), f64::from(requests), "{durations:?}");

    // TCP: 3 connections to apricot's tcp_proxy port from banana/2, counted when they open
    // and when they close.
    let banana2 = bosh_instance("banana/2");
    let tcp = |metric: &str| {
        format!(
            r#"sum({metric}{{reporter="source",bosh_instance="{banana2}",destination_service="{APRICOT}",destination_port="9001"}})"#
        )
    };
    let opened = tcp("boshy_tcp_connections_opened_total");
    let closed = tcp("boshy_tcp_connections_closed_total");
    let before = [&opened, &closed].map(|promql| total(&prometheus.query(promql)));
    let connections = 3;
    for _ in 0..connections {
        let code = LAB.http_status("banana/2", &format!("http://{APRICOT}:9001/get"), &[]);
        assert_eq!(code, "200");
    }
    for (promql, already) in [&opened, &closed].into_iter().zip(before) {
        prometheus.wait_for("TCP connections", promql, SCRAPED, |samples| {
            total(samples) >= already + f64::from(connections)
        });
    }
    std::thread::sleep(Duration::from_secs(3));
    for (promql, already) in [&opened, &closed].into_iter().zip(before) {
        let now = total(&prometheus.query(promql));
        assert_eq!(now - already, f64::from(connections), "{promql}");
    }
    let received = prometheus.query(&tcp("boshy_tcp_received_bytes_total"));
    assert!(total(&received) > 0.0, "bytes counted: {received:?}");
}
