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
        }
    }
}
