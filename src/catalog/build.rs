//! Parsed manifests + instances + VIPs → a `Catalog`, and what changed between two catalogs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use sha2::{Digest, Sha256};

use super::model::{Catalog, DeploymentInput, Endpoint, Instance, Service, ServiceKey};

/// The longest DNS name (RFC 1035), without the trailing dot.
const MAX_HOSTNAME_LEN: usize = 253;

/// Every declared service with its hostname `<job>.<instance_group>.<deployment>.<tld>`,
/// sorted by hostname. This is what needs a VIP; services whose name would be too long for
/// DNS are left out (with a warning).
pub fn hostnames(inputs: &[DeploymentInput], tld: &str) -> Vec<(ServiceKey, String)> {
    let tld = tld.trim_matches('.').to_lowercase();
    let mut by_hostname = BTreeMap::new();
    for decl in inputs.iter().flat_map(|input| &input.manifest.services) {
        let key = &decl.key;
        let hostname = format!(
            "{}.{}.{}.{tld}",
            key.job, key.instance_group, key.deployment
        );
        if hostname.len() > MAX_HOSTNAME_LEN {
            tracing::warn!(
                "deployment {:?} instance group {:?} job {:?}: hostname {hostname:?} is longer \
                 than {MAX_HOSTNAME_LEN} characters; the service is skipped",
                key.deployment,
                key.instance_group,
                key.job
            );
            continue;
        }
        by_hostname.entry(hostname).or_insert_with(|| key.clone());
    }
    by_hostname
        .into_iter()
        .map(|(hostname, key)| (key, hostname))
        .collect()
}

/// Builds the whole catalog. A service whose hostname has no VIP in `vips` (the pool is
/// exhausted) is left out; the caller, which knows why, logs it.
pub fn build(inputs: &[DeploymentInput], tld: &str, vips: &BTreeMap<String, Ipv4Addr>) -> Catalog {
    let declared: BTreeMap<&ServiceKey, _> = inputs
        .iter()
        .flat_map(|input| {
            input
                .manifest
                .services
                .iter()
                .map(move |decl| (&decl.key, (input, &decl.ports)))
        })
        .collect();
    let mut services = Vec::new();
    for (key, hostname) in hostnames(inputs, tld) {
        let Some(&vip) = vips.get(&hostname) else {
            continue;
        };
        let (input, ports) = declared[&key];
        services.push(Service {
            endpoints: endpoints(input, &key.instance_group),
            key,
            hostname,
            vip,
            ports: ports.clone(),
        });
    }
    let tld = tld.trim_matches('.').to_lowercase();
    Catalog {
        version: content_version(&tld, &services),
        tld,
        services,
    }
}

/// The instances of `instance_group` that can take traffic, sorted by (index, instance).
/// Only instance groups named in the manifest count: the director may still report
/// instances of a group the latest manifest removed.
fn endpoints(input: &DeploymentInput, instance_group: &str) -> Vec<Endpoint> {
    if !input.manifest.instance_groups.contains(instance_group) {
        return Vec::new();
    }
    let mut endpoints: Vec<Endpoint> = input
        .instances
        .iter()
        .filter(|instance| instance.instance_group.to_lowercase() == instance_group)
        .filter(|instance| instance.vm_cid.is_some())
        .filter_map(|instance| {
            let address = endpoint_address(instance)?;
            Some(Endpoint {
                address: IpAddr::V4(address),
                az: instance.az.clone(),
                instance: instance.id.clone(),
                index: instance.index,
                healthy: instance.job_state.as_deref() == Some("running"),
            })
        })
        .collect();
    endpoints.sort_by(|a, b| (a.index, &a.instance).cmp(&(b.index, &b.instance)));
    endpoints
}

/// The address Envoy dials for an instance: the first `ips` entry, in the director's order,
/// that is an IPv4 address, plain (`10.0.0.5`) or in CIDR form (`10.0.0.5/24`, taken as the
/// address), and is unicast (not 0.0.0.0, loopback, multicast or broadcast). The director
/// lists the instance's primary network first. Envoy's outbound path is IPv4-only, so an
/// instance with only IPv6 addresses is not an endpoint.
fn endpoint_address(instance: &Instance) -> Option<Ipv4Addr> {
    let usable = |ip: &Ipv4Addr| {
        !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast())
    };
    let address = instance
        .ips
        .iter()
        .filter_map(|entry| {
            let entry = entry.trim();
            let ip = entry.split_once('/').map_or(entry, |(ip, _prefix)| ip);
            ip.parse::<Ipv4Addr>().ok()
        })
        .find(usable);
    if address.is_none() {
        tracing::debug!(
            instance = %instance.id,
            ips = ?instance.ips,
            "instance {}/{} has no usable IPv4 address; not an endpoint",
            instance.instance_group,
            instance.id
        );
    }
    address
}

/// First 8 bytes of the SHA-256 of the serialized content: equal catalogs get equal versions
/// on every replica and across restarts. 0 is reserved for the pilot's placeholder catalog
/// (before its first director poll), so a content hash of 0 becomes 1.
fn content_version(tld: &str, services: &[Service]) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(tld.as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(services).expect("services always serialize"));
    let digest = hasher.finalize();
    let version = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    version.max(1)
}

/// What changed between two catalogs, by hostname, for logging.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same hostname, different VIP, ports or endpoints.
    pub changed: Vec<String>,
}

impl CatalogDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl fmt::Display for CatalogDiff {
    /// `added [a.b.c.boshy], removed [], changed [x.y.z.boshy]`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "added [{}], removed [{}], changed [{}]",
            self.added.join(", "),
            self.removed.join(", "),
            self.changed.join(", ")
        )
    }
}

pub fn diff(old: &Catalog, new: &Catalog) -> CatalogDiff {
    let by_hostname = |catalog: &Catalog| -> BTreeMap<String, Service> {
        catalog
            .services
            .iter()
            .map(|s| (s.hostname.clone(), s.clone()))
            .collect()
    };
    let (old, new) = (by_hostname(old), by_hostname(new));
    let hostnames: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut diff = CatalogDiff::default();
    for hostname in hostnames {
        match (old.get(hostname), new.get(hostname)) {
            (None, Some(_)) => diff.added.push(hostname.clone()),
            (Some(_), None) => diff.removed.push(hostname.clone()),
            (Some(before), Some(after)) if before != after => diff.changed.push(hostname.clone()),
            _ => {}
        }
    }
    diff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::manifest;
    use std::sync::Arc;

    const MANIFEST: &str = r#"
instance_groups:
- name: apricot
  jobs:
  - name: example-httpbin
    expose_ports: [{name: http, number: 9001}]
- name: banana
  jobs:
  - name: example-httpbin
    expose_ports: [{name: other-http, number: 9002}]
  - name: other
"#;

    fn instance(group: &str, id: &str, index: u32, ips: &[&str], state: Option<&str>) -> Instance {
        Instance {
            id: id.into(),
            instance_group: group.into(),
            index: Some(index),
            az: Some("z1".into()),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            job_state: state.map(String::from),
            vm_cid: state.map(|_| format!("vm-{id}")),
        }
    }

    fn input(name: &str, manifest_yaml: &str, instances: Vec<Instance>) -> DeploymentInput {
        DeploymentInput {
            name: name.into(),
            manifest: Arc::new(manifest::parse(name, manifest_yaml).unwrap()),
            instances: Arc::new(instances),
        }
    }

    fn sample(instances: Vec<Instance>) -> Vec<DeploymentInput> {
        vec![input("sample-deployment", MANIFEST, instances)]
    }

    fn vips(hostnames: &[&str]) -> BTreeMap<String, Ipv4Addr> {
        hostnames
            .iter()
            .zip(1u8..)
            .map(|(h, n)| (h.to_string(), Ipv4Addr::new(169, 254, 255, n)))
            .collect()
    }

    const APRICOT: &str = "example-httpbin.apricot.sample-deployment.boshy";
    const BANANA: &str = "example-httpbin.banana.sample-deployment.boshy";

    #[test]
    fn hostnames_are_job_group_deployment_tld_sorted() {
        let names = hostnames(&sample(Vec::new()), "Boshy.");
        let names: Vec<&str> = names.iter().map(|(_, h)| h.as_str()).collect();
        assert_eq!(names, vec![APRICOT, BANANA]);
    }

    #[test]
    fn hostnames_too_long_for_dns_are_skipped() {
        let long = "a".repeat(63);
        let yaml = format!(
            "instance_groups:\n- name: {long}\n  jobs:\n  - name: {long}\n    expose_ports: [{{name: p, number: 1}}]\n"
        );
        let inputs = vec![input(&long, &yaml, Vec::new())];
        assert_eq!(hostnames(&inputs, "boshy").len(), 1);
        assert!(hostnames(&inputs, &"t".repeat(62)).is_empty());
    }

    #[test]
    fn endpoints_are_instances_with_a_vm_and_an_ipv4_address() {
        let inputs = sample(vec![
            instance("banana", "b-2", 2, &["10.0.0.12"], Some("failing")),
            instance("banana", "b-0", 0, &["10.0.0.10/24"], Some("running")),
            instance("banana", "b-1", 1, &["10.0.0.11"], None),
            instance("banana", "b-3", 3, &["fd00::3"], Some("running")),
            instance(
                "banana",
                "b-4",
                4,
                &["fd00::4", "junk", "0.0.0.0", "10.0.0.14"],
                Some("running"),
            ),
            instance("banana", "b-5", 5, &[], Some("running")),
            instance("Banana", "b-6", 6, &["10.0.0.16"], Some("running")),
            instance("removed-group", "r-0", 0, &["10.0.0.20"], Some("running")),
            instance("apricot", "a-0", 0, &["10.0.0.1"], Some("running")),
        ]);
        let catalog = build(&inputs, "boshy", &vips(&[APRICOT, BANANA]));
        assert_eq!(catalog.services.len(), 2);
        let banana = &catalog.services[1];
        assert_eq!(banana.hostname, BANANA);
        assert_eq!(banana.vip, Ipv4Addr::new(169, 254, 255, 2));
        assert_eq!(banana.ports[0].number, 9002);
        let summary: Vec<(&str, String, bool)> = banana
            .endpoints
            .iter()
            .map(|e| (e.instance.as_str(), e.address.to_string(), e.healthy))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("b-0", "10.0.0.10".to_string(), true),
                ("b-2", "10.0.0.12".to_string(), false),
                ("b-4", "10.0.0.14".to_string(), true),
                ("b-6", "10.0.0.16".to_string(), true),
            ]
        );
        let apricot = &catalog.services[0];
        assert_eq!(apricot.endpoints.len(), 1);
        assert_eq!(apricot.endpoints[0].az.as_deref(), Some("z1"));
    }

    #[test]
    fn services_without_a_vip_are_left_out() {
        let catalog = build(&sample(Vec::new()), "boshy", &vips(&[BANANA]));
        let names: Vec<&str> = catalog
            .services
            .iter()
            .map(|s| s.hostname.as_str())
            .collect();
        assert_eq!(names, vec![BANANA]);
        assert_eq!(catalog.tld, "boshy");
    }

    #[test]
    fn version_is_a_content_hash() {
        let instances = vec![
            instance("banana", "b-0", 0, &["10.0.0.10"], Some("running")),
            instance("banana", "b-1", 1, &["10.0.0.11"], Some("running")),
        ];
        let mut reversed = instances.clone();
        reversed.reverse();
        let v = vips(&[APRICOT, BANANA]);
        let one = build(&sample(instances.clone()), "boshy", &v);
        let same = build(&sample(reversed), "boshy", &v);
        assert_eq!(one, same);
        assert_ne!(one.version, 0);

        let mut unhealthy = instances.clone();
        unhealthy[1].job_state = Some("failing".into());
        assert_ne!(build(&sample(unhealthy), "boshy", &v).version, one.version);
        assert_ne!(build(&sample(instances), "mesh", &v).version, one.version);
        assert_ne!(build(&[], "boshy", &v).version, 0);
    }

    #[test]
    fn diff_names_added_removed_and_changed_hostnames() {
        let v = vips(&[APRICOT, BANANA]);
        let before = build(&sample(Vec::new()), "boshy", &vips(&[APRICOT]));
        let after = build(
            &sample(vec![instance(
                "apricot",
                "a-0",
                0,
                &["10.0.0.1"],
                Some("running"),
            )]),
            "boshy",
            &v,
        );
        let d = diff(&before, &after);
        assert_eq!(
            d,
            CatalogDiff {
                added: vec![BANANA.into()],
                removed: vec![],
                changed: vec![APRICOT.into()],
            }
        );
        assert_eq!(
            d.to_string(),
            format!("added [{BANANA}], removed [], changed [{APRICOT}]")
        );
        assert!(diff(&after, &after).is_empty());
        assert_eq!(
            diff(&after, &Catalog::default()).removed,
            vec![APRICOT, BANANA]
        );
    }
}
