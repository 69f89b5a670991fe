//! The push fan-out benchmark (`boshy-bench push`): N emulated Envoys (`boshy_xds_fleet`)
//! against a bosh-pilot xDS server in a child process, so that the server's CPU and memory can
//! be read from `/proc` apart from the client's.
//!
//! For each (ADS mode, stream count) it measures the initial sync, then an endpoint-only
//! change (one instance of one service fails) and a service being added: time from the
//! catalog change to the last ACK, bytes the clients received, the server's CPU time and
//! RSS. Rows go to `bench/rows/push.json` in the format of `boshy-bench report`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boshy::xds::bootstrap::AdsMode;
use boshy_xds_fleet::estate::{estate, Change};
use boshy_xds_fleet::fleet::{Fleet, Received};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;

const GOAL_SECONDS: f64 = 1.0;
const GOAL_RSS_MB: f64 = 200.0;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Stream counts to run, e.g. `1000,5000`.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub streams: Vec<usize>,
    /// ADS modes to run, e.g. `delta,sotw`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "delta,sotw")]
    pub ads: Vec<AdsMode>,
    /// Services in the synthetic estate (one http port each).
    #[arg(long, default_value_t = 100)]
    pub services: usize,
    /// Instances per service.
    #[arg(long, default_value_t = 10)]
    pub instances: usize,
    /// Write the rows (JSON) here as well as printing the table.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Internal: be the xDS server on this address; each stdin line is a catalog change.
    #[arg(long, hide = true)]
    pub serve: Option<SocketAddr>,
}

/// Raises the open-file limit to its hard limit: every stream is a socket on both sides.
fn raise_file_limit() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    Ok(hard)
}

pub(crate) async fn run(args: Args) -> Result<()> {
    raise_file_limit()?;
    if let Some(address) = args.serve {
        return serve(address, args.services, args.instances).await;
    }
    let mut rows = Vec::new();
    for &mode in &args.ads {
        for &streams in &args.streams {
            rows.extend(measure(mode, streams, args.services, args.instances).await?);
        }
    }
    set_references(&mut rows);
    for row in &rows {
        println!(
            "{:<62} {:>12.2} {:<3} {}",
            row["figure"].as_str().unwrap_or(""),
            row["value"].as_f64().unwrap_or(0.0),
            row["unit"].as_str().unwrap_or(""),
            row["note"].as_str().unwrap_or("")
        );
    }
    if let Some(out) = args.out {
        let text = serde_json::to_string_pretty(&rows).expect("rows serialize");
        std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// The child process: an xDS server whose catalog changes on each stdin line.
async fn serve(address: SocketAddr, services: usize, instances: usize) -> Result<()> {
    let mut catalog = estate(1, services, instances);
    let (catalog_tx, catalog_rx) = watch::channel(Arc::new(catalog.clone()));
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket
        .bind(address)
        .with_context(|| format!("binding {address}"))?;
    let listener = socket.listen(4096)?;
    tokio::spawn(boshy::xds::serve(listener, catalog_rx));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let Some(change) = Change::from_word(line.trim()) else {
            bail!(
                "push benchmark server: unknown change `{}` (endpoint, service)",
                line.trim()
            );
        };
        catalog = change.apply(&catalog, instances);
        catalog_tx.send_replace(Arc::new(catalog.clone()));
    }
    Ok(())
}

/// CPU seconds (user + system) and RSS/peak RSS in MB of a process, from `/proc`.
fn process_usage(pid: u32) -> Result<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let after = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let clock = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((ticks / clock, kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0))
}

fn row(figure: String, value: f64, unit: &str) -> Value {
    json!({"benchmark": "push", "figure": figure, "value": value, "unit": unit})
}

async fn measure(
    mode: AdsMode,
    streams: usize,
    services: usize,
    instances: usize,
) -> Result<Vec<Value>> {
    let mode_name = match mode {
        AdsMode::Delta => "delta",
        AdsMode::Sotw => "sotw",
    };
    let address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    let mut server = tokio::process::Command::new(std::env::current_exe()?)
        .args(["push", "--serve", &address.to_string()])
        .args([
            "--services",
            &services.to_string(),
            "--instances",
            &instances.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the push benchmark server")?;
    let pid = server.id().context("server pid")?;
    let mut control = server.stdin.take().context("server stdin")?;
    // Wait for the server to listen.
    let ready = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        if Instant::now() > ready {
            bail!("the push benchmark server never listened on {address}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let label = format!("{mode_name}, {streams} streams, {services} services × {instances}");
    let started = Instant::now();
    let (cpu_before, _, _) = process_usage(pid)?;
    let fleet = Fleet::connect(address, streams, mode).await?;
    let initial = fleet.settle(started, 4).await?;
    let synced = last_ack(&initial, started);
    let (cpu_synced, rss_synced, _) = process_usage(pid)?;
    let mut initial_row = row(
        format!("{label}: connect + initial sync"),
        synced.as_secs_f64(),
        "s",
    );
    initial_row["note"] = json!(format!(
        "{:.1} MB received by the clients; server CPU {:.2} s",
        bytes(&initial) as f64 / 1e6,
        cpu_synced - cpu_before
    ));
    let mut rows = vec![initial_row];
    rows.push(goal(
        row(
            format!("{label}: server RSS with every stream synced"),
            rss_synced,
            "MB",
        ),
        &format!("< {GOAL_RSS_MB} MB"),
        rss_synced < GOAL_RSS_MB,
    ));
    for change in [Change::Endpoint, Change::Service] {
        let (cpu_before, _, _) = process_usage(pid)?;
        let (client_cpu_before, _, _) = process_usage(std::process::id())?;
        let at = Instant::now();
        control
            .write_all(format!("{}\n", change.word()).as_bytes())
            .await?;
        control.flush().await?;
        let pushed = fleet.settle(at, 1).await?;
        let took = last_ack(&pushed, at).as_secs_f64();
        let (cpu_after, _, _) = process_usage(pid)?;
        let (client_cpu_after, _, _) = process_usage(std::process::id())?;
        let resources: usize = pushed
            .iter()
            .map(|r| r.resources.len() + r.removed.len())
            .sum();
        let mut r = row(
            format!("{label}: {} change → last ACK", change.word()),
            took,
            "s",
        );
        r["note"] = json!(format!(
            "{} responses, {:.1} resources and {:.1} kB per stream; server CPU {:.2} s, \
             load client CPU {:.2} s (the {streams} emulated Envoys, same machine)",
            pushed.len(),
            resources as f64 / streams as f64,
            bytes(&pushed) as f64 / streams as f64 / 1e3,
            cpu_after - cpu_before,
            client_cpu_after - client_cpu_before
        ));
        rows.push(goal(r, &format!("< {GOAL_SECONDS} s"), took < GOAL_SECONDS));
    }
    let (_, _, peak) = process_usage(pid)?;
    rows.push(row(format!("{label}: server peak RSS"), peak, "MB"));
    drop(fleet);
    drop(control);
    let _ = server.kill().await;
    Ok(rows)
}

/// Each delta figure is compared with the same figure over state of the world, same run.
fn set_references(rows: &mut [Value]) {
    let sotw: BTreeMap<String, f64> = rows
        .iter()
        .filter_map(|r| Some((r["figure"].as_str()?.to_string(), r["value"].as_f64()?)))
        .filter(|(figure, _)| figure.starts_with("sotw,"))
        .collect();
    for row in rows.iter_mut() {
        let Some(figure) = row["figure"].as_str() else {
            continue;
        };
        let Some(delta) = figure.strip_prefix("delta,") else {
            continue;
        };
        if let Some(value) = sotw.get(&format!("sotw,{delta}")) {
            row["reference"] = json!({"label": "state of the world, same run", "value": value});
        }
    }
}

fn goal(mut row: Value, goal: &str, met: bool) -> Value {
    row["goal"] = json!(goal);
    row["met"] = json!(met);
    row
}

fn last_ack(received: &[Received], since: Instant) -> Duration {
    received
        .iter()
        .map(|r| r.acked_at.duration_since(since))
        .max()
        .unwrap_or_default()
}

fn bytes(received: &[Received]) -> usize {
    received.iter().map(|r| r.bytes).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_figures_are_compared_with_the_same_sotw_figure() {
        let mut rows = vec![
            row("delta, 5 streams: x".into(), 1.0, "s"),
            row("sotw, 5 streams: x".into(), 4.0, "s"),
            row("delta, 5 streams: only delta".into(), 2.0, "s"),
        ];
        set_references(&mut rows);
        assert_eq!(rows[0]["reference"]["value"], 4.0);
        assert!(rows[1].get("reference").is_none());
        assert!(rows[2].get("reference").is_none());
    }
}
