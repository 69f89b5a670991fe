//! `boshy-lab demo`: the prototype's tire-kicking story, end to end, with what a person
//! wants to see printed.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use super::{net, ready, up, Layout};

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
    let answers = ready::resolve(vm, &hostname)?;
    println!("  {hostname} -> {}", answers.join(", "));
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
        let body: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("curl {url} did not return JSON"))?;
        let instance = &body["instance"];
        let who = format!(
            "{}/{} ({})",
            instance["instance_group"].as_str().unwrap_or("?"),
            instance["index"],
            instance["ip"].as_str().unwrap_or("?")
        );
        println!("  answered by {who}");
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
    println!(
        "\nNext: `scripts/lab director set-state banana/1 failing`, then curl again; `scripts/lab down` when done."
    );
    Ok(())
}
