//! The name table: what the control plane pushes to every virtual-ip-agent.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// hostname (lower-case, no trailing dot) → VIP, for one catalog version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameTable {
    /// The catalog version it was derived from.
    pub version: u64,
    pub tld: String,
    pub names: BTreeMap<String, Ipv4Addr>,
    /// hostname → the BOSH names of the service and its ports, for the agent's request
    /// metrics (docs/telemetry.md). A pilot older than this field sends none; the agent then
    /// labels requests by hostname alone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub origins: BTreeMap<String, ServiceOrigin>,
}

/// Who serves a name, as BOSH names it: empty names for a ServiceEntry's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOrigin {
    pub deployment: String,
    pub instance_group: String,
    pub job: String,
    pub ports: Vec<u16>,
}

impl NameTable {
    pub fn from_catalog(catalog: &crate::catalog::model::Catalog) -> Self {
        NameTable {
            version: catalog.version,
            tld: catalog.tld.clone(),
            names: catalog
                .services
                .iter()
                .map(|s| (s.hostname.clone(), s.vip))
                .collect(),
            origins: catalog
                .services
                .iter()
                .map(|s| {
                    // A WorkloadGroup's members are instances of the group in the director
                    // config that defines it (as their agents name themselves): their calls
                    // are counted under those names on both sides.
                    let (deployment, instance_group) = match s
                        .workload_group
                        .as_deref()
                        .and_then(|group| group.rsplit_once('/'))
                    {
                        Some((config, group)) => (config.to_string(), group.to_string()),
                        None => (s.key.deployment.clone(), s.key.instance_group.clone()),
                    };
                    let origin = ServiceOrigin {
                        deployment,
                        instance_group,
                        job: s.key.job.clone(),
                        ports: s.ports.iter().map(|port| port.number).collect(),
                    };
                    (s.hostname.clone(), origin)
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::{Protocol, Service};
    use crate::catalog::testing::{self, service};

    #[test]
    fn a_workload_groups_service_comes_from_its_config_and_group() {
        let job = service("d", "web", "httpbin")
            .port("http", 80, Protocol::Http)
            .build();
        let group = Service {
            workload_group: Some("legacy/rabbitmq".into()),
            hostname: "rabbitmq.rabbitmq.legacy.boshy".into(),
            ..service("", "", "")
                .port("http-management", 15672, Protocol::Http)
                .build()
        };
        let table = NameTable::from_catalog(&testing::catalog(1, [job.clone(), group]));
        let origin = |hostname: &str| {
            let o = &table.origins[hostname];
            (
                o.deployment.as_str(),
                o.instance_group.as_str(),
                o.ports.clone(),
            )
        };
        assert_eq!(origin(&job.hostname), ("d", "web", vec![80]));
        assert_eq!(
            origin("rabbitmq.rabbitmq.legacy.boshy"),
            ("legacy", "rabbitmq", vec![15672])
        );
    }
}
