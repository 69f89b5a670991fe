//! A joined VM's xDS access follows its registration (docs/workloads.md), on a real
//! `boshy pilot` reading the director simulator: the VM's certificate gets ADS only from the
//! registration's address and as the node `boshy join` renders; its open stream is ended with
//! `PERMISSION_DENIED` saying why the moment it leaves or an operator removes it, and a new
//! one is refused (and when it is deregistered, silent for the grace period); a BOSH VM's
//! certificate streams throughout. The Envoy is played by a tonic
//! ADS client (state of the world, which serves clusters at once: a delta stream of a VM waits
//! for its agent's scope); a real Envoy, bootstrapped as `boshy envoy-bootstrap` renders it
//! with the VM's certificate, loses its xDS connection when its VM leaves.
//!
//! Everything runs on loopback: the simulator lists its instances in 127.10.0.0/24, and the VM
//! connects from 127.0.0.31 (127.0.0.32 plays another machine with its certificate).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use boshy::xds::bootstrap::NodeIdentity;
use boshy_director_sim::{self as sim, SimHandle};
use boshy_lab::pki::PILOT_SERVER_NAME;
use boshy_test_support::envoy::{loopback_listener, Envoy};
use boshy_test_support::uaa::client_credentials_token;
use boshy_test_support::workloads::{
    answer, first_token, join, key_and_csr, post_groups, sim_options, Durations, Pilot, Pki,
    RABBITMQ, SECRET,
};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as ProtoValue};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status, Streaming};

const BOSHY: &str = env!("CARGO_BIN_EXE_boshy");
const CLUSTERS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LISTENERS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// How long a stream's end or answer may take (the removal is written to the director first).
const WAIT: Duration = Duration::from_secs(20);
/// The pilot's durations when the test does not wait on them: no VM goes out or is
/// deregistered while it runs.
const LASTING: Durations = Durations {
    ttl_seconds: 30,
    certificate_ttl_seconds: 3600,
    deregister_after_seconds: None,
};

/// A PEM file of the test's directory.
fn read(pki: &Pki, file: &str) -> String {
    std::fs::read_to_string(pki.path(file)).unwrap()
}

/// A VM joined from `from`: its registration's id, its identity (certificate then key), and
/// its certificate and key as files.
struct Joined {
    id: String,
    address: IpAddr,
    identity: String,
    cert: PathBuf,
    key: PathBuf,
}

async fn join_vm(pilot: &Pilot, pki: &Pki, token: &str, from: IpAddr) -> Joined {
    let (key, csr) = key_and_csr();
    let (status, body) = join(pilot, pki, from, token, RABBITMQ, &csr).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", pilot.log_text());
    let joined: Value = serde_json::from_str(&body).unwrap();
    let id = joined["id"].as_str().unwrap().to_string();
    let certificate = joined["certificate"].as_str().unwrap();
    let (cert, key_path) = (
        pki.path(&format!("{id}.pem")),
        pki.path(&format!("{id}.key")),
    );
    std::fs::write(&cert, certificate).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    Joined {
        identity: format!("{certificate}\n{key}"),
        id,
        address: from,
        cert,
        key: key_path,
    }
}

/// The node an Envoy announces, as `xds::bootstrap` renders it: its id and metadata.
fn node(deployment: &str, group: &str, id: &str, ip: IpAddr) -> Node {
    let identity = NodeIdentity {
        deployment: deployment.into(),
        instance_group: group.into(),
        instance_id: id.into(),
        index: None,
        az: None,
        ip,
        service_name: None,
    };
    let text = |value: &str| ProtoValue {
        kind: Some(Kind::StringValue(value.to_string())),
    };
    let fields = [
        ("deployment", deployment),
        ("instance_group", group),
        ("instance_id", id),
    ];
    Node {
        id: identity.node_id(),
        metadata: Some(Struct {
            fields: fields
                .into_iter()
                .map(|(name, value)| (name.to_string(), text(value)))
                .collect(),
        }),
        ..Default::default()
    }
}

/// The node `boshy join` configures the VM's Envoy with (`join::render`).
fn node_of(vm: &Joined) -> Node {
    node("legacy", "rabbitmq", &vm.id, vm.address)
}

/// An open ADS stream (state of the world) and the sender that keeps it open.
struct Stream {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl Stream {
    async fn next(&mut self) -> Result<Option<DiscoveryResponse>, Status> {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("the pilot answers or ends the stream")
    }
}

/// Opens an ADS stream to the pilot from `from` with `identity` (PEM chain then key),
/// announcing `node` and asking for the clusters: the pilot's refusal, or the stream.
async fn ads(
    pilot: &Pilot,
    pki: &Pki,
    from: IpAddr,
    identity: &str,
    node: Node,
) -> Result<Stream, Status> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(pki, "mesh-ca.pem")))
        .identity(Identity::from_pem(identity, identity))
        .domain_name(PILOT_SERVER_NAME);
    let channel = Endpoint::from_shared(format!("https://{}", pilot.xds))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .local_address(Some(from))
        .connect()
        .await
        .expect("the TLS handshake with a mesh certificate succeeds");
    let (requests, outgoing) = mpsc::channel(4);
    requests
        .send(DiscoveryRequest {
            node: Some(node),
            type_url: CLUSTERS.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    Ok(Stream {
        requests,
        responses,
    })
}

/// The stream is served: its first answer is the clusters.
async fn assert_served(stream: &mut Stream, what: &str) {
    let first = stream.next().await;
    let first = first.unwrap_or_else(|status| panic!("{what}: {status:?}"));
    assert_eq!(
        first.map(|r| r.type_url).as_deref(),
        Some(CLUSTERS),
        "{what}"
    );
}

/// The stream was refused, at once or at its first request, `PERMISSION_DENIED` with `says`.
async fn assert_refused(opened: Result<Stream, Status>, says: &str) {
    let status = match opened {
        Err(status) => status,
        Ok(mut stream) => stream.next().await.expect_err("refused"),
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(says), "{says}: {status:?}");
}

/// The director simulator with the WorkloadGroups, a pilot of it with `durations`, ready,
/// an admin's token and a join token for [`RABBITMQ`].
async fn started(dir: &Path, durations: Durations) -> (SimHandle, Pki, Pilot, String, String) {
    let pki = Pki::new(dir);
    let sim = sim::start(sim_options()).await.unwrap();
    post_groups(&sim).await;
    let pilot = Pilot::new(dir, "pilot", &sim, &pki, durations);
    pilot.wait_ready(&pki).await;
    let admin = client_credentials_token(&sim, SECRET).await;
    let token = first_token(&pilot, &pki, &admin, RABBITMQ).await;
    (sim, pki, pilot, admin, token)
}

/// `vm` leaves (`boshy leave`'s request).
async fn leave(pilot: &Pilot, pki: &Pki, vm: &Joined) {
    let client = pki.client(pilot.api, vm.address, Some((&vm.cert, &vm.key)));
    let (status, body) = answer(client.post(pilot.url("/v1/workloads/leave"))).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", pilot.log_text());
}

/// The status `stream` ends with, after any answers still on their way.
async fn ended(stream: &mut Stream) -> Status {
    loop {
        match stream.next().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => return status,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_vm_streams_xds_only_while_registered_from_its_address_as_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, pki, pilot, admin, token) = started(dir.path(), LASTING).await;
    let vm = join_vm(&pilot, &pki, &token, Ipv4Addr::new(127, 0, 0, 31).into()).await;
    let bosh = format!("{}\n{}", read(&pki, "client.pem"), read(&pki, "client.key"));
    let elsewhere: IpAddr = Ipv4Addr::new(127, 0, 0, 32).into();
    let bosh_node = || node("sample-deployment", "apricot", "apricot-0", elsewhere);

    // Its Envoy, as `boshy join` configures it, is served; from elsewhere, or as another
    // node, its certificate is refused, saying why.
    let stream = ads(&pilot, &pki, vm.address, &vm.identity, node_of(&vm)).await;
    let mut stream = stream.unwrap_or_else(|s| panic!("{s:?}\n{}", pilot.log_text()));
    assert_served(&mut stream, "the registered VM").await;
    let from_elsewhere = ads(&pilot, &pki, elsewhere, &vm.identity, node_of(&vm)).await;
    assert_refused(from_elsewhere, "registered at 127.0.0.31").await;
    let as_other_node = ads(&pilot, &pki, vm.address, &vm.identity, bosh_node()).await;
    assert_refused(as_other_node, &node_of(&vm).id).await;
    // A BOSH VM's certificate is not held to any registration.
    let mut bosh_stream = ads(&pilot, &pki, elsewhere, &bosh, bosh_node())
        .await
        .unwrap();
    assert_served(&mut bosh_stream, "a BOSH VM").await;

    // It leaves: its open stream ends at once with the reason, and a new one is refused.
    leave(&pilot, &pki, &vm).await;
    let ended = ended(&mut stream).await;
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    assert!(
        ended.message().contains(&vm.id) && ended.message().contains("is not registered"),
        "{ended:?}"
    );
    let again = ads(&pilot, &pki, vm.address, &vm.identity, node_of(&vm)).await;
    assert_refused(again, "is not registered").await;

    // Joined again (a new registration, a new certificate), then removed by an operator.
    let vm = join_vm(&pilot, &pki, &token, vm.address).await;
    let mut stream = ads(&pilot, &pki, vm.address, &vm.identity, node_of(&vm))
        .await
        .unwrap();
    assert_served(&mut stream, "the VM joined again").await;
    let operator = pki.client(pilot.api, Ipv4Addr::LOCALHOST.into(), None);
    let removal = operator.delete(pilot.url(&format!("/v1/workloads/registrations/{}", vm.id)));
    let (status, body) = answer(removal.bearer_auth(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ended = stream.next().await.expect_err("ended by the removal");
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    assert!(ended.message().contains(&vm.id), "{ended:?}");

    // The BOSH VM's stream was never touched: it still gets what it asks for.
    bosh_stream
        .requests
        .send(DiscoveryRequest {
            type_url: LISTENERS.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let listeners = bosh_stream.next().await.expect("still served");
    assert_eq!(listeners.map(|r| r.type_url).as_deref(), Some(LISTENERS));
    let log = pilot.log_text();
    assert!(log.contains("proxy disconnected"), "{log}");
    assert!(!log.contains(&token), "no join token in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_envoy_of_a_vm_that_left_loses_its_xds_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, pki, pilot, _admin, token) = started(dir.path(), LASTING).await;
    // Envoy connects to the pilot from 127.0.0.1: the VM joins from there.
    let vm = join_vm(&pilot, &pki, &token, Ipv4Addr::LOCALHOST.into()).await;
    std::fs::write(dir.path().join("vm.pem"), &vm.identity).unwrap();
    let admin_address = loopback_listener().await.1;
    let rendered = Command::new(BOSHY)
        .args(["envoy-bootstrap", "--deployment", "legacy"])
        .args(["--instance-group", "rabbitmq", "--instance-id", &vm.id])
        .args(["--ip", "127.0.0.1", "--pilot", &pilot.xds.to_string()])
        .args(["--admin", &admin_address.to_string()])
        .arg("--tls-ca")
        .arg(pki.path("mesh-ca.pem"))
        // The certificate then the key, in one file: each reader takes its own part.
        .arg("--tls-cert")
        .arg(dir.path().join("vm.pem"))
        .arg("--tls-key")
        .arg(dir.path().join("vm.pem"))
        .args(["--tls-server-name", PILOT_SERVER_NAME])
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{rendered:?}");
    let envoy = Envoy::start(&String::from_utf8(rendered.stdout).unwrap(), admin_address);
    envoy
        .wait_for_stat("control_plane.connected_state", |connected| connected == 1)
        .await;

    leave(&pilot, &pki, &vm).await;
    envoy
        .wait_for_stat("control_plane.connected_state", |connected| connected == 0)
        .await;
    // The pilot ended its stream saying why, and refuses its reconnections.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = pilot.log_text();
        let ended = format!(
            "ended: the joined VM {} (legacy/rabbitmq) is not registered",
            vm.id
        );
        let after = log.split_once(&ended).map(|(_, after)| after);
        if after.is_some_and(|after| after.contains("xDS stream refused")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pilot never ended and refused the stream:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        envoy.stat("control_plane.connected_state").await,
        Some(0),
        "{}",
        envoy.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_of_a_vm_deregistered_after_its_grace_period_is_ended() {
    let dir = tempfile::tempdir().unwrap();
    // A VM silent for 5 s is deregistered: this one never heartbeats.
    let grace = Durations {
        ttl_seconds: 2,
        certificate_ttl_seconds: 3600,
        deregister_after_seconds: Some(5),
    };
    let (_sim, pki, pilot, _admin, token) = started(dir.path(), grace).await;
    let vm = join_vm(&pilot, &pki, &token, Ipv4Addr::new(127, 0, 0, 41).into()).await;
    let stream = ads(&pilot, &pki, vm.address, &vm.identity, node_of(&vm)).await;
    let mut stream = stream.unwrap_or_else(|s| panic!("{s:?}\n{}", pilot.log_text()));
    assert_served(&mut stream, "the VM before its grace period ends").await;
    let ended = ended(&mut stream).await;
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    assert!(
        ended
            .message()
            .contains("deregistered after its grace period"),
        "{ended:?}"
    );
    assert!(pilot.log_text().contains("deregistered: no heartbeat"));
}
