//! `boshy-bench <name>`: the benchmarks of `bench/results.md` (`scripts/bench` runs them all).
//!
//! Each benchmark measures a figure beside its reference in the same run and writes
//! [`report::Row`]s (JSON) to `--out`; `boshy-bench report` renders every rows file of a
//! directory into `bench/results.md`. A new benchmark adds a subcommand that writes rows.
//!
//! - [`dns`]: the virtual-ip-agent against dnsmasq with dnsperf.
//! - [`build`]: control-plane build cost for synthetic estates.
//! - [`csr`]: workload certificates one pilot signs over its names port.
//! - [`director`]: the poller against a large foundation on a busy simulated director: first
//!   catalog, health tasks a minute, health freshness.
//! - [`envoy_memory`]: Envoy's RSS with a synthetic catalog served to it.
//! - [`fleet`]: a pilot process with N agents and N Envoys connected: RSS, CPU, and a mass
//!   reconnect after it is killed.
//! - [`lab`]: convergence, steady-state director requests and data-plane cost in a lab.
//! - [`load`]: the fixed-rate HTTP load generator the data-plane benchmark runs in a VM.
//! - [`push`]: xDS push fan-out to N emulated Envoys, delta against state of the world.
//! - [`rules`]: traffic rules for every service of an estate: parse, validate, compile, xDS.
//! - [`workloads`]: VMs outside BOSH registered and heartbeating: the pilot's RSS and CPU,
//!   director writes.

#![forbid(unsafe_code)]

pub mod build;
pub mod csr;
pub mod director;
pub mod dns;
pub mod envoy_memory;
pub mod fleet;
pub mod lab;
pub mod load;
mod pilot;
pub mod push;
pub mod report;
pub mod rules;
pub mod workloads;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// DNS: the agent (fast path on and off) against dnsmasq, same names, same queries.
    Dns(dns::Args),
    /// Control plane: catalog + VIPs + xDS resources for synthetic estates, time and RSS.
    Build(build::Args),
    /// Workload certificates: CSRs one pilot signs a second, and a burst of requests at once.
    Csr(csr::Args),
    /// The poller against a large foundation on a busy director: first catalog, health budget.
    Director(director::Args),
    /// Envoy's RSS with a synthetic catalog of N services served to it over ADS.
    EnvoyMemory(envoy_memory::Args),
    /// A pilot process with N agents and N Envoys: RSS, CPU, mass reconnect after kill -9.
    Fleet(fleet::Args),
    /// In a lab: convergence, steady-state director requests, data-plane cost.
    Lab(lab::Args),
    /// A fixed-rate HTTP load; prints latency percentiles as JSON.
    Load(load::Args),
    /// xDS push fan-out: N emulated Envoys against an xDS server, delta and state of the world.
    Push(push::Args),
    /// Traffic rules for every service of an estate: parse, validate, compile, xDS snapshot.
    Rules(rules::Args),
    /// VMs outside BOSH: N registered and heartbeating, the pilot's RSS and CPU beside none,
    /// director writes.
    Workloads(workloads::Args),
    /// Renders every rows file of a directory into the results file.
    Report(report::Args),
    /// Records when and at which commit rows files were just measured.
    Stamp(report::StampArgs),
}

pub async fn run(args: Args) -> Result<()> {
    match args.command {
        BenchCommand::Dns(args) => dns::run(args).await,
        BenchCommand::Build(args) => build::run(args).await,
        BenchCommand::Csr(args) => csr::run(args).await,
        BenchCommand::Director(args) => director::run(args).await,
        BenchCommand::EnvoyMemory(args) => envoy_memory::run(args).await,
        BenchCommand::Fleet(args) => fleet::run(args).await,
        BenchCommand::Lab(args) => lab::run(args).await,
        BenchCommand::Load(args) => load::run(args).await,
        BenchCommand::Push(args) => push::run(args).await,
        BenchCommand::Report(args) => report::run(args),
        BenchCommand::Rules(args) => rules::run(args).await,
        BenchCommand::Stamp(args) => report::stamp(args),
        BenchCommand::Workloads(args) => workloads::run(args).await,
    }
}

/// The value at quantile `q` (0..=1) of `sorted` (nearest rank); `None` when empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median of `values` (any order); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 0.5)
}

/// Memory and threads of a process, from /proc/<pid>/status.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcMemory {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub anon_kb: u64,
    pub file_kb: u64,
    pub threads: u64,
}

impl ProcMemory {
    pub fn of(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        Ok(Self::parse(&status))
    }

    /// Parses the `VmRSS`, `VmHWM`, `RssAnon`, `RssFile` and `Threads` lines.
    pub fn parse(status: &str) -> Self {
        let mut memory = ProcMemory::default();
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let number = value
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            match key {
                "VmRSS" => memory.rss_kb = number,
                "VmHWM" => memory.hwm_kb = number,
                "RssAnon" => memory.anon_kb = number,
                "RssFile" => memory.file_kb = number,
                "Threads" => memory.threads = number,
                _ => {}
            }
        }
        memory
    }

    pub fn rss_mb(&self) -> f64 {
        self.rss_kb as f64 / 1024.0
    }
}

/// CPU time (user + system) a process has used, in seconds, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / clock_ticks_per_second())
        .with_context(|| format!("/proc/{pid}/stat: no utime/stime"))
}

/// utime + stime from a /proc/<pid>/stat line (fields 14 and 15; the command may hold spaces,
/// so fields are counted after its closing parenthesis).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // After the command: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    // Linux reports /proc times in USER_HZ, which is 100 on every architecture it runs on.
    100.0
}

/// Fails with a clear message when a tool the benchmark needs is not installed.
pub fn require_tool(tool: &str, package: &str) -> Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        bail!("`{tool}` is not installed: apt-get install {package}");
    }
    Ok(())
}

/// Writes `rows` as pretty JSON to `out` and prints them as a table.
pub fn emit(rows: &[report::Row], out: Option<&Path>) -> Result<()> {
    print!("{}", report::table(rows));
    if let Some(out) = out {
        let json = serde_json::to_vec_pretty(rows).context("serializing rows")?;
        boshy::fsutil::write_atomically(out, &json)?;
    }
    Ok(())
}

/// A scratch directory for one benchmark run, removed when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("boshy-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the scratch directory {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `boshy-bench` binary running now (the benchmarks run parts of themselves in a child
/// process or in a VM, to measure them apart).
pub fn bench_binary() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the boshy-bench binary")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), Some(50.0));
        assert_eq!(percentile(&sorted, 0.99), Some(99.0));
        assert_eq!(percentile(&sorted, 1.0), Some(100.0));
        assert_eq!(percentile(&sorted, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
    }

    #[test]
    fn proc_status_and_stat_are_parsed() {
        let status = "Name:\tboshy\nThreads:\t2\nVmHWM:\t   17080 kB\nVmRSS:\t   16000 kB\nRssAnon:\t 4000 kB\nRssFile:\t 12000 kB\n";
        let memory = ProcMemory::parse(status);
        assert_eq!(
            memory,
            ProcMemory {
                rss_kb: 16000,
                hwm_kb: 17080,
                anon_kb: 4000,
                file_kb: 12000,
                threads: 2
            }
        );
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 2 0";
        assert_eq!(parse_cpu_ticks(stat), Some(280));
    }
}
