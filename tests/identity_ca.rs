//! The pilot signs workload certificates (docs/security.md, "Certificate authority"), checked
//! on the real `boshy pilot` against the director simulator, over the names port with the mesh
//! client certificate: a CSR from the address the director lists its instance at gets a
//! certificate for the instance group's SPIFFE ID that verifies against the trust bundle,
//! with the configured lifetime; another identity, a malformed CSR, a replay and an instance
//! not listed at the request's address are refused, each counted in `/metrics` and logged
//! once; the CA key is in neither the pilot's trace log nor `/metrics`. And without
//! `identity`, the endpoint answers 404.
//!
//! Everything runs on loopback: the simulator lists its instances in 127.10.0.0/24, and each
//! request leaves from the address of the instance it speaks for.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use boshy::config::ClientTls;
use boshy::identity::wire::{CsrAnswer, CsrRequest, CSR_PATH};
use boshy_director_sim::{self as sim, SimHandle, SimOptions};
use boshy_lab::pki::{Ca, PILOT_SERVER_NAME};
use boshy_test_support::dns_agent::free_port;
use boshy_test_support::process::KilledOnDrop;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use reqwest::StatusCode;
use rustls::pki_types::{CertificateDer, UnixTime};
use serde_json::Value;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

const BOSHY: &str = env!("CARGO_BIN_EXE_boshy");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/director");
const SECRET: &str = "pilot-secret";
const TTL_SECONDS: u64 = 3600;
/// apricot, the first instance group of the sample deployment, is listed from .10 on.
const DEPLOYMENT: &str = "sample-deployment";

/// The mesh CA (pilot and client certificates) and the workload CA under it, as files.
struct Pki {
    dir: PathBuf,
    workload_key: String,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let mesh = Ca::new("mesh ca").unwrap();
        let write = |file: &str, pem: &str| std::fs::write(dir.join(file), pem).unwrap();
        write("mesh-ca.pem", &mesh.cert_pem());
        let server = mesh.server(PILOT_SERVER_NAME).unwrap();
        write("server.pem", &server.cert_pem);
        write("server.key", &server.key_pem);
        let client = mesh.client("virtual-ip-agent").unwrap();
        write("client.pem", &client.cert_pem);
        write("client.key", &client.key_pem);
        // The workload CA, as the manifests declare it: an intermediate under the mesh CA;
        // the job renders its certificate followed by its `ca`.
        let mesh_key = KeyPair::from_pem(&mesh.key_pem()).unwrap();
        let mesh_issuer = CertificateParams::from_ca_cert_pem(&mesh.cert_pem())
            .unwrap()
            .self_signed(&mesh_key)
            .unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "workload ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let workload = params.signed_by(&key, &mesh_issuer, &mesh_key).unwrap();
        write(
            "workload-ca.pem",
            &format!("{}{}", workload.pem(), mesh.cert_pem()),
        );
        let workload_key = key.serialize_pem();
        write("workload-ca.key", &workload_key);
        Pki {
            dir: dir.to_path_buf(),
            workload_key,
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A names-port client presenting the mesh client certificate, leaving from `from`.
    fn client(&self, names: SocketAddr, from: IpAddr) -> reqwest::Client {
        let tls = boshy::tls::client_config(&ClientTls {
            ca_cert_path: self.path("mesh-ca.pem"),
            cert_path: self.path("client.pem"),
            key_path: self.path("client.key"),
            server_name: PILOT_SERVER_NAME.into(),
        })
        .unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve(PILOT_SERVER_NAME, names)
            .local_address(from)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// The key's base64 lines: any of them in a text is a leak.
    fn key_lines(&self) -> Vec<&str> {
        self.workload_key
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect()
    }
}

/// `boshy pilot`, its stderr in a file, killed when dropped.
struct Pilot {
    _child: KilledOnDrop,
    log: PathBuf,
    names: SocketAddr,
    api: SocketAddr,
}

impl Pilot {
    fn start(dir: &Path, sim: &SimHandle, pki: &Pki, identity: bool) -> Pilot {
        std::fs::write(dir.join("director-ca.pem"), sim.ca_pem()).unwrap();
        std::fs::write(dir.join("secret"), SECRET).unwrap();
        let names = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let identity = if identity {
            format!(
                "identity:\n  certificate_ttl_seconds: {TTL_SECONDS}\n  ca:\n    \
                 certificate: {}\n    private_key: {}\n",
                pki.path("workload-ca.pem").display(),
                pki.path("workload-ca.key").display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "director:\n  url: {}\n  client: pilot\n  client_secret_file: {}\n  \
             ca_cert_path: {}\n  poll_interval_seconds: 1\n\
             vip_store: file\nvip_state_path: {}\n\
             tls:\n  ca_cert_path: {}\n  cert_path: {}\n  key_path: {}\n\
             api:\n  insecure_open: true\n\
             listen:\n  api: {api}\n  xds: 127.0.0.1:{}\n  names: {names}\n{identity}",
            sim.director_url(),
            dir.join("secret").display(),
            dir.join("director-ca.pem").display(),
            dir.join("vips.json").display(),
            pki.path("mesh-ca.pem").display(),
            pki.path("server.pem").display(),
            pki.path("server.key").display(),
            free_port(),
        );
        let path = dir.join("pilot.yml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("pilot.log");
        let child = Command::new(BOSHY)
            .args(["pilot", "--config"])
            .arg(&path)
            .env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Pilot {
            _child: KilledOnDrop(child),
            log,
            names,
            api,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Option<(StatusCode, String)> {
        let response = reqwest::get(format!("http://{}{path}", self.api))
            .await
            .ok()?;
        Some((response.status(), response.text().await.ok()?))
    }

    /// Waits until the pilot has its first catalog from the director (and so its list of
    /// instances).
    async fn wait_ready(&self) {
        for _ in 0..300 {
            if let Some((StatusCode::OK, _)) = self.get("/healthz").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the pilot never became ready:\n{}", self.log_text());
    }

    async fn metrics(&self) -> String {
        self.get("/metrics").await.expect("metrics").1
    }
}

async fn start_sim() -> SimHandle {
    let mut options = SimOptions::new(SECRET);
    options.fixtures = Some(FIXTURES.into());
    options.instance_network = "127.10.0.0/24".parse().unwrap();
    options.task_delay = Duration::from_millis(10);
    sim::start(options).await.unwrap()
}

/// The id and address of every instance of `group` in the sample deployment.
async fn instances(sim: &SimHandle, group: &str) -> Vec<(String, IpAddr)> {
    let state: Value = reqwest::get(format!("{}/_sim/state", sim.control_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deployment = state["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == DEPLOYMENT)
        .unwrap();
    deployment["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["job_name"] == group)
        .map(|i| {
            let ip = i["ips"][0].as_str().unwrap().parse().unwrap();
            (i["id"].as_str().unwrap().to_string(), ip)
        })
        .collect()
}

fn workload_id(group: &str) -> String {
    format!("spiffe://boshy/deployment/{DEPLOYMENT}/instance_group/{group}")
}

/// A CSR for `id` with a fresh P-256 key.
fn csr(id: &str) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn request(instance: &str, csr: String) -> CsrRequest {
    CsrRequest {
        deployment: DEPLOYMENT.into(),
        instance: instance.into(),
        csr,
        nonce: format!("{:032x}", rand::random::<u128>()),
        issued_at: unix_now(),
    }
}

async fn send(
    client: &reqwest::Client,
    names: SocketAddr,
    body: &CsrRequest,
) -> (StatusCode, String) {
    let url = format!("https://{PILOT_SERVER_NAME}:{}{CSR_PATH}", names.port());
    let response = client.post(url).json(body).send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

fn pems(text: &str) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(text.as_bytes())
        .map(|pem| pem.unwrap().contents)
        .collect()
}

/// The chain verifies against the trust bundle as a TLS client certificate would (webpki:
/// path, validity, clientAuth); its leaf carries exactly `id` and lives `TTL_SECONDS`.
fn assert_certificate_for(answer: &CsrAnswer, id: &str) {
    let chain = pems(&answer.certificate_chain);
    assert_eq!(
        chain.len(),
        2,
        "the leaf and the workload CA, not the mesh root"
    );
    let mut roots = rustls::RootCertStore::empty();
    for der in pems(&answer.trust_bundle) {
        roots.add(CertificateDer::from(der)).unwrap();
    }
    assert_eq!(roots.len(), 2, "the workload CA and the mesh CA above it");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let leaf = CertificateDer::from(chain[0].clone());
    let intermediates = [CertificateDer::from(chain[1].clone())];
    verifier
        .verify_client_cert(&leaf, &intermediates, UnixTime::now())
        .expect("the chain verifies against the trust bundle");

    let (_, parsed) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let san = parsed.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names, [GeneralName::URI(id)]);
    let validity = parsed.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    assert_eq!(
        lifetime,
        TTL_SECONDS as i64 + 60,
        "the TTL, backdated a minute"
    );
    assert_eq!(validity.not_after.timestamp() as u64, answer.not_after);
    let from_now = answer.not_after.abs_diff(unix_now() + TTL_SECONDS);
    assert!(from_now < 30, "not_after {} is now + ttl", answer.not_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pilot_signs_only_the_identity_of_the_instance_at_the_request_address() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let sim = start_sim().await;
    let pilot = Pilot::start(dir.path(), &sim, &pki, true);
    pilot.wait_ready().await;
    let apricots = instances(&sim, "apricot").await;
    let (apricot, apricot_ip) = apricots[0].clone();
    let from_apricot = pki.client(pilot.names, apricot_ip);

    // Accepted: the instance's own group identity, from its own address.
    let good = request(&apricot, csr(&workload_id("apricot")));
    let (status, body) = send(&from_apricot, pilot.names, &good).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", pilot.log_text());
    let answer: CsrAnswer = serde_json::from_str(&body).unwrap();
    assert_certificate_for(&answer, &workload_id("apricot"));

    // The same request again: a replay.
    let (status, body) = send(&from_apricot, pilot.names, &good).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("replayed"), "{body}");

    // Another group's identity, twice: refused, logged once.
    for _ in 0..2 {
        let other = request(&apricot, csr(&workload_id("banana")));
        let (status, body) = send(&from_apricot, pilot.names, &other).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(
            body.contains(&workload_id("apricot")),
            "names what it may have: {body}"
        );
    }

    // A malformed CSR.
    let malformed = request(
        &apricot,
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
    );
    let (status, body) = send(&from_apricot, pilot.names, &malformed).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("PKCS#10"), "{body}");

    // An instance the director does not list, and a listed one from another address.
    let (status, body) = send(
        &from_apricot,
        pilot.names,
        &request("no-such-instance", csr(&workload_id("apricot"))),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("lists no such instance"), "{body}");
    let (other_apricot, _) = apricots[1].clone();
    let impostor = request(&other_apricot, csr(&workload_id("apricot")));
    let (status, body) = send(&from_apricot, pilot.names, &impostor).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("another address"), "{body}");
    let unlisted_address = pki.client(pilot.names, IpAddr::V4(Ipv4Addr::new(127, 10, 0, 250)));
    let (status, _) = send(
        &unlisted_address,
        pilot.names,
        &request(&apricot, csr(&workload_id("apricot"))),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let metrics = pilot.metrics().await;
    for line in [
        "boshy_identity_certificates_issued_total 1",
        "boshy_identity_refusals_total{reason=\"replay\"} 1",
        "boshy_identity_refusals_total{reason=\"identity\"} 2",
        "boshy_identity_refusals_total{reason=\"bad_csr\"} 1",
        "boshy_identity_refusals_total{reason=\"not_listed\"} 3",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let log = pilot.log_text();
    let warned = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("certificate request refused"))
        .filter(|l| l.contains("reason=identity"))
        .count();
    assert_eq!(
        warned, 1,
        "one warning for the same refusal from the same peer:\n{log}"
    );
    assert!(log.contains("workload certificate issued"), "{log}");
    for line in pki.key_lines() {
        assert!(!log.contains(line), "the CA key is in the pilot's log");
        assert!(!metrics.contains(line), "the CA key is in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_identity_the_endpoint_says_it_is_not_configured() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let sim = start_sim().await;
    let pilot = Pilot::start(dir.path(), &sim, &pki, false);
    pilot.wait_ready().await;
    let (apricot, apricot_ip) = instances(&sim, "apricot").await[0].clone();
    let client = pki.client(pilot.names, apricot_ip);
    let (status, body) = send(
        &client,
        pilot.names,
        &request(&apricot, csr(&workload_id("apricot"))),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("identity is not configured"), "{body}");
}
