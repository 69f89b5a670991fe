//! `boshy-lab demo`: the prototype's tire-kicking story, end to end, with what a person
//! wants to see printed, then traffic rules routing bookinfo.

use std::collections::BTreeMap;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::jobs::release_dir;
use super::rules::RulesCli;
use super::{net, ready, up, LabState, Layout, ProcessAction};

const CLIENT_VM: &str = "apricot/3";
const SERVICE: &str = "example-httpbin.banana.sample-deployment";
const CURLS: usize = 9;
/// A VM that booted a moment ago may still be failing Envoy's active health check (its
/// workload started after the check ran): keep curling a little longer before giving up.
const MAX_CURLS: usize = 30;
const BANANA_INSTANCES: usize = 3;

pub async fn run(layout: &Layout) -> Result<()> {
    let state = up(layout).await?;
    println!("\n== The control plane's catalog (GET /v1/registration)");
    for service in ready::registration(&state).await? {
        let ports: Vec<String> = service
            .ports
            .iter()
            .map(|p| format!("{}/{} ({})", p.number, p.name, p.protocol))
            .collect();
        let healthy = service.endpoints.iter().filter(|e| e.healthy).count();
        println!(
            "  {:<55} {:<16} ports {:<24} endpoints {healthy}/{} healthy",
            service.hostname,
            service.vip,
            ports.join(", "),
            service.endpoints.len()
        );
    }
    let vm = &state.vms[state.find_vm(CLIENT_VM)?];
    let hostname = format!("{SERVICE}.{}", layout.tld);
    println!(
        "\n== On {} (like `bosh ssh {CLIENT_VM}`): dig {hostname}",
        vm.name()
    );
    // Each Envoy holds only what its VM asked for (docs/scope.md): the first answer for a name
    // waits until the VM's Envoy has that service.
    let before = ready::envoy_mesh_clusters(vm)?;
    let asked = Instant::now();
    let answers = ready::resolve(vm, &hostname)?;
    let waited = asked.elapsed();
    println!("  {hostname} -> {}", answers.join(", "));
    let after = ready::envoy_mesh_clusters(vm)?;
    match before.is_empty() {
        true => println!(
            "  its Envoy held no service of the mesh before; dig took {} ms, its answer waiting until \
             Envoy had {}",
            waited.as_millis(),
            after.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
        false => println!(
            "  its Envoy holds what this VM asked for: {}",
            after.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
    let url = format!("http://{hostname}:9002/get");
    println!(
        "\n== On {}: curl {url}, {CURLS} times (more if an instance has not answered yet)",
        vm.name()
    );
    let mut answered_by: BTreeMap<String, usize> = BTreeMap::new();
    for attempt in 0..MAX_CURLS {
        if attempt >= CURLS && answered_by.len() >= BANANA_INSTANCES {
            break;
        }
        if attempt >= CURLS {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        let output = net::run_in(&vm.namespace, &["curl", "-sS", "--max-time", "5", &url])?;
        // `lab up` returns once every serving VM is ready, so this is not expected; a failed
        // answer is shown, not hidden, and the next curl tried.
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
            let text = String::from_utf8_lossy(&output.stdout);
            println!("  failed: {}", text.lines().next().unwrap_or_default());
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        };
        let instance = &body["instance"];
        let who = format!(
            "{}/{} ({})",
            instance["instance_group"].as_str().unwrap_or("?"),
            instance["index"],
            instance["ip"].as_str().unwrap_or("?")
        );
        // The caller's identity as banana's Envoy verified it (mutual TLS, docs/security.md).
        let caller = body["caller"].as_str().unwrap_or("none (plaintext)");
        println!("  answered by {who}; the caller, as its Envoy verified it: {caller}");
        *answered_by.entry(who).or_default() += 1;
    }
    println!(
        "\n== Summary: {} distinct banana instances answered",
        answered_by.len()
    );
    for (who, count) in &answered_by {
        println!("  {who}: {count}");
    }
    if answered_by.len() < BANANA_INSTANCES {
        bail!(
            "expected all three banana instances to answer, got {}",
            answered_by.len()
        );
    }
    request_metrics(&state).await?;
    service_graph(&state).await?;
    let mut state = state;
    health_from_the_vm(&mut state, &url).await?;
    traffic_rules(layout, &state).await?;
    println!(
        "\nNext: the live web console, `scripts/lab mesh console` (docs/console.md); every step of Istio's bookinfo tasks in docs/bookinfo.md; `scripts/lab update banana` (a rolling deploy, drained: docs/health.md); `scripts/lab down` when done."
    );
    Ok(())
}

/// What the curls above left in the request metrics of both sides (docs/telemetry.md).
async fn request_metrics(state: &LabState) -> Result<()> {
    println!(
        "\n== Request metrics, as Prometheus scrapes them (GET https://<VM>:15090/metrics, mutual TLS; docs/telemetry.md)"
    );
    // Envoys send their access logs every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let banana = format!("{SERVICE}.{}", state.layout.tld);
    let client = &state.vms[state.find_vm(CLIENT_VM)?];
    let servers = state
        .vms
        .iter()
        .filter(|vm| vm.deployment == "sample-deployment" && vm.instance_group == "banana");
    for vm in std::iter::once(client).chain(servers) {
        let text = ready::vm_metrics(state, vm).await?;
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("boshy_requests_total{") && line.contains(&banana))
            .collect();
        if lines.is_empty() {
            println!("  on {:<22} no request to {banana} counted yet", vm.name());
        }
        for line in lines {
            let label = |name: &str| {
                line.split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or("?")
                    .to_string()
            };
            println!(
                "  on {:<22} reporter={:<12} {}/{} -> {}/{} job {} :{} {} : {}",
                vm.name(),
                label("reporter"),
                label("source_deployment"),
                label("source_instance_group"),
                label("destination_deployment"),
                label("destination_instance_group"),
                label("destination_job"),
                label("destination_port"),
                label("response_code"),
                line.rsplit(' ').next().unwrap_or("?")
            );
        }
    }
    Ok(())
}

/// The calls above as the console's service graph has them (docs/console.md): the callers'
/// agents report a window every 10 s.
async fn service_graph(state: &LabState) -> Result<()> {
    println!("\n== The service graph of the live web console (GET /v1/graph; docs/console.md)");
    let banana = format!("{SERVICE}.{}", state.layout.tld);
    let graph = || async {
        let text = ready::api_get(state, "/v1/graph").await?;
        let graph: serde_json::Value = serde_json::from_str(&text)?;
        anyhow::Ok(graph["edges"].as_array().cloned().unwrap_or_default())
    };
    ready::until(
        Duration::from_secs(30),
        "the callers' agents to report their calls",
        || async {
            let edges = graph().await?;
            Ok(edges
                .iter()
                .any(|edge| edge["destination"] == banana.as_str()))
        },
    )
    .await?;
    let edges = graph().await?;
    for edge in edges {
        let p99 = edge["p99_ms"]
            .as_f64()
            .map_or("-".to_string(), |ms| format!("{ms:.1} ms"));
        println!(
            "  {}/{} -> {}: {} req/s, {:.1}% errors, p99 {p99}, {} conn/s",
            edge["source"]["deployment"].as_str().unwrap_or("?"),
            edge["source"]["instance_group"].as_str().unwrap_or("?"),
            edge["destination"].as_str().unwrap_or("?"),
            edge["requests_per_second"],
            edge["error_ratio"].as_f64().unwrap_or(0.0) * 100.0,
            edge["connections_per_second"],
        );
    }
    println!("  open the console: scripts/lab mesh console (prints the URL to open in a browser)");
    Ok(())
}

const FAILING_VM: &str = "banana/1";

/// Waits until the catalog has banana's endpoint at `ip` as `healthy`.
async fn catalog_shows(state: &LabState, ip: &str, healthy: bool) -> Result<()> {
    ready::until(
        ROUTED_WITHIN,
        "the catalog to follow the agent",
        || async move {
            Ok(ready::registration(state).await?.iter().any(|s| {
                s.hostname.starts_with(SERVICE)
                    && s.endpoints
                        .iter()
                        .any(|e| e.address == ip && e.healthy == healthy)
            }))
        },
    )
    .await
}

/// Health from the VM itself (docs/health.md): the workload on banana/1 is killed, its agent's
/// probe fails, and banana/1 is out of every Envoy without the director; then it comes back.
async fn health_from_the_vm(state: &mut LabState, url: &str) -> Result<()> {
    let index = state.find_vm(FAILING_VM)?;
    let ip = state.vms[index].ip.to_string();
    println!("\n== Health from the VM: example-httpbin on {FAILING_VM} ({ip}) killed");
    let killed = Instant::now();
    super::control_process(
        &mut state.vms[index],
        "example-httpbin",
        ProcessAction::Kill,
    )?;
    catalog_shows(state, &ip, false).await?;
    println!(
        "  its agent reported port 9002 failing: out of the catalog after {} ms, no director task involved",
        killed.elapsed().as_millis()
    );
    let vm = &state.vms[state.find_vm(CLIENT_VM)?];
    let cluster =
        boshy::xds::resources::cluster_name(&format!("{SERVICE}.{}", state.layout.tld), 9002);
    let endpoint = format!("{ip}:9002");
    ready::until(ROUTED_WITHIN, "apricot/3's Envoy to drop it", || {
        let (cluster, endpoint) = (&cluster, &endpoint);
        async move { Ok(!ready::envoy_healthy_endpoints(vm, cluster)?.contains(endpoint)) }
    })
    .await?;
    println!(
        "  out of {CLIENT_VM}'s Envoy after {} ms (the lab checks every 250 ms)",
        killed.elapsed().as_millis()
    );
    ready::wait(state, ROUTED_WITHIN).await?;
    println!("  and out of every VM's Envoy");
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..CURLS {
        let output = net::run_in(&vm.namespace, &["curl", "-sS", "--max-time", "5", url])?;
        let body: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("curl {url} did not return JSON"))?;
        answered.insert(body["instance"]["ip"].as_str().unwrap_or("?").to_string());
    }
    println!("  {CURLS} curls from {CLIENT_VM} answered by {answered:?}");
    if answered.contains(&ip) {
        bail!("{FAILING_VM} still answered after its process was killed");
    }
    super::control_process(
        &mut state.vms[index],
        "example-httpbin",
        ProcessAction::Start,
    )?;
    catalog_shows(state, &ip, true).await?;
    ready::wait(state, ROUTED_WITHIN).await?;
    println!("  started again: back in every Envoy");
    state.save()
}

const PRODUCTPAGE_VM: &str = "bookinfo/productpage/0";
const PAGES: usize = 6;
/// How long the demo waits for the Envoys to route by a rule just applied (one poll of the
/// pilot, then a push): a bound for a broken lab, not a pause.
const ROUTED_WITHIN: Duration = Duration::from_secs(30);

/// Istio's request-routing task on the bookinfo deployment: reviews in turn over its three
/// versions, then, by rules kept in the director, jason to v2 and everyone else to v1.
async fn traffic_rules(layout: &Layout, state: &LabState) -> Result<()> {
    let vm = &state.vms[state.find_vm(PRODUCTPAGE_VM)?];
    let page = |user: &str| {
        format!(
            "http://bookinfo.productpage.bookinfo.{}:9080/productpage?u={user}",
            layout.tld
        )
    };
    let versions = |user: &str| -> Result<Vec<String>> {
        (0..PAGES)
            .map(|_| {
                let url = page(user);
                let output =
                    net::run_in(&vm.namespace, &["curl", "-sS", "--max-time", "10", &url])?;
                let body: serde_json::Value = serde_json::from_slice(&output.stdout)
                    .with_context(|| format!("curl {url} did not return JSON"))?;
                Ok(body["reviews"]["version"]
                    .as_str()
                    .unwrap_or("error")
                    .to_string())
            })
            .collect()
    };
    println!(
        "\n== Traffic rules: Istio's bookinfo on BOSH instance groups (docs/bookinfo.md)\n  \
         reviews.bookinfo.boshy is one name for instance groups reviews-v1, -v2 and -v3 \
         (a ServiceEntry the lab applied)\n  On {}: the reviews version of {PAGES} product pages, no rules yet: {}",
        vm.name(),
        versions("jason")?.join(" ")
    );
    let rules = RulesCli::of_lab(layout)?;
    let fixtures = release_dir().join("fixtures/rules/bookinfo");
    for (name, file) in [
        ("bookinfo-subsets", "destination-rules.yml"),
        ("bookinfo-routes", "reviews-jason-v2.yml"),
    ] {
        println!("  scripts/lab rules apply --name {name} fixtures/rules/bookinfo/{file}   # bosh update-config --type boshy-istio");
        rules
            .apply(&fixtures.join(file), Some(name.to_string()))
            .await?;
    }
    let deadline = Instant::now() + ROUTED_WITHIN;
    loop {
        let jason = versions("jason")?;
        if jason.iter().all(|v| v == "v2") {
            println!("  pages for jason:   {}", jason.join(" "));
            break;
        }
        if Instant::now() > deadline {
            bail!("the Envoys never routed jason to reviews v2: {jason:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "  pages for someone else: {}",
        versions("someone")?.join(" ")
    );
    Ok(())
}
