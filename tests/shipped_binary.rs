//! The binaries the BOSH package ships (`packages/boshy`) hold the product and nothing else:
//! `boshy` has exactly the subcommands that run on a VM or in the control plane (and the
//! operator's tools: the offline check of traffic rules, which checks them as the pilot does,
//! `mesh status`, which reads a pilot's API, and `workload configure`; and what a VM outside
//! BOSH runs to join and leave the mesh), and neither
//! binary carries the director simulator, the lab, the benchmarks or the build machine's
//! checkout path (a binary that bakes the path in works only where it was built).

use std::path::Path;
use std::process::Command;

const SHIPPED: [&str; 2] = [
    env!("CARGO_BIN_EXE_boshy"),
    env!("CARGO_BIN_EXE_virtual-ip-agent"),
];

/// Strings only the tools hold: the simulator's control API, the lab's state file and binary,
/// the benchmarks' load tool and binary.
const TOOL_MARKERS: [&str; 5] = ["/_sim/", "lab.json", "boshy-lab", "dnsperf", "boshy-bench"];

/// The subcommands `boshy --help` lists.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn boshy_has_only_the_products_subcommands() {
    let output = Command::new(SHIPPED[0]).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        subcommands(&help),
        [
            "pilot",
            "virtual-ip-agent",
            "dnat",
            "envoy-bootstrap",
            "example-httpbin",
            "example-bookinfo",
            "rules",
            "mesh",
            "workload",
            "join",
            "leave"
        ],
        "{help}"
    );
}

/// The binary as `scripts/build-blobs` packs it: stripped of its debug sections, whose file
/// names are not loaded at run time.
fn stripped(binary: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(Path::new(binary).file_name().unwrap());
    let status = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .status()
        .expect("cannot run `strip` (apt-get install binutils)");
    assert!(status.success(), "strip {binary}: {status}");
    std::fs::read(out).unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[test]
fn shipped_binaries_hold_no_tool_code_and_no_checkout_path() {
    let dir = tempfile::tempdir().unwrap();
    let checkout = env!("CARGO_MANIFEST_DIR");
    for binary in SHIPPED {
        let bytes = stripped(binary, dir.path());
        assert!(
            !contains(&bytes, checkout),
            "{binary} holds the build machine's checkout path {checkout}"
        );
        for marker in TOOL_MARKERS {
            assert!(
                !contains(&bytes, marker),
                "{binary} holds `{marker}`: tool code reached the shipped binary"
            );
        }
    }
}

#[test]
fn the_checks_see_what_they_look_for() {
    let help = "boshy\n\nCommands:\n  pilot  The control plane\n  lab    The lab\n  help   Print this\n\nOptions:\n  -h\n";
    assert_eq!(subcommands(help), ["pilot", "lab"]);
    assert!(contains(b"xx/_sim/state", "/_sim/"));
    assert!(!contains(b"xx/_si", "/_sim/"));
}
