//! DNS: dnsperf against the virtual-ip-agent (its own binary, `virtual-ip-agent`, as the release
//! runs it; fast path on, and off = hickory only, the "before") and against dnsmasq, serving the
//! same names from the same query file, in one run. Then the agent's RSS from its own binary
//! against the multi-tool `boshy virtual-ip-agent` (before/after), one at a time under the same load.
//! Every server is pinned to one CPU and dnsperf to another; each listens on 127.0.0.1 on its
//! own port. Rounds are interleaved (agent, agent without fast path, dnsmasq, again) so drift on
//! a noisy machine hits all three alike; figures are the median over rounds.
//!
//! Two passes per server and round: a throughput pass (dnsperf as fast as it can, 4 clients,
//! 200 queries outstanding) for queries/s and the server's CPU time per query, and a latency pass
//! at a fixed rate every server sustains, with `-v` so every query's latency is recorded, for
//! p50/p99 at equal load (under saturation, latency only measures dnsperf's queue).
//!
//! Query mix: every name of the table once per pass through the file, shuffled; one query in
//! ten asks with letters in random case (DNS 0x20); all type A, no EDNS (dnsperf's default,
//! like glibc's stub resolver).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use boshy_lab::binaries;

use super::report::Row;
use super::{cpu_seconds, median, percentile, require_tool, ProcMemory, ScratchDir};
use boshy::names::table::NameTable;

const BENCHMARK: &str = "dns";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Names served (and queried).
    #[arg(long, default_value_t = 10_000)]
    pub names: usize,
    /// Seconds of each throughput pass.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Seconds of each fixed-rate latency pass.
    #[arg(long, default_value_t = 3)]
    pub latency_seconds: u64,
    /// Queries/s of the latency pass.
    #[arg(long, default_value_t = 20_000)]
    pub latency_qps: u64,
    /// Interleaved rounds (figures are medians over rounds).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// CPU the servers are pinned to.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// CPU dnsperf is pinned to.
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// First of three consecutive loopback ports.
    #[arg(long, default_value_t = 18153)]
    pub port: u16,
    /// Where to write the rows (JSON).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The table the benchmark serves: `svc-<j>.group-<g>.deployment-<d>.boshy`, ten jobs per
/// group and ten groups per deployment, one VIP each.
pub fn synthetic_table(names: usize) -> NameTable {
    NameTable {
        version: 1,
        tld: "boshy".into(),
        names: (0..names)
            .map(|i| {
                let name = format!(
                    "svc-{}.group-{}.deployment-{}.boshy",
                    i % 10,
                    (i / 10) % 10,
                    i / 100
                );
                let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(169, 254, 1, 1)) + i as u32);
                (name, vip)
            })
            .collect(),
        origins: Default::default(),
    }
}

/// dnsperf's input: every name once, shuffled, one in ten in random letter case.
pub fn query_file(table: &NameTable, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut names: Vec<&String> = table.names.keys().collect();
    names.shuffle(&mut rng);
    let mut out = String::new();
    for name in names {
        if rng.gen_ratio(1, 10) {
            let mixed: String = name
                .chars()
                .map(|c| {
                    if rng.gen_bool(0.5) {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            out.push_str(&mixed);
        } else {
            out.push_str(name);
        }
        out.push_str(" A\n");
    }
    out
}

/// dnsmasq's addn-hosts file for the same table.
pub fn hosts_file(table: &NameTable) -> String {
    table
        .names
        .iter()
        .map(|(name, vip)| format!("{vip} {name}\n"))
        .collect()
}

/// What one dnsperf run reports.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DnsperfSummary {
    pub sent: u64,
    pub completed: u64,
    pub qps: f64,
    pub avg_latency_ms: f64,
}

/// Parses dnsperf's statistics block.
pub fn parse_summary(output: &str) -> Result<DnsperfSummary> {
    let mut summary = DnsperfSummary::default();
    let number = |rest: &str| -> f64 {
        rest.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(f64::NAN)
    };
    for line in output.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Queries sent:") {
            summary.sent = number(rest) as u64;
        } else if let Some(rest) = line.strip_prefix("Queries completed:") {
            summary.completed = number(rest) as u64;
        } else if let Some(rest) = line.strip_prefix("Queries per second:") {
            summary.qps = number(rest);
        } else if let Some(rest) = line.strip_prefix("Average Latency (s):") {
            summary.avg_latency_ms = number(rest) * 1000.0;
        }
    }
    if summary.completed == 0 || summary.qps.is_nan() {
        bail!("dnsperf completed no query; its output:\n{output}");
    }
    Ok(summary)
}

/// Every latency (ms) of a `dnsperf -v` run: lines `> NOERROR name A 0.000123`.
pub fn parse_latencies(output: &str) -> Vec<f64> {
    output
        .lines()
        .filter(|line| line.starts_with("> "))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .map(|seconds| seconds * 1000.0)
        .collect()
}

/// One server under test, pinned, on its own port.
struct Server {
    label: &'static str,
    port: u16,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one query until the server answers; fails if it exits or stays silent.
    fn wait_until_answering(&mut self, name: &str) -> Result<()> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let query = a_query(name);
        let server = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status} before answering", self.label);
            }
            socket.send_to(&query, server)?;
            if let Ok((len, _)) = socket.recv_from(&mut buf) {
                // An answer with one record: the table is loaded.
                if len > 12 && buf[7] == 1 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} on port {} never answered {name}", self.label, self.port)
    }
}

fn a_query(name: &str) -> Vec<u8> {
    let mut query = vec![0xbe, 0xef, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        query.push(label.len() as u8);
        query.extend(label.as_bytes());
    }
    query.extend([0, 0, 1, 0, 1]);
    query
}

fn pinned(cpu: usize, program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.arg("-c").arg(cpu.to_string()).arg(program);
    command
}

/// Which binary runs the agent: its own (what the release runs) or the multi-tool `boshy`
/// (`boshy virtual-ip-agent`, what the release ran before: the "before" of the RSS row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentBinary {
    Own,
    MultiTool,
}

fn agent_command(binary: AgentBinary, cpu: Option<usize>) -> Result<Command> {
    let (program, subcommand) = match binary {
        AgentBinary::Own => (binaries::workspace(binaries::VIRTUAL_IP_AGENT)?, None),
        AgentBinary::MultiTool => (
            binaries::workspace(binaries::BOSHY)?,
            Some("virtual-ip-agent"),
        ),
    };
    let mut command = match cpu {
        Some(cpu) => pinned(cpu, &program),
        None => Command::new(&program),
    };
    command.args(subcommand);
    Ok(command)
}

/// Starts an agent answering from `dir/table.json`, pinned to `cpu` unless `None`.
fn start_agent(
    label: &'static str,
    dir: &Path,
    port: u16,
    cpu: Option<usize>,
    fast_path: bool,
    binary: AgentBinary,
) -> Result<Server> {
    let config = dir.join(format!("{label}.yml"));
    let yaml = format!(
        "listen: 127.0.0.1:{port}\n\
         # No control plane: the agent answers from the saved table, as after a restart.\n\
         pilots: [\"127.0.0.1:1\"]\n\
         insecure_plaintext: true\n\
         table_path: {}\n\
         ttl_seconds: 30\n\
         fast_path: {fast_path}\n",
        dir.join("table.json").display()
    );
    std::fs::write(&config, yaml)?;
    let log = std::fs::File::create(dir.join(format!("{label}.log")))?;
    let child = agent_command(binary, cpu)?
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting the virtual-ip-agent ({label})"))?;
    Ok(Server { label, port, child })
}

fn start_dnsmasq(dir: &Path, port: u16, cpu: usize) -> Result<Server> {
    let child = pinned(cpu, Path::new("dnsmasq"))
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
            "--pid-file=",
            "--local-ttl=30",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", dir.join("hosts").display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("dnsmasq.log"))?)
        .spawn()
        .context("starting dnsmasq")?;
    Ok(Server {
        label: "dnsmasq",
        port,
        child,
    })
}

fn dnsperf(cpu: usize, port: u16, queries: &Path, extra: &[String]) -> Result<String> {
    let output = Command::new("taskset")
        .arg("-c")
        .arg(cpu.to_string())
        .arg("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(queries)
        .args(extra)
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "dnsperf on port {port} failed: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(text)
}

/// What one server did in one round.
#[derive(Debug, Default, Clone)]
struct Measured {
    qps: Vec<f64>,
    cpu_us_per_query: Vec<f64>,
    /// Share of its CPU the server used during the throughput pass (1.0 = saturated).
    utilization: Vec<f64>,
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    avg_ms: Vec<f64>,
}

fn measure(args: &Args, server: &Server, queries: &Path, into: &mut Measured) -> Result<()> {
    let cpu_before = cpu_seconds(server.pid())?;
    let throughput = parse_summary(&dnsperf(
        args.client_cpu,
        server.port,
        queries,
        &[
            "-l".into(),
            args.seconds.to_string(),
            "-c".into(),
            "4".into(),
            "-q".into(),
            "200".into(),
        ],
    )?)?;
    let cpu_used = cpu_seconds(server.pid())? - cpu_before;
    into.qps.push(throughput.qps);
    into.cpu_us_per_query
        .push(cpu_used * 1e6 / throughput.completed as f64);
    into.utilization.push(cpu_used / args.seconds as f64);

    let output = dnsperf(
        args.client_cpu,
        server.port,
        queries,
        &[
            "-l".into(),
            args.latency_seconds.to_string(),
            "-Q".into(),
            args.latency_qps.to_string(),
            "-v".into(),
        ],
    )?;
    let mut latencies = parse_latencies(&output);
    latencies.sort_by(f64::total_cmp);
    let summary = parse_summary(&output)?;
    into.avg_ms.push(summary.avg_latency_ms);
    into.p50_ms
        .push(percentile(&latencies, 0.5).context("no latency lines from dnsperf -v")?);
    into.p99_ms
        .push(percentile(&latencies, 0.99).context("no latency lines from dnsperf -v")?);
    Ok(())
}

pub async fn run(args: Args) -> Result<()> {
    let rows = tokio::task::spawn_blocking(move || measure_all(&args).map(|rows| (rows, args)))
        .await
        .context("the DNS benchmark panicked")??;
    super::emit(&rows.0, rows.1.out.as_deref())
}

fn measure_all(args: &Args) -> Result<Vec<Row>> {
    require_tool("dnsperf", "dnsperf")?;
    require_tool("dnsmasq", "dnsmasq-base")?;
    require_tool("taskset", "util-linux")?;
    let scratch = ScratchDir::new(BENCHMARK)?;
    let dir = scratch.path();
    let table = synthetic_table(args.names);
    std::fs::write(dir.join("table.json"), serde_json::to_vec(&table)?)?;
    std::fs::write(dir.join("hosts"), hosts_file(&table))?;
    let queries = dir.join("queries");
    std::fs::write(&queries, query_file(&table, 1))?;
    let probe = table
        .names
        .keys()
        .next()
        .context("no names to serve")?
        .clone();

    let cpu = Some(args.server_cpu);
    let mut servers = vec![
        start_agent("agent", dir, args.port, cpu, true, AgentBinary::Own)?,
        start_agent(
            "agent-hickory-only",
            dir,
            args.port + 1,
            cpu,
            false,
            AgentBinary::Own,
        )?,
        start_dnsmasq(dir, args.port + 2, args.server_cpu)?,
    ];
    for server in &mut servers {
        server.wait_until_answering(&probe)?;
    }
    let mut measured: BTreeMap<&str, Measured> = BTreeMap::new();
    for round in 0..args.rounds {
        for server in &servers {
            eprintln!(
                "dns: round {} of {}: {}",
                round + 1,
                args.rounds,
                server.label
            );
            measure(
                args,
                server,
                &queries,
                measured.entry(server.label).or_default(),
            )?;
        }
    }
    let memory: BTreeMap<&str, ProcMemory> = servers
        .iter()
        .map(|s| Ok((s.label, ProcMemory::of(s.pid())?)))
        .collect::<Result<_>>()?;
    drop(servers);
    // RSS under one and the same short load, one agent at a time: the agent's own binary
    // against the multi-tool one (before/after), and unpinned (a worker per CPU, as on a VM).
    let mut after_load = BTreeMap::new();
    for (label, binary, cpu) in [
        ("agent-own-binary", AgentBinary::Own, cpu),
        ("agent-multi-tool", AgentBinary::MultiTool, cpu),
        ("agent-unpinned", AgentBinary::Own, None),
    ] {
        let mut server = start_agent(label, dir, args.port + 3, cpu, true, binary)?;
        server.wait_until_answering(&probe)?;
        dnsperf(
            args.client_cpu,
            server.port,
            &queries,
            &["-l".into(), "2".into()],
        )?;
        after_load.insert(label, ProcMemory::of(server.pid())?);
    }
    Ok(rows(args, &measured, &memory, &after_load))
}

fn rows(
    args: &Args,
    measured: &BTreeMap<&str, Measured>,
    memory: &BTreeMap<&str, ProcMemory>,
    after_load: &BTreeMap<&str, ProcMemory>,
) -> Vec<Row> {
    let figure = |label: &str, pick: fn(&Measured) -> &Vec<f64>| {
        measured
            .get(label)
            .and_then(|m| median(pick(m)))
            .unwrap_or(f64::NAN)
    };
    let names = args.names;
    let qps = figure("agent", |m| &m.qps);
    let qps_hickory = figure("agent-hickory-only", |m| &m.qps);
    let qps_dnsmasq = figure("dnsmasq", |m| &m.qps);
    let p99 = figure("agent", |m| &m.p99_ms);
    let p99_dnsmasq = figure("dnsmasq", |m| &m.p99_ms);
    let rss = memory["agent"];
    let at = format!("at {} q/s", args.latency_qps);
    let busy = |label: &str| figure(label, |m| &m.utilization) * 100.0;
    // With one CPU for dnsperf, a server faster than dnsperf is never saturated, so measured
    // queries/s is dnsperf's ceiling; what one core can serve is 1 / (CPU time per query).
    let capacity = |label: &str| 1e6 / figure(label, |m| &m.cpu_us_per_query);
    let mut rows = vec![
        Row::new(BENCHMARK, "agent capacity of one core (1 / CPU per query)", capacity("agent"), "q/s")
            .against("dnsmasq", capacity("dnsmasq"))
            .goal("≥ 1.5× dnsmasq", capacity("agent") >= 1.5 * capacity("dnsmasq"))
            .note("server CPU time (/proc) over queries answered in the throughput pass"),
        Row::new(BENCHMARK, "agent queries/s measured (fast path)", qps, "q/s")
            .against("dnsmasq", qps_dnsmasq)
            .goal("≥ 1.5× dnsmasq", qps >= 1.5 * qps_dnsmasq)
            .note(format!(
                "server pinned to one CPU, dnsperf to the other; median of {} rounds; server CPU busy: agent {:.0}%, dnsmasq {:.0}% (below 100%: dnsperf is the limit)",
                args.rounds,
                busy("agent"),
                busy("dnsmasq")
            )),
        Row::new(
            BENCHMARK,
            "agent queries/s, hickory only (before)",
            qps_hickory,
            "q/s",
        )
        .against("dnsmasq", qps_dnsmasq),
        Row::new(
            BENCHMARK,
            "agent queries/s: fast path vs hickory only",
            qps,
            "q/s",
        )
        .against("hickory only", qps_hickory),
    ];
    // One row per agent variant (fast path, hickory only), each against dnsmasq.
    let both_agents =
        |figure_name: &dyn Fn(&str) -> String, pick: fn(&Measured) -> &Vec<f64>, unit: &str| {
            [
                ("agent", "agent"),
                ("agent-hickory-only", "agent, hickory only"),
            ]
            .map(|(label, name)| {
                Row::new(BENCHMARK, figure_name(name), figure(label, pick), unit)
                    .against("dnsmasq", figure("dnsmasq", pick))
            })
        };
    rows.extend(both_agents(
        &|name| format!("{name}: server CPU per query"),
        |m| &m.cpu_us_per_query,
        "µs",
    ));
    rows.push(
        Row::new(BENCHMARK, format!("agent p99 latency {at}"), p99, "ms")
            .against("dnsmasq", p99_dnsmasq)
            .goal("lower than dnsmasq", p99 < p99_dnsmasq)
            .note("dnsperf -v, every query's latency (µs resolution)"),
    );
    rows.extend(both_agents(
        &|name| format!("{name} p50 latency {at}"),
        |m| &m.p50_ms,
        "ms",
    ));
    rows.push(
        Row::new(
            BENCHMARK,
            format!("agent, hickory only p99 latency {at}"),
            figure("agent-hickory-only", |m| &m.p99_ms),
            "ms",
        )
        .against("dnsmasq", p99_dnsmasq),
    );
    rows.push(
        Row::new(
            BENCHMARK,
            format!("agent RSS with {names} names"),
            rss.rss_mb(),
            "MB",
        )
        .against("dnsmasq", memory["dnsmasq"].rss_mb())
        .goal("< 10 MB", rss.rss_mb() < 10.0)
        .note(format!(
            "VmRSS after the runs: {} kB anonymous + {} kB file-backed (binary text); peak {} kB; {} threads",
            rss.anon_kb, rss.file_kb, rss.hwm_kb, rss.threads
        )),
    );
    let split = |memory: &ProcMemory| {
        format!(
            "{} kB anonymous + {} kB file-backed",
            memory.anon_kb, memory.file_kb
        )
    };
    let own = after_load["agent-own-binary"];
    let multi_tool = after_load["agent-multi-tool"];
    rows.push(
        Row::new(
            BENCHMARK,
            "agent RSS: own binary vs the multi-tool boshy (after)",
            own.rss_mb(),
            "MB",
        )
        .against("boshy virtual-ip-agent (before)", multi_tool.rss_mb())
        .goal("< 10 MB", own.rss_mb() < 10.0)
        .note(format!(
            "same table and load (dnsperf 2 s), pinned: virtual-ip-agent {}; boshy virtual-ip-agent {}",
            split(&own),
            split(&multi_tool)
        )),
    );
    let unpinned = after_load["agent-unpinned"];
    rows.push(
        Row::new(
            BENCHMARK,
            format!("agent RSS, not pinned ({} threads)", unpinned.threads),
            unpinned.rss_mb(),
            "MB",
        )
        .against(format!("pinned ({} threads)", own.threads), own.rss_mb())
        .goal("< 10 MB", unpinned.rss_mb() < 10.0)
        .note(split(&unpinned)),
    );
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_the_hosts_and_the_queries_name_the_same_hosts() {
        let table = synthetic_table(250);
        assert_eq!(table.names.len(), 250);
        assert_eq!(
            table.names["svc-9.group-4.deployment-2.boshy"],
            Ipv4Addr::new(169, 254, 1, 250)
        );
        let hosts = hosts_file(&table);
        assert_eq!(hosts.lines().count(), 250);
        let queries = query_file(&table, 1);
        let mut asked: Vec<String> = queries
            .lines()
            .map(|l| l.strip_suffix(" A").unwrap().to_lowercase())
            .collect();
        asked.sort();
        let served: Vec<String> = table.names.keys().cloned().collect();
        assert_eq!(asked, served, "every name exactly once");
        let mixed = queries
            .lines()
            .filter(|l| {
                l.trim_end_matches(" A")
                    .bytes()
                    .any(|b| b.is_ascii_uppercase())
            })
            .count();
        assert!(
            (5..60).contains(&mixed),
            "about one in ten in mixed case: {mixed}"
        );
    }

    #[test]
    fn dnsperf_output_is_parsed() {
        let output = "> NOERROR a.boshy A 0.000123\n> NOERROR b.boshy A 0.000045\n\
            Statistics:\n\n  Queries sent:         1000\n  Queries completed:    998 (99.80%)\n\
            \x20 Queries per second:   999.848023\n\n  Average Latency (s):  0.000058 (min 0.000037, max 0.000156)\n";
        let summary = parse_summary(output).unwrap();
        assert_eq!(summary.sent, 1000);
        assert_eq!(summary.completed, 998);
        assert!((summary.qps - 999.848023).abs() < 1e-6);
        assert!((summary.avg_latency_ms - 0.058).abs() < 1e-9);
        let latencies = parse_latencies(output);
        assert_eq!(latencies.len(), 2);
        assert!((latencies[0] - 0.123).abs() < 1e-9);
        assert!(parse_summary("Queries completed: 0\n").is_err());
    }

    #[test]
    fn the_probe_query_is_a_wire_a_query() {
        assert_eq!(
            a_query("a.bc."),
            [0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 2, b'b', b'c', 0, 0, 1, 0, 1]
        );
    }
}
