//! The pilot's record of the agents connected to it and what they report.
//!
//! [`RegistryState`] is the pure bookkeeping; [`AgentRegistry`] puts it behind a mutex for
//! the names server's handlers and publishes what it implies on `watch` channels: the health
//! of every reported instance (for the catalog) and the set of instances an agent covers (so
//! that the director poller spends no task on them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::report::AgentReport;
use crate::catalog::model::InstanceRef;
use crate::console::TrafficBoard;
use crate::metrics;
use crate::names::stream_status::NameStreams;
use crate::scope::ScopeRegistry;
use crate::xds::cache::Snapshot;
use crate::xds::sync::SyncBoard;

/// What the agents say about one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceHealth {
    pub failing_ports: BTreeSet<u16>,
    pub leaving: bool,
    /// Mesh clients call it in plaintext (`AgentReport::plaintext`).
    pub plaintext: bool,
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

    /// Sets one instance's health (`None`: no agent reports on it), leaving no empty
    /// deployment behind, so that the map equals one built from scratch.
    fn set(&mut self, instance: &InstanceRef, health: Option<InstanceHealth>) {
        match health {
            Some(health) => self.insert(instance, health),
            None => {
                if let Some(instances) = self.0.get_mut(&instance.deployment) {
                    instances.remove(&instance.instance_id);
                    if instances.is_empty() {
                        self.0.remove(&instance.deployment);
                    }
                }
            }
        }
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

    /// Forgets the leaving instances `listed` says the director no longer lists; returns them.
    pub(crate) fn retain_listed(
        &mut self,
        listed: impl Fn(&InstanceRef) -> bool,
    ) -> Vec<InstanceRef> {
        let gone: Vec<InstanceRef> = self
            .leaving
            .iter()
            .filter(|i| !listed(i))
            .cloned()
            .collect();
        for instance in &gone {
            self.leaving.remove(instance);
        }
        gone
    }

    /// One instance's entry of [`RegistryState::health`]: a leaving instance is out whatever
    /// its agent last said.
    pub(crate) fn health_of(&self, instance: &InstanceRef) -> Option<InstanceHealth> {
        if self.leaving.contains(instance) {
            return Some(InstanceHealth {
                leaving: true,
                ..InstanceHealth::default()
            });
        }
        let report = self.agents.get(instance)?.report.as_ref()?;
        Some(InstanceHealth {
            failing_ports: report.failing_ports.clone(),
            leaving: report.leaving,
            plaintext: report.plaintext,
        })
    }

    /// Whether `instance` is in [`RegistryState::covered`].
    pub(crate) fn covers(&self, instance: &InstanceRef) -> bool {
        self.agents
            .get(instance)
            .is_some_and(|agent| agent.report.is_some())
    }

    /// The whole health map, built from scratch: what [`AgentRegistry`] keeps up to date
    /// change by change (the tests compare the two).
    #[cfg(test)]
    pub(crate) fn health(&self) -> AgentHealth {
        let mut health = AgentHealth::default();
        for (instance, agent) in &self.agents {
            if let Some(report) = &agent.report {
                let reported = InstanceHealth {
                    failing_ports: report.failing_ports.clone(),
                    leaving: report.leaving,
                    plaintext: report.plaintext,
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

    /// The instances whose health a connected agent reports, built from scratch.
    #[cfg(test)]
    pub(crate) fn covered(&self) -> BTreeSet<InstanceRef> {
        self.agents
            .iter()
            .filter(|(_, agent)| agent.report.is_some())
            .map(|(instance, _)| instance.clone())
            .collect()
    }
}

/// How often at most the set of covered instances is published: its reader (the director
/// poller) only schedules health tasks with it, and a whole set is cloned per publish, which
/// at every open, close and report would cost O(agents²) over a mass reconnect.
const COVERED_INTERVAL: Duration = Duration::from_millis(500);

/// [`RegistryState`] shared by the names server's handlers, publishing every change. Each
/// change costs O(log agents), not a rebuild: only the instances it touched are looked at
/// again, the health map is patched in place (cloned only while a reader holds the previous
/// one), and the covered set goes out at most every [`COVERED_INTERVAL`].
pub struct AgentRegistry {
    shared: Arc<Shared>,
    /// What a drain waits on: this pilot's Envoys taking the snapshot without the instance.
    xds: Option<XdsView>,
    /// Every name-table stream open here, agent or not (`GET /v1/proxies`).
    name_streams: Arc<NameStreams>,
    /// The calls each agent reports, for the console (`GET /v1/graph`).
    traffic: Arc<TrafficBoard>,
    /// Where the reports of registered VMs' agents count as heartbeats (docs/workloads.md).
    heartbeats: Option<Arc<crate::workloads::Heartbeats>>,
}

struct Shared {
    state: Mutex<Tracked>,
    health: watch::Sender<Arc<AgentHealth>>,
    covered: watch::Sender<Arc<BTreeSet<InstanceRef>>>,
}

/// The state, and what of it is published.
#[derive(Default)]
struct Tracked {
    state: RegistryState,
    /// [`RegistryState::covered`], kept up to date with each change.
    covered: BTreeSet<InstanceRef>,
    /// `covered` differs from what was last published.
    covered_dirty: bool,
    covered_published_at: Option<Instant>,
    /// A task publishes `covered` once [`COVERED_INTERVAL`] has passed.
    flush_scheduled: bool,
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
            shared: Arc::new(Shared {
                state: Mutex::default(),
                health: watch::Sender::new(Arc::default()),
                covered: watch::Sender::new(Arc::default()),
            }),
            xds: None,
            name_streams: Arc::default(),
            traffic: Arc::default(),
            heartbeats: None,
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

    /// The registry, its reports of registered VMs also taken as their heartbeats.
    pub fn with_heartbeats(self, heartbeats: Arc<crate::workloads::Heartbeats>) -> Self {
        AgentRegistry {
            heartbeats: Some(heartbeats),
            ..self
        }
    }

    pub(crate) fn xds(&self) -> Option<&XdsView> {
        self.xds.as_ref()
    }

    /// The name-table streams open on this pilot.
    pub fn name_streams(&self) -> &Arc<NameStreams> {
        &self.name_streams
    }

    /// The calls the agents report.
    pub fn traffic(&self) -> &Arc<TrafficBoard> {
        &self.traffic
    }

    /// The health the agents report, sent again whenever it changes.
    pub fn health(&self) -> watch::Receiver<Arc<AgentHealth>> {
        self.shared.health.subscribe()
    }

    /// The instances whose health a connected agent reports, sent again when it changes
    /// (at most every [`COVERED_INTERVAL`]).
    pub fn covered(&self) -> watch::Receiver<Arc<BTreeSet<InstanceRef>>> {
        self.shared.covered.subscribe()
    }

    /// A verified stream of `instance`'s agent opened; it counts until the guard drops.
    pub(crate) fn open(self: &Arc<Self>, instance: InstanceRef) -> AgentStream {
        self.shared.update(|state| {
            state.open(&instance);
            ((), vec![instance.clone()])
        });
        AgentStream {
            registry: self.clone(),
            instance,
        }
    }

    pub(crate) fn report(&self, report: AgentReport) -> Result<(), ReportRefused> {
        let instance = report.instance_ref();
        // Every report taken is a heartbeat, changed or not: a registered VM's agent sends
        // its report every `heartbeat_seconds` for this.
        let beat = self.heartbeats.as_ref().map(|h| (h, report.clone()));
        self.shared
            .update(|state| (state.report(report), vec![instance]))?;
        if let Some((heartbeats, report)) = beat {
            heartbeats.beat(&report, std::time::Instant::now());
        }
        Ok(())
    }

    pub(crate) fn retain_listed(&self, listed: impl Fn(&InstanceRef) -> bool) {
        self.shared
            .update(|state| ((), state.retain_listed(listed)));
    }
}

impl Shared {
    /// Applies `change`, which returns the instances it touched, and publishes what changed
    /// of theirs.
    fn update<T>(
        self: &Arc<Self>,
        change: impl FnOnce(&mut RegistryState) -> (T, Vec<InstanceRef>),
    ) -> T {
        let mut tracked = self.state.lock().expect("agent registry lock");
        let (result, touched) = change(&mut tracked.state);
        for instance in &touched {
            let health = tracked.state.health_of(instance);
            self.health.send_if_modified(|current| {
                if current.get(&instance.deployment, &instance.instance_id) == health.as_ref() {
                    return false;
                }
                Arc::make_mut(current).set(instance, health);
                true
            });
            let covered = if tracked.state.covers(instance) {
                tracked.covered.insert(instance.clone())
            } else {
                tracked.covered.remove(instance)
            };
            tracked.covered_dirty |= covered;
        }
        metrics::global()
            .agents_reporting
            .store(tracked.covered.len() as u64, Ordering::Relaxed);
        if tracked.covered_dirty && !tracked.flush_scheduled {
            let now = Instant::now();
            let due = tracked
                .covered_published_at
                .map_or(now, |at| at + COVERED_INTERVAL);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) if due > now => {
                    tracked.flush_scheduled = true;
                    let shared = self.clone();
                    runtime.spawn(async move {
                        tokio::time::sleep_until(due).await;
                        let mut tracked = shared.state.lock().expect("agent registry lock");
                        tracked.flush_scheduled = false;
                        shared.publish_covered(&mut tracked);
                    });
                }
                _ => self.publish_covered(&mut tracked),
            }
        }
        result
    }

    fn publish_covered(&self, tracked: &mut Tracked) {
        if !tracked.covered_dirty {
            return;
        }
        tracked.covered_dirty = false;
        tracked.covered_published_at = Some(Instant::now());
        let covered = &tracked.covered;
        self.covered.send_if_modified(|current| {
            let differs = **current != *covered;
            if differs {
                *current = Arc::new(covered.clone());
            }
            differs
        });
    }
}

/// An open stream of an agent: closes it in the registry when dropped.
pub(crate) struct AgentStream {
    registry: Arc<AgentRegistry>,
    instance: InstanceRef,
}

impl Drop for AgentStream {
    fn drop(&mut self) {
        let instance = &self.instance;
        self.registry.shared.update(|state| {
            state.close(instance);
            ((), vec![instance.clone()])
        });
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
        let mut covered = covered;
        tokio::time::timeout(COVERED_INTERVAL * 4, covered.wait_for(|c| c.is_empty()))
            .await
            .expect("the covered set goes out within its interval")
            .unwrap();
    }

    /// A small deterministic generator, so that the sequences below are the same every run.
    struct Draws(u64);

    impl Draws {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[tokio::test(start_paused = true)]
    async fn incremental_publishes_equal_the_state_rebuilt_from_scratch() {
        // Opens, closes, reports (failing, leaving, fine), refused reports and directors
        // forgetting leaving instances, over a few instances: after each, the published
        // health equals `RegistryState::health` rebuilt whole, and the covered set does once
        // its interval has passed.
        let registry = Arc::new(AgentRegistry::default());
        let health = registry.health();
        let mut covered = registry.covered();
        let ids = ["a", "b", "c", "d", "e"];
        let mut streams: Vec<(usize, AgentStream)> = Vec::new();
        let mut draws = Draws(0x9e37_79b9_7f4a_7c15);
        for step in 0..2_000 {
            let id = draws.below(ids.len() as u64) as usize;
            match draws.below(6) {
                0 | 1 => streams.push((id, registry.open(instance(ids[id])))),
                2 => {
                    if let Some(at) = streams.iter().position(|(i, _)| *i == id) {
                        streams.remove(at);
                    }
                }
                3 => {
                    let failing: &[u16] = if draws.below(2) == 0 { &[] } else { &[80, 443] };
                    let _ = registry.report(report(ids[id], failing, false));
                }
                4 => {
                    let _ = registry.report(report(ids[id], &[], true));
                }
                _ => registry.retain_listed(|i| i.instance_id != ids[id]),
            }
            let rebuilt = registry.shared.state.lock().unwrap().state.health();
            assert_eq!(**health.borrow(), rebuilt, "step {step}");
            if step % 100 == 99 {
                tokio::time::sleep(COVERED_INTERVAL * 2).await;
                let rebuilt = registry.shared.state.lock().unwrap().state.covered();
                assert_eq!(**covered.borrow_and_update(), rebuilt, "step {step}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn covered_goes_out_at_once_then_at_most_every_interval_with_the_latest_set() {
        let registry = Arc::new(AgentRegistry::default());
        let mut covered = registry.covered();
        let _a = registry.open(instance("a"));
        let _b = registry.open(instance("b"));
        registry.report(report("a", &[], false)).unwrap();
        assert!(
            covered.has_changed().unwrap(),
            "the first change goes out at once"
        );
        assert_eq!(covered.borrow_and_update().len(), 1);
        registry.report(report("b", &[], false)).unwrap();
        assert!(!covered.has_changed().unwrap(), "coalesced");
        tokio::time::sleep(COVERED_INTERVAL * 2).await;
        assert!(covered.has_changed().unwrap());
        assert_eq!(covered.borrow_and_update().len(), 2);
    }
}
