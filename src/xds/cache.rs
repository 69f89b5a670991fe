//! The snapshot cache: resources are built and encoded once per version of the inputs (the
//! catalog and the traffic model) and shared, behind an `Arc`, by every ADS stream
//! (go-control-plane's "build once, serve many").
//!
//! Each snapshot also records which resource names changed since the snapshot published
//! before it, so that a delta stream that was in sync with that one only looks at those
//! names: an endpoint change costs each stream a few lookups, not a walk over the estate.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::client::{Client, SourceClass, SourceSelectors};
use super::resources::{
    self, content_version, Inputs, NamedResource, ResourceType, Resources, RouteVariants,
};
use crate::catalog::model::Catalog;
use crate::identity::spiffe::TrustDomain;
use crate::scope::filter::ServiceIndex;
use crate::traffic::security::WorkloadKey;
use crate::traffic::TrafficRules;
use crate::xds::telemetry::Telemetry;

/// The resources of one version of the inputs.
#[derive(Debug)]
pub struct Snapshot {
    resources: Resources,
    /// Version of each type's full resource set, for wildcard subscribers.
    full_versions: [String; 4],
    /// The version of the snapshot published before this one, and per type the names added,
    /// changed or removed since it.
    previous: Option<(u64, [Vec<String>; 4])>,
    /// Per type, parallel to `resources.of_type`: each resource's name and version as
    /// shared strings. Delta streams remember what every Envoy has by cloning these, so
    /// thousands of streams hold pointers to one copy instead of a copy each.
    shared: [Vec<SharedKey>; 4],
    /// Hostname → the rule configs of its traffic rules, to name them behind a NACK.
    rule_configs: BTreeMap<String, BTreeSet<String>>,
    /// The `sourceLabels` of the traffic model and the instances' labels to judge the
    /// clients by: which route configurations each client gets.
    sources: SourceSelectors,
    /// The version of the catalog it was built from.
    catalog_version: u64,
    /// Its place in the order [`follow`] published snapshots in (0 for one built alone).
    seq: u64,
    /// The service of each resource, for the streams of VMs with a scope.
    services: ServiceIndex,
    /// When the inputs it was built from were seen to change (when it was built, for one
    /// built alone): where the time to every Envoy having it starts.
    inputs_changed: Instant,
}

/// A resource's name and version, shared by every stream that remembers them.
#[derive(Debug, Clone)]
pub(crate) struct SharedKey {
    pub name: Arc<str>,
    pub version: Arc<str>,
}

/// What one subscriber gets for one type: the resources it asked for and the
/// `version_info` of that set.
#[derive(Debug)]
pub struct Selection<'a> {
    /// Derived from the (name, version) pairs only: the same content gives the same version
    /// on every replica and after a restart, so a reconnecting Envoy that is up to date gets
    /// nothing re-sent.
    pub version: String,
    pub resources: Vec<&'a NamedResource>,
}

impl Snapshot {
    /// The snapshot of a catalog without traffic rules.
    pub fn from_catalog(catalog: &Catalog) -> Self {
        Self::build(catalog)
    }

    pub fn build<'a>(inputs: impl Into<Inputs<'a>>) -> Self {
        Self::following(inputs, None)
    }

    /// Builds the snapshot of `inputs` and records what changed since `previous`.
    pub(crate) fn following<'a>(
        inputs: impl Into<Inputs<'a>>,
        previous: Option<&Snapshot>,
    ) -> Self {
        let inputs = inputs.into();
        let rule_configs = inputs
            .traffic
            .services
            .iter()
            .map(|(hostname, rules)| (hostname.clone(), rules.configs.clone()))
            .collect();
        let catalog_version = inputs.catalog.version;
        let services = ServiceIndex::new(inputs.catalog, inputs.traffic);
        let resources = resources::build(inputs);
        let sources = SourceSelectors::new(resources.source_selectors.clone(), inputs.catalog);
        let full_versions =
            ResourceType::PUSH_ORDER.map(|t| set_version(resources.of_type(t).iter()));
        let shared = ResourceType::PUSH_ORDER
            .map(|t| shared_keys(resources.of_type(t), previous.map(|p| p.of_shared(t))));
        let previous = previous.map(|previous| {
            let changed = ResourceType::PUSH_ORDER.map(|t| {
                let mut changed =
                    changed_names(previous.resources.of_type(t), resources.of_type(t));
                if t == ResourceType::Route {
                    changed.extend(changed_variants(&previous.resources, &resources));
                    changed.sort();
                    changed.dedup();
                }
                changed
            });
            (previous.version(), changed)
        });
        Snapshot {
            resources,
            full_versions,
            previous,
            shared,
            rule_configs,
            sources,
            catalog_version,
            seq: 0,
            services,
            inputs_changed: Instant::now(),
        }
    }

    /// When the inputs of this snapshot were seen to change.
    pub fn inputs_changed(&self) -> Instant {
        self.inputs_changed
    }

    /// The service each resource belongs to.
    pub(crate) fn services(&self) -> &ServiceIndex {
        &self.services
    }

    /// The version of the catalog this snapshot was built from.
    pub fn catalog_version(&self) -> u64 {
        self.catalog_version
    }

    /// Its place in the order [`follow`] published snapshots in: a later snapshot has a
    /// greater one.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Which route configurations `client` gets: the selectors of this snapshot's traffic
    /// model it satisfies.
    pub(crate) fn source_class(&self, client: Option<&Client>) -> SourceClass {
        self.sources.class_of(client)
    }

    /// The rule configs that may have caused an Envoy's NACK `message`: those of the services
    /// it names (a resource's name carries its service's hostname), or, when it names none
    /// (Envoy's messages for route configurations quote only the reason), every config with
    /// rules in this snapshot. Each once.
    pub(crate) fn rule_configs_behind(&self, message: &str) -> BTreeSet<&str> {
        fn configs_of<'s>(
            hosts: impl Iterator<Item = (&'s String, &'s BTreeSet<String>)>,
        ) -> BTreeSet<&'s str> {
            hosts
                .flat_map(|(_, configs)| configs.iter().map(String::as_str))
                .collect()
        }
        let all = self.rule_configs.iter();
        let named = configs_of(
            all.clone()
                .filter(|(hostname, _)| message.contains(hostname.as_str())),
        );
        if named.is_empty() {
            configs_of(all)
        } else {
            named
        }
    }

    /// The rule configs with traffic rules for `hostname`, sorted.
    pub fn rule_configs_of(&self, hostname: &str) -> Vec<&str> {
        self.rule_configs
            .get(hostname)
            .map_or_else(Vec::new, |configs| {
                configs.iter().map(String::as_str).collect()
            })
    }

    /// The resource of `resource_type` that an Envoy's NACK `message` names: the longest name
    /// of this snapshot's resources of that type the message contains (a cluster's name is a
    /// prefix of its subsets'). `None` when it names none (Envoy quotes only the reason for
    /// route configurations, for one).
    pub(crate) fn rejected_resource(
        &self,
        resource_type: ResourceType,
        message: &str,
    ) -> Option<&str> {
        self.resources
            .of_type(resource_type)
            .iter()
            .map(|resource| resource.name.as_str())
            .filter(|name| message.contains(name))
            .max_by_key(|name| name.len())
    }

    /// The shared name and version of the resource of that type and name, if this snapshot
    /// has it.
    pub(crate) fn shared_key(&self, resource_type: ResourceType, name: &str) -> Option<&SharedKey> {
        // Parallel to the resources: their index finds it.
        let i = self.resources.position(resource_type, name)?;
        self.of_shared(resource_type).get(i)
    }

    /// The shared name and version of `resource`, one of this snapshot's resources of that
    /// type as some client gets it: a client's own variant of a route configuration has a
    /// version of its own, not the shared one.
    pub(crate) fn key_of(
        &self,
        resource_type: ResourceType,
        resource: &NamedResource,
    ) -> SharedKey {
        let key = self
            .shared_key(resource_type, &resource.name)
            .expect("a resource of the snapshot");
        let version = if *key.version == resource.version {
            key.version.clone()
        } else {
            Arc::from(resource.version.as_str())
        };
        SharedKey {
            name: key.name.clone(),
            version,
        }
    }

    /// `name` as a shared string: this snapshot's copy when it has such a resource.
    pub(crate) fn shared_name(&self, resource_type: ResourceType, name: &str) -> Arc<str> {
        self.shared_key(resource_type, name)
            .map_or_else(|| Arc::from(name), |k| k.name.clone())
    }

    fn of_shared(&self, resource_type: ResourceType) -> &[SharedKey] {
        &self.shared[position(resource_type)]
    }

    /// The version of the inputs this snapshot was built from ([`Inputs::version`]: the
    /// catalog's own when there are no traffic rules).
    pub fn version(&self) -> u64 {
        self.resources.version
    }

    /// The resource of that type and name, if this snapshot has it.
    pub fn get(&self, resource_type: ResourceType, name: &str) -> Option<&NamedResource> {
        self.resources.get(resource_type, name)
    }

    /// The resource of that type and name as the client of `class` gets it.
    pub(crate) fn get_for(
        &self,
        resource_type: ResourceType,
        name: &str,
        class: &SourceClass,
    ) -> Option<&NamedResource> {
        self.resources.get_for(resource_type, name, class)
    }

    /// Whether the Envoys of `workload` (`None`: of no BOSH instance) get the resource of that
    /// type and name (see `Resources::owner`).
    pub(crate) fn is_for(
        &self,
        workload: Option<&WorkloadKey>,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        self.resources.is_for(workload, resource_type, name)
    }

    /// Every resource of that type, sorted by name.
    pub(crate) fn of_type(&self, resource_type: ResourceType) -> &[NamedResource] {
        self.resources.of_type(resource_type)
    }

    /// The names of that type added, changed or removed since the snapshot of version
    /// `since`: none since this snapshot itself; `None` when this snapshot does not directly
    /// follow that one.
    pub(crate) fn changed_since(
        &self,
        resource_type: ResourceType,
        since: u64,
    ) -> Option<&[String]> {
        // A stream diffed against this very snapshot that subscribes to a new name (Envoy
        // warming a new cluster or listener) then looks up that name alone, not every name it
        // has: at 5,000 streams that full diff was half of the server's CPU for a new service.
        if since == self.version() {
            return Some(&[]);
        }
        let (previous, changed) = self.previous.as_ref()?;
        (*previous == since).then(|| changed[position(resource_type)].as_slice())
    }

    /// `names == None` is a wildcard subscription (everything of that type); names the
    /// snapshot does not have are skipped. For a client of no BOSH instance, which satisfies
    /// no `sourceLabels` and gets no workload's own resources.
    pub fn select(
        &self,
        resource_type: ResourceType,
        names: Option<&BTreeSet<String>>,
    ) -> Selection<'_> {
        self.select_for(resource_type, names, &SourceClass::default(), None)
    }

    /// [`Snapshot::select`] for the client of `class` on an instance of `workload`.
    pub(crate) fn select_for(
        &self,
        resource_type: ResourceType,
        names: Option<&BTreeSet<String>>,
        class: &SourceClass,
        workload: Option<&WorkloadKey>,
    ) -> Selection<'_> {
        let is_for = |name: &str| self.is_for(workload, resource_type, name);
        match names {
            None if self.of_type(resource_type).iter().all(|r| is_for(&r.name)) => Selection {
                version: self.full_versions[position(resource_type)].clone(),
                resources: self.resources.of_type(resource_type).iter().collect(),
            },
            None => {
                let resources: Vec<&NamedResource> = self
                    .of_type(resource_type)
                    .iter()
                    .filter(|r| is_for(&r.name))
                    .collect();
                Selection {
                    version: set_version(resources.iter().copied()),
                    resources,
                }
            }
            Some(names) => {
                let resources: Vec<&NamedResource> = names
                    .iter()
                    .filter(|name| is_for(name))
                    .filter_map(|name| self.resources.get_for(resource_type, name, class))
                    .collect();
                Selection {
                    version: set_version(resources.iter().copied()),
                    resources,
                }
            }
        }
    }
}

/// Where that type is in [`ResourceType::PUSH_ORDER`], which arrays of one item per type follow.
pub(crate) fn position(resource_type: ResourceType) -> usize {
    ResourceType::PUSH_ORDER
        .iter()
        .position(|t| *t == resource_type)
        .expect("every type is in PUSH_ORDER")
}

/// Names present in only one of two name-sorted lists, or in both with different versions.
fn changed_names(before: &[NamedResource], after: &[NamedResource]) -> Vec<String> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let (mut b, mut a) = (before.iter().peekable(), after.iter().peekable());
    let mut changed = Vec::new();
    loop {
        let order = match (b.peek(), a.peek()) {
            (None, None) => return changed,
            (Some(_), None) => Less,
            (None, Some(_)) => Greater,
            (Some(x), Some(y)) => x.name.cmp(&y.name),
        };
        match order {
            Less => changed.push(b.next().expect("peeked").name.clone()),
            Greater => changed.push(a.next().expect("peeked").name.clone()),
            Equal => {
                let (x, y) = (b.next().expect("peeked"), a.next().expect("peeked"));
                if x.version != y.version {
                    changed.push(y.name.clone());
                }
            }
        }
    }
}

/// The names of the route configurations whose variants per client differ between two
/// builds (their configuration for clients that satisfy no selector is `changed_names`').
fn changed_variants<'a>(before: &'a Resources, after: &'a Resources) -> Vec<String> {
    let (before, after) = (before.route_variants(), after.route_variants());
    fn versions(variants: Option<&RouteVariants>) -> Vec<&str> {
        variants
            .into_iter()
            .flat_map(|v| v.resources())
            .map(|r| r.version.as_str())
            .collect()
    }
    before
        .keys()
        .chain(after.keys())
        .filter(|name| versions(before.get(*name)) != versions(after.get(*name)))
        .cloned()
        .collect()
}

/// The shared keys of name-sorted `resources`, reusing the previous snapshot's strings for
/// equal names and versions so that streams still holding those stay deduplicated.
fn shared_keys(resources: &[NamedResource], previous: Option<&[SharedKey]>) -> Vec<SharedKey> {
    let previous = previous.unwrap_or_default();
    resources
        .iter()
        .map(|r| {
            let before = previous
                .binary_search_by(|k| (*k.name).cmp(&r.name))
                .ok()
                .map(|i| &previous[i]);
            SharedKey {
                name: before.map_or_else(|| Arc::from(r.name.as_str()), |k| k.name.clone()),
                version: before
                    .filter(|k| *k.version == r.version)
                    .map_or_else(|| Arc::from(r.version.as_str()), |k| k.version.clone()),
            }
        })
        .collect()
}

/// Version 0 is the empty default catalog, whatever the traffic rules (see [`follow`] and
/// [`Inputs::version`]); any other version is built once.
fn should_publish(version: u64, published: Option<u64>) -> bool {
    version != 0 && published != Some(version)
}

fn set_version<'a>(resources: impl Iterator<Item = &'a NamedResource>) -> String {
    let parts: Vec<&[u8]> = resources
        .flat_map(|r| [r.name.as_bytes(), r.version.as_bytes()])
        .collect();
    content_version(&parts)
}

/// What the snapshots follow: the catalog, and the traffic model compiled from the rules.
/// A catalog alone (`From`) is a mesh without traffic rules.
pub struct Sources {
    pub catalog: watch::Receiver<Arc<Catalog>>,
    pub traffic: watch::Receiver<Arc<TrafficRules>>,
    /// The trust domain when workload identities are on (`Inputs::identity`).
    pub identity: Option<TrustDomain>,
    /// What Envoys report (`Inputs::telemetry`).
    pub telemetry: Telemetry,
}

impl From<watch::Receiver<Arc<Catalog>>> for Sources {
    fn from(catalog: watch::Receiver<Arc<Catalog>>) -> Self {
        // No sender: the one value, no rules, never changes.
        let (_, traffic) = watch::channel(Arc::new(TrafficRules::default()));
        Sources {
            catalog,
            traffic,
            identity: None,
            telemetry: Telemetry::OFF,
        }
    }
}

/// Follows the catalog and the traffic model and publishes one snapshot per version of the
/// two.
///
/// A catalog with version 0 (`Catalog::default()`, what the pilot holds before its first
/// successful director poll) is never published: serving it would wipe every reconnecting
/// Envoy's configuration after a control-plane restart. Streams wait for `Some`.
pub fn follow(sources: impl Into<Sources>) -> watch::Receiver<Option<Arc<Snapshot>>> {
    let Sources {
        mut catalog,
        mut traffic,
        identity,
        telemetry,
    } = sources.into();
    let (snapshots_tx, snapshots_rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut published: Option<Arc<Snapshot>> = None;
        let mut seq = 0;
        let mut traffic_followed = true;
        loop {
            let inputs_changed = Instant::now();
            let current_catalog = catalog.borrow_and_update().clone();
            let current_traffic = traffic.borrow_and_update().clone();
            let version = Inputs {
                catalog: &current_catalog,
                traffic: &current_traffic,
                identity: identity.as_ref(),
                telemetry: &telemetry,
            }
            .version();
            if should_publish(version, published.as_ref().map(|s| s.version())) {
                // Building is CPU work proportional to the estate: keep it off the reactor.
                let previous = published.clone();
                let identity = identity.clone();
                let telemetry = telemetry.clone();
                let built = tokio::task::spawn_blocking(move || {
                    let inputs = Inputs {
                        catalog: &current_catalog,
                        traffic: &current_traffic,
                        identity: identity.as_ref(),
                        telemetry: &telemetry,
                    };
                    Snapshot::following(inputs, previous.as_deref())
                })
                .await
                .expect("snapshot build does not panic");
                seq += 1;
                let built = Arc::new(Snapshot {
                    seq,
                    inputs_changed,
                    ..built
                });
                tracing::info!(version = built.version(), seq, "xDS snapshot built");
                let warned_before = published.as_ref().map(|p| p.resources.warnings());
                for warning in built.resources.warnings() {
                    if !warned_before.is_some_and(|before| before.contains(warning)) {
                        tracing::warn!("xDS: {warning}");
                    }
                }
                published = Some(built.clone());
                if snapshots_tx.send(Some(built)).is_err() {
                    return; // the server is gone
                }
            }
            tokio::select! {
                changed = catalog.changed() => if changed.is_err() {
                    // The catalog's producer is gone: keep serving the last snapshot.
                    return;
                },
                changed = traffic.changed(), if traffic_followed => if changed.is_err() {
                    // The traffic model's producer is gone: its last rules stay.
                    traffic_followed = false;
                },
            }
        }
    });
    snapshots_rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::{Endpoint, Protocol};
    use crate::catalog::testing::{self, endpoint, service};
    use crate::traffic::{
        Destination, Forward, HttpAction, HttpRoute, LoadBalancer, PortPolicies, ServiceRules,
        Subset, TrafficPolicy, WeightedDestination,
    };

    #[test]
    fn a_nack_names_the_resource_its_message_quotes_the_longest_name_first() {
        let snapshot = Snapshot::from_catalog(&catalog(1, true));
        let cluster = "outbound|80||j.g.d.boshy";
        assert!(
            snapshot.get(ResourceType::Cluster, cluster).is_some(),
            "{:?}",
            snapshot.resources.of_type(ResourceType::Cluster)
        );
        let rejected = |t, message| snapshot.rejected_resource(t, message);
        assert_eq!(
            rejected(
                ResourceType::Cluster,
                "Error adding/updating cluster(s) outbound|80||j.g.d.boshy: bad"
            ),
            Some(cluster)
        );
        assert_eq!(
            rejected(ResourceType::Route, "invalid perl operator: (?="),
            None
        );
    }

    #[test]
    fn a_nack_is_put_down_to_the_rule_configs_of_the_services_it_names_or_to_every_one() {
        let catalog = catalog(1, true);
        let configs = |names: &[&str]| ServiceRules {
            configs: names.iter().map(|n| n.to_string()).collect(),
            ..ServiceRules::default()
        };
        let traffic = TrafficRules {
            services: BTreeMap::from([
                ("j.g.d.boshy".to_string(), configs(&["a", "b"])),
                ("k.g.d.boshy".to_string(), configs(&["c"])),
            ]),
            scope_pins: Vec::new(),
            security: Default::default(),
        };
        let snapshot = Snapshot::build(Inputs {
            catalog: &catalog,
            traffic: &traffic,
            identity: None,
            telemetry: &Telemetry::OFF,
        });
        let behind = |message| {
            snapshot
                .rule_configs_behind(message)
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            behind("Error adding/updating cluster(s) outbound|80|v1|j.g.d.boshy: bad"),
            ["a", "b"]
        );
        assert_eq!(behind("invalid perl operator: (?="), ["a", "b", "c"]);
        assert_eq!(snapshot.rule_configs_of("j.g.d.boshy"), ["a", "b"]);
        assert!(snapshot.rule_configs_of("x.g.d.boshy").is_empty());
        assert!(Snapshot::from_catalog(&catalog)
            .rule_configs_behind("anything")
            .is_empty());
    }

    fn catalog(version: u64, healthy: bool) -> Catalog {
        testing::catalog(
            version,
            [service("d", "g", "j")
                .vip([169, 254, 255, 2])
                .port("http-80", 80, Protocol::Http)
                .port("http-81", 81, Protocol::Http)
                .endpoint(Endpoint {
                    healthy,
                    ..endpoint("10.0.0.1")
                })],
        )
    }

    #[test]
    fn a_selection_version_depends_on_the_selected_content_only() {
        let a = Snapshot::from_catalog(&catalog(1, true));
        let b = Snapshot::from_catalog(&catalog(2, false));
        let one: BTreeSet<String> = ["outbound|80||j.g.d.boshy".to_string()].into();
        let both: BTreeSet<String> = [
            "outbound|80||j.g.d.boshy".to_string(),
            "outbound|81||j.g.d.boshy".to_string(),
        ]
        .into();
        let eds = ResourceType::Endpoint;
        assert_eq!(a.select(eds, Some(&one)).resources.len(), 1);
        assert_ne!(
            a.select(eds, Some(&one)).version,
            a.select(eds, Some(&both)).version
        );
        assert_ne!(
            a.select(eds, Some(&one)).version,
            b.select(eds, Some(&one)).version
        );
        assert_eq!(
            a.select(eds, Some(&both)).version,
            a.select(eds, None).version,
            "asking for every name is the same set as the wildcard"
        );
        // Clusters do not depend on endpoint health.
        assert_eq!(
            a.select(ResourceType::Cluster, None).version,
            b.select(ResourceType::Cluster, None).version
        );
        let unknown: BTreeSet<String> = ["nope".to_string()].into();
        assert!(a.select(eds, Some(&unknown)).resources.is_empty());
    }

    #[test]
    fn a_snapshot_knows_what_changed_since_its_predecessor() {
        let a = Snapshot::from_catalog(&catalog(1, true));
        assert_eq!(a.changed_since(ResourceType::Endpoint, 0), None);
        assert_eq!(a.changed_since(ResourceType::Endpoint, 1), Some(&[][..]));
        let b = Snapshot::following(&catalog(2, false), Some(&a));
        let both = [
            "outbound|80||j.g.d.boshy".to_string(),
            "outbound|81||j.g.d.boshy".to_string(),
        ];
        assert_eq!(b.changed_since(ResourceType::Endpoint, 1), Some(&both[..]));
        assert_eq!(b.changed_since(ResourceType::Cluster, 1), Some(&[][..]));
        assert_eq!(b.changed_since(ResourceType::Endpoint, 7), None);

        let mut fewer = catalog(3, false);
        fewer.services[0].ports.pop();
        let c = Snapshot::following(&fewer, Some(&b));
        let removed = &both[1..];
        for t in [
            ResourceType::Cluster,
            ResourceType::Endpoint,
            ResourceType::Route,
        ] {
            assert_eq!(c.changed_since(t, 2), Some(removed), "{t:?}");
        }
        assert_eq!(
            c.changed_since(ResourceType::Listener, 2),
            Some(&["169.254.255.2_81".to_string()][..]),
            "only the removed port's listener"
        );
    }

    #[test]
    fn names_and_unchanged_versions_are_shared_with_the_previous_snapshot() {
        let a = Snapshot::from_catalog(&catalog(1, true));
        let b = Snapshot::following(&catalog(2, false), Some(&a));
        let name = "outbound|80||j.g.d.boshy";
        let key = |s: &Snapshot, t| s.shared_key(t, name).expect("resource exists").clone();
        let (eds_a, eds_b) = (
            key(&a, ResourceType::Endpoint),
            key(&b, ResourceType::Endpoint),
        );
        assert!(Arc::ptr_eq(&eds_a.name, &eds_b.name));
        assert_ne!(eds_a.version, eds_b.version, "endpoint health changed");
        let (cds_a, cds_b) = (
            key(&a, ResourceType::Cluster),
            key(&b, ResourceType::Cluster),
        );
        assert!(Arc::ptr_eq(&cds_a.version, &cds_b.version));
        assert_eq!(
            *cds_b.version,
            b.get(ResourceType::Cluster, name).unwrap().version
        );
        assert!(Arc::ptr_eq(
            &b.shared_name(ResourceType::Cluster, name),
            &cds_b.name
        ));
        assert_eq!(&*b.shared_name(ResourceType::Cluster, "absent"), "absent");
    }

    /// web and api, each with an http and a tcp port, two endpoints and rules: subsets v1 and
    /// v2, a weighted split between them on the http port. `v2_of_web` are the addresses of
    /// web's v2, `web_v1_weight` the weight of v1 in web's split and `web_lb` web's load
    /// balancer on port 80.
    fn with_rules(
        v2_of_web: &[&str],
        web_v1_weight: u32,
        web_lb: LoadBalancer,
    ) -> (Catalog, TrafficRules) {
        let service = |job: &str, vip: [u8; 4]| {
            service("d", "g", job)
                .vip(vip)
                .port("http", 80, Protocol::Http)
                .port("tcp", 8080, Protocol::Tcp)
                .endpoint(endpoint("10.0.0.1"))
                .endpoint(endpoint("10.0.0.2"))
        };
        let catalog = testing::catalog(
            1,
            [
                service("web", [169, 254, 255, 2]),
                service("api", [169, 254, 255, 3]),
            ],
        );
        let rules = |host: &str, v2: &[&str], v1_weight: u32, lb: LoadBalancer| {
            let subset = |addresses: &[&str]| Subset {
                endpoints: addresses.iter().map(|a| a.parse().unwrap()).collect(),
                dns_endpoints: Default::default(),
                policy: PortPolicies::default(),
            };
            let to = |subset: &str, weight| WeightedDestination {
                destination: Destination {
                    host: host.to_string(),
                    port: 80,
                    subset: Some(subset.to_string()),
                },
                weight,
            };
            let split = HttpRoute {
                name: "split".to_string(),
                matches: Vec::new(),
                action: HttpAction::Forward(Forward {
                    destinations: vec![to("v1", v1_weight), to("v2", 100 - v1_weight)],
                    ..Default::default()
                }),
                fault: None,
                headers: Default::default(),
            };
            ServiceRules {
                http_routes: BTreeMap::from([(80, vec![split])]),
                subsets: BTreeMap::from([
                    ("v1".to_string(), subset(&["10.0.0.1"])),
                    ("v2".to_string(), subset(v2)),
                ]),
                policy: PortPolicies {
                    all_ports: TrafficPolicy::default(),
                    by_port: BTreeMap::from([(
                        80,
                        TrafficPolicy {
                            load_balancer: Some(lb),
                            ..Default::default()
                        },
                    )]),
                },
                ..Default::default()
            }
        };
        let traffic = TrafficRules {
            services: BTreeMap::from([
                (
                    "web.g.d.boshy".to_string(),
                    rules("web.g.d.boshy", v2_of_web, web_v1_weight, web_lb),
                ),
                (
                    "api.g.d.boshy".to_string(),
                    rules("api.g.d.boshy", &["10.0.0.2"], 90, LoadBalancer::Random),
                ),
            ]),
            scope_pins: Vec::new(),
            security: Default::default(),
        };
        (catalog, traffic)
    }

    #[test]
    fn a_change_of_one_services_rules_changes_only_that_services_resources() {
        let snapshot = |(catalog, traffic): &(Catalog, TrafficRules), previous| {
            let inputs = Inputs {
                catalog,
                traffic,
                identity: None,
                telemetry: &Telemetry::OFF,
            };
            Snapshot::following(inputs, previous)
        };
        let before = snapshot(&with_rules(&["10.0.0.2"], 90, LoadBalancer::Random), None);
        // web: v2 gains an endpoint, the split moves, port 80 balances otherwise.
        let after = snapshot(
            &with_rules(&["10.0.0.1", "10.0.0.2"], 50, LoadBalancer::LeastRequest),
            Some(&before),
        );
        assert_ne!(
            after.version(),
            before.version(),
            "same catalog, other rules"
        );
        let changed = |t| after.changed_since(t, before.version()).expect("follows");
        assert_eq!(
            changed(ResourceType::Cluster),
            [
                "outbound|80|v1|web.g.d.boshy",
                "outbound|80|v2|web.g.d.boshy",
                "outbound|80||web.g.d.boshy",
            ],
            "port 80's clusters, whose load balancer changed"
        );
        assert_eq!(
            changed(ResourceType::Endpoint),
            [
                "outbound|8080|v2|web.g.d.boshy",
                "outbound|80|v2|web.g.d.boshy"
            ],
            "v2's endpoints on both ports"
        );
        assert_eq!(changed(ResourceType::Route), ["outbound|80||web.g.d.boshy"]);
        assert_eq!(changed(ResourceType::Listener), [] as [&str; 0]);
    }

    #[test]
    fn the_empty_default_and_already_published_versions_are_not_rebuilt() {
        assert!(!should_publish(0, None));
        assert!(!should_publish(0, Some(7)));
        assert!(!should_publish(7, Some(7)));
        assert!(should_publish(7, None));
        assert!(should_publish(8, Some(7)));
    }

    #[tokio::test]
    async fn follow_publishes_each_new_catalog_and_ends_with_it() {
        let (catalog_tx, catalog_rx) = watch::channel(Arc::new(Catalog::default()));
        let mut snapshots = follow(catalog_rx);

        catalog_tx.send(Arc::new(catalog(7, true))).unwrap();
        snapshots.changed().await.unwrap();
        let first = snapshots.borrow_and_update().clone().unwrap();
        assert_eq!(first.version(), 7);

        catalog_tx.send(Arc::new(catalog(8, false))).unwrap();
        snapshots.changed().await.unwrap();
        assert_eq!(snapshots.borrow_and_update().as_ref().unwrap().version(), 8);

        drop(catalog_tx);
        assert!(
            snapshots.changed().await.is_err(),
            "follower ends with the catalog"
        );
    }

    #[tokio::test]
    async fn follow_rebuilds_when_the_rules_change_and_keeps_them_when_their_producer_is_gone() {
        let (catalog, rules) = with_rules(&["10.0.0.2"], 90, LoadBalancer::Random);
        let (catalog_tx, catalog_rx) = watch::channel(Arc::new(catalog.clone()));
        let (traffic_tx, traffic_rx) = watch::channel(Arc::new(TrafficRules::default()));
        let mut snapshots = follow(Sources {
            catalog: catalog_rx,
            traffic: traffic_rx,
            identity: None,
            telemetry: Telemetry::OFF,
        });
        snapshots.changed().await.unwrap();
        let without = snapshots.borrow_and_update().clone().unwrap();
        assert_eq!(
            without.version(),
            catalog.version,
            "no rules: the catalog's version"
        );

        traffic_tx.send(Arc::new(rules.clone())).unwrap();
        snapshots.changed().await.unwrap();
        let with = snapshots.borrow_and_update().clone().unwrap();
        let route = "outbound|80||web.g.d.boshy";
        assert_ne!(with.version(), without.version());
        assert_ne!(
            with.get(ResourceType::Route, route).unwrap().version,
            without.get(ResourceType::Route, route).unwrap().version
        );

        drop(traffic_tx);
        let mut next = catalog.clone();
        next.version = 2;
        next.services.pop();
        catalog_tx.send(Arc::new(next.clone())).unwrap();
        snapshots.changed().await.unwrap();
        let last = snapshots.borrow_and_update().clone().unwrap();
        assert_eq!(
            last.version(),
            Inputs {
                catalog: &next,
                traffic: &rules,
                identity: None,
                telemetry: &Telemetry::OFF,
            }
            .version(),
            "built with the last rules"
        );
    }
}
