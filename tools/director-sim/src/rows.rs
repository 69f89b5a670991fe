//! The JSON shapes instances are shown in: the `format=full` task rows (docs/director-api.md §3.3),
//! the synchronous `/instances` and `/vms` lists (§3.4, §3.5).

use std::time::SystemTime;

use serde::Serialize;
use serde_json::{json, Value};

use super::clock::{rfc3339, unix_seconds};
use super::deployments::{Deployment, Instance};
use super::manifest::GroupSpec;

/// Stemcell API version the simulated agents report.
const STEMCELL_API_VERSION: u32 = 3;

#[derive(Debug, Serialize)]
pub struct StemcellRow {
    pub name: Option<String>,
    pub version: Option<String>,
    pub api_version: Option<u32>,
}

/// One line of `instances?format=full` / `vms?format=full`, keys in `vm_state.rb` order.
#[derive(Debug, Serialize)]
pub struct FullRow {
    pub vm_cid: Option<String>,
    pub active: Option<bool>,
    pub vm_created_at: Option<String>,
    pub cloud_properties: Value,
    pub disk_cid: Option<String>,
    pub disk_cids: Vec<String>,
    pub ips: Vec<String>,
    pub agent_id: Option<String>,
    pub job_name: String,
    pub index: u32,
    pub job_state: Option<String>,
    pub state: &'static str,
    pub vm_type: Option<String>,
    pub vitals: Option<Value>,
    pub processes: Vec<Value>,
    pub az: Option<String>,
    pub id: String,
    pub bootstrap: bool,
    pub ignore: bool,
    pub stemcell: StemcellRow,
}

/// The fields the synchronous `/instances` and `/vms` lists share (docs/director-api.md §3.4).
#[derive(Debug, Serialize)]
pub struct ListedInstance {
    pub agent_id: Option<String>,
    pub cid: Option<String>,
    pub job: String,
    pub index: u32,
    pub id: String,
    pub az: Option<String>,
    pub ips: Vec<String>,
    pub vm_created_at: Option<String>,
}

/// One element of the synchronous `GET /deployments/:d/instances`.
#[derive(Debug, Serialize)]
pub struct InstanceListRow {
    #[serde(flatten)]
    pub instance: ListedInstance,
    pub expects_vm: bool,
}

/// One element of the synchronous `GET /deployments/:d/vms`.
#[derive(Debug, Serialize)]
pub struct VmListRow {
    #[serde(flatten)]
    pub instance: ListedInstance,
    pub active: bool,
    pub permanent_nats_credentials: bool,
}

fn group_spec<'a>(deployment: &'a Deployment, instance: &Instance) -> Option<&'a GroupSpec> {
    deployment.spec.as_ref()?.group(&instance.group)
}

/// Only instances with a VM report IPs: the director reads them from the VM's record.
fn ips(instance: &Instance) -> Vec<String> {
    match (&instance.vm, instance.ip) {
        (Some(_), Some(ip)) => vec![ip.to_string()],
        _ => Vec::new(),
    }
}

/// The bootstrap instance is the lowest index of its group.
fn is_bootstrap(deployment: &Deployment, instance: &Instance) -> bool {
    deployment
        .instances
        .iter()
        .filter(|other| other.group == instance.group)
        .all(|other| other.index >= instance.index)
}

/// What the agent's monit reports for each job's process, given the instance's job state.
fn processes(jobs: &[String], job_state: &str, uptime_secs: i64) -> Vec<Value> {
    if job_state == "unresponsive agent" {
        return Vec::new();
    }
    jobs.iter()
        .enumerate()
        .map(|(position, job)| {
            let state = match job_state {
                "running" => "running",
                // One failing monit service is enough to make the whole job `failing`.
                "failing" if position == 0 => "failing",
                "failing" => "running",
                "starting" => "starting",
                _ => "unknown",
            };
            json!({
                "name": job,
                "state": state,
                "uptime": {"secs": uptime_secs},
                "mem": {"kb": 22816, "percent": 0.5},
                "cpu": {"total": 0.3},
            })
        })
        .collect()
}

fn vitals(uptime_secs: i64) -> Value {
    json!({
        "cpu": {"sys": "0.5", "user": "1.2", "wait": "0.0"},
        "disk": {
            "system": {"inode_percent": "31", "percent": "46"},
            "ephemeral": {"inode_percent": "3", "percent": "12"}
        },
        "load": ["0.12", "0.08", "0.03"],
        "mem": {"kb": "413560", "percent": "10"},
        "swap": {"kb": "0", "percent": "0"},
        "uptime": {"secs": uptime_secs}
    })
}

pub fn full_row(deployment: &Deployment, instance: &Instance, now: SystemTime) -> FullRow {
    let group = group_spec(deployment, instance);
    let vm = instance.vm.as_ref();
    let uptime = vm
        .map(|vm| (unix_seconds(now) - unix_seconds(vm.created_at)).max(0))
        .unwrap_or(0);
    let job_state = instance.job_state.as_deref();
    let agent_answers = vm.is_some() && job_state != Some("unresponsive agent");
    let jobs = group.map(|g| g.jobs.as_slice()).unwrap_or_default();
    let stemcell = group
        .and_then(|g| g.stemcell.as_ref())
        .filter(|_| vm.is_some());
    FullRow {
        vm_cid: vm.map(|vm| vm.cid.clone()),
        active: vm.map(|_| true),
        vm_created_at: vm.map(|vm| rfc3339(vm.created_at)),
        cloud_properties: json!({}),
        disk_cid: None,
        disk_cids: Vec::new(),
        ips: ips(instance),
        agent_id: vm.map(|vm| vm.agent_id.clone()),
        job_name: instance.group.clone(),
        index: instance.index,
        job_state: instance.job_state.clone(),
        state: instance.desired_state,
        vm_type: group.and_then(|g| g.vm_type.clone()),
        vitals: agent_answers.then(|| vitals(uptime)),
        processes: match (vm, job_state) {
            (Some(_), Some(state)) => processes(jobs, state, uptime),
            _ => Vec::new(),
        },
        az: instance.az.clone(),
        id: instance.id.clone(),
        bootstrap: is_bootstrap(deployment, instance),
        ignore: false,
        stemcell: StemcellRow {
            name: stemcell.map(|s| s.name.clone()),
            version: stemcell.map(|s| s.version.clone()),
            api_version: stemcell.map(|_| STEMCELL_API_VERSION),
        },
    }
}

fn listed_instance(instance: &Instance) -> ListedInstance {
    let vm = instance.vm.as_ref();
    ListedInstance {
        agent_id: vm.map(|vm| vm.agent_id.clone()),
        cid: vm.map(|vm| vm.cid.clone()),
        job: instance.group.clone(),
        index: instance.index,
        id: instance.id.clone(),
        az: instance.az.clone(),
        ips: ips(instance),
        vm_created_at: vm.map(|vm| rfc3339(vm.created_at)),
    }
}

pub fn instance_list_row(deployment: &Deployment, instance: &Instance) -> InstanceListRow {
    let errand = group_spec(deployment, instance).is_some_and(|g| g.errand);
    InstanceListRow {
        instance: listed_instance(instance),
        // `lifecycle == 'service' && state in (started, stopped)`.
        expects_vm: !errand,
    }
}

/// `None` for instances without a VM: the `/vms` list leaves them out.
pub fn vm_list_row(instance: &Instance) -> Option<VmListRow> {
    instance.vm.as_ref()?;
    Some(VmListRow {
        instance: listed_instance(instance),
        active: true,
        permanent_nats_credentials: true,
    })
}

/// The deployment's instances in manifest group order, then index: a stable order for lists.
pub fn ordered_instances(deployment: &Deployment) -> Vec<&Instance> {
    let group_position = |instance: &Instance| {
        deployment
            .spec
            .as_ref()
            .and_then(|spec| spec.groups.iter().position(|g| g.name == instance.group))
            .unwrap_or(usize::MAX)
    };
    let mut instances: Vec<&Instance> = deployment.instances.iter().collect();
    instances.sort_by_key(|i| (group_position(i), i.group.clone(), i.index));
    instances
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::IpPool;
    use crate::manifest::parse;

    fn deployment() -> Deployment {
        let spec = parse(
            "stemcells: [{alias: default, os: ubuntu-jammy, version: '1.5'}]\n\
             instance_groups:\n\
             - {name: web, instances: 2, azs: [z1], vm_type: small, stemcell: default, \
                jobs: [{name: a}, {name: b}]}\n\
             - {name: smoke, instances: 1, lifecycle: errand, jobs: [{name: t}]}\n",
        )
        .unwrap();
        let mut pool = IpPool::new("10.0.0.0/24".parse().unwrap()).unwrap();
        let mut d = Deployment::new("d");
        d.reconcile(spec, &mut pool, SystemTime::now());
        d
    }

    #[test]
    fn a_running_instance_has_every_field_filled() {
        let d = deployment();
        let row = serde_json::to_value(full_row(&d, &d.instances[0], SystemTime::now())).unwrap();
        assert_eq!(row["job_name"], "web");
        assert_eq!(row["job_state"], "running");
        assert_eq!(row["ips"], json!(["10.0.0.10"]));
        assert_eq!(row["bootstrap"], true);
        assert_eq!(row["active"], true);
        assert_eq!(row["vm_type"], "small");
        assert_eq!(row["stemcell"]["version"], "1.5");
        assert_eq!(row["processes"].as_array().unwrap().len(), 2);
        assert_eq!(row["vitals"]["load"], json!(["0.12", "0.08", "0.03"]));
        let second = full_row(&d, &d.instances[1], SystemTime::now());
        assert!(!second.bootstrap);
    }

    #[test]
    fn an_instance_without_vm_shows_nulls_and_no_ips() {
        let d = deployment();
        let errand = d.instances.iter().find(|i| i.group == "smoke").unwrap();
        let row = serde_json::to_value(full_row(&d, errand, SystemTime::now())).unwrap();
        for key in [
            "vm_cid",
            "active",
            "agent_id",
            "job_state",
            "vitals",
            "vm_created_at",
        ] {
            assert!(row[key].is_null(), "{key}: {row}");
        }
        assert_eq!(row["ips"], json!([]));
        assert_eq!(row["processes"], json!([]));
        assert_eq!(
            row["stemcell"],
            json!({"name": null, "version": null, "api_version": null})
        );
        assert!(!instance_list_row(&d, errand).expects_vm);
        assert!(vm_list_row(errand).is_none());
    }

    #[test]
    fn failing_and_unresponsive_agents_show_in_processes_and_vitals() {
        let mut d = deployment();
        d.instances[0].job_state = Some("failing".into());
        let row = full_row(&d, &d.instances[0], SystemTime::now());
        let states: Vec<&str> = row
            .processes
            .iter()
            .map(|p| p["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["failing", "running"]);
        d.instances[0].job_state = Some("unresponsive agent".into());
        let row = full_row(&d, &d.instances[0], SystemTime::now());
        assert!(row.processes.is_empty() && row.vitals.is_none());
    }
}
