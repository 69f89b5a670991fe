//! Real `boshy pilot` processes with `workloads` on, against the director simulator, and the
//! clients of a joining VM and of an operator: what the tests of VMs outside BOSH share.
//!
//! Everything runs on loopback: the simulator lists its instances in 127.10.0.0/24 (the
//! tests' [`sim_options`]), and each VM leaves from an address of its own in 127.0.0.0/8.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use boshy::config::ClientTls;
use boshy_director_sim::{SimHandle, SimOptions};
use boshy_lab::pki::{Ca, PILOT_SERVER_NAME};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::dns_agent::free_port;
use crate::process::KilledOnDrop;
use crate::uaa::{client_credentials_token, sim_client};

/// The pilots' client secret at the simulator's UAA.
pub const SECRET: &str = "pilot-secret";
pub const RABBITMQ: &str = "legacy/rabbitmq";
pub const POSTGRES: &str = "legacy/postgres";
/// The WorkloadGroups of director config `legacy`.
const GROUPS: &str = "apiVersion: v1\nkind: List\nitems:\n\
- apiVersion: networking.istio.io/v1\n  kind: WorkloadGroup\n  metadata: {name: rabbitmq}\n  \
spec:\n    metadata: {labels: {app: rabbitmq}}\n    template: {ports: {tcp-amqp: 5672}}\n\
- apiVersion: networking.istio.io/v1\n  kind: WorkloadGroup\n  metadata: {name: postgres}\n  \
spec:\n    template: {ports: {tcp-pg: 5432}}\n";

/// The simulator's options for these tests: the fixtures' deployments, listed in
/// 127.10.0.0/24.
pub fn sim_options() -> SimOptions {
    let mut options = SimOptions::new(SECRET);
    options.fixtures = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/director").into());
    options.instance_network = "127.10.0.0/24".parse().unwrap();
    options.task_delay = Duration::from_millis(10);
    options
}

/// The mesh CA (with its key, which signs the joined VMs' certificates), the pilots'
/// certificate and a mesh client certificate (an operator's tool), as files.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let mesh = Ca::new("mesh ca").unwrap();
        let write = |file: &str, pem: &str| std::fs::write(dir.join(file), pem).unwrap();
        write("mesh-ca.pem", &mesh.cert_pem());
        write("mesh-ca.key", &mesh.key_pem());
        let server = mesh.server(PILOT_SERVER_NAME).unwrap();
        write("server.pem", &server.cert_pem);
        write("server.key", &server.key_pem);
        let client = mesh.client("prometheus").unwrap();
        write("client.pem", &client.cert_pem);
        write("client.key", &client.key_pem);
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The TLS of a client presenting the certificate in `cert`/`key`, as the agent's.
    pub fn client_tls(&self, cert: &Path, key: &Path) -> ClientTls {
        ClientTls {
            ca_cert_path: self.path("mesh-ca.pem"),
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            server_name: PILOT_SERVER_NAME.into(),
        }
    }

    /// An HTTPS client of a pilot's `port` trusting the mesh CA, leaving from `from`,
    /// presenting the certificate in `cert`/`key` or none.
    pub fn client(
        &self,
        port: SocketAddr,
        from: IpAddr,
        cert: Option<(&Path, &Path)>,
    ) -> reqwest::Client {
        let tls = match cert {
            Some((cert, key)) => boshy::tls::client_config(&self.client_tls(cert, key)).unwrap(),
            None => crate::tls::without_certificate(&self.path("mesh-ca.pem")),
        };
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve(PILOT_SERVER_NAME, port)
            .local_address(from)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }
}

/// The pilot's `workloads` durations a test chooses.
#[derive(Debug, Clone, Copy)]
pub struct Durations {
    /// `ttl_seconds`: a VM silent this long is out of the Envoys.
    pub ttl_seconds: u64,
    /// `certificate_ttl_seconds`: the joined VMs' certificates' lifetime (60 at least).
    pub certificate_ttl_seconds: u64,
    /// `deregister_after_seconds`: a VM silent this long is deregistered; `None`, the
    /// pilot's default.
    pub deregister_after_seconds: Option<u64>,
}

/// `boshy pilot`, its stderr in a file, killed when dropped.
pub struct Pilot {
    child: Option<KilledOnDrop>,
    config: PathBuf,
    log: PathBuf,
    pub names: SocketAddr,
    pub api: SocketAddr,
    pub xds: SocketAddr,
}

impl Pilot {
    /// A pilot named `name` (its config and log in `dir`) of the simulator `sim`, started,
    /// heartbeats every second.
    pub fn new(dir: &Path, name: &str, sim: &SimHandle, pki: &Pki, durations: Durations) -> Pilot {
        std::fs::write(dir.join("director-ca.pem"), sim.ca_pem()).unwrap();
        std::fs::write(dir.join("secret"), SECRET).unwrap();
        let names = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = format!(
            "director:\n  url: {}\n  client: pilot\n  client_secret_file: {}\n  \
             ca_cert_path: {}\n  poll_interval_seconds: 1\n\
             tls:\n  ca_cert_path: {}\n  cert_path: {}\n  key_path: {}\n\
             listen:\n  api: {api}\n  xds: {xds}\n  names: {names}\n\
             workloads:\n  mesh_ca_private_key: {}\n  heartbeat_seconds: 1\n  \
             ttl_seconds: {}\n  certificate_ttl_seconds: {}\n{}",
            sim.director_url(),
            dir.join("secret").display(),
            dir.join("director-ca.pem").display(),
            pki.path("mesh-ca.pem").display(),
            pki.path("server.pem").display(),
            pki.path("server.key").display(),
            pki.path("mesh-ca.key").display(),
            durations.ttl_seconds,
            durations.certificate_ttl_seconds,
            durations
                .deregister_after_seconds
                .map(|seconds| format!("  deregister_after_seconds: {seconds}\n"))
                .unwrap_or_default(),
        );
        let path = dir.join(format!("{name}.yml"));
        std::fs::write(&path, config).unwrap();
        let mut pilot = Pilot {
            child: None,
            config: path,
            log: dir.join(format!("{name}.log")),
            names,
            api,
            xds,
        };
        pilot.start();
        pilot
    }

    fn start(&mut self) {
        let child = Command::new(crate::workspace_binary("boshy"))
            .args(["pilot", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,boshy=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(KilledOnDrop(child));
    }

    /// Stops the pilot and starts it again on the same config.
    pub fn restart(&mut self) {
        self.child = None;
        self.start();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the API to answer `/healthz`.
    pub async fn wait_ready(&self, pki: &Pki) {
        let client = pki.client(self.api, Ipv4Addr::LOCALHOST.into(), None);
        for _ in 0..300 {
            let answer = client.get(self.url("/healthz")).send().await;
            if answer.is_ok_and(|r| r.status() == StatusCode::OK) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the pilot never became ready:\n{}", self.log_text());
    }

    /// `path` of the API.
    pub fn url(&self, path: &str) -> String {
        format!("https://{PILOT_SERVER_NAME}:{}{path}", self.api.port())
    }

    /// `path` of the names port.
    pub fn names_url(&self, path: &str) -> String {
        format!("https://{PILOT_SERVER_NAME}:{}{path}", self.names.port())
    }
}

/// An answer's status and body.
pub async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, String) {
    let response = request.send().await.expect("the pilot answers");
    (response.status(), response.text().await.unwrap())
}

/// `bosh update-config --type boshy-istio --name legacy`: the WorkloadGroups
/// [`RABBITMQ`] and [`POSTGRES`].
pub async fn post_groups(sim: &SimHandle) {
    let response = sim_client(sim)
        .post(format!("{}/configs", sim.director_url()))
        .bearer_auth(client_credentials_token(sim, SECRET).await)
        .json(&json!({"type": "boshy-istio", "name": "legacy", "content": GROUPS}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// A new P-256 key and a CSR for it (no name: the pilot decides the VM's identity), PEM.
pub fn key_and_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (key.serialize_pem(), csr)
}

/// `POST /v1/workloads/tokens` with the token `bearer`: the status and the answer.
pub async fn create_token(
    pilot: &Pilot,
    pki: &Pki,
    bearer: &str,
    group: &str,
    ttl: u64,
) -> (StatusCode, Value) {
    let client = pki.client(pilot.api, Ipv4Addr::LOCALHOST.into(), None);
    let request = client
        .post(pilot.url("/v1/workloads/tokens"))
        .bearer_auth(bearer)
        .json(&json!({"group": group, "ttl_seconds": ttl}));
    let (status, body) = answer(request).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A join token for `group`, once the pilot judged the rule configs holding it.
pub async fn first_token(pilot: &Pilot, pki: &Pki, admin: &str, group: &str) -> String {
    for _ in 0..100 {
        let (status, body) = create_token(pilot, pki, admin, group, 600).await;
        if status == StatusCode::CREATED {
            return body["token"].as_str().unwrap().to_string();
        }
        // 404 until this pilot judged the rule configs with the group.
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no token for {group}:\n{}", pilot.log_text());
}

/// `POST /v1/workloads/join` from `from`: the status and the body.
pub async fn join(
    pilot: &Pilot,
    pki: &Pki,
    from: IpAddr,
    token: &str,
    group: &str,
    csr: &str,
) -> (StatusCode, String) {
    let client = pki.client(pilot.api, from, None);
    let request = client
        .post(pilot.url("/v1/workloads/join"))
        .bearer_auth(token)
        .json(&json!({"group": group, "csr": csr, "labels": {"zone": "dc1"}}));
    answer(request).await
}

/// `GET /v1/workloads` with the token `bearer`.
pub async fn listing(pilot: &Pilot, pki: &Pki, bearer: &str) -> Value {
    let client = pki.client(pilot.api, Ipv4Addr::LOCALHOST.into(), None);
    let (status, body) = answer(client.get(pilot.url("/v1/workloads")).bearer_auth(bearer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until `check` holds of `pilot`'s `GET /v1/workloads`.
pub async fn wait_listing(
    pilot: &Pilot,
    pki: &Pki,
    bearer: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..150 {
        let listed = listing(pilot, pki, bearer).await;
        if check(&listed) {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what}: {}\n{}",
        listing(pilot, pki, bearer).await,
        pilot.log_text()
    );
}
