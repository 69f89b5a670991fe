//! What travels between an agent and a pilot about its instance's health.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::catalog::model::{InstanceRef, Probe};

/// Where the agent reports: `POST` with an [`AgentReport`] as JSON, on the names port.
pub(crate) const REPORT_PATH: &str = "/v1/names/health";

/// Where a drain waits until no Envoy sends the instance new requests: `GET` with
/// `?deployment=&instance=&timeout_seconds=`, on the names port.
pub(crate) const DRAINED_PATH: &str = "/v1/names/drained";

/// What one instance's agent probes: its exposed ports at its own address, sorted and
/// distinct. Sent by the pilot on the name-table stream of an agent that named its instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSet {
    /// The instance's address, as the director lists it: the one its jobs serve on.
    pub address: IpAddr,
    pub ports: Vec<u16>,
    /// The instance is a VM registered into a WorkloadGroup (docs/workloads.md): its agent
    /// runs the group's probe, and reports every `heartbeat_seconds` even when nothing
    /// changed. Absent for BOSH instances (and from pilots of an earlier release), which are
    /// judged by `ports` and report on change only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadProbe>,
}

/// What the agent of a VM registered into a WorkloadGroup runs and how often it reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadProbe {
    /// The group's readiness probe; `None` when the group has none: the member is ready
    /// while its agent reports, as a Kubernetes container without a readiness probe is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
    /// The heartbeat: the pilots take a member out when no report came for a while, so its
    /// agent sends its report this often even unchanged. At least 1.
    pub heartbeat_seconds: u32,
}

/// One agent's report of its instance: sent when it changes, and again on every new stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentReport {
    pub deployment: String,
    /// The director's instance id.
    pub instance: String,
    /// The probed ports that did not accept a connection at the last probe.
    #[serde(default)]
    pub failing_ports: BTreeSet<u16>,
    /// The instance's drain script ran: BOSH is about to stop its jobs.
    #[serde(default)]
    pub leaving: bool,
    /// The instance's Envoy does not take mutual TLS on its exposed ports (yet): no workload
    /// certificate, no inbound capture configured, or a port not captured yet. Mesh clients
    /// call it in plaintext, as Istio's clients do an endpoint without `tlsMode: istio`.
    /// Absent (an agent of an earlier release): false, mutual TLS as the pilots' CA says.
    #[serde(default)]
    pub plaintext: bool,
    /// A VM registered into a WorkloadGroup (docs/workloads.md): the last verdict of the
    /// group's readiness probe, run by its agent. Absent for BOSH instances, whose exposed
    /// ports are what `failing_ports` judges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeVerdict>,
}

/// The verdict of a WorkloadGroup's readiness probe after its thresholds: passing once it
/// succeeded `successThreshold` times in a row, failing once it failed `failureThreshold`
/// times in a row (and before the first verdict).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeVerdict {
    pub passing: bool,
    /// Why the last attempt failed (clipped), or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl AgentReport {
    pub fn instance_ref(&self) -> InstanceRef {
        InstanceRef {
            deployment: self.deployment.clone(),
            instance_id: self.instance.clone(),
        }
    }
}
