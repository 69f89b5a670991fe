//! The mesh as rules are checked against it: its hostnames, their ports, and the labels of
//! the instances behind each. The pilot fills it from its catalog; `boshy rules check` from a
//! saved `GET /v1/registration` answer.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::catalog::model::{Catalog, Protocol};
use crate::traffic::security::WorkloadKey;

use super::model::Labels;

/// The services of the mesh, by hostname (`reviews.reviews-v1.bookinfo.boshy`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshView {
    pub hosts: BTreeMap<String, MeshHost>,
    /// Whether the instances' labels are known. When they are not (a registration saved
    /// before instances had labels), subsets and workload selectors are not checked against
    /// instances: every one would select nothing.
    pub labels_known: bool,
    /// The mesh's domain (`boshy`): the hosts a ServiceEntry defines are under it, since the
    /// VMs' resolver answers for it alone. `None`: not known, not checked.
    pub tld: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshHost {
    pub ports: Vec<MeshPort>,
    pub instances: Vec<MeshInstance>,
    /// The deployment and instance group of the job behind it (what a security policy
    /// applies to); `None` when not known (a registration that does not say).
    pub workload: Option<WorkloadKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshPort {
    pub number: u16,
    pub protocol: Protocol,
}

/// One instance behind a hostname. An instance that runs several exposed jobs appears under
/// each of their hostnames, with the same id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshInstance {
    /// The director's instance id.
    pub id: String,
    pub labels: Labels,
}

impl MeshHost {
    /// A host with these `(number, protocol)` ports and `(instance id, labels)` instances.
    fn new(
        workload: Option<WorkloadKey>,
        ports: impl Iterator<Item = (u16, Protocol)>,
        instances: impl Iterator<Item = (String, Labels)>,
    ) -> MeshHost {
        MeshHost {
            workload,
            ports: ports
                .map(|(number, protocol)| MeshPort { number, protocol })
                .collect(),
            instances: instances
                .map(|(id, labels)| MeshInstance { id, labels })
                .collect(),
        }
    }
}

/// Whether `labels` has every label of `selector` (an empty selector selects everything).
pub(crate) fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector
        .iter()
        .all(|(name, value)| labels.get(name) == Some(value))
}

/// The instances a workload selector picks anywhere in the mesh, and the ports they expose.
pub(crate) struct Selection<'a> {
    /// By instance id, each once.
    pub(crate) instances: BTreeMap<&'a str, &'a Labels>,
    pub(crate) ports: BTreeSet<u16>,
}

impl MeshView {
    pub(crate) fn select(&self, selector: &Labels) -> Selection<'_> {
        let mut selection = Selection {
            instances: BTreeMap::new(),
            ports: BTreeSet::new(),
        };
        for host in self.hosts.values() {
            for instance in &host.instances {
                if selects(selector, &instance.labels) {
                    selection.instances.insert(&instance.id, &instance.labels);
                    selection.ports.extend(host.ports.iter().map(|p| p.number));
                }
            }
        }
        selection
    }

    /// The instance groups (of `deployment`, when given) with a job whose instances have the
    /// labels of `selector` (`None`: every group), each with the ports of all its jobs:
    /// what a security policy applies to. Groups the view cannot name are left out.
    pub(crate) fn workloads(
        &self,
        deployment: Option<&str>,
        selector: Option<&Labels>,
    ) -> BTreeMap<&WorkloadKey, BTreeSet<u16>> {
        let in_scope = |workload: &WorkloadKey| deployment.is_none_or(|d| d == workload.deployment);
        let selected: BTreeSet<&WorkloadKey> = self
            .hosts
            .values()
            .filter(|host| {
                selector.is_none_or(|selector| {
                    let has = |i: &MeshInstance| selects(selector, &i.labels);
                    host.instances.iter().any(has)
                })
            })
            .filter_map(|host| host.workload.as_ref())
            .filter(|workload| in_scope(workload))
            .collect();
        let mut workloads: BTreeMap<&WorkloadKey, BTreeSet<u16>> = BTreeMap::new();
        for host in self.hosts.values() {
            if let Some(workload) = host.workload.as_ref().filter(|w| selected.contains(w)) {
                let ports = host.ports.iter().map(|port| port.number);
                workloads.entry(workload).or_default().extend(ports);
            }
        }
        workloads
    }

    /// The mesh as the pilot's catalog has it: every service a job exposes with its ports and
    /// the labels of its endpoints (the catalog always carries labels). The services
    /// ServiceEntries and WorkloadGroups define are left out: the rules define them again as they are checked.
    pub fn from_catalog(catalog: &Catalog) -> MeshView {
        let hosts = catalog
            .services
            .iter()
            .filter(|service| service.is_job())
            .map(|service| {
                let workload = WorkloadKey {
                    deployment: service.key.deployment.clone(),
                    instance_group: service.key.instance_group.clone(),
                };
                let host = MeshHost::new(
                    Some(workload),
                    service
                        .ports
                        .iter()
                        .map(|port| (port.number, port.protocol)),
                    service
                        .endpoints
                        .iter()
                        .map(|endpoint| (endpoint.instance.clone(), endpoint.labels.clone())),
                );
                (service.hostname.clone(), host)
            })
            .collect();
        MeshView {
            hosts,
            labels_known: true,
            tld: Some(catalog.tld.clone()),
        }
    }

    /// Reads a saved answer of the pilot's `GET /v1/registration` (`api.rs` has its shape).
    /// Keys it does not use are ignored, as a client of that contract should. Instances have
    /// labels when the endpoints carry a `labels` mapping; if no endpoint does,
    /// `labels_known` is false.
    pub fn from_registration_json(json: &str) -> Result<MeshView, String> {
        let deserializer = &mut serde_json::Deserializer::from_str(json);
        let services: Vec<RegisteredService> = serde_path_to_error::deserialize(deserializer)
            .map_err(|err| {
                format!(
                    "not a /v1/registration answer: at {}: {}",
                    err.path(),
                    err.inner()
                )
            })?;
        let mut view = MeshView::default();
        // The services ServiceEntries and WorkloadGroups define are the rules' own, defined
        // again as they are checked (as `from_catalog` leaves them out).
        let jobs = services
            .into_iter()
            .filter(|s| s.service_entry.is_none() && s.workload_group.is_none());
        for service in jobs {
            view.labels_known |= service.endpoints.iter().any(|e| e.labels.is_some());
            let workload = match (service.deployment, service.instance_group) {
                (Some(deployment), Some(instance_group)) => Some(WorkloadKey {
                    deployment,
                    instance_group,
                }),
                _ => None,
            };
            let host = MeshHost::new(
                workload,
                service
                    .ports
                    .iter()
                    .map(|port| (port.number, port.protocol)),
                service
                    .endpoints
                    .into_iter()
                    .map(|endpoint| (endpoint.instance, endpoint.labels.unwrap_or_default())),
            );
            view.hosts.insert(service.hostname, host);
        }
        Ok(view)
    }
}

#[derive(Deserialize)]
struct RegisteredService {
    hostname: String,
    #[serde(default)]
    deployment: Option<String>,
    #[serde(default)]
    instance_group: Option<String>,
    #[serde(default)]
    service_entry: Option<String>,
    #[serde(default)]
    workload_group: Option<String>,
    ports: Vec<RegisteredPort>,
    #[serde(default)]
    endpoints: Vec<RegisteredEndpoint>,
}

#[derive(Deserialize)]
struct RegisteredPort {
    number: u16,
    protocol: Protocol,
}

#[derive(Deserialize)]
struct RegisteredEndpoint {
    instance: String,
    labels: Option<Labels>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTRATION: &str = r#"[
      {"hostname": "reviews.reviews-v1.bookinfo.boshy", "vip": "169.254.255.3",
       "deployment": "bookinfo", "instance_group": "reviews-v1", "job": "reviews",
       "ports": [{"name": "http", "number": 9080, "protocol": "http"}],
       "endpoints": [{"address": "10.0.0.5", "az": "z1", "instance": "i-1", "index": 0,
                      "healthy": true, "labels": {"app": "reviews", "version": "v1"}}]},
      {"hostname": "sidecar.reviews-v1.bookinfo.boshy", "vip": "169.254.255.4",
       "deployment": "bookinfo", "instance_group": "reviews-v1", "job": "sidecar",
       "ports": [{"name": "metrics", "number": 9100, "protocol": "tcp"}],
       "endpoints": [{"address": "10.0.0.5", "az": "z1", "instance": "i-1", "index": 0,
                      "healthy": true, "labels": {"app": "reviews", "version": "v1"}}]}
    ]"#;

    #[test]
    fn a_registration_becomes_a_mesh_view() {
        let view = MeshView::from_registration_json(REGISTRATION).unwrap();
        assert!(view.labels_known);
        let reviews = &view.hosts["reviews.reviews-v1.bookinfo.boshy"];
        assert_eq!(
            reviews.ports,
            [MeshPort {
                number: 9080,
                protocol: Protocol::Http
            }]
        );
        assert_eq!(reviews.instances[0].labels["version"], "v1");
        let workload = reviews.workload.as_ref().unwrap();
        assert_eq!(
            (
                workload.deployment.as_str(),
                workload.instance_group.as_str()
            ),
            ("bookinfo", "reviews-v1")
        );
        let selection = view.select(&[("app".into(), "reviews".into())].into());
        assert_eq!(
            selection.instances.len(),
            1,
            "one instance, under two hostnames"
        );
        assert_eq!(selection.ports, [9080, 9100].into());
        assert!(view
            .select(&[("app".into(), "x".into())].into())
            .instances
            .is_empty());
    }

    #[test]
    fn a_registration_without_labels_says_labels_are_unknown() {
        let json = r#"[{"hostname": "j.g.d.boshy", "vip": "169.254.255.1", "ports": [],
                        "endpoints": [{"address": "10.0.0.1", "instance": "u"}]}]"#;
        let view = MeshView::from_registration_json(json).unwrap();
        assert!(!view.labels_known);
        assert!(view.hosts["j.g.d.boshy"].instances[0].labels.is_empty());
        assert_eq!(view.hosts["j.g.d.boshy"].workload, None);
    }

    #[test]
    fn a_file_that_is_not_a_registration_is_an_error_that_says_where() {
        let err =
            MeshView::from_registration_json(r#"[{"hostname": "a", "ports": [{"number": "x"}]}]"#)
                .unwrap_err();
        assert!(err.contains("[0].ports[0].number"), "{err}");
        assert!(MeshView::from_registration_json("{}").is_err());
    }

    #[test]
    fn a_selector_needs_every_label() {
        let labels: Labels = [("app".into(), "a".into()), ("v".into(), "1".into())].into();
        assert!(selects(&Labels::new(), &labels));
        assert!(selects(&[("v".into(), "1".into())].into(), &labels));
        assert!(!selects(&[("v".into(), "2".into())].into(), &labels));
        assert!(!selects(&[("w".into(), "1".into())].into(), &labels));
    }
}
