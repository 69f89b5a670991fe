//! Health reported by the VMs themselves (docs/health.md).
//!
//! The virtual-ip-agent on every VM already holds the name-table stream to each pilot. On
//! that stream it names its BOSH instance; the pilot checks the name against the director's
//! list (the instance must be listed at the address the stream comes from) and answers with
//! what to probe: the instance's own exposed ports. The agent connects to each port every
//! probe interval and reports the ports that fail, and whether the instance is leaving (its
//! drain script ran), to the pilot at once. While an agent's stream is open its report decides
//! the health of its instance's endpoints; the director's `job_state` is the fallback for
//! instances with no connected agent.
//!
//! - [`report`]: the wire types (what to probe, what the agent reports); pure.
//! - [`registry`]: the pilot's record of connected agents and their reports (a pure state
//!   behind a mutex), published as [`AgentHealth`] and the set of instances it covers.
//! - [`overlay`]: pure: a catalog with the agents' health applied to its endpoints, and the
//!   index of what each instance probes.
//! - [`prober`]: the agent side: probing the ports, running a WorkloadGroup member's
//!   readiness probe, the report and its heartbeat; I/O.
//! - [`readiness`]: a WorkloadGroup's readiness probe with Kubernetes' semantics: the
//!   thresholds and the requests (pure), the attempts (I/O).

pub mod overlay;
pub mod prober;
pub(crate) mod readiness;
pub mod registry;
pub mod report;

pub use overlay::{apply, apply_if_changed, instance_out, ProbeIndex};
pub use registry::{AgentHealth, AgentRegistry, InstanceHealth, XdsView};
pub use report::{AgentReport, ProbeSet, ProbeVerdict, WorkloadProbe};

#[cfg(test)]
pub(crate) mod testing {
    //! What the health tests share: instance `id` of deployment `d`, and its agent's reports.

    use super::AgentReport;
    use crate::catalog::model::InstanceRef;

    pub(crate) fn instance(id: &str) -> InstanceRef {
        InstanceRef {
            deployment: "d".into(),
            instance_id: id.into(),
        }
    }

    pub(crate) fn report(id: &str, failing: &[u16], leaving: bool) -> AgentReport {
        AgentReport {
            deployment: "d".into(),
            instance: id.into(),
            failing_ports: failing.iter().copied().collect(),
            leaving,
            plaintext: false,
            probe: None,
        }
    }
}
