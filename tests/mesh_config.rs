//! `boshy mesh config` and `boshy mesh diff` through the real ADS server and the pilot's API on
//! loopback: an emulated Envoy of BOSH instance `sample/apricot/3` on a delta stream, whose
//! config as the API shows it is what it received, whose diff is empty once it ACKed, lists
//! what a catalog change brings before it answers, and keeps what it had after a NACK.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use boshy::api::{self, Proxies};
use boshy::xds::resources::ResourceType;
use boshy_xds_fleet::estate::{estate, Change};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc::Status;
use serde_json::Value as Json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt as _;

const PATIENCE: Duration = Duration::from_secs(10);
const INSTANCES: usize = 2;

/// One Envoy on a delta ADS stream, answering only when told to, remembering what it holds.
struct Envoy {
    requests: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    responses: tonic::Streaming<DeltaDiscoveryResponse>,
    /// Per type (`cds`, …), name → version of what it received.
    holds: BTreeMap<String, BTreeMap<String, String>>,
}

impl Envoy {
    async fn connect(xds: SocketAddr) -> Envoy {
        let text = |value: &str| Value {
            kind: Some(Kind::StringValue(value.into())),
        };
        let node = Node {
            id: "sidecar~10.0.0.5~apricot/6f1c~sample".into(),
            metadata: Some(Struct {
                fields: [
                    ("deployment", text("sample")),
                    ("instance_group", text("apricot")),
                    ("instance_id", text("6f1c")),
                    ("index", text("3")),
                ]
                .map(|(k, v)| (k.to_string(), v))
                .into(),
            }),
            ..Node::default()
        };
        let (requests, outgoing) = mpsc::unbounded_channel();
        for (t, node) in [
            (ResourceType::Cluster, Some(node)),
            (ResourceType::Listener, None),
        ] {
            requests
                .send(DeltaDiscoveryRequest {
                    node,
                    type_url: t.type_url().into(),
                    ..Default::default()
                })
                .unwrap();
        }
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
            .await
            .expect("connect to the ADS server");
        let responses = client
            .delta_aggregated_resources(UnboundedReceiverStream::new(outgoing))
            .await
            .expect("a delta stream")
            .into_inner();
        Envoy {
            requests,
            responses,
            holds: BTreeMap::new(),
        }
    }

    /// The next response, taken as Envoy takes one it accepts.
    async fn next(&mut self) -> DeltaDiscoveryResponse {
        let response = tokio::time::timeout(PATIENCE, self.responses.next())
            .await
            .expect("a response in time")
            .expect("the stream stays open")
            .expect("a response, not a status");
        let t = ResourceType::from_type_url(&response.type_url).expect("a type we know");
        let holds = self.holds.entry(t.short_name().into()).or_default();
        for resource in &response.resources {
            holds.insert(resource.name.clone(), resource.version.clone());
        }
        for name in &response.removed_resources {
            holds.remove(name);
        }
        response
    }

    fn answer(&self, response: &DeltaDiscoveryResponse, error: Option<&str>) {
        let error_detail = error.map(|message| Status {
            code: 3,
            message: message.into(),
            ..Status::default()
        });
        self.requests
            .send(DeltaDiscoveryRequest {
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                error_detail,
                ..Default::default()
            })
            .unwrap();
    }

    fn subscribe(&self, t: ResourceType, names: Vec<String>) {
        self.requests
            .send(DeltaDiscoveryRequest {
                type_url: t.type_url().into(),
                resource_names_subscribe: names,
                ..Default::default()
            })
            .unwrap();
    }
}

async fn get(api: SocketAddr, path: &str) -> Json {
    let response = reqwest::get(format!("http://{api}{path}")).await.unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// The `/diff` once it is taken against the snapshot of catalog `version` and `until` holds.
async fn diff_until(api: SocketAddr, version: u64, until: impl Fn(&Json) -> bool) -> Json {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let diff = get(api, "/v1/proxies/apricot/3/diff").await;
        if diff["snapshot"]["version"] == version && until(&diff) {
            return diff;
        }
        assert!(tokio::time::Instant::now() < deadline, "{diff:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Per type, name → version of the config the API shows.
fn config_versions(config: &Json) -> BTreeMap<String, BTreeMap<String, String>> {
    config["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let resources = t["resources"].as_array().unwrap().iter().map(|r| {
                let text = |key: &str| r[key].as_str().unwrap().to_string();
                (text("name"), text("version"))
            });
            (t["type"].as_str().unwrap().to_string(), resources.collect())
        })
        .collect()
}

/// `boshy mesh <args> apricot/3 --pilot http://<api>`: its exit code and output.
async fn mesh(api: SocketAddr, args: &[&str]) -> (i32, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_boshy"))
        .arg("mesh")
        .args(args)
        .args(["--pilot", &format!("http://{api}")])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap(), format!("{stdout}{stderr}"))
}

#[tokio::test]
async fn config_is_what_the_envoy_received_and_diff_what_it_has_not_accepted() {
    let (catalog_tx, catalog_rx) = watch::channel(Arc::new(estate(1, 2, INSTANCES)));
    let (xds, snapshots, board) = boshy_test_support::envoy::serve_xds(catalog_rx.clone()).await;
    let api_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = api_listener.local_addr().unwrap();
    let proxies = Proxies {
        board,
        snapshots,
        ..Proxies::none()
    };
    tokio::spawn(api::serve(
        api_listener,
        catalog_rx,
        watch::channel(None).1,
        watch::channel(None).1,
        proxies,
    ));

    // The Envoy takes clusters and listeners, then the endpoints of its clusters.
    let mut envoy = Envoy::connect(xds).await;
    for _ in 0..2 {
        let response = envoy.next().await;
        envoy.answer(&response, None);
    }
    let clusters: Vec<String> = envoy.holds["cds"].keys().cloned().collect();
    assert_eq!(clusters.len(), 2);
    envoy.subscribe(ResourceType::Endpoint, clusters);
    let endpoints = envoy.next().await;
    envoy.answer(&endpoints, None);

    let in_sync = diff_until(api, 1, |d| d["in_sync"] == true).await;
    let types: Vec<&str> = in_sync["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["cds", "eds", "lds"], "what it subscribed to");
    let config = get(api, "/v1/proxies/sample/apricot/3/config").await;
    assert_eq!(config_versions(&config), envoy.holds);
    let (code, text) = mesh(api, &["diff", "apricot/3"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(": in sync\nCDS  in sync\n"), "{text}");

    // A new service: its cluster and listener are pushed, not yet ACKed.
    let changed = Change::Service.apply(&catalog_tx.borrow(), INSTANCES);
    catalog_tx.send_replace(Arc::new(changed));
    let pushed = [envoy.next().await, envoy.next().await];
    let differs = diff_until(api, 2, |d| d["in_sync"] == false).await;
    let added = |t: usize| differs["types"][t]["added"].clone();
    let new_cluster = pushed[0].resources[0].name.clone();
    assert_eq!(
        added(0),
        serde_json::json!([{"name": new_cluster, "version": pushed[0].resources[0].version}])
    );
    assert_eq!(
        added(1),
        serde_json::json!([]),
        "not subscribed to its endpoints yet"
    );
    assert_eq!(added(2)[0]["name"], pushed[1].resources[0].name.as_str());
    let (code, text) = mesh(api, &["diff", "apricot/3"]).await;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!(
            "CDS  1 to add, 0 to remove, 0 changed\n  + {new_cluster} "
        )),
        "{text}"
    );
    let (code, text) = mesh(api, &["config", "apricot/3", "clusters"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("CLUSTERS (cds): 3\n"), "{text}");
    assert!(text.contains(&new_cluster), "{text}");

    for response in &pushed {
        envoy.answer(response, None);
    }
    diff_until(api, 2, |d| d["in_sync"] == true).await;
    let config = get(api, "/v1/proxies/apricot/6f1c/config").await;
    assert_eq!(config_versions(&config), envoy.holds);

    // An endpoint fails: the load assignment pushed is rejected, and Envoy keeps what it had.
    let changed = Change::Endpoint.apply(&catalog_tx.borrow(), INSTANCES);
    let had = envoy.holds["eds"].clone();
    catalog_tx.send_replace(Arc::new(changed));
    let rejected = envoy.next().await;
    envoy.answer(&rejected, Some("bad load assignment"));
    let nacked = diff_until(api, 3, |d| !d["types"][1]["nack"].is_null()).await;
    let cluster = Change::endpoint_cluster();
    assert_eq!(
        nacked["types"][1]["changed"],
        serde_json::json!([{
            "name": cluster,
            "acked_version": had[&cluster],
            "version": rejected.resources[0].version
        }])
    );
    assert_eq!(nacked["types"][1]["nack"]["error"], "bad load assignment");
    let (code, text) = mesh(api, &["diff", "sample/apricot/3"]).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("NACK of version 3"), "{text}");

    let (code, text) = mesh(api, &["diff", "apricot/9"]).await;
    assert_eq!(code, 2, "trouble, not a difference: {text}");
    assert!(
        text.contains("no Envoy connected to this pilot is apricot/9"),
        "{text}"
    );
}
