//! The agent side: probing the instance's own exposed ports.
//!
//! A port is healthy when a TCP connection to it from the VM opens within the probe interval.
//! That is what Envoy's connections to the instance need, it costs the VM a connection per
//! port per interval, and it needs no privilege: the agent runs unprivileged, and monit's
//! view of the processes would need the BOSH agent's monit credentials (root's). One failed
//! probe takes the port out and one good one brings it back: a refused connection is a
//! certain answer, and the pilot hears of a change within one interval.
//!
//! With the inbound capture on, the port must also be on the way the mesh reaches it: a mesh
//! client speaks mutual TLS to the VM's Envoy, so a port the capture does not take yet (the VM
//! just booted and `dnat follow` has not applied the pilots' list) or whose Envoy's inbound
//! listener does not take connections (Envoy starting or down) would fail every mesh request.
//! Such a port is reported failing too, with its reason in the log.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::report::{AgentReport, ProbeSet};
use crate::catalog::model::InstanceRef;

/// The VM's inbound capture, as the agent checks it.
#[derive(Debug, Clone)]
pub struct InboundCapture {
    /// Envoy's inbound listener, where the capture sends the exposed ports.
    pub envoy_port: u16,
    /// What `dnat` records as captured (`dnat::captured_ports_path`).
    pub captured_file: PathBuf,
    /// The workload certificate the agent holds. None: the pilots sign none (no mesh CA yet),
    /// so no caller sends mutual TLS and the capture does not apply (the agent writes no
    /// ports to capture until it holds one).
    pub certificates: crate::identity::agent::Certificates,
}

/// Why an exposed port is reported failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotReady {
    /// The job refuses connections (or does not answer within the interval).
    JobRefuses,
    /// The inbound capture does not take the port yet.
    NotCaptured,
    /// Envoy's inbound listener does not take connections.
    EnvoyInboundDown,
}

/// Probes the latest probe set every `interval` and publishes the report whenever it changes
/// (`leaving` is the drain's flag, carried in every report). Runs until `reports` has no
/// receiver left.
pub async fn run(
    instance: InstanceRef,
    mut probes: watch::Receiver<Option<ProbeSet>>,
    mut leaving: watch::Receiver<bool>,
    reports: watch::Sender<Option<AgentReport>>,
    interval: Duration,
    capture: Option<InboundCapture>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut logged: Option<BTreeMap<u16, NotReady>> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            // New probes, or the drain: report at once rather than at the next tick.
            Ok(()) = probes.changed() => {}
            Ok(()) = leaving.changed() => {}
            () = reports.closed() => return,
        }
        let Some(set) = probes.borrow_and_update().clone() else {
            continue;
        };
        let not_ready = not_ready(&set, interval, capture.as_ref()).await;
        if logged.as_ref() != Some(&not_ready) {
            if not_ready.is_empty() {
                tracing::info!(address = %set.address, ports = ?set.ports, "every exposed port accepts connections");
            } else {
                tracing::warn!(address = %set.address, failing = ?not_ready, "exposed ports not ready: reported as failing");
            }
            logged = Some(not_ready.clone());
        }
        let report = AgentReport {
            deployment: instance.deployment.clone(),
            instance: instance.instance_id.clone(),
            failing_ports: not_ready.into_keys().collect(),
            leaving: *leaving.borrow_and_update(),
        };
        reports.send_if_modified(|current| {
            let differs = current.as_ref() != Some(&report);
            if differs {
                *current = Some(report);
            }
            differs
        });
    }
}

/// A probe's connection. Over IPv4 it comes from the address of Envoy's own hop to the jobs
/// (`dnat::INBOUND_HOP_SOURCE`), which the inbound capture lets through: the probe reaches the
/// job itself, not the VM's Envoy, which accepts whether or not the job is up.
async fn connect(address: std::net::IpAddr, port: u16) -> std::io::Result<TcpStream> {
    match address {
        std::net::IpAddr::V4(_) => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind((crate::dnat::INBOUND_HOP_SOURCE, 0).into())?;
            socket.connect((address, port).into()).await
        }
        std::net::IpAddr::V6(_) => TcpStream::connect((address, port)).await,
    }
}

/// Whether a TCP connection to `port` of `address` opens within `timeout`.
async fn opens(address: std::net::IpAddr, port: u16, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, connect(address, port)).await,
        Ok(Ok(_))
    )
}

/// The ports of `set` that are not ready, and why: the job's, probed at once, then with
/// `capture` the capture's and its Envoy's. A port the capture never takes
/// (`dnat::never_captured`) does not wait for it.
async fn not_ready(
    set: &ProbeSet,
    timeout: Duration,
    capture: Option<&InboundCapture>,
) -> BTreeMap<u16, NotReady> {
    let probes = set
        .ports
        .iter()
        .map(|&port| async move { (port, opens(set.address, port, timeout).await) });
    let mut not_ready: BTreeMap<u16, NotReady> = futures::future::join_all(probes)
        .await
        .into_iter()
        .filter(|(_, open)| !open)
        .map(|(port, _)| (port, NotReady::JobRefuses))
        .collect();
    let Some(capture) = capture.filter(|c| c.certificates.borrow().is_some()) else {
        return not_ready;
    };
    let captured: BTreeSet<u16> = match tokio::fs::read(&capture.captured_file).await {
        Ok(bytes) => crate::dnat::parse_ports_file(&capture.captured_file, &bytes)
            .map(|ports| ports.into_iter().collect())
            .unwrap_or_default(),
        Err(_) => BTreeSet::new(),
    };
    let envoy_up = opens(
        std::net::Ipv4Addr::LOCALHOST.into(),
        capture.envoy_port,
        timeout,
    )
    .await;
    for &port in &set.ports {
        let reason = if crate::dnat::never_captured(port, capture.envoy_port) {
            continue;
        } else if !captured.contains(&port) {
            NotReady::NotCaptured
        } else if !envoy_up {
            NotReady::EnvoyInboundDown
        } else {
            continue;
        };
        not_ready.entry(port).or_insert(reason);
    }
    not_ready
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_reported_failing_an_open_one_not_and_leaving_is_carried() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let open_port = open.local_addr().unwrap().port();
        let instance = InstanceRef {
            deployment: "d".into(),
            instance_id: "a".into(),
        };
        let (probes_tx, probes_rx) = watch::channel(None);
        let (leaving_tx, leaving_rx) = watch::channel(false);
        let (reports_tx, mut reports) = watch::channel(None);
        tokio::spawn(run(
            instance,
            probes_rx,
            leaving_rx,
            reports_tx,
            Duration::from_millis(50),
            None,
        ));
        let mut ports = vec![open_port, closed_port];
        ports.sort();
        probes_tx.send_replace(Some(ProbeSet {
            address: [127, 0, 0, 1].into(),
            ports,
        }));
        let report = reports
            .wait_for(Option::is_some)
            .await
            .unwrap()
            .clone()
            .unwrap();
        assert_eq!(report.failing_ports, BTreeSet::from([closed_port]));
        assert!(!report.leaving);

        leaving_tx.send_replace(true);
        let report = reports
            .wait_for(|r| r.as_ref().is_some_and(|r| r.leaving))
            .await
            .unwrap()
            .clone()
            .unwrap();
        assert_eq!(report.failing_ports, BTreeSet::from([closed_port]));

        // The port comes back (here: the instance no longer exposes the closed one).
        probes_tx.send_replace(Some(ProbeSet {
            address: [127, 0, 0, 1].into(),
            ports: vec![open_port],
        }));
        let report = reports
            .wait_for(|r| r.as_ref().is_some_and(|r| r.failing_ports.is_empty()))
            .await
            .unwrap();
        assert!(report.as_ref().unwrap().leaving);
    }

    #[tokio::test]
    async fn with_the_capture_a_port_waits_for_its_capture_and_for_envoys_inbound_listener() {
        let job = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = job.local_addr().unwrap().port();
        let envoy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (certificate, certificates) = watch::channel(None);
        let capture = InboundCapture {
            envoy_port: envoy.local_addr().unwrap().port(),
            captured_file: dir.path().join("inbound_ports.captured.json"),
            certificates,
        };
        let set = ProbeSet {
            address: [127, 0, 0, 1].into(),
            ports: vec![port],
        };
        let timeout = Duration::from_millis(500);
        let check = |capture| not_ready(&set, timeout, capture);
        let failing = |reason| BTreeMap::from([(port, reason)]);

        // No certificate yet: callers send plaintext, straight to the job.
        assert_eq!(check(Some(&capture)).await, BTreeMap::new());
        certificate.send_replace(Some(std::sync::Arc::new(
            crate::identity::agent::WorkloadCertificate::for_tests("chain", "bundle", "key"),
        )));
        assert_eq!(check(Some(&capture)).await, failing(NotReady::NotCaptured));
        // Without the capture, the job alone counts.
        assert_eq!(check(None).await, BTreeMap::new());
        std::fs::write(&capture.captured_file, "not json").unwrap();
        assert_eq!(check(Some(&capture)).await, failing(NotReady::NotCaptured));
        crate::dnat::write_ports_file(&capture.captured_file, &BTreeSet::from([port])).unwrap();
        assert_eq!(check(Some(&capture)).await, BTreeMap::new());
        drop(envoy);
        assert_eq!(
            check(Some(&capture)).await,
            failing(NotReady::EnvoyInboundDown)
        );
        drop(job);
        assert_eq!(check(Some(&capture)).await, failing(NotReady::JobRefuses));
    }
}
