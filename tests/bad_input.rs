//! Config files of every subcommand (and the `dnat` flags) with one key made wrong, fuzzed with
//! proptest: every error names the file and the key. Checked on the parser the subcommands use
//! (`config::parse` plus the agent's own validation) for many cases, and on the binaries'
//! `--check-config` and flag parsing for a few.

use std::cell::Cell;
use std::path::Path;
use std::process::Command;

use boshy_test_support::fuzz::runner;
use proptest::prelude::*;
use serde_yaml::{Mapping, Value};

use boshy::config::{self, AgentConfig, PilotConfig};

const BOSHY: &str = env!("CARGO_BIN_EXE_boshy");
const PILOT_FILE: &str = "/var/vcap/jobs/bosh-pilot/config/pilot.yml";
const AGENT_FILE: &str = "/var/vcap/jobs/virtual-ip-agent/config/agent.yml";

const PILOT: &str = "director:
  url: https://10.244.0.6:25555
  client: pilot
  client_secret: x
  ca_cert_path: /var/vcap/jobs/bosh-pilot/config/director_ca.pem
  poll_interval_seconds: 5
  health_tasks_per_minute: 6
  insecure_skip_tls_verify: false
tld: boshy
virtual_ip_cidr: 169.254.255.0/24
vip_quarantine_seconds: 3600
vip_store: file
vip_state_path: /var/vcap/store/bosh-pilot/vips.json
insecure_plaintext: true
api:
  insecure_open: true
listen:
  xds: 0.0.0.0:15010
  api: 0.0.0.0:8080
  names: 0.0.0.0:15011
";

const AGENT: &str = "tld: boshy
listen: 127.0.0.1:8053
ttl_seconds: 5
pilots: [\"http://10.244.0.10:15011\"]
insecure_plaintext: true
table_path: /var/vcap/store/virtual-ip-agent/table.json
fast_path: true
";

/// The kind of value a key holds, to pick values it cannot take.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Number,
    Flag,
    Address,
    Cidr,
    List,
}

const PILOT_KEYS: &[(&str, Kind)] = &[
    ("director.url", Kind::Text),
    ("director.client", Kind::Text),
    ("director.poll_interval_seconds", Kind::Number),
    ("director.health_tasks_per_minute", Kind::Number),
    ("director.insecure_skip_tls_verify", Kind::Flag),
    ("tld", Kind::Text),
    ("virtual_ip_cidr", Kind::Cidr),
    ("vip_quarantine_seconds", Kind::Number),
    ("vip_store", Kind::Text),
    ("listen.xds", Kind::Address),
    ("listen.api", Kind::Address),
    ("listen.names", Kind::Address),
];

const AGENT_KEYS: &[(&str, Kind)] = &[
    ("tld", Kind::Text),
    ("listen", Kind::Address),
    ("ttl_seconds", Kind::Number),
    ("pilots", Kind::List),
    ("table_path", Kind::Text),
    ("fast_path", Kind::Flag),
];

/// Values a key of `kind` cannot hold.
fn wrong_value(kind: Kind) -> BoxedStrategy<Value> {
    let container = prop_oneof![
        Just(Value::Sequence(vec![Value::from(1)])),
        Just(Value::Mapping(Mapping::from_iter([(
            Value::from("a"),
            Value::from(1)
        )]))),
    ];
    match kind {
        Kind::Text => container.boxed(),
        Kind::List => {
            prop_oneof![Just(Value::from(7)), Just(Value::Mapping(Mapping::new()))].boxed()
        }
        Kind::Number => prop_oneof![
            container,
            Just(Value::from(-1)),
            Just(Value::from("soon")),
            Just(Value::from(1.5)),
            Just(Value::from(u64::MAX)),
        ]
        .boxed(),
        Kind::Flag => {
            prop_oneof![container, Just(Value::from("maybe")), Just(Value::from(2))].boxed()
        }
        Kind::Address | Kind::Cidr => prop_oneof![
            container,
            "[a-z ]{1,12}".prop_map(Value::from),
            Just(Value::from("300.1.1.1:80")),
            Just(Value::from("10.0.0.1:99999")),
            Just(Value::from("169.254.255.0/33")),
        ]
        .boxed(),
    }
}

fn set(root: &mut Value, dotted: &str, value: Value) {
    let mut node = root;
    let mut parts = dotted.split('.').peekable();
    while let Some(part) = parts.next() {
        let mapping = node.as_mapping_mut().expect("a mapping on the way");
        if parts.peek().is_none() {
            mapping.insert(Value::from(part), value);
            return;
        }
        node = mapping.get_mut(part).expect("the key exists");
    }
}

/// One wrong key: a value of the wrong kind, or an unknown key next to it.
fn broken_config(
    base: &'static str,
    keys: &'static [(&'static str, Kind)],
) -> impl Strategy<Value = (String, String)> {
    prop::sample::select(keys)
        .prop_flat_map(|(key, kind)| (Just(key), wrong_value(kind), prop::bool::weighted(0.2)))
        .prop_map(move |(key, value, unknown_instead)| {
            let mut root: Value = serde_yaml::from_str(base).unwrap();
            let named = if unknown_instead {
                let sibling = match key.rsplit_once('.') {
                    Some((parent, _)) => format!("{parent}.colour"),
                    None => "colour".to_string(),
                };
                set(&mut root, &sibling, Value::from("red"));
                "colour".to_string()
            } else {
                set(&mut root, key, value);
                key.rsplit('.').next().unwrap().to_string()
            };
            (serde_yaml::to_string(&root).unwrap(), named)
        })
}

/// What `boshy pilot` checks before it touches the network.
fn pilot_errors(text: &str) -> Option<String> {
    let path = Path::new(PILOT_FILE);
    let result = config::parse::<PilotConfig>(text, path).and_then(|cfg| {
        boshy::vip::check_pool(cfg.virtual_ip_cidr).map_err(|e| {
            anyhow::anyhow!("config file {}: key `virtual_ip_cidr`: {e}", path.display())
        })
    });
    result.err().map(|e| format!("{e:#}"))
}

/// What `boshy virtual-ip-agent --check-config` checks.
fn agent_errors(text: &str) -> Option<String> {
    let path = Path::new(AGENT_FILE);
    let result = config::parse::<AgentConfig>(text, path)
        .and_then(|cfg| boshy::virtual_ip_agent::validate(&cfg, path).map(|_| ()));
    result.err().map(|e| format!("{e:#}"))
}

#[test]
fn the_base_configs_are_valid() {
    assert_eq!(pilot_errors(PILOT), None);
    assert_eq!(agent_errors(AGENT), None);
}

#[test]
fn every_pilot_config_error_names_the_file_and_the_key() {
    let cases = Cell::new(0u32);
    runner(1500)
        .run(&broken_config(PILOT, PILOT_KEYS), |(text, key)| {
            cases.set(cases.get() + 1);
            // Some wrong-looking values are fine for a key (a string `tld` is validated later,
            // by the catalog); only errors are checked.
            if let Some(err) = pilot_errors(&text) {
                prop_assert!(err.contains(PILOT_FILE), "no file in: {err}");
                prop_assert!(err.contains(&key), "no `{key}` in: {err}\n{text}");
            }
            Ok(())
        })
        .unwrap();
    println!("pilot config: {} cases", cases.get());
}

#[test]
fn every_agent_config_error_names_the_file_and_the_key() {
    let cases = Cell::new(0u32);
    let errors = Cell::new(0u32);
    runner(1500)
        .run(&broken_config(AGENT, AGENT_KEYS), |(text, key)| {
            cases.set(cases.get() + 1);
            if let Some(err) = agent_errors(&text) {
                errors.set(errors.get() + 1);
                prop_assert!(err.contains(AGENT_FILE), "no file in: {err}");
                prop_assert!(err.contains(&key), "no `{key}` in: {err}\n{text}");
            }
            Ok(())
        })
        .unwrap();
    println!(
        "agent config: {} cases, {} errors",
        cases.get(),
        errors.get()
    );
    assert!(errors.get() > cases.get() / 2);
}

fn check_config(subcommand: &str, path: &Path) -> String {
    let output = Command::new(BOSHY)
        .args([subcommand, "--check-config", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "{subcommand} accepted {}",
        path.display()
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_binaries_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (subcommand, base, key, bad) in [
        ("pilot", PILOT, "director.poll_interval_seconds", "soon"),
        ("pilot", PILOT, "listen.api", "nowhere"),
        ("pilot", PILOT, "virtual_ip_cidr", "10.0.0.0/8"),
        ("virtual-ip-agent", AGENT, "ttl_seconds", "-3"),
        ("virtual-ip-agent", AGENT, "listen", "0.0.0.0:53"),
        ("virtual-ip-agent", AGENT, "tld", "bad tld"),
    ] {
        let mut root: Value = serde_yaml::from_str(base).unwrap();
        set(&mut root, key, Value::from(bad));
        let path = dir.path().join(format!("{subcommand}.yml"));
        std::fs::write(&path, serde_yaml::to_string(&root).unwrap()).unwrap();
        let stderr = check_config(subcommand, &path);
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            stderr.contains(path.to_str().unwrap()) && stderr.contains(leaf),
            "{subcommand} {key}: {stderr}"
        );
    }
    for subcommand in ["pilot", "virtual-ip-agent"] {
        let missing = dir.path().join("missing.yml");
        assert!(check_config(subcommand, &missing).contains("missing.yml"));
        let garbage = dir.path().join("garbage.yml");
        std::fs::write(&garbage, "director: [unclosed\n  : :\n").unwrap();
        assert!(check_config(subcommand, &garbage).contains("garbage.yml"));
    }
}

#[test]
fn every_bad_dnat_flag_is_named() {
    let cases = Cell::new(0u32);
    let flag = prop_oneof![
        prop_oneof![
            "[0-9./a-z]{0,20}",
            Just("10.0.0.0/8".to_string()),
            Just("169.254.255.7/24".to_string()),
            Just("169.254.0.0/15".to_string()),
        ]
        .prop_map(|v| ("--vip-cidr", v)),
        prop_oneof!["[A-Z_ -]{0,40}", Just("OUTPUT".to_string())].prop_map(|v| ("--chain", v)),
        prop_oneof![
            Just("0x".to_string()),
            Just("70000".to_string()),
            Just("-1".to_string())
        ]
        .prop_map(|v| ("--redirect-port", v)),
    ];
    // Every case spawns the binary: few cases, and an empty PATH so that a value that got
    // through would fail on the missing iptables instead of touching the host.
    let empty_path = tempfile::tempdir().unwrap();
    runner(60)
        .run(&flag, |(name, value)| {
            cases.set(cases.get() + 1);
            let output = Command::new(BOSHY)
                // `--flag=value`, so that a value starting with `-` stays a value.
                .args(["dnat", "status", &format!("{name}={value}")])
                .env("PATH", empty_path.path())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("not found on PATH") {
                return Ok(()); // a valid value: parsing let it through to iptables
            }
            prop_assert!(!output.status.success());
            prop_assert!(stderr.contains(name), "{name} {value:?}: {stderr}");
            Ok(())
        })
        .unwrap();
    println!("dnat flags: {} cases", cases.get());
}
