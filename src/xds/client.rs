//! Who is asking: the BOSH instance behind an ADS stream, from the node its Envoy announces
//! (`xds::bootstrap` writes it), and which of the traffic model's `sourceLabels` selectors
//! that instance satisfies. Pure.
//!
//! The node is what the Envoy says of itself, over a connection authenticated by the mesh's
//! shared client certificate: routing by it is routing, not access control (a client could
//! call the destination of another client's route anyway). Its labels are the director's, as
//! the catalog has them, not the node's: an Envoy names an instance, the catalog says what
//! that instance is.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;

use crate::catalog::labels::instance_labels;
use crate::catalog::model::{Catalog, InstanceRef, Labels};
use crate::rules::mesh::selects;
use crate::traffic::security::WorkloadKey;

/// The BOSH instance an Envoy runs on, as its node's metadata names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Client {
    deployment: String,
    instance_id: String,
    /// Its instance group: the workload whose inbound listener it gets (`xds::inbound`).
    workload: Arc<WorkloadKey>,
    /// The director's labels of the instance, what it has when it exposes no job: derived
    /// once per stream, not at every snapshot.
    instance_labels: Labels,
}

impl Client {
    fn new(
        deployment: &str,
        instance_group: &str,
        instance_id: &str,
        az: Option<&str>,
        index: Option<u32>,
    ) -> Client {
        Client {
            deployment: deployment.to_string(),
            instance_id: instance_id.to_string(),
            workload: Arc::new(WorkloadKey {
                deployment: deployment.to_string(),
                instance_group: instance_group.to_string(),
            }),
            instance_labels: instance_labels(deployment, instance_group, instance_id, az, index),
        }
    }

    /// The instance, by deployment and id.
    pub(crate) fn instance(&self) -> InstanceRef {
        InstanceRef {
            deployment: self.deployment.clone(),
            instance_id: self.instance_id.clone(),
        }
    }

    /// The instance group the instance belongs to (shared, so that a stream's views of the
    /// snapshots hold it by pointer).
    pub(crate) fn workload(&self) -> &Arc<WorkloadKey> {
        &self.workload
    }

    /// `None` for a node without the metadata of a BOSH instance (an Envoy not started by
    /// the bosh-envoy job): it satisfies no selector.
    pub(crate) fn from_node(node: &Node) -> Option<Client> {
        let field = |name: &str| node_field(node, name);
        Some(Client::new(
            &field("deployment")?,
            &field("instance_group")?,
            &field("instance_id")?,
            field("az").filter(|az| !az.is_empty()).as_deref(),
            field("index").and_then(|index| index.parse().ok()),
        ))
    }
}

/// A text or number field of the node's metadata (what `xds::bootstrap` writes there).
pub(crate) fn node_field(node: &Node, name: &str) -> Option<String> {
    match node.metadata.as_ref()?.fields.get(name)?.kind.as_ref()? {
        Kind::StringValue(value) => Some(value.clone()),
        Kind::NumberValue(number) => Some(number.to_string()),
        _ => None,
    }
}

/// The distinct `sourceLabels` selectors of one traffic model, numbered, and the labels of
/// the mesh's instances to judge clients by. Built with each snapshot that has selectors.
#[derive(Debug, Default)]
pub(crate) struct SourceSelectors {
    selectors: Vec<Labels>,
    exposed: ExposedLabels,
}

/// Deployment → instance id → the labels of each job the instance exposes (nested, so that
/// each stream looks its instance up at each snapshot without allocating): what a client is
/// judged by, for `sourceLabels` and for the Sidecars that pin services into scopes.
#[derive(Debug, Default)]
pub(crate) struct ExposedLabels(HashMap<String, HashMap<String, Vec<Labels>>>);

impl ExposedLabels {
    pub(crate) fn new(catalog: &Catalog) -> Self {
        let mut exposed: HashMap<String, HashMap<String, Vec<Labels>>> = HashMap::new();
        let jobs = catalog.services.iter().filter(|s| s.is_job());
        for service in jobs {
            let instances = exposed.entry(service.key.deployment.clone()).or_default();
            for endpoint in &service.endpoints {
                instances
                    .entry(endpoint.instance.clone())
                    .or_default()
                    .push(endpoint.labels.clone());
            }
        }
        ExposedLabels(exposed)
    }

    /// The label sets `client` is judged by: those of each job it exposes, or, for an
    /// instance that exposes none, its instance's own labels.
    pub(crate) fn of<'a>(&'a self, client: &'a Client) -> &'a [Labels] {
        self.0
            .get(&client.deployment)
            .and_then(|instances| instances.get(&client.instance_id))
            .map_or(std::slice::from_ref(&client.instance_labels), Vec::as_slice)
    }
}

/// The selectors one client satisfies: indexes into [`SourceSelectors`], ascending. The
/// default satisfies none, which is every client when the rules have no `sourceLabels`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SourceClass(pub(super) Vec<usize>);

impl SourceClass {
    pub(crate) fn satisfies(&self, selector: usize) -> bool {
        self.0.binary_search(&selector).is_ok()
    }
}

impl SourceSelectors {
    /// `selectors` as numbered by `xds::resources`, judged against the instances of
    /// `catalog`'s job services.
    pub(crate) fn new(selectors: Vec<Labels>, catalog: &Catalog) -> Self {
        let exposed = if selectors.is_empty() {
            ExposedLabels::default()
        } else {
            ExposedLabels::new(catalog)
        };
        SourceSelectors { selectors, exposed }
    }

    /// The selectors `client` satisfies: those that one job it exposes has every label of,
    /// or, for an instance that exposes none, its instance's own labels have.
    pub(crate) fn class_of(&self, client: Option<&Client>) -> SourceClass {
        let Some(client) = client.filter(|_| !self.selectors.is_empty()) else {
            return SourceClass::default();
        };
        let label_sets = self.exposed.of(client);
        SourceClass(
            self.selectors
                .iter()
                .enumerate()
                .filter(|(_, selector)| label_sets.iter().any(|labels| selects(selector, labels)))
                .map(|(at, _)| at)
                .collect(),
        )
    }
}

/// The client of a one-service mesh that routes by `sourceLabels`, for the stream tests.
#[cfg(test)]
pub(crate) mod testing {
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::google::protobuf::{Any, Struct, Value};
    use prost::Message;

    use super::*;
    use crate::catalog::model::{Endpoint, Protocol};
    use crate::catalog::testing::{self, endpoint, labels, service};
    use crate::traffic::testing::to;
    use crate::traffic::{Forward, HttpAction, HttpMatch, HttpRoute, ServiceRules, TrafficRules};

    /// The route configuration of the one service of [`source_routed`].
    pub(in crate::xds) const ROUTES: &str = "outbound|80||a.g.d.boshy";

    /// A node with `fields` of metadata.
    pub(in crate::xds) fn node_with(fields: &[(&str, Kind)]) -> Node {
        let value = |kind: &Kind| Value {
            kind: Some(kind.clone()),
        };
        Node {
            id: "sidecar~10.0.0.1~g/client~d".to_string(),
            metadata: Some(Struct {
                fields: fields
                    .iter()
                    .map(|(name, kind)| (name.to_string(), value(kind)))
                    .collect(),
            }),
            ..Default::default()
        }
    }

    /// The node of the Envoy on instance `client` of `g` of `d`, the one instance of
    /// [`source_routed`]'s service.
    pub(crate) fn node() -> Node {
        let text = |value: &str| Kind::StringValue(value.to_string());
        node_with(&[
            ("deployment", text("d")),
            ("instance_group", text("g")),
            ("instance_id", text("client")),
        ])
    }

    /// A mesh of one http service, `a.g.d.boshy:80`, whose one instance `client` (the
    /// client of [`node`]) has the label `app: <app>`, and whose routes send the clients
    /// labelled `app: productpage` through the route `from-productpage`.
    pub(in crate::xds) fn source_routed(version: u64, app: &str) -> (Catalog, TrafficRules) {
        let instance = Endpoint {
            instance: "client".into(),
            labels: labels([("app", app)]),
            ..endpoint("10.0.0.1")
        };
        let catalog = testing::catalog(
            version,
            [service("d", "g", "a")
                .port("http", 80, Protocol::Http)
                .endpoint(instance)],
        );
        let route = HttpRoute {
            name: "from-productpage".into(),
            matches: vec![HttpMatch {
                source_labels: labels([("app", "productpage")]),
                ..Default::default()
            }],
            action: HttpAction::Forward(Forward {
                destinations: vec![to("a.g.d.boshy", 80, None, 1)],
                ..Default::default()
            }),
            fault: None,
            headers: Default::default(),
        };
        let rules = ServiceRules {
            http_routes: [(80, vec![route])].into(),
            ..Default::default()
        };
        let traffic = TrafficRules {
            services: [("a.g.d.boshy".to_string(), rules)].into(),
            scope_pins: Vec::new(),
            security: Default::default(),
        };
        (catalog, traffic)
    }

    /// The inbound listeners of [`identified_mesh`]: [`node`]'s group's and another's.
    pub(in crate::xds) const OWN_INBOUND: &str = "inbound|d|g";
    pub(in crate::xds) const OTHER_INBOUND: &str = "inbound|d|h";

    /// A mesh of two instance groups of `d` with one http service each, `a.g.d.boshy` (`g` is
    /// [`node`]'s group) and `b.h.d.boshy`, built with workload identities on.
    pub(in crate::xds) fn identified_mesh() -> crate::xds::cache::Snapshot {
        let catalog = testing::catalog(
            1,
            [("g", "a", 2), ("h", "b", 3)].map(|(group, job, host)| {
                service("d", group, job)
                    .vip([169, 254, 255, host])
                    .port("http", 80, Protocol::Http)
                    .endpoint(endpoint(&format!("10.0.0.{host}")))
            }),
        );
        let trust_domain = crate::identity::spiffe::TrustDomain::default();
        crate::xds::cache::Snapshot::build(crate::xds::resources::Inputs {
            catalog: &catalog,
            traffic: &TrafficRules::default(),
            identity: Some(&trust_domain),
            telemetry: &crate::xds::telemetry::Telemetry::OFF,
        })
    }

    /// The names of the routes of an encoded route configuration, in order.
    pub(in crate::xds) fn route_names(resource: &Any) -> Vec<String> {
        let config = RouteConfiguration::decode(resource.value.as_slice()).expect("routes");
        config.virtual_hosts[0]
            .routes
            .iter()
            .map(|route| route.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::node_with;
    use super::*;
    use crate::catalog::model::Endpoint;
    use crate::catalog::testing::{self, endpoint, labels, service};

    fn text(value: &str) -> Kind {
        Kind::StringValue(value.to_string())
    }

    #[test]
    fn a_client_is_the_instance_its_nodes_metadata_names() {
        let client = Client::from_node(&node_with(&[
            ("deployment", text("shop")),
            ("instance_group", text("web")),
            ("instance_id", text("abc")),
            ("index", Kind::NumberValue(2.0)),
            ("az", text("")),
        ]))
        .expect("a BOSH node");
        assert_eq!(client, Client::new("shop", "web", "abc", None, Some(2)));
        assert_eq!(
            **client.workload(),
            WorkloadKey {
                deployment: "shop".into(),
                instance_group: "web".into(),
            }
        );
        assert_eq!(
            client.instance_labels,
            labels([
                ("bosh.io/deployment", "shop"),
                ("bosh.io/instance-group", "web"),
                ("bosh.io/id", "abc"),
                ("bosh.io/index", "2"),
            ]),
            "an empty AZ is none"
        );
        let without_metadata = Node {
            id: "sidecar~10.0.0.9~web/abc~shop".to_string(),
            ..Default::default()
        };
        assert_eq!(Client::from_node(&without_metadata), None);
        assert_eq!(
            Client::from_node(&node_with(&[("deployment", text("shop"))])),
            None
        );
    }

    #[test]
    fn a_client_satisfies_the_selectors_of_one_exposed_job_or_of_its_instance() {
        let on_instance_2 = |pairs| Endpoint {
            instance: "inst-2".into(),
            labels: labels(pairs),
            ..endpoint("10.0.0.2")
        };
        let catalog = testing::catalog(
            1,
            [
                service("shop", "web", "reviews").endpoint(on_instance_2([
                    ("bosh.io/deployment", "shop"),
                    ("version", "v2"),
                ])),
                service("shop", "web", "cart").endpoint(on_instance_2([
                    ("bosh.io/deployment", "shop"),
                    ("app", "cart"),
                ])),
            ],
        );
        let selectors = SourceSelectors::new(
            vec![
                labels([("version", "v2")]),
                labels([("version", "v2"), ("app", "cart")]),
                labels([("bosh.io/instance-group", "web")]),
                labels([("app", "cart")]),
            ],
            &catalog,
        );
        let client = |deployment: &str, id: &str| Client::new(deployment, "web", id, None, None);
        // Each job's labels alone: no selector mixes labels of two jobs.
        assert_eq!(
            selectors.class_of(Some(&client("shop", "inst-2"))),
            SourceClass(vec![0, 3])
        );
        // An instance exposing nothing has the director's labels of its instance.
        assert_eq!(
            selectors.class_of(Some(&client("shop", "inst-9"))),
            SourceClass(vec![2])
        );
        // The instance id is the director's within a deployment.
        assert_eq!(
            selectors.class_of(Some(&client("other", "inst-2"))),
            SourceClass(vec![2])
        );
        assert_eq!(selectors.class_of(None), SourceClass::default());
        let none = SourceSelectors::new(Vec::new(), &catalog);
        assert_eq!(
            none.class_of(Some(&client("shop", "inst-2"))),
            SourceClass::default()
        );
    }
}
