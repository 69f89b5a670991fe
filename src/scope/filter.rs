//! Pure: which resources of a snapshot one VM's Envoy gets, from the services its VM asked
//! for. Built once per snapshot ([`ServiceIndex`]) and once per change of a VM's scope
//! ([`ScopeFilter`]); every ADS stream of a scoped VM asks it about each name it diffs.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::catalog::model::Catalog;
use crate::traffic::{HttpAction, TrafficRules};
use crate::xds::client::{Client, ExposedLabels};
use crate::xds::resources::{listener_name, ResourceType};

/// What a snapshot's resource names say about services: the service of each listener (named
/// by VIP and port, not by hostname), and the other services each service's rules send
/// traffic to (their clusters must come along, or the routes lead nowhere).
#[derive(Debug, Default)]
pub(crate) struct ServiceIndex {
    /// `.<tld>`: a service named outside the mesh's DNS domain (a ServiceEntry for an outside
    /// name) is never asked for through the agent, so it is in every scope.
    dns_suffix: String,
    listener_hosts: HashMap<String, Arc<str>>,
    destinations: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    /// The Sidecars' pins, the mesh's hostnames they may name, and what clients are judged
    /// by; empty without Sidecars.
    pins: TrafficRules,
    hostnames: Vec<String>,
    exposed: ExposedLabels,
}

impl ServiceIndex {
    pub(crate) fn new(catalog: &Catalog, traffic: &TrafficRules) -> Self {
        let mut listener_hosts = HashMap::new();
        for service in &catalog.services {
            let hostname: Arc<str> = Arc::from(service.hostname.as_str());
            for port in &service.ports {
                listener_hosts.insert(listener_name(service.vip, port.number), hostname.clone());
            }
        }
        let mut destinations: HashMap<Arc<str>, BTreeSet<Arc<str>>> = HashMap::new();
        for (hostname, rules) in &traffic.services {
            let forwards =
                rules
                    .http_routes
                    .values()
                    .flatten()
                    .filter_map(|route| match &route.action {
                        HttpAction::Forward(forward) => Some(forward),
                        HttpAction::Redirect(_) => None,
                    });
            let hosts = forwards
                .flat_map(|f| {
                    let weighted = f.destinations.iter().map(|d| &d.destination);
                    weighted.chain(f.mirrors.iter().map(|m| &m.destination))
                })
                .chain(rules.tcp_routes.values().flatten().map(|d| &d.destination))
                .map(|d| &d.host)
                .filter(|host| *host != hostname)
                .map(|host| Arc::from(host.as_str()))
                .collect::<BTreeSet<_>>();
            if !hosts.is_empty() {
                destinations.insert(Arc::from(hostname.as_str()), hosts);
            }
        }
        let pinning = !traffic.scope_pins.is_empty();
        ServiceIndex {
            dns_suffix: format!(".{}", catalog.tld),
            listener_hosts,
            destinations,
            pins: TrafficRules {
                services: Default::default(),
                scope_pins: traffic.scope_pins.clone(),
                security: Default::default(),
            },
            hostnames: match pinning {
                true => catalog
                    .services
                    .iter()
                    .map(|s| s.hostname.clone())
                    .collect(),
                false => Vec::new(),
            },
            exposed: match pinning {
                true => ExposedLabels::new(catalog),
                false => ExposedLabels::default(),
            },
        }
    }

    /// The hostnames the Sidecars pin into `client`'s scope.
    pub(crate) fn pinned(&self, client: Option<&Client>) -> BTreeSet<String> {
        let Some(client) = client.filter(|_| !self.pins.scope_pins.is_empty()) else {
            return BTreeSet::new();
        };
        let hostnames = self.hostnames.iter().map(String::as_str);
        self.pins.pinned_hosts(self.exposed.of(client), hostnames)
    }

    /// The service a resource belongs to; `None` for one that belongs to none (the
    /// `outbound` listener every connection lands on first).
    pub(crate) fn service_of<'a>(
        &'a self,
        resource_type: ResourceType,
        name: &'a str,
    ) -> Option<&'a str> {
        match resource_type {
            ResourceType::Listener => self.listener_hosts.get(name).map(|h| &**h),
            // Clusters, their load assignments and route configurations are named
            // `outbound|<port>|<subset>|<hostname>`.
            _ => name.splitn(4, '|').nth(3),
        }
    }
}

/// The services one VM's Envoy gets: those its VM asked for, the services their rules send
/// traffic to, and every service named outside the mesh's DNS domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScopeFilter {
    hosts: HashSet<Arc<str>>,
    dns_suffix: String,
}

impl ScopeFilter {
    /// The filter of `asked` (hostnames) against the snapshot `index` describes.
    pub(crate) fn new<'a>(index: &ServiceIndex, asked: impl IntoIterator<Item = &'a str>) -> Self {
        let mut hosts = HashSet::new();
        for host in asked {
            let host: Arc<str> = Arc::from(host);
            if let Some(destinations) = index.destinations.get(&host) {
                hosts.extend(destinations.iter().cloned());
            }
            hosts.insert(host);
        }
        ScopeFilter {
            hosts,
            dns_suffix: index.dns_suffix.clone(),
        }
    }

    /// Whether the Envoy gets the resource of that type and name.
    pub(crate) fn admits(
        &self,
        index: &ServiceIndex,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        match index.service_of(resource_type, name) {
            None => true,
            Some(host) => self.admits_host(host),
        }
    }

    pub(crate) fn admits_host(&self, host: &str) -> bool {
        self.hosts.contains(host) || !host.ends_with(&self.dns_suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::Protocol;
    use crate::catalog::testing::{self, endpoint, service};
    use crate::traffic::testing::to;
    use crate::traffic::ServiceRules;

    const WEB: &str = "web.g.d.boshy";
    const API: &str = "api.g.d.boshy";
    const DB: &str = "db.g.d.boshy";

    fn mesh() -> Catalog {
        let web = service("d", "g", "web")
            .vip([169, 254, 255, 1])
            .port("http", 8080, Protocol::Http)
            .endpoint(endpoint("10.0.0.1"));
        let api = service("d", "g", "api")
            .vip([169, 254, 255, 2])
            .port("http", 80, Protocol::Http)
            .endpoint(endpoint("10.0.0.2"));
        let db = service("d", "g", "db")
            .vip([169, 254, 255, 3])
            .port("pg", 5432, Protocol::Tcp)
            .endpoint(endpoint("10.0.0.3"));
        let outside =
            service("d", "g", "outside")
                .vip([169, 254, 255, 4])
                .port("https", 443, Protocol::Tcp);
        let mut outside = outside.build();
        outside.hostname = "api.example.com".into();
        testing::catalog(1, vec![web.build(), api.build(), db.build(), outside])
    }

    /// web's port 8080 sends everything to api (a TCP route: the filter reads every kind).
    fn web_to_api() -> TrafficRules {
        let rules = ServiceRules {
            tcp_routes: [(8080, vec![to(API, 80, None, 100)])].into(),
            ..ServiceRules::default()
        };
        TrafficRules {
            services: [(WEB.to_string(), rules)].into(),
            scope_pins: Vec::new(),
            security: Default::default(),
        }
    }

    #[test]
    fn a_scope_admits_its_services_their_destinations_and_names_outside_the_mesh_domain() {
        let index = ServiceIndex::new(&mesh(), &web_to_api());
        let filter = ScopeFilter::new(&index, [WEB]);
        let admitted = |t, name: &str| filter.admits(&index, t, name);
        assert!(admitted(ResourceType::Listener, "169.254.255.1_8080"));
        assert!(admitted(
            ResourceType::Route,
            "outbound|8080||web.g.d.boshy"
        ));
        assert!(
            admitted(ResourceType::Cluster, "outbound|80||api.g.d.boshy"),
            "web routes there"
        );
        assert!(
            admitted(ResourceType::Endpoint, "outbound|80|v2|api.g.d.boshy"),
            "its subsets too"
        );
        assert!(!admitted(
            ResourceType::Cluster,
            "outbound|5432||db.g.d.boshy"
        ));
        assert!(!admitted(ResourceType::Listener, "169.254.255.3_5432"));
        assert!(
            admitted(ResourceType::Listener, "outbound"),
            "belongs to no service"
        );
        assert!(
            admitted(ResourceType::Listener, "169.254.255.4_443"),
            "api.example.com"
        );
        assert!(admitted(
            ResourceType::Cluster,
            "outbound|443||api.example.com"
        ));

        let api_only = ScopeFilter::new(&index, [API]);
        assert!(
            !api_only.admits(
                &index,
                ResourceType::Cluster,
                "outbound|8080||web.g.d.boshy"
            ),
            "a destination does not bring in who routes to it"
        );
        let nothing = ScopeFilter::new(&index, []);
        assert!(!nothing.admits(&index, ResourceType::Listener, "169.254.255.1_8080"));
        assert!(!nothing.admits_host(DB) && nothing.admits_host("api.example.com"));
    }

    #[test]
    fn sidecars_pin_their_hosts_into_the_scopes_of_the_vms_they_select() {
        use crate::traffic::{HostPattern, ScopePin};
        let pin = |selector: Option<(&str, &str)>, host: &str| ScopePin {
            selector: selector.map(|(k, v)| [(k.to_string(), v.to_string())].into()),
            hosts: vec![HostPattern::Exact(host.into())],
            config: "pins".into(),
            name: "pin".into(),
        };
        let rules = TrafficRules {
            scope_pins: vec![
                pin(None, DB),
                pin(Some(("bosh.io/deployment", "elsewhere")), API),
            ],
            ..web_to_api()
        };
        let index = ServiceIndex::new(&mesh(), &rules);
        let client = Client::from_node(&crate::xds::client::testing::node()).unwrap();
        let pinned = index.pinned(Some(&client));
        assert_eq!(
            pinned,
            BTreeSet::from([DB.to_string()]),
            "not the other deployment's pin"
        );
        assert!(
            index.pinned(None).is_empty(),
            "an Envoy that names no instance gets everything"
        );
        let filter = ScopeFilter::new(&index, pinned.iter().map(String::as_str));
        assert!(filter.admits(&index, ResourceType::Cluster, "outbound|5432||db.g.d.boshy"));
        assert!(ServiceIndex::new(&mesh(), &web_to_api())
            .pinned(Some(&client))
            .is_empty());
    }
}
