//! The poller: keeps every deployment's parsed manifest and instances, and the rule configs,
//! up to date at a small, constant cost per tick when nothing changes (docs/director-api.md
//! §8), and publishes each whenever it changed.
//!
//! Each tick costs `GET /events` + `GET /deployments`. Only deployments that events mark dirty
//! (or that appear, or all of them at a full resync) cost more: their manifest and their
//! synchronous instance list, which give the topology at once, without a task. Health comes
//! from `instances?format=full` tasks, each taking one of the director's few shared workers,
//! under one budget for the whole pilot (`health_budget.rs`), read beside the ticks and merged
//! into the topology by instance and VM (`health.rs`). The rule configs cost one
//! `GET /configs` at start, after a `config/boshy-istio` event, and at a full resync. Any
//! failure keeps the last good state of what it concerns and backs off.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tokio::task::{Id, JoinSet};
use tracing::instrument::WithSubscriber as _;
use tracing::{info, warn};

use super::changes::{scan_events, Backoff, ErrorLog, Part};
use super::client::DirectorClient;
use super::decode::{Config, Event};
use super::error::DirectorError;
use super::health::{self, HealthReading, VmKey};
use super::health_budget::{AgentReports, HealthBudget, LagChange};
use super::rule_configs::{RuleConfigs, RULES_CONFIG_TYPE};
use crate::catalog::manifest;
use crate::catalog::model::{DeploymentInput, Instance, InstanceRef, ParsedManifest};
use crate::config::{DirectorConfig, Secret};
use crate::metrics;

/// `format=full` tasks in flight at once (§8.3), whatever the budget allows: when tasks queue
/// behind deploys, more would only wait in the director's queue.
const MAX_TASKS_IN_FLIGHT: usize = 2;
/// Synchronous refreshes (manifest, instance list) at once. The director answers them from its
/// database, with no worker; a few at once keep a first look at many deployments short.
const SYNC_REFRESHES_IN_FLIGHT: usize = 4;
/// Longest wait before retrying a failing part.
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// The poller's clocks. `from_config` reads the seconds of `DirectorConfig`; tests and the lab
/// may use finer ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollTiming {
    /// One cheap change check (events + deployment list).
    pub poll: Duration,
    /// Each deployment that declares services wants its health (`instances?format=full`)
    /// read this often.
    pub health: Duration,
    /// The health budget: at most one `instances?format=full` task starts per this time, for
    /// the whole pilot (a minute divided by `health_tasks_per_minute`).
    pub health_task_spacing: Duration,
    /// Everything is refetched this often, whatever the events say.
    pub full_resync: Duration,
    /// Longest backoff of a failing part; the first retry waits `poll`.
    pub backoff_cap: Duration,
}

impl PollTiming {
    pub(crate) fn from_config(cfg: &DirectorConfig) -> PollTiming {
        PollTiming {
            poll: Duration::from_secs(cfg.poll_interval_seconds.max(1)),
            health: Duration::from_secs(cfg.health_interval_seconds.max(1)),
            health_task_spacing: Duration::from_secs(60) / cfg.health_tasks_per_minute.max(1),
            full_resync: Duration::from_secs(cfg.full_resync_seconds.max(1)),
            backoff_cap: BACKOFF_CAP,
        }
    }
}

/// The rule configs as the poller publishes them: `None` until the director's configs were
/// read once, then the last good read.
pub type PublishedRuleConfigs = Option<Arc<RuleConfigs>>;

pub struct Poller {
    client: Arc<DirectorClient>,
    timing: PollTiming,
    rule_configs: watch::Sender<PublishedRuleConfigs>,
    agent_reports: Option<watch::Receiver<AgentReports>>,
    workload_store_events: watch::Sender<u64>,
}

/// The health readings in flight: their tasks, and each one's deployment and when it was
/// asked for.
#[derive(Default)]
struct Readings {
    tasks: JoinSet<Result<Vec<Instance>, DirectorError>>,
    asked: HashMap<Id, (String, Instant)>,
}

impl Poller {
    pub fn new(cfg: &DirectorConfig, secret: Secret) -> Result<Poller> {
        Ok(Poller {
            client: Arc::new(DirectorClient::new(cfg, secret)?),
            timing: PollTiming::from_config(cfg),
            rule_configs: watch::Sender::new(None),
            agent_reports: None,
            workload_store_events: watch::Sender::new(0),
        })
    }

    pub fn with_timing(self, timing: PollTiming) -> Poller {
        Poller { timing, ..self }
    }

    /// The instances whose health a connected agent reports: a deployment all of whose VMs
    /// (in instance groups that declare services) are in the set costs no health task, and
    /// one whose instance leaves it is read first. Without it the set is empty.
    pub fn with_agent_reports(
        self,
        reports: watch::Receiver<Arc<BTreeSet<InstanceRef>>>,
    ) -> Poller {
        Poller {
            agent_reports: Some(reports),
            ..self
        }
    }

    /// The poller's director client, to share its connection and UAA token.
    pub fn client(&self) -> Arc<DirectorClient> {
        self.client.clone()
    }

    /// The rule configs, sent again only when they changed; a failed read keeps the last good
    /// ones.
    pub fn rule_configs(&self) -> watch::Receiver<PublishedRuleConfigs> {
        self.rule_configs.subscribe()
    }

    /// Grows when the registration store (docs/workloads.md) may have changed behind this
    /// pilot: another pilot's write event, a first look at the events, a full resync.
    pub fn workload_store_events(&self) -> watch::Receiver<u64> {
        self.workload_store_events.subscribe()
    }

    /// Polls forever, publishing the deployments (sorted by name) whenever they changed. The
    /// first complete look is always published, even when empty, so consumers know it ran.
    pub async fn run(mut self, tx: watch::Sender<Arc<Vec<DeploymentInput>>>) {
        let mut state = PollState::new(Instant::now(), self.timing);
        if let Some(reports) = &mut self.agent_reports {
            let reports = reports.borrow_and_update().clone();
            state.budget.set_agent_reports(reports, Instant::now());
        }
        let mut ticker = tokio::time::interval(self.timing.poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut readings = Readings::default();
        let mut published: Option<Arc<Vec<DeploymentInput>>> = None;
        loop {
            let wake = state.next_health_wake(Instant::now());
            tokio::select! {
                _ = ticker.tick() => {
                    if self.tick(&mut state).await {
                        state.looked = true;
                    }
                }
                Some(joined) = readings.tasks.join_next_with_id(), if !readings.tasks.is_empty() => {
                    let (id, read) = match joined {
                        Ok((id, read)) => (id, Some(read)),
                        Err(err) => (err.id(), None),
                    };
                    if let Some((name, asked_at)) = readings.asked.remove(&id) {
                        state.apply_health(&name, asked_at, read, Instant::now());
                    }
                }
                () = sleep_until(wake) => {}
                reports = agent_reports_changed(&mut self.agent_reports) => match reports {
                    Some(reports) => state.budget.set_agent_reports(reports, Instant::now()),
                    // The sender is gone: the last set stays.
                    None => self.agent_reports = None,
                },
            }
            // What the topology and the readings so far say goes out before any new reading
            // is asked for: the first look waits for no task.
            if state.looked {
                let snapshot = state.snapshot();
                if published.as_deref() != Some(&snapshot) {
                    let snapshot = Arc::new(snapshot);
                    published = Some(snapshot.clone());
                    tx.send_replace(snapshot);
                }
            }
            self.ask_for_health(&mut state, &mut readings);
            state.report_health(Instant::now());
        }
    }

    /// Starts every health reading the budget allows now.
    fn ask_for_health(&self, state: &mut PollState, readings: &mut Readings) {
        let now = Instant::now();
        while let Some(name) = state.next_health_reading(now) {
            metrics::global()
                .director_health_tasks
                .fetch_add(1, Ordering::Relaxed);
            let client = self.client.clone();
            let deployment = name.clone();
            let read = async move { client.instance_health(&deployment).await };
            let task = readings.tasks.spawn(read.with_current_subscriber());
            readings.asked.insert(task.id(), (name, now));
        }
    }

    /// One poll. False when the deployment list could not be read (nothing to publish).
    async fn tick(&self, state: &mut PollState) -> bool {
        let now = Instant::now();
        if !state.list_backoff.ready(now) {
            return false;
        }
        let events = match state.events {
            EventsMode::Watching { .. } if state.events_backoff.ready(now) => {
                Some(self.client.events().await)
            }
            _ => None,
        };
        match self.client.deployments().await {
            Ok(names) => state.list_succeeded(names),
            Err(err) => {
                state.list_works = false;
                state.failed(
                    None,
                    Part::DeploymentList,
                    &err,
                    "keeping every deployment as last seen",
                );
                state
                    .list_backoff
                    .failed(now, self.timing.poll, self.timing.backoff_cap);
                return false;
            }
        }
        if let Some(events) = events {
            state.apply_events(events, now);
        }
        state.apply_timers(now);
        self.workload_store_events
            .send_if_modified(|seen| std::mem::replace(seen, state.workload_store_events) != *seen);
        let jobs = state.due_jobs(now);
        let refreshes = futures::stream::iter(jobs)
            .map(|job| refresh(&self.client, job))
            .buffer_unordered(SYNC_REFRESHES_IN_FLIGHT)
            .collect::<Vec<RefreshResult>>();
        // Beside the refreshes, not after them: a slow task must not hold up the rules. (A
        // hung read holds up this tick like any of its requests: at most the request timeout.)
        let read_rule_configs = state.rule_configs_due(now);
        let rule_configs = async {
            match read_rule_configs {
                true => Some(self.client.latest_configs(RULES_CONFIG_TYPE, None).await),
                false => None,
            }
        };
        let (results, rule_configs) = tokio::join!(refreshes, rule_configs);
        if let Some(read) = rule_configs {
            if let Some(changed) = state.apply_rule_configs(read, now) {
                self.rule_configs.send_replace(Some(changed));
            }
        }
        for result in results {
            state.apply_refresh(result, now);
        }
        true
    }
}

/// Sleeps until `wake`, or forever without one.
async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(wake) => tokio::time::sleep_until(wake.into()).await,
        None => std::future::pending().await,
    }
}

/// The next set of instances agents report on; `None` once the sender is gone. Never ends
/// without a receiver.
async fn agent_reports_changed(
    reports: &mut Option<watch::Receiver<AgentReports>>,
) -> Option<AgentReports> {
    let Some(reports) = reports else {
        return std::future::pending().await;
    };
    reports.changed().await.ok()?;
    Some(reports.borrow_and_update().clone())
}

/// Whether a deployment's health reading is not backing off after a failure.
fn health_ready(deployments: &BTreeMap<String, DeploymentState>, name: &str, now: Instant) -> bool {
    deployments
        .get(name)
        .is_some_and(|d| d.health_backoff.ready(now))
}

/// Whether `GET /events` can tell which deployments changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventsMode {
    /// `last_seen` is the newest event id read so far (`None` before the first look).
    Watching { last_seen: Option<u64> },
    /// Events are disabled or not readable: manifests are re-read every health interval.
    TimerOnly,
}

/// What a raw manifest was, last time it was fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ManifestSeen {
    /// `manifest: null`: no successful deploy yet.
    Null,
    Text([u8; 32]),
}

fn seen(manifest: Option<&str>) -> ManifestSeen {
    match manifest {
        None => ManifestSeen::Null,
        Some(text) => ManifestSeen::Text(Sha256::digest(text.as_bytes()).into()),
    }
}

#[derive(Debug)]
struct DeploymentState {
    /// The last manifest that parsed; `None` until one did (the deployment is not published
    /// before that).
    manifest: Option<Arc<ParsedManifest>>,
    /// The last manifest text fetched, parsed or not: unchanged text is not parsed again.
    seen: Option<ManifestSeen>,
    /// The last synchronous instance list: which instances exist, their VMs and addresses.
    topology: Vec<Instance>,
    /// The last health reading.
    reading: HealthReading,
    /// VMs presumed running until the first reading (§8.3).
    presumed: BTreeSet<VmKey>,
    /// Listed at the pilot's first look and no instance list read yet: the VMs of the first
    /// one are presumed running.
    presume_first_list: bool,
    /// The topology with its health: what is published.
    instances: Arc<Vec<Instance>>,
    needs_manifest: bool,
    needs_topology: bool,
    /// Of the synchronous refreshes.
    backoff: Backoff,
    /// Of the health readings.
    health_backoff: Backoff,
}

impl DeploymentState {
    fn new(presume_first_list: bool) -> DeploymentState {
        DeploymentState {
            manifest: None,
            seen: None,
            topology: Vec::new(),
            reading: HealthReading::default(),
            presumed: BTreeSet::new(),
            presume_first_list,
            instances: Arc::new(Vec::new()),
            needs_manifest: true,
            needs_topology: true,
            backoff: Backoff::default(),
            health_backoff: Backoff::default(),
        }
    }

    fn mark_dirty(&mut self) {
        self.needs_manifest = true;
        self.needs_topology = true;
    }
}

/// The work for one deployment in one tick.
struct RefreshJob {
    name: String,
    fetch_manifest: bool,
    /// Fetch the instance list even if the manifest is unchanged.
    fetch_topology: bool,
    known: Option<ManifestSeen>,
}

struct RefreshResult {
    name: String,
    manifest: Option<Result<Option<String>, DirectorError>>,
    topology: Option<Result<Vec<Instance>, DirectorError>>,
}

/// Fetches what `job` asks for; the instance list also when the manifest text changed.
async fn refresh(client: &DirectorClient, job: RefreshJob) -> RefreshResult {
    let manifest = match job.fetch_manifest {
        true => Some(client.manifest(&job.name).await),
        false => None,
    };
    let manifest_changed =
        matches!(&manifest, Some(Ok(text)) if Some(seen(text.as_deref())) != job.known);
    let topology = match job.fetch_topology || manifest_changed {
        true => Some(client.instance_list(&job.name).await),
        false => None,
    };
    RefreshResult {
        name: job.name,
        manifest,
        topology,
    }
}

struct PollState {
    timing: PollTiming,
    deployments: BTreeMap<String, DeploymentState>,
    events: EventsMode,
    events_backoff: Backoff,
    list_backoff: Backoff,
    full_resync_due: Instant,
    /// In timer-only mode: when manifests are next re-read.
    timer_only_due: Instant,
    /// Timer-only mode was announced (not repeated at every full resync's new look).
    events_off_logged: bool,
    errors: ErrorLog,
    /// The last good rule configs; `None` before the first read succeeded.
    rule_configs: Option<Arc<RuleConfigs>>,
    /// Read the rule configs at the next tick: at start, after a `config/boshy-istio` event,
    /// at a full resync, every health interval in timer-only mode, and until a read succeeds.
    rule_configs_stale: bool,
    rule_configs_backoff: Backoff,
    /// Counts the reasons to read the registration store again: new `config/boshy-workloads`
    /// events (another pilot wrote it), a first look, and each full resync (edits behind the
    /// pilots' backs).
    workload_store_events: u64,
    /// Which deployment's health to read next.
    budget: HealthBudget,
    /// A deployment list was read at least once: the next list is not the first look.
    listed: bool,
    /// The last deployment list was read. While it fails (the director is down, or refuses
    /// the pilot), no health reading is asked for: each would fail too, and be logged per
    /// deployment.
    list_works: bool,
    /// A tick completed: there is something to publish.
    looked: bool,
}

impl PollState {
    fn new(now: Instant, timing: PollTiming) -> PollState {
        PollState {
            budget: HealthBudget::new(
                now,
                timing.health,
                timing.health_task_spacing,
                MAX_TASKS_IN_FLIGHT,
            ),
            listed: false,
            list_works: false,
            looked: false,
            timing,
            deployments: BTreeMap::new(),
            events: EventsMode::Watching { last_seen: None },
            events_backoff: Backoff::default(),
            list_backoff: Backoff::default(),
            full_resync_due: now + timing.full_resync,
            timer_only_due: now + timing.health,
            events_off_logged: false,
            errors: ErrorLog::default(),
            rule_configs: None,
            rule_configs_stale: true,
            rule_configs_backoff: Backoff::default(),
            workload_store_events: 0,
        }
    }

    /// Every deployment whose manifest parsed at least once, sorted by name.
    fn snapshot(&self) -> Vec<DeploymentInput> {
        self.deployments
            .iter()
            .filter_map(|(name, d)| {
                Some(DeploymentInput {
                    name: name.clone(),
                    manifest: d.manifest.clone()?,
                    instances: d.instances.clone(),
                })
            })
            .collect()
    }

    /// Adds new deployments (dirty) and drops vanished ones: only a successful list removes.
    /// The VMs of deployments in the first list are presumed running until read.
    fn list_succeeded(&mut self, names: Vec<String>) {
        self.recovered(None, Part::DeploymentList);
        self.list_backoff.succeeded();
        self.list_works = true;
        let first_look = !std::mem::replace(&mut self.listed, true);
        let listed: std::collections::BTreeSet<String> = names.into_iter().collect();
        let vanished: Vec<String> = self
            .deployments
            .keys()
            .filter(|name| !listed.contains(*name))
            .cloned()
            .collect();
        for name in vanished {
            info!(deployment = %name, "deployment is gone from the director; removing it");
            self.deployments.remove(&name);
            self.budget.forget(&name);
            self.errors.forget(&name);
        }
        for name in listed {
            self.deployments
                .entry(name)
                .or_insert_with(|| DeploymentState::new(first_look));
        }
    }

    fn apply_events(&mut self, events: Result<Vec<Event>, DirectorError>, now: Instant) {
        let EventsMode::Watching { last_seen } = self.events else {
            return;
        };
        let events = match events {
            Ok(events) => events,
            Err(DirectorError::Scope { description, .. }) => {
                metrics::global().director_poll_error("scope");
                self.events_unusable(&format!(
                    "the director client may not read events ({description})"
                ));
                return;
            }
            Err(err) => {
                self.failed(
                    None,
                    Part::Events,
                    &err,
                    "changes are detected again once events can be read",
                );
                self.events_backoff
                    .failed(now, self.timing.poll, self.timing.backoff_cap);
                return;
            }
        };
        self.recovered(None, Part::Events);
        self.events_backoff.succeeded();
        if events.is_empty() && !self.deployments.is_empty() {
            self.events_unusable(
                "the director records no events (is director.events.record_events off?)",
            );
            return;
        }
        let scan = scan_events(&events, last_seen);
        if let Some(newest) = scan.newest {
            self.events = EventsMode::Watching {
                last_seen: Some(newest),
            };
        }
        if self.events_off_logged && scan.newest.is_some() {
            info!("the director records events again; detecting changes from them");
            self.events_off_logged = false;
        }
        // A first look (at start, or after timer-only mode) cannot tell what changed since
        // the deployments and the rule configs were last read.
        if scan.everything || last_seen.is_none() {
            if scan.everything {
                info!("more events than one page since the last poll; refreshing everything");
            }
            self.deployments
                .values_mut()
                .for_each(DeploymentState::mark_dirty);
            self.rule_configs_stale = true;
            self.workload_store_events += 1;
            return;
        }
        if scan.rule_configs {
            self.rule_configs_stale = true;
        }
        if scan.workloads {
            self.workload_store_events += 1;
        }
        // What an event changed may be health too (a deploy restarts jobs): read it first.
        for name in scan.dirty {
            if let Some(deployment) = self.deployments.get_mut(&name) {
                deployment.mark_dirty();
                self.budget.urgent(&name, now);
            }
        }
    }

    /// Falls back to timer-only change detection; logged once until events work again.
    fn events_unusable(&mut self, reason: &str) {
        self.events = EventsMode::TimerOnly;
        if !self.events_off_logged {
            self.events_off_logged = true;
            info!(
                deployments = self.deployments.len(),
                "{reason}: detecting changes by timer only (manifests every health interval)"
            );
        }
    }

    fn apply_timers(&mut self, now: Instant) {
        if now >= self.full_resync_due {
            self.full_resync_due = now + self.timing.full_resync;
            self.deployments
                .values_mut()
                .for_each(DeploymentState::mark_dirty);
            // Also the only way a deleted rule config is noticed: deletes write no event.
            self.rule_configs_stale = true;
            self.workload_store_events += 1;
            if self.events == EventsMode::TimerOnly {
                // Events may have been turned on (or the scope granted) since: look again.
                self.events = EventsMode::Watching { last_seen: None };
            }
        }
        if self.events == EventsMode::TimerOnly && now >= self.timer_only_due {
            self.timer_only_due = now + self.timing.health;
            self.deployments
                .values_mut()
                .for_each(DeploymentState::mark_dirty);
            self.rule_configs_stale = true;
        }
    }

    fn rule_configs_due(&self, now: Instant) -> bool {
        self.rule_configs_stale && self.rule_configs_backoff.ready(now)
    }

    /// Keeps a good read; returns it when it differs from the last one (publish it). A failed
    /// read keeps the last good rule configs and is tried again after a backoff.
    fn apply_rule_configs(
        &mut self,
        read: Result<Vec<Config>, DirectorError>,
        now: Instant,
    ) -> Option<Arc<RuleConfigs>> {
        let listed = match read {
            Ok(listed) => listed,
            Err(err) => {
                let consequence = match self.rule_configs {
                    Some(_) => "keeping the last good rule configs",
                    None => "no rule configs until they can be read",
                };
                self.failed(None, Part::RuleConfigs, &err, consequence);
                self.rule_configs_backoff
                    .failed(now, self.timing.poll, self.timing.backoff_cap);
                return None;
            }
        };
        self.recovered(None, Part::RuleConfigs);
        self.rule_configs_backoff.succeeded();
        self.rule_configs_stale = false;
        let read = RuleConfigs::from_listed(listed);
        if self.rule_configs.as_deref() == Some(&read) {
            return None;
        }
        let names: Vec<&str> = read.configs.iter().map(|c| c.name.as_str()).collect();
        info!(
            configs = read.configs.len(),
            "rule configs (director configs of type {RULES_CONFIG_TYPE}) changed: {names:?}"
        );
        let read = Arc::new(read);
        self.rule_configs = Some(read.clone());
        Some(read)
    }

    fn due_jobs(&self, now: Instant) -> Vec<RefreshJob> {
        self.deployments
            .iter()
            .filter(|(_, d)| d.backoff.ready(now) && (d.needs_manifest || d.needs_topology))
            .map(|(name, d)| RefreshJob {
                name: name.clone(),
                fetch_manifest: d.needs_manifest,
                fetch_topology: d.needs_topology,
                known: d.seen,
            })
            .collect()
    }

    fn apply_refresh(&mut self, result: RefreshResult, now: Instant) {
        let name = result.name;
        if !self.deployments.contains_key(&name) {
            return;
        }
        let mut all_ok = true;
        match result.manifest {
            Some(Ok(text)) => {
                self.recovered(Some(&name), Part::ManifestFetch);
                self.manifest_fetched(&name, text.as_deref());
            }
            Some(Err(err)) => {
                all_ok = false;
                self.failed(
                    Some(&name),
                    Part::ManifestFetch,
                    &err,
                    "keeping its last good manifest",
                );
            }
            None => {}
        }
        match result.topology {
            Some(Ok(topology)) => {
                self.recovered(Some(&name), Part::InstanceList);
                let deployment = self.deployments.get_mut(&name).expect("checked above");
                if std::mem::take(&mut deployment.presume_first_list) {
                    deployment.presumed = health::vms(&topology);
                }
                deployment.topology = topology;
                deployment.needs_topology = false;
            }
            Some(Err(err)) => {
                all_ok = false;
                self.failed(
                    Some(&name),
                    Part::InstanceList,
                    &err,
                    "keeping its last good instances",
                );
            }
            None => {}
        }
        self.merge_health(&name, now);
        let deployment = self.deployments.get_mut(&name).expect("checked above");
        match all_ok {
            true => deployment.backoff.succeeded(),
            false => {
                deployment
                    .backoff
                    .failed(now, self.timing.poll, self.timing.backoff_cap);
            }
        }
    }

    /// When the next health reading may start, if one is to be read.
    fn next_health_wake(&self, now: Instant) -> Option<Instant> {
        if !self.list_works {
            return None;
        }
        let deployments = &self.deployments;
        self.budget
            .next_wake(now, |name| health_ready(deployments, name, now))
    }

    /// The deployment whose health to read now, if the budget allows one.
    fn next_health_reading(&mut self, now: Instant) -> Option<String> {
        if !self.list_works {
            return None;
        }
        let deployments = &self.deployments;
        self.budget
            .start_next(now, |name| health_ready(deployments, name, now))
    }

    /// A health reading asked for at `asked_at` ended; `None` if its task died.
    fn apply_health(
        &mut self,
        name: &str,
        asked_at: Instant,
        read: Option<Result<Vec<Instance>, DirectorError>>,
        now: Instant,
    ) {
        let succeeded = matches!(read, Some(Ok(_)));
        self.budget.finished(name, asked_at, succeeded);
        if !self.deployments.contains_key(name) {
            return;
        }
        let err = match read {
            Some(Ok(rows)) => {
                self.recovered(Some(name), Part::Instances);
                let deployment = self.deployments.get_mut(name).expect("checked above");
                deployment.health_backoff.succeeded();
                deployment.reading = HealthReading::new(rows);
                // The director's word replaces every presumption.
                deployment.presumed.clear();
                if health::reading_is_newer(&deployment.topology, &deployment.reading) {
                    deployment.needs_topology = true;
                }
                self.merge_health(name, now);
                return;
            }
            Some(Err(err)) => err,
            None => DirectorError::decode(
                &format!("health reading of {name:?}"),
                "the reading's task ended without an answer",
            ),
        };
        self.failed(
            Some(name),
            Part::Instances,
            &err,
            "keeping its last health reading",
        );
        let deployment = self.deployments.get_mut(name).expect("checked above");
        deployment
            .health_backoff
            .failed(now, self.timing.poll, self.timing.backoff_cap);
    }

    /// Publishes the topology with its health, and tells the budget which instances a reading
    /// is for; a VM with no health yet makes the reading urgent.
    fn merge_health(&mut self, name: &str, now: Instant) {
        let deployment = self.deployments.get_mut(name).expect("caller checked");
        let merged = health::merge(
            &deployment.topology,
            &deployment.reading,
            &deployment.presumed,
        );
        let subjects = match &deployment.manifest {
            Some(manifest) => health::subjects(manifest, &deployment.topology),
            None => BTreeSet::new(),
        };
        let awaits_reading = health::awaits_reading(&merged, &subjects);
        if *deployment.instances != merged {
            deployment.instances = Arc::new(merged);
        }
        self.budget.track(name, subjects, now);
        if awaits_reading {
            self.budget.urgent(name, now);
        }
    }

    /// Sets the freshness gauges, and logs once when the budget starts or stops keeping every
    /// deployment within the health interval.
    fn report_health(&mut self, now: Instant) {
        let freshness = self.budget.freshness(now);
        let metrics = metrics::global();
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        metrics
            .director_health_age_ms
            .store(millis(freshness.oldest_age), Ordering::Relaxed);
        metrics
            .director_health_cycle_ms
            .store(millis(freshness.cycle), Ordering::Relaxed);
        let interval = self.timing.health;
        let budget = 60.0 / self.timing.health_task_spacing.as_secs_f64();
        match self.budget.lag_change() {
            Some(LagChange::Started(lag)) => warn!(
                deployments = lag.deployments,
                "health readings cannot keep up: {} deployments need one, and at {budget:.1} \
                 tasks a minute (director.health_tasks_per_minute) each is read about every \
                 {:?}, not every {interval:?} (health_interval_seconds); {} tasks a minute would \
                 be needed, or a longer interval",
                lag.deployments,
                lag.achieved,
                lag.needed_per_minute
            ),
            Some(LagChange::Ended) => {
                info!("health readings keep up again: every deployment is read within {interval:?}")
            }
            None => {}
        }
    }

    /// Parses a newly fetched manifest when its text changed. Invalid YAML keeps the last
    /// good parse; the same invalid text is not parsed (nor reported) again.
    fn manifest_fetched(&mut self, name: &str, text: Option<&str>) {
        let deployment = self.deployments.get_mut(name).expect("caller checked");
        deployment.needs_manifest = false;
        let now_seen = seen(text);
        if deployment.seen == Some(now_seen) {
            return;
        }
        deployment.seen = Some(now_seen);
        // The instance groups may differ: refresh the instances too.
        deployment.needs_topology = true;
        let parsed = match text {
            None => Ok(ParsedManifest::default()),
            Some(text) => manifest::parse(name, text),
        };
        match parsed {
            Ok(parsed) => {
                for warning in &parsed.warnings {
                    warn!(deployment = %name, "manifest: {warning}");
                }
                deployment.manifest = Some(Arc::new(parsed));
                self.recovered(Some(name), Part::ManifestParse);
            }
            Err(err) => {
                let what = match deployment.manifest.is_some() {
                    true => "keeping the services of its last good manifest",
                    false => "it has no services until a valid manifest is deployed",
                };
                metrics::global().director_poll_error("manifest_yaml");
                if self
                    .errors
                    .report(Some(name), Part::ManifestParse, "manifest_yaml")
                {
                    warn!(deployment = %name, kind = "manifest_yaml", "{err}; {what}");
                }
            }
        }
    }

    /// Counts an error and logs it at WARN the first time this kind happens for this part.
    fn failed(
        &mut self,
        deployment: Option<&str>,
        part: Part,
        err: &DirectorError,
        consequence: &str,
    ) {
        let kind = err.kind();
        metrics::global().director_poll_error(&kind);
        if self.errors.report(deployment, part, &kind) {
            let subject =
                deployment.map_or_else(|| "director".to_string(), |d| format!("deployment {d:?}"));
            warn!(
                deployment = deployment.unwrap_or_default(),
                %kind,
                "{subject}: {} failed: {err}; {consequence}; retrying with backoff",
                part.describe()
            );
        }
    }

    fn recovered(&mut self, deployment: Option<&str>, part: Part) {
        let cleared = self.errors.recovered(deployment, part);
        if !cleared.is_empty() {
            let subject =
                deployment.map_or_else(|| "director".to_string(), |d| format!("deployment {d:?}"));
            info!(
                deployment = deployment.unwrap_or_default(),
                "{subject}: {} works again (after {})",
                part.describe(),
                cleared.join(", ")
            );
        }
    }
}
