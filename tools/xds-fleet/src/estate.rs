//! A synthetic estate: a catalog of `services` http services with `instances` healthy
//! instances each, as large as a benchmark or a test wants, and the changes the push
//! benchmark makes to it.

use std::net::Ipv4Addr;

use boshy::catalog::model::{Catalog, Endpoint, Protocol, Service};
use boshy::catalog::testing::{self, endpoint};
use boshy::xds::resources::cluster_name;

/// A synthetic estate: `services` http services of `instances` healthy instances each.
pub fn estate(version: u64, services: usize, instances: usize) -> Catalog {
    testing::catalog(version, (0..services).map(|i| service(i, instances)))
}

fn service(i: usize, instances: usize) -> Service {
    let job = format!("svc{i:05}");
    let first_address = u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (i * instances) as u32;
    (0..instances)
        .map(|n| Endpoint {
            az: Some(format!("z{}", n % 3 + 1)),
            instance: format!("{job}-{n}"),
            index: Some(n as u32),
            ..endpoint(&Ipv4Addr::from(first_address + n as u32).to_string())
        })
        .fold(
            testing::service("load", "group", &job)
                .vip(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(169, 254, 1, 0)) + i as u32,
                ))
                .port("http", 8080, Protocol::Http),
            |service, e| service.endpoint(e),
        )
        .build()
}

/// The catalog changes the benchmark makes, one per stdin line of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The first instance of the first service flips between failing and healthy.
    Endpoint,
    /// A new service is deployed.
    Service,
}

impl Change {
    /// The word that names the change on the benchmark server's stdin.
    pub fn word(self) -> &'static str {
        match self {
            Change::Endpoint => "endpoint",
            Change::Service => "service",
        }
    }

    /// The change a word names ([`Change::word`]).
    pub fn from_word(word: &str) -> Option<Change> {
        [Change::Endpoint, Change::Service]
            .into_iter()
            .find(|change| change.word() == word)
    }

    /// Applies the change to `catalog`, with the next version.
    pub fn apply(self, catalog: &Catalog, instances: usize) -> Catalog {
        let mut next = catalog.clone();
        next.version += 1;
        match self {
            Change::Endpoint => {
                let endpoint = &mut next.services[0].endpoints[0];
                endpoint.healthy = !endpoint.healthy;
            }
            Change::Service => next.services.push(service(next.services.len(), instances)),
        }
        next
    }

    /// The cluster whose endpoints the change touches.
    pub fn endpoint_cluster() -> String {
        cluster_name(&service(0, 1).hostname, 8080)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_estate_and_its_changes_are_what_the_benchmark_says() {
        let catalog = estate(1, 3, 4);
        assert_eq!(catalog.services.len(), 3);
        assert!(catalog.services.iter().all(|s| s.endpoints.len() == 4));
        let addresses: BTreeSet<_> = catalog
            .services
            .iter()
            .flat_map(|s| s.endpoints.iter().map(|e| e.address))
            .collect();
        assert_eq!(addresses.len(), 12, "every instance has its own IP");

        let failed = Change::Endpoint.apply(&catalog, 4);
        assert_eq!(failed.version, 2);
        assert!(!failed.services[0].endpoints[0].healthy);
        assert!(Change::Endpoint.apply(&failed, 4).services[0].endpoints[0].healthy);
        let grown = Change::Service.apply(&catalog, 4);
        assert_eq!(grown.services.len(), 4);
        assert_eq!(
            Change::endpoint_cluster(),
            "outbound|8080||svc00000.group.load.boshy"
        );
    }

    #[test]
    fn every_change_is_named_by_its_word() {
        for change in [Change::Endpoint, Change::Service] {
            assert_eq!(Change::from_word(change.word()), Some(change));
        }
        assert_eq!(Change::from_word("nothing"), None);
    }
}
