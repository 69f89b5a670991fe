//! The agent side: probing the instance's own exposed ports.
//!
//! A port is healthy when a TCP connection to it from the VM opens within the probe interval.
//! That is what Envoy's connections to the instance need, it costs the VM a connection per
//! port per interval, and it needs no privilege: the agent runs unprivileged, and monit's
//! view of the processes would need the BOSH agent's monit credentials (root's). One failed
//! probe takes the port out and one good one brings it back: a refused connection is a
//! certain answer, and the pilot hears of a change within one interval.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::report::{AgentReport, ProbeSet};
use crate::catalog::model::InstanceRef;

/// Probes the latest probe set every `interval` and publishes the report whenever it changes
/// (`leaving` is the drain's flag, carried in every report). Runs until `reports` has no
/// receiver left.
pub async fn run(
    instance: InstanceRef,
    mut probes: watch::Receiver<Option<ProbeSet>>,
    mut leaving: watch::Receiver<bool>,
    reports: watch::Sender<Option<AgentReport>>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut logged: Option<BTreeSet<u16>> = None;
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
        let failing_ports = failing(&set, interval).await;
        if logged.as_ref() != Some(&failing_ports) {
            if failing_ports.is_empty() {
                tracing::info!(address = %set.address, ports = ?set.ports, "every exposed port accepts connections");
            } else {
                tracing::warn!(address = %set.address, failing = ?failing_ports, "exposed ports refuse connections: reported as failing");
            }
            logged = Some(failing_ports.clone());
        }
        let report = AgentReport {
            deployment: instance.deployment.clone(),
            instance: instance.instance_id.clone(),
            failing_ports,
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

/// The ports of `set` that do not accept a TCP connection within `timeout`, probed at once.
async fn failing(set: &ProbeSet, timeout: Duration) -> BTreeSet<u16> {
    let probes = set.ports.iter().map(|&port| async move {
        let open = matches!(
            tokio::time::timeout(timeout, connect(set.address, port)).await,
            Ok(Ok(_))
        );
        (port, open)
    });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .filter(|(_, open)| !open)
        .map(|(port, _)| port)
        .collect()
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
}
