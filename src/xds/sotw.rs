//! The state of one state-of-the-world ADS stream, free of I/O so it can be unit-tested
//! (`delta` is its incremental sibling; both report a request as a [`RequestKind`]).
//!
//! Per type URL we remember what Envoy subscribed to, the version and nonce we last sent,
//! and whether that response still awaits Envoy's ACK or NACK. The rules:
//! - a request whose `response_nonce` is not the last nonce we sent for that type is stale
//!   (Envoy answered an older response; a newer request follows) and is ignored;
//! - a request answering our last nonce is an ACK, or a NACK when `error_detail` is set;
//! - we send a type only when the selection for the current subscription has a version
//!   other than the one Envoy has or was last sent: a NACKed version is therefore not sent
//!   again (Envoy keeps its last good config), while a newer catalog goes out normally;
//! - on a new snapshot we push, in `ResourceType::PUSH_ORDER`, only the subscribed types
//!   that are not waiting for an ACK; the ACK then triggers any further push.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::cache::{Selection, Snapshot};
use super::client::Client;
use super::resources::ResourceType;
use super::stream_config::TypeConfig;

/// Identifies this control plane in every response (shown in Envoy's config dump).
pub(super) const CONTROL_PLANE_ID: &str = "bosh-pilot";

/// What a request meant; the caller logs and counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// The first request for a type on this stream (or one without a nonce).
    Subscribe,
    Ack {
        version: String,
    },
    /// Envoy rejected `rejected_version`; it keeps running `kept_version`.
    Nack {
        rejected_version: String,
        kept_version: String,
        message: String,
    },
    /// Answers a response that has since been superseded.
    Stale,
    UnknownType,
}

#[derive(Debug, Default)]
struct Subscription {
    /// `None`: wildcard (listeners, clusters). Shared with `sent` and `acked`.
    names: Option<Arc<BTreeSet<String>>>,
    /// The version Envoy has or was last sent, whichever is newer; "" for nothing yet.
    version: String,
    /// Nonce of our last response; "" before we sent one.
    nonce: String,
    awaiting_reply: bool,
    /// What our last response was selected from, until Envoy answers it.
    sent: Option<Selected>,
    /// The `version_info` Envoy last ACKed (or had when it subscribed), and what the response
    /// it ACKed was selected from.
    acked_version: String,
    acked: Option<Selected>,
}

/// What a response was selected from: the snapshot, shared by every stream, and the names
/// subscribed then; the selection is taken again when asked for. Two pointers, where the
/// (name, version) of each resource was 32 B per resource per stream, twice (bench/notes.md).
#[derive(Debug, Clone)]
struct Selected {
    snapshot: Arc<Snapshot>,
    names: Option<Arc<BTreeSet<String>>>,
}

#[derive(Debug, Default)]
pub(crate) struct SotwStreamState {
    subscriptions: BTreeMap<ResourceType, Subscription>,
    responses_sent: u64,
    /// The BOSH instance of the Envoy, from the first request's node: which route
    /// configurations it gets where routes depend on `sourceLabels`.
    client: Option<Client>,
}

impl SotwStreamState {
    /// Handles one request against the current snapshot (`None` before the first catalog:
    /// the subscription is recorded and served once a snapshot exists).
    pub(crate) fn on_request(
        &mut self,
        request: &DiscoveryRequest,
        snapshot: Option<&Arc<Snapshot>>,
    ) -> (RequestKind, Option<DiscoveryResponse>) {
        let Some(resource_type) = ResourceType::from_type_url(&request.type_url) else {
            return (RequestKind::UnknownType, None);
        };
        if self.client.is_none() {
            self.client = request.node.as_ref().and_then(Client::from_node);
        }
        let subscription = self.subscriptions.entry(resource_type).or_default();
        let kind = if request.response_nonce.is_empty() {
            // A fresh subscription, possibly from an Envoy reconnecting with config it
            // already has: remember its version so that an unchanged set is not re-sent.
            subscription.version = request.version_info.clone();
            subscription.acked_version = request.version_info.clone();
            subscription.acked = None;
            subscription.awaiting_reply = false;
            RequestKind::Subscribe
        } else if request.response_nonce != subscription.nonce {
            return (RequestKind::Stale, None);
        } else {
            subscription.awaiting_reply = false;
            let sent = subscription.sent.take();
            match &request.error_detail {
                Some(error) => RequestKind::Nack {
                    rejected_version: subscription.version.clone(),
                    kept_version: request.version_info.clone(),
                    message: error.message.clone(),
                },
                None => {
                    subscription.acked_version = request.version_info.clone();
                    subscription.acked = sent;
                    RequestKind::Ack {
                        version: request.version_info.clone(),
                    }
                }
            }
        };
        subscription.names = (!resource_type.is_wildcard())
            .then(|| Arc::new(request.resource_names.iter().cloned().collect()));
        let response =
            snapshot.and_then(|snapshot| self.respond_if_changed(resource_type, snapshot));
        (kind, response)
    }

    /// Responses to push after the snapshot changed, in push order.
    pub(crate) fn on_snapshot(&mut self, snapshot: &Arc<Snapshot>) -> Vec<DiscoveryResponse> {
        let ready: Vec<ResourceType> = ResourceType::PUSH_ORDER
            .into_iter()
            .filter(|t| self.subscriptions.get(t).is_some_and(|s| !s.awaiting_reply))
            .collect();
        ready
            .into_iter()
            .filter_map(|t| self.respond_if_changed(t, snapshot))
            .collect()
    }

    /// Per subscribed type, what the stream would send of `snapshot` and what Envoy ACKed.
    pub(crate) fn config<'s>(&self, snapshot: &'s Snapshot) -> Vec<TypeConfig<'s>> {
        let class = snapshot.source_class(self.client.as_ref());
        let workload = self.client.as_ref().map(|client| &**client.workload());
        self.subscriptions
            .iter()
            .map(|(&resource_type, subscription)| {
                let selection = snapshot.select_for(
                    resource_type,
                    subscription.names.as_deref(),
                    &class,
                    workload,
                );
                // Equal set versions are equal (name, version) sets: an Envoy that
                // reconnected with what is served now has it, though it was never sent here.
                let versions = |selection: &Selection| {
                    selection
                        .resources
                        .iter()
                        .map(|r| (r.name.clone(), r.version.clone()))
                        .collect()
                };
                let acked = match &subscription.acked {
                    _ if subscription.acked_version == selection.version => versions(&selection),
                    Some(Selected { snapshot, names }) => versions(&snapshot.select_for(
                        resource_type,
                        names.as_deref(),
                        &snapshot.source_class(self.client.as_ref()),
                        workload,
                    )),
                    None => BTreeMap::new(),
                };
                TypeConfig {
                    resource_type,
                    wanted: Some(selection.resources),
                    acked,
                }
            })
            .collect()
    }

    fn respond_if_changed(
        &mut self,
        resource_type: ResourceType,
        snapshot: &Arc<Snapshot>,
    ) -> Option<DiscoveryResponse> {
        let subscription = self.subscriptions.get_mut(&resource_type)?;
        let class = snapshot.source_class(self.client.as_ref());
        let workload = self.client.as_ref().map(|client| &**client.workload());
        let selection = snapshot.select_for(
            resource_type,
            subscription.names.as_deref(),
            &class,
            workload,
        );
        if selection.version == subscription.version {
            return None;
        }
        self.responses_sent += 1;
        let nonce = self.responses_sent.to_string();
        subscription.version = selection.version.clone();
        subscription.nonce = nonce.clone();
        subscription.awaiting_reply = true;
        subscription.sent = Some(Selected {
            snapshot: snapshot.clone(),
            names: subscription.names.clone(),
        });
        Some(DiscoveryResponse {
            version_info: selection.version,
            resources: selection
                .resources
                .into_iter()
                .map(|r| r.resource.clone())
                .collect(),
            type_url: resource_type.type_url().to_string(),
            nonce,
            control_plane: Some(ControlPlane {
                identifier: CONTROL_PLANE_ID.to_string(),
            }),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::{Endpoint, Protocol};
    use crate::catalog::testing::{self, endpoint, service};
    use envoy_types::pb::google::rpc::Status;

    const CDS: ResourceType = ResourceType::Cluster;
    const EDS: ResourceType = ResourceType::Endpoint;
    const LDS: ResourceType = ResourceType::Listener;
    const RDS: ResourceType = ResourceType::Route;

    /// One http service per name in `jobs`, each with one endpoint per `healthy` entry.
    fn snapshot(version: u64, jobs: &[&str], healthy: &[bool]) -> Arc<Snapshot> {
        let services = jobs.iter().zip(2u8..).map(|(job, host)| {
            healthy.iter().zip(1u8..).fold(
                service("d", "g", job)
                    .vip([169, 254, 255, host])
                    .port("http", 80, Protocol::Http),
                |service, (healthy, n)| {
                    service.endpoint(Endpoint {
                        healthy: *healthy,
                        ..endpoint(&format!("10.0.0.{n}"))
                    })
                },
            )
        });
        Arc::new(Snapshot::from_catalog(&testing::catalog(version, services)))
    }

    fn request(t: ResourceType, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: t.type_url().into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn nack(t: ResourceType, kept: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: "bad listener".into(),
                ..Default::default()
            }),
            ..request(t, &[], kept, nonce)
        }
    }

    fn resource_names(response: &DiscoveryResponse) -> Vec<String> {
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        use prost::Message;
        response
            .resources
            .iter()
            .map(|any| {
                ClusterLoadAssignment::decode(any.value.as_slice())
                    .unwrap()
                    .cluster_name
            })
            .collect()
    }

    const A: &str = "outbound|80||a.g.d.boshy";
    const B: &str = "outbound|80||b.g.d.boshy";

    #[test]
    fn first_request_is_answered_and_its_ack_sends_nothing_more() {
        let snap = snapshot(1, &["a"], &[true]);
        let mut state = SotwStreamState::default();
        let (kind, response) = state.on_request(&request(CDS, &[], "", ""), Some(&snap));
        assert_eq!(kind, RequestKind::Subscribe);
        let response = response.expect("initial response");
        assert_eq!(response.type_url, CDS.type_url());
        assert_eq!(response.resources.len(), 1);
        assert!(!response.nonce.is_empty());

        let ack = request(CDS, &[], &response.version_info, &response.nonce);
        let (kind, again) = state.on_request(&ack, Some(&snap));
        assert_eq!(
            kind,
            RequestKind::Ack {
                version: response.version_info.clone()
            }
        );
        assert!(again.is_none());
        assert!(
            state.on_snapshot(&snap).is_empty(),
            "same snapshot, nothing to push"
        );
    }

    #[test]
    fn a_nacked_version_is_not_resent_but_a_newer_one_is() {
        let v1 = snapshot(1, &["a"], &[true]);
        let mut state = SotwStreamState::default();
        let (_, first) = state.on_request(&request(LDS, &[], "", ""), Some(&v1));
        let first = first.unwrap();
        state.on_request(
            &request(LDS, &[], &first.version_info, &first.nonce),
            Some(&v1),
        );

        let v2 = snapshot(2, &["a", "b"], &[true]);
        let pushed = state.on_snapshot(&v2);
        assert_eq!(pushed.len(), 1);
        let (kind, resend) =
            state.on_request(&nack(LDS, &first.version_info, &pushed[0].nonce), Some(&v2));
        assert_eq!(
            kind,
            RequestKind::Nack {
                rejected_version: pushed[0].version_info.clone(),
                kept_version: first.version_info.clone(),
                message: "bad listener".into()
            }
        );
        assert!(resend.is_none(), "the rejected version is not sent again");
        assert!(state.on_snapshot(&v2).is_empty());

        let v3 = snapshot(3, &["a", "c"], &[true]);
        let pushed = state.on_snapshot(&v3);
        assert_eq!(pushed.len(), 1, "a newer catalog goes out after a NACK");
        assert_ne!(pushed[0].version_info, first.version_info);
    }

    #[test]
    fn the_config_says_what_would_be_sent_and_what_envoy_acked() {
        let v1 = snapshot(1, &["a", "b"], &[true]);
        let mut state = SotwStreamState::default();
        let keys = |state: &SotwStreamState, snapshot: &Snapshot| {
            let [config] = &state.config(snapshot)[..] else {
                panic!("one type")
            };
            let wanted: Vec<(String, String)> = config
                .wanted
                .iter()
                .flatten()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect();
            (wanted, config.acked.clone().into_iter().collect::<Vec<_>>())
        };
        let (_, first) = state.on_request(&request(EDS, &[A, B], "", ""), Some(&v1));
        let first = first.unwrap();
        assert_eq!(keys(&state, &v1).1, [], "sent, not yet accepted");
        state.on_request(
            &request(EDS, &[A, B], &first.version_info, &first.nonce),
            Some(&v1),
        );
        let (wanted, acked) = keys(&state, &v1);
        assert_eq!(wanted, acked);

        let v2 = snapshot(2, &["a", "b"], &[true, true]);
        let [pushed] = state.on_snapshot(&v2).try_into().unwrap();
        let (wanted, still) = keys(&state, &v2);
        assert_eq!(still, acked, "not answered yet");
        assert_ne!(wanted, acked);
        state.on_request(&nack(EDS, &first.version_info, &pushed.nonce), Some(&v2));
        assert_eq!(keys(&state, &v2).1, acked, "rejected: it runs what it had");

        // An Envoy that reconnects with what is served now has it.
        let mut reconnected = SotwStreamState::default();
        reconnected.on_request(&request(EDS, &[A, B], &pushed.version_info, ""), Some(&v2));
        let (wanted, acked) = keys(&reconnected, &v2);
        assert_eq!(wanted, acked);
    }

    #[test]
    fn stale_nonces_are_ignored_and_pushes_wait_for_the_ack() {
        let v1 = snapshot(1, &["a"], &[true]);
        let mut state = SotwStreamState::default();
        let (_, first) = state.on_request(&request(EDS, &[A], "", ""), Some(&v1));
        let first = first.unwrap();

        // Not yet ACKed: a new snapshot does not push over the pending response.
        let v2 = snapshot(2, &["a"], &[true, true]);
        assert!(state.on_snapshot(&v2).is_empty());
        // The ACK of the pending response releases the newer content.
        let (kind, second) = state.on_request(
            &request(EDS, &[A], &first.version_info, &first.nonce),
            Some(&v2),
        );
        assert!(matches!(kind, RequestKind::Ack { .. }));
        let second = second.expect("v2 endpoints pushed after the ACK");
        assert_ne!(second.version_info, first.version_info);

        // Envoy answering the older response again (or a NACK of it) is stale.
        let (kind, response) = state.on_request(&nack(EDS, "", &first.nonce), Some(&v2));
        assert_eq!(kind, RequestKind::Stale);
        assert!(response.is_none());
    }

    #[test]
    fn endpoints_and_routes_are_sent_for_the_requested_names_only() {
        let snap = snapshot(1, &["a", "b"], &[true]);
        let mut state = SotwStreamState::default();
        let (_, first) = state.on_request(&request(EDS, &[A], "", ""), Some(&snap));
        let first = first.unwrap();
        assert_eq!(resource_names(&first), [A]);

        // Envoy learns of cluster B and widens its subscription in the ACK.
        let (_, second) = state.on_request(
            &request(EDS, &[A, B], &first.version_info, &first.nonce),
            Some(&snap),
        );
        assert_eq!(resource_names(&second.unwrap()), [A, B]);

        let mut routes = SotwStreamState::default();
        let (_, response) = routes.on_request(&request(RDS, &[B], "", ""), Some(&snap));
        assert_eq!(response.unwrap().resources.len(), 1);
    }

    #[test]
    fn pushes_follow_cluster_endpoint_listener_route_order_for_subscribed_types_only() {
        let v1 = snapshot(1, &["a"], &[true]);
        let mut state = SotwStreamState::default();
        for t in [LDS, RDS, CDS] {
            let names: &[&str] = if t == RDS { &[A] } else { &[] };
            let (_, response) = state.on_request(&request(t, names, "", ""), Some(&v1));
            let response = response.unwrap();
            state.on_request(
                &request(t, names, &response.version_info, &response.nonce),
                Some(&v1),
            );
        }
        let v2 = snapshot(2, &["a", "b"], &[false]);
        let order: Vec<String> = state
            .on_snapshot(&v2)
            .into_iter()
            .map(|r| r.type_url)
            .collect();
        // RDS for A is unchanged; EDS was never subscribed.
        assert_eq!(order, [CDS.type_url(), LDS.type_url()]);
    }

    #[test]
    fn a_reconnecting_envoy_that_is_up_to_date_gets_nothing_resent() {
        let snap = snapshot(1, &["a"], &[true]);
        let mut first_stream = SotwStreamState::default();
        let (_, response) = first_stream.on_request(&request(CDS, &[], "", ""), Some(&snap));
        let version = response.unwrap().version_info;

        let mut reconnected = SotwStreamState::default();
        let (kind, response) =
            reconnected.on_request(&request(CDS, &[], &version, ""), Some(&snap));
        assert_eq!(kind, RequestKind::Subscribe);
        assert!(response.is_none());
    }

    #[test]
    fn requests_before_the_first_snapshot_are_served_when_it_arrives() {
        let mut state = SotwStreamState::default();
        let (kind, response) = state.on_request(&request(CDS, &[], "", ""), None);
        assert_eq!(kind, RequestKind::Subscribe);
        assert!(response.is_none());
        let pushed = state.on_snapshot(&snapshot(1, &["a"], &[true]));
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].type_url, CDS.type_url());
    }

    #[test]
    fn a_client_gets_the_routes_of_its_labels_and_new_ones_when_its_labels_change() {
        use crate::xds::client::testing::{node, route_names, source_routed, ROUTES};
        use crate::xds::resources::Inputs;
        let built = |version, app| {
            let (catalog, traffic) = source_routed(version, app);
            Arc::new(Snapshot::build(Inputs {
                catalog: &catalog,
                traffic: &traffic,
                identity: None,
                telemetry: &crate::xds::telemetry::Telemetry::OFF,
            }))
        };
        let sent = |response: &DiscoveryResponse| {
            let [resource] = &response.resources[..] else {
                panic!("one route configuration: {response:?}")
            };
            route_names(resource)
        };
        let productpage = built(1, "productpage");
        let mut client = SotwStreamState::default();
        let first = DiscoveryRequest {
            node: Some(node()),
            ..request(RDS, &[ROUTES], "", "")
        };
        let (_, response) = client.on_request(&first, Some(&productpage));
        let response = response.expect("the routes");
        assert_eq!(sent(&response), ["from-productpage", ""]);
        let mut anonymous = SotwStreamState::default();
        let (_, theirs) =
            anonymous.on_request(&request(RDS, &[ROUTES], "", ""), Some(&productpage));
        assert_eq!(sent(&theirs.expect("the routes")), [""]);
        let acked = request(RDS, &[ROUTES], &response.version_info, &response.nonce);
        client.on_request(&acked, Some(&productpage));

        let reviews = built(2, "reviews");
        let [pushed] = &client.on_snapshot(&reviews)[..] else {
            panic!("one push")
        };
        assert_eq!(sent(pushed), [""]);
        assert_ne!(pushed.version_info, response.version_info);
    }

    #[test]
    fn an_envoy_gets_its_own_groups_inbound_listener_alone() {
        use crate::xds::client::testing::{identified_mesh, node, OTHER_INBOUND, OWN_INBOUND};
        use envoy_types::pb::envoy::config::listener::v3::Listener;
        use prost::Message;
        let mesh = Arc::new(identified_mesh());
        let listeners = |node| {
            let mut state = SotwStreamState::default();
            let first = DiscoveryRequest {
                node,
                ..request(LDS, &[], "", "")
            };
            let (_, response) = state.on_request(&first, Some(&mesh));
            let response = response.expect("listeners");
            let names: Vec<String> = response
                .resources
                .iter()
                .map(|any| Listener::decode(any.value.as_slice()).unwrap().name)
                .collect();
            let (_, more) = state.on_request(
                &request(LDS, &[], &response.version_info, &response.nonce),
                Some(&mesh),
            );
            assert!(
                more.is_none(),
                "the ACK of its own selection sends nothing more"
            );
            (names, response.version_info)
        };
        let (own, own_version) = listeners(Some(node()));
        assert_eq!(
            own,
            [
                "169.254.255.2_80",
                "169.254.255.3_80",
                OWN_INBOUND,
                "outbound"
            ]
        );
        assert!(!own.iter().any(|n| n == OTHER_INBOUND));
        let (none, none_version) = listeners(None);
        assert_eq!(none, ["169.254.255.2_80", "169.254.255.3_80", "outbound"]);
        assert_ne!(
            own_version, none_version,
            "each selection has its own version"
        );
    }

    #[test]
    fn unknown_types_are_reported_and_not_answered() {
        let mut state = SotwStreamState::default();
        let unknown = DiscoveryRequest {
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into(),
            ..Default::default()
        };
        let snap = snapshot(1, &["a"], &[true]);
        assert_eq!(
            state.on_request(&unknown, Some(&snap)),
            (RequestKind::UnknownType, None)
        );
    }
}
