//! `boshy rules check FILE...`: what the pilot would make of rule files, before they are
//! uploaded with `bosh update-config --type boshy-istio`. Each file is read as the bosh CLI
//! reads it (its first YAML document) and checked with the pilot's own parser and validation
//! (`rules`), against a saved `/v1/registration` answer when one is given. One line per
//! finding, as `istioctl analyze` prints them; the exit status is 1 when anything is
//! rejected. Reading files and printing is all this module does; `rules` decides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::rules::{self, Finding, MeshView, ParsedConfig, Validated};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Checks rule files offline, as the pilot would: exit status 1 if anything is rejected.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Rule files, one per director config. A config is named after its file without the
    /// extension (`reviews.yml` is config `reviews`); write `NAME=FILE` to name it otherwise.
    /// Names order the checks: of two resources that claim one host, the first by config
    /// name wins.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<String>,
    /// A saved answer of the pilot's `GET /v1/registration` (JSON): the mesh's hosts, ports
    /// and instances, to check hosts and subsets against. Without it those checks are skipped.
    #[arg(long, value_name = "FILE")]
    registration: Option<PathBuf>,
    /// The mesh's domain (the pilot's `tld`), under which a ServiceEntry's hosts must be;
    /// checked with `--registration`.
    #[arg(long, default_value = "boshy")]
    tld: String,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        RulesCommand::Check(args) => check(args),
    }
}

/// One file given on the command line and the config it stands for.
struct RuleFile {
    config: String,
    path: PathBuf,
}

impl RuleFile {
    /// `NAME=FILE`, or `FILE` named after its stem. A `=` after a `/` is part of the path.
    fn from_arg(arg: &str) -> Result<RuleFile> {
        if let Some((name, path)) = arg.split_once('=') {
            if !name.is_empty() && !name.contains('/') {
                return Ok(RuleFile {
                    config: name.to_string(),
                    path: path.into(),
                });
            }
        }
        let path = PathBuf::from(arg);
        let Some(stem) = path.file_stem() else {
            bail!("{arg}: not a file name");
        };
        Ok(RuleFile {
            config: stem.to_string_lossy().into_owned(),
            path,
        })
    }
}

fn check(args: CheckArgs) -> Result<()> {
    let mesh = args
        .registration
        .as_deref()
        .map(read_registration)
        .transpose()?
        .map(|mesh| MeshView {
            tld: Some(args.tld.trim_matches('.').to_lowercase()),
            ..mesh
        });
    let files = args
        .files
        .iter()
        .map(|arg| RuleFile::from_arg(arg))
        .collect::<Result<Vec<_>>>()?;
    let mut paths_by_config: BTreeMap<&str, &Path> = BTreeMap::new();
    for file in &files {
        if let Some(other) = paths_by_config.insert(&file.config, &file.path) {
            bail!(
                "{} and {} would both be config {:?}: name one with NAME=FILE",
                other.display(),
                file.path.display(),
                file.config
            );
        }
    }
    let mut parsed = Vec::new();
    for file in &files {
        let content = std::fs::read_to_string(&file.path)
            .with_context(|| format!("{}: cannot read", file.path.display()))?;
        parsed.push(parse_as_bosh_sends_it(file, &content));
    }
    let validated = rules::validate(&parsed, mesh.as_ref());
    print!("{}", report(&files, &validated));
    let rejected: usize = validated.verdicts.iter().map(|v| v.rejected().len()).sum();
    if rejected > 0 {
        bail!("rejected: {rejected} (see the Error lines)");
    }
    Ok(())
}

fn read_registration(path: &Path) -> Result<MeshView> {
    let json = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    MeshView::from_registration_json(&json)
        .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))
}

/// Parses the first YAML document of `content`, the one `bosh update-config` would send,
/// with a warning when later ones would be dropped.
fn parse_as_bosh_sends_it(file: &RuleFile, content: &str) -> ParsedConfig {
    let first = rules::first_document(content);
    let mut parsed = rules::parse_config(&file.config, first.text);
    if first.drops_documents {
        parsed.warnings.insert(
            0,
            Finding::new(
                &file.config,
                None,
                None,
                format!(
                    "{} has more than one YAML document: bosh update-config sends the first \
                     one only, so the others are not checked either (keep several resources \
                     in one config as a `kind: List`)",
                    file.path.display()
                ),
            ),
        );
    }
    parsed
}

/// The lines `boshy rules check` prints: every finding, the checks skipped, and a summary
/// line per file.
fn report(files: &[RuleFile], validated: &Validated) -> String {
    let mut out = String::new();
    for verdict in &validated.verdicts {
        for error in &verdict.errors {
            out.push_str(&format!("Error {}\n", error.to_line()));
        }
        for warning in &verdict.warnings {
            out.push_str(&format!("Warning {}\n", warning.to_line()));
        }
    }
    for skipped in &validated.skipped_checks {
        let hint = if *skipped == rules::validate::NO_MESH_VIEW {
            " (--registration gives one)"
        } else {
            ""
        };
        out.push_str(&format!("Info: {skipped}{hint}\n"));
    }
    for (file, verdict) in files.iter().zip(&validated.verdicts) {
        out.push_str(&format!(
            "[{}] {}: {} accepted, {} rejected\n",
            verdict.config,
            file.path.display(),
            verdict.accepted.len(),
            verdict.rejected().len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_name_their_config_after_their_stem_unless_named() {
        let named = |arg| {
            let file = RuleFile::from_arg(arg).unwrap();
            (file.config, file.path)
        };
        assert_eq!(
            named("rules/reviews.yml"),
            ("reviews".into(), "rules/reviews.yml".into())
        );
        assert_eq!(
            named("routes=rules/a.yml"),
            ("routes".into(), "rules/a.yml".into())
        );
        assert_eq!(named("dir=x/a.yml"), ("dir".into(), "x/a.yml".into()));
        assert_eq!(named("./a=b.yml"), ("a=b".into(), "./a=b.yml".into()));
    }

    #[test]
    fn the_report_has_a_line_per_finding_and_per_file() {
        let file = RuleFile {
            config: "r".into(),
            path: "r.yml".into(),
        };
        let parsed = parse_as_bosh_sends_it(
            &file,
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n---\na: 1\n",
        );
        let validated = rules::validate(&[parsed], None);
        let report = report(&[file], &validated);
        let lines: Vec<&str> = report.lines().collect();
        assert!(
            lines[0].starts_with("Error [r] Gateway g: kind: Gateway is not supported"),
            "{report}"
        );
        assert!(
            lines[1].starts_with("Warning [r]: r.yml has more than one YAML document"),
            "{report}"
        );
        assert!(
            lines[2].starts_with("Info: without a mesh view"),
            "{report}"
        );
        assert_eq!(lines[3], "[r] r.yml: 0 accepted, 1 rejected");
    }
}
