//! The director simulator over real HTTPS: TLS, UAA tokens, the director API shapes and the
//! control API, through the in-process `start` API.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use boshy_director_sim::{self as sim, AuthMode, SimHandle, SimOptions};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const SECRET: &str = "pilot-secret";

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/director")
}

fn options() -> SimOptions {
    SimOptions {
        fixtures: Some(fixtures_dir()),
        task_delay: Duration::from_millis(40),
        ..SimOptions::new(SECRET)
    }
}

/// A client that trusts only the simulator's CA and never follows redirects.
fn client_for(handle: &SimHandle) -> Client {
    Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(handle.ca_pem().as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

struct Lab {
    sim: SimHandle,
    http: Client,
}

impl Lab {
    async fn start(options: SimOptions) -> Lab {
        let sim = sim::start(options).await.expect("the simulator starts");
        let http = client_for(&sim);
        Lab { sim, http }
    }

    async fn token(&self) -> String {
        let response = self
            .http
            .post(format!("{}/oauth/token", self.sim.uaa_url()))
            .basic_auth("pilot", Some(SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }

    async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.sim.director_url()))
            .header("Authorization", format!("bearer {token}"))
            .send()
            .await
            .unwrap()
    }

    /// GET that must answer 200 with JSON (whatever the content type says).
    async fn get_json(&self, path: &str, token: &str) -> Value {
        let response = self.get(path, token).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    }

    /// The whole `format=full` flow: 302, poll the task until done, read the NDJSON result.
    async fn full_rows(&self, path: &str, token: &str) -> Vec<Value> {
        let response = self.get(path, token).await;
        assert_eq!(response.status(), StatusCode::FOUND, "GET {path}");
        let location = response.headers()["location"].to_str().unwrap().to_string();
        let task_path = format!("/tasks/{}", location.rsplit('/').next().unwrap());
        assert_eq!(location, format!("{}{task_path}", self.sim.director_url()));
        loop {
            let task = self.get_json(&task_path, token).await;
            if task["state"] == "done" {
                assert!(task["timestamp"].is_i64());
                break;
            }
            assert!(task["timestamp"].is_null(), "{task}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let output = self
            .get(&format!("{task_path}/output?type=result"), token)
            .await;
        assert_eq!(output.status(), StatusCode::OK);
        let text = output.text().await.unwrap();
        assert!(text.is_empty() || text.ends_with('\n'));
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.sim.control_url()));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{method} {path}: {}",
            response.status()
        );
        let text = response.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn set_fault(&self, fault: Value) {
        self.control(reqwest::Method::PUT, "/_sim/fault", Some(fault))
            .await;
    }
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn tls_client(
    versions: &[&'static rustls::SupportedProtocolVersion],
    ca_pem: &str,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

#[tokio::test]
async fn tls_is_1_2_only_and_the_ip_verifies_against_the_written_ca() {
    let state_dir = tempfile::tempdir().unwrap();
    let lab = Lab::start(SimOptions {
        state_dir: Some(state_dir.path().to_path_buf()),
        ..options()
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(state_dir.path().join("ca.pem")).unwrap(),
        lab.sim.ca_pem()
    );
    let addr = lab
        .sim
        .director_url()
        .trim_start_matches("https://")
        .to_string();
    let ip: std::net::IpAddr = addr.rsplit_once(':').unwrap().0.parse().unwrap();
    type Versions = &'static [&'static rustls::SupportedProtocolVersion];
    const TLS12_ONLY: Versions = &[&rustls::version::TLS12];
    const TLS13_ONLY: Versions = &[&rustls::version::TLS13];
    let handshake = |versions: Versions, name: rustls::pki_types::ServerName<'static>| {
        let connector = tokio_rustls::TlsConnector::from(tls_client(versions, lab.sim.ca_pem()));
        let addr = addr.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            connector.connect(name, tcp).await
        }
    };
    let by_ip = rustls::pki_types::ServerName::IpAddress(ip.into());
    let tls = handshake(TLS12_ONLY, by_ip.clone())
        .await
        .expect("TLS 1.2 by IP");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert!(
        handshake(TLS13_ONLY, by_ip).await.is_err(),
        "a TLS 1.3-only client must not connect"
    );
    let by_name = rustls::pki_types::ServerName::try_from("director.example").unwrap();
    assert!(
        handshake(TLS12_ONLY, by_name).await.is_err(),
        "the certificate names the IP, not a DNS name"
    );

    // And a default client (TLS 1.2 + 1.3) talks to it through the CA.
    let info = lab
        .http
        .get(format!("{}/info", lab.sim.director_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), StatusCode::OK);
}

#[tokio::test]
async fn uaa_issues_jwts_and_answers_errors_like_uaa() {
    let lab = Lab::start(options()).await;
    let info: Value = lab
        .http
        .get(format!("{}/info", lab.sim.director_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["user_authentication"]["type"], "uaa");
    assert_eq!(
        info["user_authentication"]["options"]["url"],
        lab.sim.uaa_url()
    );
    assert!(info["user"].is_null());

    let url = format!("{}/oauth/token", lab.sim.uaa_url());
    let response = lab
        .http
        .post(&url)
        .basic_auth("pilot", Some(SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 43_199);
    assert_eq!(body["scope"], "bosh.admin");
    assert!(body.get("refresh_token").is_none());
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);
    let claims = claims(token);
    for key in [
        "jti",
        "client_id",
        "cid",
        "scope",
        "exp",
        "iat",
        "iss",
        "zid",
        "aud",
        "grant_type",
    ] {
        assert!(claims.get(key).is_some(), "claim {key} in {claims}");
    }
    assert_eq!(claims["scope"], json!(["bosh.admin"]));
    assert_eq!(claims["grant_type"], "client_credentials");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        43_200
    );
    assert_eq!(claims["jti"], body["jti"]);

    let with_token = lab
        .http
        .get(format!("{}/info", lab.sim.director_url()))
        .header("Authorization", format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.json::<Value>().await.unwrap()["user"], "pilot");

    let form_credentials = lab
        .http
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "pilot"),
            ("client_secret", SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(form_credentials.status(), StatusCode::OK);

    let cases = [
        (
            Some("wrong"),
            Some("client_credentials"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            Some(SECRET),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some(SECRET),
            Some("password"),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
    ];
    for (secret, grant, status, error) in cases {
        let form: Vec<(&str, &str)> = grant.map(|g| ("grant_type", g)).into_iter().collect();
        let response = lab
            .http
            .post(&url)
            .basic_auth("pilot", secret)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{error}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], error);
    }
}

#[tokio::test]
async fn unauthenticated_and_unauthorized_calls_get_the_directors_401s_and_404s() {
    let lab = Lab::start(options()).await;
    let director = lab.sim.director_url();
    let token = lab.token().await;
    let bad_headers = [
        None,
        Some(format!("bearer {token} extra")),
        Some(token.clone()),
        Some(format!("bearer {token}x")),
        Some(format!(
            "Basic {}",
            STANDARD.encode(format!("pilot:{SECRET}"))
        )),
    ];
    for header in bad_headers {
        let mut request = lab.http.get(format!("{director}/deployments"));
        if let Some(header) = &header {
            request = request.header("Authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{header:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"BOSH Director\""
        );
        assert_eq!(
            response.text().await.unwrap(),
            "Not authorized: '/deployments'\n"
        );
    }
    let upper = lab
        .http
        .get(format!("{director}/deployments"))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(upper.status(), StatusCode::OK);

    let unknown = lab.get("/deployments/sample-deployment/nope", &token).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        unknown.text().await.unwrap(),
        "Endpoint '/deployments/sample-deployment/nope' not found."
    );
    let unknown_unauthenticated = lab
        .http
        .get(format!("{director}/tasks/1/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_unauthenticated.status(), StatusCode::UNAUTHORIZED);
    let unmounted = lab
        .http
        .get(format!("{director}/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(unmounted.status(), StatusCode::NOT_FOUND);
    assert_eq!(unmounted.text().await.unwrap(), "Not Found: /nope");

    let reader = Lab::start(SimOptions {
        token_scopes: vec!["openid".to_string()],
        ..options()
    })
    .await;
    let token = reader.token().await;
    let response = reader.get("/deployments", &token).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], 600000);
    assert!(body["description"]
        .as_str()
        .unwrap()
        .starts_with("Require one of the scopes: bosh.admin, bosh."));
}

#[tokio::test]
async fn deployments_and_manifests_read_like_the_director() {
    let lab = Lab::start(options()).await;
    let token = lab.token().await;
    let response = lab.get("/deployments", &token).await;
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let list: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bookinfo", "bosh-istio", "sample-deployment"]);
    assert_eq!(
        list[2]["releases"],
        json!([{"name": "boshy-istio", "version": "0+dev.1"}])
    );
    assert_eq!(list[2]["locked"], false);
    assert_eq!(list[2]["teams"], json!([]));
    let cheap = lab
        .get_json(
            "/deployments?exclude_configs=true&exclude_releases=true&exclude_stemcells=true&exclude_lock=true",
            &token,
        )
        .await;
    assert_eq!(cheap[1], json!({"name": "bosh-istio", "teams": []}));

    let manifest = lab.get_json("/deployments/sample-deployment", &token).await;
    assert_eq!(manifest.as_object().unwrap().len(), 1);
    assert_eq!(
        manifest["manifest"],
        std::fs::read_to_string(fixtures_dir().join("sample-deployment.yml")).unwrap()
    );
    let missing = lab.get("/deployments/nope", &token).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_str(&missing.text().await.unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"code": 70000, "description": "Deployment 'nope' doesn't exist"})
    );
    let missing_full = lab
        .get("/deployments/nope/instances?format=full", &token)
        .await;
    assert_eq!(missing_full.status(), StatusCode::NOT_FOUND);

    let instances = lab
        .get_json("/deployments/sample-deployment/instances", &token)
        .await;
    let instances = instances.as_array().unwrap();
    assert_eq!(instances.len(), 8);
    assert_eq!(instances[0]["job"], "apricot");
    assert_eq!(instances[0]["expects_vm"], true);
    assert!(instances[0]["cid"].is_string() && instances[0].get("job_state").is_none());
    // Fixtures deploy in name order and take the lowest free address: bookinfo's seven
    // instances come first (.10 to .16).
    let vms = lab.get_json("/deployments/bosh-istio/vms", &token).await;
    assert_eq!(vms[0]["ips"], json!(["10.244.0.17"]));
    assert_eq!(vms[0]["active"], true);
}

#[tokio::test]
async fn format_full_is_a_task_whose_result_has_every_instance_in_random_order() {
    let lab = Lab::start(options()).await;
    let token = lab.token().await;
    let rows = lab
        .full_rows(
            "/deployments/sample-deployment/instances?format=full",
            &token,
        )
        .await;
    assert_eq!(rows.len(), 8);
    let keys = [
        "vm_cid",
        "active",
        "vm_created_at",
        "cloud_properties",
        "disk_cid",
        "disk_cids",
        "ips",
        "agent_id",
        "job_name",
        "index",
        "job_state",
        "state",
        "vm_type",
        "vitals",
        "processes",
        "az",
        "id",
        "bootstrap",
        "ignore",
        "stemcell",
    ];
    for row in &rows {
        for key in keys {
            assert!(row.get(key).is_some(), "{key} missing from {row}");
        }
        assert_eq!(row["job_state"], "running");
        assert_eq!(row["processes"][0]["name"], "example-httpbin");
    }
    let mut by_group: BTreeMap<(String, u64), (String, String)> = BTreeMap::new();
    for row in &rows {
        by_group.insert(
            (
                row["job_name"].as_str().unwrap().into(),
                row["index"].as_u64().unwrap(),
            ),
            (
                row["ips"][0].as_str().unwrap().into(),
                row["az"].as_str().unwrap().into(),
            ),
        );
    }
    let expected: Vec<((String, u64), (String, String))> = (0..5)
        .map(|i| {
            (
                ("apricot".to_string(), i),
                (format!("10.244.0.{}", 18 + i), format!("z{}", i % 3 + 1)),
            )
        })
        .chain((0..3).map(|i| {
            (
                ("banana".to_string(), i),
                (format!("10.244.0.{}", 23 + i), format!("z{}", i % 3 + 1)),
            )
        }))
        .collect();
    assert_eq!(by_group.into_iter().collect::<Vec<_>>(), expected);

    let mut orders = HashSet::new();
    for _ in 0..10 {
        let rows = lab
            .full_rows(
                "/deployments/sample-deployment/instances?format=full",
                &token,
            )
            .await;
        orders.insert(
            rows.iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>(),
        );
    }
    assert!(orders.len() > 1, "10 tasks gave the same line order");

    let vms_rows = lab
        .full_rows("/deployments/bosh-istio/vms?format=full", &token)
        .await;
    assert_eq!(vms_rows.len(), 1);
    let default_tasks = lab.get_json("/tasks", &token).await;
    assert!(default_tasks
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["description"] != "retrieve vm-stats"));
    let verbose = lab
        .get_json("/tasks?verbose=2&limit=3&deployment=bosh-istio", &token)
        .await;
    assert_eq!(verbose[0]["description"], "retrieve vm-stats");
    assert!(verbose[0]["id"].is_u64());
}

#[tokio::test]
async fn a_queued_task_has_no_timestamp_and_an_empty_result() {
    let lab = Lab::start(SimOptions {
        task_delay: Duration::from_secs(3600),
        ..options()
    })
    .await;
    let token = lab.token().await;
    let response = lab
        .get(
            "/deployments/sample-deployment/instances?format=full",
            &token,
        )
        .await;
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let task_path = format!("/tasks/{}", location.rsplit('/').next().unwrap());
    let task = lab.get_json(&task_path, &token).await;
    assert_eq!(task["state"], "queued");
    assert!(task["timestamp"].is_null() && task["started_at"].is_null());
    assert_eq!(task["deployment"], "sample-deployment");
    let output = lab
        .get(&format!("{task_path}/output?type=result"), &token)
        .await;
    assert_eq!(output.status(), StatusCode::OK);
    assert_eq!(output.text().await.unwrap(), "");
    let with_context = |context: String| {
        lab.http
            .get(format!(
                "{}/deployments/bosh-istio/vms?format=full",
                lab.sim.director_url()
            ))
            .header("Authorization", format!("bearer {token}"))
            .header("X-Bosh-Context-Id", context)
            .send()
    };
    let response = with_context("poll-7".to_string()).await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let task_id = response.headers()["location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let task = lab.get_json(&format!("/tasks/{task_id}"), &token).await;
    assert_eq!(task["context_id"], "poll-7");
    let too_long = with_context("x".repeat(65)).await.unwrap();
    assert_eq!(too_long.status(), StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_str(&too_long.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], 70010);

    let missing = lab.get("/tasks/999999", &token).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        serde_json::from_str::<Value>(&missing.text().await.unwrap()).unwrap(),
        json!({"code": 10000, "description": "Task 999999 not found"})
    );
}

#[tokio::test]
async fn control_api_changes_instances_and_the_director_shows_it() {
    let lab = Lab::start(options()).await;
    let token = lab.token().await;
    use reqwest::Method;
    let added = lab
        .control(
            Method::POST,
            "/_sim/deployments/sample-deployment/instances",
            Some(json!({"instance_group": "banana", "az": "z2"})),
        )
        .await;
    assert_eq!(added["ips"], json!(["10.244.0.26"]));
    assert_eq!(added["az"], "z2");
    assert_eq!(added["index"], 3);
    let id = added["id"].as_str().unwrap().to_string();
    let rows = lab
        .full_rows(
            "/deployments/sample-deployment/instances?format=full",
            &token,
        )
        .await;
    assert_eq!(rows.len(), 9);

    let path = format!("/_sim/deployments/sample-deployment/instances/{id}");
    let failing = lab
        .control(Method::PUT, &path, Some(json!({"job_state": "failing"})))
        .await;
    assert_eq!(failing["job_state"], "failing");
    let rows = lab
        .full_rows(
            "/deployments/sample-deployment/instances?format=full",
            &token,
        )
        .await;
    let row = rows.iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert_eq!(row["job_state"], "failing");
    assert_eq!(row["processes"][0]["state"], "failing");

    let no_vm = lab
        .control(Method::PUT, &path, Some(json!({"has_vm": false})))
        .await;
    assert!(no_vm["vm_cid"].is_null() && no_vm["job_state"].is_null() && no_vm["active"].is_null());
    assert_eq!(no_vm["ips"], json!([]));
    let back = lab
        .control(Method::PUT, &path, Some(json!({"has_vm": true})))
        .await;
    assert_eq!(back["ips"], json!(["10.244.0.26"]));

    lab.control(Method::DELETE, &path, None).await;
    let state = lab.control(Method::GET, "/_sim/state", None).await;
    let sample = state["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "sample-deployment")
        .unwrap();
    assert_eq!(sample["instances"].as_array().unwrap().len(), 8);
    assert!(sample["manifest"].is_string());

    let events = lab
        .get_json("/events?deployment=sample-deployment", &token)
        .await;
    let newest: Vec<(String, String)> = events
        .as_array()
        .unwrap()
        .iter()
        .take(4)
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["object_type"].as_str().unwrap().into(),
            )
        })
        .collect();
    let pair = |a: &str, o: &str| (a.to_string(), o.to_string());
    assert_eq!(
        newest,
        [
            pair("update", "deployment"),
            pair("delete", "instance"),
            pair("delete", "vm"),
            pair("update", "deployment")
        ]
    );
    assert!(events[0]["id"].is_string() && events[0]["parent_id"].is_string());

    let bad = lab
        .http
        .put(format!("{}{path}", lab.sim.control_url()))
        .json(&json!({"job_state": "running"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::NOT_FOUND, "the instance is gone");
}

#[tokio::test]
async fn broken_and_missing_manifests_are_served_as_the_director_would() {
    let lab = Lab::start(options()).await;
    let token = lab.token().await;
    let broken = "name: sample-deployment\ninstance_groups: [ {{ not yaml";
    let response = lab
        .http
        .put(format!(
            "{}/_sim/deployments/sample-deployment/manifest",
            lab.sim.control_url()
        ))
        .body(broken)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let manifest = lab.get_json("/deployments/sample-deployment", &token).await;
    assert_eq!(manifest["manifest"], broken);
    let instances = lab
        .get_json("/deployments/sample-deployment/instances", &token)
        .await;
    assert_eq!(instances.as_array().unwrap().len(), 8);

    let scaled = std::fs::read_to_string(fixtures_dir().join("sample-deployment.yml"))
        .unwrap()
        .replace("instances: 3", "instances: 1");
    lab.http
        .put(format!(
            "{}/_sim/deployments/sample-deployment/manifest",
            lab.sim.control_url()
        ))
        .body(scaled)
        .send()
        .await
        .unwrap();
    let instances = lab
        .get_json("/deployments/sample-deployment/instances", &token)
        .await;
    assert_eq!(instances.as_array().unwrap().len(), 6);

    lab.control(
        reqwest::Method::POST,
        "/_sim/deployments",
        Some(json!({"name": "half-deployed", "manifest": null})),
    )
    .await;
    let manifest = lab.get_json("/deployments/half-deployed", &token).await;
    assert_eq!(manifest, json!({"manifest": null}));
    let rows = lab
        .full_rows("/deployments/half-deployed/instances?format=full", &token)
        .await;
    assert!(rows.is_empty());

    lab.control(
        reqwest::Method::DELETE,
        "/_sim/deployments/half-deployed",
        None,
    )
    .await;
    assert_eq!(
        lab.get("/deployments/half-deployed", &token).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn faults_break_the_director_and_clear() {
    let lab = Lab::start(options()).await;
    let token = lab.token().await;

    lab.set_fault(json!({"mode": "http_500"})).await;
    let response = lab.get("/deployments", &token).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.text().await.unwrap(), "");

    lab.set_fault(json!({"mode": "bad_gateway"})).await;
    let response = lab.get("/deployments", &token).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("<center>nginx</center>"));

    lab.set_fault(json!({"mode": "reject_tokens"})).await;
    let fresh = lab.token().await;
    let response = lab.get("/deployments", &fresh).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.text().await.unwrap(),
        "Not authorized: '/deployments'\n"
    );

    lab.set_fault(json!({"mode": "http_500", "path_prefix": "/deployments/bosh-istio"}))
        .await;
    assert_eq!(
        lab.get("/deployments/sample-deployment", &token)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        lab.get("/deployments/bosh-istio", &token).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );

    lab.set_fault(json!({"mode": "hang"})).await;
    let impatient = lab
        .http
        .get(format!("{}/deployments", lab.sim.director_url()))
        .header("Authorization", format!("bearer {token}"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(impatient.unwrap_err().is_timeout());
    lab.control(reqwest::Method::POST, "/_sim/requests/reset", None)
        .await;
    let waiting = tokio::spawn({
        let http = lab.http.clone();
        let url = format!("{}/deployments", lab.sim.director_url());
        let token = token.clone();
        async move {
            http.get(url)
                .header("Authorization", format!("bearer {token}"))
                .send()
                .await
        }
    });
    // The spawned request is hung until the fault clears; wait until the simulator has seen it.
    loop {
        let counts = lab
            .control(reqwest::Method::GET, "/_sim/requests", None)
            .await;
        if counts["by_route"]["GET /deployments"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!waiting.is_finished());
    lab.set_fault(json!({"mode": "none"})).await;
    assert_eq!(waiting.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn expired_tokens_get_the_plain_401_and_a_new_token_works() {
    let lab = Lab::start(options()).await;
    let token = lab.token().await;
    assert_eq!(
        lab.get("/deployments", &token).await.status(),
        StatusCode::OK
    );
    let expired = lab
        .control(reqwest::Method::POST, "/_sim/tokens/expire", None)
        .await;
    assert_eq!(expired["expired"], 1);
    let response = lab.get("/deployments", &token).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.text().await.unwrap(),
        "Not authorized: '/deployments'\n"
    );
    let renewed = lab.token().await;
    assert_eq!(
        lab.get("/deployments", &renewed).await.status(),
        StatusCode::OK
    );

    let short = Lab::start(SimOptions {
        token_ttl: Duration::from_secs(1),
        ..options()
    })
    .await;
    let token = short.token().await;
    let exp = claims(&token)["exp"].as_i64().unwrap();
    // Wait until the director's clock has passed `exp`; the check is `exp > now`.
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        <= exp
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        short.get("/deployments", &token).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn configs_enforce_expected_latest_id_with_412() {
    let lab = Lab::start(options()).await;
    let token = lab.token().await;
    let url = format!("{}/configs", lab.sim.director_url());
    let post = |body: Value| {
        lab.http
            .post(&url)
            .header("Authorization", format!("bearer {token}"))
            .json(&body)
            .send()
    };
    let config = |content: &str, expected: &str| json!({"type": "boshy", "name": "vips", "content": content, "expected_latest_id": expected});
    let created = post(config("vips: {a: 1}", "0")).await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = serde_json::from_str(&created.text().await.unwrap()).unwrap();
    let first_id = created["id"].as_str().unwrap().to_string();

    let lost = post(config("vips: {b: 2}", "0")).await.unwrap();
    assert_eq!(lost.status(), StatusCode::PRECONDITION_FAILED);
    let lost: Value = serde_json::from_str(&lost.text().await.unwrap()).unwrap();
    assert_eq!(
        lost,
        json!({
            "latest_id": first_id,
            "expected_latest_id": "0",
            "description": format!("Latest Id: '{first_id}' does not match expected latest id"),
        })
    );
    let second: Value = post(config("vips: {b: 2}", &first_id))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(second["id"], first_id.as_str());
    let same: Value = post(config("vips: {b: 2}", second["id"].as_str().unwrap()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(same["id"], second["id"]);

    let listed = lab.get_json("/configs?type=boshy&name=vips", &token).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["content"], "vips: {b: 2}");
    assert_eq!(listed[0]["current"], true);

    let not_json = lab
        .http
        .post(&url)
        .header("Authorization", format!("bearer {token}"))
        .body(config("x: 1", "0").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::NOT_FOUND);
    let bad_yaml = post(json!({"type": "boshy", "name": "vips", "content": "- a"}))
        .await
        .unwrap();
    assert_eq!(bad_yaml.status(), StatusCode::BAD_REQUEST);

    let events = lab
        .get_json("/events?object_type=config/boshy", &token)
        .await;
    let errors: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["error"])
        .collect();
    assert_eq!(
        errors,
        [&json!("YAML hash expected"), &Value::Null, &Value::Null],
        "one event per new config version and one per refused body, none for the 412 \
         nor for identical content: {events}"
    );
}

impl Lab {
    /// `POST /configs` as bosh-cli sends it; the status and the body read as JSON.
    async fn post_config(&self, token: &str, body: String) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/configs", self.sim.director_url()))
            .header("Authorization", format!("bearer {token}"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn delete(&self, path: &str, token: &str) -> (StatusCode, String) {
        let response = self
            .http
            .delete(format!("{}{path}", self.sim.director_url()))
            .header("Authorization", format!("bearer {token}"))
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// `(action, object_type, object_name, error)` of every event, oldest first.
    async fn config_events(&self, token: &str) -> Vec<(String, String, String, String)> {
        let text = |event: &Value, key: &str| event[key].as_str().unwrap_or_default().to_string();
        let events = self.get_json("/events", token).await;
        events
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .filter(|e| text(e, "object_type").starts_with("config"))
            .map(|e| {
                let field = |key| text(e, key);
                (
                    field("action"),
                    field("object_type"),
                    field("object_name"),
                    field("error"),
                )
            })
            .collect()
    }
}

fn config_body(kind: &str, name: &str, content: &str) -> String {
    json!({"type": kind, "name": name, "content": content}).to_string()
}

#[tokio::test]
async fn configs_of_any_type_are_listed_latest_per_name_and_written_like_the_director() {
    let lab = Lab::start(options()).await;
    let token = lab.token().await;
    for (kind, name, content) in [
        ("boshy-istio", "reviews", "kind: VirtualService\n"),
        ("boshy-istio", "ratings", "kind: DestinationRule\n"),
        ("boshy-vips", "boshy", "assignments: {}\n"),
        ("boshy-istio", "reviews", "kind: VirtualService\nv: 2\n"),
    ] {
        let (status, created) = lab
            .post_config(&token, config_body(kind, name, content))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(
            (created["type"].as_str(), created["content"].as_str()),
            (Some(kind), Some(content))
        );
    }
    let latest = lab
        .get_json("/configs?type=boshy-istio&latest=true", &token)
        .await;
    let summary = |list: &Value| -> Vec<(String, String)> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                assert_eq!(c["type"], "boshy-istio", "{c}");
                (
                    c["name"].as_str().unwrap().into(),
                    c["id"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let pair = |name: &str, id: &str| (name.to_string(), id.to_string());
    assert_eq!(
        summary(&latest),
        [pair("ratings", "2"), pair("reviews", "4")]
    );
    let every = lab
        .get_json("/configs?type=boshy-istio&latest=false", &token)
        .await;
    assert_eq!(
        summary(&every),
        [
            pair("ratings", "2"),
            pair("reviews", "4"),
            pair("reviews", "1")
        ]
    );

    // The director refuses content that is not a YAML hash, and records the refusal.
    let (status, refused) = lab
        .post_config(&token, config_body("boshy-istio", "reviews", "- a list"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused,
        json!({"code": 440011, "description": "YAML hash expected"})
    );
    let (status, refused) = lab
        .post_config(&token, config_body("boshy-istio", "reviews", "a: [1"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["code"], 440011);
    let yaml_error = refused["description"].as_str().unwrap().to_string();
    assert!(
        yaml_error.starts_with("Config must be valid YAML: "),
        "{yaml_error}"
    );
    let (status, refused) = lab.post_config(&token, "{not json".into()).await;
    assert_eq!(
        (status, &refused["code"]),
        (StatusCode::BAD_REQUEST, &json!(710001))
    );
    let json_error = refused["description"].as_str().unwrap().to_string();
    assert!(
        json_error.starts_with("Invalid JSON request body: "),
        "{json_error}"
    );
    let (status, refused) = lab
        .post_config(
            &token,
            json!({"type": "boshy-istio", "content": "a: 1"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused,
        json!({"code": 440010, "description": "'name' is required"})
    );

    // Deleting writes no event; deleting every version of a name hides it.
    let (status, _) = lab
        .delete("/configs?type=boshy-istio&name=reviews", &token)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = lab
        .delete("/configs?type=boshy-istio&name=reviews", &token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = lab.delete("/configs?type=boshy-istio", &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("'name' is required"), "{body}");
    let (status, _) = lab.delete("/configs/2", &token).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        lab.get_json("/configs?type=boshy-istio", &token).await,
        json!([])
    );
    let vips = lab.get_json("/configs?type=boshy-vips", &token).await;
    assert_eq!(vips.as_array().unwrap().len(), 1);

    let event = |object_type: &str, name: &str, error: &str| {
        (
            "create".to_string(),
            object_type.to_string(),
            name.to_string(),
            error.to_string(),
        )
    };
    assert_eq!(
        lab.config_events(&token).await,
        [
            event("config/boshy-istio", "reviews", ""),
            event("config/boshy-istio", "ratings", ""),
            event("config/boshy-vips", "boshy", ""),
            event("config/boshy-istio", "reviews", ""),
            event("config/boshy-istio", "reviews", "YAML hash expected"),
            event("config/boshy-istio", "reviews", &yaml_error),
            event("config/", "", &json_error),
            event("config/boshy-istio", "", "'name' is required"),
        ]
    );
}

#[tokio::test]
async fn events_can_be_off_and_requests_are_counted_per_route() {
    let lab = Lab::start(SimOptions {
        events: false,
        ..options()
    })
    .await;
    let token = lab.token().await;
    assert_eq!(lab.get_json("/events", &token).await, json!([]));
    lab.get_json("/deployments/sample-deployment", &token).await;
    lab.get_json("/deployments/bosh-istio", &token).await;
    let counts = lab
        .control(reqwest::Method::GET, "/_sim/requests", None)
        .await;
    assert_eq!(counts["total"], 4);
    assert_eq!(counts["by_route"]["GET /deployments/:d"], 2);
    assert_eq!(counts["by_route"]["POST /oauth/token"], 1);
    assert_eq!(counts["by_route"]["GET /events"], 1);
    lab.control(reqwest::Method::POST, "/_sim/requests/reset", None)
        .await;
    let counts = lab
        .control(reqwest::Method::GET, "/_sim/requests", None)
        .await;
    assert_eq!(counts, json!({"total": 0, "by_route": {}}));

    let with_events = Lab::start(options()).await;
    let token = with_events.token().await;
    let events = with_events.get_json("/events", &token).await;
    let first = events.as_array().unwrap().last().unwrap();
    assert_eq!(first["action"], "create");
    assert_eq!(first["object_type"], "deployment");
    assert_eq!(
        first["object_name"], "bookinfo",
        "fixtures deploy in name order"
    );
    assert_eq!(first["id"], "1");
}

#[tokio::test]
async fn basic_auth_mode_takes_client_credentials_on_every_request() {
    let lab = Lab::start(SimOptions {
        auth: AuthMode::Basic,
        ..options()
    })
    .await;
    let director = lab.sim.director_url();
    let info: Value = lab
        .http
        .get(format!("{director}/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        info["user_authentication"],
        json!({"type": "basic", "options": {}})
    );
    let ok = lab
        .http
        .get(format!("{director}/deployments"))
        .basic_auth("pilot", Some(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let wrong = lab
        .http
        .get(format!("{director}/deployments"))
        .basic_auth("pilot", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
}

/// UAA publishes the key its tokens are signed with, in the shape UAA documents, to anyone;
/// the control API issues tokens of chosen scopes and lifetimes, signed the same way.
#[tokio::test]
async fn token_keys_verify_the_tokens_and_the_control_api_issues_chosen_ones() {
    let lab = Lab::start(options()).await;
    let response = lab
        .http
        .get(format!("{}/token_keys", lab.sim.uaa_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let keys: Value = response.json().await.unwrap();
    let key = &keys["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["alg"].as_str(),
            key["use"].as_str()
        ),
        (Some("RSA"), Some("RS256"), Some("sig"))
    );
    let decoding = jsonwebtoken::DecodingKey::from_rsa_components(
        key["n"].as_str().unwrap(),
        key["e"].as_str().unwrap(),
    )
    .unwrap();
    let verify = |token: &str| {
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.kid.as_deref(), key["kid"].as_str());
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.validate_aud = false;
        validation.leeway = 0;
        jsonwebtoken::decode::<Value>(token, &decoding, &validation).map(|data| data.claims)
    };
    let token = lab.token().await;
    assert_eq!(verify(&token).unwrap()["scope"], json!(["bosh.admin"]));

    let issued = lab
        .control(
            reqwest::Method::POST,
            "/_sim/tokens/issue",
            Some(json!({"scopes": ["bosh.teams.x.read"], "ttl_seconds": 600})),
        )
        .await;
    let scoped = issued["access_token"].as_str().unwrap();
    assert_eq!(
        verify(scoped).unwrap()["scope"],
        json!(["bosh.teams.x.read"])
    );
    let response = lab.get("/deployments", scoped).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.text().await.unwrap().contains("600000"));

    let issued = lab
        .control(
            reqwest::Method::POST,
            "/_sim/tokens/issue",
            Some(json!({"scopes": ["bosh.admin"], "ttl_seconds": -60})),
        )
        .await;
    let expired = issued["access_token"].as_str().unwrap();
    assert_eq!(
        verify(expired).unwrap_err().kind(),
        &jsonwebtoken::errors::ErrorKind::ExpiredSignature
    );
    assert_eq!(
        lab.get("/deployments", expired).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
