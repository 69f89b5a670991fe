//! The traffic model served to a real Envoy.
//!
//! Rules that use every feature at once are published while Envoy runs. Envoy accepts all of
//! them (no xDS update rejected, no NACK in the server's log; the routes, the subset clusters
//! and their endpoints in its admin API), and applies them to real requests through a VIP
//! (DNAT in a private network namespace, as in `xds_envoy.rs`): a header match reaches its
//! subset, a weighted split splits, faults abort and delay, a redirect redirects, a rewrite
//! and header operations reach the upstream and the client, a mirror gets its copy, a ring
//! hash on a cookie hands one out, a route reaches another service, a tcp split splits.
//!
//! Needs root and Envoy (env `BOSHY_ENVOY`, else `envoy` on PATH).

use boshy::xds::telemetry::Telemetry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boshy::catalog::model::{Catalog, Endpoint, Protocol};
use boshy::catalog::testing::{self, service};
use boshy::traffic::testing::to;
use boshy::traffic::{
    ConnectionPool, Fault, FaultAbort, FaultDelay, Forward, HashKey, HeaderCondition, HeaderMatch,
    HttpAction, HttpMatch, HttpRoute, LoadBalancer, LocalityLoadBalancing, Mirror,
    OutlierDetection, PathRewrite, Percentage, PortPolicies, QueryParamMatch, Redirect,
    RedirectCode, Retries, Rewrite, ServiceRules, StringMatch, Subset, TrafficPolicy, TrafficRules,
    WeightedDestination,
};
use boshy::xds::bootstrap::{AdsMode, NodeIdentity};
use boshy::xds::cache::Sources;
use boshy_test_support::envoy::{
    capture_vip_traffic, captured_logs, in_private_netns, loopback_listener, start_envoy,
    CapturedLogs, Envoy,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const DB_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 2);
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 3);
const SHADOW_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 7);
const DB: &str = "db.banana.sample.boshy";
const WEB: &str = "web.banana.sample.boshy";
const SHADOW: &str = "shadow.banana.sample.boshy";
/// web's cluster, and the name of its route configuration.
const WEB_CLUSTER: &str = "outbound|8080||web.banana.sample.boshy";
const WEB_LISTENER: &str = "169.254.255.3_8080";

/// An endpoint in `az`; web's carry the label `version` (v1 at .4, v2 at .5, v3 at .6), for
/// the rules that select subsets by label (xDS does not depend on labels).
fn at(last_octet: u8, az: &str) -> Endpoint {
    let version = match last_octet {
        4..=6 => vec![("version", ["v1", "v2", "v3"][usize::from(last_octet - 4)])],
        _ => Vec::new(),
    };
    Endpoint {
        az: Some(az.to_string()),
        labels: testing::labels(version),
        ..testing::endpoint(&format!("127.0.0.{last_octet}"))
    }
}

/// web (three instances, two AZs), shadow (where web's requests are mirrored) and db (tcp).
fn catalog() -> Arc<Catalog> {
    Arc::new(testing::catalog(
        1,
        [
            service("sample", "banana", "web")
                .vip(WEB_VIP)
                .port("http", 8080, Protocol::Http)
                .endpoint(at(4, "z1"))
                .endpoint(at(5, "z1"))
                .endpoint(at(6, "z2")),
            service("sample", "banana", "shadow")
                .vip(SHADOW_VIP)
                .port("http", 8080, Protocol::Http)
                .endpoint(at(7, "z1")),
            service("sample", "banana", "db")
                .vip(DB_VIP)
                .port("tcp-db", 5432, Protocol::Tcp)
                .endpoint(at(2, "z1"))
                .endpoint(at(3, "z2")),
        ],
    ))
}

fn web(subset: &str, weight: u32) -> WeightedDestination {
    to(WEB, 8080, Some(subset), weight)
}

fn forward(destinations: Vec<WeightedDestination>) -> HttpAction {
    HttpAction::Forward(Forward {
        destinations,
        ..Default::default()
    })
}

fn prefix(path: &str) -> HttpMatch {
    HttpMatch {
        path: Some(StringMatch::Prefix(path.to_string())),
        ..Default::default()
    }
}

fn header(name: &str, condition: HeaderCondition) -> HeaderMatch {
    HeaderMatch {
        name: name.to_string(),
        condition,
    }
}

fn route(name: &str, matches: Vec<HttpMatch>, action: HttpAction) -> HttpRoute {
    HttpRoute {
        name: name.to_string(),
        matches,
        action,
        fault: None,
        headers: Default::default(),
    }
}

fn subset(addresses: &[&str], policy: TrafficPolicy) -> Subset {
    Subset {
        endpoints: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        dns_endpoints: Default::default(),
        policy: PortPolicies {
            all_ports: policy,
            by_port: BTreeMap::new(),
        },
    }
}

fn strings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// web's routes, in the order Envoy must try them.
fn web_routes() -> Vec<HttpRoute> {
    let mut canary = route(
        "canary",
        vec![HttpMatch {
            headers: vec![header(
                "x-canary",
                HeaderCondition::Matches(StringMatch::Exact("yes".into())),
            )],
            ..Default::default()
        }],
        forward(vec![web("v2", 1)]),
    );
    canary.headers.response.set = strings(&[("x-route", "canary")]).into_iter().collect();

    let mut abort = route(
        "abort",
        vec![prefix("/fault/abort")],
        forward(vec![web("v1", 1)]),
    );
    abort.fault = Some(Fault {
        delay: None,
        abort: Some(FaultAbort {
            http_status: 500,
            percentage: Percentage::ALL,
        }),
    });
    let mut delay = route(
        "delay",
        vec![HttpMatch {
            path: Some(StringMatch::Exact("/fault/delay".into())),
            ..Default::default()
        }],
        forward(vec![web("v1", 1)]),
    );
    delay.fault = Some(Fault {
        delay: Some(FaultDelay {
            duration: Duration::from_millis(300),
            percentage: Percentage::ALL,
        }),
        abort: None,
    });

    let moved = route(
        "moved",
        vec![prefix("/old"), prefix("/legacy")],
        HttpAction::Redirect(Redirect {
            path: Some("/new".into()),
            authority: Some("moved.example".into()),
            code: RedirectCode::MovedPermanently,
        }),
    );

    let mut rewrite = route(
        "rewrite",
        vec![HttpMatch {
            ignore_path_case: true,
            method: Some(StringMatch::Exact("GET".into())),
            query_params: vec![QueryParamMatch {
                name: "full".into(),
                value: None,
            }],
            headers: vec![header(
                "x-env",
                HeaderCondition::DoesNotMatch(StringMatch::Prefix("prod".into())),
            )],
            ..prefix("/api/")
        }],
        HttpAction::Forward(Forward {
            destinations: vec![web("v1", 1)],
            rewrite: Some(Rewrite {
                path: Some(PathRewrite::Prefix("/".into())),
                authority: Some("rewritten.example".into()),
            }),
            timeout: Some(Duration::from_secs(5)),
            retries: Some(Retries {
                attempts: 3,
                per_try_timeout: Some(Duration::from_secs(1)),
                retry_on: "5xx,connect-failure,retriable-status-codes".into(),
                retriable_status_codes: vec![409],
            }),
            mirrors: vec![Mirror {
                destination: to(SHADOW, 8080, None, 1).destination,
                percentage: Percentage::ALL,
            }],
        }),
    );
    rewrite.headers.request.set = strings(&[("x-set", "by-the-mesh")]).into_iter().collect();
    rewrite.headers.request.add = strings(&[("x-add", "second")]);
    rewrite.headers.request.remove = vec!["x-remove-me".into()];
    rewrite.headers.response.set = strings(&[("x-served-by", "mesh")]).into_iter().collect();
    rewrite.headers.response.remove = vec!["x-upstream".into()];

    let items = route(
        "items",
        vec![HttpMatch {
            path: Some(StringMatch::Regex("/items/[0-9]+".into())),
            headers: vec![header("x-debug", HeaderCondition::Absent)],
            ..Default::default()
        }],
        forward(vec![to(SHADOW, 8080, None, 1)]),
    );
    let split = route(
        "split",
        vec![prefix("/split")],
        forward(vec![web("v1", 75), web("v2", 25)]),
    );
    // Routes by the caller: this test's Envoy is an instance of apricot (`node`), which
    // exposes nothing, so it has the director's labels of its instance and gets the first
    // route alone.
    let from = |group: &str| {
        route(
            &format!("from-{group}"),
            vec![HttpMatch {
                source_labels: testing::labels([("bosh.io/instance-group", group)]),
                ..prefix("/from-caller")
            }],
            forward(vec![web("v2", 1)]),
        )
    };
    vec![
        from("apricot"),
        from("cherry"),
        canary,
        abort,
        delay,
        moved,
        rewrite,
        items,
        split,
    ]
}

/// Every feature of the traffic model at once.
fn every_rule() -> TrafficRules {
    let web_policy = TrafficPolicy {
        load_balancer: Some(LoadBalancer::LeastRequest),
        connection_pool: Some(ConnectionPool {
            max_connections: Some(100),
            connect_timeout: Some(Duration::from_millis(500)),
            max_pending_requests: Some(100),
            max_requests: Some(100),
            max_requests_per_connection: Some(10),
            max_retries: Some(5),
        }),
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx: Some(3),
            consecutive_gateway_errors: Some(2),
            interval: Some(Duration::from_secs(1)),
            base_ejection_time: Some(Duration::from_secs(5)),
            max_ejection_percent: Some(30),
        }),
        locality: Some(LocalityLoadBalancing::Distribute(BTreeMap::from([
            ("z1".into(), 3),
            ("z2".into(), 1),
        ]))),
    };
    let web_rules = ServiceRules {
        http_routes: BTreeMap::from([(8080, web_routes())]),
        subsets: BTreeMap::from([
            (
                "v1".into(),
                subset(
                    &["127.0.0.4"],
                    TrafficPolicy {
                        locality: Some(LocalityLoadBalancing::Failover(vec![
                            "z1".into(),
                            "z2".into(),
                        ])),
                        ..Default::default()
                    },
                ),
            ),
            (
                "v2".into(),
                subset(
                    &["127.0.0.5"],
                    TrafficPolicy {
                        load_balancer: Some(LoadBalancer::RingHash(HashKey::Cookie {
                            name: "session".into(),
                            ttl: Some(Duration::from_secs(60)),
                            path: Some("/".into()),
                        })),
                        ..Default::default()
                    },
                ),
            ),
        ]),
        policy: PortPolicies {
            all_ports: web_policy,
            by_port: BTreeMap::new(),
        },
        ..Default::default()
    };
    let db_rules = ServiceRules {
        tcp_routes: BTreeMap::from([(
            5432,
            vec![
                to(DB, 5432, Some("primary"), 1),
                to(DB, 5432, Some("replica"), 1),
            ],
        )]),
        subsets: BTreeMap::from([
            (
                "primary".into(),
                subset(&["127.0.0.2"], TrafficPolicy::default()),
            ),
            (
                "replica".into(),
                subset(&["127.0.0.3"], TrafficPolicy::default()),
            ),
        ]),
        ..Default::default()
    };
    TrafficRules {
        services: BTreeMap::from([(WEB.into(), web_rules), (DB.into(), db_rules)]),
        scope_pins: Vec::new(),
        security: Default::default(),
    }
}

/// What an upstream saw of one request: the path with its query, and the headers (names in
/// lower case, repeated ones joined with `,`).
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: BTreeMap<String, String>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// An HTTP/1.1 upstream that answers every request with `<name>@<ip>` and an `x-upstream`
/// header, and logs what it saw.
async fn http_upstream(address: &str, name: &'static str) -> Log {
    let listener = TcpListener::bind(address)
        .await
        .unwrap_or_else(|e| panic!("bind upstream {address}: {e}"));
    let body = format!("{name}@{}", listener.local_addr().unwrap().ip());
    let log = Log::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            let (body, seen) = (body.clone(), seen.clone());
            tokio::spawn(async move {
                let Some(request) = read_head(&mut connection).await else {
                    return;
                };
                seen.lock().unwrap().push(request);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-upstream: {name}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = connection.write_all(reply.as_bytes()).await;
            });
        }
    });
    log
}

/// The request line and headers of a request without a body.
async fn read_head(connection: &mut TcpStream) -> Option<Seen> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = connection.read(&mut buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let path = lines.next()?.split(' ').nth(1)?.to_string();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in lines.filter_map(|line| line.split_once(':')) {
        headers
            .entry(name.trim().to_ascii_lowercase())
            .and_modify(|v| v.push_str(&format!(",{}", value.trim())))
            .or_insert_with(|| value.trim().to_string());
    }
    Some(Seen { path, headers })
}

/// A tcp upstream that writes `<name>@<ip>` on every connection and closes it.
async fn tcp_upstream(address: &str, name: &'static str) {
    let listener = TcpListener::bind(address)
        .await
        .unwrap_or_else(|e| panic!("bind upstream {address}: {e}"));
    let body = format!("{name}@{}", listener.local_addr().unwrap().ip());
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            let _ = connection.write_all(body.as_bytes()).await;
        }
    });
}

/// The hosts of every cluster in `/clusters?format=json`, by cluster name.
fn cluster_hosts(clusters: &Value) -> BTreeMap<String, BTreeSet<String>> {
    clusters["cluster_statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] != "xds_cluster")
        .map(|c| {
            let hosts = c["host_statuses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h["address"]["socket_address"]["address"].as_str())
                .map(str::to_string)
                .collect();
            (c["name"].as_str().unwrap_or_default().to_string(), hosts)
        })
        .collect()
}

/// The names of the routes of route configuration `name`, in order.
fn route_names(dump: &Value, name: &str) -> Option<Vec<String>> {
    let config = dump["configs"]
        .as_array()?
        .iter()
        .find(|c| c["route_config"]["name"] == name)?;
    let routes = config["route_config"]["virtual_hosts"][0]["routes"].as_array()?;
    Some(
        routes
            .iter()
            .map(|r| r["name"].as_str().unwrap_or_default().to_string())
            .collect(),
    )
}

/// One part of a full `/config_dump`, by its type (`ListenersConfigDump`).
fn dump_of<'a>(dump: &'a Value, dump_type: &str) -> Option<&'a Value> {
    let type_url = format!("type.googleapis.com/envoy.admin.v3.{dump_type}");
    dump["configs"]
        .as_array()?
        .iter()
        .find(|c| c["@type"] == type_url)
}

/// The config of the active listener `name` in a full `/config_dump`.
fn active_listener<'a>(dump: &'a Value, name: &str) -> Option<&'a Value> {
    dump_of(dump, "ListenersConfigDump")?["dynamic_listeners"]
        .as_array()?
        .iter()
        .map(|l| &l["active_state"]["listener"])
        .find(|l| l["name"] == name)
}

/// The config of the active cluster `name` in a full `/config_dump`.
fn active_cluster<'a>(dump: &'a Value, name: &str) -> Option<&'a Value> {
    dump_of(dump, "ClustersConfigDump")?["dynamic_active_clusters"]
        .as_array()?
        .iter()
        .map(|c| &c["cluster"])
        .find(|c| c["name"] == name)
}

fn http_filter_names(listener: &Value) -> Vec<&str> {
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["name"].as_str())
        .collect()
}

/// The senders an xDS server of a test follows: the catalog's, which must live as long as the
/// test (a server whose catalog producer is gone stops following), and the traffic model's.
struct Published {
    _catalog: watch::Sender<Arc<Catalog>>,
    traffic: watch::Sender<Arc<TrafficRules>>,
}

/// An xDS server in this test's namespace, serving `catalog` and `traffic` to begin with; its
/// address.
async fn serve_xds(catalog: Arc<Catalog>, traffic: TrafficRules) -> (Published, SocketAddr) {
    let (catalog_tx, catalog_rx) = watch::channel(catalog);
    let (traffic_tx, traffic_rx) = watch::channel(Arc::new(traffic));
    let (xds_listener, xds) = loopback_listener().await;
    tokio::spawn(boshy::xds::serve(
        xds_listener,
        Sources {
            catalog: catalog_rx,
            traffic: traffic_rx,
            identity: None,
            telemetry: Telemetry::OFF,
        },
    ));
    let published = Published {
        _catalog: catalog_tx,
        traffic: traffic_tx,
    };
    (published, xds)
}

/// Neither CDS nor LDS rejected an update of `envoy` (the bootstrap keeps no per-service
/// stats, so RDS and EDS have no such counter), and the server logged no NACK of any type
/// from `node`.
async fn assert_nothing_rejected(envoy: &Envoy, logs: &CapturedLogs, node: &NodeIdentity) {
    for manager in ["cluster_manager.cds", "listener_manager.lds"] {
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

/// The node of one test: its own instance id, so that tests running in parallel can each
/// find their own lines in the shared server log.
fn node(mode: AdsMode) -> NodeIdentity {
    NodeIdentity {
        deployment: "sample".into(),
        instance_group: "apricot".into(),
        instance_id: format!("0f3c-apricot-traffic-{mode:?}"),
        index: Some(0),
        az: Some("z1".into()),
        ip: "127.0.0.1".parse().unwrap(),
        service_name: None,
    }
}

#[test]
fn envoy_accepts_every_traffic_rule_at_once_and_applies_them_over_delta_ads() {
    accepts_and_applies_every_rule(AdsMode::Delta);
}

#[test]
fn envoy_accepts_every_traffic_rule_at_once_and_applies_them_over_state_of_the_world() {
    accepts_and_applies_every_rule(AdsMode::Sotw);
}

fn accepts_and_applies_every_rule(mode: AdsMode) {
    let logs = captured_logs();
    in_private_netns(move || async move {
        let v1 = http_upstream("127.0.0.4:8080", "web").await;
        http_upstream("127.0.0.5:8080", "web").await;
        http_upstream("127.0.0.6:8080", "web").await;
        let shadow = http_upstream("127.0.0.7:8080", "shadow").await;
        tcp_upstream("127.0.0.2:5432", "db").await;
        tcp_upstream("127.0.0.3:5432", "db").await;

        let (published, xds) = serve_xds(catalog(), TrafficRules::default()).await;
        capture_vip_traffic();
        let envoy = start_envoy(&node(mode), xds, mode).await;
        let hosts = |last_octets: &[u8]| -> BTreeSet<String> {
            last_octets.iter().map(|n| format!("127.0.0.{n}")).collect()
        };

        // Without rules: the mesh as always, the route configuration has the default route
        // alone.
        envoy
            .wait_for("web's cluster", "/clusters?format=json", |v| {
                (cluster_hosts(v).get(WEB_CLUSTER)? == &hosts(&[4, 5, 6])).then_some(())
            })
            .await;
        envoy
            .wait_for(
                "web's default route",
                "/config_dump?resource=dynamic_route_configs",
                |v| (route_names(v, WEB_CLUSTER)? == [""]).then_some(()),
            )
            .await;

        // The rules arrive.
        published.traffic.send(Arc::new(every_rule())).unwrap();
        let expected_clusters = BTreeMap::from([
            (WEB_CLUSTER.to_string(), hosts(&[4, 5, 6])),
            (
                "outbound|8080|v1|web.banana.sample.boshy".to_string(),
                hosts(&[4]),
            ),
            (
                "outbound|8080|v2|web.banana.sample.boshy".to_string(),
                hosts(&[5]),
            ),
            (
                "outbound|8080||shadow.banana.sample.boshy".to_string(),
                hosts(&[7]),
            ),
            (
                "outbound|5432||db.banana.sample.boshy".to_string(),
                hosts(&[2, 3]),
            ),
            (
                "outbound|5432|primary|db.banana.sample.boshy".to_string(),
                hosts(&[2]),
            ),
            (
                "outbound|5432|replica|db.banana.sample.boshy".to_string(),
                hosts(&[3]),
            ),
        ]);
        envoy
            .wait_for(
                "the subset clusters with their endpoints",
                "/clusters?format=json",
                |v| (cluster_hosts(v) == expected_clusters).then_some(()),
            )
            .await;
        envoy
            .wait_for(
                "web's routes",
                "/config_dump?resource=dynamic_route_configs",
                |v| {
                    let expected = [
                        "from-apricot",
                        "canary",
                        "abort",
                        "delay",
                        "moved",
                        "moved",
                        "rewrite",
                        "items",
                        "split",
                        "",
                    ];
                    (route_names(v, WEB_CLUSTER)? == expected).then_some(())
                },
            )
            .await;
        let dump = envoy
            .wait_for(
                "web's listener with the fault filter",
                "/config_dump",
                |v| {
                    let listener = active_listener(v, WEB_LISTENER)?;
                    (http_filter_names(listener)
                        == ["envoy.filters.http.fault", "envoy.filters.http.router"])
                    .then(|| v.clone())
                },
            )
            .await;
        let v2 = active_cluster(&dump, "outbound|8080|v2|web.banana.sample.boshy").unwrap();
        assert_eq!(v2["lb_policy"], "RING_HASH");
        let whole = active_cluster(&dump, WEB_CLUSTER).unwrap();
        assert_eq!(whole["lb_policy"], "LEAST_REQUEST");
        assert_eq!(
            whole["circuit_breakers"]["thresholds"][0]["max_connections"],
            100
        );
        assert_eq!(whole["outlier_detection"]["consecutive_5xx"], 3);
        assert!(whole["common_lb_config"]["locality_weighted_lb_config"].is_object());

        // Accepted (RDS and EDS have no rejection counter: their acceptance is the route
        // names and endpoints above).
        assert_nothing_rejected(&envoy, logs, &node(mode)).await;

        // Real requests, on connections opened after the listener changed.
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let get = |path: &str| client.get(format!("http://{WEB_VIP}:8080{path}"));

        for _ in 0..5 {
            let canary = get("/anything")
                .header("x-canary", "yes")
                .send()
                .await
                .unwrap();
            assert_eq!(canary.headers()["x-route"], "canary");
            let cookie = canary.headers()["set-cookie"].to_str().unwrap().to_string();
            assert!(
                cookie.starts_with("session="),
                "the ring hash hands out its cookie: {cookie}"
            );
            assert_eq!(
                canary.text().await.unwrap(),
                "web@127.0.0.5",
                "the header picks v2"
            );
        }

        let from_apricot = get("/from-caller").send().await.unwrap();
        assert_eq!(
            from_apricot.text().await.unwrap(),
            "web@127.0.0.5",
            "the caller's route picks v2"
        );

        let aborted = get("/fault/abort").send().await.unwrap();
        assert_eq!(aborted.status(), 500);
        assert!(
            v1.lock()
                .unwrap()
                .iter()
                .all(|seen| !seen.path.starts_with("/fault")),
            "an aborted request never reaches the upstream"
        );
        let started = tokio::time::Instant::now();
        let delayed = get("/fault/delay").send().await.unwrap();
        assert_eq!(delayed.text().await.unwrap(), "web@127.0.0.4");
        // A 300 ms delay; Envoy's timer may fire a little early, a request without it
        // takes a millisecond.
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );

        for old in ["/old/page", "/legacy"] {
            let moved = get(old).send().await.unwrap();
            assert_eq!(moved.status(), 301, "{old}");
            assert_eq!(moved.headers()["location"], "http://moved.example/new");
        }

        let rewritten = get("/API/items?full=1")
            .header("x-add", "first")
            .header("x-remove-me", "1")
            .header("x-env", "staging")
            .send()
            .await
            .unwrap();
        assert_eq!(rewritten.headers()["x-served-by"], "mesh");
        assert!(
            rewritten.headers().get("x-upstream").is_none(),
            "removed from the response"
        );
        assert_eq!(rewritten.text().await.unwrap(), "web@127.0.0.4");
        let seen = v1
            .lock()
            .unwrap()
            .iter()
            .find(|seen| seen.path.starts_with("/items"))
            .cloned()
            .expect("v1 saw the rewritten request");
        assert_eq!(
            seen.path, "/items?full=1",
            "the matched prefix /API/ became /"
        );
        assert_eq!(seen.headers["host"], "rewritten.example");
        assert_eq!(seen.headers["x-set"], "by-the-mesh");
        assert_eq!(seen.headers["x-add"], "first,second");
        assert!(!seen.headers.contains_key("x-remove-me"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !shadow
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.headers["host"] == "rewritten.example-shadow" && s.path == "/items?full=1")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no mirrored request: {shadow:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let production = get("/api/items?full=1")
            .header("x-env", "production")
            .send()
            .await
            .unwrap();
        assert!(
            production.headers().get("x-served-by").is_none(),
            "x-env: production does not match the rewrite route"
        );

        let items = get("/items/42").send().await.unwrap().text().await.unwrap();
        assert_eq!(items, "shadow@127.0.0.7", "a route to another service");
        let debug = get("/items/42")
            .header("x-debug", "1")
            .send()
            .await
            .unwrap();
        assert!(
            debug.text().await.unwrap().starts_with("web@"),
            "x-debug must be absent"
        );

        let mut split: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..400 {
            let answer = get("/split").send().await.unwrap().text().await.unwrap();
            *split.entry(answer).or_default() += 1;
        }
        println!("split 75/25 over 400 requests: {split:?}");
        let v1_share = split.get("web@127.0.0.4").copied().unwrap_or(0);
        let v2_share = split.get("web@127.0.0.5").copied().unwrap_or(0);
        assert_eq!(v1_share + v2_share, 400, "only v1 and v2: {split:?}");
        // 300 expected, a standard deviation of 8.7.
        assert!((250..=350).contains(&v1_share), "{split:?}");

        let mut db_answers = BTreeSet::new();
        for _ in 0..20 {
            let mut connection = TcpStream::connect(SocketAddr::new(DB_VIP.into(), 5432))
                .await
                .unwrap();
            let mut answer = String::new();
            let _ = connection.read_to_string(&mut answer).await;
            db_answers.insert(answer);
        }
        assert_eq!(
            db_answers,
            BTreeSet::from(["db@127.0.0.2".to_string(), "db@127.0.0.3".to_string()]),
            "the tcp split reaches both subsets"
        );

        let default = get("/").send().await.unwrap();
        assert_eq!(
            default.status(),
            200,
            "what no rule matches goes to the whole service"
        );
    });
}

/// A deterministic source of choices for generated rules (xorshift64*): a failing case is
/// reproduced by its index.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % sides
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.roll(100) < percent
    }
    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[self.roll(options.len() as u64) as usize]
    }
}

/// One rule config of the generated kind: a DestinationRule for web (subsets v1 to v3 by
/// label, random policies) and a VirtualService with random routes named `g<case>-r<n>`,
/// the last of which takes every request.
fn generated_rules(case: u64, dice: &mut Dice) -> String {
    let load_balancer = |dice: &mut Dice| -> String {
        match dice.roll(4) {
            0 => format!(
                "{{simple: {}}}",
                dice.pick(&["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "LEAST_CONN"])
            ),
            1 => format!(
                "{{consistentHash: {}}}",
                dice.pick(&[
                    "{httpHeaderName: X-User}",
                    "{httpCookie: {name: session, ttl: 30s, path: /}}",
                    "{httpCookie: {name: s}}",
                    "{useSourceIp: true}",
                ])
            ),
            2 => {
                let z1 = dice.roll(101);
                format!(
                    "{{localityLbSetting: {{distribute: [{{from: '*', to: {{z1: {z1}, z2/*: {}}}}}]}}}}",
                    100 - z1
                )
            }
            _ => "{}".to_string(),
        }
    };
    let policy = |dice: &mut Dice| -> String {
        let mut parts = vec![format!("loadBalancer: {}", load_balancer(dice))];
        if dice.chance(50) {
            parts.push(format!(
                "connectionPool: {{tcp: {{maxConnections: {}, connectTimeout: {}ms}}, http: {{http1MaxPendingRequests: {}, http2MaxRequests: {}, maxRequestsPerConnection: {}, maxRetries: {}}}}}",
                dice.roll(1000) + 1,
                dice.roll(5000) + 1,
                dice.roll(100) + 1,
                dice.roll(1000) + 1,
                dice.roll(3),
                dice.roll(10)
            ));
        }
        if dice.chance(50) {
            parts.push(format!(
                "outlierDetection: {{consecutive5xxErrors: {}, consecutiveGatewayErrors: {}, interval: {}s, baseEjectionTime: {}ms, maxEjectionPercent: {}}}",
                dice.roll(10),
                dice.roll(10),
                dice.roll(60) + 1,
                dice.roll(60_000) + 1,
                dice.roll(101)
            ));
        }
        format!("{{{}}}", parts.join(", "))
    };
    let string_match = |dice: &mut Dice, value: &str| -> String {
        match dice.roll(3) {
            0 => format!("{{exact: '{value}'}}"),
            1 => format!("{{prefix: '{value}'}}"),
            _ => format!(
                "{{regex: '{}'}}",
                dice.pick(&[
                    "^/api/v[0-9]+$",
                    "/items/.*",
                    "(?i)/admin(/.*)?",
                    "[a-z]{1,20}",
                    ".*\\.json"
                ])
            ),
        }
    };
    let mut routes = Vec::new();
    let route_count = dice.roll(3) + 1;
    for n in 0..route_count {
        let last = n + 1 == route_count;
        let mut route = vec![format!("name: g{case}-r{n}")];
        if !last {
            let mut conditions = vec![format!("uri: {}", string_match(dice, "/api"))];
            if dice.chance(50) {
                conditions.push(format!(
                    "headers: {{x-user: {}}}",
                    string_match(dice, "jason")
                ));
            }
            if dice.chance(30) {
                conditions.push("withoutHeaders: {x-canary: {exact: 'no'}}".into());
            }
            if dice.chance(30) {
                conditions.push("method: {exact: GET}".into());
            }
            if dice.chance(30) {
                conditions.push("queryParams: {v: {regex: '[0-9]+'}}".into());
            }
            if dice.chance(30) {
                conditions.push("ignoreUriCase: true".into());
            }
            if dice.chance(30) {
                // Labels this test's Envoy has (`node`): its routes are then a variant of
                // their own, which must show the route like the shared configuration would.
                conditions.push(format!(
                    "sourceLabels: {}",
                    dice.pick(&[
                        "{bosh.io/instance-group: apricot}",
                        "{bosh.io/deployment: sample, bosh.io/az: z1}",
                    ])
                ));
            }
            route.push(format!("match: [{{{}}}]", conditions.join(", ")));
        }
        if !last && dice.chance(15) {
            route.push(format!(
                "redirect: {{uri: /moved, authority: moved.example, redirectCode: {}}}",
                dice.pick(&["301", "302", "303", "307", "308"])
            ));
            routes.push(route);
            continue;
        }
        let subsets = ["v1", "v2", "v3"];
        let destinations = dice.roll(3) + 1;
        let mut left = 100;
        let mut weighted = Vec::new();
        for d in 0..destinations {
            let weight = if d + 1 == destinations {
                left
            } else {
                dice.roll(left + 1)
            };
            left -= weight;
            weighted.push(format!(
                "{{destination: {{host: {WEB}, subset: {}}}, weight: {weight}}}",
                subsets[d as usize]
            ));
        }
        if destinations == 1 && dice.chance(50) {
            weighted = vec![format!(
                "{{destination: {{host: {WEB}, subset: v1, port: {{number: 8080}}}}, headers: {{request: {{set: {{x-to: v1}}}}}}}}"
            )];
        }
        route.push(format!("route: [{}]", weighted.join(", ")));
        if dice.chance(50) {
            route.push(format!("timeout: {}ms", dice.roll(10_000) + 1));
        }
        if dice.chance(50) {
            route.push(format!(
                "retries: {{attempts: {}, perTryTimeout: {}ms, retryOn: '{}'}}",
                dice.roll(5),
                dice.roll(5000) + 1,
                dice.pick(&[
                    "5xx",
                    "gateway-error,connect-failure",
                    "503,reset",
                    "retriable-4xx,409",
                    "unavailable,cancelled"
                ])
            ));
        }
        if dice.chance(40) {
            route.push(format!(
                "fault: {{delay: {{fixedDelay: {}ms, percentage: {{value: {}}}}}, abort: {{httpStatus: {}, percentage: {{value: {}.5}}}}}}",
                dice.roll(1000) + 1,
                dice.roll(101),
                dice.pick(&["400", "429", "500", "503"]),
                dice.roll(99)
            ));
        }
        if dice.chance(30) {
            route.push(format!("mirror: {{host: {SHADOW}}}"));
            route.push(format!("mirrorPercentage: {{value: {}}}", dice.roll(101)));
        }
        if dice.chance(30) {
            route.push("rewrite: {uri: /v2, authority: rewritten.example}".into());
        }
        if dice.chance(40) {
            route.push(
                "headers: {request: {set: {x-a: b}, add: {x-c: d}, remove: [x-e]}, response: {set: {x-served-by: mesh}}}".into(),
            );
        }
        routes.push(route);
    }
    let http: Vec<String> = routes
        .iter()
        .map(|route| format!("    - {}", route.join("\n      ")))
        .collect();
    format!(
        "apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {{name: web}}
  spec:
    host: {WEB}
    trafficPolicy: {}
    subsets:
    - {{name: v1, labels: {{version: v1}}}}
    - {{name: v2, labels: {{version: v2}}, trafficPolicy: {}}}
    - {{name: v3, labels: {{version: v3}}}}
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata: {{name: web}}
  spec:
    hosts: [{WEB}]
    http:
{}
",
        policy(dice),
        policy(dice),
        http.join("\n")
    )
}

/// Generated rule sets, each accepted by the validation, compiled and served in turn: Envoy
/// applies every one (its routes appear) and rejects none.
#[test]
fn envoy_accepts_every_generated_rule_set_the_validation_accepts() {
    const CASES: u64 = 40;
    let logs = captured_logs();
    in_private_netns(move || async move {
        let catalog = catalog();
        let mesh = boshy::rules::MeshView::from_catalog(&catalog);
        let (published, xds) = serve_xds(catalog.clone(), TrafficRules::default()).await;
        let mode = AdsMode::Delta;
        let node = NodeIdentity {
            instance_id: "0f3c-apricot-generated".into(),
            ..node(mode)
        };
        let envoy = start_envoy(&node, xds, mode).await;
        let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
        for case in 0..CASES {
            let yaml = generated_rules(case, &mut dice);
            let parsed = boshy::rules::parse_config(&format!("generated-{case}"), &yaml);
            let validated = boshy::rules::validate(&[parsed], Some(&mesh));
            let errors: Vec<String> = validated.errors().map(ToString::to_string).collect();
            assert!(errors.is_empty(), "case {case}: {errors:?}\n{yaml}");
            let compiled = boshy::rules::compile(&validated.rules, &catalog);
            assert!(
                compiled.warnings.is_empty(),
                "case {case}: {:?}",
                compiled.warnings
            );
            published.traffic.send(Arc::new(compiled.traffic)).unwrap();
            let first_route = format!("g{case}-r0");
            envoy
                .wait_for(
                    &format!("case {case}'s routes (else Envoy rejected them):\n{yaml}"),
                    "/config_dump?resource=dynamic_route_configs",
                    |v| {
                        route_names(v, WEB_CLUSTER)?
                            .contains(&first_route)
                            .then_some(())
                    },
                )
                .await;
        }
        assert_nothing_rejected(&envoy, logs, &node).await;
    });
}

/// ServiceEntries resolved through DNS, through the pilot's own path (checked, made catalog
/// services with VIPs, compiled): Envoy accepts their DNS clusters, resolves their names with
/// the machine's resolver (`localhost` from /etc/hosts, as c-ares reads it before asking a
/// nameserver; an IP address resolves to itself), applies the DestinationRule's policy and
/// subset to them, and carries requests and connections through their VIPs.
#[test]
fn envoy_resolves_the_endpoints_of_service_entries_resolved_through_dns() {
    const EXT: &str = "ext.external.boshy";
    const ONE: &str = "one.external.boshy";
    const EXT_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 20);
    const ONE_VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 21);
    let rules = "apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: ServiceEntry
  metadata: {name: ext}
  spec:
    hosts: [ext.external.boshy]
    ports: [{number: 8080, name: http}]
    resolution: DNS
    endpoints:
    - {address: localhost, labels: {site: named}, locality: z1}
    - {address: 127.0.0.9, labels: {site: literal}}
- apiVersion: networking.istio.io/v1
  kind: ServiceEntry
  metadata: {name: one}
  spec:
    hosts: [one.external.boshy]
    ports: [{number: 5433, name: tcp}]
    resolution: DNS_ROUND_ROBIN
    endpoints: [{address: localhost}]
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: ext}
  spec:
    host: ext.external.boshy
    trafficPolicy:
      loadBalancer: {simple: LEAST_REQUEST}
      outlierDetection: {consecutive5xxErrors: 4}
    subsets: [{name: literal, labels: {site: literal}}]
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata: {name: ext}
  spec:
    hosts: [ext.external.boshy]
    http:
    - match: [{headers: {x-site: {exact: literal}}}]
      route: [{destination: {host: ext.external.boshy, subset: literal}}]
    - route: [{destination: {host: ext.external.boshy}}]
";
    let logs = captured_logs();
    in_private_netns(move || async move {
        let jobs = catalog();
        let parsed = boshy::rules::parse_config("external", rules);
        let mesh = boshy::rules::MeshView::from_catalog(&jobs);
        let validated = boshy::rules::validate(&[parsed], Some(&mesh));
        let errors: Vec<String> = validated.errors().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{errors:?}");
        let vips = |host: &str| Some(if host == EXT { EXT_VIP } else { ONE_VIP });
        let entries = boshy::rules::entry_services(&validated.rules, &jobs, vips);
        let catalog = Arc::new(boshy::catalog::with_entries((*jobs).clone(), entries));
        let compiled = boshy::rules::compile(&validated.rules, &catalog);
        assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);

        http_upstream("127.0.0.1:8080", "ext").await;
        http_upstream("127.0.0.9:8080", "ext").await;
        tcp_upstream("127.0.0.1:5433", "one").await;
        let (_published, xds) = serve_xds(catalog, compiled.traffic).await;
        capture_vip_traffic();
        let mode = AdsMode::Delta;
        let node = NodeIdentity {
            instance_id: "0f3c-apricot-dns".into(),
            ..node(mode)
        };
        let envoy = start_envoy(&node, xds, mode).await;

        let ext = format!("outbound|8080||{EXT}");
        let literal = format!("outbound|8080|literal|{EXT}");
        let one = format!("outbound|5433||{ONE}");
        let resolved = |addresses: &[&str]| -> BTreeSet<String> {
            addresses.iter().map(|a| a.to_string()).collect()
        };
        envoy
            .wait_for(
                "the DNS clusters with the addresses of their names",
                "/clusters?format=json",
                |v| {
                    let hosts = cluster_hosts(v);
                    (hosts.get(&ext)? == &resolved(&["127.0.0.1", "127.0.0.9"])
                        && hosts.get(&literal)? == &resolved(&["127.0.0.9"])
                        && hosts.get(&one)? == &resolved(&["127.0.0.1"]))
                        .then_some(())
                },
            )
            .await;
        let dump = envoy.get("/config_dump").await.expect("a config dump");
        for name in [&ext, &literal, &one] {
            let cluster = active_cluster(&dump, name).expect(name);
            assert_eq!(
                cluster["cluster_type"]["name"], "envoy.cluster.dns",
                "{name}"
            );
            let dns = &cluster["cluster_type"]["typed_config"];
            assert_eq!(dns["dns_lookup_family"], "V4_ONLY", "{name}");
            assert_eq!(dns["respect_dns_ttl"], true, "{name}");
        }
        let logical = &active_cluster(&dump, &one).unwrap()["cluster_type"]["typed_config"];
        assert_eq!(logical["all_addresses_in_single_endpoint"], true);
        for name in [&ext, &literal] {
            let cluster = active_cluster(&dump, name).unwrap();
            assert_eq!(cluster["lb_policy"], "LEAST_REQUEST", "{name}");
            assert_eq!(cluster["outlier_detection"]["consecutive_5xx"], 4, "{name}");
        }

        assert_nothing_rejected(&envoy, logs, &node).await;
        assert!(
            !envoy
                .log_text()
                .contains("deprecated option 'envoy.config.cluster"),
            "no deprecated cluster field:\n{}",
            envoy.log_text()
        );

        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let get = |site: Option<&str>| {
            let request = client.get(format!("http://{EXT_VIP}:8080/"));
            match site {
                Some(site) => request.header("x-site", site),
                None => request,
            }
        };
        let mut answers = BTreeSet::new();
        for _ in 0..20 {
            answers.insert(get(None).send().await.unwrap().text().await.unwrap());
        }
        assert_eq!(
            answers,
            resolved(&["ext@127.0.0.1", "ext@127.0.0.9"]),
            "both names answer through the VIP"
        );
        for _ in 0..5 {
            let answer = get(Some("literal")).send().await.unwrap().text().await;
            assert_eq!(answer.unwrap(), "ext@127.0.0.9", "the subset's name alone");
        }
        let mut connection = TcpStream::connect(SocketAddr::new(ONE_VIP.into(), 5433))
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = connection.read_to_string(&mut answer).await;
        assert_eq!(
            answer, "one@127.0.0.1",
            "the logical DNS cluster's one name"
        );
    });
}

/// A rejected resource built from rules names the configs they came from, in the log and in
/// `/metrics`. (The validation refuses a regex RE2 would; the traffic model carries one here
/// to make Envoy refuse it.)
#[test]
fn a_nack_of_a_resource_built_from_rules_names_its_rule_config() {
    let logs = captured_logs();
    in_private_netns(move || async move {
        let mut rules = ServiceRules {
            configs: BTreeSet::from(["bad-web-rules".to_string()]),
            ..ServiceRules::default()
        };
        let lookahead = HttpMatch {
            path: Some(StringMatch::Regex("/(?=x)".into())),
            ..Default::default()
        };
        let bad = route(
            "bad",
            vec![lookahead],
            forward(vec![to(WEB, 8080, None, 100)]),
        );
        rules.http_routes.insert(8080, vec![bad]);
        let traffic = TrafficRules {
            services: BTreeMap::from([(WEB.to_string(), rules)]),
            scope_pins: Vec::new(),
            security: Default::default(),
        };
        let (_published, xds) = serve_xds(catalog(), traffic).await;
        let mode = AdsMode::Delta;
        let node = NodeIdentity {
            instance_id: "0f3c-apricot-nack".into(),
            ..node(mode)
        };
        let _envoy = start_envoy(&node, xds, mode).await;
        let node_id = node.node_id();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let nack = loop {
            let text = logs.text();
            if let Some(line) = text
                .lines()
                .find(|l| l.contains("NACK") && l.contains(&node_id))
            {
                break line.to_string();
            }
            assert!(tokio::time::Instant::now() < deadline, "no NACK logged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(nack.contains("rule_configs=bad-web-rules"), "{nack}");
        let metrics = boshy::metrics::global().render();
        assert!(
            metrics.contains("boshy_xds_rule_config_nacks_total{config=\"bad-web-rules\"}"),
            "{metrics}"
        );
    });
}
