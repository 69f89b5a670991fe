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
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use boshy::catalog::model::{Catalog, Endpoint, Protocol, Service, ServiceKey, ServicePort};
use boshy::metrics;
use boshy::xds::bootstrap::{render, NodeIdentity};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const DB_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 2);
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 3);
const API_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 4);
const BAD_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 5);
const DB_CLUSTER: &str = "outbound|5432||db.banana.sample.boshy";
const WEB_CLUSTER: &str = "outbound|8080||web.banana.sample.boshy";
const API_CLUSTER: &str = "outbound|9000||api.banana.sample.boshy";
/// How long Envoy gets to converge before a check fails (the checks poll, they do not sleep
/// a fixed time; this only bounds a broken run).
const CONVERGENCE_DEADLINE: Duration = Duration::from_secs(30);

fn endpoint(last_octet: u8, az: &str, healthy: bool) -> Endpoint {
    Endpoint {
        address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet)),
        az: Some(az.to_string()),
        instance: format!("instance-{last_octet}"),
        index: Some(u32::from(last_octet)),
        healthy,
    }
}

fn service(
    job: &str,
    vip: Ipv4Addr,
    port: (&str, u16, Protocol),
    endpoints: Vec<Endpoint>,
) -> Service {
    Service {
        key: ServiceKey {
            deployment: "sample".into(),
            instance_group: "banana".into(),
            job: job.into(),
        },
        hostname: format!("{job}.banana.sample.boshy"),
        vip,
        ports: vec![ServicePort {
            name: port.0.into(),
            number: port.1,
            protocol: port.2,
        }],
        endpoints,
    }
}

fn catalog(version: u64, mut services: Vec<Service>) -> Arc<Catalog> {
    services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    Arc::new(Catalog {
        version,
        tld: "boshy".into(),
        services,
    })
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

/// Runs `test` on a fresh runtime inside a new network namespace with `lo` up. Only this
/// thread (and the threads and processes it starts) enter the namespace.
fn in_private_netns<F: Future<Output = ()>>(test: impl FnOnce() -> F + Send + 'static) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect(
            "creating a network namespace failed: this test needs root (CAP_SYS_ADMIN), as in CI",
        );
        run_tool("ip", &["link", "set", "lo", "up"]);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(test());
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
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

fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BOSHY_ENVOY") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("envoy"))
                .find(|candidate| candidate.is_file())
        })
        .expect("no Envoy: set BOSHY_ENVOY to the envoy binary or put `envoy` on PATH")
}

/// Everything the server logs, so the NACK warning can be checked.
#[derive(Clone)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        std::io::stderr().write_all(bytes)?;
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn server_logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuffer(Arc::default());
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
}

struct Envoy {
    /// Killed when dropped.
    _process: tokio::process::Child,
    admin: SocketAddr,
    log: PathBuf,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Envoy {
    async fn start(node: &NodeIdentity, xds: SocketAddr) -> Envoy {
        let admin = free_loopback_port().await;
        let bootstrap = render(node, &[xds.to_string()], admin).expect("bootstrap renders");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, bootstrap).expect("write bootstrap");
        let log = dir.path().join("envoy.log");
        let binary = envoy_binary();
        let process = tokio::process::Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--base-id", &std::process::id().to_string()])
            .args(["--log-level", "info"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("envoy log file"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Envoy {}: {e}", binary.display()));
        Envoy {
            _process: process,
            admin,
            log,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("http client"),
            _dir: dir,
        }
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let url = format!("http://{}{path}", self.admin);
        let response = self.http.get(url).send().await.ok()?;
        response.json().await.ok()
    }

    /// Polls an admin endpoint until `check` holds; fails with what was last seen.
    async fn wait_for<T>(&self, what: &str, path: &str, check: impl Fn(&Value) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + CONVERGENCE_DEADLINE;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            if let Some(value) = self.get(path).await {
                if let Some(found) = check(&value) {
                    return found;
                }
                last = Some(value);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "Envoy never showed {what} at {path}; last answer:\n{}\nEnvoy log tail:\n{}",
            serde_json::to_string_pretty(&last).unwrap(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
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

async fn free_loopback_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address")
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

/// The outbound listener's entry among the dynamic listeners.
fn outbound_listener(dump: &Value) -> Option<&Value> {
    listeners_dump(dump)?["dynamic_listeners"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == "outbound")
}

/// (last accepted LDS version, filter chains of the active outbound listener). The
/// listener's own `version_info` is not used: Envoy keeps the version it was created with
/// across in-place filter chain updates.
fn active_outbound(dump: &Value) -> Option<(String, usize)> {
    let version = listeners_dump(dump)?["version_info"].as_str()?.to_string();
    let chains = outbound_listener(dump)?["active_state"]["listener"]["filter_chains"]
        .as_array()?
        .len();
    Some((version, chains))
}

fn route_config_names(dump: &Value) -> BTreeSet<String> {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["route_config"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Answers every connection with `<name>@<ip>` (tcp) or an HTTP 200 with that body.
async fn upstream(address: &str, name: &'static str, http: bool) {
    let listener = TcpListener::bind(address)
        .await
        .unwrap_or_else(|e| panic!("bind upstream {address}: {e}"));
    let body = format!("{name}@{}", listener.local_addr().unwrap().ip());
    tokio::spawn(async move {
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
}

async fn tcp_answer(address: SocketAddr) -> String {
    let mut connection = TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connect {address}: {e}"));
    let mut answer = String::new();
    let _ = connection.read_to_string(&mut answer).await;
    answer
}

#[test]
fn envoy_follows_the_catalog_and_keeps_its_config_on_nack() {
    let logs = server_logs();
    in_private_netns(move || async move {
        let (catalog_tx, catalog_rx) = watch::channel(catalog(1, vec![db(true), web()]));
        let xds_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind xDS");
        let xds = xds_listener.local_addr().unwrap();
        tokio::spawn(boshy::xds::serve(xds_listener, catalog_rx));

        let node = NodeIdentity {
            deployment: "sample".into(),
            instance_group: "apricot".into(),
            instance_id: "0f3c-apricot-0".into(),
            index: Some(0),
            az: Some("z1".into()),
            ip: "127.0.0.1".parse().unwrap(),
        };
        let envoy = Envoy::start(&node, xds).await;

        // v1: both clusters with their healthy endpoints, AZ localities, listener active.
        let mut expected = BTreeMap::from([
            (
                DB_CLUSTER.to_string(),
                hosts(&[("127.0.0.2:5432", "z1"), ("127.0.0.3:5432", "z2")]),
            ),
            (WEB_CLUSTER.to_string(), hosts(&[("127.0.0.4:8080", "z1")])),
        ]);
        envoy.wait_for_clusters(&expected).await;
        let (v1, chains) = envoy
            .wait_for(
                "the active outbound listener",
                "/config_dump",
                active_outbound,
            )
            .await;
        assert_eq!(chains, 2);
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
        let log_text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
        assert!(
            log_text.contains("proxy connected") && log_text.contains(&node.node_id()),
            "connect logged with the node id"
        );

        // Real traffic: DNAT the VIP range to the outbound listener, as the agent does.
        run_tool(
            "ip",
            &["route", "add", "local", "169.254.255.0/24", "dev", "lo"],
        );
        run_tool(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-d",
                "169.254.255.0/24",
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                "15001",
            ],
        );
        upstream("127.0.0.2:5432", "db", false).await;
        upstream("127.0.0.3:5432", "db", false).await;
        upstream("127.0.0.4:8080", "web", true).await;
        let db_address = SocketAddr::new(DB_VIP.into(), 5432);
        let mut answers = BTreeSet::new();
        for _ in 0..6 {
            answers.insert(tcp_answer(db_address).await);
        }
        assert_eq!(
            answers,
            BTreeSet::from(["db@127.0.0.2".to_string(), "db@127.0.0.3".to_string()])
        );
        for _ in 0..3 {
            let body = envoy
                .http
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
        let (v2, chains) = envoy
            .wait_for("the v2 listener", "/config_dump", |v| {
                active_outbound(v).filter(|(version, _)| *version != v1)
            })
            .await;
        assert_eq!(chains, 3);
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

        // v3: a service with port 0 (the catalog never builds one) makes Envoy reject the
        // listener: NACK logged and counted, Envoy keeps serving v2.
        let nacks_before = metrics::global().xds_nacks.load(Ordering::Relaxed);
        let bad = service(
            "bad",
            BAD_VIP,
            ("tcp-bad", 0, Protocol::Tcp),
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
            active_outbound(&dump),
            Some((v2.clone(), 3)),
            "the last accepted listener stays"
        );
        assert!(metrics::global().xds_nacks.load(Ordering::Relaxed) > nacks_before);
        let log_text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
        let nack_line = log_text
            .lines()
            .find(|l| l.contains("NACK") && l.contains(&node.node_id()))
            .unwrap_or_else(|| {
                panic!("no NACK warning naming the node in the server log:\n{log_text}")
            });
        assert!(nack_line.contains("WARN"), "{nack_line}");
        assert!(
            nack_line.contains("DestinationPort: value must be inside range"),
            "the warning carries Envoy's reason on one line: {nack_line}"
        );
        assert_eq!(
            tcp_answer(db_address).await,
            "db@127.0.0.2",
            "traffic still flows"
        );

        // v4: the service is fixed; the next catalog is accepted as usual.
        let fixed = service(
            "bad",
            BAD_VIP,
            ("tcp-bad", 7000, Protocol::Tcp),
            vec![endpoint(7, "z1", true)],
        );
        catalog_tx
            .send(catalog(4, vec![db(true), web(), api(), fixed]))
            .unwrap();
        let (v4, chains) = envoy
            .wait_for("the v4 listener", "/config_dump", |v| {
                active_outbound(v).filter(|(version, _)| *version != v2)
            })
            .await;
        assert_eq!(chains, 4);
        assert_ne!(v4, v1);
        expected.insert(
            DB_CLUSTER.to_string(),
            hosts(&[("127.0.0.2:5432", "z1"), ("127.0.0.3:5432", "z2")]),
        );
        expected.insert(
            "outbound|7000||bad.banana.sample.boshy".to_string(),
            hosts(&[("127.0.0.7:7000", "z1")]),
        );
        envoy.wait_for_clusters(&expected).await;

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
