//! Pure: a deployment's instances as the poller publishes them, from its topology (the
//! synchronous instance list, §3.4) and its last health reading (an `instances?format=full`
//! task, §3.3), merged by instance id and VM (docs/director-api.md §8.3).

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::model::{Instance, ParsedManifest};

/// The `job_state` presumed for a VM that was there at the pilot's first look and has not
/// been read yet: a restarting pilot must not take a running foundation out of the mesh.
const PRESUMED_STATE: &str = "running";

/// A VM: the instance's id and the VM's cid. A reading of one VM says nothing of the next VM
/// of the same instance.
pub(crate) type VmKey = (String, String);

/// The rows of a deployment's last health reading, by instance id.
#[derive(Debug, Default)]
pub(crate) struct HealthReading {
    rows: BTreeMap<String, Instance>,
}

impl HealthReading {
    pub fn new(rows: Vec<Instance>) -> HealthReading {
        HealthReading {
            rows: rows.into_iter().map(|row| (row.id.clone(), row)).collect(),
        }
    }
}

/// The VMs of a topology: what is presumed running when it is the pilot's first look.
pub(crate) fn vms(topology: &[Instance]) -> BTreeSet<VmKey> {
    topology
        .iter()
        .filter_map(|i| Some((i.id.clone(), i.vm_cid.clone()?)))
        .collect()
}

/// The topology with each VM's health: the reading's `job_state` when it read that VM,
/// `running` when the VM is presumed so, otherwise none (not healthy); `bootstrap` from the
/// reading, which alone says it.
pub(crate) fn merge(
    topology: &[Instance],
    reading: &HealthReading,
    presumed: &BTreeSet<VmKey>,
) -> Vec<Instance> {
    topology
        .iter()
        .map(|instance| {
            let row = reading.rows.get(&instance.id);
            let job_state = instance.vm_cid.as_ref().and_then(|vm| {
                match row.filter(|r| r.vm_cid.as_ref() == Some(vm)) {
                    Some(read) => read.job_state.clone(),
                    None => presumed
                        .contains(&(instance.id.clone(), vm.clone()))
                        .then(|| PRESUMED_STATE.to_string()),
                }
            });
            Instance {
                job_state,
                bootstrap: row.and_then(|r| r.bootstrap),
                ..instance.clone()
            }
        })
        .collect()
}

/// The ids of the instances a health reading is for: with a VM, in an instance group that
/// declares services. Others are never endpoints.
pub(crate) fn subjects(manifest: &ParsedManifest, topology: &[Instance]) -> BTreeSet<String> {
    let groups: BTreeSet<&str> = manifest
        .services
        .iter()
        .map(|s| s.key.instance_group.as_str())
        .collect();
    topology
        .iter()
        .filter(|i| i.vm_cid.is_some() && groups.contains(i.instance_group.as_str()))
        .map(|i| i.id.clone())
        .collect()
}

/// Whether one of `subjects` has a VM with no health yet (a VM created since the pilot's
/// first look): its deployment's reading is urgent.
pub(crate) fn awaits_reading(merged: &[Instance], subjects: &BTreeSet<String>) -> bool {
    merged
        .iter()
        .any(|i| i.job_state.is_none() && i.vm_cid.is_some() && subjects.contains(&i.id))
}

/// Whether the reading shows a VM the topology does not have: the topology is older than the
/// reading and is fetched again, instead of asking for readings that can never match it.
pub(crate) fn reading_is_newer(topology: &[Instance], reading: &HealthReading) -> bool {
    let known = vms(topology);
    reading.rows.values().any(|row| {
        row.vm_cid
            .as_ref()
            .is_some_and(|vm| !known.contains(&(row.id.clone(), vm.clone())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::{ServiceDecl, ServiceKey};

    fn instance(id: &str, group: &str, vm: Option<&str>) -> Instance {
        Instance {
            id: id.into(),
            instance_group: group.into(),
            index: Some(0),
            az: Some("z1".into()),
            ips: vec!["10.0.0.1".into()],
            job_state: None,
            vm_cid: vm.map(str::to_string),
            bootstrap: None,
        }
    }

    fn read(id: &str, vm: Option<&str>, state: &str, bootstrap: bool) -> Instance {
        Instance {
            job_state: Some(state.into()),
            bootstrap: Some(bootstrap),
            ..instance(id, "g", vm)
        }
    }

    fn states(merged: &[Instance]) -> Vec<(&str, Option<&str>, Option<bool>)> {
        merged
            .iter()
            .map(|i| (i.id.as_str(), i.job_state.as_deref(), i.bootstrap))
            .collect()
    }

    #[test]
    fn a_reading_applies_to_the_vm_it_read_and_presumption_to_vms_of_the_first_look() {
        let topology = [
            instance("a", "g", Some("vm-a")),
            instance("b", "g", Some("vm-b2")),
            instance("c", "g", Some("vm-c")),
            instance("d", "g", Some("vm-d")),
            instance("e", "g", None),
        ];
        let reading = HealthReading::new(vec![
            read("a", Some("vm-a"), "failing", true),
            // b's VM was recreated since: the reading is of the old one.
            read("b", Some("vm-b1"), "running", false),
        ]);
        let presumed = BTreeSet::from([("c".to_string(), "vm-c".to_string())]);
        let merged = merge(&topology, &reading, &presumed);
        assert_eq!(
            states(&merged),
            [
                ("a", Some("failing"), Some(true)),
                ("b", None, Some(false)),
                ("c", Some("running"), None),
                ("d", None, None),
                ("e", None, None),
            ]
        );
        // Topology (addresses, AZ, VM) always comes from the instance list.
        assert_eq!(merged[1].vm_cid.as_deref(), Some("vm-b2"));
        assert_eq!(merged[0].ips, topology[0].ips);
    }

    #[test]
    fn subjects_are_instances_with_a_vm_in_groups_that_declare_services() {
        let manifest = ParsedManifest {
            services: vec![ServiceDecl {
                key: ServiceKey {
                    deployment: "d".into(),
                    instance_group: "web".into(),
                    job: "j".into(),
                },
                dns_name: "j.web.d".into(),
                ports: Vec::new(),
                labels: Default::default(),
            }],
            ..ParsedManifest::default()
        };
        let topology = [
            instance("w1", "web", Some("vm")),
            instance("w2", "web", None),
            instance("x1", "worker", Some("vm")),
        ];
        let subjects = subjects(&manifest, &topology);
        assert_eq!(subjects, BTreeSet::from(["w1".to_string()]));
        let merged = merge(&topology, &HealthReading::default(), &BTreeSet::new());
        assert!(awaits_reading(&merged, &subjects), "w1 has no health yet");
        let reading = HealthReading::new(vec![read("w1", Some("vm"), "running", true)]);
        let merged = merge(&topology, &reading, &BTreeSet::new());
        assert!(!awaits_reading(&merged, &subjects));
    }

    #[test]
    fn a_reading_with_a_vm_the_topology_lacks_is_newer() {
        let topology = [instance("a", "g", Some("vm-1")), instance("b", "g", None)];
        let same = HealthReading::new(vec![
            read("a", Some("vm-1"), "running", true),
            read("b", None, "running", false),
        ]);
        assert!(!reading_is_newer(&topology, &same));
        let recreated = HealthReading::new(vec![read("a", Some("vm-2"), "running", true)]);
        assert!(reading_is_newer(&topology, &recreated));
        let added = HealthReading::new(vec![read("c", Some("vm-3"), "running", true)]);
        assert!(reading_is_newer(&topology, &added));
    }
}
