//! A network namespace of the test's own, deleted when the value is dropped (even when the test
//! fails), with helpers to run programs and open sockets inside it. Needs root and iproute2.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::process::{check, run};

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace `<prefix>-<random>` with loopback up.
    pub fn new(prefix: &str) -> Netns {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        check(&run("ip", &["netns", "add", &name]), "ip netns add");
        let netns = Netns { name };
        check(
            &netns.exec("ip", &["link", "set", "lo", "up"]),
            "ip link set lo up",
        );
        netns
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.exec_stdin(program, args, "")
    }

    pub fn exec_stdin(&self, program: &str, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `ip` ({e}); this test needs iproute2 and root"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// A command that runs `program` inside the namespace, for the caller to spawn.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `f` on a thread that has entered this namespace (a network namespace is per
    /// thread), so the sockets it opens live in it.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = std::fs::File::open(&path).unwrap();
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("setns into the test namespace (needs root)");
                    f()
                })
                .join()
                .unwrap()
        })
    }
}

impl Netns {
    /// Everything `<variant>-save` prints, every table, without the header comments (they
    /// carry timestamps) and with chain counters zeroed.
    pub fn saved_rules(&self, variant: &str) -> String {
        let output = self.exec(&format!("{variant}-save"), &[]);
        check(&output, &format!("{variant}-save"));
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| match (line.starts_with(':'), line.rfind('[')) {
                (true, Some(at)) => format!("{}[0:0]", &line[..at]),
                _ => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
