//! Bad input for the control plane's and the agent's decoders, fuzzed with proptest (stable,
//! inside `cargo test`; cargo-fuzz would need nightly): the manifest and `expose_ports` parser
//! (random YAML trees, YAML token soup, anchors, alias bombs, deep nesting), the director's
//! JSON and NDJSON decoding, and the name-table stream (line splitting at any chunk boundary,
//! bounded lines, table validation). No panic, bounded memory, and errors that say where.
//!
//! Each test prints how many cases it ran (`cargo test --test fuzz_decode -- --nocapture`).

use std::cell::Cell;

use boshy_test_support::fuzz::{self, runner, yaml_scalar};
use proptest::prelude::*;
use serde_yaml::{Mapping, Value};

use boshy::catalog::manifest::{self, is_dns_label, ManifestError};
use boshy::director::decode;
use boshy::names::wire::{self, LineBuffer, Message, MAX_LINE_BYTES};

// ---------------------------------------------------------------- manifests

/// Keys a manifest parser looks at, plus noise.
fn key() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "name", "jobs", "instance_groups", "expose_ports", "number", "protocol", "release",
            "<<", "Name", "NUMBER",
        ])
        .prop_map(|k| Value::String(k.to_string())),
        1 => "[a-zA-Z_ -]{0,12}".prop_map(Value::String),
        1 => any::<i64>().prop_map(|n| Value::Number(n.into())),
        1 => Just(Value::Null),
    ]
}

fn scalar() -> impl Strategy<Value = Value> + Clone {
    yaml_scalar(
        vec![0, 1, 80, 9002, 65535, 65536, -1, i64::MAX],
        vec![
            "http",
            "http-api",
            "grpc",
            "tcp",
            "HTTP2",
            "udp",
            "example-httpbin",
            "banana",
            "Banana",
            "-bad-",
            "((secret))",
            "",
            "a.b",
            "8080",
        ],
        70,
    )
}

/// Random YAML trees biased towards the manifest's shape. Tags go on scalars only: serde_yaml
/// cannot write a tagged value inside another.
fn yaml_tree() -> impl Strategy<Value = Value> {
    let tagged = ("[a-z]{1,6}", scalar()).prop_map(|(tag, value)| {
        Value::Tagged(Box::new(serde_yaml::value::TaggedValue {
            tag: serde_yaml::value::Tag::new(tag),
            value,
        }))
    });
    prop_oneof![4 => scalar(), 1 => tagged].prop_recursive(6, 200, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Sequence),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|entries| Value::Mapping(entries.into_iter().collect::<Mapping>())),
        ]
    })
}

/// A manifest whose instance groups and jobs are random trees, with one known-good job among
/// them at a random position.
fn manifest_with_a_good_job() -> impl Strategy<Value = (String, usize)> {
    (prop::collection::vec(yaml_tree(), 0..5), any::<prop::sample::Index>()).prop_map(
        |(mut groups, at)| {
            let good: Value = serde_yaml::from_str(
                "name: banana\njobs:\n- name: example-httpbin\n  expose_ports:\n  - {name: other-http, number: 9002}\n",
            )
            .unwrap();
            let at = at.index(groups.len() + 1);
            groups.insert(at, good);
            let mut top = Mapping::new();
            top.insert("name".into(), "d".into());
            top.insert("instance_groups".into(), Value::Sequence(groups));
            (serde_yaml::to_string(&Value::Mapping(top)).unwrap(), at)
        },
    )
}

/// YAML-significant characters in any order: anchors, aliases, merges, flow, block, tags.
fn yaml_soup() -> impl Strategy<Value = String> {
    let words = [
        "instance_groups:",
        "jobs:",
        "expose_ports:",
        "name: ",
        "number: ",
        "9002",
    ];
    fuzz::yaml_soup(&words, 60)
}

/// What every successful parse guarantees, whatever the input.
fn check_parsed(parsed: &boshy::catalog::model::ParsedManifest) -> Result<(), TestCaseError> {
    for service in &parsed.services {
        let labels: Vec<&str> = service.dns_name.split('.').collect();
        prop_assert_eq!(
            labels.len(),
            3,
            "{:?} of {:?}",
            service.dns_name,
            service.key
        );
        for label in labels {
            prop_assert!(is_dns_label(label), "{label:?} of {:?}", service.key);
        }
        prop_assert!(!service.ports.is_empty());
        let mut names: Vec<_> = service.ports.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        prop_assert_eq!(names.len(), service.ports.len(), "port names unique");
        prop_assert!(service.ports.windows(2).all(|w| w[0].number < w[1].number));
        prop_assert!(service
            .ports
            .iter()
            .all(|p| p.number > 0 && is_dns_label(&p.name)));
    }
    for warning in &parsed.warnings {
        prop_assert!(warning.starts_with("deployment \"d\""), "{warning}");
        prop_assert!(warning.len() < 1200, "{} bytes: {warning}", warning.len());
    }
    Ok(())
}

#[test]
fn random_yaml_trees_never_panic_and_keep_the_good_job() {
    let cases = Cell::new(0u32);
    runner(3000)
        .run(&manifest_with_a_good_job(), |(yaml, _)| {
            cases.set(cases.get() + 1);
            let parsed = manifest::parse("d", &yaml)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
            check_parsed(&parsed)?;
            // The good job is kept unless a random group before it is also named banana.
            let banana = parsed
                .services
                .iter()
                .find(|s| s.key.instance_group == "banana" && s.key.job == "example-httpbin");
            if let Some(banana) = banana {
                prop_assert_eq!(banana.ports[0].number, 9002);
            } else {
                prop_assert!(
                    parsed.warnings.iter().any(|w| w.contains("banana")),
                    "the good job vanished without a word: {:?}\n{}",
                    parsed.warnings,
                    yaml
                );
            }
            Ok(())
        })
        .unwrap();
    println!("manifest trees: {} cases", cases.get());
}

#[test]
fn yaml_token_soup_never_panics_and_errors_name_the_deployment() {
    let cases = Cell::new(0u32);
    runner(5000)
        .run(&yaml_soup(), |yaml| {
            cases.set(cases.get() + 1);
            match manifest::parse("d", &yaml) {
                Ok(parsed) => check_parsed(&parsed)?,
                Err(err) => prop_assert!(err.to_string().starts_with("deployment \"d\""), "{err}"),
            }
            Ok(())
        })
        .unwrap();
    println!("manifest token soup: {} cases", cases.get());
}

/// The high-water mark of this process's resident memory, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn alias_bombs_are_refused_within_bounded_memory() {
    let before = peak_rss_kib();
    // One anchor of 3000 scalars aliased 3000 times: 9 million nodes once expanded, well
    // within serde_yaml's own replay limit (100x the 6000 events).
    let anchor = vec!["1"; 3000].join(", ");
    let aliases = vec!["*big"; 3000].join(", ");
    let wide = format!("big: &big [{anchor}]\ninstance_groups: [{aliases}]\n");
    let err = manifest::parse("wide", &wide).unwrap_err();
    assert!(matches!(err, ManifestError::TooManyNodes { .. }), "{err}");

    // The classic: ten levels of ten aliases of the level below.
    let mut laughs = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..10 {
        let below = format!("*l{}", level - 1);
        laughs.push_str(&format!(
            "l{level}: &l{level} [{}]\n",
            vec![below; 10].join(", ")
        ));
    }
    laughs.push_str("instance_groups:\n- name: g\n  jobs: *l9\n");
    let err = manifest::parse("laughs", &laughs).unwrap_err();
    assert!(err.to_string().contains("\"laughs\""), "{err}");

    // Merge keys of a large anchor, many times.
    let fields: Vec<String> = (0..500).map(|i| format!("k{i}: {i}")).collect();
    let mut merges = format!("base: &base {{{}}}\ninstance_groups:\n", fields.join(", "));
    for i in 0..3000 {
        merges.push_str(&format!("- {{<<: *base, name: g{i}}}\n"));
    }
    let err = manifest::parse("merges", &merges).unwrap_err();
    assert!(matches!(err, ManifestError::TooManyNodes { .. }), "{err}");

    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert!(
        grown_mib < 256,
        "parsing alias bombs grew the peak memory by {grown_mib} MiB"
    );
}

#[test]
fn huge_names_give_short_warnings() {
    let huge = "X".repeat(1_000_000);
    let yaml = format!(
        "instance_groups:\n- name: {huge}\n  jobs:\n  - name: {huge}\n    expose_ports:\n    \
         - {{name: {huge}, number: 1, protocol: {huge}}}\n    - {{name: ok, number: {huge}}}\n"
    );
    let parsed = manifest::parse("d", &yaml).unwrap();
    assert!(parsed.services.is_empty());
    assert_eq!(
        parsed.warnings.len(),
        2,
        "{:?}",
        parsed.warnings.iter().map(|w| w.len()).collect::<Vec<_>>()
    );
    for warning in &parsed.warnings {
        assert!(warning.len() < 1200, "{} bytes", warning.len());
        assert!(warning.contains("more bytes"), "the cut is marked");
    }

    let table = format!(
        r#"{{"table":{{"version":1,"tld":"boshy","names":{{"{huge}.boshy":"169.254.255.1"}}}}}}"#
    );
    let err = wire::parse_line(table.as_bytes()).unwrap_err().to_string();
    assert!(
        err.contains("invalid table") && err.len() < 600,
        "{} bytes",
        err.len()
    );
    let heartbeat = format!(r#"{{"heartbeat":"{huge}"}}"#);
    let err = wire::parse_line(heartbeat.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad line") && err.len() < 600,
        "{} bytes",
        err.len()
    );
}

#[test]
fn deep_nesting_is_a_clear_error() {
    for deep in [
        format!("instance_groups: {}", "[".repeat(100_000)),
        format!("instance_groups:\n{}", "- ".repeat(5_000)),
        format!(
            "instance_groups: {}{}",
            "{a: ".repeat(10_000),
            "}".repeat(10_000)
        ),
    ] {
        let err = manifest::parse("deep", &deep).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"deep\""), "{msg}");
    }
}

// ---------------------------------------------------------------- director responses

/// JSON values shaped like instance rows: known keys with values of every type.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| n.into()),
        any::<f64>().prop_map(
            |f| serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
        ),
        "\\PC{0,30}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "id",
                    "job_name",
                    "job",
                    "index",
                    "az",
                    "ips",
                    "job_state",
                    "vm_cid",
                    "cid",
                    "other",
                ])
                .prop_map(String::from),
                inner,
                0..9
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn ndjson() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        4 => json_value().prop_map(|v| v.to_string()),
        1 => "\\PC{0,80}",
        1 => Just(r#"{"id":"a","job_name":"g","index":1,"ips":["10.0.0.1"],"job_state":"running"}"#.to_string()),
    ];
    prop::collection::vec(line, 0..8).prop_map(|lines| lines.join("\n"))
}

#[test]
fn director_ndjson_decoding_never_panics_and_errors_name_the_line() {
    let cases = Cell::new(0u32);
    runner(5000)
        .run(&ndjson(), |text| {
            cases.set(cases.get() + 1);
            match decode::decode_instances(&text) {
                Ok(instances) => {
                    let keys: Vec<_> = instances
                        .iter()
                        .map(|i| (&i.instance_group, i.index, &i.id))
                        .collect();
                    prop_assert!(keys.windows(2).all(|w| w[0] <= w[1]), "sorted");
                }
                Err(err) => {
                    prop_assert!(err.starts_with("task result line "), "{err}");
                    // The error quotes at most a bounded piece of what the director sent.
                    prop_assert!(err.len() < 400, "{} bytes: {err}", err.len());
                }
            }
            for line in text.lines() {
                let _ = serde_json::from_str::<Vec<decode::Event>>(line);
                let _ = serde_json::from_str::<decode::Info>(line);
                let _ = serde_json::from_str::<decode::Task>(line);
                let _ = serde_json::from_str::<decode::DeploymentManifest>(line);
                let _ = serde_json::from_str::<Vec<decode::DeploymentName>>(line);
                if let Ok(path) = decode::location_path(line) {
                    if let Ok(id) = decode::task_id(&path) {
                        let prefix = format!("/tasks/{id}");
                        prop_assert!(path.starts_with(&prefix), "{path}");
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    println!("director NDJSON: {} cases", cases.get());
}

#[test]
fn a_huge_director_value_gives_a_short_error() {
    let row = format!(
        r#"{{"id":"a","job_name":"g","index":"{}"}}"#,
        "9".repeat(1_000_000)
    );
    let err = decode::decode_instances(&row).unwrap_err();
    assert!(err.starts_with("task result line 1"), "{err}");
    assert!(err.len() < 400, "{} bytes", err.len());
    let deep = format!(
        r#"{{"id":"a","job_name":"g","ips":{}}}"#,
        "[".repeat(100_000)
    );
    let err = decode::decode_instances(&deep).unwrap_err();
    assert!(err.contains("recursion limit"), "{err}");
}

// ---------------------------------------------------------------- name-table stream

fn table_line() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        "[a-z0-9-]{1,10}\\.[a-z0-9-]{1,10}\\.[a-z0-9-]{1,10}\\.boshy",
        "\\PC{0,40}",
        Just("evil.com".to_string()),
    ];
    let vip = prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| format!("169.254.{a}.{b}")),
        Just("169.254.169.254".to_string()),
        Just("10.0.0.1".to_string()),
        "\\PC{0,16}",
    ];
    let table = (
        any::<u64>(),
        prop::sample::select(vec!["boshy", "BOSHY", "bad tld", ""]),
        prop::collection::btree_map(name, vip, 0..6),
    )
        .prop_map(|(version, tld, names)| {
            serde_json::json!({"table": {"version": version, "tld": tld, "names": names}})
                .to_string()
                .into_bytes()
        });
    prop_oneof![
        3 => table,
        1 => any::<u64>().prop_map(|v| Message::Heartbeat(v).to_line()),
        1 => prop::collection::vec(any::<u8>(), 0..100),
    ]
}

/// A stream of lines and the chunk sizes it arrives in.
fn stream() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<usize>)> {
    (
        prop::collection::vec(table_line(), 0..8),
        prop::collection::vec(1usize..300, 1..20),
    )
        .prop_map(|(lines, chunks)| {
            let lines = lines
                .into_iter()
                .map(|mut l| {
                    l.retain(|b| *b != b'\n');
                    l
                })
                .collect();
            (lines, chunks)
        })
}

#[test]
fn name_table_stream_decoding_is_chunking_independent_and_only_passes_valid_tables() {
    let cases = Cell::new(0u32);
    runner(3000)
        .run(&stream(), |(lines, chunk_sizes)| {
            cases.set(cases.get() + 1);
            let bytes: Vec<u8> = lines
                .iter()
                .flat_map(|l| l.iter().copied().chain([b'\n']))
                .collect();
            let mut buffer = LineBuffer::default();
            let mut decoded = Vec::new();
            let mut rest = &bytes[..];
            for size in chunk_sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                decoded.extend(buffer.push(chunk).unwrap());
                rest = tail;
            }
            prop_assert_eq!(&decoded, &lines, "lines survive any chunking");
            for line in &decoded {
                match wire::parse_line(line) {
                    Ok(wire::Line::Table(table)) => prop_assert_eq!(wire::validate(&table), Ok(())),
                    Ok(wire::Line::Probes(_) | wire::Line::Nothing) => {}
                    Err(err) => prop_assert!(err.to_string().len() < 600, "{err}"),
                }
            }
            Ok(())
        })
        .unwrap();
    println!("name-table stream: {} cases", cases.get());
}

#[test]
fn an_endless_line_is_refused_once_it_passes_the_limit() {
    let mut buffer = LineBuffer::default();
    let chunk = vec![b'{'; 1 << 20];
    let mut pushed = 0;
    let err = loop {
        match buffer.push(&chunk) {
            Ok(lines) => assert!(lines.is_empty()),
            Err(err) => break err,
        }
        pushed += chunk.len();
        assert!(pushed <= MAX_LINE_BYTES, "the buffer kept growing");
    };
    assert!(err.to_string().contains("longer than"), "{err}");
}
