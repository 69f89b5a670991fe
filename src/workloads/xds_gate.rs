//! The xDS port's hold on joined VMs (docs/workloads.md): a stream presenting a joined VM's
//! certificate is served only while its registration is in the store, from the
//! registration's address, to the Envoy `boshy join` configured for it (node id and
//! metadata as `join::render` writes them); it is ended with `PERMISSION_DENIED` the moment
//! the registration is gone (the VM left, an operator removed it, or it was deregistered
//! after its grace period), on whichever pilot learns of it. BOSH VMs' certificates are not
//! held to anything. The decisions ([`admit`], [`check_node`]) are pure; [`XdsGate`] follows
//! the store's state for the xDS server.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::Node;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tonic::Status;

use super::identity::{Peer, WorkloadIdentity};
use super::state::WorkloadState;
use crate::xds::client::node_field;
use crate::xds::server::{StreamGate, StreamPass};

/// Why a joined VM's stream is refused or ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The store was not read yet: try again shortly.
    NotReady,
    /// The registration is not (or no longer) in the store.
    Gone(WorkloadIdentity),
    /// The connection comes from another address than the registration's.
    OtherAddress {
        identity: WorkloadIdentity,
        registered: IpAddr,
        from: Option<IpAddr>,
    },
    /// The Envoy announced another node than the registration's.
    OtherNode {
        identity: WorkloadIdentity,
        expected: String,
        announced: String,
    },
}

impl Refusal {
    fn status(&self) -> Status {
        match self {
            Refusal::NotReady => Status::unavailable(
                "the pilot has not read the registrations yet: a joined VM's stream waits for them; try again shortly",
            ),
            Refusal::Gone(identity) => Status::permission_denied(format!(
                "the joined VM {} ({}) is not registered: it left, an operator removed it, or it \
                 was deregistered after its grace period; `boshy join` again",
                identity.id,
                identity.group_path()
            )),
            Refusal::OtherAddress {
                identity,
                registered,
                from,
            } => Status::permission_denied(format!(
                "this certificate is the joined VM {} ({})'s, registered at {registered}; the \
                 connection comes from {}",
                identity.id,
                identity.group_path(),
                from.map_or_else(|| "an unknown address".to_string(), |a| a.to_string())
            )),
            Refusal::OtherNode {
                identity,
                expected,
                announced,
            } => Status::permission_denied(format!(
                "this certificate is the joined VM {} ({})'s, whose Envoy is node {expected} \
                 (with that deployment, instance_group and instance_id in its metadata); it \
                 announced {announced}",
                identity.id,
                identity.group_path()
            )),
        }
    }
}

/// Where each registration is, by id: what every held stream looks itself up in.
type Addresses = HashMap<String, (String, IpAddr)>;

/// Whether `peer`, connecting from `from`, may stream: `Ok(None)` for a peer not held to a
/// registration (a BOSH VM's or an operator tool's certificate), `Ok(Some)` with the
/// registration's address for a joined VM's certificate that may. `registrations` is `None`
/// until the store was read.
pub(crate) fn admit(
    peer: &Peer,
    from: Option<IpAddr>,
    registrations: Option<&Addresses>,
) -> Result<Option<IpAddr>, Refusal> {
    let Peer::Workload(identity) = peer else {
        return Ok(None);
    };
    let registrations = registrations.ok_or(Refusal::NotReady)?;
    // The certificate names the registration's id and its group: both must be the store's.
    let registered = registrations
        .get(&identity.id)
        .filter(|(group, _)| *group == identity.group_path())
        .map(|(_, address)| *address)
        .ok_or_else(|| Refusal::Gone(identity.clone()))?;
    if from != Some(registered) {
        return Err(Refusal::OtherAddress {
            identity: identity.clone(),
            registered,
            from,
        });
    }
    Ok(Some(registered))
}

/// Whether `node` is the Envoy `boshy join` configured for `identity` at `address`.
pub(crate) fn check_node(
    identity: &WorkloadIdentity,
    address: IpAddr,
    node: Option<&Node>,
) -> Result<(), Refusal> {
    let expected = identity.node(address);
    let expected_id = expected.node_id();
    let fits = node.is_some_and(|node| {
        node.id == expected_id
            && node_field(node, "deployment").as_deref() == Some(&identity.config)
            && node_field(node, "instance_group").as_deref() == Some(&identity.group)
            && node_field(node, "instance_id").as_deref() == Some(&identity.id)
    });
    if fits {
        return Ok(());
    }
    Err(Refusal::OtherNode {
        identity: identity.clone(),
        expected: expected_id,
        announced: node.map_or_else(|| "no node".to_string(), |node| node.id.clone()),
    })
}

/// The store's registrations as the xDS server's [`StreamGate`]; each held stream's
/// revocation follows a clone of it.
#[derive(Clone)]
pub(crate) struct XdsGate {
    state: watch::Receiver<Option<Arc<WorkloadState>>>,
    /// The last state seen and its addresses, made once per state however many streams
    /// look (each write wakes every held stream).
    index: Arc<Mutex<Option<Indexed>>>,
}

/// A state and its registrations' addresses.
type Indexed = (Arc<WorkloadState>, Arc<Addresses>);

impl XdsGate {
    pub(crate) fn new(state: watch::Receiver<Option<Arc<WorkloadState>>>) -> Arc<XdsGate> {
        Arc::new(XdsGate {
            state,
            index: Arc::default(),
        })
    }

    /// The addresses of the registrations in `state`.
    fn addresses(&self, state: Option<&Arc<WorkloadState>>) -> Option<Arc<Addresses>> {
        let state = state?;
        let mut index = self.index.lock().expect("xDS gate index lock");
        if let Some((held, addresses)) = index.as_ref() {
            if Arc::ptr_eq(held, state) {
                return Some(addresses.clone());
            }
        }
        let addresses: Arc<Addresses> = Arc::new(
            state
                .registrations
                .iter()
                .map(|r| (r.id.clone(), (r.group.clone(), r.address)))
                .collect(),
        );
        *index = Some((state.clone(), addresses.clone()));
        Some(addresses)
    }

    fn judge(&self, peer: &Peer, from: Option<IpAddr>) -> Result<Option<IpAddr>, Refusal> {
        let state = self.state.borrow().clone();
        let addresses = self.addresses(state.as_ref());
        admit(peer, from, addresses.as_deref())
    }
}

impl StreamGate for XdsGate {
    fn open(
        &self,
        certificates: &[CertificateDer<'static>],
        address: Option<IpAddr>,
    ) -> Result<Option<StreamPass>, Status> {
        let peer = Peer::of(Some(certificates));
        let Some(registered) = self.judge(&peer, address).map_err(|r| r.status())? else {
            return Ok(None);
        };
        let Peer::Workload(identity) = &peer else {
            unreachable!("only a joined VM's certificate is held to a registration")
        };
        let identity = identity.clone();
        let node = Box::new(move |node: Option<&Node>| {
            check_node(&identity, registered, node).map_err(|r| r.status())
        });
        let mut gate = self.clone();
        let revoked = Box::pin(async move {
            loop {
                // The task owning the store stopped (the pilot is stopping): keep serving.
                if gate.state.changed().await.is_err() {
                    return std::future::pending().await;
                }
                if let Err(refusal) = gate.judge(&peer, Some(registered)) {
                    return refusal.status();
                }
            }
        });
        Ok(Some(StreamPass { node, revoked }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::state::Registration;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    use futures::FutureExt;

    const ID: &str = "6c1f0000-0000-4000-8000-000000000001";
    const ADDRESS: [u8; 4] = [10, 249, 0, 30];

    fn identity() -> WorkloadIdentity {
        WorkloadIdentity {
            config: "legacy".into(),
            group: "rabbitmq".into(),
            id: ID.into(),
        }
    }

    fn registration(id: &str, address: [u8; 4]) -> Registration {
        Registration {
            id: id.into(),
            group: "legacy/rabbitmq".into(),
            address: address.into(),
            labels: Default::default(),
            token: "t1".into(),
            registered_at: 0,
        }
    }

    fn addresses(registrations: &[Registration]) -> Addresses {
        registrations
            .iter()
            .map(|r| (r.id.clone(), (r.group.clone(), r.address)))
            .collect()
    }

    /// The node the Envoy of `boshy join` announces: its bootstrap's `node`, as rendered.
    fn joined_node(identity: &WorkloadIdentity, address: IpAddr) -> Node {
        let rendered = crate::xds::bootstrap::render(
            &identity.node(address),
            &["pilot:15010".to_string()],
            "127.0.0.1:9901".parse().unwrap(),
        )
        .unwrap();
        let bootstrap: serde_json::Value = serde_yaml::from_str(&rendered).unwrap();
        let fields = bootstrap["node"]["metadata"]
            .as_object()
            .unwrap()
            .iter()
            .filter_map(|(name, value)| {
                let text = value.as_str()?.to_string();
                let value = Value {
                    kind: Some(Kind::StringValue(text)),
                };
                Some((name.clone(), value))
            })
            .collect();
        Node {
            id: bootstrap["node"]["id"].as_str().unwrap().to_string(),
            metadata: Some(Struct { fields }),
            ..Default::default()
        }
    }

    fn certificate(uri: &str) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn only_a_registered_vm_from_its_address_is_admitted_and_bosh_vms_are_not_held() {
        let vm = Peer::Workload(identity());
        let from = Some(IpAddr::from(ADDRESS));
        let registered = addresses(&[registration(ID, ADDRESS)]);
        assert_eq!(admit(&vm, from, Some(&registered)), Ok(from));
        // BOSH VMs and tools: never held, whatever the store says or whether it was read.
        for peer in [Peer::Mesh, Peer::Anonymous] {
            assert_eq!(admit(&peer, None, None), Ok(None));
            assert_eq!(admit(&peer, from, Some(&Addresses::new())), Ok(None));
        }
        assert_eq!(admit(&vm, from, None), Err(Refusal::NotReady));
        assert_eq!(
            admit(&vm, from, Some(&Addresses::new())),
            Err(Refusal::Gone(identity()))
        );
        // The same id in another group is not this certificate's registration.
        let mut elsewhere = registration(ID, ADDRESS);
        elsewhere.group = "legacy/postgres".into();
        assert_eq!(
            admit(&vm, from, Some(&addresses(&[elsewhere]))),
            Err(Refusal::Gone(identity()))
        );
        let other = Some(IpAddr::from([10, 249, 0, 31]));
        let refused = admit(&vm, other, Some(&registered)).unwrap_err();
        assert_eq!(
            refused,
            Refusal::OtherAddress {
                identity: identity(),
                registered: ADDRESS.into(),
                from: other
            }
        );
        let status = refused.status();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("registered at 10.249.0.30")
                && status.message().contains("comes from 10.249.0.31"),
            "{status:?}"
        );
        assert_eq!(
            admit(&vm, None, Some(&registered))
                .unwrap_err()
                .status()
                .code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn the_envoy_must_be_the_node_join_rendered_for_the_registration() {
        let address = IpAddr::from(ADDRESS);
        let node = joined_node(&identity(), address);
        assert_eq!(check_node(&identity(), address, Some(&node)), Ok(()));
        let mut other_id = identity();
        other_id.id = "6c1f0000-0000-4000-8000-000000000002".into();
        let someone_else = joined_node(&other_id, address);
        let elsewhere = joined_node(&identity(), [10, 249, 0, 31].into());
        let mut relabelled = node.clone();
        let fields = &mut relabelled.metadata.as_mut().unwrap().fields;
        fields.get_mut("instance_group").unwrap().kind = Some(Kind::StringValue("apricot".into()));
        for (what, node) in [
            ("another registration's node", Some(&someone_else)),
            ("another address's node id", Some(&elsewhere)),
            ("another instance group in the metadata", Some(&relabelled)),
            ("no node", None),
        ] {
            let refused = check_node(&identity(), address, node).unwrap_err();
            let status = refused.status();
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{what}");
            assert!(
                status.message().contains(&node_identity_id()),
                "{what}: {status:?}"
            );
        }
    }

    fn node_identity_id() -> String {
        format!("sidecar~10.249.0.30~rabbitmq/{ID}~legacy")
    }

    #[tokio::test]
    async fn a_held_stream_is_ended_when_its_registration_goes_and_a_new_one_refused() {
        let state = |registrations: Vec<Registration>| {
            Some(Arc::new(WorkloadState {
                tokens: Vec::new(),
                registrations,
            }))
        };
        let (store, watched) = watch::channel(None);
        let gate = XdsGate::new(watched);
        let vm = [certificate(&identity().urn())];
        let bosh = [certificate("spiffe://boshy/deployment/d/instance_group/g")];
        let from = Some(IpAddr::from(ADDRESS));
        let refused = |opened: Result<Option<StreamPass>, Status>| opened.err().unwrap();
        assert_eq!(
            refused(gate.open(&vm, from)).code(),
            tonic::Code::Unavailable
        );
        assert!(gate.open(&bosh, from).unwrap().is_none());

        store.send_replace(state(vec![registration(ID, ADDRESS)]));
        let pass = gate.open(&vm, from).unwrap().expect("held");
        assert!((pass.node)(Some(&joined_node(&identity(), ADDRESS.into()))).is_ok());
        let mut revoked = gate.open(&vm, from).unwrap().expect("held").revoked;
        // Another registration joining changes the store, not this stream's standing.
        store.send_replace(state(vec![
            registration(ID, ADDRESS),
            registration("another", [10, 249, 0, 32]),
        ]));
        tokio::task::yield_now().await;
        assert!((&mut revoked).now_or_never().is_none(), "still registered");
        // Gone (left, removed, deregistered): ended with the reason, and refused anew.
        store.send_replace(state(vec![registration("another", [10, 249, 0, 32])]));
        let ended = revoked.await;
        assert_eq!(ended.code(), tonic::Code::PermissionDenied);
        assert!(ended.message().contains("is not registered"), "{ended:?}");
        let again = refused(gate.open(&vm, from));
        assert_eq!(again.message(), ended.message());
        assert!(gate.open(&bosh, from).unwrap().is_none());
        // A registration is held to its address, whatever the store says of it.
        store.send_replace(state(vec![registration(ID, [10, 249, 0, 33])]));
        assert!(refused(gate.open(&vm, from))
            .message()
            .contains("registered at 10.249.0.33"));
    }
}
