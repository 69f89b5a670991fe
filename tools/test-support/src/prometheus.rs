//! A real Prometheus (Debian's `prometheus` package) scraping what a test points it at, and
//! its query API.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One sample of an instant query: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A Prometheus server on a loopback port with a data directory of its own; killed on drop.
pub struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with the scrape configuration `config` (YAML) and waits until it is
    /// ready. Panics naming the package when `prometheus` is not installed.
    pub fn start(config: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write the scrape configuration");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("a log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run `prometheus` (apt-get install prometheus; scripts/test installs it)");
        let prometheus = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while prometheus.get("/-/ready").is_none() {
            assert!(
                Instant::now() < deadline,
                "Prometheus was not ready within 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    fn get(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The samples of the instant query `promql`; panics on an error.
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "--data-urlencode"])
            .arg(format!("query={promql}"))
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .output()
            .expect("run curl");
        assert!(out.status.success(), "query {promql}: {out:?}");
        let answer: Value = serde_json::from_slice(&out.stdout).expect("a JSON answer");
        assert_eq!(answer["status"], "success", "query {promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|sample| Sample {
                labels: serde_json::from_value(sample["metric"].clone()).expect("labels"),
                value: sample["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .expect("a value"),
            })
            .collect()
    }

    /// Queries `promql` until `done` holds of its samples (at most `timeout`); panics with
    /// `what` and the last samples otherwise.
    pub fn wait_for(
        &self,
        what: &str,
        promql: &str,
        timeout: Duration,
        done: impl Fn(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            let samples = self.query(promql);
            if done(&samples) {
                return samples;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: `{promql}` after {timeout:?}: {samples:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
