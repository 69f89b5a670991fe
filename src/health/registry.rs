//! The pilot's record of the agents connected to it and what they report.
//!
//! [`RegistryState`] is the pure bookkeeping; [`AgentRegistry`] puts it behind a mutex for
//! the names server's handlers and publishes what it implies on `watch` channels: the health
//! of every reported instance (for the catalog) and the set of instances an agent covers (so
//! that the director poller spends no task on them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::report::AgentReport;
use crate::catalog::model::InstanceRef;
use crate::metrics;
use crate::scope::ScopeRegistry;
use crate::xds::cache::Snapshot;
use crate::xds::sync::SyncBoard;

/// What the agents say about one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceHealth {
    pub failing_ports: BTreeSet<u16>,
    pub leaving: bool,
}

/// The health of every instance an agent reports on, by deployment then instance id (looked
/// up for every endpoint of every catalog, without allocating).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentHealth(BTreeMap<String, BTreeMap<String, InstanceHealth>>);

impl AgentHealth {
    pub fn get(&self, deployment: &str, instance_id: &str) -> Option<&InstanceHealth> {
        self.0.get(deployment)?.get(instance_id)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn insert(&mut self, instance: &InstanceRef, health: InstanceHealth) {
        self.0
            .entry(instance.deployment.clone())
            .or_default()
            .insert(instance.instance_id.clone(), health);
    }
}

/// Why a report is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportRefused {
    /// A report counts only while its agent's name-table stream is open on this pilot: that
    /// stream ending is how the pilot learns the agent is gone.
    NoStream,
}

impl std::fmt::Display for ReportRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReportRefused::NoStream => write!(
                f,
                "no verified name-table stream of this instance is open on this pilot"
            ),
        }
    }
}

/// One instance's connected agent.
#[derive(Debug, Default)]
struct Agent {
    /// Open name-table streams naming this instance: more than one while an agent reconnects.
    streams: usize,
    report: Option<AgentReport>,
}

/// Pure: the connected agents, their last reports, and the instances that are leaving.
#[derive(Debug, Default)]
pub(crate) struct RegistryState {
    agents: BTreeMap<InstanceRef, Agent>,
    /// Instances whose drain ran. Kept after their agent's stream ends, since the agent stops
    /// with the jobs it drained for; cleared when the instance's agent reports it is not
    /// leaving (its jobs started again) or the instance is no longer listed.
    leaving: BTreeSet<InstanceRef>,
}

impl RegistryState {
    pub(crate) fn open(&mut self, instance: &InstanceRef) {
        self.agents.entry(instance.clone()).or_default().streams += 1;
    }

    /// A stream ended. With its last one the agent's report no longer counts: the director's
    /// view takes over (the agent may be gone with its VM, or alone).
    pub(crate) fn close(&mut self, instance: &InstanceRef) {
        if let Some(agent) = self.agents.get_mut(instance) {
            agent.streams -= 1;
            if agent.streams == 0 {
                self.agents.remove(instance);
            }
        }
    }

    pub(crate) fn report(&mut self, report: AgentReport) -> Result<(), ReportRefused> {
        let instance = report.instance_ref();
        let agent = self
            .agents
            .get_mut(&instance)
            .ok_or(ReportRefused::NoStream)?;
        if report.leaving {
            self.leaving.insert(instance);
        } else {
            self.leaving.remove(&instance);
        }
        agent.report = Some(report);
        Ok(())
    }

    /// Forgets the leaving instances `listed` says the director no longer lists.
    pub(crate) fn retain_listed(&mut self, listed: impl Fn(&InstanceRef) -> bool) {
        self.leaving.retain(listed);
    }

    pub(crate) fn health(&self) -> AgentHealth {
        let mut health = AgentHealth::default();
        for (instance, agent) in &self.agents {
            if let Some(report) = &agent.report {
                let reported = InstanceHealth {
                    failing_ports: report.failing_ports.clone(),
                    leaving: report.leaving,
                };
                health.insert(instance, reported);
            }
        }
        for instance in &self.leaving {
            let leaving = InstanceHealth {
                leaving: true,
                ..InstanceHealth::default()
            };
            health.insert(instance, leaving);
        }
        health
    }

    /// The instances whose health a connected agent reports.
    pub(crate) fn covered(&self) -> BTreeSet<InstanceRef> {
        self.agents
            .iter()
            .filter(|(_, agent)| agent.report.is_some())
            .map(|(instance, _)| instance.clone())
            .collect()
    }
}

/// [`RegistryState`] shared by the names server's handlers, publishing every change.
pub struct AgentRegistry {
    state: Mutex<RegistryState>,
    health: watch::Sender<Arc<AgentHealth>>,
    covered: watch::Sender<Arc<BTreeSet<InstanceRef>>>,
    /// What a drain waits on: this pilot's Envoys taking the snapshot without the instance.
    xds: Option<XdsView>,
}

/// This pilot's xDS snapshots, and which one each of its streams has taken.
#[derive(Clone)]
pub struct XdsView {
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    pub board: Arc<SyncBoard>,
    /// The scope of every VM (docs/scope.md), which its agent changes through the names port.
    pub scopes: Arc<ScopeRegistry>,
}

impl Default for AgentRegistry {
    fn default() -> Self {
        AgentRegistry {
            state: Mutex::default(),
            health: watch::Sender::new(Arc::default()),
            covered: watch::Sender::new(Arc::default()),
            xds: None,
        }
    }
}

impl AgentRegistry {
    /// A registry whose drains wait for the Envoys of `xds`.
    pub fn with_xds(xds: XdsView) -> Self {
        AgentRegistry {
            xds: Some(xds),
            ..AgentRegistry::default()
        }
    }

    pub(crate) fn xds(&self) -> Option<&XdsView> {
        self.xds.as_ref()
    }

    /// The health the agents report, sent again whenever it changes.
    pub fn health(&self) -> watch::Receiver<Arc<AgentHealth>> {
        self.health.subscribe()
    }

    /// The instances whose health a connected agent reports.
    pub fn covered(&self) -> watch::Receiver<Arc<BTreeSet<InstanceRef>>> {
        self.covered.subscribe()
    }

    /// A verified stream of `instance`'s agent opened; it counts until the guard drops.
    pub(crate) fn open(self: &Arc<Self>, instance: InstanceRef) -> AgentStream {
        self.update(|state| state.open(&instance));
        AgentStream {
            registry: self.clone(),
            instance,
        }
    }

    pub(crate) fn report(&self, report: AgentReport) -> Result<(), ReportRefused> {
        self.update(|state| state.report(report))
    }

    pub(crate) fn retain_listed(&self, listed: impl Fn(&InstanceRef) -> bool) {
        self.update(|state| state.retain_listed(listed));
    }

    fn update<T>(&self, change: impl FnOnce(&mut RegistryState) -> T) -> T {
        let mut state = self.state.lock().expect("agent registry lock");
        let result = change(&mut state);
        let health = state.health();
        let covered = state.covered();
        drop(state);
        metrics::global()
            .agents_reporting
            .store(covered.len() as u64, Ordering::Relaxed);
        self.health.send_if_modified(|current| {
            let differs = **current != health;
            if differs {
                *current = Arc::new(health);
            }
            differs
        });
        self.covered.send_if_modified(|current| {
            let differs = **current != covered;
            if differs {
                *current = Arc::new(covered);
            }
            differs
        });
        result
    }
}

/// An open stream of an agent: closes it in the registry when dropped.
pub(crate) struct AgentStream {
    registry: Arc<AgentRegistry>,
    instance: InstanceRef,
}

impl Drop for AgentStream {
    fn drop(&mut self) {
        self.registry.update(|state| state.close(&self.instance));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::testing::{instance, report};

    fn reported(state: &RegistryState, id: &str) -> Option<InstanceHealth> {
        state.health().get("d", id).cloned()
    }

    #[test]
    fn a_report_counts_only_while_its_agent_has_a_stream_open() {
        let mut state = RegistryState::default();
        assert_eq!(
            state.report(report("a", &[], false)),
            Err(ReportRefused::NoStream)
        );
        state.open(&instance("a"));
        assert!(state.covered().is_empty(), "connected but not yet reported");
        state.report(report("a", &[80], false)).unwrap();
        assert_eq!(
            reported(&state, "a").unwrap().failing_ports,
            BTreeSet::from([80])
        );
        assert_eq!(state.covered(), BTreeSet::from([instance("a")]));

        // A reconnect opens the new stream before the old one ends: nothing is lost between.
        state.open(&instance("a"));
        state.close(&instance("a"));
        assert!(reported(&state, "a").is_some());
        state.close(&instance("a"));
        assert_eq!(
            reported(&state, "a"),
            None,
            "the director's view takes over"
        );
        assert!(state.covered().is_empty());
    }

    #[test]
    fn leaving_outlives_the_stream_until_the_agent_reports_again_or_the_instance_is_gone() {
        let mut state = RegistryState::default();
        state.open(&instance("a"));
        state.report(report("a", &[], true)).unwrap();
        state.close(&instance("a"));
        assert!(reported(&state, "a").unwrap().leaving, "jobs are stopping");
        assert!(state.covered().is_empty());

        // The agent starts again with the jobs.
        state.open(&instance("a"));
        assert!(
            reported(&state, "a").unwrap().leaving,
            "not before it reports"
        );
        state.report(report("a", &[], false)).unwrap();
        assert_eq!(reported(&state, "a"), Some(InstanceHealth::default()));

        state.report(report("a", &[], true)).unwrap();
        state.close(&instance("a"));
        state.retain_listed(|i| i.instance_id != "a");
        assert_eq!(reported(&state, "a"), None, "deleted by the director");
    }

    #[tokio::test]
    async fn the_registry_publishes_changes_and_a_dropped_stream_closes() {
        let registry = Arc::new(AgentRegistry::default());
        let mut health = registry.health();
        let covered = registry.covered();
        let stream = registry.open(instance("a"));
        registry.report(report("a", &[8080], false)).unwrap();
        assert!(health.has_changed().unwrap());
        assert_eq!(
            health
                .borrow_and_update()
                .get("d", "a")
                .unwrap()
                .failing_ports,
            BTreeSet::from([8080])
        );
        assert_eq!(covered.borrow().len(), 1);
        drop(stream);
        assert!(health.borrow_and_update().is_empty());
        assert!(covered.borrow().is_empty());
    }
}
