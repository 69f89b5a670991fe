//! Mutual TLS between the control plane and its clients, part of being locked down by default.
//!
//! - The pilot's xDS and name-table servers refuse a client without a certificate and one
//!   with a certificate from another CA, and serve one with a mesh certificate.
//! - Clients (the name-table follower, Envoy) refuse a pilot whose certificate is from another
//!   CA or is for another name.
//! - A real Envoy with the TLS bootstrap connects and accepts the pushed config.
//! - The BOSH side: the jobs cannot be rendered without certificates, and the manifests
//!   generate them from one CA shared by the control plane and the runtime-config addon.
//!
//! The Envoy test runs in a network namespace of its own (root, as in CI); Envoy comes from
//! env `BOSHY_ENVOY`, else `envoy` on PATH.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use boshy::catalog::model::{Catalog, Endpoint, Protocol};
use boshy::catalog::testing::{self, endpoint, service};
use boshy::config::{ClientTls, ServerTls};
use boshy::names::table::NameTable;
use boshy::tls;
use boshy::xds::bootstrap::{render_with_tls, AdsMode, NodeIdentity};
use boshy_lab::jobs::{self, InstanceSpec, JobRender, Link};
use boshy_lab::pki::{Ca, PILOT_SERVER_NAME};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use boshy_test_support::envoy::{
    captured_logs, in_private_netns, loopback_listener, Envoy, DEADLINE,
};
use boshy_test_support::jobs::pilot_link;

/// A CA with a pilot certificate (for the pilots' fixed name) and a client certificate, as
/// PEM files.
struct Mesh {
    ca: Ca,
    dir: tempfile::TempDir,
}

impl Mesh {
    fn new(ca_name: &str) -> Mesh {
        let mesh = Mesh {
            ca: Ca::new(ca_name).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        };
        mesh.write("ca.pem", &mesh.ca.cert_pem());
        let server = mesh.ca.server(PILOT_SERVER_NAME).unwrap();
        mesh.write("server.pem", &server.cert_pem);
        mesh.write("server.key", &server.key_pem);
        let client = mesh.ca.client("test client").unwrap();
        mesh.write("client.pem", &client.cert_pem);
        mesh.write("client.key", &client.key_pem);
        mesh
    }

    fn write(&self, file: &str, pem: &str) {
        std::fs::write(self.path(file), pem).unwrap();
    }

    /// A pilot certificate this CA issued for another name.
    fn server_for(&self, name: &str) -> ServerTls {
        let issued = self.ca.server(name).unwrap();
        self.write(&format!("{name}.pem"), &issued.cert_pem);
        self.write(&format!("{name}.key"), &issued.key_pem);
        ServerTls {
            cert_path: self.path(&format!("{name}.pem")),
            key_path: self.path(&format!("{name}.key")),
            ..self.server()
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn server(&self) -> ServerTls {
        ServerTls {
            ca_cert_path: self.path("ca.pem"),
            cert_path: self.path("server.pem"),
            key_path: self.path("server.key"),
        }
    }

    fn client(&self) -> ClientTls {
        ClientTls {
            ca_cert_path: self.path("ca.pem"),
            cert_path: self.path("client.pem"),
            key_path: self.path("client.key"),
            server_name: PILOT_SERVER_NAME.into(),
        }
    }

    /// A client that trusts this mesh's pilots but presents `other`'s client certificate.
    fn client_with_certificate_of(&self, other: &Mesh) -> ClientTls {
        ClientTls {
            cert_path: other.path("client.pem"),
            key_path: other.path("client.key"),
            ..self.client()
        }
    }

    /// A client that verifies the pilot but presents no certificate at all.
    fn client_without_certificate(&self) -> rustls::ClientConfig {
        boshy_test_support::tls::without_certificate(&self.path("ca.pem"))
    }
}

fn catalog(version: u64) -> Arc<Catalog> {
    Arc::new(testing::catalog(
        version,
        [service("sample", "banana", "web")
            .vip([169, 254, 255, 3])
            .port("http", 8080, Protocol::Http)
            .endpoint(Endpoint {
                az: Some("z1".into()),
                index: Some(0),
                ..endpoint("127.0.0.7")
            })],
    ))
}

fn log_lines(containing: &[&str]) -> Vec<String> {
    let text = captured_logs().text();
    text.lines()
        .filter(|line| containing.iter().all(|c| line.contains(c)))
        .map(str::to_string)
        .collect()
}

/// Connects with TLS and speaks the HTTP/2 client preface; Ok when the server answers with its
/// SETTINGS frame (it is serving gRPC), else what went wrong. In TLS 1.3 a refused client
/// certificate surfaces after the client's side of the handshake, at the first read.
async fn h2_settings_from(
    address: SocketAddr,
    mut config: rustls::ClientConfig,
) -> Result<(), String> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    let attempt = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(PILOT_SERVER_NAME).unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // Preface, then an empty SETTINGS frame (length 0, type 4, flags 0, stream 0).
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        tls.write_all(&hello)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut header = [0u8; 9];
        tls.read_exact(&mut header)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if header[3] == 4 {
            Ok(())
        } else {
            Err(format!(
                "the first frame is of type {}, not SETTINGS",
                header[3]
            ))
        }
    };
    tokio::time::timeout(DEADLINE, attempt)
        .await
        .unwrap_or_else(|_| Err("no answer".into()))
}

#[tokio::test]
async fn xds_serves_only_clients_with_a_certificate_from_the_mesh_ca() {
    captured_logs();
    let mesh = Mesh::new("mesh CA");
    let other = Mesh::new("another CA");
    let (listener, address) = loopback_listener().await;
    let (_catalogs, catalog_rx) = watch::channel(catalog(1));
    let server_config = tls::server_config(&mesh.server(), &[tls::ALPN_H2]).unwrap();
    let server = tokio::spawn(boshy::xds::server::serve_with_tls(
        listener,
        catalog_rx,
        Some(server_config),
    ));

    let valid = tls::client_config(&mesh.client()).unwrap();
    assert_eq!(h2_settings_from(address, valid.clone()).await, Ok(()));

    for attempt in 0..2 {
        let refused = h2_settings_from(address, mesh.client_without_certificate()).await;
        let reason = refused.expect_err("a client without a certificate is refused");
        assert!(
            reason.contains("CertificateRequired"),
            "attempt {attempt}: {reason}"
        );
    }
    let foreign = tls::client_config(&mesh.client_with_certificate_of(&other)).unwrap();
    let reason = h2_settings_from(address, foreign)
        .await
        .expect_err("a certificate from another CA is refused");
    assert!(reason.contains("UnknownCA"), "{reason}");
    // Served clients keep being served after refusals.
    assert_eq!(h2_settings_from(address, valid).await, Ok(()));
    server.abort();

    // The refusals are in the log, each reason once per peer however often it is retried.
    let no_certificate = log_lines(&["xDS server: refused a client", "peer sent no certificates"]);
    assert_eq!(no_certificate.len(), 1, "{no_certificate:#?}");
    assert!(no_certificate[0].contains("WARN"), "{no_certificate:#?}");
    let unknown_issuer = log_lines(&["xDS server: refused a client", "UnknownIssuer"]);
    assert_eq!(unknown_issuer.len(), 1, "{unknown_issuer:#?}");
}

/// GET the watch URL once with `config`; the error chain when it fails.
async fn watch_once(address: SocketAddr, config: rustls::ClientConfig) -> Result<(), String> {
    // Dialled by the pilots' name, so that a client verifying the usual way (by the URL's
    // host) can be used too.
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .resolve(PILOT_SERVER_NAME, address)
        .timeout(DEADLINE)
        .build()
        .unwrap();
    let url = format!(
        "https://{PILOT_SERVER_NAME}:{}/v1/names/watch",
        address.port()
    );
    let response = client.get(url).send().await.map_err(|e| chain(&e))?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    Ok(())
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn the_name_table_streams_only_to_followers_with_a_mesh_certificate() {
    let mesh = Mesh::new("mesh CA");
    let other = Mesh::new("another CA");
    let (listener, address) = loopback_listener().await;
    let (_catalogs, catalog_rx) = watch::channel(catalog(7));
    let server_config = tls::server_config(&mesh.server(), &tls::ALPN_HTTP).unwrap();
    let server = tokio::spawn(boshy::names::serve_tls(
        listener,
        catalog_rx,
        Default::default(),
        server_config,
        None,
    ));

    let refused = watch_once(address, mesh.client_without_certificate()).await;
    let reason = refused.expect_err("a follower without a certificate is refused");
    assert!(reason.contains("CertificateRequired"), "{reason}");
    let foreign = tls::client_config(&mesh.client_with_certificate_of(&other)).unwrap();
    let reason = watch_once(address, foreign)
        .await
        .expect_err("a follower with a certificate from another CA is refused");
    assert!(reason.contains("UnknownCA"), "{reason}");
    let plaintext = reqwest::get(format!("http://{address}/v1/names/watch")).await;
    assert!(
        plaintext.is_err(),
        "plain HTTP is not served: {plaintext:?}"
    );

    // The real follower, by bare host:port (https with TLS), gets the table.
    let (tx, mut tables) = watch::channel(Arc::new(NameTable::default()));
    let follower = tokio::spawn(boshy::names::follow(
        vec![address.to_string()],
        Some(tls::client_config(&mesh.client()).unwrap()),
        tx,
        None,
    ));
    tokio::time::timeout(DEADLINE, tables.wait_for(|t| t.version == 7))
        .await
        .expect("the follower with a mesh certificate gets the table")
        .unwrap();
    assert_eq!(
        tables
            .borrow()
            .names
            .get("web.banana.sample.boshy")
            .copied(),
        Some(Ipv4Addr::new(169, 254, 255, 3))
    );
    follower.abort();
    server.abort();
}

#[tokio::test]
async fn a_follower_refuses_a_pilot_it_cannot_verify() {
    let mesh = Mesh::new("mesh CA");
    let other = Mesh::new("another CA");
    // Both impostors trust the mesh's client certificates, so only the follower's check of
    // the pilot can stop the stream.
    let impostors = [
        (
            "a mesh certificate for another name",
            mesh.server_for("impostor.boshy-istio"),
            "not valid for name",
        ),
        (
            "a certificate for the right name from another CA",
            ServerTls {
                ca_cert_path: mesh.path("ca.pem"),
                ..other.server()
            },
            "UnknownIssuer",
        ),
    ];
    for (what, impostor, reason) in impostors {
        let (listener, address) = loopback_listener().await;
        let (_catalogs, catalog_rx) = watch::channel(catalog(3));
        let config = tls::server_config(&impostor, &tls::ALPN_HTTP).unwrap();
        let server = tokio::spawn(boshy::names::serve_tls(
            listener,
            catalog_rx,
            Default::default(),
            config,
            None,
        ));
        let refused = watch_once(address, tls::client_config(&mesh.client()).unwrap()).await;
        let error = refused.expect_err(what);
        assert!(error.contains(reason), "{what}: {error}");
        server.abort();
    }
}

/// Starts a real Envoy for apricot instance `name`, with ADS at `pilot` over mutual TLS.
async fn start_envoy(name: &str, pilot: SocketAddr, tls: &ClientTls) -> Envoy {
    let admin = loopback_listener().await.1;
    let node = NodeIdentity {
        deployment: "sample".into(),
        instance_group: "apricot".into(),
        instance_id: name.into(),
        index: Some(0),
        az: Some("z1".into()),
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        service_name: None,
    };
    let bootstrap = render_with_tls(
        &node,
        &[pilot.to_string()],
        admin,
        AdsMode::Delta,
        Some(tls),
    )
    .expect("bootstrap renders");
    Envoy::start(&bootstrap, admin)
}

#[test]
fn envoy_with_the_tls_bootstrap_takes_config_only_from_a_pilot_it_can_verify() {
    in_private_netns(|| async {
        captured_logs();
        let mesh = Mesh::new("mesh CA");
        let (_catalogs, catalog_rx) = watch::channel(catalog(1));
        let serve = |listener, tls: &ServerTls| {
            let config = tls::server_config(tls, &[tls::ALPN_H2]).unwrap();
            tokio::spawn(boshy::xds::server::serve_with_tls(
                listener,
                catalog_rx.clone(),
                Some(config),
            ))
        };
        let (listener, pilot) = loopback_listener().await;
        let _pilot = serve(listener, &mesh.server());
        let (listener, impostor) = loopback_listener().await;
        let _impostor = serve(listener, &mesh.server_for("impostor.boshy-istio"));

        let envoy = start_envoy("verified", pilot, &mesh.client()).await;
        let fooled = start_envoy("fooled", impostor, &mesh.client()).await;

        // Accepted the pushed clusters and listeners (and so ACKed them) over mutual TLS.
        envoy
            .wait_for_stat("cluster_manager.cds.update_success", |n| n >= 1)
            .await;
        envoy
            .wait_for_stat("listener_manager.lds.update_success", |n| n >= 1)
            .await;
        envoy
            .wait_for_stat("control_plane.connected_state", |n| n == 1)
            .await;
        envoy
            .wait_for_stat("cluster.xds_cluster.ssl.handshake", |n| n >= 1)
            .await;
        // The impostor's certificate is from the mesh CA but for another name: Envoy drops
        // the connection in the handshake and never takes its config.
        fooled
            .wait_for_stat("cluster.xds_cluster.ssl.fail_verify_san", |n| n >= 1)
            .await;
        assert_eq!(
            fooled.stat("cluster_manager.cds.update_success").await,
            Some(0)
        );
        assert_eq!(fooled.stat("control_plane.connected_state").await, Some(0));
    });
}

fn instance_spec() -> InstanceSpec {
    InstanceSpec {
        deployment: "sample-deployment".into(),
        name: "apricot".into(),
        id: "6d0e0b4c-1111-4a4a-9b9b-000000000003".into(),
        index: Some(0),
        az: Some("z1".into()),
        ip: "10.244.0.7".into(),
        address: "10.244.0.7".into(),
        bootstrap: true,
    }
}

/// Renders `job` with `properties` (and the bosh-pilot link for the addon's jobs) into `root`.
fn render_job(root: &Path, job: &str, properties: Value, link: Link) -> anyhow::Result<PathBuf> {
    let output = root.join("jobs").join(job);
    let links = if job == "bosh-pilot" {
        BTreeMap::new()
    } else {
        BTreeMap::from([("bosh-pilot".to_string(), link)])
    };
    let render = JobRender {
        name: job.into(),
        output: output.clone(),
        properties,
        links,
    };
    jobs::render(&jobs::release_dir(), &instance_spec(), &[render])?;
    Ok(output)
}

fn tls_property(mesh: &Mesh, who: &str) -> Value {
    let read = |file: &str| std::fs::read_to_string(mesh.path(file)).unwrap();
    json!({
        "ca": read("ca.pem"),
        "certificate": read(&format!("{who}.pem")),
        "private_key": read(&format!("{who}.key")),
    })
}

#[test]
fn the_jobs_need_the_mesh_certificates_and_render_mutual_tls_configs() {
    let pilot_properties = json!({"director": {
        "url": "https://10.0.0.6:25555",
        "client_secret": "s",
        "insecure_skip_tls_verify": true,
    }});
    let link = || {
        pilot_link(
            &["10.244.0.10"],
            json!({"tls_server_name": "pilot.mesh.internal"}),
        )
    };
    for (job, properties) in [
        ("bosh-pilot", pilot_properties.clone()),
        ("virtual-ip-agent", json!({})),
        ("bosh-envoy", json!({})),
    ] {
        let root = tempfile::tempdir().unwrap();
        let err =
            render_job(root.path(), job, properties, link()).expect_err("no certificates, no job");
        assert!(format!("{err:#}").contains("tls.ca"), "{job}: {err:#}");
    }

    let mesh = Mesh::new("mesh CA");
    let root = tempfile::tempdir().unwrap();
    let with_tls = |properties: Value, who: &str| {
        jobs::deep_merge(&properties, &json!({"tls": tls_property(&mesh, who)}))
    };
    let pilot = render_job(
        root.path(),
        "bosh-pilot",
        with_tls(pilot_properties, "server"),
        link(),
    )
    .unwrap();
    let agent = render_job(
        root.path(),
        "virtual-ip-agent",
        with_tls(json!({}), "client"),
        link(),
    )
    .unwrap();
    let envoy = render_job(
        root.path(),
        "bosh-envoy",
        with_tls(json!({}), "client"),
        link(),
    )
    .unwrap();
    let json_of = |path: PathBuf| -> Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };

    let pilot_config = json_of(pilot.join("config/pilot.yml"));
    assert_eq!(
        pilot_config["tls"]["cert_path"],
        "/var/vcap/jobs/bosh-pilot/config/tls/cert.pem"
    );
    assert!(pilot_config.get("insecure_plaintext").is_none());
    assert_eq!(
        std::fs::read_to_string(pilot.join("config/tls/key.pem")).unwrap(),
        std::fs::read_to_string(mesh.path("server.key")).unwrap()
    );
    let agent_config = json_of(agent.join("config/agent.yml"));
    assert_eq!(agent_config["pilots"], json!(["https://10.244.0.10:15011"]));
    assert_eq!(agent_config["tls"]["server_name"], "pilot.mesh.internal");
    let bootstrap = json_of(envoy.join("config/envoy.json"));
    let socket = &bootstrap["static_resources"]["clusters"][0]["transport_socket"]["typed_config"];
    assert_eq!(socket["sni"], "pilot.mesh.internal");
    assert_eq!(
        socket["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]
            ["matcher"]["exact"],
        "pilot.mesh.internal"
    );

    // The binaries accept what was rendered, certificate files included.
    jobs::rebase(&root.path().join("jobs"), root.path()).unwrap();
    for (subcommand, config) in [
        ("pilot", pilot.join("config/pilot.yml")),
        ("virtual-ip-agent", agent.join("config/agent.yml")),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_boshy"))
            .args([subcommand, "--check-config", "--config"])
            .arg(&config)
            .env_remove("BOSHY_DIRECTOR_CLIENT_SECRET")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{subcommand} --check-config: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn manifest(name: &str) -> serde_yaml::Value {
    let path = jobs::release_dir().join("manifests").join(name);
    serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn variables(doc: &serde_yaml::Value) -> BTreeMap<String, serde_yaml::Value> {
    doc["variables"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v.clone()))
        .collect()
}

#[test]
fn the_manifests_generate_every_certificate_from_one_ca_shared_with_the_addon() {
    const CA: &str = "/boshy_istio_ca";
    let control_plane = manifest("bosh-istio.yml");
    let runtime_config = manifest("runtime-config.yml");
    let (ours, addon) = (variables(&control_plane), variables(&runtime_config));
    assert_eq!(ours[CA]["type"], "certificate");
    assert_eq!(ours[CA]["options"]["is_ca"], true);
    assert_eq!(
        ours[CA], addon[CA],
        "both manifests declare the CA alike, so neither deploy regenerates it"
    );

    let pilot_job = &control_plane["instance_groups"][0]["jobs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "bosh-pilot")
        .unwrap()["properties"];
    let server = pilot_job["tls"].as_str().unwrap();
    let server = &ours[server.trim_start_matches("((").trim_end_matches("))")];
    let spec: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(jobs::release_dir().join("jobs/bosh-pilot/spec")).unwrap(),
    )
    .unwrap();
    let server_name = spec["properties"]["tls_server_name"]["default"].clone();
    assert_eq!(server_name, PILOT_SERVER_NAME);
    assert_eq!(server["options"]["ca"], CA);
    assert_eq!(server["options"]["common_name"], server_name);
    assert!(server["options"]["alternative_names"]
        .as_sequence()
        .unwrap()
        .contains(&server_name));
    assert_eq!(server["options"]["extended_key_usage"][0], "server_auth");

    for job in runtime_config["addons"][0]["jobs"].as_sequence().unwrap() {
        if job["release"] != "boshy-istio" {
            continue;
        }
        let reference = job["properties"]["tls"]
            .as_str()
            .unwrap_or_else(|| panic!("runtime-config.yml: {:?} has no tls", job["name"]));
        let name = reference.trim_start_matches("((").trim_end_matches("))");
        assert!(
            name.starts_with('/'),
            "{name}: one entry for every deployment"
        );
        assert_eq!(addon[name]["options"]["ca"], CA);
        assert_eq!(
            addon[name]["options"]["extended_key_usage"][0],
            "client_auth"
        );
    }
}
