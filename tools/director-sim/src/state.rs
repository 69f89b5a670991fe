//! The simulated director's whole state and the operations that change it. Every operation
//! writes the tasks and events the real director would; handlers only translate HTTP.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use rand::seq::SliceRandom;
use serde_json::{json, Value};

use super::clock::unix_seconds;
use super::configs::{ConfigEvent, ConfigStore};
use super::deployments::{Change, Deployment, PlacementError};
use super::events::{Event, EventLog};
use super::ipam::IpPool;
use super::manifest::{self, DeploymentSpec};
use super::requests::RequestCounts;
use super::rows::{self, FullRow};
use super::tasks::{NewTask, TaskList};

/// Who the simulator says ran operations driven through the control API.
const OPERATOR: &str = "admin";

/// Job states the control API accepts (the agent's values plus the director's own).
const JOB_STATES: [&str; 6] = [
    "running",
    "failing",
    "starting",
    "stopped",
    "unknown",
    "unresponsive agent",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("Deployment '{0}' doesn't exist")]
    DeploymentNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
}

/// Token ids UAA issued, and those the simulator was told to treat as expired.
#[derive(Debug, Default)]
pub struct Tokens {
    issued: HashSet<String>,
    pub revoked: HashSet<String>,
}

impl Tokens {
    pub fn issued(&mut self, jti: String) {
        self.issued.insert(jti);
    }

    pub fn expire_all(&mut self) -> usize {
        let count = self.issued.len();
        self.revoked.extend(self.issued.drain());
        count
    }
}

/// Which instances a `format=full` task reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmStateScope {
    /// `instances?format=full`: every instance, with or without a VM.
    Instances,
    /// `vms?format=full`: only instances that have a VM.
    Vms,
}

/// Parameters shared by the events of one operation.
struct EventScope<'a> {
    user: &'a str,
    task: Option<u64>,
    deployment: &'a str,
    parent: Option<u64>,
    timestamp: i64,
}

impl EventScope<'_> {
    fn event(&self, action: &str, object_type: &str, object_name: &str) -> Event {
        Event {
            id: 0,
            parent_id: self.parent,
            timestamp: self.timestamp,
            user: self.user.to_string(),
            action: action.to_string(),
            object_type: object_type.to_string(),
            object_name: object_name.to_string(),
            task: self.task,
            deployment: Some(self.deployment.to_string()),
            instance: None,
            error: None,
            context: json!({}),
        }
    }

    fn change_event(&self, change: &Change) -> Event {
        let (action, object_type, object_name, instance) = match change {
            Change::InstanceCreated { instance } => ("create", "instance", instance, instance),
            Change::InstanceDeleted { instance } => ("delete", "instance", instance, instance),
            Change::VmCreated { instance, cid } => ("create", "vm", cid, instance),
            Change::VmDeleted { instance, cid } => ("delete", "vm", cid, instance),
        };
        Event {
            instance: Some(instance.clone()),
            ..self.event(action, object_type, object_name)
        }
    }
}

/// `releases`/`stemcells` as `name/version` strings, the shape of a deploy event's context.
fn versions_context(spec: Option<&DeploymentSpec>) -> Value {
    let Some(spec) = spec else {
        return json!({});
    };
    let names = |list: &[manifest::NameVersion]| -> Vec<String> {
        list.iter()
            .map(|nv| format!("{}/{}", nv.name, nv.version))
            .collect()
    };
    json!({"releases": names(&spec.releases), "stemcells": names(&spec.stemcells)})
}

pub struct SimState {
    pub director_uuid: String,
    deployments: BTreeMap<String, Deployment>,
    pool: IpPool,
    pub tasks: TaskList,
    pub events: EventLog,
    pub configs: ConfigStore,
    pub requests: RequestCounts,
    pub tokens: Tokens,
    events_enabled: bool,
    task_duration: Duration,
}

impl SimState {
    pub fn new(
        instance_network: Ipv4Net,
        events_enabled: bool,
        task_duration: Duration,
        workers: Option<usize>,
    ) -> anyhow::Result<SimState> {
        Ok(SimState {
            director_uuid: uuid::Uuid::new_v4().to_string(),
            deployments: BTreeMap::new(),
            pool: IpPool::new(instance_network)?,
            tasks: workers.map_or_else(TaskList::default, TaskList::with_workers),
            events: EventLog::default(),
            configs: ConfigStore::default(),
            requests: RequestCounts::default(),
            tokens: Tokens::default(),
            events_enabled,
            task_duration,
        })
    }

    /// Records an event when events are on (`director.events.record_events`).
    pub fn record_event(&mut self, event: Event) -> Option<u64> {
        self.events_enabled.then(|| self.events.record(event))
    }

    /// What `POST /configs` records (`configs::ConfigEvent`).
    pub fn record_config_event(&mut self, event: ConfigEvent, now: SystemTime) {
        self.record_event(Event {
            id: 0,
            parent_id: None,
            timestamp: unix_seconds(now),
            user: event.user,
            action: "create".to_string(),
            object_type: event.object_type,
            object_name: event.object_name,
            task: None,
            deployment: None,
            instance: None,
            error: event.error,
            context: json!({}),
        });
    }

    pub fn deployment(&self, name: &str) -> Result<&Deployment, SimError> {
        self.deployments
            .get(name)
            .ok_or_else(|| SimError::DeploymentNotFound(name.to_string()))
    }

    fn deployment_mut(&mut self, name: &str) -> Result<&mut Deployment, SimError> {
        self.deployments
            .get_mut(name)
            .ok_or_else(|| SimError::DeploymentNotFound(name.to_string()))
    }

    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments.values()
    }

    /// Runs `operation` as a director task of `kind` with its start event, its changes'
    /// events, and an end event pointing back at the start.
    fn as_task(
        &mut self,
        deployment: &str,
        (kind, action): (&'static str, &str),
        now: SystemTime,
        operation: impl FnOnce(&mut SimState) -> (Vec<Change>, Value),
    ) {
        let description = match kind {
            "delete_deployment" => format!("delete deployment {deployment}"),
            _ => "create deployment".to_string(),
        };
        let task = self.tasks.create(
            NewTask {
                kind,
                description,
                deployment: Some(deployment.to_string()),
                user: OPERATOR.to_string(),
                context_id: String::new(),
                duration: Duration::ZERO,
                result_lines: Vec::new(),
            },
            now,
        );
        let mut scope = EventScope {
            user: OPERATOR,
            task: Some(task),
            deployment,
            parent: None,
            timestamp: unix_seconds(now),
        };
        let start = self.record_event(scope.event(action, "deployment", deployment));
        let (changes, context) = operation(self);
        scope.parent = start;
        for change in &changes {
            self.record_event(scope.change_event(change));
        }
        let end = Event {
            context,
            ..scope.event(action, "deployment", deployment)
        };
        self.record_event(end);
    }

    /// Creates or replaces a deployment. A manifest that does not parse is stored as it is
    /// and instances stay as they were (a broken manifest); `None` is a deployment whose
    /// first deploy has not succeeded.
    pub fn deploy(&mut self, name: &str, manifest: Option<String>, now: SystemTime) {
        let action = if self.deployments.contains_key(name) {
            "update"
        } else {
            "create"
        };
        self.as_task(name, ("update_deployment", action), now, |state| {
            let mut deployment = state
                .deployments
                .remove(name)
                .unwrap_or_else(|| Deployment::new(name));
            let before = versions_context(deployment.spec.as_ref());
            let changes = match manifest.as_deref().map(manifest::parse) {
                Some(Ok(spec)) => deployment.reconcile(spec, &mut state.pool, now),
                Some(Err(err)) => {
                    tracing::warn!(deployment = name, error = %err, "manifest does not parse: stored as is, instances unchanged");
                    Vec::new()
                }
                None => Vec::new(),
            };
            deployment.manifest = manifest;
            let after = versions_context(deployment.spec.as_ref());
            state.deployments.insert(name.to_string(), deployment);
            (changes, json!({"before": before, "after": after}))
        });
    }

    pub fn delete_deployment(&mut self, name: &str, now: SystemTime) -> Result<(), SimError> {
        self.deployment(name)?;
        self.as_task(name, ("delete_deployment", "delete"), now, |state| {
            let mut deployment = state
                .deployments
                .remove(name)
                .expect("checked to exist above");
            (deployment.teardown(&mut state.pool), json!({}))
        });
        Ok(())
    }

    /// Scales a group up by one (what a deploy with one more instance does).
    pub fn add_instance(
        &mut self,
        name: &str,
        group: &str,
        az: Option<String>,
        now: SystemTime,
    ) -> Result<FullRow, SimError> {
        let (group, az) = self
            .deployment(name)?
            .placement(group, az)
            .map_err(|err| match err {
                PlacementError::UnknownGroup(message) => SimError::NotFound(message),
                PlacementError::UnknownAz(message) => SimError::BadRequest(message),
            })?;
        let mut position = 0;
        self.as_task(name, ("update_deployment", "update"), now, |state| {
            let deployment = state.deployments.get_mut(name).expect("checked above");
            let (created_at, changes) =
                deployment.create_instance(&group, az, &mut state.pool, now);
            position = created_at;
            (changes, json!({}))
        });
        let deployment = &self.deployments[name];
        Ok(rows::full_row(
            deployment,
            &deployment.instances[position],
            now,
        ))
    }

    pub fn remove_instance(
        &mut self,
        name: &str,
        id: &str,
        now: SystemTime,
    ) -> Result<(), SimError> {
        if self.deployment(name)?.instance(id).is_none() {
            return Err(SimError::NotFound(format!(
                "deployment '{name}' has no instance '{id}'"
            )));
        }
        self.as_task(name, ("update_deployment", "update"), now, |state| {
            let deployment = state.deployments.get_mut(name).expect("checked above");
            let changes = deployment
                .remove_instance(id, &mut state.pool)
                .expect("checked above");
            (changes, json!({}))
        });
        Ok(())
    }

    /// Changes what the agent reports (`job_state`; no event, as with real health changes)
    /// and whether the instance has a VM (VM events). `job_state: Some(None)` sets null.
    pub fn update_instance(
        &mut self,
        name: &str,
        id: &str,
        job_state: Option<Option<String>>,
        has_vm: Option<bool>,
        now: SystemTime,
    ) -> Result<FullRow, SimError> {
        if let Some(Some(state)) = &job_state {
            if !JOB_STATES.contains(&state.as_str()) {
                return Err(SimError::BadRequest(format!(
                    "job_state '{state}' is not one of {JOB_STATES:?} or null"
                )));
            }
        }
        let missing = || SimError::NotFound(format!("deployment '{name}' has no instance '{id}'"));
        let deployment = self
            .deployments
            .get_mut(name)
            .ok_or_else(|| SimError::DeploymentNotFound(name.to_string()))?;
        deployment.instance(id).ok_or_else(missing)?;
        let changes = match has_vm {
            Some(has_vm) => deployment
                .set_vm(id, has_vm, &mut self.pool, now)
                .ok_or_else(missing)?,
            None => Vec::new(),
        };
        let deployment = self.deployment_mut(name)?;
        let instance = deployment
            .instances
            .iter_mut()
            .find(|i| i.id == id)
            .ok_or_else(missing)?;
        if let Some(job_state) = job_state {
            instance.desired_state = if job_state.as_deref() == Some("stopped") {
                "stopped"
            } else {
                "started"
            };
            instance.job_state = job_state;
        }
        let scope = EventScope {
            user: OPERATOR,
            task: None,
            deployment: name,
            parent: None,
            timestamp: unix_seconds(now),
        };
        for change in &changes {
            self.record_event(scope.change_event(change));
        }
        let deployment = self.deployment(name)?;
        let instance = deployment.instance(id).ok_or_else(missing)?;
        Ok(rows::full_row(deployment, instance, now))
    }

    /// Creates the `vms` task behind `format=full`: the rows are taken now and written in a
    /// random order, as the director's thread pool does.
    pub fn create_vm_state_task(
        &mut self,
        name: &str,
        scope: VmStateScope,
        user: &str,
        context_id: &str,
        now: SystemTime,
    ) -> Result<u64, SimError> {
        let deployment = self.deployment(name)?;
        let mut lines: Vec<String> = deployment
            .instances
            .iter()
            .filter(|i| scope == VmStateScope::Instances || i.vm.is_some())
            .map(|i| {
                serde_json::to_string(&rows::full_row(deployment, i, now))
                    .expect("a row serializes to JSON")
            })
            .collect();
        lines.shuffle(&mut rand::thread_rng());
        Ok(self.tasks.create(
            NewTask {
                kind: "vms",
                description: "retrieve vm-stats".to_string(),
                deployment: Some(name.to_string()),
                user: user.to_string(),
                context_id: context_id.to_string(),
                duration: self.task_duration,
                result_lines: lines,
            },
            now,
        ))
    }

    /// The control API's `GET /_sim/state`.
    pub fn snapshot(&self, now: SystemTime) -> Value {
        let deployments: Vec<Value> = self
            .deployments
            .values()
            .map(|d| {
                let instances: Vec<FullRow> = rows::ordered_instances(d)
                    .into_iter()
                    .map(|i| rows::full_row(d, i, now))
                    .collect();
                json!({"name": d.name, "manifest": d.manifest, "instances": instances})
            })
            .collect();
        json!({"deployments": deployments})
    }

    /// One element of `GET /deployments`, without the parts the query excludes.
    pub fn deployment_summary(deployment: &Deployment, excludes: &DeploymentExcludes) -> Value {
        let mut summary = serde_json::Map::new();
        summary.insert("name".into(), json!(deployment.name));
        let spec = deployment.spec.as_ref();
        let name_versions = |list: Option<&Vec<manifest::NameVersion>>| -> Value {
            list.map(|list| {
                list.iter()
                    .map(|nv| json!({"name": nv.name, "version": nv.version}))
                    .collect()
            })
            .unwrap_or_else(|| json!([]))
        };
        if !excludes.releases {
            summary.insert("releases".into(), name_versions(spec.map(|s| &s.releases)));
        }
        if !excludes.stemcells {
            summary.insert(
                "stemcells".into(),
                name_versions(spec.map(|s| &s.stemcells)),
            );
        }
        if !excludes.configs {
            summary.insert("cloud_config".into(), json!("none"));
        }
        summary.insert("teams".into(), json!([]));
        if !excludes.lock {
            summary.insert("locked".into(), json!(false));
        }
        Value::Object(summary)
    }
}

/// `GET /deployments?exclude_*=true`.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeploymentExcludes {
    pub configs: bool,
    pub releases: bool,
    pub stemcells: bool,
    pub lock: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventQuery;

    const MANIFEST: &str = "releases: [{name: r, version: '1'}]\n\
        instance_groups:\n- {name: web, instances: 2, azs: [z1], jobs: [{name: j}]}\n";

    fn state(events: bool) -> SimState {
        SimState::new(
            "10.244.0.0/24".parse().unwrap(),
            events,
            Duration::ZERO,
            None,
        )
        .unwrap()
    }

    fn actions(state: &SimState) -> Vec<String> {
        let mut all: Vec<String> = state
            .events
            .query(&EventQuery::default())
            .iter()
            .map(|e| format!("{} {}", e.action, e.object_type))
            .collect();
        all.reverse();
        all
    }

    #[test]
    fn a_deploy_writes_a_task_and_start_instance_vm_and_end_events() {
        let mut state = state(true);
        state.deploy("d", Some(MANIFEST.into()), SystemTime::now());
        assert_eq!(
            actions(&state),
            [
                "create deployment",
                "create instance",
                "create vm",
                "create instance",
                "create vm",
                "create deployment"
            ]
        );
        let newest = state.events.query(&EventQuery::default())[0].clone();
        assert_eq!(newest.parent_id, Some(1));
        assert_eq!(newest.context["after"]["releases"], json!(["r/1"]));
        assert_eq!(newest.task, Some(1));
    }

    #[test]
    fn a_broken_manifest_is_stored_raw_and_keeps_instances() {
        let mut state = state(true);
        state.deploy("d", Some(MANIFEST.into()), SystemTime::now());
        state.deploy("d", Some("instance_groups: [".into()), SystemTime::now());
        let d = state.deployment("d").unwrap();
        assert_eq!(d.manifest.as_deref(), Some("instance_groups: ["));
        assert_eq!(d.instances.len(), 2);
        assert!(d.spec.is_some());
    }

    #[test]
    fn with_events_off_nothing_is_recorded_but_tasks_are() {
        let mut state = state(false);
        state.deploy("d", Some(MANIFEST.into()), SystemTime::now());
        assert!(actions(&state).is_empty());
        assert!(state.tasks.get(1).is_some());
    }

    #[test]
    fn instance_updates_validate_and_only_vm_changes_write_events() {
        let mut state = state(true);
        state.deploy("d", Some(MANIFEST.into()), SystemTime::now());
        let id = state.deployment("d").unwrap().instances[0].id.clone();
        let before = actions(&state).len();
        let row = state
            .update_instance(
                "d",
                &id,
                Some(Some("failing".into())),
                None,
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(row.job_state.as_deref(), Some("failing"));
        assert_eq!(actions(&state).len(), before);
        let bad =
            state.update_instance("d", &id, Some(Some("sad".into())), None, SystemTime::now());
        assert!(matches!(bad, Err(SimError::BadRequest(_))));
        let row = state
            .update_instance("d", &id, None, Some(false), SystemTime::now())
            .unwrap();
        assert!(row.vm_cid.is_none() && row.ips.is_empty());
        assert_eq!(actions(&state).last().unwrap(), "delete vm");
        assert!(matches!(
            state.update_instance("x", &id, None, None, SystemTime::now()),
            Err(SimError::DeploymentNotFound(_))
        ));
    }

    #[test]
    fn vm_state_tasks_cover_instances_or_only_vms() {
        let mut state = state(true);
        state.deploy("d", Some(MANIFEST.into()), SystemTime::now());
        let id = state.deployment("d").unwrap().instances[0].id.clone();
        state
            .update_instance("d", &id, None, Some(false), SystemTime::now())
            .unwrap();
        let now = SystemTime::now();
        let all = state
            .create_vm_state_task("d", VmStateScope::Instances, "p", "", now)
            .unwrap();
        let vms = state
            .create_vm_state_task("d", VmStateScope::Vms, "p", "", now)
            .unwrap();
        assert_eq!(state.tasks.get(all).unwrap().result_lines.len(), 2);
        assert_eq!(state.tasks.get(vms).unwrap().result_lines.len(), 1);
        assert_eq!(
            state.create_vm_state_task("nope", VmStateScope::Vms, "p", "", now),
            Err(SimError::DeploymentNotFound("nope".into()))
        );
    }

    #[test]
    fn deleting_a_deployment_frees_its_ips() {
        let mut state = state(true);
        state.deploy("d", Some(MANIFEST.into()), SystemTime::now());
        state.delete_deployment("d", SystemTime::now()).unwrap();
        assert!(state.deployment("d").is_err());
        assert_eq!(actions(&state).last().unwrap(), "delete deployment");
        state.deploy("e", Some(MANIFEST.into()), SystemTime::now());
        let ips: Vec<_> = state
            .deployment("e")
            .unwrap()
            .instances
            .iter()
            .map(|i| i.ip)
            .collect();
        assert_eq!(ips[0], Some("10.244.0.10".parse().unwrap()));
    }
}
