//! What tests ask of a finished command: run it, insist it succeeded, read its exit code.

use std::process::{Command, Output};

/// Runs `program` to completion; panics (naming what the test needs) when it cannot start.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{program}` ({e}); this test needs iproute2 and iptables, as root")
        })
}

/// Fails the test with the command's output unless it succeeded.
pub fn check(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The exit code of a command that exited (rather than died of a signal).
pub fn exit_code(output: &Output) -> i32 {
    output.status.code().expect("exited normally")
}

/// A child process that is killed and reaped when dropped, however the test ends (a failed
/// assertion unwinds through it too).
pub struct KilledOnDrop(pub std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for KilledOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KilledOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
