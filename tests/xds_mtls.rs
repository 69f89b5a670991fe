//! Inbound listeners, mutual TLS and authorization served to a real Envoy (workload
//! identities on, every security feature at once).
//!
//! Envoy accepts all of it over delta and state-of-the-world ADS (no update rejected, no NACK
//! in the server's log), gets its own instance group's inbound listener and no other, and
//! applies it: one Envoy in a private network namespace is both the client and the server of
//! the mesh (its outbound cluster connects to an instance address, the namespace's inbound
//! capture sends that connection back to the same Envoy's inbound listener), with a workload
//! certificate and trust bundle from a small SDS server of the test's own. A request through
//! a VIP crosses mutual TLS and reaches the workload with the caller's SPIFFE ID in
//! `x-forwarded-client-cert`; a DENY policy answers 403 and is counted in a stat the
//! bootstrap keeps; a plaintext connection to a STRICT port is refused, one to a PERMISSIVE HTTP
//! port cannot forge `x-forwarded-client-cert`, and one to a PERMISSIVE TCP port that only
//! identities may call is closed.
//!
//! Needs root and Envoy (env `BOSHY_ENVOY`, else `envoy` on PATH).

use boshy::xds::telemetry::Telemetry;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use boshy::catalog::model::{Catalog, Endpoint, Protocol};
use boshy::catalog::testing::{self, service};
use boshy::identity::spiffe::TrustDomain;
use boshy::traffic::security::{
    AuthzAction, AuthzCondition, AuthzMatch, AuthzOperation, AuthzPolicy, AuthzRule, AuthzSource,
    ConditionKey, MtlsMode, SecurityRules, WorkloadKey, WorkloadSecurity,
};
use boshy::traffic::TrafficRules;
use boshy::xds::bootstrap::{render_with, AdsMode, NodeIdentity};
use boshy::xds::cache::Sources;
use boshy_test_support::envoy::{
    capture_vip_traffic, captured_logs, in_private_netns, loopback_listener, CapturedLogs, Envoy,
};
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::util::pack_any;
use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const BANANA_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 2);
/// The one instance of banana (the Envoy's own instance group) and of cherry.
const BANANA_IP: &str = "127.0.0.2";
const CHERRY_IP: &str = "127.0.0.3";
const BANANA_ID: &str = "spiffe://boshy/deployment/sample/instance_group/banana";
const INBOUND: &str = "inbound|sample|banana";

fn catalog() -> Arc<Catalog> {
    let at = |ip: &str| testing::endpoint(ip);
    Arc::new(testing::catalog(
        1,
        [
            service("sample", "banana", "web")
                .vip(BANANA_VIP)
                .port("http", 8080, Protocol::Http)
                .port("grpc", 9000, Protocol::Grpc)
                .port("http-open", 8081, Protocol::Http)
                .endpoint(at(BANANA_IP)),
            service("sample", "banana", "db")
                .vip([169, 254, 255, 4])
                .port("tcp-db", 5432, Protocol::Tcp)
                .endpoint(at(BANANA_IP)),
            // Its agent says it takes no mutual TLS yet (not captured or not certified).
            service("sample", "cherry", "web")
                .vip([169, 254, 255, 3])
                .port("http", 8080, Protocol::Http)
                .endpoint(Endpoint {
                    plaintext: true,
                    ..at(CHERRY_IP)
                }),
        ],
    ))
}

fn any_of(values: &[&str]) -> Vec<AuthzMatch> {
    values.iter().map(|v| AuthzMatch::parse(v)).collect()
}

fn condition(key: ConditionKey, values: &[&str], not_values: &[&str]) -> AuthzCondition {
    AuthzCondition {
        key,
        values: any_of(values),
        not_values: any_of(not_values),
    }
}

/// Every field and condition of the model, on banana: STRICT but its TCP port PERMISSIVE and
/// its gRPC port DISABLE; `/admin…` denied; the rest allowed to the identities of the
/// deployment `sample` (on the HTTP and TCP ports) and to GETs of public paths from loopback.
fn security() -> SecurityRules {
    let deny = AuthzPolicy {
        config: "security".into(),
        name: "no-admin".into(),
        action: AuthzAction::Deny,
        rules: vec![
            AuthzRule {
                // On a TCP port the path is dropped: without the port, the rule would deny
                // every connection to banana's TCP port.
                to: vec![AuthzOperation {
                    paths: any_of(&["/admin*"]),
                    ports: vec![8080],
                    ..Default::default()
                }],
                ..Default::default()
            },
            AuthzRule {
                from: vec![AuthzSource {
                    principals: any_of(&["*/instance_group/evil"]),
                    not_deployments: any_of(&["sample", "other.dep-1*", "*-x"]),
                    not_ip_blocks: vec!["10.0.0.0/8".parse().unwrap()],
                    ..Default::default()
                }],
                to: vec![AuthzOperation {
                    methods: any_of(&["DELETE", "P*"]),
                    not_paths: any_of(&["*.txt"]),
                    not_ports: vec![9000],
                    ..Default::default()
                }],
                when: vec![
                    condition(
                        ConditionKey::RequestHeader("x-deny".into()),
                        &["yes", "*"],
                        &["no"],
                    ),
                    condition(ConditionKey::SourceIp, &["10.9.9.9", "10.8.0.0/16"], &[]),
                ],
            },
        ],
    };
    let allow = AuthzPolicy {
        config: "security".into(),
        name: "callers".into(),
        action: AuthzAction::Allow,
        rules: vec![
            AuthzRule {
                from: vec![AuthzSource {
                    principals: any_of(&["boshy/deployment/sample/*"]),
                    deployments: any_of(&["sample"]),
                    not_principals: any_of(&["boshy/deployment/sample/instance_group/evil"]),
                    ..Default::default()
                }],
                to: vec![AuthzOperation {
                    ports: vec![8080, 5432],
                    ..Default::default()
                }],
                ..Default::default()
            },
            AuthzRule {
                from: vec![AuthzSource {
                    ip_blocks: vec!["127.0.0.0/8".parse().unwrap()],
                    ..Default::default()
                }],
                to: vec![AuthzOperation {
                    methods: any_of(&["GET"]),
                    paths: any_of(&["/public", "/static/*", "*"]),
                    ..Default::default()
                }],
                when: vec![
                    condition(ConditionKey::SourcePrincipal, &["*"], &["boshy/evil"]),
                    condition(ConditionKey::SourceDeployment, &["sam*"], &[]),
                    condition(ConditionKey::DestinationPort, &["8080"], &["9"]),
                ],
            },
            AuthzRule {
                when: vec![condition(
                    ConditionKey::DestinationPort,
                    &["9000", "8081"],
                    &[],
                )],
                ..Default::default()
            },
        ],
    };
    let banana = WorkloadSecurity {
        mtls: MtlsMode::Strict,
        port_mtls: BTreeMap::from([
            (5432, MtlsMode::Permissive),
            (8081, MtlsMode::Permissive),
            (9000, MtlsMode::Disable),
        ]),
        policies: vec![deny, allow],
    };
    SecurityRules {
        mesh_mtls: MtlsMode::Strict,
        workloads: BTreeMap::from([(
            WorkloadKey {
                deployment: "sample".into(),
                instance_group: "banana".into(),
            },
            banana,
        )]),
    }
}

/// A CA and banana's workload certificate (its SPIFFE ID the only SAN), PEM.
struct Pki {
    ca: String,
    chain: String,
    key: String,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // rcgen names every certificate alike by default: a leaf named as its issuer would look
    // self-signed.
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "boshy test mesh CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "banana");
    leaf.subject_alt_names = vec![rcgen::SanType::URI(BANANA_ID.try_into().unwrap())];
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    Pki {
        ca: ca.pem(),
        chain: leaf.pem(),
        key: key.serialize_pem(),
    }
}

/// An SDS server with the secrets of [`Pki`], answering every request with the secrets it
/// names (what the virtual-ip-agent does on a VM, without rotation).
struct Sds {
    secrets: BTreeMap<String, Secret>,
}

impl Sds {
    fn new(pki: &Pki) -> Sds {
        let inline = |pem: &str| {
            Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(pem.to_string())),
                ..Default::default()
            })
        };
        let workload = Secret {
            name: "default".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(&pki.chain),
                private_key: inline(&pki.key),
                ..Default::default()
            })),
        };
        let bundle = Secret {
            name: "ROOTCA".into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(&pki.ca),
                    ..Default::default()
                },
            )),
        };
        Sds {
            secrets: [workload, bundle]
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect(),
        }
    }
}

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type StreamSecretsStream = Responses<DiscoveryResponse>;
    type DeltaSecretsStream = Responses<DeltaDiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamSecretsStream>, tonic::Status> {
        let secrets = self.secrets.clone();
        let mut sent = 0u64;
        let responses = request.into_inner().filter_map(move |request| {
            let request = match request {
                Ok(request) => request,
                Err(status) => return futures::future::ready(Some(Err(status))),
            };
            // An ACK or NACK of what was sent needs no answer.
            if !request.response_nonce.is_empty() {
                return futures::future::ready(None);
            }
            sent += 1;
            futures::future::ready(Some(Ok(DiscoveryResponse {
                version_info: "1".into(),
                resources: request
                    .resource_names
                    .iter()
                    .filter_map(|name| secrets.get(name))
                    .map(|secret| pack_any(secret.clone()))
                    .collect(),
                type_url: request.type_url,
                nonce: sent.to_string(),
                ..Default::default()
            })))
        });
        Ok(tonic::Response::new(Box::pin(responses)))
    }

    async fn delta_secrets(
        &self,
        _: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaSecretsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the mesh's SDS is state of the world",
        ))
    }

    async fn fetch_secrets(
        &self,
        _: tonic::Request<DiscoveryRequest>,
    ) -> Result<tonic::Response<DiscoveryResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("streams only"))
    }
}

async fn serve_sds(pki: &Pki) -> SocketAddr {
    let (listener, address) = loopback_listener().await;
    let server = tonic::transport::Server::builder()
        .add_service(SecretDiscoveryServiceServer::new(Sds::new(pki)))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    address
}

/// Envoy for `node` with ADS at `xds` and, as the bosh-envoy job will render it with
/// identities on, the static cluster `sds-grpc` of the VM's SDS server (here at `sds`).
async fn start_envoy_with_sds(
    node: &NodeIdentity,
    xds: SocketAddr,
    sds: SocketAddr,
    mode: AdsMode,
) -> Envoy {
    let admin = loopback_listener().await.1;
    let bootstrap = render_with(node, &[xds.to_string()], admin, mode).unwrap();
    let mut bootstrap: Value = serde_yaml::from_str(&bootstrap).unwrap();
    let sds_cluster = serde_json::json!({
        "name": "sds-grpc",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
        "load_assignment": {
            "cluster_name": "sds-grpc",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": sds.ip().to_string(), "port_value": sds.port(),
            }}}}]}],
        },
    });
    bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(sds_cluster);
    Envoy::start(&serde_yaml::to_string(&bootstrap).unwrap(), admin)
}

/// An xDS server with identities on, serving `catalog` and `traffic`; its address and the
/// senders it follows (kept alive by the caller).
async fn serve_xds(
    traffic: TrafficRules,
) -> (
    (
        watch::Sender<Arc<Catalog>>,
        watch::Sender<Arc<TrafficRules>>,
    ),
    SocketAddr,
) {
    let (catalog_tx, catalog_rx) = watch::channel(catalog());
    let (traffic_tx, traffic_rx) = watch::channel(Arc::new(traffic));
    let (listener, xds) = loopback_listener().await;
    tokio::spawn(boshy::xds::serve(
        listener,
        Sources {
            catalog: catalog_rx,
            traffic: traffic_rx,
            identity: Some(TrustDomain::default()),
            telemetry: Telemetry::OFF,
        },
    ));
    ((catalog_tx, traffic_tx), xds)
}

fn node(mode: AdsMode) -> NodeIdentity {
    NodeIdentity {
        deployment: "sample".into(),
        instance_group: "banana".into(),
        instance_id: format!("0f3c-banana-mtls-{mode:?}"),
        index: Some(0),
        az: Some("z1".into()),
        ip: BANANA_IP.parse().unwrap(),
        service_name: None,
    }
}

fn traffic() -> TrafficRules {
    TrafficRules {
        security: security(),
        ..TrafficRules::default()
    }
}

async fn assert_nothing_rejected(envoy: &Envoy, logs: &CapturedLogs, node: &NodeIdentity) {
    for manager in ["cluster_manager.cds", "listener_manager.lds"] {
        envoy
            .wait_for_stat(&format!("{manager}.update_success"), |n| n > 0)
            .await;
        let stat = format!("{manager}.update_rejected");
        assert_eq!(envoy.stat(&stat).await, Some(0), "{stat}");
    }
    let node_id = node.node_id();
    let log = logs.text();
    assert!(
        !log.lines()
            .any(|l| l.contains("NACK") && l.contains(&node_id)),
        "a NACK was logged:\n{log}"
    );
}

/// The names of the listeners of a `/config_dump` in `state` (`active_state`, `warming_state`).
fn listeners(dump: &Value, state: &str) -> Vec<String> {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("ListenersConfigDump"))
        })
        .flat_map(|c| {
            c["dynamic_listeners"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|l| l[state]["listener"]["name"].as_str().map(str::to_string))
        .collect()
}

/// The transport socket name of a dynamic cluster in a `/config_dump`.
fn cluster_transport_socket(dump: &Value, name: &str) -> Option<String> {
    dump["configs"]
        .as_array()?
        .iter()
        .filter(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("ClustersConfigDump"))
        })
        .flat_map(|c| {
            c["dynamic_active_clusters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|c| c["cluster"]["name"] == name)
        .map(|c| {
            c["cluster"]["transport_socket"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
}

#[test]
fn envoy_accepts_the_inbound_listener_mtls_and_rbac_over_delta_ads() {
    accepts_everything(AdsMode::Delta);
}

#[test]
fn envoy_accepts_the_inbound_listener_mtls_and_rbac_over_state_of_the_world() {
    accepts_everything(AdsMode::Sotw);
}

/// Every generated resource accepted, the Envoy's own inbound listener active with its
/// secrets, no other group's, and mutual TLS on the clusters of the mesh's services.
fn accepts_everything(mode: AdsMode) {
    let logs = captured_logs();
    in_private_netns(move || async move {
        let sds = serve_sds(&pki()).await;
        let (_published, xds) = serve_xds(traffic()).await;
        let node = node(mode);
        let envoy = start_envoy_with_sds(&node, xds, sds, mode).await;
        envoy
            .wait_for(
                "banana's inbound listener, active",
                "/config_dump",
                |dump| {
                    listeners(dump, "active_state")
                        .contains(&INBOUND.to_string())
                        .then_some(())
                },
            )
            .await;
        assert_nothing_rejected(&envoy, logs, &node).await;
        let dump = envoy.get("/config_dump").await.unwrap();
        let all: Vec<String> = ["active_state", "warming_state"]
            .iter()
            .flat_map(|state| listeners(&dump, state))
            .collect();
        assert!(
            !all.iter()
                .any(|l| l.starts_with("inbound|") && l != INBOUND),
            "only its own group's inbound listener: {all:?}"
        );
        for cluster in [
            "outbound|8080||web.banana.sample.boshy",
            "outbound|5432||db.banana.sample.boshy",
            "outbound|8080||web.cherry.sample.boshy",
        ] {
            assert_eq!(
                cluster_transport_socket(&dump, cluster).as_deref(),
                Some("envoy.transport_sockets.tls"),
                "{cluster}"
            );
        }
        assert_eq!(
            cluster_transport_socket(&dump, "outbound|9000||web.banana.sample.boshy").as_deref(),
            Some(""),
            "banana's DISABLE port is plaintext"
        );
        assert!(cluster_transport_socket(&dump, "InboundPassthroughCluster").is_some());
    });
}

/// Answers every HTTP request with `200` and the `x-forwarded-client-cert` it got.
async fn xfcc_echo(address: &str) {
    let listener = TcpListener::bind(address).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request).to_lowercase();
                let xfcc = request
                    .lines()
                    .find_map(|l| l.strip_prefix("x-forwarded-client-cert: "))
                    .unwrap_or("none")
                    .to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{xfcc}",
                    xfcc.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
}

/// Echoes every TCP connection.
async fn tcp_echo(address: &str) {
    let listener = TcpListener::bind(address).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
}

/// The VM's inbound capture, as the virtual-ip-agent's rules will do it: connections to
/// banana's instance go to the inbound listener, except Envoy's own from 127.0.0.6.
fn capture_inbound_traffic() {
    let status = std::process::Command::new("iptables")
        .args(["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", BANANA_IP])
        .args([
            "!",
            "-s",
            "127.0.0.6",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15006",
        ])
        .status()
        .expect("iptables");
    assert!(status.success(), "iptables REDIRECT to 15006: {status}");
}

/// What a plaintext TCP client gets from `address` after sending `hello`: the echo, or
/// `None` when the connection is closed or reset first.
async fn plaintext_exchange(address: &str) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    stream.write_all(b"hello").await.ok()?;
    let mut answer = [0u8; 5];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer));
    match read.await {
        Ok(Ok(_)) => Some(answer.to_vec()),
        _ => None,
    }
}

#[test]
fn requests_cross_mutual_tls_carry_the_callers_identity_and_meet_the_policies() {
    in_private_netns(|| async {
        xfcc_echo(&format!("{BANANA_IP}:8080")).await;
        xfcc_echo(&format!("{BANANA_IP}:8081")).await;
        xfcc_echo(&format!("{CHERRY_IP}:8080")).await;
        tcp_echo(&format!("{BANANA_IP}:5432")).await;
        let sds = serve_sds(&pki()).await;
        let (_published, xds) = serve_xds(traffic()).await;
        capture_vip_traffic();
        capture_inbound_traffic();
        let node = node(AdsMode::Delta);
        let envoy = start_envoy_with_sds(&node, xds, sds, AdsMode::Delta).await;
        envoy
            .wait_for(
                "banana's inbound listener, active",
                "/config_dump",
                |dump| {
                    listeners(dump, "active_state")
                        .contains(&INBOUND.to_string())
                        .then_some(())
                },
            )
            .await;
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let get = |path: &str| {
            let request = http.get(format!("http://{BANANA_VIP}:8080{path}")).send();
            async move {
                let response = request.await.expect("an answer");
                (response.status().as_u16(), response.text().await.unwrap())
            }
        };
        // Envoy's clusters may still be warming for their secrets: wait for the first answer.
        let mut answer = (0, String::new());
        for _ in 0..100 {
            answer = get("/public").await;
            if answer.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(answer.0, 200, "{answer:?}\n{}", envoy.log_text());
        assert!(
            answer.1.contains(&format!("uri={BANANA_ID}")),
            "the workload learns the caller's SPIFFE ID: {answer:?}"
        );

        let denied = envoy_stat_after(&envoy, "http.inbound_8080.rbac.deny.denied", || {
            get("/admin/users")
        })
        .await;
        assert_eq!(denied.0, 403, "the DENY policy: {denied:?}");

        // Plaintext straight to the instance, past the mesh: STRICT refuses it outright…
        let strict = http
            .get(format!("http://{BANANA_IP}:8080/public"))
            .send()
            .await;
        assert!(
            strict.is_err(),
            "a STRICT port takes no plaintext: {strict:?}"
        );
        // …a PERMISSIVE HTTP port takes it, and no caller forges an identity there…
        let forged = http
            .get(format!("http://{BANANA_IP}:8081/"))
            .header("x-forwarded-client-cert", "URI=spiffe://boshy/forged")
            .send()
            .await
            .expect("an answer");
        assert_eq!(forged.status().as_u16(), 200);
        assert_eq!(
            forged.text().await.unwrap(),
            "none",
            "the header is removed"
        );
        // …a PERMISSIVE TCP port takes it, but the policies allow identities alone there.
        assert_eq!(plaintext_exchange(&format!("{BANANA_IP}:5432")).await, None);
        envoy
            .wait_for_stat("tcp.inbound_5432.allow.rbac.denied", |n| n > 0)
            .await;
        // Through the mesh, the same port is mutual TLS and the caller is in `sample`.
        assert_eq!(
            plaintext_exchange("169.254.255.4:5432").await.as_deref(),
            Some(&b"hello"[..])
        );
        // cherry's cluster originates mutual TLS, but its one endpoint is labelled plaintext:
        // the request reaches its uncaptured workload in plaintext, with no identity.
        let cherry = http
            .get("http://169.254.255.3:8080/")
            .send()
            .await
            .expect("an answer");
        assert_eq!(cherry.status().as_u16(), 200);
        assert_eq!(cherry.text().await.unwrap(), "none");
    });
}

/// Runs `request` and waits for the counter `stat` (which the bootstrap's trimming must keep)
/// to count it.
async fn envoy_stat_after<F: std::future::Future<Output = (u16, String)>>(
    envoy: &Envoy,
    stat: &str,
    request: impl FnOnce() -> F,
) -> (u16, String) {
    let before = envoy.stat(stat).await.unwrap_or(0);
    let answer = request().await;
    envoy.wait_for_stat(stat, |n| n > before).await;
    answer
}
