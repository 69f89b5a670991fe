//! The live web console (docs/console.md), in the lab of `tests/e2e.rs`: the calls VMs make
//! reach the pilot's service graph from the callers' agents; `boshy mesh console` (through
//! `lab mesh console`) serves the console to a real headless Chromium, which draws the lab's
//! services, the calls, the VIP table and the proxy status. (`tests/e2e.rs` checks that the
//! pilot refuses the console and the graph without credentials.)

use std::io::BufRead as _;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{APRICOT, BANANA, LAB};

/// A window is 10 s; its report reaches the pilot within a few seconds more.
const REPORTED: Duration = Duration::from_secs(40);

/// The graph's edge from instance group `source` of sample-deployment to `destination`,
/// once it satisfies `ready`.
fn wait_for_edge(source: &str, destination: &str, ready: impl Fn(&Value) -> bool) -> Value {
    wait_for_edge_from(("sample-deployment", source), destination, ready)
}

/// The graph's edge from the box `(deployment, instance_group)` to `destination`, once it
/// satisfies `ready`.
pub(super) fn wait_for_edge_from(
    (deployment, source): (&str, &str),
    destination: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + REPORTED;
    loop {
        let graph: Value =
            serde_json::from_str(&LAB.ok(&["api", "/v1/graph"])).expect("the graph is JSON");
        let edge = graph["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .find(|edge| {
                edge["source"]["deployment"] == deployment
                    && edge["source"]["instance_group"] == source
                    && edge["destination"] == destination
            })
            .cloned();
        match edge {
            Some(edge) if ready(&edge) => return edge,
            _ if Instant::now() > deadline => {
                panic!(
                    "no edge {deployment}/{source} -> {destination} as expected within \
                     {REPORTED:?}: {graph:#}"
                )
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// `lab mesh console` on a free loopback port: the process and the URL it printed.
pub(super) struct Console {
    process: std::process::Child,
    pub(super) url: String,
}

impl Console {
    pub(super) fn start() -> Console {
        let mut process = LAB.spawn(&["mesh", "console", "--listen", "127.0.0.1:0"]);
        let stdout = process.stdout.take().expect("piped stdout");
        let mut url = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut url)
            .expect("the console's URL");
        let url = url.trim().to_string();
        assert!(
            url.starts_with("http://127.0.0.1:") && url.ends_with("/console/"),
            "`boshy mesh console` prints the URL to open: {url:?}"
        );
        Console { process, url }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

pub(crate) fn chromium_draws_the_lab_in_the_console() {
    // Calls nothing else in the lab makes, kept up while the console is read (a window is
    // forgotten once its VM goes quiet): banana/2 to banana's own service, every one
    // answered 503.
    let failing_calls = LAB.steady_load("banana/2", &format!("http://{BANANA}:9002/status/503"), 5);
    let failing = wait_for_edge("banana", BANANA, |edge| {
        edge["requests_per_second"].as_f64() > Some(0.0)
    });
    assert_eq!(failing["error_ratio"], 1.0, "every call failed: {failing}");
    assert_eq!(
        failing["reporting_instances"], 1,
        "banana/2 alone: {failing}"
    );
    assert!(failing["p99_ms"].as_f64().is_some(), "{failing}");
    assert_eq!(
        failing["destination_group"],
        serde_json::json!({"deployment": "sample-deployment", "instance_group": "banana"})
    );
    // TCP connections from banana/1 to apricot's tcp_proxy port.
    for _ in 0..3 {
        let code = LAB.http_status("banana/1", &format!("http://{APRICOT}:9001/get"), &[]);
        assert_eq!(code, "200");
    }
    let tcp = wait_for_edge("banana", APRICOT, |edge| {
        edge["connections_per_second"].as_f64() > Some(0.0)
    });
    assert_eq!(tcp["failed_connection_ratio"], 0.0, "{tcp}");

    let console = Console::start();
    // Another user of the machine, without the secret in the URL, gets nothing.
    let (base, _) = console.url.rsplit_once('/').unwrap();
    let (origin, _) = base.trim_end_matches("/console").rsplit_once('/').unwrap();
    let guessed = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{origin}/guess/v1/registration"))
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&guessed.stdout), "403");

    let dom = boshy_test_support::chromium::dump_dom(&console.url);
    assert!(
        dom.contains(r#"data-loaded="true""#),
        "the page read the pilot: {dom}"
    );
    for service in [BANANA, APRICOT] {
        assert!(
            dom.contains(&format!(r#"data-service="{service}""#)),
            "{service} drawn in the graph: {dom}"
        );
    }
    for deployment in ["sample-deployment", "bookinfo"] {
        assert!(
            dom.contains(&format!(r#"data-deployment="{deployment}""#)),
            "{deployment} drawn: {dom}"
        );
    }
    assert!(
        dom.contains(&format!(
            r#"<g class="edge bad" data-edge="sample-deployment/banana to {BANANA}""#
        )),
        "the failing calls drawn as a failing arrow: {dom}"
    );
    assert!(
        dom.contains("sample-deployment/apricot/3"),
        "apricot/3's Envoy in the proxy status: {dom}"
    );
    // No VM outside BOSH has joined yet (tests/e2e/outside.rs, later, reads its row): the
    // empty table says so.
    assert!(
        dom.contains("No VM outside BOSH is registered."),
        "the empty table of VMs outside BOSH: {dom}"
    );
    assert!(dom.contains("<td>169.254."), "the VIP table: {dom}");
    let png = std::env::temp_dir().join(format!("{}-console.png", LAB.name));
    boshy_test_support::chromium::screenshot(&console.url, &png, 1600, 1200);
    let size = std::fs::metadata(&png).expect("the screenshot").len();
    assert!(size > 10_000, "a screenshot of a drawn page: {size} bytes");
    let outcomes = failing_calls.stop();
    assert!(
        !outcomes.is_empty() && outcomes.iter().all(|outcome| outcome.starts_with("503")),
        "{outcomes:?}"
    );
}
