//! The rule files of the lab's bookinfo walkthrough (`fixtures/rules/bookinfo/`,
//! docs/bookinfo.md), checked by `boshy rules check` as the pilot would check them in the lab:
//! against the registration of the lab's bookinfo deployment (`fixtures/director/bookinfo.yml`),
//! as `GET /v1/registration` serves it from a catalog of that manifest, and under the config
//! names the walkthrough applies them with: `bookinfo-reviews` (the ServiceEntry; the lab
//! applies it when it comes up), `bookinfo-subsets` (the DestinationRules) and, for each step,
//! `bookinfo-routes`. Every step is accepted whole, with neither error nor warning.
//!
//! The steps are alternatives (each replaces the previous one's config), so they are checked
//! one at a time: side by side, as configs of their own, their VirtualServices would claim the
//! same hosts.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use boshy::catalog::model::{DeploymentInput, Instance};
use boshy::catalog::{self, manifest};

const BOSHY: &str = env!("CARGO_BIN_EXE_boshy");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The configs every step stands on, as the walkthrough names them.
const BASE: [(&str, &str); 2] = [
    ("bookinfo-reviews", "reviews-service.yml"),
    ("bookinfo-subsets", "destination-rules.yml"),
];

/// The steps, in the walkthrough's order, each applied as config `bookinfo-routes`.
const STEPS: [&str; 7] = [
    "all-v1.yml",
    "reviews-jason-v2.yml",
    "reviews-v2-v3-50-50.yml",
    "ratings-delay-jason.yml",
    "ratings-abort-jason.yml",
    "ratings-abort-from-reviews-v3.yml",
    "details-retries.yml",
];

/// Every instance of every instance group of the bookinfo manifest, running, with an address
/// of its own and the manifest's AZs in turn, as the director would report them.
fn instances(manifest: &serde_yaml::Value) -> Vec<Instance> {
    let mut instances = Vec::new();
    for group in manifest["instance_groups"].as_sequence().unwrap() {
        let name = group["name"].as_str().unwrap();
        let azs = group["azs"].as_sequence().unwrap();
        for index in 0..group["instances"].as_u64().unwrap() {
            let host = 10 + instances.len() as u8;
            instances.push(Instance {
                id: format!("{name}-{index}"),
                instance_group: name.to_string(),
                index: Some(index as u32),
                az: azs[index as usize % azs.len()].as_str().map(str::to_string),
                ips: vec![Ipv4Addr::new(10, 244, 0, host).to_string()],
                job_state: Some("running".into()),
                vm_cid: Some(format!("vm-{name}-{index}")),
                bootstrap: Some(index == 0),
            });
        }
    }
    instances
}

/// `GET /v1/registration` of a pilot whose catalog is the bookinfo deployment alone.
async fn bookinfo_registration() -> String {
    let text = std::fs::read_to_string(root().join("fixtures/director/bookinfo.yml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let parsed = manifest::parse("bookinfo", &text).unwrap();
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let inputs = [DeploymentInput {
        name: "bookinfo".into(),
        manifest: Arc::new(parsed),
        instances: Arc::new(instances(&doc)),
    }];
    let vips: BTreeMap<String, Ipv4Addr> = catalog::hostnames(&inputs, "boshy")
        .services
        .into_iter()
        .zip(1..)
        .map(|((_, hostname), n)| (hostname, Ipv4Addr::new(169, 254, 255, n)))
        .collect();
    let catalog = catalog::build(&inputs, "boshy", &vips).catalog;
    let (_keep_catalog, catalogs) = tokio::sync::watch::channel(Arc::new(catalog));
    let (_keep_rules, rule_configs) = tokio::sync::watch::channel(None);
    let (_keep_status, rule_status) = tokio::sync::watch::channel(None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let server = tokio::spawn(boshy::api::serve(
        listener,
        catalogs,
        rule_configs,
        rule_status,
        boshy::api::Proxies::none(),
    ));
    let registration = reqwest::get(format!("http://{api}/v1/registration"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.abort();
    registration
}

fn file(name: &str) -> String {
    root()
        .join("fixtures/rules/bookinfo")
        .join(name)
        .display()
        .to_string()
}

#[tokio::test]
async fn every_bookinfo_step_is_accepted_against_the_lab_deployment() {
    let registration = bookinfo_registration().await;
    let hostnames: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&registration)
        .unwrap()
        .iter()
        .map(|s| s["hostname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        hostnames,
        [
            "bookinfo.details.bookinfo.boshy",
            "bookinfo.productpage.bookinfo.boshy",
            "bookinfo.ratings.bookinfo.boshy",
            "bookinfo.reviews-v1.bookinfo.boshy",
            "bookinfo.reviews-v2.bookinfo.boshy",
            "bookinfo.reviews-v3.bookinfo.boshy",
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("registration.json");
    std::fs::write(&saved, &registration).unwrap();

    let mut on_disk: Vec<String> = std::fs::read_dir(root().join("fixtures/rules/bookinfo"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut covered: Vec<String> = BASE
        .iter()
        .map(|(_, f)| f.to_string())
        .chain(STEPS.map(String::from))
        .collect();
    covered.sort();
    assert_eq!(on_disk, covered, "every file is a base config or a step");

    for step in STEPS {
        let configs: Vec<(&str, String)> = BASE
            .iter()
            .map(|&(name, f)| (name, file(f)))
            .chain([("bookinfo-routes", file(step))])
            .collect();
        let output = Command::new(BOSHY)
            .args(["rules", "check", "--registration"])
            .arg(&saved)
            .args(configs.iter().map(|(name, path)| format!("{name}={path}")))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{step}:\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let expected: Vec<String> = configs
            .iter()
            .zip([1, 4, 4])
            .map(|((name, path), accepted)| {
                format!("[{name}] {path}: {accepted} accepted, 0 rejected")
            })
            .collect();
        assert_eq!(
            stdout.lines().collect::<Vec<_>>(),
            expected,
            "{step}: no error, warning or skipped check"
        );
    }
}

/// The commands the walkthrough gives are the ones each file says it is applied with.
#[test]
fn every_file_names_the_command_that_applies_it() {
    for (name, file_name) in BASE
        .into_iter()
        .chain(STEPS.map(|step| ("bookinfo-routes", step)))
    {
        let command =
            format!("scripts/lab rules apply --name {name} fixtures/rules/bookinfo/{file_name}");
        let text = std::fs::read_to_string(Path::new(&file(file_name))).unwrap();
        assert!(
            text.contains(&command),
            "{file_name} does not say `{command}`"
        );
        let doc = std::fs::read_to_string(root().join("docs/bookinfo.md")).unwrap();
        assert!(
            doc.contains(&command),
            "docs/bookinfo.md does not say `{command}`"
        );
    }
}
