//! The agent's workload identity end to end on one machine, without a pilot: a test CA signs
//! the agent's certificate requests directly; a tonic SDS client on the agent's Unix socket
//! receives `default` and `ROOTCA`, nothing before the first certificate, and the renewed
//! certificate pushed on the same open stream. The agent's log never holds a key.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use boshy::catalog::model::InstanceRef;
use boshy::identity::agent::{keep_certified, PilotSigner, Signer, Workload};
use boshy::identity::sds;
use boshy::identity::spiffe::{TRUST_BUNDLE_SECRET, WORKLOAD_SECRET};
use boshy::identity::wire::{CsrAnswer, CsrRequest, CSR_PATH};
use boshy::xds::bootstrap::{render_with_sds, AdsMode, NodeIdentity};
use boshy_test_support::envoy::{loopback_listener, Envoy};
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::Message;
use rcgen::PublicKeyData;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const SPIFFE_ID: &str = "spiffe://corp.example/deployment/sample/instance_group/banana";
const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// The test CA's certificates live this long: renewed two seconds after they are received.
const LIFETIME_S: u64 = 4;

/// A CA that signs every request but those `refuses` (given the attempt, from 1), recording the public key
/// of each request it signed.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    refuses: fn(usize) -> bool,
    seen: Mutex<Vec<CsrRequest>>,
    signed_keys: Mutex<Vec<Vec<u8>>>,
}

impl TestCa {
    /// What this CA says when it refuses: its own words, since the tests share one log.
    fn refusal(&self) -> String {
        format!("test CA {:p}: refusing the request", self)
    }

    fn new(refuses: fn(usize) -> bool) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert,
            key,
            refuses,
            seen: Mutex::default(),
            signed_keys: Mutex::default(),
        }
    }
}

/// The CA as the agent holds it, shared with the test's checks.
#[derive(Clone)]
struct SharedCa(Arc<TestCa>);

impl Signer for SharedCa {
    async fn sign(&self, request: &CsrRequest) -> anyhow::Result<CsrAnswer> {
        let ca = &self.0;
        let attempt = {
            let mut seen = ca.seen.lock().unwrap();
            seen.push(request.clone());
            seen.len()
        };
        if (ca.refuses)(attempt) {
            anyhow::bail!(ca.refusal());
        }
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&request.csr)?;
        ca.signed_keys
            .lock()
            .unwrap()
            .push(csr.public_key.der_bytes().to_vec());
        let cert = csr.signed_by(&ca.cert, &ca.key)?;
        Ok(CsrAnswer {
            certificate_chain: cert.pem(),
            trust_bundle: ca.cert.pem(),
            not_after: unix_now() + LIFETIME_S,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Everything the process logs, for the check that no key is in it.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The process's log, captured once for every test of this file.
fn logs() -> LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuffer::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("boshy=debug")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        logs
    })
    .clone()
}

async fn sds_client(socket: PathBuf) -> SecretDiscoveryServiceClient<Channel> {
    // The URI is a placeholder: every connection goes to the socket.
    let channel = Endpoint::from_static("http://sds.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("the SDS socket accepts connections");
    SecretDiscoveryServiceClient::new(channel)
}

fn request(nonce: &str, version: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names: vec![WORKLOAD_SECRET.into(), TRUST_BUNDLE_SECRET.into()],
        type_url: SECRET_TYPE.into(),
        response_nonce: nonce.into(),
        version_info: version.into(),
        ..Default::default()
    }
}

fn inline(source: &Option<DataSource>) -> String {
    match source.as_ref().and_then(|s| s.specifier.as_ref()) {
        Some(data_source::Specifier::InlineString(text)) => text.clone(),
        other => panic!("not an inline string: {other:?}"),
    }
}

/// The workload chain and key, and the trust bundle, of one response.
fn secrets(response: &DiscoveryResponse) -> (String, String, String) {
    let (mut workload, mut bundle) = (None, None);
    for any in &response.resources {
        assert_eq!(any.type_url, SECRET_TYPE);
        let secret = Secret::decode(any.value.as_slice()).unwrap();
        match (secret.name.as_str(), secret.r#type) {
            (WORKLOAD_SECRET, Some(secret::Type::TlsCertificate(tls))) => {
                workload = Some((inline(&tls.certificate_chain), inline(&tls.private_key)))
            }
            (TRUST_BUNDLE_SECRET, Some(secret::Type::ValidationContext(validation))) => {
                bundle = Some(inline(&validation.trusted_ca))
            }
            (name, other) => panic!("unexpected secret {name}: {other:?}"),
        }
    }
    let (chain, key) = workload.expect("the workload secret");
    (chain, key, bundle.expect("the trust bundle"))
}

fn san_of(chain: &str) -> Vec<rcgen::SanType> {
    rcgen::CertificateParams::from_ca_cert_pem(chain)
        .unwrap()
        .subject_alt_names
}

fn public_key_of(key_pem: &str) -> Vec<u8> {
    rcgen::KeyPair::from_pem(key_pem)
        .unwrap()
        .public_key_raw()
        .to_vec()
}

async fn next(
    responses: &mut tonic::Streaming<DiscoveryResponse>,
    within: Duration,
) -> Option<DiscoveryResponse> {
    match tokio::time::timeout(within, responses.message()).await {
        Err(_) => None,
        Ok(message) => Some(message.expect("a response").expect("the stream stays open")),
    }
}

fn stale_file(path: &Path) {
    std::fs::write(path, b"left by a previous run").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_its_certificate_over_sds_and_pushes_each_renewal() {
    let logs = logs();

    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("boshy-identity");
    std::fs::create_dir(&volume).unwrap();
    stale_file(&volume.join("sds.sock"));
    let started = unix_now();
    // The CA refuses the first two requests: the third comes three seconds later (1 s, then
    // 2 s of backoff), time enough to see nothing answered before.
    let (ca, socket) = start_agent(&volume, |attempt| attempt <= 2);
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(&socket),
        0o600,
        "only the agent's user opens the socket"
    );
    // Where bpm made no directory, the agent makes it for its user alone.
    let (_, made) = start_agent(&dir.path().join("made/by/agent"), |_| false);
    assert_eq!(mode(made.parent().unwrap()), 0o700);
    assert_eq!(mode(&made), 0o600);

    // Nothing is answered before the first certificate.
    let mut client = sds_client(socket.clone()).await;
    let fetched = client.fetch_secrets(request("", "")).await.unwrap_err();
    assert_eq!(fetched.code(), tonic::Code::Unavailable, "{fetched}");
    let (requests, outgoing) = mpsc::channel(4);
    requests.send(request("", "")).await.unwrap();
    let mut responses = client
        .stream_secrets(ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    assert!(
        next(&mut responses, Duration::from_millis(300))
            .await
            .is_none(),
        "no answer without a certificate"
    );

    let first = next(&mut responses, Duration::from_secs(10))
        .await
        .expect("the first certificate, after two retries");
    let (chain, key, bundle) = secrets(&first);
    assert_eq!(bundle, ca.cert.pem());
    assert_eq!(
        san_of(&chain),
        [rcgen::SanType::URI(
            rcgen::Ia5String::try_from(SPIFFE_ID).unwrap()
        )]
    );
    assert_eq!(
        ca.signed_keys.lock().unwrap()[0],
        public_key_of(&key),
        "the key served is the one the CSR was signed with"
    );
    {
        let seen = ca.seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "refused twice, then signed");
        for request in seen.iter() {
            assert_eq!(
                (request.deployment.as_str(), request.instance.as_str()),
                ("sample", "i-1")
            );
            assert!(
                request.nonce.len() >= 32 && request.nonce.chars().all(|c| c.is_ascii_hexdigit())
            );
            assert!(request.issued_at >= started && request.issued_at <= unix_now());
        }
        assert!(
            seen[0].nonce != seen[1].nonce && seen[1].nonce != seen[2].nonce,
            "a fresh nonce each time"
        );
    }
    let fetched = client
        .fetch_secrets(request("", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.version_info, first.version_info);
    requests
        .send(request(&first.nonce, &first.version_info))
        .await
        .unwrap();

    // Renewed at half the lifetime, pushed on the open stream with a new key.
    let renewed = next(&mut responses, Duration::from_secs(LIFETIME_S))
        .await
        .expect("the renewal pushed on the open stream");
    assert_ne!(renewed.version_info, first.version_info);
    assert_ne!(renewed.nonce, first.nonce);
    let (new_chain, new_key, _) = secrets(&renewed);
    assert_ne!(new_chain, chain);
    assert_ne!(
        public_key_of(&new_key),
        public_key_of(&key),
        "a new key per renewal"
    );
    requests
        .send(request(&renewed.nonce, &renewed.version_info))
        .await
        .unwrap();

    let log = logs.text();
    assert!(
        log.contains(&ca.refusal()) && log.contains("no certificate yet"),
        "the refusal is logged with what it means: {log}"
    );
    assert!(
        log.matches(&ca.refusal()).count() == 1,
        "a repeated failure is not logged again: {log}"
    );
    assert!(log.contains("SDS ACK"), "{log}");
    for secret in [&key, &new_key] {
        let body = secret
            .lines()
            .find(|line| !line.starts_with("-----"))
            .unwrap();
        assert!(!log.contains(body), "a key in the log");
    }
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}

/// A workload on a test CA that refuses the attempts `refuses` says, its certificates
/// served on `sds.sock` in `dir`.
fn start_agent(dir: &Path, refuses: fn(usize) -> bool) -> (Arc<TestCa>, PathBuf) {
    let socket = dir.join("sds.sock");
    let listener = sds::bind(&socket).unwrap();
    let (certificates, served) = watch::channel(None);
    tokio::spawn(sds::serve(listener, socket.clone(), served));
    let ca = Arc::new(TestCa::new(refuses));
    let workload = Workload {
        instance: InstanceRef {
            deployment: "sample".into(),
            instance_id: "i-1".into(),
        },
        spiffe_id: SPIFFE_ID.into(),
    };
    tokio::spawn(keep_certified(workload, SharedCa(ca.clone()), certificates));
    (ca, socket)
}

/// The serial number of the workload certificate Envoy holds, if it holds ours.
fn workload_serial(certs: &Value) -> Option<String> {
    certs["certificates"].as_array()?.iter().find_map(|entry| {
        let leaf = &entry["cert_chain"][0];
        let ours = leaf["subject_alt_names"]
            .as_array()?
            .iter()
            .any(|san| san["uri"] == SPIFFE_ID);
        ours.then(|| leaf["serial_number"].as_str().map(str::to_string))?
    })
}

/// A real Envoy, bootstrapped as `boshy envoy-bootstrap --sds-socket` renders it, takes the
/// certificate through the `sds-grpc` cluster for a listener that names `default` and
/// `ROOTCA` the way xDS resources do, and takes the renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_envoy_takes_the_certificate_and_its_renewal_through_sds_grpc() {
    let _logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (_ca, socket) = start_agent(dir.path(), |_| false);

    let admin = loopback_listener().await.1;
    let probe_port = loopback_listener().await.1.port();
    let node = NodeIdentity {
        deployment: "sample".into(),
        instance_group: "banana".into(),
        instance_id: "i-1".into(),
        index: None,
        az: None,
        ip: "127.0.0.1".parse().unwrap(),
        service_name: None,
    };
    let yaml = render_with_sds(
        &node,
        &["127.0.0.1:1".to_string()],
        admin,
        AdsMode::default(),
        None,
        Some(&socket),
    )
    .unwrap();
    let mut bootstrap: Value = serde_yaml::from_str(&yaml).unwrap();
    // No pilot here: the listener that needs the secrets is static instead of from ADS.
    bootstrap
        .as_object_mut()
        .unwrap()
        .remove("dynamic_resources");
    let sds_config = json!({
        "api_config_source": {
            "api_type": "GRPC",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
            "transport_api_version": "V3",
        },
        "resource_api_version": "V3",
    });
    bootstrap["static_resources"]["listeners"] = json!([{
        "name": "inbound_mtls",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": probe_port}},
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": "inbound_mtls",
                    "cluster": "sds-grpc",
                },
            }],
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "tls_certificate_sds_secret_configs": [{"name": WORKLOAD_SECRET, "sds_config": sds_config}],
                        "validation_context_sds_secret_config": {"name": TRUST_BUNDLE_SECRET, "sds_config": sds_config},
                    },
                },
            },
        }],
    }]);
    let envoy = Envoy::start(&serde_json::to_string(&bootstrap).unwrap(), admin);

    let first = envoy
        .wait_for("the workload certificate", "/certs", workload_serial)
        .await;
    let held_after = started.elapsed();
    envoy
        .wait_for(
            "the listener warmed",
            "/listeners?format=json",
            |listeners| listeners.to_string().contains("inbound_mtls").then_some(()),
        )
        .await;
    eprintln!(
        "Envoy held the workload certificate {} ms after the agent started",
        held_after.as_millis()
    );
    let renewed = envoy
        .wait_for("the renewed certificate", "/certs", |certs| {
            workload_serial(certs).filter(|serial| *serial != first)
        })
        .await;
    assert_ne!(renewed, first);
    assert!(
        !envoy.log_text().contains("rejected"),
        "Envoy refused an update:\n{}",
        envoy.log_text()
    );
}

/// A pilot of the test: `POST /v1/identity/csr` signed by `ca`, on plain HTTP.
async fn pilot(ca: Arc<TestCa>) -> String {
    let signer = SharedCa(ca);
    let app = axum::Router::new().route(
        CSR_PATH,
        axum::routing::post(
            move |axum::Json(request): axum::Json<CsrRequest>| async move {
                match signer.sign(&request).await {
                    Ok(answer) => Ok(axum::Json(answer)),
                    Err(err) => Err((axum::http::StatusCode::FORBIDDEN, err.to_string())),
                }
            },
        ),
    );
    let (listener, address) = loopback_listener().await;
    tokio::spawn(async move { axum::serve(listener, app).await });
    address.to_string()
}

/// The agent asks the pilots in turn: one that is down and one that refuses are passed over
/// for the one that signs, and the wire's JSON goes both ways.
#[tokio::test]
async fn the_pilots_are_asked_in_turn_until_one_signs() {
    let down = loopback_listener().await.1.to_string(); // closed once the listener drops
    let refusing = pilot(Arc::new(TestCa::new(|_| true))).await;
    let signing_ca = Arc::new(TestCa::new(|_| false));
    let signing = pilot(signing_ca.clone()).await;
    let signer =
        PilotSigner::new(&[down.clone(), refusing.clone(), signing.clone()], None).unwrap();
    let (certificates, mut served) = watch::channel(None);
    let workload = Workload {
        instance: InstanceRef {
            deployment: "sample".into(),
            instance_id: "i-1".into(),
        },
        spiffe_id: SPIFFE_ID.into(),
    };
    tokio::spawn(keep_certified(workload, signer, certificates));
    let certificate =
        tokio::time::timeout(Duration::from_secs(10), served.wait_for(|c| c.is_some()))
            .await
            .expect("signed in time")
            .unwrap()
            .clone()
            .unwrap();
    assert_eq!(certificate.spiffe_id, SPIFFE_ID);
    assert_eq!(certificate.trust_bundle, signing_ca.cert.pem());
    assert_eq!(
        signing_ca.seen.lock().unwrap().len(),
        1,
        "one request signed"
    );
    assert_eq!(
        san_of(&certificate.certificate_chain),
        [rcgen::SanType::URI(
            rcgen::Ia5String::try_from(SPIFFE_ID).unwrap()
        )]
    );

    // With every pilot failing, the error names each.
    let none = PilotSigner::new(&[down.clone(), refusing.clone()], None).unwrap();
    let request = signing_ca.seen.lock().unwrap()[0].clone();
    let err = none.sign(&request).await.unwrap_err().to_string();
    assert!(
        err.contains(&down) && err.contains(&refusing) && err.contains("403"),
        "{err}"
    );
}

/// With the pilots down after the first certificate, SDS keeps serving it until it expires,
/// then withdraws it (an error in the log): an Envoy that connects then gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_pilots_down_the_certificate_is_served_until_it_expires() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let (_ca, socket) = start_agent(dir.path(), |attempt| attempt > 1);
    let mut client = sds_client(socket).await;
    let fetch = |client: &mut SecretDiscoveryServiceClient<Channel>| {
        let mut client = client.clone();
        async move { client.fetch_secrets(request("", "")).await }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        match fetch(&mut client).await {
            Ok(response) => break response.into_inner(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(status) => panic!("no first certificate: {status}"),
        }
    };
    let expires = unix_now() + LIFETIME_S;
    // The renewal at half the lifetime fails, and so do the retries.
    tokio::time::sleep(Duration::from_secs(LIFETIME_S / 2 + 1)).await;
    if unix_now() + 1 < expires {
        let still = fetch(&mut client).await.expect("served while valid");
        assert_eq!(still.into_inner().version_info, first.version_info);
    }
    let deadline = Instant::now() + Duration::from_secs(LIFETIME_S + 65);
    loop {
        match fetch(&mut client).await {
            Err(status) if status.code() == tonic::Code::Unavailable => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("the expired certificate is still served: {other:?}"),
        }
    }
    assert!(unix_now() >= expires, "withdrawn only once expired");
    let log = logs.text();
    assert!(log.contains("expired unrenewed"), "{log}");
    assert!(
        log.contains("s left"),
        "the failures say how long is left: {log}"
    );
}
