//! Deployments and their instances, and how a manifest turns into instances (a deploy).

use std::net::Ipv4Addr;
use std::time::SystemTime;

use super::ipam::IpPool;
use super::manifest::{DeploymentSpec, GroupSpec};

#[derive(Debug, Clone)]
pub struct Vm {
    pub cid: String,
    pub agent_id: String,
    pub created_at: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub group: String,
    pub index: u32,
    pub az: Option<String>,
    /// The instance's IP reservation; it outlives VM recreation, as with BOSH's dynamic IPs.
    pub ip: Option<Ipv4Addr>,
    pub vm: Option<Vm>,
    /// What the agent reports (`running`, `failing`, ...); `None` without a VM.
    pub job_state: Option<String>,
    /// Desired state from the director DB: `started` or `stopped`.
    pub desired_state: &'static str,
}

impl Instance {
    /// `<instance group>/<id>`, how events name instances.
    pub fn label(&self) -> String {
        format!("{}/{}", self.group, self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    UnknownGroup(String),
    UnknownAz(String),
}

/// What one operation did to instances and VMs; it becomes events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    InstanceCreated { instance: String },
    InstanceDeleted { instance: String },
    VmCreated { instance: String, cid: String },
    VmDeleted { instance: String, cid: String },
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub name: String,
    /// Raw text of the last deploy, `None` before the first one succeeds.
    pub manifest: Option<String>,
    /// The last manifest that parsed; instances follow it.
    pub spec: Option<DeploymentSpec>,
    pub instances: Vec<Instance>,
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Gives the instance a VM (and an IP if it has none). Without a free IP it stays without a VM,
/// which is what a failed VM creation looks like.
fn create_vm(instance: &mut Instance, pool: &mut IpPool, now: SystemTime) -> Vec<Change> {
    if instance.vm.is_some() {
        return Vec::new();
    }
    if instance.ip.is_none() {
        instance.ip = pool.allocate();
    }
    if instance.ip.is_none() {
        tracing::warn!(
            instance = %instance.label(),
            "instance network exhausted: instance left without a VM"
        );
        return Vec::new();
    }
    let vm = Vm {
        cid: new_id(),
        agent_id: new_id(),
        created_at: now,
    };
    let change = Change::VmCreated {
        instance: instance.label(),
        cid: vm.cid.clone(),
    };
    instance.vm = Some(vm);
    instance.job_state = Some("running".to_string());
    instance.desired_state = "started";
    vec![change]
}

/// Deletes the VM; with `release_ip` the IP reservation goes too.
fn delete_vm(instance: &mut Instance, pool: &mut IpPool, release_ip: bool) -> Vec<Change> {
    if release_ip {
        if let Some(ip) = instance.ip.take() {
            pool.release(ip);
        }
    }
    instance.job_state = None;
    match instance.vm.take() {
        Some(vm) => vec![Change::VmDeleted {
            instance: instance.label(),
            cid: vm.cid,
        }],
        None => Vec::new(),
    }
}

/// The AZ with the fewest instances of the group, earliest in the manifest on a tie, the way
/// BOSH balances instances across AZs.
fn least_used_az(group: &GroupSpec, instances: &[Instance]) -> Option<String> {
    group
        .azs
        .iter()
        .min_by_key(|az| {
            instances
                .iter()
                .filter(|i| i.group == group.name && i.az.as_deref() == Some(az.as_str()))
                .count()
        })
        .cloned()
}

impl Deployment {
    pub fn new(name: &str) -> Deployment {
        Deployment {
            name: name.to_string(),
            manifest: None,
            spec: None,
            instances: Vec::new(),
        }
    }

    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.id == id)
    }

    fn lowest_free_index(&self, group: &str) -> u32 {
        (0..)
            .find(|index| {
                !self
                    .instances
                    .iter()
                    .any(|i| i.group == group && i.index == *index)
            })
            .expect("an instance group has fewer than u32::MAX instances")
    }

    /// Adds an instance to `group` (with a VM unless it is an errand); returns its position.
    pub fn create_instance(
        &mut self,
        group: &GroupSpec,
        az: Option<String>,
        pool: &mut IpPool,
        now: SystemTime,
    ) -> (usize, Vec<Change>) {
        let mut instance = Instance {
            id: new_id(),
            group: group.name.clone(),
            index: self.lowest_free_index(&group.name),
            az,
            ip: None,
            vm: None,
            job_state: None,
            desired_state: "started",
        };
        let mut changes = vec![Change::InstanceCreated {
            instance: instance.label(),
        }];
        if !group.errand {
            changes.extend(create_vm(&mut instance, pool, now));
        }
        self.instances.push(instance);
        (self.instances.len() - 1, changes)
    }

    fn remove_at(&mut self, position: usize, pool: &mut IpPool) -> Vec<Change> {
        let mut instance = self.instances.remove(position);
        let mut changes = delete_vm(&mut instance, pool, true);
        changes.push(Change::InstanceDeleted {
            instance: instance.label(),
        });
        changes
    }

    /// Makes the instances match `spec`: groups in manifest order, indices ascending, so fresh
    /// deployments get their IPs in a predictable order. Service instances missing a VM get one
    /// (a deploy repairs them); errand instances lose theirs.
    pub fn reconcile(
        &mut self,
        spec: DeploymentSpec,
        pool: &mut IpPool,
        now: SystemTime,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        while let Some(position) = self
            .instances
            .iter()
            .position(|i| spec.group(&i.group).is_none())
        {
            changes.extend(self.remove_at(position, pool));
        }
        for group in &spec.groups {
            loop {
                let mut members: Vec<(u32, usize)> = self
                    .instances
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| i.group == group.name)
                    .map(|(position, i)| (i.index, position))
                    .collect();
                if members.len() <= group.instances as usize {
                    break;
                }
                members.sort();
                let (_, highest) = *members.last().expect("more members than zero");
                changes.extend(self.remove_at(highest, pool));
            }
            let mut members: Vec<usize> = (0..self.instances.len())
                .filter(|&position| self.instances[position].group == group.name)
                .collect();
            members.sort_by_key(|&position| self.instances[position].index);
            for &position in &members {
                let instance = &mut self.instances[position];
                if group.errand {
                    changes.extend(delete_vm(instance, pool, true));
                } else {
                    changes.extend(create_vm(instance, pool, now));
                }
            }
            for _ in members.len()..group.instances as usize {
                let az = least_used_az(group, &self.instances);
                changes.extend(self.create_instance(group, az, pool, now).1);
            }
        }
        self.spec = Some(spec);
        changes
    }

    /// Where a new instance of `group_name` goes: the group of the current manifest and the
    /// requested AZ, or the least used one.
    pub fn placement(
        &self,
        group_name: &str,
        az: Option<String>,
    ) -> Result<(GroupSpec, Option<String>), PlacementError> {
        let group = self
            .spec
            .as_ref()
            .and_then(|spec| spec.group(group_name))
            .cloned()
            .ok_or_else(|| {
                PlacementError::UnknownGroup(format!(
                    "deployment '{}' has no instance group '{group_name}' in its manifest",
                    self.name
                ))
            })?;
        let az = match az {
            Some(az) if group.azs.contains(&az) => Some(az),
            Some(az) => {
                return Err(PlacementError::UnknownAz(format!(
                    "instance group '{group_name}' is not in az '{az}' (azs: {:?})",
                    group.azs
                )))
            }
            None => least_used_az(&group, &self.instances),
        };
        Ok((group, az))
    }

    pub fn remove_instance(&mut self, id: &str, pool: &mut IpPool) -> Option<Vec<Change>> {
        let position = self.instances.iter().position(|i| i.id == id)?;
        Some(self.remove_at(position, pool))
    }

    /// Creates or deletes the instance's VM, keeping its IP reservation.
    pub fn set_vm(
        &mut self,
        id: &str,
        has_vm: bool,
        pool: &mut IpPool,
        now: SystemTime,
    ) -> Option<Vec<Change>> {
        let instance = self.instances.iter_mut().find(|i| i.id == id)?;
        Some(if has_vm {
            create_vm(instance, pool, now)
        } else {
            delete_vm(instance, pool, false)
        })
    }

    /// Deletes every instance (delete-deployment).
    pub fn teardown(&mut self, pool: &mut IpPool) -> Vec<Change> {
        let mut changes = Vec::new();
        while !self.instances.is_empty() {
            changes.extend(self.remove_at(self.instances.len() - 1, pool));
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;

    fn pool() -> IpPool {
        IpPool::new("10.244.0.0/24".parse().unwrap()).unwrap()
    }

    fn spec(web: u32, smoke: u32) -> DeploymentSpec {
        parse(&format!(
            "instance_groups:\n\
             - {{name: web, instances: {web}, azs: [z1, z2, z3], jobs: [{{name: httpbin}}]}}\n\
             - {{name: smoke, instances: {smoke}, lifecycle: errand, jobs: [{{name: t}}]}}\n"
        ))
        .unwrap()
    }

    fn ips(deployment: &Deployment) -> Vec<String> {
        deployment
            .instances
            .iter()
            .map(|i| i.ip.map(|ip| ip.to_string()).unwrap_or_default())
            .collect()
    }

    #[test]
    fn a_fresh_deploy_spreads_azs_round_robin_and_assigns_ips_in_order() {
        let mut pool = pool();
        let mut d = Deployment::new("d");
        let changes = d.reconcile(spec(4, 1), &mut pool, SystemTime::now());
        let azs: Vec<_> = d.instances.iter().map(|i| i.az.clone()).collect();
        assert_eq!(
            azs,
            ["z1", "z2", "z3", "z1"]
                .map(|z| Some(z.to_string()))
                .into_iter()
                .chain([None])
                .collect::<Vec<_>>()
        );
        assert_eq!(
            ips(&d),
            [
                "10.244.0.10",
                "10.244.0.11",
                "10.244.0.12",
                "10.244.0.13",
                ""
            ]
        );
        let errand = &d.instances[4];
        assert!(errand.vm.is_none() && errand.job_state.is_none());
        let created = changes
            .iter()
            .filter(|c| matches!(c, Change::InstanceCreated { .. }))
            .count();
        let vms = changes
            .iter()
            .filter(|c| matches!(c, Change::VmCreated { .. }))
            .count();
        assert_eq!((created, vms), (5, 4));
    }

    #[test]
    fn scaling_down_removes_highest_indices_and_frees_their_ips_for_reuse() {
        let mut pool = pool();
        let mut d = Deployment::new("d");
        d.reconcile(spec(4, 0), &mut pool, SystemTime::now());
        let changes = d.reconcile(spec(2, 0), &mut pool, SystemTime::now());
        assert_eq!(
            d.instances.iter().map(|i| i.index).collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(changes.len(), 4, "{changes:?}");
        let (group, az) = d.placement("web", None).unwrap();
        let (position, _) = d.create_instance(&group, az, &mut pool, SystemTime::now());
        assert_eq!(d.instances[position].index, 2);
        assert_eq!(d.instances[position].az.as_deref(), Some("z3"));
        assert_eq!(
            d.instances[position].ip,
            Some("10.244.0.12".parse().unwrap())
        );
        assert!(matches!(
            d.placement("nope", None),
            Err(PlacementError::UnknownGroup(_))
        ));
        assert!(matches!(
            d.placement("web", Some("z9".into())),
            Err(PlacementError::UnknownAz(_))
        ));
    }

    #[test]
    fn a_vm_can_go_and_come_back_with_the_same_ip_and_a_deploy_repairs_it() {
        let mut pool = pool();
        let mut d = Deployment::new("d");
        d.reconcile(spec(1, 0), &mut pool, SystemTime::now());
        let id = d.instances[0].id.clone();
        let old_cid = d.instances[0].vm.as_ref().unwrap().cid.clone();
        d.set_vm(&id, false, &mut pool, SystemTime::now()).unwrap();
        assert!(d.instances[0].vm.is_none() && d.instances[0].job_state.is_none());
        d.reconcile(spec(1, 0), &mut pool, SystemTime::now());
        let instance = d.instance(&id).unwrap();
        assert_ne!(instance.vm.as_ref().unwrap().cid, old_cid);
        assert_eq!(instance.ip, Some("10.244.0.10".parse().unwrap()));
        assert_eq!(instance.job_state.as_deref(), Some("running"));
    }

    #[test]
    fn removed_groups_and_teardown_release_everything() {
        let mut pool = pool();
        let mut d = Deployment::new("d");
        d.reconcile(spec(2, 0), &mut pool, SystemTime::now());
        let only_smoke =
            parse("instance_groups:\n- {name: smoke, instances: 1, lifecycle: errand}\n").unwrap();
        d.reconcile(only_smoke, &mut pool, SystemTime::now());
        assert_eq!(d.instances.len(), 1);
        assert_eq!(pool.allocate(), Some("10.244.0.10".parse().unwrap()));
        assert_eq!(d.teardown(&mut pool).len(), 1);
        assert!(d.instances.is_empty());
    }
}
