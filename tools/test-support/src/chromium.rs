//! A real headless Chromium (Debian's `chromium`), for the tests of the web console: the page
//! as the browser has it once its scripts ran, and a screenshot.

use std::path::Path;
use std::process::Command;

/// How long (virtual time) the page's scripts get: its first fetches and draw take far less.
const SCRIPT_BUDGET_MS: &str = "15000";

fn chromium(profile: &Path) -> Command {
    let mut command = Command::new("chromium");
    command
        // As root, Chromium runs only without its sandbox; the page is our own.
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .args([
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={SCRIPT_BUDGET_MS}"));
    command
}

fn run(mut command: Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run chromium ({e}): the end-to-end tests need Debian's `chromium` (scripts/test installs it)")
    });
    assert!(
        output.status.success(),
        "chromium {what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The DOM of `url` after its scripts ran, as HTML.
pub fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("a Chromium profile directory");
    let mut command = chromium(profile.path());
    command.arg("--dump-dom").arg(url);
    run(command, "--dump-dom")
}

/// A PNG of `url` after its scripts ran, `width` × `height` pixels, written to `png`.
pub fn screenshot(url: &str, png: &Path, width: u32, height: u32) {
    let profile = tempfile::tempdir().expect("a Chromium profile directory");
    let mut command = chromium(profile.path());
    command
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url);
    run(command, "--screenshot");
    assert!(png.exists(), "chromium wrote no {}", png.display());
}
