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

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use boshy::xds::bootstrap::NodeIdentity;
use boshy_director_sim::{self as sim, SimHandle, SimOptions};
use boshy_lab::pki::{Ca, PILOT_SERVER_NAME};
use boshy_test_support::dns_agent::free_port;
use boshy_test_support::envoy::{loopback_listener, Envoy};
use boshy_test_support::process::KilledOnDrop;
use boshy_test_support::uaa::{client_credentials_token, sim_client};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as ProtoValue};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status, Streaming};

const BOSHY: &str = env!("CARGO_BIN_EXE_boshy");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/director");
const SECRET: &str = "pilot-secret";
const RABBITMQ: &str = "legacy/rabbitmq";
const GROUPS: &str = "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\n\
metadata: {name: rabbitmq}\nspec:\n  template: {ports: {tcp-amqp: 5672}}\n";
const CLUSTERS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LISTENERS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// How long a stream's end or answer may take (the removal is written to the director first).
const WAIT: Duration = Duration::from_secs(20);

/// The mesh CA, the pilot's certificate and a BOSH VM's mesh client certificate, as files.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let mesh = Ca::new("mesh ca").unwrap();
        let write = |file: &str, pem: &str| std::fs::write(dir.join(file), pem).unwrap();
        write("mesh-ca.pem", &mesh.cert_pem());
        write("mesh-ca.key", &mesh.key_pem());
        let server = mesh.server(PILOT_SERVER_NAME).unwrap();
        write("server.pem", &server.cert_pem);
        write("server.key", &server.key_pem);
        let bosh = mesh.client("bosh-vm").unwrap();
        write("bosh.pem", &bosh.cert_pem);
        write("bosh.key", &bosh.key_pem);
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap()
    }

    /// An HTTPS client of the pilot's `port`, leaving from `from`, with `identity` (PEM chain
    /// then key) or none.
    fn https(&self, port: SocketAddr, from: IpAddr, identity: Option<&str>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.read("mesh-ca.pem").as_bytes()).unwrap(),
            )
            .resolve(PILOT_SERVER_NAME, port)
            .local_address(from)
            .timeout(Duration::from_secs(10));
        if let Some(identity) = identity {
            builder = builder.identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }
}

/// `boshy pilot` with WorkloadGroups on, its stderr in a file, killed when dropped.
struct Pilot {
    _child: KilledOnDrop,
    log: PathBuf,
    api: SocketAddr,
    xds: SocketAddr,
}

impl Pilot {
    /// A pilot on `sim`, with `workloads` (YAML lines under `workloads:`) beside the CA key.
    fn start(dir: &Path, sim: &SimHandle, workloads: &str) -> Pilot {
        std::fs::write(dir.join("director-ca.pem"), sim.ca_pem()).unwrap();
        std::fs::write(dir.join("secret"), SECRET).unwrap();
        let loopback = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (api, xds, names) = (loopback(), loopback(), loopback());
        let file = |name: &str| dir.join(name).display().to_string();
        let config = format!(
            "director:\n  url: {}\n  client: pilot\n  client_secret_file: {}\n  \
             ca_cert_path: {}\n  poll_interval_seconds: 1\n\
             tls:\n  ca_cert_path: {}\n  cert_path: {}\n  key_path: {}\n\
             listen:\n  api: {api}\n  xds: {xds}\n  names: {names}\n\
             workloads:\n  mesh_ca_private_key: {}\n{workloads}",
            sim.director_url(),
            file("secret"),
            file("director-ca.pem"),
            file("mesh-ca.pem"),
            file("server.pem"),
            file("server.key"),
            file("mesh-ca.key"),
        );
        std::fs::write(dir.join("pilot.yml"), config).unwrap();
        let log = dir.join("pilot.log");
        let child = Command::new(BOSHY)
            .args(["pilot", "--config"])
            .arg(dir.join("pilot.yml"))
            .env("RUST_LOG", "info,boshy=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Pilot {
            _child: KilledOnDrop(child),
            log,
            api,
            xds,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("https://{PILOT_SERVER_NAME}:{}{path}", self.api.port())
    }
}

/// A join token for the group, once the pilot has judged the rule config holding it.
async fn join_token(pilot: &Pilot, pki: &Pki, admin: &str) -> String {
    let client = pki.https(pilot.api, Ipv4Addr::LOCALHOST.into(), None);
    for _ in 0..300 {
        let answer = client
            .post(pilot.url("/v1/workloads/tokens"))
            .bearer_auth(admin)
            .json(&json!({"group": RABBITMQ, "ttl_seconds": 600}))
            .send()
            .await;
        if let Ok(answer) = answer {
            if answer.status() == StatusCode::CREATED {
                let created: Value = answer.json().await.unwrap();
                return created["token"].as_str().unwrap().to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no join token:\n{}", pilot.log_text());
}

/// A VM joined from `from`: its registration's id and its identity (certificate then key).
struct Joined {
    id: String,
    address: IpAddr,
    identity: String,
}

async fn join(pilot: &Pilot, pki: &Pki, token: &str, from: IpAddr) -> Joined {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let answer = pki
        .https(pilot.api, from, None)
        .post(pilot.url("/v1/workloads/join"))
        .bearer_auth(token)
        .json(&json!({"group": RABBITMQ, "csr": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK, "{}", pilot.log_text());
    let joined: Value = answer.json().await.unwrap();
    Joined {
        id: joined["id"].as_str().unwrap().to_string(),
        address: from,
        identity: format!(
            "{}\n{}",
            joined["certificate"].as_str().unwrap(),
            key.serialize_pem()
        ),
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
        .ca_certificate(Certificate::from_pem(pki.read("mesh-ca.pem")))
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

/// The director simulator with the WorkloadGroup, and an admin's token for it.
async fn director() -> (SimHandle, String) {
    let mut options = SimOptions::new(SECRET);
    options.fixtures = Some(FIXTURES.into());
    options.instance_network = "127.10.0.0/24".parse().unwrap();
    options.task_delay = Duration::from_millis(10);
    let sim = sim::start(options).await.unwrap();
    let admin = client_credentials_token(&sim, SECRET).await;
    let posted = sim_client(&sim)
        .post(format!("{}/configs", sim.director_url()))
        .bearer_auth(&admin)
        .json(&json!({"type": "boshy-istio", "name": "legacy", "content": GROUPS}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::CREATED);
    (sim, admin)
}

/// `vm` leaves (`boshy leave`'s request).
async fn leave(pilot: &Pilot, pki: &Pki, vm: &Joined) {
    let left = pki
        .https(pilot.api, vm.address, Some(&vm.identity))
        .post(pilot.url("/v1/workloads/leave"))
        .send()
        .await
        .unwrap();
    assert_eq!(left.status(), StatusCode::OK, "{}", pilot.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_vm_streams_xds_only_while_registered_from_its_address_as_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (sim, admin) = director().await;
    let pilot = Pilot::start(dir.path(), &sim, "");
    let token = join_token(&pilot, &pki, &admin).await;
    let vm = join(&pilot, &pki, &token, Ipv4Addr::new(127, 0, 0, 31).into()).await;
    let bosh = format!("{}\n{}", pki.read("bosh.pem"), pki.read("bosh.key"));
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
    let ended = loop {
        match stream.next().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    assert!(
        ended.message().contains(&vm.id) && ended.message().contains("is not registered"),
        "{ended:?}"
    );
    let again = ads(&pilot, &pki, vm.address, &vm.identity, node_of(&vm)).await;
    assert_refused(again, "is not registered").await;

    // Joined again (a new registration, a new certificate), then removed by an operator.
    let vm = join(&pilot, &pki, &token, vm.address).await;
    let mut stream = ads(&pilot, &pki, vm.address, &vm.identity, node_of(&vm))
        .await
        .unwrap();
    assert_served(&mut stream, "the VM joined again").await;
    let removed = pki
        .https(pilot.api, Ipv4Addr::LOCALHOST.into(), None)
        .delete(pilot.url(&format!("/v1/workloads/registrations/{}", vm.id)))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::OK);
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
    let pki = Pki::new(dir.path());
    let (sim, admin) = director().await;
    let pilot = Pilot::start(dir.path(), &sim, "");
    let token = join_token(&pilot, &pki, &admin).await;
    // Envoy connects to the pilot from 127.0.0.1: the VM joins from there.
    let vm = join(&pilot, &pki, &token, Ipv4Addr::LOCALHOST.into()).await;
    std::fs::write(dir.path().join("vm.pem"), &vm.identity).unwrap();
    let admin_address = loopback_listener().await.1;
    let rendered = Command::new(BOSHY)
        .args(["envoy-bootstrap", "--deployment", "legacy"])
        .args(["--instance-group", "rabbitmq", "--instance-id", &vm.id])
        .args(["--ip", "127.0.0.1", "--pilot", &pilot.xds.to_string()])
        .args(["--admin", &admin_address.to_string()])
        .arg("--tls-ca")
        .arg(dir.path().join("mesh-ca.pem"))
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
    let pki = Pki::new(dir.path());
    let (sim, admin) = director().await;
    // A VM silent for 5 s is deregistered: this one never heartbeats.
    let grace = "  heartbeat_seconds: 1\n  ttl_seconds: 2\n  deregister_after_seconds: 5\n";
    let pilot = Pilot::start(dir.path(), &sim, grace);
    let token = join_token(&pilot, &pki, &admin).await;
    let vm = join(&pilot, &pki, &token, Ipv4Addr::new(127, 0, 0, 41).into()).await;
    let stream = ads(&pilot, &pki, vm.address, &vm.identity, node_of(&vm)).await;
    let mut stream = stream.unwrap_or_else(|s| panic!("{s:?}\n{}", pilot.log_text()));
    assert_served(&mut stream, "the VM before its grace period ends").await;
    let ended = loop {
        match stream.next().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    assert!(
        ended
            .message()
            .contains("deregistered after its grace period"),
        "{ended:?}"
    );
    assert!(pilot.log_text().contains("deregistered: no heartbeat"));
}
