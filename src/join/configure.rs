//! `boshy workload configure`: on the operator's machine, asks a pilot for a join token for
//! one WorkloadGroup and writes the join files (`files.rs`) to copy to the VM. The token is a
//! secret: it goes into `join.yml` (0600) and nowhere else: not the terminal, not a log, not
//! a command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::files::{self, JoinFiles, JoinSpecOut};
use super::wire::{self, TokenAnswer, TokenRequest};
use super::ConfigureArgs;
use crate::mesh_cli::PilotConnection;

pub(crate) async fn configure(args: ConfigureArgs) -> Result<()> {
    check_group(&args.group)?;
    for pilot in &args.pilots {
        files::https_only(pilot).map_err(|err| anyhow::anyhow!("--pilot {err}"))?;
    }
    let envoy = envoy_binary(args.envoy.as_deref())?;
    let boshy = std::env::current_exe().context("the path of this boshy binary")?;
    if std::env::var(&args.token_env)
        .ok()
        .filter(|t| !t.is_empty())
        .is_none()
    {
        bail!(
            "${}: not set; it must hold a UAA token with bosh.admin (`--token-env` names \
             another variable)",
            args.token_env
        );
    }
    let ca_pem = std::fs::read(&args.ca)
        .with_context(|| format!("--ca {}: cannot read", args.ca.display()))?;
    let answer = ask_for_token(&args).await?;
    let out = JoinFiles {
        dir: args.out.clone(),
    };
    files::write(
        &out,
        &JoinSpecOut {
            group: &answer.group,
            token_id: &answer.id,
            token: answer.token.expose(),
            expires_at: answer.expires_at,
            pilots: &args.pilots,
            settings: &answer.settings,
        },
        &ca_pem,
        &boshy,
        &envoy,
    )?;
    println!(
        "join token {} for {} (valid until unix time {}) and the binaries written to {}",
        answer.id,
        answer.group,
        answer.expires_at,
        out.dir.display()
    );
    println!(
        "copy {} to each VM (it holds a secret: scp, never a shared location) and run, as \
         root: boshy join --files <the copy>",
        out.dir.display()
    );
    Ok(())
}

/// POSTs the token request to each pilot in turn until one answers.
async fn ask_for_token(args: &ConfigureArgs) -> Result<TokenAnswer> {
    let request = TokenRequest {
        group: &args.group,
        ttl_seconds: args.ttl,
    };
    let client_of = |pilot: &str| {
        PilotConnection::new(
            pilot,
            args.ca.clone(),
            &args.server_name,
            None,
            &args.token_env,
        )
        .client()
    };
    let (_, answer) = wire::post_to_first(
        &args.pilots,
        client_of,
        wire::TOKENS_PATH,
        &request,
        "token",
    )
    .await?;
    Ok(answer)
}

/// `<config>/<name>`: two non-empty parts.
fn check_group(group: &str) -> Result<()> {
    match group.split_once('/') {
        Some((config, name)) if !config.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(())
        }
        _ => bail!(
            "--group {group}: not `<director config>/<WorkloadGroup name>` (e.g. legacy/rabbitmq)"
        ),
    }
}

/// `--envoy`, else `envoy` on PATH: the VM runs the Envoy shipped with the join files.
fn envoy_binary(given: Option<&Path>) -> Result<PathBuf> {
    let found = match given {
        Some(path) => Some(path.to_path_buf()),
        None => std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("envoy"))
                .find(|p| p.is_file())
        }),
    };
    match found {
        Some(path) if path.is_file() => Ok(path),
        Some(path) => bail!(
            "--envoy {}: no such file; the VM needs an Envoy binary (the one the release ships: \
             packages/envoy)",
            path.display()
        ),
        None => bail!(
            "no Envoy binary: none on PATH; pass --envoy <path> (the VM runs the Envoy copied \
             into the join files)"
        ),
    }
}

/// `--ttl`: `90s`, `30m`, `1h`, `7d` or plain seconds.
pub(crate) fn parse_ttl(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => (&text[..at], c),
        _ => (text, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("`{text}`: the unit is s, m, h or d")),
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("`{text}` is not a duration like 1h, 30m or 3600"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_like_people_write_them() {
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert_eq!(parse_ttl("90"), Ok(90));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn a_group_is_config_slash_name() {
        assert!(check_group("legacy/rabbitmq").is_ok());
        for bad in ["rabbitmq", "/x", "x/", "a/b/c"] {
            assert!(check_group(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_envoy_is_refused_clearly() {
        let err = envoy_binary(Some(Path::new("/nonexistent/envoy")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--envoy /nonexistent/envoy"), "{err}");
    }
}
