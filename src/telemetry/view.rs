//! Pure: who is on each side of a connection Envoy logged, in BOSH's names.
//!
//! Envoy's entries name no service: they carry the address the connection was made to and,
//! inbound, the caller's certificate. The name table the pilots push says which service has
//! which VIP and ports (`NameTable::origins`); the agent's config says which instance it runs
//! on. From those:
//! - a connection to a VIP (link-local) went out of this VM (`reporter="source"`): the
//!   source is this VM, the destination the service of that VIP;
//! - any other destination is this VM's own address and port, reached through the inbound
//!   capture (`reporter="destination"`): the destination is this VM's service on that port,
//!   the source the caller's SPIFFE ID, or `unknown` without one (a plaintext caller).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::identity::spiffe;
use crate::names::table::NameTable;

/// What a name that the table does not know, or a caller without an identity, is labelled.
pub(crate) const UNKNOWN: &str = "unknown";

/// Which Envoy reported the entry: the caller's (`source`) or the callee's (`destination`),
/// Istio's `reporter` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// A workload by its BOSH names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Workload {
    pub deployment: String,
    pub instance_group: String,
}

impl Workload {
    fn unknown() -> Workload {
        Workload {
            deployment: UNKNOWN.to_string(),
            instance_group: UNKNOWN.to_string(),
        }
    }
}

/// A service and the port called.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Destination {
    pub workload: Workload,
    pub job: String,
    /// The service's hostname.
    pub service: String,
    pub port: u16,
}

/// Both sides of one logged connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Parties {
    pub reporter: Reporter,
    pub source: Workload,
    pub destination: Destination,
}

/// The service behind a VIP or behind one of this VM's ports.
#[derive(Debug, Clone)]
struct Named {
    workload: Workload,
    job: String,
    service: String,
}

/// The names the agent labels entries with, rebuilt from each name table.
#[derive(Debug, Clone, Default)]
pub(crate) struct MeshView {
    /// This VM's workload; `None` when the agent's config names no instance group.
    own: Option<Workload>,
    by_vip: HashMap<Ipv4Addr, Named>,
    /// This VM's services by port.
    own_ports: HashMap<u16, Named>,
}

impl MeshView {
    pub(crate) fn new(own: Option<Workload>, table: &NameTable) -> MeshView {
        let mut by_vip = HashMap::new();
        let mut own_ports = HashMap::new();
        for (hostname, vip) in &table.names {
            let origin = table.origins.get(hostname);
            let named = Named {
                workload: origin.map_or_else(Workload::unknown, |origin| Workload {
                    deployment: origin.deployment.clone(),
                    instance_group: origin.instance_group.clone(),
                }),
                job: origin.map_or(UNKNOWN, |origin| &origin.job).to_string(),
                service: hostname.clone(),
            };
            if let Some(origin) = origin.filter(|_| own.as_ref() == Some(&named.workload)) {
                for port in &origin.ports {
                    own_ports.insert(*port, named.clone());
                }
            }
            by_vip.insert(*vip, named);
        }
        MeshView {
            own,
            by_vip,
            own_ports,
        }
    }

    /// Both sides of a connection made to `to`, inbound from a caller whose certificate
    /// carries `caller` (a URI SAN) if any.
    pub(crate) fn parties(&self, to: IpAddr, port: u16, caller: Option<&str>) -> Parties {
        let own = || self.own.clone().unwrap_or_else(Workload::unknown);
        let destination = |named: Option<&Named>, workload: Workload| match named {
            Some(named) => Destination {
                workload: named.workload.clone(),
                job: named.job.clone(),
                service: named.service.clone(),
                port,
            },
            None => Destination {
                workload,
                job: UNKNOWN.to_string(),
                service: UNKNOWN.to_string(),
                port,
            },
        };
        match to {
            IpAddr::V4(vip) if vip.is_link_local() => Parties {
                reporter: Reporter::Source,
                source: own(),
                destination: destination(self.by_vip.get(&vip), Workload::unknown()),
            },
            _ => Parties {
                reporter: Reporter::Destination,
                source: caller.and_then(spiffe::workload_of).map_or_else(
                    Workload::unknown,
                    |(deployment, instance_group)| Workload {
                        deployment: deployment.to_string(),
                        instance_group: instance_group.to_string(),
                    },
                ),
                destination: destination(self.own_ports.get(&port), own()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::table::ServiceOrigin;
    use std::collections::BTreeMap;

    fn workload(deployment: &str, instance_group: &str) -> Workload {
        Workload {
            deployment: deployment.into(),
            instance_group: instance_group.into(),
        }
    }

    fn table() -> NameTable {
        let origin = |deployment: &str, group: &str, job: &str, ports: &[u16]| ServiceOrigin {
            deployment: deployment.into(),
            instance_group: group.into(),
            job: job.into(),
            ports: ports.to_vec(),
        };
        NameTable {
            version: 1,
            tld: "boshy".into(),
            names: BTreeMap::from([
                (
                    "httpbin.banana.d.boshy".into(),
                    Ipv4Addr::new(169, 254, 0, 1),
                ),
                ("web.apricot.d.boshy".into(), Ipv4Addr::new(169, 254, 0, 2)),
                ("old.pear.d.boshy".into(), Ipv4Addr::new(169, 254, 0, 3)),
            ]),
            origins: BTreeMap::from([
                (
                    "httpbin.banana.d.boshy".into(),
                    origin("d", "banana", "example_httpbin", &[9002]),
                ),
                (
                    "web.apricot.d.boshy".into(),
                    origin("d", "apricot", "web", &[8080, 8443]),
                ),
            ]),
        }
    }

    #[test]
    fn a_call_to_a_vip_is_reported_by_the_caller_with_the_service_as_bosh_names_it() {
        let view = MeshView::new(Some(workload("d", "apricot")), &table());
        let parties = view.parties("169.254.0.1".parse().unwrap(), 9002, None);
        assert_eq!(
            parties,
            Parties {
                reporter: Reporter::Source,
                source: workload("d", "apricot"),
                destination: Destination {
                    workload: workload("d", "banana"),
                    job: "example_httpbin".into(),
                    service: "httpbin.banana.d.boshy".into(),
                    port: 9002,
                },
            }
        );
    }

    #[test]
    fn a_vip_without_origin_or_unknown_to_the_table_keeps_what_is_known() {
        let view = MeshView::new(Some(workload("d", "apricot")), &table());
        let old = view.parties("169.254.0.3".parse().unwrap(), 80, None);
        assert_eq!(old.destination.service, "old.pear.d.boshy");
        assert_eq!(old.destination.workload, Workload::unknown());
        let gone = view.parties("169.254.9.9".parse().unwrap(), 80, None);
        assert_eq!(gone.reporter, Reporter::Source);
        assert_eq!(gone.destination.service, UNKNOWN);
        assert_eq!(gone.destination.job, UNKNOWN);
    }

    #[test]
    fn a_call_to_this_vm_is_reported_by_the_callee_with_the_caller_from_its_certificate() {
        let view = MeshView::new(Some(workload("d", "apricot")), &table());
        let caller = "spiffe://boshy.local/deployment/d/instance_group/banana";
        let parties = view.parties("10.0.0.5".parse().unwrap(), 8443, Some(caller));
        assert_eq!(parties.reporter, Reporter::Destination);
        assert_eq!(parties.source, workload("d", "banana"));
        assert_eq!(parties.destination.job, "web");
        assert_eq!(parties.destination.service, "web.apricot.d.boshy");
        assert_eq!(parties.destination.workload, workload("d", "apricot"));

        let plaintext = view.parties("10.0.0.5".parse().unwrap(), 8080, None);
        assert_eq!(plaintext.source, Workload::unknown());
        let foreign = view.parties("10.0.0.5".parse().unwrap(), 8080, Some("spiffe://x/ns/a"));
        assert_eq!(foreign.source, Workload::unknown());
    }

    #[test]
    fn a_port_this_vm_does_not_expose_is_still_this_vm() {
        let view = MeshView::new(Some(workload("d", "apricot")), &table());
        let parties = view.parties("10.0.0.5".parse().unwrap(), 9002, None);
        assert_eq!(parties.destination.workload, workload("d", "apricot"));
        assert_eq!(parties.destination.service, UNKNOWN);
        let anonymous = MeshView::new(None, &table());
        let parties = anonymous.parties("169.254.0.1".parse().unwrap(), 9002, None);
        assert_eq!(parties.source, Workload::unknown());
    }
}
