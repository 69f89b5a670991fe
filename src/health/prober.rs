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
//!
//! A VM registered into a WorkloadGroup (the pilots' probe set says `workload`) runs the
//! group's readiness probe instead of connecting to its ports (`readiness`: Kubernetes'
//! semantics, its own period), and its report carries the probe's verdict. Its ports still
//! count for the capture as above. Its report is also sent every `heartbeat_seconds` even
//! when nothing changed: the pilots take a registered VM out when its reports stop, since no
//! director vouches for it. BOSH instances report on change only: thousands of them
//! re-sending unchanged reports would load every pilot for nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::readiness::{self, Timing};
use super::report::{AgentReport, ProbeSet, ProbeVerdict, WorkloadProbe};
use crate::catalog::model::{InstanceRef, Probe};

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
/// (`leaving` is the drain's flag, carried in every report); for a WorkloadGroup member, also
/// every heartbeat, unchanged or not (`watch` receivers see a send of the same value as a
/// change: that is how the followers know to send it again, each to its pilot). Runs until
/// `reports` has no receiver left.
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
    let mut workload: Option<Workload> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            // New probes, the drain or a new verdict: report at once rather than at the next
            // tick.
            Ok(()) = probes.changed() => {}
            Ok(()) = leaving.changed() => {}
            event = Workload::next(workload.as_mut()) => {
                if event == WorkloadEvent::Heartbeat {
                    reports.send_if_modified(|current| current.is_some());
                    continue;
                }
            }
            () = reports.closed() => return,
        }
        let Some(set) = probes.borrow_and_update().clone() else {
            continue;
        };
        Workload::follow(&mut workload, &set);
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
            probe: workload.as_mut().map(Workload::verdict),
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

/// A WorkloadGroup member's probe, running, and its heartbeat.
struct Workload {
    /// What the runner probes: another probe or address starts another runner.
    probing: (Option<Probe>, std::net::IpAddr),
    /// The runner's verdicts; the runner stops when this is dropped. Without a probe, a
    /// constant passing verdict (its sender dropped).
    verdicts: watch::Receiver<ProbeVerdict>,
    heartbeat_seconds: u32,
    heartbeat: tokio::time::Interval,
}

impl Workload {
    /// Starts, replaces or stops `current` as the pilots' `set` says.
    fn follow(current: &mut Option<Workload>, set: &ProbeSet) {
        let Some(wanted) = &set.workload else {
            *current = None;
            return;
        };
        let probing = (wanted.probe.clone(), set.address);
        match current {
            Some(workload) if workload.probing == probing => {
                if workload.heartbeat_seconds != wanted.heartbeat_seconds {
                    workload.heartbeat_seconds = wanted.heartbeat_seconds;
                    workload.heartbeat = heartbeat(wanted);
                }
            }
            _ => *current = Some(Workload::start(wanted, set.address)),
        }
    }

    fn start(wanted: &WorkloadProbe, address: std::net::IpAddr) -> Workload {
        let verdicts = match &wanted.probe {
            Some(probe) => {
                let timing = Timing::of(probe);
                let (tx, rx) = watch::channel(readiness::Thresholds::waiting(&timing));
                tokio::spawn(readiness::run(probe.clone(), address, timing, tx));
                tracing::info!(%address, heartbeat_seconds = wanted.heartbeat_seconds, "a WorkloadGroup member: running the group's readiness probe");
                rx
            }
            None => {
                tracing::info!(%address, heartbeat_seconds = wanted.heartbeat_seconds, "a WorkloadGroup member whose group has no readiness probe: ready while it reports");
                watch::channel(ProbeVerdict {
                    passing: true,
                    detail: String::new(),
                })
                .1
            }
        };
        Workload {
            probing: (wanted.probe.clone(), address),
            verdicts,
            heartbeat_seconds: wanted.heartbeat_seconds,
            heartbeat: heartbeat(wanted),
        }
    }

    fn verdict(&mut self) -> ProbeVerdict {
        self.verdicts.borrow_and_update().clone()
    }

    /// A new verdict or the next heartbeat, whichever comes first; pending without a
    /// workload.
    async fn next(workload: Option<&mut Workload>) -> WorkloadEvent {
        let Some(workload) = workload else {
            return std::future::pending().await;
        };
        let verdicts = &mut workload.verdicts;
        tokio::select! {
            // Without a runner (no probe) the sender is gone: never a new verdict.
            Ok(()) = verdicts.changed() => WorkloadEvent::Verdict,
            _ = workload.heartbeat.tick() => WorkloadEvent::Heartbeat,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkloadEvent {
    Verdict,
    Heartbeat,
}

/// Ticks every `heartbeat_seconds` (at least 1), the first a period from now: a report
/// goes out when the probe set arrives anyway.
fn heartbeat(wanted: &WorkloadProbe) -> tokio::time::Interval {
    let period = Duration::from_secs(u64::from(wanted.heartbeat_seconds.max(1)));
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// A probe's connection. Over IPv4 it comes from the address of Envoy's own hop to the jobs
/// (`dnat::INBOUND_HOP_SOURCE`), which the inbound capture lets through: the probe reaches the
/// job itself, not the VM's Envoy, which accepts whether or not the job is up.
pub(crate) async fn connect(address: std::net::IpAddr, port: u16) -> std::io::Result<TcpStream> {
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
    if set.workload.is_some() {
        // Its ports were not probed: only what the capture says is news.
        if !readiness.failing.is_empty() {
            tracing::warn!(address = %set.address, failing = ?readiness.failing, ?plaintext, "ports not ready for the mesh's callers: reported as failing");
        } else {
            tracing::info!(address = %set.address, ports = ?set.ports, ?plaintext, "the ports are ready for the mesh's callers");
        }
    } else if !readiness.failing.is_empty() {
        tracing::warn!(address = %set.address, failing = ?readiness.failing, ?plaintext, "exposed ports not ready: reported as failing");
    } else if let Some(why) = plaintext {
        tracing::info!(address = %set.address, ports = ?set.ports, plaintext = ?why, "every exposed port accepts connections; mesh clients call them in plaintext");
    } else {
        tracing::info!(address = %set.address, ports = ?set.ports, "every exposed port accepts connections, mutual TLS through the inbound capture");
    }
}

/// What one round finds: the ports of `set` whose job refuses, probed at once (not for a
/// WorkloadGroup member, whose group's readiness probe judges its jobs, as Kubernetes' does);
/// then with `capture`, whether the capture and its Envoy take them. A port the capture never
/// takes (`dnat::never_captured`) counts on its job alone.
async fn readiness(
    set: &ProbeSet,
    timeout: Duration,
    capture: Option<&InboundCapture>,
) -> Readiness {
    let job_ports = set.ports.iter().filter(|_| set.workload.is_none());
    let probes =
        job_ports.map(|&port| async move { (port, opens(set.address, port, timeout).await) });
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
            workload: None,
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
            workload: None,
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
            workload: None,
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

    /// `run` for instance `d/a` with the probe set `set`: the probe set's sender (kept, or
    /// the prober sees no more sets), the drain's (idem) and the reports.
    fn start(
        set: ProbeSet,
        interval: Duration,
    ) -> (
        watch::Sender<Option<ProbeSet>>,
        watch::Sender<bool>,
        watch::Receiver<Option<AgentReport>>,
    ) {
        let instance = InstanceRef {
            deployment: "d".into(),
            instance_id: "a".into(),
        };
        let (probes_tx, probes_rx) = watch::channel(Some(set));
        let (leaving_tx, leaving_rx) = watch::channel(false);
        let (reports_tx, reports) = watch::channel(None);
        tokio::spawn(run(
            instance, probes_rx, leaving_rx, reports_tx, interval, None,
        ));
        (probes_tx, leaving_tx, reports)
    }

    fn member(ports: Vec<u16>, probe: Option<Probe>, heartbeat_seconds: u32) -> ProbeSet {
        ProbeSet {
            address: [127, 0, 0, 1].into(),
            ports,
            workload: Some(WorkloadProbe {
                probe,
                heartbeat_seconds,
            }),
        }
    }

    // Paused time: the heartbeats come as soon as nothing else is left to do, and no I/O
    // happens (no port, no probe), so the clock jumping ahead changes no outcome.
    #[tokio::test(start_paused = true)]
    async fn a_workload_member_reports_every_heartbeat_unchanged_and_a_bosh_instance_does_not() {
        let (probes, _leaving, mut reports) =
            start(member(vec![], None, 10), Duration::from_millis(50));
        let first = reports
            .wait_for(Option::is_some)
            .await
            .unwrap()
            .clone()
            .unwrap();
        assert_eq!(
            first.probe,
            Some(ProbeVerdict {
                passing: true,
                detail: String::new()
            }),
            "a group without a probe: ready while it reports"
        );
        for _ in 0..3 {
            reports.changed().await.unwrap();
            assert_eq!(
                reports.borrow_and_update().as_ref(),
                Some(&first),
                "the same report, again"
            );
        }
        // The same instance as a BOSH one: its report, then nothing while nothing changes.
        probes.send_replace(Some(ProbeSet {
            workload: None,
            ..member(vec![], None, 10)
        }));
        reports
            .wait_for(|r| r.as_ref().is_some_and(|r| r.probe.is_none()))
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(600), reports.changed())
                .await
                .is_err(),
            "no heartbeat for a BOSH instance"
        );
    }

    #[tokio::test]
    async fn a_workload_members_report_carries_its_probes_verdict_and_its_ports_are_not_connected_to(
    ) {
        let job = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = job.local_addr().unwrap().port();
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let probe = Probe {
            initial_delay_seconds: 0,
            timeout_seconds: 1,
            period_seconds: 1,
            success_threshold: 1,
            failure_threshold: 1,
            action: crate::catalog::model::ProbeAction::TcpSocket { host: None, port },
        };
        let (_probes, _leaving, mut reports) = start(
            member(vec![closed_port], Some(probe), 3600),
            Duration::from_millis(50),
        );
        let passing = reports
            .wait_for(|r| {
                r.as_ref()
                    .is_some_and(|r| r.probe.as_ref().is_some_and(|p| p.passing))
            })
            .await
            .unwrap()
            .clone()
            .unwrap();
        assert!(
            passing.failing_ports.is_empty(),
            "the probe judges the jobs, not a connection to each port"
        );
        drop(job);
        let failing = reports
            .wait_for(|r| {
                r.as_ref()
                    .is_some_and(|r| r.probe.as_ref().is_some_and(|p| !p.passing))
            })
            .await
            .unwrap()
            .clone()
            .unwrap();
        let detail = failing.probe.unwrap().detail;
        assert!(detail.contains(&format!("127.0.0.1:{port}")), "{detail}");
    }
}
