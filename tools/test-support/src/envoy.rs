//! What the tests that run a real Envoy against an in-process server share: a private network
//! namespace (Envoy's outbound port then collides with nothing), the DNAT that sends VIP
//! traffic to Envoy there, the server's log lines, and the one way they start Envoy and read
//! its admin API.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use boshy::catalog::model::Catalog;
use boshy::xds::bootstrap::{render_with, AdsMode, NodeIdentity};
use boshy::xds::cache::Snapshot;
use boshy::xds::sync::SyncBoard;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::process::{check, run};

/// How long a test waits for Envoy to show what it expects (the checks poll, they do not
/// sleep a fixed time; this only bounds a broken run).
pub const DEADLINE: Duration = Duration::from_secs(30);

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

/// Sends TCP connections to the VIPs of the tests' catalogs (169.254.255.0/24) to Envoy's
/// outbound listener, as the virtual-ip-agent's DNAT does. Only inside a private namespace
/// ([`in_private_netns`]): it changes the namespace's routes and nat table.
pub fn capture_vip_traffic() {
    let vips = "169.254.255.0/24";
    check(
        &run("ip", &["route", "add", "local", vips, "dev", "lo"]),
        "ip route add local",
    );
    let redirect = [
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-d",
        vips,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        "15001",
    ];
    check(&run("iptables", &redirect), "iptables REDIRECT");
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
pub fn envoy_binary() -> PathBuf {
    boshy_lab::binaries::envoy().unwrap_or_else(|e| panic!("{e:#}"))
}

/// A loopback listener on a free port, and its address.
pub async fn loopback_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let address = listener.local_addr().expect("a bound listener's address");
    (listener, address)
}

/// The pilot's ADS server on a loopback port, serving the snapshots of `catalog`: its address,
/// the snapshots and the board of its streams (what the API reads).
pub async fn serve_xds(
    catalog: watch::Receiver<Arc<Catalog>>,
) -> (
    SocketAddr,
    watch::Receiver<Option<Arc<Snapshot>>>,
    Arc<SyncBoard>,
) {
    let (listener, address) = loopback_listener().await;
    let snapshots = boshy::xds::cache::follow(catalog);
    let board = Arc::new(SyncBoard::default());
    tokio::spawn(boshy::xds::server::serve_snapshots(
        listener,
        snapshots.clone(),
        board.clone(),
        None,
        None,
    ));
    (address, snapshots, board)
}

/// Starts a real Envoy for `node` with ADS at `xds`.
pub async fn start_envoy(node: &NodeIdentity, xds: SocketAddr, mode: AdsMode) -> Envoy {
    let admin = loopback_listener().await.1;
    let bootstrap = render_with(node, &[xds.to_string()], admin, mode).expect("bootstrap renders");
    Envoy::start(&bootstrap, admin)
}

/// A real Envoy, killed when dropped, whose log is kept for failure messages.
pub struct Envoy {
    _process: tokio::process::Child,
    admin: SocketAddr,
    log: PathBuf,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy on `bootstrap`, whose admin listener is `admin` (free it before: Envoy
    /// binds it).
    pub fn start(bootstrap: &str, admin: SocketAddr) -> Envoy {
        // Tests run in parallel: each Envoy gets its own shared-memory base id.
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let base_id = std::process::id() * 16 + STARTED.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, bootstrap).expect("write the bootstrap");
        let log = dir.path().join("envoy.log");
        let binary = envoy_binary();
        let process = tokio::process::Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--base-id", &base_id.to_string()])
            .args(["--log-level", "info"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create Envoy's log file"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Envoy {}: {e}", binary.display()));
        Envoy {
            _process: process,
            admin,
            log,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("an HTTP client"),
            _dir: dir,
        }
    }

    /// Everything Envoy logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An admin endpoint's JSON answer; `None` while Envoy is not answering.
    pub async fn get(&self, path: &str) -> Option<Value> {
        let url = format!("http://{}{path}", self.admin);
        let response = self.http.get(url).send().await.ok()?;
        response.json().await.ok()
    }

    /// A counter or gauge from `/stats`; `None` until Envoy has it.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        stat_in(&self.get(&stat_path(name)).await?, name)
    }

    /// Polls an admin endpoint until `check` finds what it wants; fails with what was last
    /// seen and the tail of Envoy's log.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        path: &str,
        check: impl Fn(&Value) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            if let Some(value) = self.get(path).await {
                if let Some(found) = check(&value) {
                    return found;
                }
                last = Some(value);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = self.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "Envoy never showed {what} at {path}; last answer:\n{}\nEnvoy log tail:\n{}",
            serde_json::to_string_pretty(&last).unwrap_or_default(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// Polls a stat until `check` holds; returns its value.
    pub async fn wait_for_stat(&self, name: &str, check: impl Fn(u64) -> bool) -> u64 {
        self.wait_for(&format!("stat {name}"), &stat_path(name), |stats| {
            stat_in(stats, name).filter(|value| check(*value))
        })
        .await
    }
}

/// The `/stats` query for exactly one stat.
fn stat_path(name: &str) -> String {
    format!("/stats?format=json&filter=^{}$", name.replace('.', "\\."))
}

/// The value of stat `name` in a `/stats?format=json` answer.
fn stat_in(stats: &Value, name: &str) -> Option<u64> {
    stats["stats"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)?["value"]
        .as_u64()
}

/// The serial number of the first certificate in `pem`, as Envoy's admin `/certs` shows
/// serials: hex, lower case, no leading zeros.
pub fn certificate_serial(pem: &[u8]) -> String {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).expect("a PEM certificate");
    let certificate = block.parse_x509().expect("an X.509 certificate");
    let hex: String = certificate
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex.trim_start_matches('0').to_string()
}

/// The serials of every certificate Envoy's admin `/certs` (`certs`, its JSON) shows it holds,
/// as [`certificate_serial`] writes them.
pub fn held_serials(certs: &Value) -> Vec<String> {
    certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["cert_chain"].as_array().into_iter().flatten())
        .filter_map(|c| c["serial_number"].as_str())
        .map(|s| s.to_ascii_lowercase().trim_start_matches('0').to_string())
        .collect()
}
