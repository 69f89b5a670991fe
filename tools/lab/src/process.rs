//! Long-running lab processes: started inside a VM's namespace in their own session (they
//! outlive `boshy-lab up`), logging to a file, stopped by pid.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// How to start one process of a VM, as a bpm config would say it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// The process name, e.g. `envoy`, `virtual-ip-agent`, `bosh-pilot`, `example-httpbin`.
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    /// Set while running.
    #[serde(default)]
    pub pid: Option<u32>,
    /// When that pid started (clock ticks after boot, `/proc/<pid>/stat`): a pid of a process
    /// that died is reused by the kernel, and the lab must never signal someone else's.
    #[serde(default)]
    pub started: Option<u64>,
}

impl ProcessSpec {
    /// Starts the process in `namespace` and records its pid.
    pub fn start(&mut self, namespace: &str) -> Result<()> {
        if let Some(parent) = self.log.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", namespace])
            .args(&self.argv)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // A session of its own: the process survives the lab command and its terminal.
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {} in {namespace}", self.name))?;
        self.pid = Some(child.id());
        self.started = start_time(child.id());
        Ok(())
    }

    /// Whether the process the lab started still runs: its pid is alive, not a zombie, and
    /// started when ours did.
    pub fn is_running(&self) -> bool {
        self.pid.is_some_and(|pid| {
            kill(Pid::from_raw(pid as i32), None).is_ok()
                && !is_zombie(pid)
                && self
                    .started
                    .is_none_or(|started| start_time(pid) == Some(started))
        })
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.signal_and_wait(Signal::SIGTERM, grace);
        self.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5));
        (self.pid, self.started) = (None, None);
    }

    /// `kill -9`, as a crash would.
    pub fn kill(&mut self) {
        self.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5));
        (self.pid, self.started) = (None, None);
    }

    fn signal_and_wait(&self, signal: Signal, wait: Duration) {
        let Some(pid) = self.pid else { return };
        if !self.is_running() {
            return;
        }
        let _ = kill(Pid::from_raw(pid as i32), signal);
        let deadline = Instant::now() + wait;
        while self.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Field 22 of `/proc/<pid>/stat`, after the command name (which may hold spaces).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A child of ours that exited but was not reaped still answers kill(0).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_pid_is_not_the_process_the_lab_started() {
        let me = std::process::id();
        let started = start_time(me).expect("this process's start time");
        let spec = |started| ProcessSpec {
            name: "test".into(),
            argv: Vec::new(),
            env: Vec::new(),
            log: PathBuf::from("/dev/null"),
            pid: Some(me),
            started,
        };
        assert!(spec(Some(started)).is_running());
        assert!(
            !spec(Some(started + 1)).is_running(),
            "the same pid, started at another time: someone else's process"
        );
    }
}
