//! `boshy mesh console`: the operator's browser reaches the pilot's console through a server
//! on a loopback address of the operator's machine, which adds the operator's credentials (the
//! mesh client certificate or the UAA token of `boshy mesh`) to every request it forwards, as
//! `istioctl dashboard` and `kubectl proxy` do. A browser holds no certificate or token.
//!
//! Other users of the machine can reach a loopback port too, so every URL carries a random
//! secret made at start (Jupyter's way): `http://127.0.0.1:15081/<secret>/console/`. Only
//! `GET` of the console's files and of `/v1/` is forwarded.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::mesh_cli::{PilotClient, PilotConnection};

#[derive(clap::Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pilot: PilotConnection,
    /// Where to serve the console: a loopback address only (anyone who can reach it reads the
    /// mesh with your credentials).
    #[arg(long, value_name = "ADDRESS:PORT", default_value = "127.0.0.1:15081")]
    listen: SocketAddr,
}

/// The pilot's response headers passed on to the browser: what the page is, and the pilot's
/// policies for it.
const PASSED_HEADERS: [header::HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CONTENT_SECURITY_POLICY,
    header::X_CONTENT_TYPE_OPTIONS,
    header::REFERRER_POLICY,
    header::CACHE_CONTROL,
    header::LOCATION,
];

struct Forwarder {
    pilot: PilotClient,
    /// SHA-256 of the secret: compared by digest, so the time a comparison takes says nothing
    /// of the secret.
    secret_digest: [u8; 32],
}

pub(crate) async fn run(args: ConsoleArgs) -> Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "--listen {}: not a loopback address; the console forwards with your credentials",
            args.listen
        );
    }
    let pilot = args.pilot.client()?;
    let mut secret = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut secret);
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let local = listener.local_addr()?;
    let forwarder = Arc::new(Forwarder {
        pilot,
        secret_digest: Sha256::digest(secret.as_bytes()).into(),
    });
    // The URL is the one thing to read on the terminal, on stdout for scripts.
    println!("http://{local}/{secret}/console/");
    eprintln!(
        "serving the console of {} on {local}; open the URL above (Ctrl-C to stop)",
        args.pilot.pilot
    );
    crate::api::serve_router(listener, router(forwarder), "console").await
}

fn router(forwarder: Arc<Forwarder>) -> Router {
    Router::new()
        .route("/{secret}", get(to_console))
        .route("/{secret}/", get(to_console))
        .route("/{secret}/{*path}", get(forward))
        .with_state(forwarder)
}

impl Forwarder {
    fn admits(&self, secret: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        digest == self.secret_digest
    }
}

fn refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "open the URL `boshy mesh console` printed\n",
    )
        .into_response()
}

async fn to_console(
    State(forwarder): State<Arc<Forwarder>>,
    Path(secret): Path<String>,
) -> Response {
    if !forwarder.admits(&secret) {
        return refused();
    }
    Redirect::to(&format!("/{secret}/console/")).into_response()
}

async fn forward(
    State(forwarder): State<Arc<Forwarder>>,
    Path((secret, path)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Response {
    if !forwarder.admits(&secret) {
        return refused();
    }
    if !(path == "console" || path.starts_with("console/") || path.starts_with("v1/")) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    match forwarder.pilot.get(&format!("/{path}{query}")).await {
        Err(err) => (StatusCode::BAD_GATEWAY, format!("{err:#}\n")).into_response(),
        Ok((_, response)) => {
            let status = response.status();
            let mut headers = HeaderMap::new();
            for name in PASSED_HEADERS {
                if let Some(value) = response.headers().get(&name) {
                    headers.insert(name, value.clone());
                }
            }
            match response.bytes().await {
                Ok(body) => (status, headers, body).into_response(),
                Err(err) => (StatusCode::BAD_GATEWAY, format!("{err}\n")).into_response(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forwarder to a pilot at `pilot` (plain HTTP) with the secret `s3cret`.
    fn forwarder(pilot: &str) -> Arc<Forwarder> {
        let connection = PilotConnection::plain(pilot);
        Arc::new(Forwarder {
            pilot: connection.client().expect("a client"),
            secret_digest: Sha256::digest(b"s3cret").into(),
        })
    }

    async fn call(
        router: Router,
        path: &str,
    ) -> (StatusCode, Option<axum::http::HeaderValue>, String) {
        use tower::ServiceExt as _;
        let response = router
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let location = response.headers().get(header::LOCATION).cloned();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            location,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[tokio::test]
    async fn only_the_secret_url_is_served_and_only_the_console_and_the_api_are_forwarded() {
        // A pilot that answers every path with it.
        let pilot = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = pilot.local_addr().unwrap();
        let echo = Router::new().fallback(|uri: axum::http::Uri| async move {
            (
                [(header::CONTENT_TYPE, "text/plain")],
                format!("pilot saw {uri}"),
            )
        });
        tokio::spawn(crate::api::serve_router(pilot, echo, "test pilot"));
        let router = router(forwarder(&format!("http://{address}")));

        let (status, location, _) = call(router.clone(), "/s3cret").await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(location.unwrap(), "/s3cret/console/");
        let (status, _, body) = call(router.clone(), "/s3cret/console/").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "pilot saw /console/")
        );
        let (status, _, body) = call(router.clone(), "/s3cret/v1/graph?x=1").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "pilot saw /v1/graph?x=1")
        );

        for wrong in ["/guess/console/", "/guess", "/s3cre/v1/graph", "/"] {
            let (status, _, body) = call(router.clone(), wrong).await;
            assert_ne!(status, StatusCode::OK, "{wrong}");
            assert!(!body.contains("pilot saw"), "{wrong} reached the pilot");
        }
        for outside in ["/s3cret/metrics", "/s3cret/healthz", "/s3cret/consoled"] {
            let (status, _, _) = call(router.clone(), outside).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{outside}");
        }
    }
}
