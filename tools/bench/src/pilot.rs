//! The release's `boshy pilot` as a process of its own, as the bosh-pilot job runs it, so
//! that its RSS and CPU are its own: what the fleet and the CSR benchmarks measure.

use std::path::Path;

use anyhow::{Context, Result};
use tokio::process::{Child, Command};

use super::{cpu_seconds, ProcMemory};

/// The pilot process (its log appended to a file), killed when dropped.
pub(crate) struct Pilot {
    child: Child,
    pid: u32,
}

impl Pilot {
    /// Starts `boshy pilot --config <config>`, its output appended to `log`.
    pub(crate) fn start(config: &Path, log: &Path) -> Result<Pilot> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(boshy_lab::binaries::workspace(boshy_lab::binaries::BOSHY)?)
            .args(["pilot", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting boshy pilot")?;
        let pid = child.id().context("the pilot's pid")?;
        Ok(Pilot { child, pid })
    }

    pub(crate) fn memory(&self) -> Result<ProcMemory> {
        ProcMemory::of(self.pid)
    }

    pub(crate) fn cpu(&self) -> Result<f64> {
        cpu_seconds(self.pid)
    }

    pub(crate) async fn kill(mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// A loopback port free now.
pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
