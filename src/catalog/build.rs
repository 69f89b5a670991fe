//! Parsed manifests + instances + VIPs → a `Catalog`, and what changed between two catalogs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use sha2::{Digest, Sha256};

use super::labels::{self, director_labels};
use super::model::{
    Catalog, DeploymentInput, Endpoint, Instance, Labels, Service, ServiceDecl, ServiceKey,
};
use crate::text::clip;

/// The longest DNS name (RFC 1035), without the trailing dot.
const MAX_HOSTNAME_LEN: usize = 253;

/// The services that get a hostname, and why others get none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hostnames {
    /// Each service with its hostname `<ServiceDecl::dns_name>.<tld>`, sorted by hostname.
    pub services: Vec<(ServiceKey, String)>,
    /// For the caller to log: one line per service left out for a hostname too long, and
    /// one per hostname several services share, naming each.
    pub warnings: Vec<String>,
}

/// Every declared service that can have a hostname: this is what needs a VIP. Left out, with
/// a warning, are services whose hostname would be too long for DNS, and every service of a
/// hostname that several share: BOSH names that differ only in what canonicalizing erases
/// (`diego_cell` and `diego-cell`, or deployments `my_dep` and `my-dep`) would make one name
/// for two services, and serving either would route the other's clients to it.
pub fn hostnames(inputs: &[DeploymentInput], tld: &str) -> Hostnames {
    let tld = tld.trim_matches('.').to_lowercase();
    let mut warnings = Vec::new();
    let mut by_hostname: BTreeMap<String, Vec<&ServiceKey>> = BTreeMap::new();
    for decl in inputs.iter().flat_map(|input| &input.manifest.services) {
        let hostname = format!("{}.{tld}", decl.dns_name);
        if hostname.len() > MAX_HOSTNAME_LEN {
            warnings.push(format!(
                "{}: hostname {hostname:?} is longer than {MAX_HOSTNAME_LEN} characters; the \
                 service is skipped",
                decl.key
            ));
            continue;
        }
        by_hostname.entry(hostname).or_default().push(&decl.key);
    }
    let mut services = Vec::new();
    for (hostname, keys) in by_hostname {
        match keys.as_slice() {
            [key] => services.push(((*key).clone(), hostname)),
            _ => {
                let names: Vec<String> = keys.iter().map(ToString::to_string).collect();
                warnings.push(format!(
                    "{} share the hostname {hostname:?}; none of them is served until all \
                     but one are renamed",
                    names.join(" and ")
                ));
            }
        }
    }
    Hostnames { services, warnings }
}

/// A catalog, and the instances it could not make endpoints of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub catalog: Catalog,
    /// One line per instance of a served instance group that has a VM but no usable IPv4
    /// address, for the caller to log at debug level: an IPv6-only instance is no mistake.
    pub unaddressed: Vec<String>,
}

/// Builds the whole catalog from the services `hostnames` gives (its warnings are for the
/// caller of `hostnames` to report). A service whose hostname has no VIP in `vips` (the pool
/// is exhausted) is left out; the caller, which knows why, logs it.
pub fn build(inputs: &[DeploymentInput], tld: &str, vips: &BTreeMap<String, Ipv4Addr>) -> Built {
    let declared: BTreeMap<&ServiceKey, _> = inputs
        .iter()
        .flat_map(|input| {
            input
                .manifest
                .services
                .iter()
                .map(move |decl| (&decl.key, (input, decl)))
        })
        .collect();
    let mut services = Vec::new();
    let mut unaddressed = Vec::new();
    for (key, hostname) in hostnames(inputs, tld).services {
        let Some(&vip) = vips.get(&hostname) else {
            continue;
        };
        let (input, decl) = declared[&key];
        services.push(Service {
            endpoints: endpoints(input, decl, &mut unaddressed),
            key,
            hostname,
            vip,
            ports: decl.ports.clone(),
            service_entry: None,
            workload_group: None,
            probe: None,
            dns: None,
        });
    }
    // An instance group's instances are looked at once per served job.
    unaddressed.sort_unstable();
    unaddressed.dedup();
    let tld = tld.trim_matches('.').to_lowercase();
    Built {
        catalog: Catalog {
            version: content_version(&tld, &services),
            tld,
            services,
        },
        unaddressed,
    }
}

/// `catalog` with `entries` (services ServiceEntries define, whose hostnames no job's
/// service has) added in hostname order, and its version computed again.
pub fn with_entries(catalog: Catalog, entries: Vec<Service>) -> Catalog {
    if entries.is_empty() {
        return catalog;
    }
    let mut services = catalog.services;
    services.extend(entries);
    services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    Catalog {
        version: content_version(&catalog.tld, &services),
        tld: catalog.tld,
        services,
    }
}

/// `catalog` with its version computed again, after its services were changed in place
/// (the agents' health applied to its endpoints).
pub fn rehash(catalog: Catalog) -> Catalog {
    Catalog {
        version: content_version(&catalog.tld, &catalog.services),
        ..catalog
    }
}

/// The instances of the service's instance group (by its BOSH name, as the director reports
/// it) that can take traffic, sorted by (index, instance); those with a VM but no usable
/// address are described in `unaddressed`. Only instance groups named in the manifest count:
/// the director may still report instances of a group the latest manifest removed.
fn endpoints(
    input: &DeploymentInput,
    service: &ServiceDecl,
    unaddressed: &mut Vec<String>,
) -> Vec<Endpoint> {
    let instance_group = service.key.instance_group.as_str();
    if !input.manifest.instance_groups.contains(instance_group) {
        return Vec::new();
    }
    let mut endpoints: Vec<Endpoint> = input
        .instances
        .iter()
        .filter(|instance| instance.instance_group == instance_group)
        .filter(|instance| instance.vm_cid.is_some())
        .filter_map(|instance| {
            let Some(address) = endpoint_address(instance) else {
                unaddressed.push(format!(
                    "deployment {:?} instance {}/{} has no usable IPv4 address (ips {:?}); \
                     not an endpoint",
                    input.name,
                    clip(&instance.instance_group),
                    clip(&instance.id),
                    instance.ips
                ));
                return None;
            };
            Some(Endpoint {
                address: IpAddr::V4(address),
                az: instance.az.clone(),
                instance: instance.id.clone(),
                index: instance.index,
                healthy: instance.job_state.as_deref() == Some("running"),
                plaintext: false,
                labels: endpoint_labels(service, instance),
            })
        })
        .collect();
    endpoints.sort_by(|a, b| (a.index, &a.instance).cmp(&(b.index, &b.instance)));
    endpoints
}

/// The author's labels of the service and the director's labels of the instance. The
/// director's prefix is the director's alone, even when a service declaration was not parsed
/// from a manifest (which refuses such keys with a warning): an author label under it is
/// dropped, so that a director label the instance lacks (no AZ) cannot be faked either.
fn endpoint_labels(service: &ServiceDecl, instance: &Instance) -> Labels {
    let mut merged: Labels = service
        .labels
        .iter()
        .filter(|(key, _)| !labels::is_reserved(key))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    merged.extend(director_labels(&service.key, instance));
    merged
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
    instance
        .ips
        .iter()
        .filter_map(|entry| {
            let entry = entry.trim();
            let ip = entry.split_once('/').map_or(entry, |(ip, _prefix)| ip);
            ip.parse::<Ipv4Addr>().ok()
        })
        .find(usable)
}

/// First 8 bytes of the SHA-256 of the serialized content: equal catalogs get equal versions
/// on every replica and across restarts. 0 is reserved for the pilot's placeholder catalog
/// (before its first director poll), so a content hash of 0 becomes 1.
fn content_version(tld: &str, services: &[Service]) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(tld.as_bytes());
    hasher.update([0]);
    // Streamed into the hash: the JSON of a large catalog is tens of megabytes that need not
    // exist at once (it was most of the build's peak memory at 5,000 services).
    serde_json::to_writer(&mut hasher, services).expect("services always serialize");
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
    use crate::catalog::testing::labels;
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
            bootstrap: Some(index == 0),
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

    fn served(names: &Hostnames) -> Vec<&str> {
        names.services.iter().map(|(_, h)| h.as_str()).collect()
    }

    #[test]
    fn hostnames_are_job_group_deployment_tld_sorted() {
        let names = hostnames(&sample(Vec::new()), "Boshy.");
        assert_eq!(served(&names), vec![APRICOT, BANANA]);
        assert!(names.warnings.is_empty(), "{:?}", names.warnings);
    }

    /// One instance group `group` with one job `job` exposing port 80.
    fn one_job(group: &str, job: &str) -> String {
        format!(
            "instance_groups:\n- name: {group}\n  jobs:\n  - name: {job}\n    \
             expose_ports: [{{name: http, number: 80}}]\n"
        )
    }

    #[test]
    fn underscore_names_are_served_under_their_canonical_hostname() {
        let inputs = vec![input(
            "cf",
            &one_job("diego_cell", "rep"),
            vec![
                // The director reports the instance group by its BOSH name.
                instance("diego_cell", "c-1", 1, &["10.0.0.2"], Some("running")),
                instance("diego_cell", "c-0", 0, &["10.0.0.1"], Some("running")),
                instance("diego-cell", "other", 2, &["10.0.0.3"], Some("running")),
            ],
        )];
        let names = hostnames(&inputs, "boshy");
        assert!(names.warnings.is_empty(), "{:?}", names.warnings);
        let key = ServiceKey {
            deployment: "cf".into(),
            instance_group: "diego_cell".into(),
            job: "rep".into(),
        };
        assert_eq!(
            names.services,
            vec![(key.clone(), "rep.diego-cell.cf.boshy".to_string())]
        );

        let catalog = build(&inputs, "boshy", &vips(&["rep.diego-cell.cf.boshy"])).catalog;
        let service = &catalog.services[0];
        assert_eq!(service.key, key);
        let instances: Vec<&str> = service
            .endpoints
            .iter()
            .map(|e| e.instance.as_str())
            .collect();
        assert_eq!(instances, ["c-0", "c-1"]);
    }

    #[test]
    fn a_hostname_several_services_share_serves_none_of_them() {
        let groups = "instance_groups:\n\
                      - {name: diego_cell, jobs: [{name: rep, expose_ports: [{name: p, number: 1}]}]}\n\
                      - {name: diego-cell, jobs: [{name: rep, expose_ports: [{name: p, number: 1}]}]}\n\
                      - {name: Diego-Cell, jobs: [{name: other, expose_ports: [{name: p, number: 1}]}]}\n";
        let inputs = vec![
            input("cf", groups, Vec::new()),
            input("my-dep", &one_job("g", "j"), Vec::new()),
            input("my_dep", &one_job("g", "j"), Vec::new()),
            input("other", &one_job("g", "j"), Vec::new()),
        ];
        let names = hostnames(&inputs, "boshy");
        assert_eq!(
            served(&names),
            ["j.g.other.boshy", "other.diego-cell.cf.boshy"]
        );
        assert_eq!(
            names.warnings,
            [
                "deployment \"my-dep\" instance group \"g\" job \"j\" and deployment \"my_dep\" \
                 instance group \"g\" job \"j\" share the hostname \"j.g.my-dep.boshy\"; none of \
                 them is served until all but one are renamed",
                "deployment \"cf\" instance group \"diego-cell\" job \"rep\" and deployment \"cf\" \
                 instance group \"diego_cell\" job \"rep\" share the hostname \
                 \"rep.diego-cell.cf.boshy\"; none of them is served until all but one are renamed",
            ]
        );
        let catalog = build(&inputs, "boshy", &vips(&served(&names))).catalog;
        assert_eq!(catalog.services.len(), 2);
    }

    #[test]
    fn hostnames_too_long_for_dns_are_skipped() {
        let long = "a".repeat(63);
        let yaml = format!(
            "instance_groups:\n- name: {long}\n  jobs:\n  - name: {long}\n    expose_ports: [{{name: p, number: 1}}]\n"
        );
        let inputs = vec![input(&long, &yaml, Vec::new())];
        assert_eq!(hostnames(&inputs, "boshy").services.len(), 1);
        let too_long = hostnames(&inputs, &"t".repeat(62));
        assert!(too_long.services.is_empty());
        assert_eq!(too_long.warnings.len(), 1);
        assert!(
            too_long.warnings[0].contains("is longer than 253 characters; the service is skipped"),
            "{:?}",
            too_long.warnings
        );
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
            instance("banana", "b-6", 6, &["10.0.0.16"], Some("running")),
            // Not the BOSH name of the group: not its instance.
            instance("Banana", "b-7", 7, &["10.0.0.17"], Some("running")),
            instance("removed-group", "r-0", 0, &["10.0.0.20"], Some("running")),
            instance("apricot", "a-0", 0, &["10.0.0.1"], Some("running")),
        ]);
        let built = build(&inputs, "boshy", &vips(&[APRICOT, BANANA]));
        assert_eq!(
            built.unaddressed,
            [
                "deployment \"sample-deployment\" instance banana/b-3 has no usable IPv4 address \
                 (ips [\"fd00::3\"]); not an endpoint",
                "deployment \"sample-deployment\" instance banana/b-5 has no usable IPv4 address \
                 (ips []); not an endpoint",
            ]
        );
        let catalog = built.catalog;
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
    fn every_endpoint_has_the_directors_labels() {
        let built = build(
            &sample(vec![
                instance("banana", "b-1", 1, &["10.0.0.11"], Some("failing")),
                instance("banana", "b-0", 0, &["10.0.0.10"], Some("running")),
                instance("apricot", "a-0", 0, &["10.0.0.1"], Some("running")),
            ]),
            "boshy",
            &vips(&[APRICOT, BANANA]),
        );
        let [apricot, banana] = &built.catalog.services[..] else {
            panic!("two services: {:?}", built.catalog.services)
        };
        assert_eq!(
            banana.endpoints[1].labels,
            labels([
                ("bosh.io/az", "z1"),
                ("bosh.io/bootstrap", "false"),
                ("bosh.io/deployment", "sample-deployment"),
                ("bosh.io/id", "b-1"),
                ("bosh.io/index", "1"),
                ("bosh.io/instance-group", "banana"),
                ("bosh.io/job", "example-httpbin"),
            ])
        );
        assert_eq!(banana.endpoints[0].labels["bosh.io/bootstrap"], "true");
        assert_eq!(banana.endpoints[0].labels["bosh.io/id"], "b-0");
        assert_eq!(
            apricot.endpoints[0].labels["bosh.io/instance-group"],
            "apricot"
        );
        for endpoint in apricot.endpoints.iter().chain(&banana.endpoints) {
            assert_eq!(endpoint.labels.len(), 7, "{endpoint:?}");
        }
    }

    /// `banana` exposes a port with the author labels `labels_yaml`.
    fn labelled(labels_yaml: &str, instances: Vec<Instance>) -> Vec<DeploymentInput> {
        let yaml = format!(
            "instance_groups:\n- name: banana\n  jobs:\n  - name: example-httpbin\n    \
             expose_ports: [{{name: http, number: 80}}]\n    expose_labels: {labels_yaml}\n"
        );
        vec![input("sample-deployment", &yaml, instances)]
    }

    #[test]
    fn author_labels_are_on_every_endpoint_beside_the_directors() {
        let inputs = labelled(
            "{version: v2, app.kubernetes.io/name: reviews}",
            vec![
                instance("banana", "b-0", 0, &["10.0.0.10"], Some("running")),
                instance("banana", "b-1", 1, &["10.0.0.11"], Some("running")),
            ],
        );
        let catalog = build(&inputs, "boshy", &vips(&[BANANA])).catalog;
        let endpoints = &catalog.services[0].endpoints;
        assert_eq!(endpoints.len(), 2);
        for endpoint in endpoints {
            assert_eq!(endpoint.labels["version"], "v2");
            assert_eq!(endpoint.labels["app.kubernetes.io/name"], "reviews");
            assert_eq!(endpoint.labels["bosh.io/job"], "example-httpbin");
            assert_eq!(endpoint.labels.len(), 9, "{endpoint:?}");
        }
    }

    #[test]
    fn author_labels_cannot_stand_for_the_directors() {
        // A manifest cannot give them (it is refused with a warning)...
        let inputs = labelled(
            "{bosh.io/az: fake, bosh.io/index: \"9\", version: v2}",
            vec![instance(
                "banana",
                "b-0",
                0,
                &["10.0.0.10"],
                Some("running"),
            )],
        );
        assert_eq!(inputs[0].manifest.warnings.len(), 2);
        // ...nor can a declaration made some other way.
        let mut manifest = (*inputs[0].manifest).clone();
        manifest.services[0].labels.extend([
            ("bosh.io/az".to_string(), "fake".to_string()),
            ("bosh.io/bootstrap".to_string(), "false".to_string()),
            ("zone.bosh.io/x".to_string(), "fake".to_string()),
        ]);
        let mut no_az = instance("banana", "b-0", 0, &["10.0.0.10"], Some("running"));
        no_az.az = None;
        let inputs = vec![DeploymentInput {
            manifest: Arc::new(manifest),
            instances: Arc::new(vec![no_az]),
            ..inputs[0].clone()
        }];
        let catalog = build(&inputs, "boshy", &vips(&[BANANA])).catalog;
        let labels = &catalog.services[0].endpoints[0].labels;
        assert_eq!(labels["bosh.io/bootstrap"], "true", "the director's");
        assert!(!labels.contains_key("bosh.io/az"), "{labels:?}");
        assert!(!labels.contains_key("zone.bosh.io/x"), "{labels:?}");
        assert_eq!(labels["version"], "v2");
    }

    #[test]
    fn services_without_a_vip_are_left_out() {
        let catalog = build(&sample(Vec::new()), "boshy", &vips(&[BANANA])).catalog;
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
        let one = build(&sample(instances.clone()), "boshy", &v).catalog;
        let same = build(&sample(reversed), "boshy", &v).catalog;
        assert_eq!(one, same);
        assert_ne!(one.version, 0);

        let mut unhealthy = instances.clone();
        unhealthy[1].job_state = Some("failing".into());
        let version = |inputs: &[DeploymentInput], tld| build(inputs, tld, &v).catalog.version;
        assert_ne!(version(&sample(unhealthy), "boshy"), one.version);
        assert_ne!(version(&sample(instances.clone()), "mesh"), one.version);
        assert_ne!(version(&[], "boshy"), 0);

        let v2 = version(&labelled("{version: v2}", instances.clone()), "boshy");
        let v3 = version(&labelled("{version: v3}", instances.clone()), "boshy");
        assert_ne!(v2, v3, "labels are content");
        let mut bootstrap_moved = instances;
        bootstrap_moved[0].bootstrap = Some(false);
        bootstrap_moved[1].bootstrap = Some(true);
        assert_ne!(
            version(&labelled("{version: v2}", bootstrap_moved), "boshy"),
            v2
        );
    }

    #[test]
    fn diff_names_added_removed_and_changed_hostnames() {
        let v = vips(&[APRICOT, BANANA]);
        let before = build(&sample(Vec::new()), "boshy", &vips(&[APRICOT])).catalog;
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
        )
        .catalog;
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
