//! The agent side: probing the instance's own exposed ports.
//!
//! A port is healthy when a TCP connection to it from the VM opens within the probe interval.
//! That is what Envoy's connections to the instance need, it costs the VM a connection per
//! port per interval, and it needs no privilege: the agent runs unprivileged, and monit's
//! view of the processes would need the BOSH agent's monit credentials (root's). One failed
//! probe takes the port out and one good one brings it back: a refused connection is a
//! certain answer, and the pilot hears of a change within one interval.
//!
//! With the inbound capture on, the agent also says whether mesh clients may speak mutual TLS
//! to the instance. Until it holds a workload certificate (the pilots have no mesh CA yet, or
//! have not signed), the report says `plaintext`, and clients call the instance in plaintext,
//! straight to its jobs, as Istio's do an endpoint without `tlsMode: istio`. Once it holds
//! one, a port is ready only when it is captured (`dnat follow` applied the pilots' list) and
//! its Envoy's inbound listener takes connections; before, it is reported failing, so no
//! client sends TLS to a job that cannot read it. Going out and back in also makes every
//! client Envoy drop its pooled plaintext connections to the instance (a host removed from a
//! load assignment has its connection pools drained), which a mere change of the `tlsMode`
//! label would not. A captured port whose Envoy's inbound listener does not take connections
//! (Envoy starting or down) refuses every caller: it is reported failing too. Reasons are in
//! the log.

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
    /// The job does not accept connections.
    JobRefuses,
    /// The agent holds a certificate, so mesh clients will speak mutual TLS, and the capture
    /// does not take the port yet.
    NotCaptured,
    /// The port is captured, and Envoy's inbound listener does not take connections.
    EnvoyInboundDown,
}

/// Why mesh clients are told to call the instance in plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plaintext {
    /// No inbound capture is configured (identity or capture off on this VM).
    NoCapture,
    /// The pilots have signed no workload certificate yet.
    NoCertificate,
}

/// One probe round's findings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Readiness {
    failing: BTreeMap<u16, NotReady>,
    /// None: mutual TLS.
    plaintext: Option<Plaintext>,
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
    let mut logged: Option<Readiness> = None;
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
        let readiness = readiness(&set, interval, capture.as_ref()).await;
        if logged.as_ref() != Some(&readiness) {
            log(&set, &readiness);
            logged = Some(readiness.clone());
        }
        let report = AgentReport {
            deployment: instance.deployment.clone(),
            instance: instance.instance_id.clone(),
            failing_ports: readiness.failing.into_keys().collect(),
            leaving: *leaving.borrow_and_update(),
            plaintext: readiness.plaintext.is_some(),
            probe: None,
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

fn log(set: &ProbeSet, readiness: &Readiness) {
    let plaintext = readiness.plaintext;
    if !readiness.failing.is_empty() {
        tracing::warn!(address = %set.address, failing = ?readiness.failing, ?plaintext, "exposed ports not ready: reported as failing");
    } else if let Some(why) = plaintext {
        tracing::info!(address = %set.address, ports = ?set.ports, plaintext = ?why, "every exposed port accepts connections; mesh clients call them in plaintext");
    } else {
        tracing::info!(address = %set.address, ports = ?set.ports, "every exposed port accepts connections, mutual TLS through the inbound capture");
    }
}

/// What one round finds: the ports of `set` whose job refuses, probed at once; then with
/// `capture`, whether the capture and its Envoy take them. A port the capture never takes
/// (`dnat::never_captured`) counts on its job alone.
async fn readiness(
    set: &ProbeSet,
    timeout: Duration,
    capture: Option<&InboundCapture>,
) -> Readiness {
    let probes = set
        .ports
        .iter()
        .map(|&port| async move { (port, opens(set.address, port, timeout).await) });
    let mut failing: BTreeMap<u16, NotReady> = futures::future::join_all(probes)
        .await
        .into_iter()
        .filter(|(_, open)| !open)
        .map(|(port, _)| (port, NotReady::JobRefuses))
        .collect();
    let Some(capture) = capture else {
        return Readiness {
            failing,
            plaintext: Some(Plaintext::NoCapture),
        };
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
    let certified = capture.certificates.borrow().is_some();
    for &port in &set.ports {
        if crate::dnat::never_captured(port, capture.envoy_port) {
            continue;
        }
        let captured = captured.contains(&port);
        let reason = if certified && !captured {
            NotReady::NotCaptured
        } else if captured && !envoy_up {
            // Every caller, plaintext or not, is sent to the listener that is down.
            NotReady::EnvoyInboundDown
        } else {
            continue;
        };
        failing.entry(port).or_insert(reason);
    }
    Readiness {
        failing,
        plaintext: (!certified).then_some(Plaintext::NoCertificate),
    }
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
    async fn plaintext_until_certified_then_a_port_waits_for_its_capture_and_envoys_listener() {
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
        let check = |capture| readiness(&set, timeout, capture);
        let ready = |plaintext| Readiness {
            failing: BTreeMap::new(),
            plaintext,
        };

        // Without the capture, the job alone counts, in plaintext.
        assert_eq!(check(None).await, ready(Some(Plaintext::NoCapture)));
        // No certificate yet: callers send plaintext, straight to the job.
        assert_eq!(
            check(Some(&capture)).await,
            ready(Some(Plaintext::NoCertificate))
        );
        certificate.send_replace(Some(std::sync::Arc::new(
            crate::identity::agent::WorkloadCertificate::for_tests("chain", "bundle", "key"),
        )));
        // Certified: clients will speak mutual TLS, so the port waits for its capture.
        let not_captured = Readiness {
            failing: BTreeMap::from([(port, NotReady::NotCaptured)]),
            plaintext: None,
        };
        assert_eq!(check(Some(&capture)).await, not_captured);
        std::fs::write(&capture.captured_file, "not json").unwrap();
        assert_eq!(check(Some(&capture)).await, not_captured);
        crate::dnat::write_ports_file(&capture.captured_file, &BTreeSet::from([port])).unwrap();
        assert_eq!(check(Some(&capture)).await, ready(None));
        // Captured, Envoy down: every caller is refused.
        drop(envoy);
        assert_eq!(
            check(Some(&capture)).await,
            Readiness {
                failing: BTreeMap::from([(port, NotReady::EnvoyInboundDown)]),
                plaintext: None,
            }
        );
        drop(job);
        assert_eq!(
            check(Some(&capture)).await.failing,
            BTreeMap::from([(port, NotReady::JobRefuses)])
        );
    }
}
