//! What the tests that run a real Envoy against an in-process server share: a private network
//! namespace (Envoy's outbound port then collides with nothing) and the server's log lines.

use std::future::Future;
use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

/// Runs `test` on a fresh runtime inside a new network namespace with `lo` up. Only this
/// thread (and the threads and processes it starts) enter the namespace.
pub fn in_private_netns<F: Future<Output = ()>>(test: impl FnOnce() -> F + Send + 'static) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect(
            "creating a network namespace failed: this test needs root (CAP_SYS_ADMIN), as in CI",
        );
        let lo_up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("cannot run `ip` (is iproute2 installed?)");
        assert!(lo_up.success(), "ip link set lo up: {lo_up}");
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(test());
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// Everything this test process logs through tracing (at info), kept for assertions and
/// echoed to stderr.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        std::io::stderr().write_all(bytes)?;
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capture as the process's tracing subscriber (once) and returns it.
pub fn captured_logs() -> &'static CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
}

/// The Envoy binary the tests run (the lab's, see `boshy_lab::binaries::envoy`).
pub fn envoy_binary() -> std::path::PathBuf {
    boshy_lab::binaries::envoy().unwrap_or_else(|e| panic!("{e:#}"))
}
