//! bosh-pilot's ADS server against a real Envoy.
//!
//! Each test runs in a network namespace of its own (needs root, as CI does): the outbound
//! listener's fixed 127.0.0.1:15001 and the VIP routes then cannot collide with anything
//! else on the machine, and real connections can go through a real DNAT rule
//! (VIP:port → 127.0.0.1:15001, as the virtual-ip-agent installs it) to upstreams on
//! 127.0.0.x inside the namespace.
//!
//! Envoy comes from env `BOSHY_ENVOY`, else `envoy` on PATH.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boshy::catalog::model::{Catalog, Endpoint, Protocol, Service};
use boshy::catalog::testing;
use boshy::metrics;
use boshy::xds::bootstrap::{AdsMode, NodeIdentity};
use boshy::xds::cache::Snapshot;
use boshy::xds::resources::ResourceType;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use boshy_test_support::envoy::{
    capture_vip_traffic, captured_logs, in_private_netns, loopback_listener, start_envoy, Envoy,
    DEADLINE,
};

const DB_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 2);
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 3);
const API_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 4);
const BAD_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 5);
const VMS_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 6);
const VMS_CLUSTER: &str = "outbound|9080||vms.banana.sample.boshy";
const DB_LISTENER: &str = "169.254.255.2_5432";
const WEB_LISTENER: &str = "169.254.255.3_8080";
const API_LISTENER: &str = "169.254.255.4_9000";
const DB_CLUSTER: &str = "outbound|5432||db.banana.sample.boshy";
const WEB_CLUSTER: &str = "outbound|8080||web.banana.sample.boshy";
const API_CLUSTER: &str = "outbound|9000||api.banana.sample.boshy";

fn endpoint(last_octet: u8, az: &str, healthy: bool) -> Endpoint {
    Endpoint {
        az: Some(az.to_string()),
        index: Some(u32::from(last_octet)),
        healthy,
        ..testing::endpoint(&format!("127.0.0.{last_octet}"))
    }
}

fn service(
    job: &str,
    vip: Ipv4Addr,
    (name, number, protocol): (&str, u16, Protocol),
    endpoints: Vec<Endpoint>,
) -> Service {
    endpoints
        .into_iter()
        .fold(
            testing::service("sample", "banana", job)
                .vip(vip)
                .port(name, number, protocol),
            |service, e| service.endpoint(e),
        )
        .build()
}

fn catalog(version: u64, services: Vec<Service>) -> Arc<Catalog> {
    Arc::new(testing::catalog(version, services))
}

fn db(second_healthy: bool) -> Service {
    service(
        "db",
        DB_VIP,
        ("tcp-db", 5432, Protocol::Tcp),
        vec![endpoint(2, "z1", true), endpoint(3, "z2", second_healthy)],
    )
}

fn web() -> Service {
    service(
        "web",
        WEB_VIP,
        ("http", 8080, Protocol::Http),
        vec![endpoint(4, "z1", true), endpoint(5, "z1", false)],
    )
}

fn api() -> Service {
    service(
        "api",
        API_VIP,
        ("grpc", 9000, Protocol::Grpc),
        vec![endpoint(6, "z2", true)],
    )
}

/// A WorkloadGroup's service before any VM registered into it: no endpoints.
fn vms() -> Service {
    Service {
        workload_group: Some("legacy/vms".into()),
        ..service("vms", VMS_VIP, ("http", 9080, Protocol::Http), Vec::new())
    }
}

fn run_tool(tool: &str, args: &[&str]) {
    let status = Command::new(tool)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run `{tool}` (is it installed?): {e}"));
    assert!(
        status.success(),
        "`{tool} {}` failed: {status}",
        args.join(" ")
    );
}

/// What these tests wait for in an Envoy's admin API.
trait Converges {
    async fn wait_for_routes(&self, expected: &[&str]);
    async fn wait_for_listeners(&self, expected: &[&str], not_version: Option<&str>) -> String;
    async fn wait_for_clusters(&self, expected: &BTreeMap<String, BTreeSet<(String, String)>>);
}

impl Converges for Envoy {
    async fn wait_for_routes(&self, expected: &[&str]) {
        let expected: BTreeSet<String> = expected.iter().map(|r| r.to_string()).collect();
        self.wait_for(
            &format!("routes {expected:?}"),
            "/config_dump?resource=dynamic_route_configs",
            |v| (route_config_names(v) == expected).then_some(()),
        )
        .await
    }

    /// Waits until the active VIP listeners are `expected`, under an LDS version other than
    /// `not_version`; returns that version.
    async fn wait_for_listeners(&self, expected: &[&str], not_version: Option<&str>) -> String {
        let expected: BTreeSet<String> = expected.iter().map(|l| l.to_string()).collect();
        self.wait_for(
            &format!("active listeners {expected:?}"),
            "/config_dump",
            |v| {
                let (version, active) = active_vip_listeners(v)?;
                (active == expected && Some(version.as_str()) != not_version).then_some(version)
            },
        )
        .await
    }

    async fn wait_for_clusters(&self, expected: &BTreeMap<String, BTreeSet<(String, String)>>) {
        self.wait_for(
            &format!("clusters {expected:?}"),
            "/clusters?format=json",
            |v| (&eds_clusters(v) == expected).then_some(()),
        )
        .await
    }
}

/// EDS clusters from `/clusters?format=json`: name → {(address:port, zone)}.
fn eds_clusters(clusters: &Value) -> BTreeMap<String, BTreeSet<(String, String)>> {
    clusters["cluster_statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"].as_str() != Some("xds_cluster"))
        .map(|c| {
            let hosts = c["host_statuses"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| {
                    let socket = &h["address"]["socket_address"];
                    (
                        format!(
                            "{}:{}",
                            socket["address"].as_str().unwrap_or(""),
                            socket["port_value"]
                        ),
                        h["locality"]["zone"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            (c["name"].as_str().unwrap_or("").to_string(), hosts)
        })
        .collect()
}

fn hosts(entries: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    entries
        .iter()
        .map(|(address, zone)| (address.to_string(), zone.to_string()))
        .collect()
}

/// The `ListenersConfigDump` in a full `/config_dump`.
fn listeners_dump(dump: &Value) -> Option<&Value> {
    dump["configs"]
        .as_array()?
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ListenersConfigDump")
}

/// (last accepted LDS version, names of the active listeners other than `outbound`).
fn active_vip_listeners(dump: &Value) -> Option<(String, BTreeSet<String>)> {
    let listeners = listeners_dump(dump)?;
    let version = listeners["version_info"].as_str()?.to_string();
    let active = listeners["dynamic_listeners"]
        .as_array()?
        .iter()
        .filter(|l| l["name"] != "outbound" && l["active_state"].is_object())
        .filter_map(|l| l["name"].as_str().map(str::to_string))
        .collect();
    Some((version, active))
}

fn route_config_names(dump: &Value) -> BTreeSet<String> {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["route_config"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Answers every connection with `<name>@<ip>` (tcp) or an HTTP 200 with that body, until
/// aborted (which closes the port, as when the process is killed).
async fn upstream(address: &str, name: &'static str, http: bool) -> tokio::task::AbortHandle {
    let listener = TcpListener::bind(address)
        .await
        .unwrap_or_else(|e| panic!("bind upstream {address}: {e}"));
    let body = format!("{name}@{}", listener.local_addr().unwrap().ip());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut connection, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let reply = if http {
                    let mut request = [0u8; 4096];
                    let _ = connection.read(&mut request).await;
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    body
                };
                let _ = connection.write_all(reply.as_bytes()).await;
            });
        }
    });
    task.abort_handle()
}

async fn tcp_answer(address: SocketAddr) -> String {
    let mut connection = TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connect {address}: {e}"));
    let mut answer = String::new();
    let _ = connection.read_to_string(&mut answer).await;
    answer
}

/// An xDS server on a runtime of its own, so that killing it ends every stream at once, as
/// `kill -9` of bosh-pilot would. Dropping it kills it too.
struct KillableServer {
    runtime: Option<tokio::runtime::Runtime>,
}

impl KillableServer {
    fn start(address: SocketAddr, catalog: watch::Receiver<Arc<Catalog>>) -> KillableServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            // The previous server's accepted connections may linger in TIME_WAIT.
            socket.set_reuseaddr(true).expect("SO_REUSEADDR");
            socket
                .bind(address)
                .unwrap_or_else(|e| panic!("bind xDS {address}: {e}"));
            let listener = socket.listen(1024).expect("listen");
            boshy::xds::serve(listener, catalog).await
        });
        KillableServer {
            runtime: Some(runtime),
        }
    }

    /// Kills the server and waits until its sockets are closed.
    async fn kill(mut self) {
        let runtime = self.runtime.take().expect("not killed yet");
        tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(5)))
            .await
            .expect("server runtime shut down");
    }
}

impl Drop for KillableServer {
    fn drop(&mut self) {
        // A runtime cannot be dropped on an async thread.
        if let Some(runtime) = self.runtime.take() {
            std::thread::spawn(move || drop(runtime));
        }
    }
}

/// Whether Envoy's load balancer may pick `address` in `cluster` (`None`: no such host).
fn routable(clusters: &Value, cluster: &str, address: &str) -> Option<bool> {
    let host = clusters["cluster_statuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == cluster)?["host_statuses"]
        .as_array()?
        .iter()
        .find(|h| {
            let socket = &h["address"]["socket_address"];
            format!(
                "{}:{}",
                socket["address"].as_str().unwrap_or(""),
                socket["port_value"]
            ) == address
        })?;
    let status = &host["health_status"];
    let failing = status.as_object()?.iter().any(|(flag, value)| {
        (flag.starts_with("failed_") || flag.starts_with("pending_")) && *value == true
    });
    Some(status["eds_health_status"] == "HEALTHY" && !failing)
}

/// A client that keeps dialling a tcp and an http service through the mesh, remembering
/// every answer and every failure.
struct Traffic {
    answers: Arc<Mutex<Vec<(tokio::time::Instant, String)>>>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::AbortHandle,
}

impl Traffic {
    fn start(tcp: SocketAddr, http: SocketAddr) -> Traffic {
        let answers: Arc<Mutex<Vec<(tokio::time::Instant, String)>>> = Arc::default();
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let (answers_out, failures_out) = (answers.clone(), failures.clone());
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let task = tokio::spawn(async move {
            loop {
                let tcp_answer = async {
                    let mut connection = TcpStream::connect(tcp).await.ok()?;
                    let mut answer = String::new();
                    connection.read_to_string(&mut answer).await.ok()?;
                    Some(answer).filter(|a| !a.is_empty())
                };
                let http_answer = async {
                    let response = client.get(format!("http://{http}/get")).send().await;
                    match response {
                        Ok(r) if r.status().is_success() => r.text().await.ok(),
                        _ => None,
                    }
                };
                for (what, answer) in [("tcp", tcp_answer.await), ("http", http_answer.await)] {
                    match answer {
                        Some(answer) => answers_out
                            .lock()
                            .unwrap()
                            .push((tokio::time::Instant::now(), answer)),
                        None => failures_out.lock().unwrap().push(what.to_string()),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Traffic {
            answers,
            failures,
            task: task.abort_handle(),
        }
    }

    /// Waits until each of `from` has answered after `since`.
    async fn wait_for_answers(&self, from: &[&str], since: tokio::time::Instant) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let seen: BTreeSet<String> = self
                .answers
                .lock()
                .unwrap()
                .iter()
                .filter(|(at, _)| *at >= since)
                .map(|(_, answer)| answer.clone())
                .collect();
            if from.iter().all(|f| seen.contains(*f)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no answer from all of {from:?} through the mesh; seen {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The node of one test: its own instance id, so that tests running in parallel can each
/// find their own lines in the shared server log.
fn apricot(test: &str) -> NodeIdentity {
    NodeIdentity {
        deployment: "sample".into(),
        instance_group: "apricot".into(),
        instance_id: format!("0f3c-apricot-{test}"),
        index: Some(0),
        az: Some("z1".into()),
        ip: "127.0.0.1".parse().unwrap(),
        service_name: None,
    }
}

#[test]
fn envoy_follows_the_catalog_and_keeps_its_config_on_nack_over_delta_ads() {
    follows_the_catalog(AdsMode::Delta);
}

#[test]
fn envoy_follows_the_catalog_and_keeps_its_config_on_nack_over_state_of_the_world() {
    follows_the_catalog(AdsMode::Sotw);
}

fn follows_the_catalog(mode: AdsMode) {
    let logs = captured_logs();
    in_private_netns(move || async move {
        let (catalog_tx, catalog_rx) = watch::channel(catalog(1, vec![db(true), web()]));
        let xds_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind xDS");
        let xds = xds_listener.local_addr().unwrap();
        tokio::spawn(boshy::xds::serve(xds_listener, catalog_rx));

        let node = apricot(&format!("{mode:?}"));
        // The upstreams listen before Envoy starts: its health checks find them up.
        upstream("127.0.0.2:5432", "db", false).await;
        upstream("127.0.0.3:5432", "db", false).await;
        upstream("127.0.0.4:8080", "web", true).await;
        let envoy = start_envoy(&node, xds, mode).await;

        // v1: both clusters with their healthy endpoints, AZ localities, listener active.
        let mut expected = BTreeMap::from([
            (
                DB_CLUSTER.to_string(),
                hosts(&[("127.0.0.2:5432", "z1"), ("127.0.0.3:5432", "z2")]),
            ),
            (WEB_CLUSTER.to_string(), hosts(&[("127.0.0.4:8080", "z1")])),
        ]);
        envoy.wait_for_clusters(&expected).await;
        let v1 = envoy
            .wait_for_listeners(&[DB_LISTENER, WEB_LISTENER], None)
            .await;
        envoy
            .wait_for("outbound bound on 15001", "/listeners?format=json", |v| {
                v["listener_statuses"]
                    .as_array()?
                    .iter()
                    .any(|l| {
                        l["name"] == "outbound"
                            && l["local_address"]["socket_address"]["port_value"] == 15001
                    })
                    .then_some(())
            })
            .await;
        let routes = envoy
            .wait_for(
                "the web route",
                "/config_dump?resource=dynamic_route_configs",
                |v| Some(route_config_names(v)).filter(|names| !names.is_empty()),
            )
            .await;
        assert_eq!(routes, BTreeSet::from([WEB_CLUSTER.to_string()]));
        assert!(
            metrics::global()
                .xds_connected_proxies
                .load(Ordering::Relaxed)
                >= 1
        );
        let log_text = logs.text();
        assert!(
            log_text.contains("proxy connected") && log_text.contains(&node.node_id()),
            "connect logged with the node id"
        );

        // Real traffic: DNAT the VIP range to the outbound listener, as the agent does.
        capture_vip_traffic();
        let db_address = SocketAddr::new(DB_VIP.into(), 5432);
        let mut answers = BTreeSet::new();
        for _ in 0..6 {
            answers.insert(tcp_answer(db_address).await);
        }
        assert_eq!(
            answers,
            BTreeSet::from(["db@127.0.0.2".to_string(), "db@127.0.0.3".to_string()])
        );
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        for _ in 0..3 {
            let body = http
                .get(format!("http://{WEB_VIP}:8080/get"))
                .send()
                .await
                .expect("HTTP through the VIP")
                .text()
                .await
                .unwrap();
            assert_eq!(
                body, "web@127.0.0.4",
                "only the healthy web instance answers"
            );
        }
        assert_eq!(
            tcp_answer(SocketAddr::new(DB_VIP.into(), 5433)).await,
            "",
            "a port the service does not expose is closed"
        );

        // v2: a db instance fails, a grpc service appears.
        catalog_tx
            .send(catalog(2, vec![db(false), web(), api()]))
            .unwrap();
        expected.insert(DB_CLUSTER.to_string(), hosts(&[("127.0.0.2:5432", "z1")]));
        expected.insert(API_CLUSTER.to_string(), hosts(&[("127.0.0.6:9000", "z2")]));
        envoy.wait_for_clusters(&expected).await;
        let v2 = envoy
            .wait_for_listeners(&[DB_LISTENER, WEB_LISTENER, API_LISTENER], Some(&v1))
            .await;
        envoy
            .wait_for(
                "the api route",
                "/config_dump?resource=dynamic_route_configs",
                |v| {
                    (route_config_names(v)
                        == BTreeSet::from([WEB_CLUSTER.to_string(), API_CLUSTER.to_string()]))
                    .then_some(())
                },
            )
            .await;
        for _ in 0..4 {
            assert_eq!(
                tcp_answer(db_address).await,
                "db@127.0.0.2",
                "the failed instance is out"
            );
        }

        // v3: a service claiming the outbound listener's own address (the catalog never
        // builds one: VIPs come from 169.254.0.0/16) makes Envoy reject its listener: NACK
        // logged and counted, Envoy keeps serving v2.
        let lds_nacks = || {
            let metrics = metrics::global().render();
            metrics
                .lines()
                .filter(|l| l.starts_with("boshy_xds_nacks_total{type=\"lds\","))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum::<f64>()
        };
        let nacks_before = lds_nacks();
        let bad = service(
            "bad",
            Ipv4Addr::LOCALHOST,
            ("tcp-bad", 15001, Protocol::Tcp),
            vec![endpoint(7, "z1", true)],
        );
        catalog_tx
            .send(catalog(3, vec![db(false), web(), api(), bad]))
            .unwrap();
        envoy
            .wait_for(
                "the rejected listener update",
                "/stats?format=json&filter=^listener_manager\\.lds\\.update_rejected$",
                |v| (v["stats"][0]["value"].as_u64()? >= 1).then_some(()),
            )
            .await;
        let dump = envoy.get("/config_dump").await.unwrap();
        assert_eq!(
            active_vip_listeners(&dump),
            Some((
                v2.clone(),
                BTreeSet::from([DB_LISTENER, WEB_LISTENER, API_LISTENER].map(String::from))
            )),
            "the last accepted listeners stay"
        );
        assert!(lds_nacks() > nacks_before);
        let log_text = logs.text();
        let nack_line = log_text
            .lines()
            .find(|l| l.contains("NACK") && l.contains(&node.node_id()))
            .unwrap_or_else(|| {
                panic!("no NACK warning naming the node in the server log:\n{log_text}")
            });
        assert!(nack_line.contains("WARN"), "{nack_line}");
        assert!(
            nack_line.contains("duplicate address '127.0.0.1:15001'"),
            "the warning carries Envoy's reason on one line: {nack_line}"
        );
        assert_eq!(
            tcp_answer(db_address).await,
            "db@127.0.0.2",
            "traffic still flows"
        );

        // v4: the service is fixed; the next catalog is accepted as usual, with a
        // WorkloadGroup's service that has no endpoints yet.
        let fixed = service(
            "bad",
            BAD_VIP,
            ("tcp-bad", 7000, Protocol::Tcp),
            vec![endpoint(7, "z1", true)],
        );
        catalog_tx
            .send(catalog(4, vec![db(true), web(), api(), fixed, vms()]))
            .unwrap();
        let v4 = envoy
            .wait_for_listeners(
                &[
                    DB_LISTENER,
                    WEB_LISTENER,
                    API_LISTENER,
                    "169.254.255.5_7000",
                    "169.254.255.6_9080",
                ],
                Some(&v2),
            )
            .await;
        assert_ne!(v4, v1);
        expected.insert(
            DB_CLUSTER.to_string(),
            hosts(&[("127.0.0.2:5432", "z1"), ("127.0.0.3:5432", "z2")]),
        );
        expected.insert(
            "outbound|7000||bad.banana.sample.boshy".to_string(),
            hosts(&[("127.0.0.7:7000", "z1")]),
        );
        expected.insert(VMS_CLUSTER.to_string(), BTreeSet::new());
        envoy.wait_for_clusters(&expected).await;
        let nobody = http
            .get(format!("http://{VMS_VIP}:9080/get"))
            .send()
            .await
            .expect("HTTP through the group's VIP");
        assert_eq!(
            nobody.status(),
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "a group nobody registered into answers 503 from the client's Envoy"
        );
        expected.remove(VMS_CLUSTER);

        // v5: web's port becomes http2. Only its cluster changes (upstream protocol), so
        // Envoy re-warms it and must not be left waiting for endpoints it already has.
        let mut web_http2 = web();
        web_http2.ports[0].protocol = Protocol::Http2;
        catalog_tx
            .send(catalog(5, vec![db(true), web_http2, api()]))
            .unwrap();
        expected.remove("outbound|7000||bad.banana.sample.boshy");
        envoy
            .wait_for("web as an active http2 cluster", "/config_dump", |v| {
                let clusters = v["configs"].as_array()?.iter().find(|c| {
                    c["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
                })?;
                let warming = clusters["dynamic_warming_clusters"]
                    .as_array()
                    .map_or(0, Vec::len);
                let web_is_http2 =
                    clusters["dynamic_active_clusters"]
                        .as_array()?
                        .iter()
                        .any(|c| {
                            c["cluster"]["name"] == WEB_CLUSTER
                                && c["cluster"]["typed_extension_protocol_options"]
                                    .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
                                    .is_some()
                        });
                (warming == 0 && web_is_http2).then_some(())
            })
            .await;
        envoy.wait_for_clusters(&expected).await;
    });
}

/// The server's HTTP/2 settings (`src/xds/server.rs`) bound what Envoy sends it, never what
/// it pushes: a whole estate of 1,000 services × 100 instances, its load assignments a response
/// of megabytes, reaches a real Envoy in one sync, over both ADS variants.
#[test]
fn envoy_takes_a_thousand_services_in_responses_of_megabytes() {
    captured_logs();
    in_private_netns(move || async move {
        let estate = boshy_xds_fleet::estate::estate(1, 1000, 100);
        let snapshot = Snapshot::from_catalog(&estate);
        let bytes = |t| -> usize {
            let selection = snapshot.select(t, None);
            selection
                .resources
                .iter()
                .map(|r| r.resource.value.len())
                .sum()
        };
        let endpoints = bytes(ResourceType::Endpoint);
        assert!(endpoints > 2_000_000, "EDS {endpoints} bytes: megabytes");
        let (_catalog_tx, catalog_rx) = watch::channel(Arc::new(estate));
        for (mode, test) in [
            (AdsMode::Delta, "estate-delta"),
            (AdsMode::Sotw, "estate-sotw"),
        ] {
            let xds = loopback_listener().await.1;
            let _server = KillableServer::start(xds, catalog_rx.clone());
            let envoy = start_envoy(&apricot(test), xds, mode).await;
            // A cluster is active once its endpoints arrived, a listener once its routes did.
            envoy
                .wait_for_stat("cluster_manager.active_clusters", |n| n > 1000)
                .await;
            envoy
                .wait_for_stat("cluster_manager.warming_clusters", |n| n == 0)
                .await;
            envoy
                .wait_for_stat("listener_manager.total_listeners_active", |n| n > 1000)
                .await;
            assert_eq!(
                envoy.stat("cluster_manager.cds.update_rejected").await,
                Some(0)
            );
            assert_eq!(
                envoy.stat("listener_manager.lds.update_rejected").await,
                Some(0)
            );
        }
    });
}

#[test]
fn a_reconnecting_envoy_gets_exactly_the_current_config_and_only_the_difference() {
    captured_logs();
    in_private_netns(move || async move {
        let xds = loopback_listener().await.1;
        let (first_tx, first_rx) = watch::channel(catalog(1, vec![db(true), web()]));
        let first = KillableServer::start(xds, first_rx);
        let envoy = start_envoy(&apricot("reconnect"), xds, AdsMode::Delta).await;
        envoy
            .wait_for_clusters(&BTreeMap::from([
                (
                    DB_CLUSTER.to_string(),
                    hosts(&[("127.0.0.2:5432", "z1"), ("127.0.0.3:5432", "z2")]),
                ),
                (WEB_CLUSTER.to_string(), hosts(&[("127.0.0.4:8080", "z1")])),
            ]))
            .await;
        envoy.wait_for_routes(&[WEB_CLUSTER]).await;

        // The control plane dies; while it is down, a db instance fails, web is deleted
        // and api is deployed. Envoy keeps its config and reconnects to the new process.
        first.kill().await;
        drop(first_tx);
        let (_second_tx, second_rx) = watch::channel(catalog(2, vec![db(false), api()]));
        let _second = KillableServer::start(xds, second_rx);
        envoy
            .wait_for_clusters(&BTreeMap::from([
                (DB_CLUSTER.to_string(), hosts(&[("127.0.0.2:5432", "z1")])),
                (API_CLUSTER.to_string(), hosts(&[("127.0.0.6:9000", "z2")])),
            ]))
            .await;
        // web's route config outlives it while its listener drains (Envoy's drain time);
        // what counts is the active listeners and that api's route arrived.
        envoy
            .wait_for(
                "the api route",
                "/config_dump?resource=dynamic_route_configs",
                |v| route_config_names(v).contains(API_CLUSTER).then_some(()),
            )
            .await;
        envoy
            .wait_for_listeners(&[DB_LISTENER, API_LISTENER], None)
            .await;

        // Envoy told the new server what it had (initial_resource_versions), so the only
        // clusters that travelled are api (added) and web (removed); db's is unchanged.
        let log = envoy.log_text();
        let cds_updates: Vec<&str> = log
            .lines()
            .filter_map(|l| l.split("cds: response indicates ").nth(1))
            .collect();
        assert_eq!(
            cds_updates,
            [
                "2 added/updated cluster(s), 0 removed cluster(s); applying changes",
                "1 added/updated cluster(s), 1 removed cluster(s); applying changes",
            ],
            "CDS responses Envoy received"
        );
    });
}

#[test]
fn a_dead_instance_stops_getting_connections_within_seconds_and_comes_back() {
    captured_logs();
    in_private_netns(move || async move {
        let db_instances = [2, 3, 4];
        let web_instances = [5, 6];
        let mut db_servers = BTreeMap::new();
        for n in db_instances {
            db_servers.insert(n, upstream(&format!("127.0.0.{n}:5432"), "db", false).await);
        }
        let mut web_servers = BTreeMap::new();
        for n in web_instances {
            web_servers.insert(n, upstream(&format!("127.0.0.{n}:8080"), "web", true).await);
        }
        let db = service(
            "db",
            DB_VIP,
            ("tcp-db", 5432, Protocol::Tcp),
            db_instances
                .iter()
                .map(|n| endpoint(*n, "z1", true))
                .collect(),
        );
        let web = service(
            "web",
            WEB_VIP,
            ("http", 8080, Protocol::Http),
            web_instances
                .iter()
                .map(|n| endpoint(*n, "z1", true))
                .collect(),
        );
        // The catalog never changes: the director has not noticed anything.
        let (_catalog_tx, catalog_rx) = watch::channel(catalog(1, vec![db, web]));
        let xds_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind xDS");
        let xds = xds_listener.local_addr().unwrap();
        tokio::spawn(boshy::xds::serve(xds_listener, catalog_rx));
        capture_vip_traffic();
        let envoy = start_envoy(&apricot("dead"), xds, AdsMode::Delta).await;

        let all: Vec<(&str, String)> = db_instances
            .iter()
            .map(|n| (DB_CLUSTER, format!("127.0.0.{n}:5432")))
            .chain(
                web_instances
                    .iter()
                    .map(|n| (WEB_CLUSTER, format!("127.0.0.{n}:8080"))),
            )
            .collect();
        let wait_until = |cluster: &'static str, host: String, want: bool| {
            let envoy = &envoy;
            async move {
                envoy
                    .wait_for(
                        &format!("{host} in {cluster} routable={want}"),
                        "/clusters?format=json",
                        |v| (routable(v, cluster, &host)? == want).then_some(()),
                    )
                    .await
            }
        };
        for (cluster, host) in &all {
            wait_until(cluster, host.clone(), true).await;
        }
        let traffic = Traffic::start(
            SocketAddr::new(DB_VIP.into(), 5432),
            SocketAddr::new(WEB_VIP.into(), 8080),
        );
        let start = tokio::time::Instant::now();
        traffic
            .wait_for_answers(
                &[
                    "db@127.0.0.2",
                    "db@127.0.0.3",
                    "db@127.0.0.4",
                    "web@127.0.0.5",
                    "web@127.0.0.6",
                ],
                start,
            )
            .await;

        // 1. Processes killed: their ports refuse connections.
        let killed_at = tokio::time::Instant::now();
        db_servers[&3].abort();
        web_servers[&6].abort();
        wait_until(DB_CLUSTER, "127.0.0.3:5432".into(), false).await;
        let db_left = killed_at.elapsed();
        wait_until(WEB_CLUSTER, "127.0.0.6:8080".into(), false).await;
        let web_left = killed_at.elapsed();
        println!(
            "killed process left Envoy's load balancing after: tcp {db_left:?}, http {web_left:?}"
        );
        db_servers.insert(3, upstream("127.0.0.3:5432", "db", false).await);
        web_servers.insert(6, upstream("127.0.0.6:8080", "web", true).await);
        let restarted_at = tokio::time::Instant::now();
        wait_until(DB_CLUSTER, "127.0.0.3:5432".into(), true).await;
        wait_until(WEB_CLUSTER, "127.0.0.6:8080".into(), true).await;
        println!(
            "restarted process back in load balancing after {:?}",
            restarted_at.elapsed()
        );
        traffic
            .wait_for_answers(&["db@127.0.0.3", "web@127.0.0.6"], restarted_at)
            .await;

        // 2. A VM cut off the network: connections to it time out.
        let blackhole = [
            "OUTPUT",
            "-d",
            "127.0.0.4",
            "-p",
            "tcp",
            "--dport",
            "5432",
            "-j",
            "DROP",
        ];
        let cut_at = tokio::time::Instant::now();
        run_tool("iptables", &[&["-A"][..], &blackhole[..]].concat());
        wait_until(DB_CLUSTER, "127.0.0.4:5432".into(), false).await;
        println!(
            "unreachable instance left Envoy's load balancing after {:?}",
            cut_at.elapsed()
        );
        let left_at = tokio::time::Instant::now();
        let reachable_again = {
            run_tool("iptables", &[&["-D"][..], &blackhole[..]].concat());
            tokio::time::Instant::now()
        };
        wait_until(DB_CLUSTER, "127.0.0.4:5432".into(), true).await;
        println!(
            "reachable instance back in load balancing after {:?}",
            reachable_again.elapsed()
        );
        traffic
            .wait_for_answers(&["db@127.0.0.4"], reachable_again)
            .await;
        assert!(left_at <= reachable_again);

        // Connect retries on other hosts hid every one of those faults from the clients.
        assert_eq!(traffic.failures(), Vec::<String>::new(), "failed requests");
    });
}
