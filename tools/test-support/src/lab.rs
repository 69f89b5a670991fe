//! What the lab-based tests share: driving `boshy-lab` for a lab of the test's own (name and
//! subnet), and reading the control plane's registration.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Output};

use boshy_lab::binaries::LAB;
use serde_json::Value;

/// One lab, named so that it never collides with another test's or a person's.
#[derive(Clone, Copy)]
pub struct LabCli {
    pub name: &'static str,
    pub subnet: &'static str,
}

impl LabCli {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(crate::workspace_binary(LAB));
        command
            .args(args)
            .env("BOSHY_LAB_NAME", self.name)
            .env("BOSHY_LAB_SUBNET", self.subnet);
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run boshy-lab")
    }

    /// Starts a lab command that keeps running (a server), its stdout piped.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run boshy-lab")
    }

    /// The mesh's clusters (`outbound|...`) the Envoy on `vm` has: what its VM's scope
    /// holds (docs/scope.md).
    pub fn mesh_clusters(&self, vm: &str) -> BTreeSet<String> {
        let clusters = self.ok(&["ssh", vm, "--", "curl", "-sS", "127.0.0.1:8001/clusters"]);
        boshy_lab::ready::mesh_clusters(&clusters)
    }

    /// Runs a lab command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "`boshy-lab {}` failed:\n{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The lab's state file, as `boshy-lab` keeps it.
    pub fn state(&self) -> Value {
        let path = format!("/tmp/boshy-lab/{}/lab.json", self.name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).expect("lab state is JSON")
    }

    /// IPs of the control-plane VMs.
    pub fn pilot_ips(&self) -> Vec<String> {
        self.state()["vms"]
            .as_array()
            .expect("vms")
            .iter()
            .filter(|vm| vm["deployment"] == "bosh-istio")
            .map(|vm| vm["ip"].as_str().expect("ip").to_string())
            .collect()
    }

    /// `GET <path>` of the API of the control plane at `pilot_ip`, over HTTPS with the lab's
    /// mesh client certificate, as every caller of the API must (docs/api.md); `None` on any
    /// failure.
    pub fn api_get(&self, pilot_ip: &str, path: &str) -> Option<String> {
        let name = boshy_lab::pki::PILOT_SERVER_NAME;
        let tls = format!("/tmp/boshy-lab/{}/mesh-tls", self.name);
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "--resolve"])
            .arg(format!("{name}:8080:{pilot_ip}"))
            .arg("--cacert")
            .arg(format!("{tls}/ca.pem"))
            .arg("--cert")
            .arg(format!("{tls}/client.pem"))
            .arg("--key")
            .arg(format!("{tls}/client.key"))
            .arg(format!("https://{name}:8080{path}"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `/v1/registration` of the control plane at `pilot_ip`.
    pub fn registration_from(&self, pilot_ip: &str) -> Vec<Value> {
        let body = self
            .api_get(pilot_ip, "/v1/registration")
            .unwrap_or_else(|| panic!("GET /v1/registration of {pilot_ip} failed"));
        serde_json::from_str(&body).expect("registration is JSON")
    }

    /// `/v1/registration` of the first control plane.
    pub fn registration(&self) -> Vec<Value> {
        let pilots = self.pilot_ips();
        self.registration_from(pilots.first().expect("a bosh-istio VM"))
    }

    /// The lab VM `deployment/instance_group/index`, as the lab's state records it.
    pub fn vm(&self, name: &str) -> Value {
        let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
        self.state()["vms"]
            .as_array()
            .expect("vms")
            .iter()
            .find(|vm| {
                let group = [text(&vm["deployment"]), text(&vm["instance_group"])].join("/");
                format!("{group}/{}", vm["index"]) == name
            })
            .unwrap_or_else(|| panic!("no lab VM {name}"))
            .clone()
    }

    /// What this lab keeps in /etc/netns (one directory per VM namespace, `<lab>-...`).
    pub fn netns_configs(&self) -> Vec<String> {
        let prefix = format!("{}-", self.name);
        std::fs::read_dir("/etc/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&prefix))
            .collect()
    }

    /// What `vm`'s resolver answers for `name` (empty for no A record).
    pub fn dig(&self, vm: &str, name: &str) -> String {
        self.ok(&[
            "ssh", vm, "--", "dig", "+short", "+time=1", "+tries=2", name,
        ])
        .trim()
        .to_string()
    }

    /// The HTTP status of one `curl` of `url` from `vm`, with `headers` (`name: value`).
    pub fn http_status(&self, vm: &str, url: &str, headers: &[&str]) -> String {
        let mut args = vec![
            "ssh",
            vm,
            "--",
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ];
        for header in headers {
            args.extend(["-H", header]);
        }
        args.push(url);
        self.ok(&args).trim().to_string()
    }

    /// The HTTP status of one `curl -X <method>` of `https://<server_name>:<port><path>` at
    /// `ip`, from the host, checking the server against the lab's mesh CA and presenting the
    /// lab's client certificate `client` (`prometheus`, `client`) if given; `000` when there was
    /// no answer (no TLS handshake).
    pub fn https_status(
        &self,
        (server_name, ip, port): (&str, &str, u16),
        method: &str,
        path: &str,
        client: Option<&str>,
    ) -> String {
        let tls = format!("/tmp/boshy-lab/{}/mesh-tls", self.name);
        let mut command = Command::new("curl");
        command
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--max-time", "5", "-X", method])
            .args(["--cacert", &format!("{tls}/ca.pem")])
            .args(["--resolve", &format!("{server_name}:{port}:{ip}")]);
        if let Some(client) = client {
            command
                .args(["--cert", &format!("{tls}/{client}.pem")])
                .args(["--key", &format!("{tls}/{client}.key")]);
        }
        let out = command
            .arg(format!("https://{server_name}:{port}{path}"))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// curls `url` from `vm` `n` times; returns the IPs of the instances that answered.
    pub fn curl_instances(&self, vm: &str, url: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let body = self.ok(&["ssh", vm, "--", "curl", "-sS", "--max-time", "5", url]);
                let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| {
                    panic!("request {i} to {url} from {vm}: not JSON ({e}): {body}")
                });
                json["instance"]["ip"]
                    .as_str()
                    .expect("instance ip")
                    .to_string()
            })
            .collect()
    }

    /// Starts requesting `url` from `vm` at `per_second` requests a second, over kept-alive
    /// connections, as a client of the mesh does, until [`SteadyLoad::stop`].
    pub fn steady_load(&self, vm: &str, url: &str, per_second: u32) -> SteadyLoad {
        let namespace = self.vm(&qualified(vm))["namespace"]
            .as_str()
            .expect("namespace")
            .to_string();
        // At most two minutes of requests: curl asks for each URL of its config in turn, at
        // the rate, and keeps going past failures.
        let mut config = tempfile::NamedTempFile::new().expect("a curl config file");
        for _ in 0..per_second as usize * 120 {
            writeln!(config, "url = \"{url}\"\noutput = \"/dev/null\"").expect("write");
        }
        let mut command = Command::new("ip");
        // Line-buffered, so that every finished request is in the output when curl is stopped.
        command
            .args(["netns", "exec", &namespace, "stdbuf", "-oL", "curl", "-sS"])
            .args(["--rate", &format!("{per_second}/s")])
            .args(["--max-time", "3"])
            .args(["-w", "%{http_code} %{errormsg}\\n"])
            .arg("-K")
            .arg(config.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        SteadyLoad {
            child: command.spawn().expect("run curl in the VM"),
            _config: config,
        }
    }

    /// Waits until every VM has converged on the control plane's catalog.
    pub fn wait(&self) {
        self.ok(&["wait", "--timeout-seconds", "60"]);
    }

    /// Waits until the control plane's catalog satisfies `ready` (it learns health from the
    /// director on its own timer), then until every VM has converged on it.
    pub fn wait_for_catalog(&self, what: &str, ready: impl Fn(&[Value]) -> bool) {
        for _ in 0..240 {
            if ready(&self.registration()) {
                self.wait();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        panic!(
            "the control plane never showed {what}: {:?}",
            self.registration()
        );
    }
}

/// `banana/1` is sample-deployment's; `deployment/group/index` is as given.
fn qualified(vm: &str) -> String {
    if vm.matches('/').count() == 1 {
        format!("sample-deployment/{vm}")
    } else {
        vm.to_string()
    }
}

/// Requests at a steady rate from one VM (`LabCli::steady_load`).
pub struct SteadyLoad {
    child: std::process::Child,
    _config: tempfile::NamedTempFile,
}

impl SteadyLoad {
    /// Stops the requests; the outcome of each that finished: `200 ` for a success, else the
    /// status (`000` when there was no response) and curl's error.
    pub fn stop(self) -> Vec<String> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let output = self.child.wait_with_output().expect("curl's output");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

pub fn service<'a>(services: &'a [Value], hostname: &str) -> &'a Value {
    services
        .iter()
        .find(|s| s["hostname"] == hostname)
        .unwrap_or_else(|| panic!("{hostname} not in /v1/registration: {services:?}"))
}

pub fn healthy_ips(service: &Value) -> BTreeSet<String> {
    service["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter(|e| e["healthy"] == true)
        .map(|e| e["address"].as_str().expect("address").to_string())
        .collect()
}

/// `ip netns list` and the rules of `iptables-save` (without counters and the generation
/// comments, which change on their own).
pub fn host_snapshot() -> (String, String) {
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program).args(args).output().expect(program);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let netns = run("ip", &["netns", "list"]);
    let rules: String = run("iptables-save", &[])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l).to_string() + "\n")
        .collect();
    (netns, rules)
}
