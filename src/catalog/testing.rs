//! Catalogs built by hand, for tests (the product's unit tests, the integration tests and the
//! tools): one builder instead of a struct literal per test, so that a field added to the model
//! changes one place. Compiled for `cfg(test)` and the `testing` feature only; the release build
//! never enables it.
//!
//! ```text
//! let web = service("sample", "banana", "web")
//!     .vip([169, 254, 255, 3])
//!     .port("http", 8080, Protocol::Http)
//!     .endpoint(endpoint("10.0.0.4"))
//!     .endpoint(Endpoint { healthy: false, ..endpoint("10.0.0.5") })
//!     .endpoint(Endpoint { labels: labels([("version", "v2")]), ..endpoint("10.0.0.6") });
//! let catalog = catalog(1, [web]);
//! ```

use std::net::{IpAddr, Ipv4Addr};

use super::manifest::canonicalize;
use super::model::{
    Catalog, DnsEndpoint, DnsEndpoints, DnsResolution, Endpoint, Labels, Protocol, Service,
    ServiceKey, ServicePort,
};

/// The tld of hand-built catalogs, as the pilot's default.
pub const TLD: &str = "boshy";

/// A catalog of `services` (sorted by hostname, as a built catalog is) under [`TLD`].
pub fn catalog(version: u64, services: impl IntoIterator<Item = impl Into<Service>>) -> Catalog {
    let mut services: Vec<Service> = services.into_iter().map(Into::into).collect();
    services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    Catalog {
        version,
        tld: TLD.into(),
        services,
    }
}

/// A service `job.instance_group.deployment.boshy` (each name in its DNS form, as a built
/// catalog has it) with VIP 169.254.255.1, no ports and no endpoints until the builder adds
/// them.
pub fn service(deployment: &str, instance_group: &str, job: &str) -> ServiceBuilder {
    ServiceBuilder(Service {
        key: ServiceKey {
            deployment: deployment.into(),
            instance_group: instance_group.into(),
            job: job.into(),
        },
        hostname: [job, instance_group, deployment, TLD]
            .map(canonicalize)
            .join("."),
        vip: Ipv4Addr::new(169, 254, 255, 1),
        ports: Vec::new(),
        endpoints: Vec::new(),
        service_entry: None,
        workload_group: None,
        probe: None,
        dns: None,
    })
}

/// A healthy endpoint at `address` (an IP) with no AZ, whose instance id is derived from the
/// address, whose index is unset and which has no labels (not even the director's: it belongs
/// to no service yet); change fields with struct update syntax.
pub fn endpoint(address: &str) -> Endpoint {
    let address: IpAddr = address
        .parse()
        .unwrap_or_else(|e| panic!("test endpoint address {address:?}: {e}"));
    Endpoint {
        address,
        az: None,
        instance: format!("instance-{address}"),
        index: None,
        healthy: true,
        plaintext: false,
        labels: Labels::new(),
    }
}

/// A DNS endpoint at `address` (a name or an IP) with no AZ and no labels; change fields with
/// struct update syntax.
pub fn dns_endpoint(address: &str) -> DnsEndpoint {
    DnsEndpoint {
        address: address.into(),
        az: None,
        labels: Labels::new(),
    }
}

/// Labels from `(key, value)` pairs, unchecked: a test may want labels no manifest would
/// give.
pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Labels {
    pairs
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// A [`Service`] under construction; `Into<Service>` ends it.
#[derive(Debug, Clone)]
pub struct ServiceBuilder(Service);

impl ServiceBuilder {
    pub fn vip(mut self, vip: impl Into<Ipv4Addr>) -> Self {
        self.0.vip = vip.into();
        self
    }

    /// Adds an exposed port (kept sorted by number, as a built catalog keeps them).
    pub fn port(mut self, name: &str, number: u16, protocol: Protocol) -> Self {
        self.0.ports.push(ServicePort {
            name: name.into(),
            number,
            protocol,
        });
        self.0.ports.sort_by_key(|port| port.number);
        self
    }

    /// Adds an endpoint, in the order given.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.0.endpoints.push(endpoint);
        self
    }

    /// Makes the service one whose endpoints Envoy finds through DNS, by these names: as a
    /// ServiceEntry with that resolution makes it (it has no other endpoints).
    pub fn dns(
        mut self,
        resolution: DnsResolution,
        endpoints: impl IntoIterator<Item = DnsEndpoint>,
    ) -> Self {
        self.0.endpoints.clear();
        self.0.dns = Some(DnsEndpoints {
            resolution,
            endpoints: endpoints.into_iter().collect(),
        });
        self
    }

    pub fn build(self) -> Service {
        self.0
    }
}

impl From<ServiceBuilder> for Service {
    fn from(builder: ServiceBuilder) -> Service {
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_catalog_keeps_the_models_orders() {
        let catalog = catalog(
            7,
            [
                service("d", "g", "web")
                    .port("http", 9002, Protocol::Http)
                    .port("grpc", 9000, Protocol::Grpc),
                service("d", "g", "db").vip([169, 254, 255, 9]),
                service("cf", "diego_cell", "rep"),
            ],
        );
        assert_eq!(catalog.version, 7);
        assert_eq!(catalog.tld, "boshy");
        let hostnames: Vec<&str> = catalog
            .services
            .iter()
            .map(|s| s.hostname.as_str())
            .collect();
        assert_eq!(
            hostnames,
            ["db.g.d.boshy", "rep.diego-cell.cf.boshy", "web.g.d.boshy"]
        );
        assert_eq!(catalog.services[0].vip, Ipv4Addr::new(169, 254, 255, 9));
        let ports: Vec<u16> = catalog.services[2].ports.iter().map(|p| p.number).collect();
        assert_eq!(ports, [9000, 9002]);
    }

    #[test]
    fn endpoints_are_healthy_with_an_instance_named_by_their_address() {
        let e = endpoint("10.0.0.4");
        assert!(e.healthy);
        assert_eq!(e.instance, "instance-10.0.0.4");
        assert_eq!((e.az, e.index), (None, None));
        assert!(e.labels.is_empty());
        let labelled = Endpoint {
            labels: labels([("version", "v2"), ("app", "web")]),
            ..endpoint("10.0.0.4")
        };
        assert_eq!(labelled.labels["version"], "v2");
        assert_eq!(labelled.labels.len(), 2);
    }
}
