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
                    let origin = ServiceOrigin {
                        deployment: s.key.deployment.clone(),
                        instance_group: s.key.instance_group.clone(),
                        job: s.key.job.clone(),
                        ports: s.ports.iter().map(|port| port.number).collect(),
                    };
                    (s.hostname.clone(), origin)
                })
                .collect(),
        }
    }
}
