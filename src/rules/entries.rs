//! The services ServiceEntries and WorkloadGroups define, as catalog services: each host of
//! an accepted entry becomes a service of its own with a VIP, a DNS name and Envoy clusters
//! like a job's, made of the BOSH instances its `workloadSelector` picks (from any instance
//! group of any deployment), of its listed endpoints, or of the DNS names it lists, which each
//! Envoy resolves (resolution DNS and DNS_ROUND_ROBIN). Each accepted WorkloadGroup becomes a
//! service named `<service>.<group>.<config>.<tld>` (docs/workloads.md) with the template's
//! ports, whose endpoints are the VMs registered into it (`workloads::members`). Pure; the
//! pilot gives them VIPs and adds them to the catalog (`catalog::with_entries`).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use crate::catalog::manifest::{canonical_dns_name, infer_protocol};
use crate::catalog::model::{
    Catalog, DnsEndpoint, DnsEndpoints, DnsResolution, Endpoint, HttpGetProbe, Probe, ProbeAction,
    ProbeHeader, Service, ServiceKey, ServicePort,
};

use super::mesh::selects;
use super::model::{ProbePort, ProbeScheme, Resolution, ServiceEntry, WorkloadGroup};
use super::validate::{Rule, RuleSet};
use crate::workloads::members::Members;

/// The hosts the accepted ServiceEntries and WorkloadGroups of `rules` define, each once: the
/// VIPs they need.
pub fn entry_hosts(rules: &RuleSet) -> BTreeSet<String> {
    let entries = rules
        .service_entries
        .iter()
        .flat_map(|rule| rule.spec.hosts.iter().cloned());
    let groups = rules
        .workload_groups
        .iter()
        .map(|rule| rule.spec.hostname.clone());
    entries.chain(groups).collect()
}

/// `<service>.<group>.<config>` for a WorkloadGroup `name` in director config `config`, each
/// in the canonical DNS form BOSH gives its names: the config plays the deployment's part,
/// the group the instance group's, and the service is the members' `app` label (Istio's
/// convention for the service's name), else the group's name. `Err`: the field that has no
/// DNS form, and why.
pub(crate) fn group_dns_name(
    config: &str,
    name: &str,
    wg: &WorkloadGroup,
) -> Result<String, (String, String)> {
    let (metadata, template) = (&wg.metadata.labels, &wg.template.labels);
    let service = match (metadata.get("app"), template.get("app")) {
        (Some(app), _) => (
            "spec.metadata.labels.app",
            "service (label app)",
            app.as_str(),
        ),
        (None, Some(app)) => (
            "spec.template.labels.app",
            "service (label app)",
            app.as_str(),
        ),
        (None, None) => ("metadata.name", "group", name),
    };
    let parts = [
        service,
        ("metadata.name", "group", name),
        ("metadata.name", "config", config),
    ];
    let mut labels = Vec::with_capacity(parts.len());
    for (field, what, name) in parts {
        let label = canonical_dns_name(&[(what, name)]).map_err(|e| (field.to_string(), e))?;
        labels.push(label);
    }
    Ok(labels.join("."))
}

/// A WorkloadGroup's ports (the checks saw to their names and numbers), their protocol
/// from the name as for `expose_ports`.
pub(crate) fn group_ports(wg: &WorkloadGroup) -> impl Iterator<Item = ServicePort> + '_ {
    wg.template.ports.iter().map(|(name, &number)| {
        let name = name.to_ascii_lowercase();
        let protocol = infer_protocol(&name);
        ServicePort {
            name,
            number: u16::try_from(number).unwrap_or_default(),
            protocol,
        }
    })
}

/// A WorkloadGroup's probe as its members' agents run it: a port named after one of the
/// group's ports resolved to its number, the path `/` when absent. The checks saw to the
/// ranges and to the name, so what does not convert cannot occur (it would read 0).
pub(crate) fn group_probe(wg: &WorkloadGroup) -> Option<Probe> {
    let probe = wg.probe.as_ref()?;
    let number = |n: i64| u32::try_from(n).unwrap_or_default();
    let port = |port: &ProbePort| {
        let number = match port {
            ProbePort::Number(number) => *number,
            ProbePort::Name(name) => wg.template.ports.get(name).copied().unwrap_or_default(),
        };
        u16::try_from(number).unwrap_or_default()
    };
    let action = if let Some(http) = &probe.http_get {
        ProbeAction::HttpGet(HttpGetProbe {
            https: http.scheme == Some(ProbeScheme::Https),
            host: http.host.clone(),
            port: port(&http.port),
            path: http.path.clone().unwrap_or_else(|| "/".into()),
            headers: http
                .http_headers
                .iter()
                .map(|h| ProbeHeader {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect(),
        })
    } else if let Some(tcp) = &probe.tcp_socket {
        ProbeAction::TcpSocket {
            host: tcp.host.clone(),
            port: port(&tcp.port),
        }
    } else {
        ProbeAction::Exec {
            command: probe.exec.as_ref()?.command.clone(),
        }
    };
    Some(Probe {
        initial_delay_seconds: number(probe.initial_delay_seconds),
        timeout_seconds: number(probe.timeout_seconds),
        period_seconds: number(probe.period_seconds),
        success_threshold: number(probe.success_threshold),
        failure_threshold: number(probe.failure_threshold),
        action,
    })
}

/// `ports` sorted by number, as a service's are.
fn sorted(ports: impl Iterator<Item = ServicePort>) -> Vec<ServicePort> {
    let mut ports: Vec<ServicePort> = ports.collect();
    ports.sort_by_key(|port| port.number);
    ports
}

/// A service the rules define: it names no job.
fn defined_service(hostname: &str, vip: Ipv4Addr, ports: Vec<ServicePort>) -> Service {
    Service {
        key: ServiceKey {
            deployment: String::new(),
            instance_group: String::new(),
            job: String::new(),
        },
        hostname: hostname.to_string(),
        vip,
        ports,
        endpoints: Vec::new(),
        service_entry: None,
        workload_group: None,
        probe: None,
        dns: None,
    }
}

/// The services of the accepted ServiceEntries and WorkloadGroups of `rules`, the entries'
/// endpoints drawn from the job services of `jobs` (a catalog without them), with the VIP
/// `vip` gives each host.
/// A host without a VIP (the pool is exhausted) is left out, as a job's service would be.
/// The WorkloadGroups' services have no endpoints: see [`entry_services_with`].
pub fn entry_services(
    rules: &RuleSet,
    jobs: &Catalog,
    vip: impl Fn(&str) -> Option<Ipv4Addr>,
) -> Vec<Service> {
    entry_services_with(rules, jobs, vip, &Members::default())
}

/// [`entry_services`], each WorkloadGroup's service with the VMs of `members` registered
/// into it as its endpoints, labelled with the group's labels (`spec.metadata.labels` and
/// `spec.template.labels`) over their own.
pub fn entry_services_with(
    rules: &RuleSet,
    jobs: &Catalog,
    vip: impl Fn(&str) -> Option<Ipv4Addr>,
    members: &Members,
) -> Vec<Service> {
    let mut services = Vec::new();
    for rule in &rules.service_entries {
        let dns = dns_endpoints(&rule.spec);
        let endpoints = if dns.is_some() {
            Vec::new()
        } else {
            endpoints(rule, jobs)
        };
        let ports = sorted(rule.spec.ports.iter().map(|port| ServicePort {
            name: port.name.to_ascii_lowercase(),
            number: port.number,
            protocol: port.protocol(),
        }));
        for host in &rule.spec.hosts {
            let Some(vip) = vip(host) else { continue };
            services.push(Service {
                endpoints: endpoints.clone(),
                service_entry: Some(format!("{}/{}", rule.config, rule.name)),
                dns: dns.clone(),
                ..defined_service(host, vip, ports.clone())
            });
        }
    }
    for rule in &rules.workload_groups {
        let hostname = &rule.spec.hostname;
        let Some(vip) = vip(hostname) else { continue };
        let ports = sorted(group_ports(&rule.spec.group));
        let group = format!("{}/{}", rule.config, rule.name);
        let wg = &rule.spec.group;
        let mut labels = wg.template.labels.clone();
        labels.extend(
            wg.metadata
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        services.push(Service {
            endpoints: members.endpoints(&group, &labels),
            workload_group: Some(group),
            probe: group_probe(&rule.spec.group),
            ..defined_service(hostname, vip, ports)
        });
    }
    services
}

/// The names Envoy resolves for an entry with resolution DNS or DNS_ROUND_ROBIN (the
/// checks saw to it that there are some, each a name or an IPv4 address), in its order;
/// `None` for STATIC.
fn dns_endpoints(se: &ServiceEntry) -> Option<DnsEndpoints> {
    let resolution = match se.resolution {
        Resolution::Static => return None,
        Resolution::Dns => DnsResolution::Dns,
        Resolution::DnsRoundRobin => DnsResolution::DnsRoundRobin,
    };
    let endpoints = se
        .endpoints
        .iter()
        .map(|entry| DnsEndpoint {
            // DNS names are case-insensitive; the catalog's are lower-case.
            address: entry.address.to_ascii_lowercase(),
            az: entry.locality.clone(),
            labels: entry.labels.clone(),
        })
        .collect();
    Some(DnsEndpoints {
        resolution,
        endpoints,
    })
}

/// The instances a STATIC entry selects (each once, however many of its jobs are services),
/// or its listed endpoints (IP addresses), sorted as a service's endpoints are.
fn endpoints(rule: &Rule<ServiceEntry>, jobs: &Catalog) -> Vec<Endpoint> {
    let se = &rule.spec;
    let mut endpoints: Vec<Endpoint> = match &se.workload_selector {
        Some(selector) => {
            let mut seen = BTreeSet::new();
            jobs.services
                .iter()
                .filter(|service| service.is_job())
                .flat_map(|service| &service.endpoints)
                .filter(|endpoint| selects(&selector.labels, &endpoint.labels))
                .filter(|endpoint| seen.insert(endpoint.instance.clone()))
                .cloned()
                .collect()
        }
        None => se
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(at, entry)| {
                let address: IpAddr = entry.address.parse().ok()?;
                Some(Endpoint {
                    address,
                    az: entry.locality.clone(),
                    // Stable for as long as the entry lists it at the same place.
                    instance: format!("{}/{}/{at}", rule.config, rule.name),
                    index: Some(at as u32),
                    healthy: true,
                    plaintext: false,
                    labels: entry.labels.clone(),
                })
            })
            .collect(),
    };
    endpoints.sort_by(|a, b| (a.index, &a.instance).cmp(&(b.index, &b.instance)));
    endpoints
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::Protocol;
    use crate::catalog::testing::{self, endpoint, labels, service};
    use crate::rules::{parse_config, validate, MeshView};

    fn jobs() -> Catalog {
        let reviews = |group: &str, address: &str, version: &str| {
            service("bookinfo", group, "bookinfo")
                .port("http", 9080, Protocol::Http)
                .endpoint(Endpoint {
                    labels: labels([("app", "reviews"), ("version", version)]),
                    instance: format!("{group}-0"),
                    index: Some(0),
                    ..endpoint(address)
                })
        };
        testing::catalog(
            1,
            [
                reviews("reviews-v1", "10.0.0.1", "v1"),
                reviews("reviews-v2", "10.0.0.2", "v2"),
                reviews("reviews-v3", "10.0.0.3", "v3"),
                service("bookinfo", "ratings", "bookinfo")
                    .port("http", 9080, Protocol::Http)
                    .endpoint(endpoint("10.0.0.4")),
            ],
        )
    }

    fn accepted(config: &str, jobs: &Catalog) -> RuleSet {
        let validated = validate(
            &[parse_config("entries", config)],
            Some(&MeshView::from_catalog(jobs)),
        );
        let errors: Vec<String> = validated.errors().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{errors:?}");
        validated.rules
    }

    const REVIEWS: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.bookinfo.boshy]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: HTTP, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
";

    #[test]
    fn a_selector_makes_one_service_of_instances_of_several_groups() {
        let jobs = jobs();
        let rules = accepted(REVIEWS, &jobs);
        assert_eq!(
            entry_hosts(&rules),
            BTreeSet::from(["reviews.bookinfo.boshy".to_string()])
        );
        let services = entry_services(&rules, &jobs, |_| Some(Ipv4Addr::new(169, 254, 255, 9)));
        let [reviews] = services.as_slice() else {
            panic!("{services:?}")
        };
        assert_eq!(reviews.hostname, "reviews.bookinfo.boshy");
        assert_eq!(reviews.service_entry.as_deref(), Some("entries/reviews"));
        assert_eq!(reviews.ports[0].name, "http");
        assert_eq!(reviews.ports[0].protocol, Protocol::Http);
        let addresses: Vec<String> = reviews
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(addresses, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert_eq!(reviews.endpoints[1].labels["version"], "v2");
        let with_it = crate::catalog::with_entries(jobs.clone(), services);
        assert_ne!(with_it.version, jobs.version);
        assert_eq!(
            MeshView::from_catalog(&with_it),
            MeshView::from_catalog(&jobs),
            "the rules define their own hosts again when checked"
        );
        assert!(
            entry_services(&rules, &jobs, |_| None).is_empty(),
            "no VIP, no service"
        );
    }

    #[test]
    fn listed_addresses_are_the_endpoints_of_an_entry_without_selector() {
        let jobs = jobs();
        let rules = accepted(
            "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.external.boshy]
  resolution: STATIC
  ports: [{number: 5432, name: tcp-postgres}]
  endpoints:
  - {address: 192.0.2.10, locality: z2, labels: {role: primary}}
  - {address: 192.0.2.11}
",
            &jobs,
        );
        let services = entry_services(&rules, &jobs, |_| Some(Ipv4Addr::new(169, 254, 255, 8)));
        let db = &services[0];
        assert_eq!(db.ports[0].protocol, Protocol::Tcp);
        assert_eq!(db.endpoints.len(), 2);
        assert_eq!(db.endpoints[0].az.as_deref(), Some("z2"));
        assert_eq!(db.endpoints[0].labels["role"], "primary");
        assert!(db.endpoints.iter().all(|e| e.healthy));
        assert_eq!(db.dns, None);
    }

    #[test]
    fn listed_names_are_what_envoy_resolves_for_an_entry_resolved_through_dns() {
        let jobs = jobs();
        let rules = accepted(
            "apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: ServiceEntry
  metadata: {name: db}
  spec:
    hosts: [db.external.boshy, db-too.external.boshy]
    resolution: DNS
    ports: [{number: 5432, name: tcp-postgres}]
    endpoints:
    - {address: Primary.DB.example.com, locality: z2, labels: {role: primary}}
    - {address: 192.0.2.11}
- apiVersion: networking.istio.io/v1
  kind: ServiceEntry
  metadata: {name: cache}
  spec:
    hosts: [cache.external.boshy]
    resolution: DNS_ROUND_ROBIN
    ports: [{number: 6379, name: tcp-redis}]
    endpoints: [{address: cache.example.com}]
",
            &jobs,
        );
        assert_eq!(entry_hosts(&rules).len(), 3, "each host gets a VIP");
        let services = entry_services(&rules, &jobs, |_| Some(Ipv4Addr::new(169, 254, 255, 7)));
        let [cache, db, db_too] = services.as_slice() else {
            panic!("{services:?}")
        };
        assert_eq!(db_too.hostname, "db-too.external.boshy");
        assert_eq!(db.dns, db_too.dns);
        let dns = db.dns.as_ref().expect("resolved through DNS");
        assert_eq!(dns.resolution, DnsResolution::Dns);
        assert_eq!(
            dns.endpoints,
            [
                DnsEndpoint {
                    address: "primary.db.example.com".into(),
                    az: Some("z2".into()),
                    labels: crate::catalog::testing::labels([("role", "primary")]),
                },
                crate::catalog::testing::dns_endpoint("192.0.2.11"),
            ]
        );
        assert!(db.endpoints.is_empty(), "no address is the pilot's to know");
        let cache_dns = cache.dns.as_ref().expect("resolved through DNS");
        assert_eq!(cache_dns.resolution, DnsResolution::DnsRoundRobin);
        assert_eq!(cache_dns.endpoints.len(), 1);
    }

    #[test]
    fn a_groups_probe_reaches_its_service_with_every_field_and_its_named_port_resolved() {
        let jobs = jobs();
        let rules = accepted(
            "apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: WorkloadGroup
  metadata: {name: web}
  spec:
    template: {ports: {http-web: 8443}}
    probe:
      initialDelaySeconds: 5
      timeoutSeconds: 2
      periodSeconds: 3
      successThreshold: 2
      failureThreshold: 4
      httpGet:
        scheme: https
        host: 127.0.0.1
        port: http-web
        httpHeaders: [{name: Authorization, value: Bearer s3cret}]
- apiVersion: networking.istio.io/v1
  kind: WorkloadGroup
  metadata: {name: db}
  spec:
    template: {ports: {tcp-pg: 5432}}
    probe: {tcpSocket: {port: tcp-pg}}
- apiVersion: networking.istio.io/v1
  kind: WorkloadGroup
  metadata: {name: batch}
  spec:
    template: {ports: {tcp: 9000}}
    probe: {exec: {command: [/usr/bin/check, --quick]}}
- apiVersion: networking.istio.io/v1
  kind: WorkloadGroup
  metadata: {name: bare}
  spec:
    template: {ports: {tcp: 9001}}
",
            &jobs,
        );
        let services = entry_services(&rules, &jobs, |_| Some(Ipv4Addr::new(169, 254, 255, 6)));
        let probe = |group: &str| {
            services
                .iter()
                .find(|s| s.workload_group.as_deref() == Some(&format!("entries/{group}")))
                .unwrap_or_else(|| panic!("{group}: {services:?}"))
                .probe
                .clone()
        };
        let web = probe("web").expect("a probe");
        assert_eq!(
            (
                web.initial_delay_seconds,
                web.timeout_seconds,
                web.period_seconds,
                web.success_threshold,
                web.failure_threshold
            ),
            (5, 2, 3, 2, 4)
        );
        assert_eq!(
            web.action,
            ProbeAction::HttpGet(HttpGetProbe {
                https: true,
                host: Some("127.0.0.1".into()),
                port: 8443,
                path: "/".into(),
                headers: vec![ProbeHeader {
                    name: "Authorization".into(),
                    value: "Bearer s3cret".into(),
                }],
            })
        );
        assert!(
            !format!("{web:?}").contains("s3cret"),
            "a header's value is never in a debug print"
        );
        assert_eq!(
            probe("db").map(|p| p.action),
            Some(ProbeAction::TcpSocket {
                host: None,
                port: 5432
            })
        );
        assert_eq!(
            probe("batch").map(|p| p.action),
            Some(ProbeAction::Exec {
                command: vec!["/usr/bin/check".into(), "--quick".into()]
            })
        );
        assert_eq!(probe("bare"), None);
    }

    #[test]
    fn a_workload_group_is_a_service_with_its_ports_and_no_endpoints_yet() {
        let jobs = jobs();
        let rules = accepted(
            "apiVersion: networking.istio.io/v1beta1
kind: WorkloadGroup
metadata: {name: reviews.vms}
spec:
  metadata: {labels: {app: reviews}}
  template:
    ports: {mysql: 3306, http-web: 9080, GRPC: 7070, http2: 8443, tcp-raw: 9000, redis: 6379}
  probe: {httpGet: {port: http-web, path: /ready}}
",
            &jobs,
        );
        assert_eq!(
            entry_hosts(&rules),
            BTreeSet::from(["reviews.reviewsvms.entries.boshy".to_string()])
        );
        let services = entry_services(&rules, &jobs, |_| Some(Ipv4Addr::new(169, 254, 255, 6)));
        let [reviews] = services.as_slice() else {
            panic!("{services:?}")
        };
        assert_eq!(reviews.hostname, "reviews.reviewsvms.entries.boshy");
        assert_eq!(
            reviews.workload_group.as_deref(),
            Some("entries/reviews.vms")
        );
        assert_eq!(reviews.service_entry, None);
        assert!(!reviews.is_job());
        assert!(reviews.endpoints.is_empty(), "members register later");
        assert_eq!(reviews.vip, Ipv4Addr::new(169, 254, 255, 6));
        let ports: Vec<(&str, u16, Protocol)> = reviews
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.number, p.protocol))
            .collect();
        assert_eq!(
            ports,
            [
                ("mysql", 3306, Protocol::Tcp),
                ("redis", 6379, Protocol::Tcp),
                ("grpc", 7070, Protocol::Grpc),
                ("http2", 8443, Protocol::Http2),
                ("tcp-raw", 9000, Protocol::Tcp),
                ("http-web", 9080, Protocol::Http),
            ]
        );
        assert_eq!(
            reviews.probe,
            Some(Probe {
                initial_delay_seconds: 0,
                timeout_seconds: 1,
                period_seconds: 10,
                success_threshold: 1,
                failure_threshold: 3,
                action: ProbeAction::HttpGet(HttpGetProbe {
                    https: false,
                    host: None,
                    port: 9080,
                    path: "/ready".into(),
                    headers: Vec::new(),
                }),
            }),
            "the probe goes to the members' agents, Kubernetes' defaults filled, its port resolved"
        );
        let with_it = crate::catalog::with_entries(jobs.clone(), services);
        assert_eq!(
            MeshView::from_catalog(&with_it),
            MeshView::from_catalog(&jobs),
            "the rules define the group's host again when checked"
        );
        assert!(
            entry_services(&rules, &jobs, |_| None).is_empty(),
            "no VIP, no service"
        );
    }
}
