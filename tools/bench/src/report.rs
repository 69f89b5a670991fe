//! Benchmark rows and the results file.
//!
//! Every benchmark writes a JSON list of [`Row`]s to `bench/rows/<benchmark>.json`; `boshy-bench
//! report` renders all rows files into `bench/results.md`, in [`SECTIONS`] order, with the
//! machine, the date and the commit, and keeps a placeholder for a section not measured yet so
//! that a missing figure is visible. `bench/notes.md` (profiles, before/after) is appended.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One figure, beside the reference it is compared with in the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The rows file's name without `.json` (e.g. `dns`); decides the section.
    pub benchmark: String,
    pub figure: String,
    /// NaN (`null` in JSON) when the figure could not be measured; the note says why.
    #[serde(deserialize_with = "nan_when_null")]
    pub value: f64,
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    /// The goal in words, e.g. "≥ 1.5× dnsmasq".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn nan_when_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// The same-run reference figure (same unit as the row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub label: String,
    pub value: f64,
}

impl Row {
    pub fn new(benchmark: &str, figure: impl Into<String>, value: f64, unit: &str) -> Self {
        Row {
            benchmark: benchmark.to_string(),
            figure: figure.into(),
            value,
            unit: unit.to_string(),
            reference: None,
            goal: None,
            met: None,
            note: None,
        }
    }

    pub fn against(mut self, label: impl Into<String>, value: f64) -> Self {
        self.reference = Some(Reference {
            label: label.into(),
            value,
        });
        self
    }

    pub fn goal(mut self, goal: impl Into<String>, met: bool) -> Self {
        self.goal = Some(goal.into());
        self.met = Some(met);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// value / reference, when there is a non-zero reference.
    pub fn ratio(&self) -> Option<f64> {
        self.reference
            .as_ref()
            .filter(|r| r.value != 0.0)
            .map(|r| self.value / r.value)
            .filter(|ratio| ratio.is_finite())
    }
}

/// The sections of the results file: (rows file names, title, how to produce them).
pub const SECTIONS: [(&[&str], &str, &str); 11] = [
    (
        &["dns"],
        "DNS: virtual-ip-agent vs dnsmasq (10,000 names)",
        "scripts/bench dns",
    ),
    (
        &["build"],
        "Control plane: build cost of synthetic estates",
        "scripts/bench build",
    ),
    (
        &["rules"],
        "Traffic rules: a VirtualService and a DestinationRule for every service",
        "scripts/bench rules",
    ),
    (
        &["push"],
        "Push fan-out and delta xDS (items 4 and 5)",
        "scripts/bench push (added with delta xDS)",
    ),
    (
        &["convergence"],
        "Convergence: director change → every Envoy (lab)",
        "scripts/bench lab",
    ),
    (
        &["steady"],
        "Steady-state director requests (lab, idle)",
        "scripts/bench lab",
    ),
    (
        &["director"],
        "Director load: first catalog and health budget (large foundation, busy director)",
        "scripts/bench director",
    ),
    (
        &["fleet"],
        "A fleet on one pilot: agents and Envoys connected, mass reconnect after kill -9",
        "scripts/bench fleet",
    ),
    (
        &["csr"],
        "Workload certificates: CSRs signed by one pilot",
        "scripts/bench csr",
    ),
    (
        &["workloads"],
        "VMs outside BOSH: registrations heartbeating on one pilot, director writes",
        "scripts/bench workloads",
    ),
    (
        &["dataplane", "envoy-memory"],
        "Data plane cost (lab) and Envoy memory",
        "scripts/bench lab envoy-memory",
    ),
];

/// Where and when the figures were taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub date: String,
    pub commit: String,
}

impl Machine {
    pub fn current() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let command = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
                .unwrap_or_else(|| "unknown".into())
        };
        // The benchmarks' own outputs (bench/) do not make the measured code "uncommitted".
        let dirty = command(
            "git",
            &[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)bench",
            ],
        );
        let commit = command("git", &["rev-parse", "--short", "HEAD"]);
        Machine {
            cpus: cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_else(|| "unknown".into()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            date: command("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            commit: if dirty.is_empty() || dirty == "unknown" {
                commit
            } else {
                format!("{commit} (with uncommitted changes)")
            },
        }
    }
}

/// A number with as many decimals as its size deserves.
pub fn format_value(value: f64) -> String {
    let magnitude = value.abs();
    if !value.is_finite() {
        "not measured".into()
    } else if magnitude >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn row_cells(row: &Row) -> [String; 6] {
    let reference = row.reference.as_ref().map_or(String::new(), |r| {
        format!("{} {} ({})", format_value(r.value), row.unit, r.label)
    });
    let ratio = row.ratio().map_or(String::new(), |r| format!("{r:.2}×"));
    let goal = match (&row.goal, row.met) {
        (Some(goal), Some(true)) => format!("{goal} ✅"),
        (Some(goal), Some(false)) => format!("{goal} ❌ missed"),
        (Some(goal), None) => goal.clone(),
        (None, _) => String::new(),
    };
    [
        row.figure.clone(),
        if row.value.is_finite() {
            format!("{} {}", format_value(row.value), row.unit)
        } else {
            format_value(row.value)
        },
        reference,
        ratio,
        goal,
        row.note.clone().unwrap_or_default(),
    ]
}

/// The rows as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out =
        String::from("| figure | value | same-run reference | ratio | goal | note |\n|---|---|---|---|---|---|\n");
    for row in rows {
        let cells = row_cells(row).map(|c| c.replace('|', "\\|"));
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// When and at which commit each rows file was measured (`<name>.measured`, written by
/// `boshy-bench stamp`), keyed by name. Rows files are re-measured one benchmark at a time, so
/// the results file says this per section rather than once.
pub type Measured = BTreeMap<String, String>;

/// The whole results file.
pub fn render(
    machine: &Machine,
    rows: &BTreeMap<String, Vec<Row>>,
    measured: &Measured,
    notes: Option<&str>,
) -> String {
    let mut out = String::from("# Benchmark results\n\n");
    let _ = writeln!(
        out,
        "Written by `scripts/bench` (`boshy-bench report`); do not edit by hand, edit \
         `bench/notes.md` instead. Every figure is measured beside its reference in the same \
         run; ratios are value / reference.\n"
    );
    let _ = writeln!(
        out,
        "- machine: {} CPUs, {}\n- kernel: {}\n- rendered: {}, commit {}; when each section was \
         measured is under its title\n",
        machine.cpus, machine.cpu_model, machine.kernel, machine.date, machine.commit
    );
    let known: Vec<&str> = SECTIONS
        .iter()
        .flat_map(|(names, _, _)| names.iter().copied())
        .collect();
    for (names, title, how) in SECTIONS {
        let _ = writeln!(out, "## {title}\n");
        let section: Vec<Row> = names
            .iter()
            .filter_map(|name| rows.get(*name))
            .flatten()
            .cloned()
            .collect();
        if section.is_empty() {
            let _ = writeln!(out, "Not measured yet: `{how}` adds it.");
        } else {
            let when: Vec<String> = names
                .iter()
                .filter(|name| rows.contains_key(**name))
                .map(|name| {
                    let at = measured.get(*name).map_or("not recorded", String::as_str);
                    format!("{name}: {at}")
                })
                .collect();
            let _ = writeln!(out, "Measured ({}).\n", when.join("; "));
            out.push_str(&table(&section));
        }
        out.push('\n');
    }
    for (name, rows) in rows
        .iter()
        .filter(|(name, _)| !known.contains(&name.as_str()))
    {
        let _ = writeln!(out, "## {name}\n");
        out.push_str(&table(rows));
        out.push('\n');
    }
    if let Some(notes) = notes {
        out.push_str(notes.trim_end());
        out.push('\n');
    }
    out
}

/// Every `<name>.measured` stamp of `dir`.
pub fn read_measured(dir: &Path) -> Result<Measured> {
    files_ending_in(dir, "measured")?
        .into_iter()
        .map(|(name, path)| {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok((name, text.trim().to_string()))
        })
        .collect()
}

/// `(stem, path)` of every `<stem>.<extension>` file of the rows directory `dir` (stems that
/// are not UTF-8 are skipped).
fn files_ending_in(dir: &Path, extension: &str) -> Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading the rows directory {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(extension) {
            continue;
        }
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            files.push((stem.to_string(), path));
        }
    }
    Ok(files)
}

#[derive(clap::Args, Debug)]
pub struct StampArgs {
    /// The directory of rows files.
    #[arg(long, default_value = "bench/rows")]
    pub rows: PathBuf,
    /// The rows files (benchmark names) just measured.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Writes `<name>.measured` (date and commit, from [`Machine::current`]) for each name.
pub fn stamp(args: StampArgs) -> Result<()> {
    let machine = Machine::current();
    for name in &args.names {
        let path = args.rows.join(format!("{name}.measured"));
        let text = format!("{}, commit {}\n", machine.date, machine.commit);
        boshy::fsutil::write_atomically(&path, text.as_bytes())?;
    }
    Ok(())
}

/// Every `<name>.json` rows file of `dir`, keyed by name.
pub fn read_rows(dir: &Path) -> Result<BTreeMap<String, Vec<Row>>> {
    files_ending_in(dir, "json")?
        .into_iter()
        .map(|(name, path)| {
            let text =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let rows: Vec<Row> = serde_json::from_slice(&text)
                .with_context(|| format!("{}: not a list of benchmark rows", path.display()))?;
            Ok((name, rows))
        })
        .collect()
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The directory of rows files (`<benchmark>.json`).
    #[arg(long, default_value = "bench/rows")]
    pub rows: PathBuf,
    /// Hand-written notes appended to the results (profiles, before/after).
    #[arg(long, default_value = "bench/notes.md")]
    pub notes: PathBuf,
    #[arg(long, default_value = "bench/results.md")]
    pub out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let rows = read_rows(&args.rows)?;
    let measured = read_measured(&args.rows)?;
    let notes = std::fs::read_to_string(&args.notes).ok();
    let text = render(&Machine::current(), &rows, &measured, notes.as_deref());
    boshy::fsutil::write_atomically(&args.out, text.as_bytes())?;
    println!("{}: written", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            cpus: 2,
            cpu_model: "AMD EPYC".into(),
            kernel: "6.1".into(),
            date: "2026-01-01 00:00 UTC".into(),
            commit: "abc1234".into(),
        }
    }

    #[test]
    fn rows_show_reference_ratio_and_goal() {
        let row = Row::new("dns", "queries/s", 150_000.0, "q/s")
            .against("dnsmasq", 100_000.0)
            .goal("≥ 1.5× dnsmasq", true);
        assert_eq!(row.ratio(), Some(1.5));
        let text = table(&[row]);
        assert!(
            text.contains(
                "| queries/s | 150000 q/s | 100000 q/s (dnsmasq) | 1.50× | ≥ 1.5× dnsmasq ✅ |  |"
            ),
            "{text}"
        );
        let missed = Row::new("dns", "p99", 0.25, "ms").goal("< 0.2 ms", false);
        assert!(table(&[missed]).contains("❌ missed"));
    }

    #[test]
    fn results_have_machine_every_section_and_a_slot_for_missing_ones() {
        let mut rows = BTreeMap::new();
        rows.insert("dns".to_string(), vec![Row::new("dns", "qps", 1.0, "q/s")]);
        rows.insert("extra".to_string(), vec![Row::new("extra", "x", 2.5, "ms")]);
        rows.insert(
            "envoy-memory".to_string(),
            vec![Row::new("envoy-memory", "rss", 50.0, "MB")],
        );
        let measured = Measured::from([(
            "dns".to_string(),
            "2026-01-01 00:00 UTC, commit abc1234".to_string(),
        )]);
        let text = render(&machine(), &rows, &measured, Some("## Notes\n\nprofiled"));
        assert!(text.contains("- rendered: 2026-01-01 00:00 UTC, commit abc1234"));
        assert!(text.contains("Measured (dns: 2026-01-01 00:00 UTC, commit abc1234).\n\n| figure"));
        assert!(
            text.contains("Measured (envoy-memory: not recorded)."),
            "a section lists only the rows files it has: {text}"
        );
        assert!(text.contains("2 CPUs, AMD EPYC"));
        assert!(text.contains("| qps | 1 q/s |"));
        assert!(
            text.contains("Not measured yet: `scripts/bench push (added with delta xDS)` adds it.")
        );
        assert!(text.contains("## extra\n\n| figure"));
        let data_plane = &text[text.find("## Data plane").unwrap()..];
        assert!(data_plane.contains("| rss | 50 MB |"), "{text}");
        assert!(!text.contains("## envoy-memory"));
        assert!(text.ends_with("profiled\n"));
    }

    #[test]
    fn stamps_record_date_and_commit_per_rows_file() {
        let dir = tempfile::tempdir().unwrap();
        stamp(StampArgs {
            rows: dir.path().to_path_buf(),
            names: vec!["convergence".into(), "steady".into()],
        })
        .unwrap();
        let measured = read_measured(dir.path()).unwrap();
        assert_eq!(
            measured.keys().collect::<Vec<_>>(),
            ["convergence", "steady"]
        );
        // The date may have moved on a minute since; the commit has not.
        let commit = Machine::current().commit;
        assert!(
            measured["steady"].ends_with(&format!(" UTC, commit {commit}")),
            "{}",
            measured["steady"]
        );
    }

    #[test]
    fn rows_files_round_trip_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let row = Row::new("build", "ms", 12.5, "ms").note("n");
        std::fs::write(
            dir.path().join("build.json"),
            serde_json::to_vec(&[&row]).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("README"), b"not rows").unwrap();
        let rows = read_rows(dir.path()).unwrap();
        assert_eq!(rows["build"], vec![row]);
        std::fs::write(dir.path().join("bad.json"), b"{}").unwrap();
        let err = format!("{:#}", read_rows(dir.path()).unwrap_err());
        assert!(err.contains("bad.json"), "{err}");
    }

    #[test]
    fn values_are_rounded_to_their_size() {
        assert_eq!(format_value(123456.78), "123457");
        assert_eq!(format_value(12.345), "12.35");
        assert_eq!(format_value(0.1234), "0.123");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(f64::NAN), "not measured");
        let unmeasured: Row = serde_json::from_str(
            r#"{"benchmark":"b","figure":"f","value":null,"unit":"MB","reference":{"label":"r","value":2.0}}"#,
        )
        .unwrap();
        assert!(unmeasured.value.is_nan() && unmeasured.ratio().is_none());
    }
}
