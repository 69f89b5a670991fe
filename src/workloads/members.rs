//! Pure: the registrations as the rest of the pilot takes them: the endpoints of their
//! groups' services (`rules::entry_services_with`), and instances whose agents' claims,
//! scope changes and certificate requests are checked like a BOSH instance's
//! (`scope::ListedInstances::with_members`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::state::WorkloadState;
use crate::catalog::model::{Endpoint, InstanceRef, Labels};

/// One registered VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub address: IpAddr,
    pub labels: Labels,
}

/// The registered VMs by group (`<config>/<name>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members(BTreeMap<String, Vec<Member>>);

impl Members {
    pub(crate) fn of(state: &WorkloadState) -> Self {
        let mut groups: BTreeMap<String, Vec<Member>> = BTreeMap::new();
        for r in &state.registrations {
            groups.entry(r.group.clone()).or_default().push(Member {
                id: r.id.clone(),
                address: r.address,
                labels: r.labels.clone(),
            });
        }
        for members in groups.values_mut() {
            members.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Members(groups)
    }

    /// The endpoints of `group`'s service: each VM at its address, with its labels and
    /// the group's (the group's win: they say which service it is). Out until judged: the
    /// liveness of its heartbeats decides (`liveness::apply`).
    pub fn endpoints(&self, group: &str, group_labels: &Labels) -> Vec<Endpoint> {
        self.0.get(group).map_or_else(Vec::new, |members| {
            members
                .iter()
                .map(|m| {
                    let mut labels = m.labels.clone();
                    labels.extend(group_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                    Endpoint {
                        address: m.address,
                        az: None,
                        instance: m.id.clone(),
                        index: None,
                        healthy: false,
                        plaintext: false,
                        labels,
                    }
                })
                .collect()
        })
    }

    /// Every VM as an instance: (its instance, its address, its "instance group", the
    /// WorkloadGroup's name).
    pub fn listed(&self) -> impl Iterator<Item = (InstanceRef, IpAddr, String)> + '_ {
        self.0.iter().flat_map(|(group, members)| {
            let (config, name) = group.split_once('/').unwrap_or(("", group));
            members.iter().map(move |m| {
                let instance = InstanceRef {
                    deployment: config.to_string(),
                    instance_id: m.id.clone(),
                };
                (instance, m.address, name.to_string())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::state::Registration;

    fn registration(
        id: &str,
        group: &str,
        address: [u8; 4],
        labels: &[(&str, &str)],
    ) -> Registration {
        Registration {
            id: id.into(),
            group: group.into(),
            address: address.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            token: "0123456789abcdef".into(),
            registered_at: 1,
        }
    }

    #[test]
    fn registrations_are_endpoints_of_their_group_with_the_groups_labels_winning() {
        let state = WorkloadState {
            tokens: Vec::new(),
            registrations: vec![
                registration(
                    "b",
                    "legacy/rabbitmq",
                    [10, 0, 1, 2],
                    &[("app", "mine"), ("zone", "dc1")],
                ),
                registration("a", "legacy/rabbitmq", [10, 0, 1, 1], &[]),
                registration("c", "legacy/postgres", [10, 0, 1, 3], &[]),
            ],
        };
        let members = Members::of(&state);
        let group_labels: Labels = [("app".to_string(), "rabbitmq".to_string())].into();
        let endpoints = members.endpoints("legacy/rabbitmq", &group_labels);
        let ids: Vec<&str> = endpoints.iter().map(|e| e.instance.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(endpoints[1].labels["app"], "rabbitmq");
        assert_eq!(endpoints[1].labels["zone"], "dc1");
        assert!(endpoints
            .iter()
            .all(|e| !e.healthy && e.az.is_none() && e.index.is_none()));
        assert!(members.endpoints("legacy/none", &group_labels).is_empty());
        let listed: Vec<(InstanceRef, IpAddr, String)> = members.listed().collect();
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].0.deployment, "legacy");
        assert_eq!(listed[0].0.instance_id, "c");
        assert_eq!(listed[0].2, "postgres");
    }
}
