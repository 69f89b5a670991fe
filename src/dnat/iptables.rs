//! Running iptables: `iptables-save -t nat` to read the nat table and `iptables-restore
//! --noflush` to apply what [`super::rules`] rendered, with the binaries of the chosen backend.
//! Blocking (each is a subprocess): the caller runs it off the async workers. A failure carries
//! the binary's exit status and stderr, and a missing binary names the package to install.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Which iptables variant to run. The two keep separate rule sets in the kernel and each shows
/// only its own, so ours belong with the VM's other rules; `auto` runs the `iptables-save` and
/// `iptables-restore` on PATH, whichever variant the distribution made the default.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Auto,
    Nft,
    Legacy,
}

impl Backend {
    fn save_binary(self) -> &'static str {
        match self {
            Backend::Auto => "iptables-save",
            Backend::Nft => "iptables-nft-save",
            Backend::Legacy => "iptables-legacy-save",
        }
    }

    fn restore_binary(self) -> &'static str {
        match self {
            Backend::Auto => "iptables-restore",
            Backend::Nft => "iptables-nft-restore",
            Backend::Legacy => "iptables-legacy-restore",
        }
    }
}

/// What `iptables-save -t nat` prints now.
pub(crate) fn save_nat(backend: Backend) -> Result<String> {
    let binary = backend.save_binary();
    let output = Command::new(binary)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| spawn_error(binary, err))?;
    if !output.status.success() {
        bail!(
            "`{binary} -t nat` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout)
        .with_context(|| format!("`{binary} -t nat`: output is not UTF-8"))
}

/// Applies rendered input with `iptables-restore --noflush`: one transaction, so the table is
/// changed whole or not at all.
pub(crate) fn restore(backend: Backend, input: &str) -> Result<()> {
    let binary = backend.restore_binary();
    let mut child = Command::new(binary)
        // --wait: queue behind other users of the xtables lock instead of failing.
        .args(["--noflush", "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| spawn_error(binary, err))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .with_context(|| format!("writing the rules to {binary}"))?;
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {binary}"))?;
    if !output.status.success() {
        bail!(
            "`{binary} --noflush` rejected the rules ({}): {}\nthe input was:\n{input}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn spawn_error(binary: &str, err: std::io::Error) -> anyhow::Error {
    if err.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!("`{binary}` not found on PATH: install the iptables package")
    } else {
        anyhow::anyhow!("cannot run `{binary}`: {err}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_package_to_install() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let message = spawn_error("iptables-nft-save", missing).to_string();
        assert!(
            message.contains("`iptables-nft-save` not found"),
            "{message}"
        );
        assert!(
            message.contains("install the iptables package"),
            "{message}"
        );
    }
}
