//! Pure: the agents' health applied to a catalog, and what one instance's agent probes.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use super::registry::AgentHealth;
use super::report::ProbeSet;
use crate::catalog::model::{Catalog, Endpoint, InstanceRef, Service};

/// `catalog` with the health the agents report: an endpoint whose instance has a connected
/// agent is healthy when none of its service's ports fails that agent's probe and the
/// instance is not leaving; an instance leaving is out even once its agent is gone (its jobs
/// are stopping). Every other endpoint keeps the director's view. The version is computed
/// again only when an endpoint changed.
pub fn apply(catalog: &Catalog, health: &AgentHealth) -> Catalog {
    let mut next = catalog.clone();
    if health.is_empty() {
        return next;
    }
    let mut changed = false;
    for service in &mut next.services {
        let mut endpoints = std::mem::take(&mut service.endpoints);
        for endpoint in &mut endpoints {
            let (healthy, plaintext) = reported(service, endpoint, health);
            changed |= (endpoint.healthy, endpoint.plaintext) != (healthy, plaintext);
            endpoint.healthy = healthy;
            endpoint.plaintext = plaintext;
        }
        service.endpoints = endpoints;
    }
    if changed {
        next = crate::catalog::rehash(next);
    }
    next
}

/// Like [`apply`], for a new `health` when `published` is `built` with an earlier health
/// applied: `None` when the endpoints would be what `published` has, without cloning the
/// catalog (a mass reconnect of agents reporting what the director already says changes the
/// health thousands of times, and the catalog not once).
pub fn apply_if_changed(
    built: &Catalog,
    health: &AgentHealth,
    published: &Catalog,
) -> Option<Catalog> {
    let same_shape = built.services.len() == published.services.len()
        && built
            .services
            .iter()
            .zip(&published.services)
            .all(|(b, p)| {
                b.key == p.key
                    && b.endpoints.len() == p.endpoints.len()
                    && b.endpoints
                        .iter()
                        .zip(&p.endpoints)
                        .all(|(b, p)| b.instance == p.instance)
            });
    if !same_shape {
        return Some(apply(built, health));
    }
    let unchanged = built
        .services
        .iter()
        .zip(&published.services)
        .all(|(service, published)| {
            service
                .endpoints
                .iter()
                .zip(&published.endpoints)
                .all(|(endpoint, published)| {
                    reported(service, endpoint, health) == (published.healthy, published.plaintext)
                })
        });
    (!unchanged).then(|| apply(built, health))
}

/// An endpoint's health, and whether clients call it in plaintext, with the agents' `health`
/// applied.
fn reported(service: &Service, endpoint: &Endpoint, health: &AgentHealth) -> (bool, bool) {
    let unreported = (endpoint.healthy, endpoint.plaintext);
    if !service.is_job() {
        return unreported;
    }
    match health.get(&service.key.deployment, &endpoint.instance) {
        Some(reported) => {
            let healthy = !reported.leaving
                && !service
                    .ports
                    .iter()
                    .any(|p| reported.failing_ports.contains(&p.number));
            (healthy, reported.plaintext)
        }
        None => unreported,
    }
}

/// Whether no service of `catalog` sends `instance` traffic: each of its endpoints is
/// unhealthy.
pub fn instance_out(catalog: &Catalog, instance: &InstanceRef) -> bool {
    catalog
        .services
        .iter()
        .filter(|s| s.key.deployment == instance.deployment && s.is_job())
        .flat_map(|s| &s.endpoints)
        .all(|e| e.instance != instance.instance_id || !e.healthy)
}

/// Why a stream's claim to be an instance is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unverified {
    /// The director lists the instance, but not at the address the stream comes from.
    ElsewhereListed { listed: IpAddr },
    /// The instance is no endpoint of any service: it exposes nothing to probe (or the
    /// director does not list it at all).
    NothingExposed,
}

impl std::fmt::Display for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unverified::ElsewhereListed { listed } => write!(
                f,
                "the director lists this instance at {listed}, not at the address the agent connects from"
            ),
            Unverified::NothingExposed => {
                write!(f, "the instance is no endpoint of any service of the mesh")
            }
        }
    }
}

/// Every instance that is an endpoint of a service, with its listed address and the ports of
/// its services: built once per catalog, looked up by every agent's stream.
#[derive(Debug, Default)]
pub struct ProbeIndex(HashMap<String, HashMap<String, Listed>>);

#[derive(Debug)]
struct Listed {
    address: IpAddr,
    ports: BTreeSet<u16>,
}

impl ProbeIndex {
    pub fn of(catalog: &Catalog) -> ProbeIndex {
        let mut index: HashMap<String, HashMap<String, Listed>> = HashMap::new();
        // A job's instances, and the VMs registered into WorkloadGroups, whose agents report
        // the same way (their service's deployment is empty: they are instances of their
        // group's config, by their own registration id).
        for service in catalog
            .services
            .iter()
            .filter(|s| s.is_job() || s.workload_group.is_some())
        {
            let deployment = match &service.workload_group {
                Some(group) => group.split_once('/').map_or("", |(config, _)| config),
                None => service.key.deployment.as_str(),
            };
            let instances = index.entry(deployment.to_string()).or_default();
            for endpoint in &service.endpoints {
                let listed = instances
                    .entry(endpoint.instance.clone())
                    .or_insert_with(|| Listed {
                        address: endpoint.address,
                        ports: BTreeSet::new(),
                    });
                listed.ports.extend(service.ports.iter().map(|p| p.number));
            }
        }
        ProbeIndex(index)
    }

    /// The probes of `instance`'s agent, whose stream comes from `peer`: the ports of every
    /// service the instance is an endpoint of, at its listed address. A stream from any other
    /// address than the director's for that instance gets none, so an agent cannot report for
    /// another VM (the mesh client certificate is shared by every VM).
    pub fn probes_for(&self, instance: &InstanceRef, peer: IpAddr) -> Result<ProbeSet, Unverified> {
        let listed = self
            .0
            .get(&instance.deployment)
            .and_then(|instances| instances.get(&instance.instance_id))
            .ok_or(Unverified::NothingExposed)?;
        if listed.address != peer.to_canonical() {
            return Err(Unverified::ElsewhereListed {
                listed: listed.address,
            });
        }
        Ok(ProbeSet {
            address: listed.address,
            ports: listed.ports.iter().copied().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::{Endpoint, Protocol};
    use crate::catalog::testing::{self, endpoint, service};
    use crate::health::registry::RegistryState;
    use crate::health::testing::{instance, report};

    fn banana(id: &str, address: &str) -> Endpoint {
        Endpoint {
            instance: id.into(),
            ..endpoint(address)
        }
    }

    fn mesh() -> Catalog {
        let web = service("d", "banana", "web")
            .vip([169, 254, 255, 1])
            .port("http", 8080, Protocol::Http)
            .endpoint(banana("b-0", "10.0.0.10"))
            .endpoint(banana("b-1", "10.0.0.11"));
        let admin = service("d", "banana", "admin")
            .vip([169, 254, 255, 2])
            .port("admin", 9090, Protocol::Http)
            .endpoint(banana("b-0", "10.0.0.10"))
            .endpoint(banana("b-1", "10.0.0.11"));
        testing::catalog(1, [web, admin])
    }

    fn health_of(catalog: &Catalog, host_prefix: &str) -> Vec<(String, bool)> {
        let service = catalog
            .services
            .iter()
            .find(|s| s.hostname.starts_with(host_prefix))
            .unwrap();
        service
            .endpoints
            .iter()
            .map(|e| (e.instance.clone(), e.healthy))
            .collect()
    }

    #[test]
    fn a_failing_port_takes_its_service_out_and_leaves_the_others() {
        let catalog = mesh();
        let mut state = RegistryState::default();
        state.open(&instance("b-0"));
        state.report(report("b-0", &[9090], false)).unwrap();
        let applied = apply(&catalog, &state.health());
        assert_eq!(
            health_of(&applied, "web."),
            [("b-0".into(), true), ("b-1".into(), true)]
        );
        assert_eq!(
            health_of(&applied, "admin."),
            [("b-0".into(), false), ("b-1".into(), true)]
        );
        assert_ne!(applied.version, catalog.version);
        assert_eq!(
            apply(&catalog, &AgentHealth::default()),
            catalog,
            "no agent: the director's view"
        );
    }

    #[test]
    fn an_agent_that_probes_well_overrides_the_director_and_leaving_takes_every_service_out() {
        let mut catalog = mesh();
        catalog.services[0].endpoints[1].healthy = false; // the director says failing
        let mut state = RegistryState::default();
        state.open(&instance("b-1"));
        state.report(report("b-1", &[], false)).unwrap();
        let applied = apply(&catalog, &state.health());
        assert!(applied.services[0].endpoints[1].healthy);

        assert!(!instance_out(&applied, &instance("b-1")));
        state.report(report("b-1", &[], true)).unwrap();
        let leaving = apply(&catalog, &state.health());
        assert!(leaving
            .services
            .iter()
            .all(|s| !s.endpoints[1].healthy && s.endpoints[0].healthy));
        assert!(instance_out(&leaving, &instance("b-1")));
        assert!(!instance_out(&leaving, &instance("b-0")));
    }

    #[test]
    fn an_agent_saying_plaintext_marks_its_endpoints_and_that_alone_is_a_change() {
        let built = mesh();
        let mut state = RegistryState::default();
        state.open(&instance("b-0"));
        let mut plaintext = report("b-0", &[], false);
        plaintext.plaintext = true;
        state.report(plaintext).unwrap();
        let applied = apply_if_changed(&built, &state.health(), &built).unwrap();
        for service in &applied.services {
            let marked: Vec<(bool, bool)> = service
                .endpoints
                .iter()
                .map(|e| (e.healthy, e.plaintext))
                .collect();
            assert_eq!(marked, [(true, true), (true, false)]);
        }
        assert_ne!(applied.version, built.version);
        // Mutual TLS again: the director's view (no mark) is what the agent says.
        state.report(report("b-0", &[], false)).unwrap();
        assert_eq!(
            apply_if_changed(&built, &state.health(), &applied),
            Some(built)
        );
    }

    #[test]
    fn a_new_health_is_applied_only_when_it_changes_an_endpoint_of_the_published_catalog() {
        let built = mesh();
        let mut state = RegistryState::default();
        state.open(&instance("b-0"));
        state.open(&instance("b-1"));
        // Agents reporting what the director says: nothing to publish.
        state.report(report("b-0", &[], false)).unwrap();
        assert_eq!(apply_if_changed(&built, &state.health(), &built), None);
        state.report(report("b-1", &[], false)).unwrap();
        assert_eq!(apply_if_changed(&built, &state.health(), &built), None);
        // A failing port: the same catalog `apply` gives.
        state.report(report("b-1", &[8080], false)).unwrap();
        let failing = apply_if_changed(&built, &state.health(), &built).unwrap();
        assert_eq!(failing, apply(&built, &state.health()));
        assert_eq!(apply_if_changed(&built, &state.health(), &failing), None);
        // Back: the published catalog has it out, so the director's view comes back.
        state.report(report("b-1", &[], false)).unwrap();
        assert_eq!(
            apply_if_changed(&built, &state.health(), &failing),
            Some(built.clone())
        );
        // The agent gone while its endpoint is out: the director's view again.
        state.close(&instance("b-1"));
        assert_eq!(
            apply_if_changed(&built, &state.health(), &failing),
            Some(built.clone())
        );
        // A published catalog of another shape is never trusted.
        let other = testing::catalog(2, Vec::<Service>::new());
        assert_eq!(
            apply_if_changed(&built, &state.health(), &other),
            Some(apply(&built, &state.health()))
        );
    }

    #[test]
    fn probes_are_the_ports_of_every_service_of_the_instance_at_its_listed_address() {
        let catalog = mesh();
        let probes = ProbeIndex::of(&catalog)
            .probes_for(&instance("b-1"), [10, 0, 0, 11].into())
            .unwrap();
        assert_eq!(
            probes,
            ProbeSet {
                address: [10, 0, 0, 11].into(),
                ports: vec![8080, 9090]
            }
        );
        let mapped: IpAddr = "::ffff:10.0.0.11".parse().unwrap();
        assert_eq!(
            ProbeIndex::of(&catalog).probes_for(&instance("b-1"), mapped),
            Ok(probes),
            "an IPv4 peer seen on a dual-stack socket"
        );
        assert_eq!(
            ProbeIndex::of(&catalog).probes_for(&instance("b-1"), [10, 0, 0, 10].into()),
            Err(Unverified::ElsewhereListed {
                listed: [10, 0, 0, 11].into()
            }),
            "b-0 claiming to be b-1"
        );
        assert_eq!(
            ProbeIndex::of(&catalog).probes_for(&instance("nope"), [10, 0, 0, 10].into()),
            Err(Unverified::NothingExposed)
        );
    }
}
