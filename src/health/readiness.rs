//! The agent side of a WorkloadGroup's readiness probe (docs/health.md): the agent of a VM
//! registered into a group runs the group's probe with Kubernetes' semantics, and its verdict
//! goes into every report of its instance (`AgentReport::probe`).
//!
//! - Timing: the first attempt after `initialDelaySeconds`, then one every `periodSeconds`,
//!   each bounded by `timeoutSeconds`. Attempts never overlap: a slow one delays the next.
//! - Verdict: failing until the first one (the kubelet's initial readiness), passing after
//!   `successThreshold` successes in a row, failing after `failureThreshold` failures in a
//!   row; anything in between keeps the verdict.
//! - `httpGet`: `GET scheme://host:port/path` with the probe's headers; ready on a status from
//!   200 to 399. Redirects are not followed (a 3xx is a success, as the kubelet counts one it
//!   does not follow), no proxy is used, and an HTTPS certificate is not verified: the kubelet
//!   does not verify it either, and the probe asks whether the job answers, not who it is.
//! - `tcpSocket`: a TCP connection opens.
//! - `exec`: the program runs (no shell) and exits 0 in time; on timeout it is killed, with
//!   every process it started in its process group.
//!
//! Without a `host`, attempts go to the VM's own address, from the address the inbound
//! capture lets through (`dnat::INBOUND_HOP_SOURCE`, as the port probes do): the probe asks
//! the job, not the VM's Envoy, which would accept whether or not the job is up.
//!
//! The pure parts ([`Thresholds`], [`http_request`], [`Timing`]) are apart from the I/O
//! ([`attempt`], [`run`]).

use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use super::report::ProbeVerdict;
use crate::catalog::model::{HttpGetProbe, Probe, ProbeAction};
use crate::names::error_chain;
use crate::text::clip;

/// How much of an exec probe's output is kept for its detail (the rest is read and dropped,
/// so that a chatty command does not block on a full pipe).
const MAX_OUTPUT_BYTES: usize = 4096;

/// One attempt's outcome: `Err` says why it failed, clipped, never with a header's value.
pub(crate) type Attempt = Result<(), String>;

/// When the attempts of a probe happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub(crate) initial_delay: Duration,
    pub(crate) period: Duration,
    pub(crate) timeout: Duration,
}

impl Timing {
    pub(crate) fn of(probe: &Probe) -> Timing {
        let seconds = |n: u32| Duration::from_secs(u64::from(n));
        Timing {
            initial_delay: seconds(probe.initial_delay_seconds),
            // The checks refuse 0; an interval of 0 would panic.
            period: seconds(probe.period_seconds.max(1)),
            timeout: seconds(probe.timeout_seconds.max(1)),
        }
    }
}

/// Kubernetes' thresholds over a probe's attempts: pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Thresholds {
    success_threshold: u32,
    failure_threshold: u32,
    passing: bool,
    /// Successes (or failures) in a row up to the last attempt; one of them is 0.
    successes: u32,
    failures: u32,
}

impl Thresholds {
    pub(crate) fn new(probe: &Probe) -> Thresholds {
        Thresholds {
            success_threshold: probe.success_threshold.max(1),
            failure_threshold: probe.failure_threshold.max(1),
            passing: false,
            successes: 0,
            failures: 0,
        }
    }

    /// The verdict before the first attempt: failing, as a container is not ready before its
    /// readiness probe succeeded.
    pub(crate) fn waiting(timing: &Timing) -> ProbeVerdict {
        ProbeVerdict {
            passing: false,
            detail: format!(
                "not probed yet (initial delay {}s)",
                timing.initial_delay.as_secs()
            ),
        }
    }

    /// Takes one attempt into account; the verdict after it. Its detail is why the attempt
    /// failed, or, while successes have not yet made it pass, how many more it needs.
    pub(crate) fn record(&mut self, attempt: &Attempt) -> ProbeVerdict {
        match attempt {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if self.successes >= self.success_threshold {
                    self.passing = true;
                }
            }
            Err(_) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.failure_threshold {
                    self.passing = false;
                }
            }
        }
        let detail = match attempt {
            Err(why) => why.clone(),
            Ok(()) if !self.passing => format!(
                "{} of {} successes in a row needed",
                self.successes, self.success_threshold
            ),
            Ok(()) => String::new(),
        };
        ProbeVerdict {
            passing: self.passing,
            detail,
        }
    }
}

/// The request an `httpGet` probe makes: pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpRequest {
    pub(crate) url: String,
    /// The probe's headers, after the defaults the kubelet sends too (`User-Agent`,
    /// `Accept`) unless the probe sets them.
    pub(crate) headers: Vec<(String, String)>,
    /// Sent to the VM's own address: from the inbound capture's hop source (IPv4).
    pub(crate) own_address: bool,
}

/// The request of `get` from the VM at `address`.
pub(crate) fn http_request(get: &HttpGetProbe, address: IpAddr) -> HttpRequest {
    let scheme = if get.https { "https" } else { "http" };
    let host = match &get.host {
        Some(host) => match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => host.clone(),
        },
        None => match address {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        },
    };
    let path = if get.path.starts_with('/') {
        get.path.clone()
    } else {
        format!("/{}", get.path)
    };
    let sets = |name: &str| {
        get.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name))
    };
    let defaults = [
        (
            "User-Agent",
            concat!("boshy-probe/", env!("CARGO_PKG_VERSION")),
        ),
        ("Accept", "*/*"),
    ];
    let headers = defaults
        .into_iter()
        .filter(|(name, _)| !sets(name))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .chain(
            get.headers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone())),
        )
        .collect();
    HttpRequest {
        url: format!("{scheme}://{host}:{}{path}", get.port),
        headers,
        own_address: get.host.is_none(),
    }
}

/// What runs the attempts of one probe, with what every attempt shares made once: the
/// HTTP request and its client.
pub(crate) struct Prober {
    action: Action,
    address: IpAddr,
    timeout: Duration,
}

enum Action {
    Http {
        request: HttpRequest,
        /// `Err`: why it could not be built; every attempt fails with it.
        client: Result<reqwest::Client, String>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
}

impl Prober {
    pub(crate) fn new(probe: Probe, address: IpAddr, timing: Timing) -> Prober {
        let action = match probe.action {
            ProbeAction::HttpGet(get) => Action::Http {
                request: http_request(&get, address),
                client: http_client(&get, address, timing.timeout),
            },
            ProbeAction::TcpSocket { host, port } => Action::Tcp { host, port },
            ProbeAction::Exec { command } => Action::Exec { command },
        };
        Prober {
            action,
            address,
            timeout: timing.timeout,
        }
    }

    /// One attempt, bounded by the probe's timeout.
    pub(crate) async fn attempt(&self) -> Attempt {
        let timeout = self.timeout;
        match &self.action {
            Action::Http { request, client } => {
                let client = client.as_ref().map_err(Clone::clone)?;
                bounded(timeout, http_get(client, request)).await
            }
            Action::Tcp { host, port } => {
                bounded(timeout, tcp_connect(host.as_deref(), self.address, *port)).await
            }
            Action::Exec { command } => exec(command, timeout).await,
        }
    }
}

/// `attempt` failed when it takes longer than `timeout`.
async fn bounded(
    timeout: Duration,
    attempt: impl std::future::Future<Output = Attempt>,
) -> Attempt {
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", timeout.as_secs_f32())))
}

fn http_client(
    get: &HttpGetProbe,
    address: IpAddr,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(true)
        .timeout(timeout)
        // A new connection per attempt, as the kubelet makes: a pooled one would say the job
        // answered once, not that it accepts connections now.
        .pool_max_idle_per_host(0);
    if get.host.is_none() && address.is_ipv4() {
        builder = builder.local_address(IpAddr::from(crate::dnat::INBOUND_HOP_SOURCE));
    }
    builder
        .build()
        .map_err(|err| format!("cannot build the HTTP client: {}", error_chain(&err)))
}

async fn http_get(client: &reqwest::Client, request: &HttpRequest) -> Attempt {
    let mut get = client.get(&request.url);
    for (name, value) in &request.headers {
        get = get.header(name, value);
    }
    // reqwest's errors name the URL, never a header.
    let response = get
        .send()
        .await
        .map_err(|err| clip(&format!("GET {}: {}", request.url, error_chain(&err))))?;
    let status = response.status();
    if (200..400).contains(&status.as_u16()) {
        Ok(())
    } else {
        Err(clip(&format!("GET {} answered {status}", request.url)))
    }
}

async fn tcp_connect(host: Option<&str>, address: IpAddr, port: u16) -> Attempt {
    let connected = match host {
        None => super::prober::connect(address, port).await,
        Some(host) => tokio::net::TcpStream::connect((host, port)).await,
    };
    let target = host.map_or_else(|| address.to_string(), str::to_string);
    connected
        .map(drop)
        .map_err(|err| clip(&format!("TCP connection to {target}:{port}: {err}")))
}

/// Runs `command` (program, then arguments; no shell) with its own process group, so that on
/// timeout the program and whatever it started are killed together.
async fn exec(command: &[String], timeout: Duration) -> Attempt {
    let Some((program, args)) = command.split_first() else {
        return Err("no command".into());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| clip(&format!("cannot run {program}: {err}")))?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let finished = tokio::time::timeout(timeout, async {
        let (status, _, _) = tokio::join!(
            child.wait(),
            read_capped(out, &mut stdout),
            read_capped(err, &mut stderr)
        );
        status
    })
    .await;
    let status = match finished {
        Ok(status) => status.map_err(|err| clip(&format!("waiting for {program}: {err}")))?,
        Err(_) => {
            kill_group(&child);
            // Reaps it; kill_on_drop would too, later.
            let _ = child.kill().await;
            return Err(clip(&format!(
                "{program} did not exit within {}s: killed",
                timeout.as_secs_f32()
            )));
        }
    };
    if status.success() {
        return Ok(());
    }
    let output = if stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        stderr
    } else {
        stdout
    };
    let output = String::from_utf8_lossy(&output);
    let output = output.trim();
    Err(clip(&if output.is_empty() {
        format!("{program} {status}")
    } else {
        format!("{program} {status}: {output}")
    }))
}

/// Kills the process group `child` leads (it was started with `process_group(0)`).
fn kill_group(child: &tokio::process::Child) {
    let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        return;
    };
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Reads `reader` to its end, keeping its first [`MAX_OUTPUT_BYTES`] in `kept`.
async fn read_capped(reader: Option<impl AsyncRead + Unpin>, kept: &mut Vec<u8>) {
    let Some(mut reader) = reader else { return };
    let mut buffer = [0u8; 1024];
    while let Ok(read @ 1..) = reader.read(&mut buffer).await {
        let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
        kept.extend_from_slice(&buffer[..read.min(room)]);
    }
}

/// Runs `probe` against the VM at `address` and publishes its verdict on `verdicts` whenever
/// it changes (the waiting verdict at once); logs each change of `passing`, not each attempt.
/// Runs until `verdicts` has no receiver left.
pub(crate) async fn run(
    probe: Probe,
    address: IpAddr,
    timing: Timing,
    verdicts: watch::Sender<ProbeVerdict>,
) {
    let mut thresholds = Thresholds::new(&probe);
    verdicts.send_replace(Thresholds::waiting(&timing));
    let what = describe(&probe.action);
    let prober = Prober::new(probe, address, timing);
    tokio::select! {
        () = tokio::time::sleep(timing.initial_delay) => {}
        () = verdicts.closed() => return,
    }
    let mut ticker = tokio::time::interval(timing.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first attempt's verdict is logged, passing or not: an operator looking at a member
    // that never passes sees why once.
    let mut logged_passing = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = verdicts.closed() => return,
        }
        let attempt = tokio::select! {
            attempt = prober.attempt() => attempt,
            () = verdicts.closed() => return,
        };
        let verdict = thresholds.record(&attempt);
        if logged_passing != Some(verdict.passing) {
            logged_passing = Some(verdict.passing);
            if verdict.passing {
                tracing::info!(probe = %what, "the readiness probe passes: this VM takes traffic");
            } else {
                tracing::warn!(probe = %what, detail = %verdict.detail, "the readiness probe fails: this VM is out of its service");
            }
        }
        verdicts.send_if_modified(|current| {
            let differs = *current != verdict;
            if differs {
                *current = verdict;
            }
            differs
        });
    }
}

/// What a probe does, for the log: never a header's value.
fn describe(action: &ProbeAction) -> String {
    match action {
        ProbeAction::HttpGet(get) => {
            let scheme = if get.https { "https" } else { "http" };
            let host = get.host.as_deref().unwrap_or("<own address>");
            clip(&format!(
                "httpGet {scheme}://{host}:{}{}",
                get.port, get.path
            ))
        }
        ProbeAction::TcpSocket { host, port } => {
            format!(
                "tcpSocket {}:{port}",
                host.as_deref().unwrap_or("<own address>")
            )
        }
        ProbeAction::Exec { command } => clip(&format!("exec {}", command.join(" "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::ProbeHeader;

    fn probe(action: ProbeAction) -> Probe {
        Probe {
            initial_delay_seconds: 0,
            timeout_seconds: 1,
            period_seconds: 1,
            success_threshold: 1,
            failure_threshold: 1,
            action,
        }
    }

    fn thresholds(success: u32, failure: u32) -> Thresholds {
        Thresholds::new(&Probe {
            success_threshold: success,
            failure_threshold: failure,
            ..probe(ProbeAction::Exec {
                command: vec!["true".into()],
            })
        })
    }

    fn passing_after(thresholds: &mut Thresholds, attempts: &[bool]) -> Vec<bool> {
        attempts
            .iter()
            .map(|&ok| {
                let attempt = if ok { Ok(()) } else { Err("no".to_string()) };
                thresholds.record(&attempt).passing
            })
            .collect()
    }

    #[test]
    fn the_verdict_fails_until_enough_successes_in_a_row_and_passes_until_enough_failures() {
        let mut t = thresholds(2, 3);
        assert_eq!(
            passing_after(
                &mut t,
                &[true, false, true, true, false, false, true, false, false, false]
            ),
            [false, false, false, true, true, true, true, true, true, false]
        );
        // Failing again: one success is not enough.
        assert_eq!(passing_after(&mut t, &[true, true]), [false, true]);
        // Kubernetes' defaults: one success passes, three failures fail.
        let mut t = thresholds(1, 3);
        assert_eq!(
            passing_after(&mut t, &[false, true, false, false, false]),
            [false, true, true, true, false]
        );
    }

    #[test]
    fn the_detail_says_why_the_last_attempt_failed_or_how_many_successes_are_missing() {
        let timing = Timing::of(&Probe {
            initial_delay_seconds: 7,
            ..probe(ProbeAction::Exec { command: vec![] })
        });
        assert_eq!(
            Thresholds::waiting(&timing),
            ProbeVerdict {
                passing: false,
                detail: "not probed yet (initial delay 7s)".into()
            }
        );
        let mut t = thresholds(2, 1);
        assert_eq!(
            t.record(&Ok(())),
            ProbeVerdict {
                passing: false,
                detail: "1 of 2 successes in a row needed".into()
            }
        );
        assert_eq!(t.record(&Ok(())).detail, "");
        assert_eq!(
            t.record(&Err("GET / answered 500".into())),
            ProbeVerdict {
                passing: false,
                detail: "GET / answered 500".into()
            }
        );
    }

    #[test]
    fn timing_is_the_probes_seconds() {
        let timing = Timing::of(&Probe {
            initial_delay_seconds: 5,
            timeout_seconds: 2,
            period_seconds: 3,
            ..probe(ProbeAction::Exec { command: vec![] })
        });
        assert_eq!(
            timing,
            Timing {
                initial_delay: Duration::from_secs(5),
                period: Duration::from_secs(3),
                timeout: Duration::from_secs(2),
            }
        );
    }

    fn get(host: Option<&str>, headers: &[(&str, &str)]) -> HttpGetProbe {
        HttpGetProbe {
            https: false,
            host: host.map(str::to_string),
            port: 8080,
            path: "/ready?full=1".into(),
            headers: headers
                .iter()
                .map(|(name, value)| ProbeHeader {
                    name: name.to_string(),
                    value: value.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn an_http_request_goes_to_the_vms_address_unless_a_host_is_given_with_its_headers() {
        let request = http_request(&get(None, &[("X-Token", "s3cret")]), [10, 0, 0, 5].into());
        assert_eq!(request.url, "http://10.0.0.5:8080/ready?full=1");
        assert!(request.own_address);
        let names: Vec<&str> = request.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["User-Agent", "Accept", "X-Token"]);
        assert_eq!(request.headers[2].1, "s3cret");

        let https = HttpGetProbe {
            https: true,
            ..get(
                Some("db.example.com"),
                &[("user-agent", "mine"), ("Host", "x")],
            )
        };
        let request = http_request(&https, [10, 0, 0, 5].into());
        assert_eq!(request.url, "https://db.example.com:8080/ready?full=1");
        assert!(!request.own_address);
        assert_eq!(
            request.headers,
            [
                ("Accept".to_string(), "*/*".to_string()),
                ("user-agent".to_string(), "mine".to_string()),
                ("Host".to_string(), "x".to_string()),
            ],
            "the probe's own User-Agent replaces the default"
        );
        let v6 = http_request(&get(None, &[]), "fd00::5".parse().unwrap());
        assert_eq!(v6.url, "http://[fd00::5]:8080/ready?full=1");
        let v6_host = http_request(&get(Some("fd00::6"), &[]), [10, 0, 0, 5].into());
        assert_eq!(v6_host.url, "http://[fd00::6]:8080/ready?full=1");
    }

    #[test]
    fn a_probe_is_described_without_its_headers_values() {
        let action = ProbeAction::HttpGet(get(None, &[("Authorization", "Bearer s3cret")]));
        let described = describe(&action);
        assert_eq!(described, "httpGet http://<own address>:8080/ready?full=1");
        assert!(!format!("{action:?}").contains("s3cret"));
    }

    /// An HTTP server on 127.0.0.1 answering every request with `status`, and the requests'
    /// heads it got.
    async fn http_server(status: u16) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (heads, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let heads = heads.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                    let answer = format!(
                        "HTTP/1.1 {status} Whatever\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        (port, rx)
    }

    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    async fn attempt(action: ProbeAction) -> Attempt {
        let probe = probe(action);
        let timing = Timing {
            timeout: Duration::from_secs(5),
            ..Timing::of(&probe)
        };
        Prober::new(probe, [127, 0, 0, 1].into(), timing)
            .attempt()
            .await
    }

    #[tokio::test]
    async fn http_get_succeeds_on_200_to_399_with_its_headers_and_fails_otherwise() {
        for (status, ok) in [
            (200, true),
            (302, true),
            (399, true),
            (404, false),
            (500, false),
        ] {
            let (port, mut heads) = http_server(status).await;
            let action = ProbeAction::HttpGet(HttpGetProbe {
                port,
                ..get(None, &[("X-Probe", "yes")])
            });
            let outcome = attempt(action).await;
            assert_eq!(outcome.is_ok(), ok, "{status}: {outcome:?}");
            if let Err(why) = outcome {
                assert!(why.contains(&status.to_string()), "{why}");
            }
            let head = heads.recv().await.unwrap();
            assert!(head.starts_with("GET /ready?full=1 HTTP/1.1\r\n"), "{head}");
            assert!(head.to_ascii_lowercase().contains("x-probe: yes"), "{head}");
        }
        let refused = attempt(ProbeAction::HttpGet(HttpGetProbe {
            port: closed_port(),
            ..get(None, &[("Authorization", "s3cret")])
        }))
        .await
        .unwrap_err();
        assert!(refused.contains("GET http://127.0.0.1:"), "{refused}");
        assert!(!refused.contains("s3cret"), "{refused}");
    }

    #[tokio::test]
    async fn an_https_probe_takes_any_certificate() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generated =
            rcgen::generate_simple_self_signed(vec!["elsewhere.example".into()]).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![generated.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(generated.key_pair.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let mut buffer = [0u8; 1024];
                    let _ = tls.read(&mut buffer).await;
                    let _ = tls
                        .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let action = ProbeAction::HttpGet(HttpGetProbe {
            https: true,
            port,
            ..get(None, &[])
        });
        assert_eq!(attempt(action).await, Ok(()));
    }

    #[tokio::test]
    async fn tcp_socket_succeeds_on_an_open_port_and_fails_on_a_closed_one() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = open.local_addr().unwrap().port();
        assert_eq!(
            attempt(ProbeAction::TcpSocket { host: None, port }).await,
            Ok(())
        );
        assert_eq!(
            attempt(ProbeAction::TcpSocket {
                host: Some("127.0.0.1".into()),
                port
            })
            .await,
            Ok(())
        );
        let closed = closed_port();
        let why = attempt(ProbeAction::TcpSocket {
            host: None,
            port: closed,
        })
        .await
        .unwrap_err();
        assert!(why.contains(&format!("127.0.0.1:{closed}")), "{why}");
    }

    fn exec_of(command: &[&str]) -> ProbeAction {
        ProbeAction::Exec {
            command: command.iter().map(|w| w.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn exec_succeeds_on_exit_0_and_fails_otherwise_saying_what_it_printed() {
        assert_eq!(attempt(exec_of(&["true"])).await, Ok(()));
        let why = attempt(exec_of(&["false"])).await.unwrap_err();
        assert!(why.starts_with("false exit status: 1"), "{why}");
        let why = attempt(exec_of(&["sh", "-c", "echo out; echo broken >&2; exit 3"]))
            .await
            .unwrap_err();
        assert_eq!(why, "sh exit status: 3: broken");
        let why = attempt(exec_of(&["/nonexistent/probe"])).await.unwrap_err();
        assert!(why.starts_with("cannot run /nonexistent/probe"), "{why}");
        // No shell: the words are arguments, not a command line.
        assert_eq!(attempt(exec_of(&["test", "a", "=", "a"])).await, Ok(()));
        assert!(attempt(exec_of(&["test", "a = b"])).await.is_ok());
    }

    #[tokio::test]
    async fn exec_is_killed_with_what_it_started_when_it_outlives_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script = format!(
            "sleep 300 & echo $! > {0}.tmp; echo $$ >> {0}.tmp; mv {0}.tmp {0}; wait",
            pids.display()
        );
        let probe = probe(exec_of(&["sh", "-c", &script]));
        let timing = Timing {
            timeout: Duration::from_secs(1),
            ..Timing::of(&probe)
        };
        let prober = Prober::new(probe, [127, 0, 0, 1].into(), timing);
        let why = prober.attempt().await.unwrap_err();
        assert!(why.contains("did not exit within 1s: killed"), "{why}");
        let pids = std::fs::read_to_string(&pids).expect("the script started in time");
        // Killed: gone, or a zombie its reaper has not collected yet. SIGKILL is delivered
        // asynchronously: wait for it, at most far longer than it takes.
        let alive = |pid: &str| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z')),
            Err(_) => false,
        };
        for pid in pids.lines().map(str::trim) {
            let gone = async {
                while alive(pid) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            assert!(
                tokio::time::timeout(Duration::from_secs(10), gone)
                    .await
                    .is_ok(),
                "{pid} still runs"
            );
        }
    }

    #[tokio::test]
    async fn run_publishes_waiting_then_the_verdicts_of_its_attempts() {
        let (port, _heads) = http_server(200).await;
        let probe = probe(ProbeAction::HttpGet(HttpGetProbe {
            port,
            ..get(None, &[])
        }));
        let timing = Timing {
            initial_delay: Duration::from_millis(50),
            period: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
        };
        let (tx, mut verdicts) = watch::channel(ProbeVerdict {
            passing: true,
            detail: "unset".into(),
        });
        let runner = tokio::spawn(run(probe, [127, 0, 0, 1].into(), timing, tx));
        let first = verdicts
            .wait_for(|v| v.detail != "unset")
            .await
            .unwrap()
            .clone();
        assert_eq!(first, Thresholds::waiting(&timing));
        let passing = verdicts.wait_for(|v| v.passing).await.unwrap().clone();
        assert_eq!(passing.detail, "");
        drop(verdicts);
        runner.await.unwrap();
    }
}
