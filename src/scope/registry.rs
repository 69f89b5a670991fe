//! The pilot's record of what each VM asked for: the hostnames its agent put in its scope,
//! one `watch` channel per instance, which that instance's ADS streams follow. Also who the
//! director lists where, so that an agent changes the scope of its own instance only.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use super::wire::ScopeChange;
use crate::catalog::model::{DeploymentInput, InstanceRef};

/// One instance's scope as its ADS streams see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceScope {
    /// Grows with every change, across every instance: a stream that has sent Envoy the
    /// resources of generation `g` holds everything asked for up to `g`.
    pub generation: u64,
    /// `None` until the instance's agent has told this pilot (after a pilot restart, until it
    /// reconnects): its Envoy's streams then wait a little, and get the whole mesh after that.
    pub asked: Option<Arc<BTreeSet<String>>>,
}

/// Every instance's scope, and the director's list of instances to check the claims against.
#[derive(Debug, Default)]
pub struct ScopeRegistry {
    scopes: Mutex<HashMap<InstanceRef, watch::Sender<InstanceScope>>>,
    generations: AtomicU64,
    listed: RwLock<Arc<ListedInstances>>,
}

/// The addresses the director lists for each instance, and its instance group.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListedInstances(HashMap<InstanceRef, Listed>);

#[derive(Debug, PartialEq, Eq)]
struct Listed {
    addresses: Vec<IpAddr>,
    instance_group: String,
}

impl ListedInstances {
    /// Every instance of `deployments` with its parseable addresses (the director's `ips`).
    pub fn of(deployments: &[DeploymentInput]) -> Self {
        let mut listed = HashMap::new();
        for deployment in deployments {
            for instance in deployment.instances.iter() {
                let addresses: Vec<IpAddr> = instance
                    .ips
                    .iter()
                    .filter_map(|ip| ip.split('/').next()?.parse().ok())
                    .collect();
                listed.insert(
                    InstanceRef {
                        deployment: deployment.name.clone(),
                        instance_id: instance.id.clone(),
                    },
                    Listed {
                        addresses,
                        instance_group: instance.instance_group.clone(),
                    },
                );
            }
        }
        ListedInstances(listed)
    }

    /// With the VMs registered into WorkloadGroups (`workloads::members`), each an instance
    /// of its group listed at the address it joined from: its agent speaks for it as a BOSH
    /// VM's does.
    pub fn with_members(
        mut self,
        members: impl IntoIterator<Item = (InstanceRef, IpAddr, String)>,
    ) -> Self {
        for (instance, address, instance_group) in members {
            self.0.insert(
                instance,
                Listed {
                    addresses: vec![address],
                    instance_group,
                },
            );
        }
        self
    }
}

/// Why a scope change is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeRefused {
    NotListed,
    ElsewhereListed,
}

impl std::fmt::Display for ScopeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScopeRefused::NotListed => write!(f, "the director lists no such instance"),
            ScopeRefused::ElsewhereListed => write!(
                f,
                "the director lists that instance at another address than the request's"
            ),
        }
    }
}

impl ScopeRegistry {
    /// The scope of `instance`, followed: created (not known yet) if nobody asked before.
    pub fn watch(&self, instance: &InstanceRef) -> watch::Receiver<InstanceScope> {
        let mut scopes = self.scopes.lock().expect("scope registry lock");
        scopes
            .entry(instance.clone())
            .or_insert_with(|| watch::Sender::new(InstanceScope::default()))
            .subscribe()
    }

    /// Whether a request from `peer` may change `instance`'s scope: the director lists the
    /// instance at that address (the mesh's client certificate is shared by every VM).
    pub fn verify(&self, instance: &InstanceRef, peer: IpAddr) -> Result<(), ScopeRefused> {
        self.instance_group(instance, peer).map(drop)
    }

    /// The instance group of `instance`, when a request from `peer` may speak for it (as
    /// [`Self::verify`]): what its workload identity is made of.
    pub fn instance_group(
        &self,
        instance: &InstanceRef,
        peer: IpAddr,
    ) -> Result<String, ScopeRefused> {
        let listed = self.listed.read().expect("listed lock").clone();
        let entry = listed.0.get(instance).ok_or(ScopeRefused::NotListed)?;
        if entry.addresses.contains(&peer.to_canonical()) {
            Ok(entry.instance_group.clone())
        } else {
            Err(ScopeRefused::ElsewhereListed)
        }
    }

    /// Applies `change` to `instance`'s scope; the generation that holds it (the current one
    /// when it changed nothing).
    pub fn change(&self, instance: &InstanceRef, change: &ScopeChange) -> u64 {
        let mut scopes = self.scopes.lock().expect("scope registry lock");
        let sender = scopes
            .entry(instance.clone())
            .or_insert_with(|| watch::Sender::new(InstanceScope::default()));
        let mut generation = sender.borrow().generation;
        sender.send_if_modified(|scope| {
            let current = scope.asked.as_deref();
            let next: BTreeSet<String> = match change {
                ScopeChange::Add(hosts) => current
                    .into_iter()
                    .flatten()
                    .chain(hosts)
                    .cloned()
                    .collect(),
                ScopeChange::Set(hosts) => hosts.iter().cloned().collect(),
            };
            if current == Some(&next) {
                return false;
            }
            generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
            *scope = InstanceScope {
                generation,
                asked: Some(Arc::new(next)),
            };
            true
        });
        generation
    }

    /// Takes the director's current list; forgets the scopes of instances it no longer lists
    /// that no stream follows.
    pub fn set_listed(&self, listed: ListedInstances) {
        let mut scopes = self.scopes.lock().expect("scope registry lock");
        scopes.retain(|instance, sender| {
            listed.0.contains_key(instance) || sender.receiver_count() > 0
        });
        *self.listed.write().expect("listed lock") = Arc::new(listed);
    }

    /// Instances with a scope known here.
    pub fn known(&self) -> usize {
        let scopes = self.scopes.lock().expect("scope registry lock");
        scopes
            .values()
            .filter(|s| s.borrow().asked.is_some())
            .count()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::ListedInstances;
    use crate::catalog::model::{DeploymentInput, Instance};

    /// The director's list: instance `id` of deployment `d`, at `ips`.
    pub(crate) fn listed(id: &str, ips: &[&str]) -> ListedInstances {
        let instance = Instance {
            id: id.into(),
            instance_group: "g".into(),
            index: Some(0),
            az: None,
            ips: ips.iter().map(|s| s.to_string()).collect(),
            job_state: None,
            vm_cid: Some("vm".into()),
            bootstrap: None,
        };
        ListedInstances::of(&[DeploymentInput {
            name: "d".into(),
            manifest: Default::default(),
            instances: Arc::new(vec![instance]),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::testing::instance;

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_scope_is_unknown_until_its_agent_tells_and_each_change_gets_a_new_generation() {
        let registry = ScopeRegistry::default();
        let mut apricot = registry.watch(&instance("a-1"));
        assert_eq!(apricot.borrow_and_update().asked, None);

        let first = registry.change(&instance("a-1"), &ScopeChange::Set(vec![]));
        assert!(apricot.has_changed().unwrap());
        assert_eq!(
            apricot.borrow_and_update().asked.as_deref(),
            Some(&BTreeSet::new())
        );
        let added = registry.change(&instance("a-1"), &ScopeChange::Add(hosts(&["x.boshy"])));
        assert!(added > first);
        let again = registry.change(&instance("a-1"), &ScopeChange::Add(hosts(&["x.boshy"])));
        assert_eq!(again, added, "nothing new: the same generation");
        assert!(apricot.has_changed().unwrap());
        apricot.borrow_and_update();
        assert!(!apricot.has_changed().unwrap());

        let other = registry.change(&instance("b-1"), &ScopeChange::Add(hosts(&["y.boshy"])));
        assert!(other > added, "generations grow across instances");
        let set = registry.change(&instance("a-1"), &ScopeChange::Set(hosts(&["y.boshy"])));
        assert!(set > other);
        let scope = apricot.borrow_and_update().clone();
        assert_eq!(scope.generation, set);
        assert_eq!(
            scope.asked.as_deref().unwrap().iter().collect::<Vec<_>>(),
            ["y.boshy"],
            "a set replaces"
        );
        assert_eq!(registry.known(), 2);
    }

    #[test]
    fn a_registered_vm_is_listed_at_its_address_under_its_group() {
        let registry = ScopeRegistry::default();
        let vm = InstanceRef {
            deployment: "legacy".into(),
            instance_id: "6c1f".into(),
        };
        let address: IpAddr = "10.249.0.30".parse().unwrap();
        registry.set_listed(testing::listed("a-1", &["10.0.0.5"]).with_members([(
            vm.clone(),
            address,
            "rabbitmq".to_string(),
        )]));
        assert_eq!(registry.instance_group(&vm, address), Ok("rabbitmq".into()));
        assert_eq!(
            registry.verify(&vm, "10.0.0.5".parse().unwrap()),
            Err(ScopeRefused::ElsewhereListed)
        );
        assert_eq!(
            registry.verify(&instance("a-1"), "10.0.0.5".parse().unwrap()),
            Ok(())
        );
    }

    #[test]
    fn only_the_listed_address_changes_an_instance_scope_and_unlisted_scopes_are_forgotten() {
        let registry = ScopeRegistry::default();
        let address: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(
            registry.verify(&instance("a-1"), address),
            Err(ScopeRefused::NotListed)
        );
        registry.set_listed(testing::listed("a-1", &["10.0.0.5"]));
        assert_eq!(registry.verify(&instance("a-1"), address), Ok(()));
        assert_eq!(
            registry.instance_group(&instance("a-1"), address),
            Ok("g".to_string()),
            "the director's instance group"
        );
        assert_eq!(
            registry.instance_group(&instance("a-1"), "10.0.0.6".parse().unwrap()),
            Err(ScopeRefused::ElsewhereListed)
        );
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert_eq!(
            registry.verify(&instance("a-1"), mapped),
            Ok(()),
            "an IPv4-mapped peer"
        );
        assert_eq!(
            registry.verify(&instance("a-1"), "10.0.0.6".parse().unwrap()),
            Err(ScopeRefused::ElsewhereListed)
        );

        registry.change(&instance("a-1"), &ScopeChange::Set(vec![]));
        registry.change(&instance("gone"), &ScopeChange::Set(vec![]));
        let followed = registry.watch(&instance("gone-but-followed"));
        registry.change(&instance("gone-but-followed"), &ScopeChange::Set(vec![]));
        registry.set_listed(testing::listed("a-1", &["10.0.0.5"]));
        assert_eq!(registry.known(), 2, "a-1 and the one a stream follows");
        drop(followed);
    }
}
