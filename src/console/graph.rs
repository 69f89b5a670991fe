//! Pure: the console's service graph (`GET /v1/graph`): the catalog's services as nodes,
//! grouped by instance group and deployment, with the health of their endpoints, and the calls
//! the agents reported as edges from each calling instance group to each service, with request
//! rate, error ratio and p99 duration.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Serialize;

use super::board::CallerWindow;
use super::wire::{Calls, DURATION_BUCKETS_MS};
use crate::catalog::model::{Catalog, Service};

/// Where the graph puts the services that Istio ServiceEntries define: they belong to no
/// deployment.
pub(crate) const SERVICE_ENTRIES: &str = "ServiceEntry";

/// Where the graph puts the services of Istio WorkloadGroups (VMs outside BOSH).
const WORKLOAD_GROUPS: &str = "WorkloadGroup";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Graph {
    /// Sorted by name; the service entries' last.
    pub deployments: Vec<DeploymentNode>,
    /// Sorted by source, then destination.
    pub edges: Vec<Edge>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DeploymentNode {
    pub name: String,
    pub instance_groups: Vec<GroupNode>,
}

/// An instance group: the services it exposes (none for one that only calls), and how many
/// of its instances reported calls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct GroupNode {
    pub name: String,
    pub services: Vec<ServiceNode>,
    pub reporting_instances: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ServiceNode {
    pub hostname: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<u16>,
    pub healthy_endpoints: usize,
    pub unhealthy_endpoints: usize,
}

/// An instance group by its BOSH names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct GroupRef {
    pub deployment: String,
    pub instance_group: String,
}

/// The calls of one instance group to one service, summed over its reporting instances.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Edge {
    pub source: GroupRef,
    /// The service's hostname.
    pub destination: String,
    /// The instance group serving it; `None` for a hostname the catalog no longer has.
    pub destination_group: Option<GroupRef>,
    pub requests_per_second: f64,
    /// Of the requests, the share answered 5xx or not at all (0 to 1).
    pub error_ratio: f64,
    /// The 99th percentile of the request durations, interpolated within Istio's buckets as
    /// Prometheus's `histogram_quantile` does; `None` without requests.
    pub p99_ms: Option<f64>,
    pub connections_per_second: f64,
    pub failed_connection_ratio: f64,
    /// How many instances of the source reported these calls.
    pub reporting_instances: usize,
}

/// The sums of one edge.
#[derive(Default)]
struct EdgeSums {
    requests_per_second: f64,
    connections_per_second: f64,
    requests: u64,
    errors: u64,
    connections: u64,
    failed_connections: u64,
    buckets: Vec<u64>,
    reporting_instances: usize,
}

impl EdgeSums {
    fn add(&mut self, calls: &Calls, window_seconds: f64) {
        self.requests_per_second += calls.requests as f64 / window_seconds;
        self.connections_per_second += calls.connections as f64 / window_seconds;
        self.requests += calls.requests;
        self.errors += calls.errors;
        self.connections += calls.connections;
        self.failed_connections += calls.failed_connections;
        if self.buckets.len() < calls.duration_buckets.len() {
            self.buckets.resize(calls.duration_buckets.len(), 0);
        }
        for (sum, count) in self.buckets.iter_mut().zip(&calls.duration_buckets) {
            *sum += count;
        }
        self.reporting_instances += 1;
    }
}

/// The graph of `catalog` with the calls of `windows`.
pub(crate) fn build(catalog: &Catalog, windows: &[CallerWindow]) -> Graph {
    let mut groups: BTreeMap<GroupRef, GroupNode> = BTreeMap::new();
    let mut serving: BTreeMap<&str, GroupRef> = BTreeMap::new();
    for service in &catalog.services {
        let group = group_of(service);
        serving.insert(&service.hostname, group.clone());
        node(&mut groups, &group).services.push(ServiceNode {
            hostname: service.hostname.clone(),
            vip: service.vip,
            ports: service.ports.iter().map(|p| p.number).collect(),
            healthy_endpoints: service.endpoints.iter().filter(|e| e.healthy).count(),
            unhealthy_endpoints: service.endpoints.iter().filter(|e| !e.healthy).count(),
        });
    }
    let mut sums: BTreeMap<(GroupRef, String), EdgeSums> = BTreeMap::new();
    for window in windows {
        let source = window.source.clone();
        node(&mut groups, &source).reporting_instances += 1;
        let seconds = window.report.window_ms as f64 / 1000.0;
        for calls in &window.report.calls {
            sums.entry((source.clone(), calls.destination.clone()))
                .or_default()
                .add(calls, seconds);
        }
    }
    let edges = sums
        .into_iter()
        .map(|((source, destination), sums)| Edge {
            destination_group: serving.get(destination.as_str()).cloned(),
            source,
            destination,
            requests_per_second: rounded(sums.requests_per_second),
            error_ratio: rounded(ratio(sums.errors, sums.requests)),
            p99_ms: quantile(0.99, &sums.buckets).map(rounded),
            connections_per_second: rounded(sums.connections_per_second),
            failed_connection_ratio: rounded(ratio(sums.failed_connections, sums.connections)),
            reporting_instances: sums.reporting_instances,
        })
        .collect();
    let mut deployments: Vec<DeploymentNode> = Vec::new();
    for (group, node) in groups {
        match deployments.last_mut() {
            Some(last) if last.name == group.deployment => last.instance_groups.push(node),
            _ => deployments.push(DeploymentNode {
                name: group.deployment,
                instance_groups: vec![node],
            }),
        }
    }
    // The service entries' box goes last, after the deployments.
    deployments.sort_by_key(|d| d.name == SERVICE_ENTRIES);
    Graph { deployments, edges }
}

/// The group a reporting instance's calls start from: the instance group the director lists
/// it in (`instance_group`, as the pilot's scope registry checked its claim) or, for a VM
/// registered into a WorkloadGroup (`registered`: its agent spoke with that registration's
/// certificate, from its address), that WorkloadGroup's box, `<config>/<group>`, where its
/// group's service and member counts are.
pub(crate) fn caller_group(deployment: &str, instance_group: &str, registered: bool) -> GroupRef {
    if registered {
        GroupRef {
            deployment: WORKLOAD_GROUPS.to_string(),
            instance_group: format!("{deployment}/{instance_group}"),
        }
    } else {
        GroupRef {
            deployment: deployment.to_string(),
            instance_group: instance_group.to_string(),
        }
    }
}

/// The instance group a service's node goes in: its job's, or for a ServiceEntry's or a
/// WorkloadGroup's service, one named after the resource.
fn group_of(service: &Service) -> GroupRef {
    match (&service.service_entry, &service.workload_group) {
        (Some(entry), _) => GroupRef {
            deployment: SERVICE_ENTRIES.to_string(),
            instance_group: entry.clone(),
        },
        (None, Some(group)) => GroupRef {
            deployment: WORKLOAD_GROUPS.to_string(),
            instance_group: group.clone(),
        },
        (None, None) => GroupRef {
            deployment: service.key.deployment.clone(),
            instance_group: service.key.instance_group.clone(),
        },
    }
}

fn node<'a>(groups: &'a mut BTreeMap<GroupRef, GroupNode>, group: &GroupRef) -> &'a mut GroupNode {
    groups.entry(group.clone()).or_insert_with(|| GroupNode {
        name: group.instance_group.clone(),
        services: Vec::new(),
        reporting_instances: 0,
    })
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// To a thousandth: what a person reads, and JSON that does not change with float noise.
fn rounded(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The `q` quantile of counts per bucket of [`DURATION_BUCKETS_MS`] (the last entry for
/// longer durations), interpolated linearly within its bucket as Prometheus's
/// `histogram_quantile` does; beyond the last bound, that bound.
fn quantile(q: f64, buckets: &[u64]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (index, &count) in buckets.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let Some(&upper) = DURATION_BUCKETS_MS.get(index) else {
                return DURATION_BUCKETS_MS.last().copied();
            };
            let lower = if index == 0 {
                0.0
            } else {
                DURATION_BUCKETS_MS[index - 1]
            };
            return Some(lower + (upper - lower) * (rank - below as f64) / count as f64);
        }
        below += count;
    }
    DURATION_BUCKETS_MS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::Protocol;
    use crate::catalog::testing::{catalog, endpoint, service};
    use crate::console::wire::TrafficReport;

    fn buckets(pairs: &[(usize, u64)]) -> Vec<u64> {
        let mut buckets = vec![0; DURATION_BUCKETS_MS.len() + 1];
        for &(index, count) in pairs {
            buckets[index] = count;
        }
        buckets
    }

    fn window(deployment: &str, group: &str, instance: &str, calls: Vec<Calls>) -> CallerWindow {
        CallerWindow {
            source: caller_group(deployment, group, false),
            report: TrafficReport {
                deployment: deployment.into(),
                instance: instance.into(),
                window_ms: 10_000,
                calls,
            },
        }
    }

    #[test]
    fn the_quantile_is_interpolated_within_its_bucket_as_prometheus_does() {
        assert_eq!(quantile(0.99, &[]), None);
        assert_eq!(quantile(0.99, &buckets(&[])), None);
        // 100 requests in (5, 10]: rank 99 is 99% of the way through it.
        assert_eq!(quantile(0.99, &buckets(&[(3, 100)])), Some(9.95));
        // 98 fast ones, 2 in (25, 50]: rank 99 is the first of those 2, halfway.
        assert_eq!(quantile(0.99, &buckets(&[(0, 98), (5, 2)])), Some(37.5));
        // The first bucket's lower bound is 0.
        assert_eq!(quantile(0.5, &buckets(&[(0, 2)])), Some(0.25));
        // Beyond the last bound: that bound.
        assert_eq!(quantile(0.99, &buckets(&[(19, 1)])), Some(3_600_000.0));
    }

    #[test]
    fn a_workload_groups_box_counts_its_registered_vms() {
        let mut group = service("", "", "")
            .port("tcp-amqp", 5672, Protocol::Tcp)
            .endpoint(crate::catalog::model::Endpoint {
                instance: "vm-1".into(),
                ..endpoint("10.0.1.1")
            })
            .endpoint(crate::catalog::model::Endpoint {
                instance: "vm-2".into(),
                healthy: false,
                ..endpoint("10.0.1.2")
            })
            .build();
        group.hostname = "rabbitmq.rabbitmq.legacy.boshy".into();
        group.workload_group = Some("legacy/rabbitmq".into());
        let graph = build(&catalog(1, [group]), &[]);
        let boxed = &graph.deployments[0];
        assert_eq!(boxed.name, WORKLOAD_GROUPS);
        assert_eq!(boxed.instance_groups[0].name, "legacy/rabbitmq");
        let service = &boxed.instance_groups[0].services[0];
        assert_eq!(
            (service.healthy_endpoints, service.unhealthy_endpoints),
            (1, 1)
        );
    }

    #[test]
    fn a_registered_vms_calls_start_from_its_workload_groups_box() {
        let mut group = service("", "", "")
            .port("tcp-amqp", 5672, Protocol::Tcp)
            .endpoint(crate::catalog::model::Endpoint {
                instance: "vm-1".into(),
                ..endpoint("10.0.1.1")
            })
            .build();
        group.hostname = "rabbitmq.rabbitmq.legacy.boshy".into();
        group.workload_group = Some("legacy/rabbitmq".into());
        let banana = service("sample", "banana", "httpbin")
            .port("http", 9002, Protocol::Http)
            .endpoint(endpoint("10.0.0.1"))
            .build();
        let calls = vec![Calls {
            destination: "httpbin.banana.sample.boshy".into(),
            requests: 20,
            ..Calls::default()
        }];
        let vm = CallerWindow {
            source: caller_group("legacy", "rabbitmq", true),
            ..window("legacy", "rabbitmq", "vm-1", calls.clone())
        };
        // A BOSH deployment of the same names is another box.
        let bosh = window("legacy", "rabbitmq", "bosh-1", calls);
        let graph = build(&catalog(1, [group, banana]), &[vm, bosh]);
        let boxed = graph
            .deployments
            .iter()
            .find(|d| d.name == WORKLOAD_GROUPS)
            .unwrap();
        assert_eq!(boxed.instance_groups.len(), 1, "{boxed:?}");
        assert_eq!(boxed.instance_groups[0].name, "legacy/rabbitmq");
        assert_eq!(boxed.instance_groups[0].reporting_instances, 1);
        assert_eq!(boxed.instance_groups[0].services.len(), 1);
        let sources: Vec<&GroupRef> = graph.edges.iter().map(|e| &e.source).collect();
        assert_eq!(
            sources,
            [
                &GroupRef {
                    deployment: WORKLOAD_GROUPS.into(),
                    instance_group: "legacy/rabbitmq".into(),
                },
                &GroupRef {
                    deployment: "legacy".into(),
                    instance_group: "rabbitmq".into(),
                },
            ]
        );
        assert!(graph.edges.iter().all(|e| e.requests_per_second == 2.0));
    }

    #[test]
    fn services_are_nodes_by_deployment_and_calls_are_summed_into_edges_per_calling_group() {
        let banana = service("sample", "banana", "httpbin")
            .port("http", 9002, Protocol::Http)
            .endpoint(endpoint("10.0.0.1"))
            .endpoint(crate::catalog::model::Endpoint {
                healthy: false,
                ..endpoint("10.0.0.2")
            })
            .build();
        let mut external = service("", "", "").build();
        external.hostname = "db.example.com".into();
        external.service_entry = Some("rules/db".into());
        let catalog = catalog(1, [banana, external]);
        let http = |requests, errors, fast, slow| Calls {
            destination: "httpbin.banana.sample.boshy".into(),
            requests,
            errors,
            duration_buckets: buckets(&[(3, fast), (5, slow)]),
            ..Calls::default()
        };
        let windows = vec![
            window("other", "apricot", "a1", vec![http(60, 3, 59, 1)]),
            window("other", "apricot", "a2", vec![http(40, 0, 40, 0)]),
            window(
                "other",
                "apricot",
                "a3",
                vec![Calls {
                    destination: "gone.g.d.boshy".into(),
                    connections: 4,
                    failed_connections: 1,
                    ..Calls::default()
                }],
            ),
        ];
        let graph = build(&catalog, &windows);
        let names: Vec<(&str, Vec<&str>)> = graph
            .deployments
            .iter()
            .map(|d| {
                (
                    d.name.as_str(),
                    d.instance_groups.iter().map(|g| g.name.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("other", vec!["apricot"]),
                ("sample", vec!["banana"]),
                (SERVICE_ENTRIES, vec!["rules/db"]),
            ]
        );
        assert_eq!(
            graph.deployments[0].instance_groups[0].reporting_instances,
            3
        );
        assert_eq!(
            graph.deployments[1].instance_groups[0].services,
            vec![ServiceNode {
                hostname: "httpbin.banana.sample.boshy".into(),
                vip: Ipv4Addr::new(169, 254, 255, 1),
                ports: vec![9002],
                healthy_endpoints: 1,
                unhealthy_endpoints: 1,
            }]
        );
        let apricot = GroupRef {
            deployment: "other".into(),
            instance_group: "apricot".into(),
        };
        assert_eq!(
            graph.edges,
            vec![
                Edge {
                    source: apricot.clone(),
                    destination: "gone.g.d.boshy".into(),
                    destination_group: None,
                    requests_per_second: 0.0,
                    error_ratio: 0.0,
                    p99_ms: None,
                    connections_per_second: 0.4,
                    failed_connection_ratio: 0.25,
                    reporting_instances: 1,
                },
                Edge {
                    source: apricot,
                    destination: "httpbin.banana.sample.boshy".into(),
                    destination_group: Some(GroupRef {
                        deployment: "sample".into(),
                        instance_group: "banana".into(),
                    }),
                    // 100 requests over two 10 s windows of two instances: 6/s + 4/s.
                    requests_per_second: 10.0,
                    error_ratio: 0.03,
                    // 99 of 100 in (5, 10], the 100th in (25, 50]: rank 99 ends the first.
                    p99_ms: Some(10.0),
                    connections_per_second: 0.0,
                    failed_connection_ratio: 0.0,
                    reporting_instances: 2,
                },
            ]
        );
    }
}
