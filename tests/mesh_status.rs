//! `boshy mesh status` against a real pilot xDS server, its HTTPS API and a real Envoy made
//! to NACK: `GET /v1/proxies` and the table name that Envoy, its listeners' NACK and Envoy's
//! error, while its clusters stay SYNCED; `boshy mesh diff` of that Envoy (the refused
//! listener still to be accepted, with the NACK) and `boshy mesh config` (what it is sent); an
//! agent's name-table stream with its instance and table; and `boshy mesh describe` of one of
//! its services. As root, in a private network
//! namespace (Envoy binds 127.0.0.1:15001).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use boshy::api::{Access, Proxies};
use boshy::catalog::model::{Catalog, Protocol, Service};
use boshy::catalog::testing;
use boshy::config::ServerTls;
use boshy::health::AgentRegistry;
use boshy::xds::bootstrap::{AdsMode, NodeIdentity};
use boshy::xds::proxy_status::{ProxiesReport, SyncState};
use boshy_lab::pki::{Ca, PILOT_SERVER_NAME};
use boshy_test_support::envoy::{
    in_private_netns, loopback_listener, serve_xds, start_envoy, DEADLINE,
};
use tokio::sync::watch;

const DB_LISTENER: &str = "169.254.255.2_5432";
/// A service on the outbound listener's own address (the catalog never builds one: VIPs are
/// link-local): Envoy refuses its listener.
const BAD_LISTENER: &str = "127.0.0.1_15001";
/// The instance of the catalog's endpoint, 127.0.0.1 (`testing::endpoint`'s name).
const AGENT_INSTANCE: &str = "instance-127.0.0.1";

fn service(job: &str, vip: Ipv4Addr, port: u16) -> Service {
    testing::service("sample", "banana", job)
        .vip(vip)
        .port("tcp", port, Protocol::Tcp)
        .endpoint(testing::endpoint("127.0.0.1"))
        .build()
}

fn catalog(version: u64, services: Vec<Service>) -> Arc<Catalog> {
    Arc::new(testing::catalog(version, services))
}

/// The mesh CA, the pilot's certificate and an operator's client certificate, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("mesh").unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        let write = |file: &str, pem: &str| std::fs::write(pki.path(file), pem).unwrap();
        write("ca.pem", &ca.cert_pem());
        let server = ca.server(PILOT_SERVER_NAME).unwrap();
        write("server.pem", &server.cert_pem);
        write("server.key", &server.key_pem);
        let client = ca.client("operator").unwrap();
        write("client.pem", &client.cert_pem);
        write("client.key", &client.key_pem);
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// `boshy mesh <command> --pilot <api> <args>`: exit success, stdout, stderr.
async fn mesh(command: &[&str], api: &str, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_boshy"))
        .arg("mesh")
        .args(command)
        .args(["--pilot", api])
        .args(args)
        .env_remove("BOSH_PILOT_TOKEN")
        .output()
        .await
        .expect("boshy runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `boshy mesh status --json` until `done` holds of the report (at most `DEADLINE`).
async fn status_until(
    api: &str,
    credentials: &[&str],
    what: &str,
    done: impl Fn(&ProxiesReport) -> bool,
) -> ProxiesReport {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (ok, stdout, stderr) =
            mesh(&["status"], api, &[credentials, &["--json"]].concat()).await;
        assert!(ok, "{stderr}");
        let report: ProxiesReport = serde_json::from_str(&stdout).expect("the API's JSON");
        if done(&report) {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} in {stdout}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn mesh_status_names_the_envoy_that_nacked_and_its_error() {
    in_private_netns(|| async {
        let (catalog_tx, catalog_rx) = watch::channel(catalog(
            1,
            vec![service("db", Ipv4Addr::new(169, 254, 255, 2), 5432)],
        ));
        let (xds, snapshots, board) = serve_xds(catalog_rx.clone()).await;
        // The names server, where agents follow the table (this one is the test's).
        let agents = Arc::new(AgentRegistry::default());
        let (names_listener, names) = loopback_listener().await;
        tokio::spawn(boshy::names::serve(
            names_listener,
            catalog_rx.clone(),
            agents.clone(),
            None,
        ));
        let pki = Pki::new();
        let (api_listener, api) = loopback_listener().await;
        let tls = boshy::tls::api_server_config(&ServerTls {
            ca_cert_path: pki.path("ca.pem"),
            cert_path: pki.path("server.pem"),
            key_path: pki.path("server.key"),
        })
        .unwrap();
        tokio::spawn(boshy::api::serve_tls(
            api_listener,
            catalog_rx,
            watch::channel(None).1,
            watch::channel(None).1,
            Proxies {
                board,
                snapshots,
                name_streams: agents.name_streams().clone(),
                traffic: agents.traffic().clone(),
            },
            tls,
            Access {
                tokens: None,
                workloads: None,
            },
        ));
        let api = format!("https://{api}");
        let pem = |file: &str| pki.path(file).to_str().unwrap().to_string();
        let (ca, cert, key) = (pem("ca.pem"), pem("client.pem"), pem("client.key"));
        let with_certificate = ["--ca", &ca, "--cert", &cert, "--key", &key];

        let node = NodeIdentity {
            deployment: "sample".into(),
            instance_group: "apricot".into(),
            instance_id: "0f3c-apricot".into(),
            index: Some(3),
            az: Some("z1".into()),
            ip: "127.0.0.1".parse().unwrap(),
            service_name: None,
        };
        let envoy = start_envoy(&node, xds, AdsMode::Delta).await;
        envoy
            .wait_for("the db listener", "/listeners?format=json", |v| {
                let listeners = v["listener_statuses"].as_array()?;
                listeners
                    .iter()
                    .any(|l| l["name"] == DB_LISTENER)
                    .then_some(())
            })
            .await;

        catalog_tx
            .send(catalog(
                2,
                vec![
                    service("db", Ipv4Addr::new(169, 254, 255, 2), 5432),
                    service("bad", Ipv4Addr::LOCALHOST, 15001),
                ],
            ))
            .unwrap();
        envoy
            .wait_for_stat("listener_manager.lds.update_rejected", |n| n >= 1)
            .await;

        // The JSON: the Envoy by its BOSH instance, LDS rejected naming the listener.
        let report = status_until(&api, &with_certificate, "a NACK", |report| {
            let lds = report.proxies.first().and_then(|p| p.types.get("lds"));
            lds.is_some_and(|lds| lds.state == SyncState::Nack)
        })
        .await;
        assert_eq!(report.proxies.len(), 1, "{report:?}");
        let proxy = &report.proxies[0];
        assert_eq!(proxy.node, node.node_id());
        assert_eq!(
            (
                proxy.ads.as_str(),
                proxy.deployment.as_deref(),
                proxy.instance_group.as_deref(),
                proxy.instance_id.as_deref(),
                proxy.index,
                proxy.address.as_deref()
            ),
            (
                "delta",
                Some("sample"),
                Some("apricot"),
                Some("0f3c-apricot"),
                Some(3),
                Some("127.0.0.1")
            )
        );
        let nack = proxy.types["lds"].last_nack.as_ref().unwrap();
        assert_eq!(nack.resource.as_deref(), Some(BAD_LISTENER), "{nack:?}");
        assert!(nack.error.contains("duplicate address"), "{nack:?}");
        assert_eq!(proxy.types["cds"].state, SyncState::Synced, "{proxy:?}");
        assert!(proxy.last_sync.is_some());
        assert_eq!(report.snapshot.map(|s| s.seq), Some(2));

        // `boshy mesh diff`: the listener that Envoy refused is still to be accepted, beside
        // its NACK; what it accepted of the clusters is what it is sent. `--json` keeps the
        // exit code: 1, they differ.
        let json_with_certificate = [&with_certificate[..], &["--json"]].concat();
        let (in_sync, diff, stderr) =
            mesh(&["diff", "apricot/3"], &api, &json_with_certificate).await;
        assert!(!in_sync, "{stderr}");
        let diff: serde_json::Value = serde_json::from_str(&diff).expect("the API's JSON");
        let of_type = |name: &str| {
            diff["types"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["type"] == name)
                .unwrap_or_else(|| panic!("no {name} in {diff}"))
                .clone()
        };
        let lds = of_type("lds");
        assert!(
            lds["added"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == BAD_LISTENER),
            "{lds}"
        );
        assert!(
            lds["nack"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("duplicate address")),
            "{lds}"
        );
        let cds = of_type("cds");
        for change in ["added", "removed", "changed"] {
            assert_eq!(cds[change], serde_json::json!([]), "{cds}");
        }
        // `boshy mesh config`: both listeners are what the pilot sends it.
        let (ok, config, stderr) = mesh(
            &["config", "apricot/3", "listeners"],
            &api,
            &json_with_certificate,
        )
        .await;
        assert!(ok, "{stderr}");
        let config: serde_json::Value = serde_json::from_str(&config).expect("the API's JSON");
        let listeners: Vec<&str> = config["types"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(
            listeners.contains(&DB_LISTENER) && listeners.contains(&BAD_LISTENER),
            "{config}"
        );

        // An agent follows the table, naming its instance (listed at its address).
        let mut agent = reqwest::get(format!(
            "http://{names}/v1/names/watch?deployment=sample&instance={AGENT_INSTANCE}"
        ))
        .await
        .unwrap();
        assert!(agent.chunk().await.unwrap().is_some(), "the table");
        let agents = status_until(&api, &with_certificate, "a verified agent", |report| {
            report.agents.iter().any(|a| a.verified && a.table_current)
        })
        .await
        .agents;
        assert_eq!(agents.len(), 1, "{agents:?}");
        assert_eq!(
            (
                agents[0].deployment.as_deref(),
                agents[0].instance_id.as_deref(),
                agents[0].address.as_str(),
                agents[0].table_version
            ),
            (Some("sample"), Some(AGENT_INSTANCE), "127.0.0.1", Some(2))
        );

        // The table.
        let (ok, table, stderr) = mesh(&["status"], &api, &with_certificate).await;
        assert!(ok, "{stderr}");
        let row = table
            .lines()
            .find(|l| l.starts_with("apricot/3 "))
            .unwrap_or_else(|| panic!("no row for apricot/3:\n{table}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        // NAME, DEPLOYMENT, CDS, LDS, EDS.
        assert_eq!(
            cells[..5],
            ["apricot/3", "sample", "SYNCED", "NACK", "SYNCED"],
            "{table}"
        );
        let error = table
            .lines()
            .find(|l| l.starts_with(&format!("apricot/3 LDS {BAD_LISTENER} ")))
            .unwrap_or_else(|| panic!("no NACK line:\n{table}"));
        assert!(error.contains("duplicate address"), "{error}");
        let agent_row = format!("sample/{AGENT_INSTANCE}  127.0.0.1  current  verified");
        assert!(
            table.lines().any(|l| l == agent_row),
            "no {agent_row:?} in\n{table}"
        );
        drop(agent);

        // The service: its VIP, port and endpoint.
        let (ok, text, stderr) = mesh(
            &["describe", "db.banana.sample.boshy"],
            &api,
            &with_certificate,
        )
        .await;
        assert!(ok, "{stderr}");
        assert!(
            text.starts_with("db.banana.sample.boshy\nVIP        169.254.255.2\n"),
            "{text}"
        );
        assert!(text.contains("PORTS      tcp 5432 (tcp)\n"), "{text}");
        assert!(text.contains("ENDPOINTS  1 of 1 healthy\n"), "{text}");
        let (ok, _, stderr) = mesh(
            &["describe", "nothing.banana.sample.boshy"],
            &api,
            &with_certificate,
        )
        .await;
        assert!(!ok && stderr.contains("404"), "{stderr}");

        // No credentials: the pilot's refusal, and no data.
        let (ok, stdout, stderr) = mesh(&["status"], &api, &["--ca", &ca]).await;
        assert!(!ok && stdout.is_empty(), "{stdout}");
        assert!(stderr.contains("401"), "{stderr}");
    });
}
