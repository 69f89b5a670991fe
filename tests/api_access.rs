//! Who may read the pilot's HTTP API (docs/api.md), over real HTTPS against the director
//! simulator's UAA: every endpoint but `/healthz` refuses a request without credentials (401),
//! with an expired token (401), with a token of a scope that does not read BOSH (403), and
//! serves one with a `bosh.admin` or `bosh.read` token or a mesh client certificate. A
//! refusal carries `WWW-Authenticate` and none of the data, and is counted in `/metrics`.
//! `boshy mesh status` gets in with a token from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use boshy::api::{self, Access};
use boshy::api_auth::UaaKeys;
use boshy::catalog::model::{Endpoint, Protocol};
use boshy::catalog::testing::{self, endpoint, service};
use boshy::config::{ClientTls, ServerTls};
use boshy::director::RuleConfigs;
use boshy_director_sim::{self as sim, SimOptions};
use boshy_lab::pki::{Ca, PILOT_SERVER_NAME};
use boshy_test_support::uaa::{client_credentials_token, issued_token, sim_client};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

const SECRET: &str = "pilot-secret";
const DATA_PATHS: [&str; 9] = [
    "/v1/registration",
    "/v1/rules",
    "/v1/proxies",
    "/v1/services/web.banana.sample.boshy",
    "/v1/graph",
    "/console/",
    "/console/console.js",
    "/console/console.css",
    "/metrics",
];

/// A mesh CA with the pilot's certificate and a client certificate, as PEM files.
struct Mesh {
    dir: tempfile::TempDir,
}

impl Mesh {
    fn new(ca_name: &str) -> Mesh {
        let ca = Ca::new(ca_name).unwrap();
        let mesh = Mesh {
            dir: tempfile::tempdir().unwrap(),
        };
        let write = |file: &str, pem: &str| std::fs::write(mesh.path(file), pem).unwrap();
        write("ca.pem", &ca.cert_pem());
        let server = ca.server(PILOT_SERVER_NAME).unwrap();
        write("server.pem", &server.cert_pem);
        write("server.key", &server.key_pem);
        let client = ca.client("prometheus").unwrap();
        write("client.pem", &client.cert_pem);
        write("client.key", &client.key_pem);
        mesh
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn server(&self) -> ServerTls {
        ServerTls {
            ca_cert_path: self.path("ca.pem"),
            cert_path: self.path("server.pem"),
            key_path: self.path("server.key"),
        }
    }

    fn client_tls(&self, certificate_of: &Mesh) -> ClientTls {
        ClientTls {
            ca_cert_path: self.path("ca.pem"),
            cert_path: certificate_of.path("client.pem"),
            key_path: certificate_of.path("client.key"),
            server_name: PILOT_SERVER_NAME.into(),
        }
    }
}

/// An HTTPS client of the pilot at `api`: it verifies the pilot's certificate and presents
/// `certificate`'s client certificate, or none.
fn api_client(mesh: &Mesh, api: SocketAddr, certificate: Option<&Mesh>) -> reqwest::Client {
    let tls = match certificate {
        Some(of) => boshy::tls::client_config(&mesh.client_tls(of)).unwrap(),
        None => boshy_test_support::tls::without_certificate(&mesh.path("ca.pem")),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve(PILOT_SERVER_NAME, api)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    body: String,
}

async fn get(client: &reqwest::Client, api: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let url = format!("https://{PILOT_SERVER_NAME}:{}{path}", api.port());
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("bearer {token}"));
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status(),
        challenge: response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string()),
        body: response.text().await.unwrap(),
    }
}

/// A refusal shows none of what the endpoint serves.
fn assert_no_data(path: &str, answer: &Answer) {
    for data in ["banana", "boshy_", "hostname", "169.254", "[]"] {
        assert!(
            !answer.body.contains(data),
            "{path} refused with data: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn every_endpoint_but_healthz_wants_a_mesh_certificate_or_a_bosh_read_token() {
    let sim = sim::start(SimOptions::new(SECRET)).await.unwrap();
    let mesh = Mesh::new("api test mesh CA");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let catalog = testing::catalog(
        7,
        [service("sample", "banana", "web")
            .vip([169, 254, 255, 3])
            .port("http", 8080, Protocol::Http)
            .endpoint(Endpoint {
                index: Some(0),
                ..endpoint("127.0.0.7")
            })],
    );
    let (_catalog_tx, catalog_rx) = watch::channel(Arc::new(catalog));
    let (_rules_tx, rules_rx) = watch::channel(Some(Arc::new(RuleConfigs::default())));
    let (_status_tx, status_rx) = watch::channel(None);
    let access = Access {
        tokens: Some(Arc::new(UaaKeys::new(
            sim_client(&sim),
            &sim.uaa_url(),
            None,
        ))),
        workloads: None,
    };
    let tls = boshy::tls::api_server_config(&mesh.server()).unwrap();
    let server = tokio::spawn(api::serve_tls(
        listener,
        catalog_rx,
        rules_rx,
        status_rx,
        api::Proxies::none(),
        tls,
        access,
    ));

    let anonymous = api_client(&mesh, api, None);
    let admin = client_credentials_token(&sim, SECRET).await;
    let reader = issued_token(&sim, &["openid", "bosh.read"], 600).await;
    let team_reader = issued_token(&sim, &["bosh.teams.x.read"], 600).await;
    let expired = issued_token(&sim, &["bosh.admin"], -60).await;

    let healthz = get(&anonymous, api, "/healthz", None).await;
    assert_eq!(
        (healthz.status, healthz.body.as_str()),
        (StatusCode::OK, "ok\n")
    );

    for path in DATA_PATHS {
        let none = get(&anonymous, api, path, None).await;
        assert_eq!(
            none.status,
            StatusCode::UNAUTHORIZED,
            "{path} without credentials"
        );
        assert_eq!(
            none.challenge.as_deref(),
            Some("Bearer realm=\"bosh-pilot\"")
        );
        assert_no_data(path, &none);

        let old = get(&anonymous, api, path, Some(&expired)).await;
        assert_eq!(
            old.status,
            StatusCode::UNAUTHORIZED,
            "{path} with an expired token"
        );
        assert_eq!(
            old.challenge.as_deref(),
            Some("Bearer realm=\"bosh-pilot\", error=\"invalid_token\"")
        );
        assert!(old.body.contains("expired"), "{}", old.body);
        assert_no_data(path, &old);

        let team = get(&anonymous, api, path, Some(&team_reader)).await;
        assert_eq!(
            team.status,
            StatusCode::FORBIDDEN,
            "{path} with a team scope"
        );
        assert!(
            team.challenge
                .as_deref()
                .unwrap()
                .contains("error=\"insufficient_scope\""),
            "{:?}",
            team.challenge
        );
        assert_no_data(path, &team);

        let garbage = get(&anonymous, api, path, Some("not.a.token")).await;
        assert_eq!(
            garbage.status,
            StatusCode::UNAUTHORIZED,
            "{path} with garbage"
        );
        assert_no_data(path, &garbage);

        for token in [&admin, &reader] {
            let good = get(&anonymous, api, path, Some(token)).await;
            assert_eq!(good.status, StatusCode::OK, "{path} with a good token");
        }
    }

    // An Envoy's config and diff: refused without credentials, a clear 404 with them for an
    // instance no Envoy of this pilot is.
    for path in ["/v1/proxies/apricot/3/config", "/v1/proxies/apricot/3/diff"] {
        let none = get(&anonymous, api, path, None).await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_no_data(path, &none);
        let good = get(&anonymous, api, path, Some(&reader)).await;
        assert_eq!(
            good.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: no snapshot yet"
        );
    }

    // The mesh client certificate alone lets Prometheus in.
    let prometheus = api_client(&mesh, api, Some(&mesh));
    for path in DATA_PATHS {
        let answer = get(&prometheus, api, path, None).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{path} with a mesh certificate"
        );
    }
    let registration = get(&prometheus, api, "/v1/registration", None).await;
    assert!(registration.body.contains("web.banana.sample.boshy"));
    let metrics = get(&prometheus, api, "/metrics", None).await.body;
    for reason in ["missing", "expired", "scope", "malformed"] {
        let line = format!("boshy_api_refusals_total{{reason=\"{reason}\"}} ");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    assert!(
        !metrics.contains(&admin) && !metrics.contains(&team_reader),
        "no token in the metrics"
    );

    // `boshy mesh status` takes its token from the environment variable it is told: let in
    // with `bosh.read`, refused with a team scope, the token in none of its output.
    let mesh_status = |token: String| {
        let ca = mesh.path("ca.pem");
        async move {
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_boshy"))
                .args(["mesh", "status", "--pilot", &format!("https://{api}")])
                .arg("--ca")
                .arg(ca)
                .args(["--token-env", "PILOT_TOKEN_OF_TEST", "--json"])
                .env("PILOT_TOKEN_OF_TEST", &token)
                .output()
                .await
                .unwrap();
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
            assert!(
                !stdout.contains(&token) && !stderr.contains(&token),
                "{stdout}{stderr}"
            );
            (output.status.success(), stdout, stderr)
        }
    };
    let (ok, stdout, stderr) = mesh_status(reader.clone()).await;
    assert!(ok, "{stderr}");
    let proxies: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(proxies["proxies"], json!([]), "{stdout}");
    let (ok, _, stderr) = mesh_status(team_reader.clone()).await;
    assert!(!ok && stderr.contains("403"), "{stderr}");

    // A certificate from another CA fails the handshake: no answer at all.
    let stranger = Mesh::new("another CA");
    let foreign = api_client(&mesh, api, Some(&stranger));
    let url = format!("https://{PILOT_SERVER_NAME}:{}/healthz", api.port());
    assert!(foreign.get(url).send().await.is_err());
    server.abort();
}

#[tokio::test]
async fn an_unreachable_uaa_refuses_tokens_with_503_and_certificates_still_work() {
    let mesh = Mesh::new("api test mesh CA");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let (_catalog_tx, catalog_rx) = watch::channel(Arc::new(testing::catalog(
        1,
        Vec::<boshy::catalog::model::Service>::new(),
    )));
    let (_rules_tx, rules_rx) = watch::channel(None);
    let (_status_tx, status_rx) = watch::channel(None);
    let access = Access {
        tokens: Some(Arc::new(UaaKeys::new(
            reqwest::Client::new(),
            "http://127.0.0.1:9",
            None,
        ))),
        workloads: None,
    };
    let tls = boshy::tls::api_server_config(&mesh.server()).unwrap();
    let server = tokio::spawn(api::serve_tls(
        listener,
        catalog_rx,
        rules_rx,
        status_rx,
        api::Proxies::none(),
        tls,
        access,
    ));
    let anonymous = api_client(&mesh, api, None);
    let answer = get(&anonymous, api, "/v1/registration", Some("a.b.c")).await;
    // A malformed token is refused before the keys are needed.
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let sim = sim::start(SimOptions::new(SECRET)).await.unwrap();
    let token = client_credentials_token(&sim, SECRET).await;
    let answer = get(&anonymous, api, "/v1/registration", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body.trim(), "UAA's token keys could not be fetched");
    let with_certificate = api_client(&mesh, api, Some(&mesh));
    let answer = get(&with_certificate, api, "/v1/registration", None).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "[]")
    );
    server.abort();
}
