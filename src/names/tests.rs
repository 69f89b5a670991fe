//! The stream end to end over loopback: `serve` and `follow` together, and `follow` against
//! hand-written broken pilots.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::follower::AgentLink;
use super::follower::{follow_with, FollowTiming};
use super::server::{serve_with_heartbeat, AgentSettings};
use super::table::NameTable;
use crate::catalog::model::{Catalog, Endpoint, Protocol};
use crate::catalog::testing::{self, endpoint, service};
use crate::health::testing::{instance, report as testing_report};
use crate::health::{AgentRegistry, AgentReport, ProbeSet, XdsView};
use crate::xds::sync::SyncBoard;

/// Far longer than anything here should take; only a broken implementation waits this long.
const PATIENCE: Duration = Duration::from_secs(20);

const FAST: FollowTiming = FollowTiming {
    idle_timeout: Duration::from_secs(5),
    backoff_min: Duration::from_millis(20),
    backoff_max: Duration::from_millis(200),
};

/// A catalog with one service per name, VIPs 169.254.255.1, .2, ...
fn catalog(version: u64, jobs: &[&str]) -> Catalog {
    testing::catalog(
        version,
        jobs.iter()
            .zip(1u8..)
            .map(|(job, host)| service("d", "g", job).vip([169, 254, 255, host])),
    )
}

struct Pilot {
    address: SocketAddr,
    catalog: watch::Sender<Arc<Catalog>>,
    agents: Arc<AgentRegistry>,
    server: JoinHandle<anyhow::Result<()>>,
}

impl Pilot {
    async fn start(initial: Catalog) -> Pilot {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Pilot::start_on(listener, initial)
    }

    fn start_on(listener: TcpListener, initial: Catalog) -> Pilot {
        let (catalog, rx) = watch::channel(Arc::new(initial));
        Pilot::serving(listener, catalog, rx, AgentRegistry::default())
    }

    /// A pilot whose drains wait on `board` for the snapshots of its catalog.
    async fn start_with_xds(initial: Catalog, board: Arc<SyncBoard>) -> Pilot {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (catalog, rx) = watch::channel(Arc::new(initial));
        let xds = XdsView {
            snapshots: crate::xds::cache::follow(rx.clone()),
            board,
            scopes: Arc::default(),
        };
        Pilot::serving(listener, catalog, rx, AgentRegistry::with_xds(xds))
    }

    fn serving(
        listener: TcpListener,
        catalog: watch::Sender<Arc<Catalog>>,
        rx: watch::Receiver<Arc<Catalog>>,
        agents: AgentRegistry,
    ) -> Pilot {
        let address = listener.local_addr().unwrap();
        let agents = Arc::new(agents);
        let server = tokio::spawn(serve_with_heartbeat(
            listener,
            rx,
            agents.clone(),
            Duration::from_millis(100),
            None,
            AgentSettings {
                workload_heartbeat_seconds: 1,
            },
        ));
        Pilot {
            address,
            catalog,
            agents,
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops the server and closes its open streams, as a pilot process exiting would.
    async fn stop(self) -> SocketAddr {
        self.server.abort();
        assert!(self.server.await.unwrap_err().is_cancelled());
        self.address
    }
}

fn start_follower(pilots: Vec<String>, timing: FollowTiming) -> watch::Receiver<Arc<NameTable>> {
    let (tx, rx) = watch::channel(Arc::new(NameTable::default()));
    tokio::spawn(follow_with(pilots, None, tx, None, timing));
    rx
}

async fn wait_for_version(rx: &mut watch::Receiver<Arc<NameTable>>, version: u64) -> NameTable {
    let table = tokio::time::timeout(PATIENCE, rx.wait_for(|t| t.version == version))
        .await
        .unwrap_or_else(|_| panic!("table version {version} never arrived"))
        .unwrap();
    (**table).clone()
}

/// An address where nothing listens.
async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[tokio::test]
async fn catalog_changes_reach_the_follower() {
    let pilot = Pilot::start(catalog(1, &["a"])).await;
    let mut rx = start_follower(vec![pilot.url()], FAST);
    let table = wait_for_version(&mut rx, 1).await;
    assert_eq!(table, NameTable::from_catalog(&catalog(1, &["a"])));

    pilot
        .catalog
        .send(Arc::new(catalog(2, &["a", "b"])))
        .unwrap();
    let table = wait_for_version(&mut rx, 2).await;
    assert_eq!(table.names.len(), 2);
    assert_eq!(table.names["b.g.d.boshy"], Ipv4Addr::new(169, 254, 255, 2));
}

#[tokio::test]
async fn a_catalog_change_that_keeps_every_name_and_vip_sends_no_table() {
    let pilot = Pilot::start(catalog(1, &["a"])).await;
    let mut rx = start_follower(vec![pilot.url()], FAST);
    wait_for_version(&mut rx, 1).await;
    // An endpoint's health changed: a new catalog version, the same names.
    pilot.catalog.send(Arc::new(catalog(2, &["a"]))).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.changed())
            .await
            .is_err(),
        "no table for the same names"
    );
    pilot
        .catalog
        .send(Arc::new(catalog(3, &["a", "b"])))
        .unwrap();
    assert_eq!(wait_for_version(&mut rx, 3).await.names.len(), 2);
}

#[tokio::test]
async fn one_dead_pilot_does_not_stop_following_the_other() {
    let pilot = Pilot::start(catalog(1, &["a"])).await;
    let mut rx = start_follower(vec![dead_address().await, pilot.url()], FAST);
    wait_for_version(&mut rx, 1).await;
    pilot.catalog.send(Arc::new(catalog(2, &["b"]))).unwrap();
    wait_for_version(&mut rx, 2).await;
}

#[tokio::test]
async fn every_pilot_is_followed_at_once() {
    let first = Pilot::start(catalog(1, &["a"])).await;
    let second = Pilot::start(catalog(1, &["a"])).await;
    let mut rx = start_follower(vec![first.url(), second.url()], FAST);
    wait_for_version(&mut rx, 1).await;
    // The first pilot goes away for good; the second one's changes still arrive, without
    // waiting for the first one's backoff.
    first.stop().await;
    second.catalog.send(Arc::new(catalog(2, &["b"]))).unwrap();
    wait_for_version(&mut rx, 2).await;
}

#[tokio::test]
async fn a_restarted_pilot_is_followed_again() {
    let pilot = Pilot::start(catalog(1, &["a"])).await;
    let mut rx = start_follower(vec![pilot.url()], FAST);
    wait_for_version(&mut rx, 1).await;
    let address = pilot.stop().await;

    let listener = TcpListener::bind(address).await.unwrap();
    let restarted = Pilot::start_on(listener, Catalog::default());
    // Like a real pilot: the placeholder first, then the catalog from its first poll.
    restarted
        .catalog
        .send(Arc::new(catalog(3, &["c"])))
        .unwrap();
    let table = wait_for_version(&mut rx, 3).await;
    assert!(table.names.contains_key("c.g.d.boshy"));
}

#[tokio::test]
async fn the_placeholder_catalog_is_never_sent_but_heartbeats_are() {
    let pilot = Pilot::start(Catalog::default()).await;
    let mut response = reqwest::get(format!("{}/v1/names/watch", pilot.url()))
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        super::wire::CONTENT_TYPE
    );
    let mut received = Vec::new();
    while !received.ends_with(b"\n") {
        received.extend_from_slice(&response.chunk().await.unwrap().unwrap());
    }
    assert_eq!(received, b"{\"heartbeat\":0}\n");

    pilot.catalog.send(Arc::new(catalog(5, &["a"]))).unwrap();
    let mut received = Vec::new();
    while !received.ends_with(b"\n") {
        received.extend_from_slice(&response.chunk().await.unwrap().unwrap());
    }
    let line: super::wire::Message = serde_json::from_slice(&received).unwrap();
    assert_eq!(
        line,
        super::wire::Message::Table(NameTable::from_catalog(&catalog(5, &["a"])))
    );
}

/// A pilot that answers its n-th connection with the n-th body, then holds the connection
/// open; reports each connection it accepts.
async fn scripted_pilot(bodies: Vec<Vec<u8>>) -> (String, mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (accepted, accepted_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut open = Vec::new();
        for (n, body) in bodies.into_iter().enumerate() {
            let (mut stream, _) = listener.accept().await.unwrap();
            accepted.send(n).unwrap();
            let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n";
            let _ = stream.write_all(head).await;
            let _ = stream.write_all(&body).await;
            open.push(stream);
        }
        std::future::pending::<()>().await;
    });
    (url, accepted_rx)
}

fn table_line(version: u64) -> Vec<u8> {
    super::wire::Message::Table(NameTable::from_catalog(&catalog(version, &["a"]))).to_line()
}

/// Collects everything logged on this thread (tokio tests run on one thread).
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_garbage_line_is_logged_and_the_follower_reconnects() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let mut first = table_line(1);
    first.extend_from_slice(b"{\"table\": garbage\n");
    let (url, mut accepted) = scripted_pilot(vec![first, table_line(2)]).await;
    let mut rx = start_follower(vec![url.clone()], FAST);
    wait_for_version(&mut rx, 2).await;
    assert_eq!(accepted.recv().await, Some(0));
    assert_eq!(accepted.recv().await, Some(1));
    let logs = logs.text();
    let complaint = logs
        .lines()
        .find(|line| line.contains("bad line"))
        .unwrap_or_else(|| panic!("no complaint about the bad line in:\n{logs}"));
    assert!(complaint.contains(&url), "{complaint}");
    assert!(complaint.contains("WARN"), "{complaint}");
}

#[tokio::test]
async fn a_silent_stream_is_abandoned_and_retried() {
    let timing = FollowTiming {
        idle_timeout: Duration::from_millis(300),
        ..FAST
    };
    // The first pilot connection sends a table, then nothing at all, not even heartbeats.
    let (url, mut accepted) = scripted_pilot(vec![table_line(1), table_line(2)]).await;
    let mut rx = start_follower(vec![url], timing);
    wait_for_version(&mut rx, 2).await;
    assert_eq!(accepted.recv().await, Some(0));
    assert_eq!(accepted.recv().await, Some(1));
}

#[tokio::test]
async fn an_invalid_table_is_not_published() {
    let mut evil = NameTable::from_catalog(&catalog(1, &["a"]));
    evil.names
        .insert("bank.example.com".into(), Ipv4Addr::new(169, 254, 255, 9));
    let (url, mut accepted) = scripted_pilot(vec![
        super::wire::Message::Table(evil).to_line(),
        table_line(2),
    ])
    .await;
    let mut rx = start_follower(vec![url], FAST);
    let table = wait_for_version(&mut rx, 2).await;
    assert!(!table.names.contains_key("bank.example.com"));
    assert_eq!(accepted.recv().await, Some(0));
    assert_eq!(accepted.recv().await, Some(1));
}

/// A catalog where instance `a` of deployment `d` serves job `web` on port 8080 at
/// `address`.
fn agent_catalog(version: u64, address: &str) -> Catalog {
    let web = service("d", "g", "web")
        .vip([169, 254, 255, 1])
        .port("http", 8080, Protocol::Http)
        .endpoint(Endpoint {
            instance: "a".into(),
            ..endpoint(address)
        });
    testing::catalog(version, [web])
}

/// A follower for instance `a` of `d`, whose agent's report is whatever the test sends.
struct FollowingAgent {
    probes: watch::Receiver<Option<ProbeSet>>,
    reports: watch::Sender<Option<AgentReport>>,
    follower: JoinHandle<()>,
}

fn start_agent(pilots: Vec<String>, first_report: Option<AgentReport>) -> FollowingAgent {
    let (tables, _) = watch::channel(Arc::new(NameTable::default()));
    let (probes_tx, probes) = watch::channel(None);
    let (reports, reports_rx) = watch::channel(first_report);
    let link = AgentLink {
        instance: instance("a"),
        probes: Arc::new(probes_tx),
        reports: reports_rx,
        scope: None,
    };
    let follower = tokio::spawn(follow_with(pilots, None, tables, Some(link), FAST));
    FollowingAgent {
        probes,
        reports,
        follower,
    }
}

fn report(failing: &[u16]) -> Option<AgentReport> {
    Some(testing_report("a", failing, false))
}

async fn wait_for_failing(pilot: &Pilot, failing: &[u16]) {
    let mut health = pilot.agents.health();
    let wanted: std::collections::BTreeSet<u16> = failing.iter().copied().collect();
    tokio::time::timeout(
        PATIENCE,
        health.wait_for(|h| h.get("d", "a").is_some_and(|a| a.failing_ports == wanted)),
    )
    .await
    .unwrap_or_else(|_| panic!("the pilot never saw failing ports {failing:?}"))
    .unwrap();
}

#[tokio::test]
async fn an_agent_gets_its_probes_and_every_pilot_gets_its_reports_again_after_a_restart() {
    let first = Pilot::start(agent_catalog(1, "127.0.0.1")).await;
    let second = Pilot::start(agent_catalog(1, "127.0.0.1")).await;
    let mut agent = start_agent(vec![first.url(), second.url()], None);
    let probes = tokio::time::timeout(PATIENCE, agent.probes.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!(
        probes,
        Some(ProbeSet {
            address: [127, 0, 0, 1].into(),
            ports: vec![8080],
            workload: None,
        })
    );
    agent.reports.send_replace(report(&[8080]));
    wait_for_failing(&first, &[8080]).await;
    wait_for_failing(&second, &[8080]).await;
    agent.reports.send_replace(report(&[]));
    wait_for_failing(&first, &[]).await;

    // A restarted pilot knows nothing: the agent's new stream brings its state back.
    let address = first.stop().await;
    let restarted = Pilot::start_on(
        TcpListener::bind(address).await.unwrap(),
        agent_catalog(1, "127.0.0.1"),
    );
    wait_for_failing(&restarted, &[]).await;
    assert_eq!(restarted.agents.covered().borrow().len(), 1);
}

#[tokio::test]
async fn a_claim_from_another_address_gets_no_probes_and_its_reports_are_refused() {
    let pilot = Pilot::start(agent_catalog(1, "10.9.9.9")).await;
    let mut agent = start_agent(vec![pilot.url()], None);
    agent.reports.send_replace(report(&[8080]));
    // The table arrives, probes never do.
    let mut tables = start_follower(vec![pilot.url()], FAST);
    wait_for_version(&mut tables, 1).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), agent.probes.changed())
            .await
            .is_err(),
        "no probes for a stream from 127.0.0.1 claiming the instance listed at 10.9.9.9"
    );
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/names/health", pilot.url()))
        .json(&report(&[]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
    assert!(refused.text().await.unwrap().contains("10.9.9.9"));
    assert!(pilot.agents.health().borrow().is_empty());

    // Listed at this address now, but a report without the instance's stream open here is
    // not taken either.
    let listed = Pilot::start(agent_catalog(1, "127.0.0.1")).await;
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/names/health", listed.url()))
        .json(&report(&[]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::CONFLICT);
}

#[tokio::test]
async fn when_the_agent_goes_away_its_report_no_longer_counts() {
    let pilot = Pilot::start(agent_catalog(1, "127.0.0.1")).await;
    let agent = start_agent(vec![pilot.url()], report(&[8080]));
    wait_for_failing(&pilot, &[8080]).await;
    agent.follower.abort();
    drop(agent.reports);
    let mut health = pilot.agents.health();
    tokio::time::timeout(PATIENCE, health.wait_for(|h| h.is_empty()))
        .await
        .expect("the stream's end takes the report out")
        .unwrap();
}

#[tokio::test]
async fn a_drain_is_answered_once_every_envoy_took_the_snapshot_without_the_instance() {
    let board = Arc::new(SyncBoard::default());
    let pilot = Pilot::start_with_xds(agent_catalog(1, "127.0.0.1"), board.clone()).await;
    let drained = |timeout: u64| {
        let url = format!(
            "{}/v1/names/drained?deployment=d&instance=a&timeout_seconds={timeout}",
            pilot.url()
        );
        async move {
            let response = reqwest::get(url).await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    // An Envoy connected, holding the first snapshot.
    let mut envoy = board.join_anonymous(1);
    envoy.publish();
    let (status, text) = drained(1).await;
    assert_eq!(status, reqwest::StatusCode::GATEWAY_TIMEOUT);
    assert!(text.contains("still in the catalog"), "{text}");

    // The agent reported leaving: a catalog without the instance, built into snapshot 2.
    let mut leaving = agent_catalog(2, "127.0.0.1");
    leaving.services[0].endpoints[0].healthy = false;
    pilot.catalog.send_replace(Arc::new(leaving));
    let waiting = tokio::spawn(drained(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the Envoy has not taken snapshot 2");
    envoy.saw_snapshot(2, std::time::Instant::now());
    envoy.sent("n1");
    envoy.publish();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "sent, not yet ACKed");
    envoy.answered("n1");
    envoy.publish();
    let (status, text) = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, reqwest::StatusCode::OK, "{text}");
    assert!(text.contains("\"drained\":true"), "{text}");

    // Only the instance's own VM may ask.
    let elsewhere = Pilot::start_with_xds(agent_catalog(1, "10.9.9.9"), board).await;
    let response = reqwest::get(format!(
        "{}/v1/names/drained?deployment=d&instance=a",
        elsewhere.url()
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_garbage_report_or_drain_request_is_refused_and_the_agent_still_counts() {
    let pilot = Pilot::start(agent_catalog(1, "127.0.0.1")).await;
    let agent = start_agent(vec![pilot.url()], report(&[8080]));
    wait_for_failing(&pilot, &[8080]).await;
    let client = reqwest::Client::new();
    for body in [
        "not json",
        "{\"deployment\":\"d\"}",
        "{\"deployment\":\"d\",\"instance\":\"a\",\"extra\":1}",
    ] {
        let response = client
            .post(format!("{}/v1/names/health", pilot.url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_client_error(),
            "{body}: {}",
            response.status()
        );
    }
    let response = client
        .get(format!("{}/v1/names/drained?deployment=d", pilot.url()))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    // The agent's report still stands.
    wait_for_failing(&pilot, &[8080]).await;
    drop(agent);
}

/// `POST` of `body` as JSON to `url`: the status and the text of the answer.
async fn post_json(url: String, body: serde_json::Value) -> (reqwest::StatusCode, String) {
    let response = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

#[tokio::test]
async fn an_agent_changes_only_its_own_scope_and_an_add_waits_for_its_envoys() {
    use crate::scope::registry::testing::listed;
    use crate::scope::ScopeAnswer;
    let board = Arc::new(SyncBoard::default());
    let pilot = Pilot::start_with_xds(agent_catalog(1, "127.0.0.1"), board.clone()).await;
    let scopes = pilot.agents.xds().unwrap().scopes.clone();
    scopes.set_listed(listed("a", &["127.0.0.1"]));
    let post = |body| post_json(format!("{}/v1/names/scope", pilot.url()), body);

    let (status, body) =
        post(serde_json::json!({"deployment": "d", "instance": "a", "set": ["x.boshy"]})).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let answer: ScopeAnswer = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer,
        ScopeAnswer {
            streams: 0,
            synced: false
        }
    );
    let mut scope = scopes.watch(&instance("a"));
    let asked = scope.borrow_and_update().asked.clone().unwrap();
    assert_eq!(asked.iter().collect::<Vec<_>>(), ["x.boshy"]);

    let (status, body) =
        post(serde_json::json!({"deployment": "d", "instance": "b", "set": []})).await;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "not listed: {body}");
    scopes.set_listed(listed("a", &["10.9.9.9"]));
    let (status, body) =
        post(serde_json::json!({"deployment": "d", "instance": "a", "set": []})).await;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("another address"), "{body}");
    scopes.set_listed(listed("a", &["127.0.0.1"]));
    let (status, body) = post(serde_json::json!({"deployment": "d", "instance": "a"})).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert!(body.contains("exactly one of `add` and `set`"), "{body}");
    assert_eq!(
        scope.borrow_and_update().asked.as_deref().map(|a| a.len()),
        Some(1),
        "refused requests change nothing"
    );

    // An add waits until the instance's one stream here holds the new generation.
    let stream = board.join_anonymous(0);
    stream.publish_scope(&instance("a"), Some(0));
    let adding = tokio::spawn(post(
        serde_json::json!({"deployment": "d", "instance": "a", "add": ["y.boshy"]}),
    ));
    scope.changed().await.unwrap();
    let generation = scope.borrow_and_update().generation;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!adding.is_finished(), "Envoy does not hold it yet");
    stream.publish_scope(&instance("a"), Some(generation));
    let (status, body) = adding.await.unwrap();
    assert_eq!(status, reqwest::StatusCode::OK);
    let answer: ScopeAnswer = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer,
        ScopeAnswer {
            streams: 1,
            synced: true
        }
    );
}

#[tokio::test]
async fn an_agent_reports_calls_for_its_own_instance_only_and_they_are_kept_under_its_group() {
    use crate::scope::registry::testing::listed;
    let pilot = Pilot::start_with_xds(agent_catalog(1, "127.0.0.1"), Arc::default()).await;
    pilot
        .agents
        .xds()
        .unwrap()
        .scopes
        .set_listed(listed("a", &["127.0.0.1"]));
    let post = |body| post_json(format!("{}/v1/names/traffic", pilot.url()), body);
    let calls = serde_json::json!([{"destination": "x.g.d.boshy", "requests": 5, "errors": 1}]);
    let current = || pilot.agents.traffic().current(std::time::Instant::now());

    let (status, body) = post(
        serde_json::json!({"deployment": "d", "instance": "b", "window_ms": 10000, "calls": calls}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "not listed: {body}");
    let (status, body) = post(
        serde_json::json!({"deployment": "d", "instance": "a", "window_ms": 0, "calls": calls}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert!(body.contains("window_ms 0"), "{body}");
    assert_eq!(current(), vec![], "refused reports are not kept");

    let (status, body) = post(
        serde_json::json!({"deployment": "d", "instance": "a", "window_ms": 10000, "calls": calls}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT, "{body}");
    let windows = current();
    assert_eq!(windows.len(), 1);
    assert_eq!(
        windows[0].source.instance_group, "g",
        "the director's group"
    );
    assert_eq!(windows[0].report.calls[0].requests, 5);
}

#[tokio::test]
async fn a_workload_groups_member_gets_the_groups_probe_and_the_pilots_heartbeat() {
    use crate::catalog::model::{Probe, ProbeAction, Service};
    use crate::health::WorkloadProbe;
    let probe = Probe {
        initial_delay_seconds: 0,
        timeout_seconds: 1,
        period_seconds: 10,
        success_threshold: 1,
        failure_threshold: 3,
        action: ProbeAction::Exec {
            command: vec!["/bin/true".into()],
        },
    };
    // Registration `a` of a WorkloadGroup in config `d`: instance `a` of "deployment" `d`.
    let group = Service {
        workload_group: Some("d/vms".into()),
        probe: Some(probe.clone()),
        hostname: "vms.vms.d.boshy".into(),
        ..service("", "", "")
            .port("http", 9080, Protocol::Http)
            .endpoint(Endpoint {
                instance: "a".into(),
                ..endpoint("127.0.0.1")
            })
            .build()
    };
    let pilot = Pilot::start(testing::catalog(1, [group])).await;
    let mut agent = start_agent(vec![pilot.url()], None);
    let probes = tokio::time::timeout(PATIENCE, agent.probes.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!(
        probes,
        Some(ProbeSet {
            address: [127, 0, 0, 1].into(),
            ports: vec![9080],
            workload: Some(WorkloadProbe {
                probe: Some(probe),
                heartbeat_seconds: 1,
            }),
        }),
        "the pilot's `AgentSettings`"
    );
    // Its report is taken as any agent's.
    agent.reports.send_replace(report(&[9080]));
    wait_for_failing(&pilot, &[9080]).await;
}

/// A pilot that streams a table and `probes` to every follower, then holds the stream open,
/// and counts the health reports it takes.
async fn counting_pilot(probes: ProbeSet) -> (String, mpsc::UnboundedReceiver<AgentReport>) {
    use axum::routing::{get, post};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (taken, taken_rx) = mpsc::unbounded_channel();
    let lines = [
        table_line(1),
        super::wire::Message::Probes(probes).to_line(),
    ]
    .concat();
    let watch = move || {
        let lines = lines.clone();
        async move {
            let first = futures::stream::iter([Ok::<_, std::convert::Infallible>(lines)]);
            axum::body::Body::from_stream(futures::StreamExt::chain(
                first,
                futures::stream::pending(),
            ))
        }
    };
    let report = move |axum::Json(report): axum::Json<AgentReport>| {
        let _ = taken.send(report);
        async { axum::http::StatusCode::NO_CONTENT }
    };
    let router = axum::Router::new()
        .route(super::wire::WATCH_PATH, get(watch))
        .route(crate::health::report::REPORT_PATH, post(report));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, taken_rx)
}

#[tokio::test]
async fn a_report_published_again_unchanged_is_sent_again_to_every_pilot() {
    // What the prober does at a WorkloadGroup member's heartbeat: the same report, marked
    // changed.
    let set = ProbeSet {
        address: [127, 0, 0, 1].into(),
        ports: vec![],
        workload: None,
    };
    let (first, mut first_taken) = counting_pilot(set.clone()).await;
    let (second, mut second_taken) = counting_pilot(set).await;
    let agent = start_agent(vec![first, second], report(&[]));
    let wanted = report(&[]).unwrap();
    for taken in [&mut first_taken, &mut second_taken] {
        let got = tokio::time::timeout(PATIENCE, taken.recv()).await.unwrap();
        assert_eq!(got.as_ref(), Some(&wanted), "sent once the probes came");
    }
    for _ in 0..2 {
        agent.reports.send_if_modified(|current| current.is_some());
        for taken in [&mut first_taken, &mut second_taken] {
            let got = tokio::time::timeout(PATIENCE, taken.recv()).await.unwrap();
            assert_eq!(got.as_ref(), Some(&wanted), "the same report, again");
        }
    }
}
