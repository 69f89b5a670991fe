//! example-bookinfo: Istio's bookinfo demo application as one small HTTP server that plays
//! one of its four parts, so that each part can run on an instance group of its own and the
//! traffic rules of Istio's bookinfo tasks (request routing, fault injection, traffic
//! shifting, retries) can be played on BOSH VMs (docs/bookinfo.md).
//!
//! - `details`: `GET /details/{id}`, the book's details.
//! - `ratings`: `GET /ratings/{id}`, two reviewers' stars.
//! - `reviews`: `GET /reviews/{id}`, two reviews; v1 without ratings, v2 and v3 call ratings
//!   and show black (v2) or red (v3) stars. When ratings fails, the reviews still answer 200
//!   and say why the stars are missing, as bookinfo's "Ratings service is currently
//!   unavailable".
//! - `productpage`: `GET /productpage`, details and reviews together, 200 even when one of
//!   them failed (the failure is named, with its status). The user is the `end-user` header
//!   or `?u=<name>`, and is sent on as `end-user`, the header the tasks' routes match on.
//!
//! Every answer is JSON and says which part, version and BOSH instance answered it. Every
//! call to another part carries the user, the request id and the trace context of the request
//! it serves, as Istio's bookinfo does. `POST /admin/flaky` (from the VM itself) makes an
//! instance fail a share of its requests, for the retries step.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::workload::{self, Instance};

/// The product every page shows: bookinfo has one book.
const PRODUCT_ID: u32 = 0;

/// Istio's productpage gives reviews 3 s: the fault-injection task's 7 s delay on ratings
/// (reviews waits for it) shows as an error on the page because of it.
const PRODUCTPAGE_TIMEOUT_MS: u64 = 3_000;
/// Istio's reviews gives ratings 10 s, longer than the task's 7 s delay.
const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// The headers a call to another part carries over from the request it serves, as Istio's
/// bookinfo propagates them: the user (the tasks' routes match on it) and the request id and
/// trace context (Envoy's B3 and W3C), so that one page is one trace.
pub const PROPAGATED_HEADERS: [&str; 10] = [
    "end-user",
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "traceparent",
    "tracestate",
];

const END_USER: &str = "end-user";

#[derive(clap::ValueEnum, Serialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Productpage,
    Details,
    Ratings,
    Reviews,
}

/// Only reviews behaves differently by version; the others report theirs (the subsets of a
/// DestinationRule select instances by the `version` label, which the manifest sets to match).
#[derive(clap::ValueEnum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
    V3,
}

/// A part or version by the name it has on the command line (and, the same, in answers).
fn write_name(value: &impl clap::ValueEnum, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match value.to_possible_value() {
        Some(name) => f.write_str(name.get_name()),
        None => Ok(()),
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_name(self, f)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_name(self, f)
    }
}

impl Part {
    /// The parts this part calls, in this version.
    fn callees(self, version: Version) -> &'static [Part] {
        match (self, version) {
            (Part::Productpage, _) => &[Part::Details, Part::Reviews],
            (Part::Reviews, Version::V2 | Version::V3) => &[Part::Ratings],
            _ => &[],
        }
    }
}

impl Version {
    /// The colour of the stars reviews shows; v1 shows none and does not call ratings.
    fn stars(self) -> Option<&'static str> {
        match self {
            Version::V1 => None,
            Version::V2 => Some("black"),
            Version::V3 => Some("red"),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The part of bookinfo this instance plays.
    #[arg(long, value_enum)]
    pub part: Part,
    /// Its version: reviews v1 shows no ratings, v2 black stars, v3 red stars.
    #[arg(long, value_enum, default_value = "v1")]
    pub version: Version,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:9080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub instance: Instance,
    /// Base URL of details (productpage calls it), e.g. http://bookinfo.details.bookinfo.boshy:9080.
    #[arg(long)]
    pub details_url: Option<String>,
    /// Base URL of reviews (productpage calls it).
    #[arg(long)]
    pub reviews_url: Option<String>,
    /// Base URL of ratings (reviews v2 and v3 call it).
    #[arg(long)]
    pub ratings_url: Option<String>,
    /// How long a call to another part may take before it counts as failed [default: 3000
    /// for productpage, as Istio's productpage gives reviews 3 s; 10000 for the others].
    #[arg(long)]
    pub upstream_timeout_ms: Option<u64>,
    /// Checks the arguments (the part has a URL for every part it calls) and exits.
    #[arg(long)]
    pub check_config: bool,
}

pub async fn run(args: Args) -> Result<()> {
    let router = router(&args)?;
    if args.check_config {
        println!("example-bookinfo: {} {}: OK", args.part, args.version);
        return Ok(());
    }
    workload::listen_and_serve("example-bookinfo", args.listen, &args.instance, router).await
}

/// The part's routes, `/health` and `/admin/flaky`; fails when a URL the part needs is
/// missing or not `http://`.
pub fn router(args: &Args) -> Result<Router> {
    let app = Arc::new(Bookinfo {
        part: args.part,
        version: args.version,
        instance: args.instance.clone(),
        calls: Calls::new(args)?,
        flaky: Mutex::new(Flaky::default()),
    });
    let data = match args.part {
        Part::Productpage => Router::new().route("/productpage", get(productpage)),
        Part::Details => Router::new().route("/details/{id}", get(details)),
        Part::Ratings => Router::new().route("/ratings/{id}", get(ratings)),
        Part::Reviews => Router::new().route("/reviews/{id}", get(reviews)),
    }
    // Only the part's own path can be made flaky: /health and the admin path keep answering.
    .route_layer(middleware::from_fn_with_state(app.clone(), flaky_gate));
    Ok(data
        .route("/health", get(health))
        .route("/admin/flaky", post(set_flaky))
        .fallback(not_found)
        .with_state(app))
}

type App = Arc<Bookinfo>;

struct Bookinfo {
    part: Part,
    version: Version,
    instance: Instance,
    calls: Calls,
    flaky: Mutex<Flaky>,
}

impl Bookinfo {
    /// `body` (an object) with the part, version and instance that answered.
    fn answer(&self, status: StatusCode, mut body: Value) -> Response {
        if let Value::Object(fields) = &mut body {
            fields.insert("part".into(), json!(self.part));
            fields.insert("version".into(), json!(self.version));
            fields.insert("instance".into(), json!(self.instance));
        }
        (status, Json(body)).into_response()
    }

    fn ok(&self, body: Value) -> Response {
        self.answer(StatusCode::OK, body)
    }

    fn error(&self, status: StatusCode, message: impl fmt::Display) -> Response {
        self.answer(status, json!({"error": message.to_string()}))
    }

    /// The answer to a data path whose product id is not a number, as bookinfo's are.
    fn bad_product_id(&self) -> Response {
        self.error(StatusCode::BAD_REQUEST, "the product id must be a number")
    }
}

async fn details(State(app): State<App>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u32>() else {
        return app.bad_product_id();
    };
    app.ok(json!({
        "id": id,
        "title": "The Comedy of Errors",
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    }))
}

async fn ratings(State(app): State<App>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u32>() else {
        return app.bad_product_id();
    };
    app.ok(json!({"id": id, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}))
}

async fn reviews(State(app): State<App>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Ok(id) = id.parse::<u32>() else {
        return app.bad_product_id();
    };
    let mut reviews = vec![
        json!({"reviewer": "Reviewer1", "text": "Twins, mistaken twice over, and a town that cannot keep up: the farce still lands after four centuries."}),
        json!({"reviewer": "Reviewer2", "text": "Short, quick and generous; a good first Shakespeare, and a better second one."}),
    ];
    let mut body = json!({"id": id});
    if let Some(stars) = app.version.stars() {
        body["stars"] = json!(stars);
        let answer = app
            .calls
            .get_json(
                Part::Ratings,
                &format!("/ratings/{id}"),
                propagated(&headers),
            )
            .await;
        match answer {
            Ok(ratings) => {
                for review in &mut reviews {
                    let reviewer = review["reviewer"].as_str().unwrap_or_default();
                    review["rating"] = ratings["ratings"][reviewer].clone();
                }
                body["ratings"] = ratings;
            }
            Err(error) => body["ratings_error"] = json!(error.to_string()),
        }
    }
    body["reviews"] = json!(reviews);
    app.ok(body)
}

async fn productpage(
    State(app): State<App>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return app.error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let user = user(&headers, &query);
    let mut outgoing = propagated(&headers);
    if let Some(value) = user.as_deref().and_then(|u| HeaderValue::from_str(u).ok()) {
        outgoing.insert(END_USER, value);
    }
    let (details_path, reviews_path) = (
        format!("/details/{PRODUCT_ID}"),
        format!("/reviews/{PRODUCT_ID}"),
    );
    let (details, reviews) = tokio::join!(
        app.calls
            .get_json(Part::Details, &details_path, outgoing.clone()),
        app.calls.get_json(Part::Reviews, &reviews_path, outgoing),
    );
    let shown = |answer: Result<Value, UpstreamError>| answer.unwrap_or_else(|e| e.to_json());
    app.ok(json!({
        "user": user,
        "details": shown(details),
        "reviews": shown(reviews),
    }))
}

async fn health(State(app): State<App>) -> Response {
    app.ok(json!({"status": "ok"}))
}

async fn not_found(State(app): State<App>, uri: Uri) -> Response {
    app.error(
        StatusCode::NOT_FOUND,
        format!("{} serves no {}", app.part, uri.path()),
    )
}

/// The user a page is for: the `end-user` header (set by whoever called), else `?u=<name>`.
/// Only a value that can be sent on as a header counts.
pub fn user(headers: &HeaderMap, query: &BTreeMap<String, String>) -> Option<String> {
    let from_header = headers
        .get(END_USER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let from_query = || {
        query
            .get("u")
            .filter(|name| HeaderValue::from_str(name).is_ok())
            .cloned()
    };
    from_header
        .or_else(from_query)
        .filter(|name| !name.is_empty())
}

/// The headers of `incoming` that a call made on its behalf carries ([`PROPAGATED_HEADERS`]),
/// every value of each.
pub fn propagated(incoming: &HeaderMap) -> HeaderMap {
    let mut outgoing = HeaderMap::new();
    for name in PROPAGATED_HEADERS {
        let name = HeaderName::from_static(name);
        for value in incoming.get_all(&name) {
            outgoing.append(name.clone(), value.clone());
        }
    }
    outgoing
}

/// The calls to other parts: one client, and the base URL of each part this one calls.
struct Calls {
    client: reqwest::Client,
    timeout_ms: u64,
    bases: BTreeMap<Part, reqwest::Url>,
}

impl Calls {
    fn new(args: &Args) -> Result<Calls> {
        let mut bases = BTreeMap::new();
        for &callee in args.part.callees(args.version) {
            let (flag, url) = match callee {
                Part::Details => ("--details-url", &args.details_url),
                Part::Reviews => ("--reviews-url", &args.reviews_url),
                Part::Ratings => ("--ratings-url", &args.ratings_url),
                Part::Productpage => unreachable!("no part calls productpage"),
            };
            let Some(url) = url else {
                bail!("{} calls {}: give {flag}", args.part, callee);
            };
            let base = reqwest::Url::parse(url).with_context(|| format!("{flag} {url}"))?;
            // The mesh encrypts between VMs; the workload speaks plain HTTP to its Envoy.
            if base.scheme() != "http" || base.host().is_none() {
                bail!("{flag} {url}: an http:// URL with a host is needed");
            }
            bases.insert(callee, base);
        }
        let timeout_ms = args.upstream_timeout_ms.unwrap_or(match args.part {
            Part::Productpage => PRODUCTPAGE_TIMEOUT_MS,
            _ => DEFAULT_TIMEOUT_MS,
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout_ms))
            // Calls go to mesh names, which the VM's own Envoy serves: never via a proxy
            // that the environment may name.
            .no_proxy()
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Calls {
            client,
            timeout_ms,
            bases,
        })
    }

    /// GET `path` of `callee`, with `headers`; its JSON answer, or why there is none.
    async fn get_json(
        &self,
        callee: Part,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Value, UpstreamError> {
        let failed = |status: Option<StatusCode>, reason: String| UpstreamError {
            callee,
            status,
            reason,
        };
        // `Calls::new` has a base URL for every part this part calls, or fails.
        let base = &self.bases[&callee];
        let url = format!("{}{path}", base.as_str().trim_end_matches('/'));
        let sent = self.client.get(&url).headers(headers).send().await;
        let response = sent.map_err(|e| failed(None, self.reason(&e)))?;
        let status = response.status();
        if status.is_client_error() || status.is_server_error() {
            return Err(failed(Some(status), format!("answered {status}")));
        }
        response
            .json()
            .await
            .map_err(|e| failed(Some(status), self.reason(&e)))
    }

    fn reason(&self, error: &reqwest::Error) -> String {
        if error.is_timeout() {
            return format!("no answer within {} ms", self.timeout_ms);
        }
        // reqwest's own message names only the URL; the cause (DNS, refused, reset) is in
        // its sources.
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        reason
    }
}

/// A call to another part that gave no usable answer.
#[derive(Debug)]
struct UpstreamError {
    callee: Part,
    status: Option<StatusCode>,
    reason: String,
}

impl UpstreamError {
    fn to_json(&self) -> Value {
        json!({"error": self.to_string(), "status": self.status.map(|s| s.as_u16())})
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.callee, self.reason)
    }
}

/// Failing a share of the requests on purpose, spread evenly and the same way every time:
/// request `n` (counted from 0, modulo 100) fails when `⌊(n+1)·p/100⌋ > ⌊n·p/100⌋`, so that
/// 50 % fails every second request, 25 % every fourth, 100 % every one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flaky {
    percent: u64,
    status: StatusCode,
    seen: u64,
}

impl Default for Flaky {
    fn default() -> Self {
        Flaky {
            percent: 0,
            status: StatusCode::SERVICE_UNAVAILABLE,
            seen: 0,
        }
    }
}

impl Flaky {
    /// From now on, `percent` (0 to 100) of the requests get `status`; counting starts over.
    pub fn set(&mut self, percent: u8, status: StatusCode) {
        *self = Flaky {
            percent: u64::from(percent.min(100)),
            status,
            seen: 0,
        };
    }

    /// Counts one request: the status to fail it with, if it is one of the failing share.
    pub fn on_request(&mut self) -> Option<StatusCode> {
        let n = self.seen;
        // The pattern repeats every 100 requests: counting modulo 100 never overflows.
        self.seen = (n + 1) % 100;
        ((n + 1) * self.percent / 100 > n * self.percent / 100).then_some(self.status)
    }
}

async fn flaky_gate(State(app): State<App>, request: Request, next: Next) -> Response {
    let failure = app.flaky.lock().expect("flaky lock").on_request();
    match failure {
        Some(status) => app.error(
            status,
            "flaky on purpose (POST /admin/flaky?percent=0 ends it)",
        ),
        None => next.run(request).await,
    }
}

#[derive(Deserialize)]
struct FlakyQuery {
    percent: Option<u8>,
    status: Option<u16>,
}

/// Whether the admin path takes a request from `peer`: only from the VM itself. Callers on
/// other VMs arrive through this VM's Envoy, from the address of its inbound hop
/// (`dnat::INBOUND_HOP_SOURCE`, 127.0.0.6), or from their own address when the inbound
/// capture is off; any other loopback peer is someone on this VM (`bosh ssh`).
pub fn admin_allowed(peer: SocketAddr) -> bool {
    let ip = peer.ip().to_canonical();
    ip.is_loopback() && ip != std::net::IpAddr::V4(crate::dnat::INBOUND_HOP_SOURCE)
}

async fn set_flaky(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<FlakyQuery>, QueryRejection>,
) -> Response {
    if !admin_allowed(peer) {
        return app.error(
            StatusCode::FORBIDDEN,
            format!(
                "the admin path answers only on the VM itself (127.0.0.1 or ::1), not {}",
                peer.ip()
            ),
        );
    }
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return app.error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let percent = query.percent.unwrap_or(100);
    if percent > 100 {
        return app.error(StatusCode::BAD_REQUEST, "percent is 0 to 100");
    }
    // A failure a client can see as one: an error status, or a success to check the counting.
    let status = query.status.unwrap_or(503);
    let Some(status) = StatusCode::from_u16(status)
        .ok()
        .filter(|s| (200..600).contains(&s.as_u16()))
    else {
        return app.error(StatusCode::BAD_REQUEST, "status is 200 to 599");
    };
    app.flaky.lock().expect("flaky lock").set(percent, status);
    tracing::info!(percent, status = status.as_u16(), "example-bookinfo: flaky");
    app.ok(json!({"flaky": {"percent": percent, "status": status.as_u16()}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(part: Part, version: Version) -> Args {
        Args {
            part,
            version,
            listen: "127.0.0.1:0".parse().unwrap(),
            instance: Instance::default(),
            details_url: None,
            reviews_url: None,
            ratings_url: None,
            upstream_timeout_ms: None,
            check_config: false,
        }
    }

    #[test]
    fn only_the_propagated_headers_are_sent_on_with_every_value() {
        let mut incoming = HeaderMap::new();
        for (name, value) in [
            ("end-user", "jason"),
            ("x-request-id", "r-1"),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "1"),
            ("x-b3-flags", "1"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
            ("authorization", "Bearer secret"),
            ("cookie", "session=1"),
            ("host", "bookinfo.productpage.bookinfo.boshy:9080"),
            ("user-agent", "curl/8"),
        ] {
            incoming.append(name, HeaderValue::from_static(value));
        }
        let outgoing = propagated(&incoming);
        let names: std::collections::BTreeSet<&str> =
            outgoing.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, PROPAGATED_HEADERS.into_iter().collect());
        assert_eq!(outgoing["end-user"], "jason");
        let states: Vec<&str> = outgoing
            .get_all("tracestate")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(states, ["a=1", "b=2"]);
        assert!(propagated(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn the_user_is_the_end_user_header_else_the_u_query() {
        let query = |u: &str| BTreeMap::from([("u".to_string(), u.to_string())]);
        let header = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(END_USER, HeaderValue::from_static(value));
            headers
        };
        let none = BTreeMap::new();
        assert_eq!(user(&HeaderMap::new(), &none), None);
        assert_eq!(
            user(&HeaderMap::new(), &query("jason")).as_deref(),
            Some("jason")
        );
        assert_eq!(user(&header("jason"), &none).as_deref(), Some("jason"));
        assert_eq!(
            user(&header("jason"), &query("bob")).as_deref(),
            Some("jason"),
            "the header the caller set wins"
        );
        assert_eq!(user(&HeaderMap::new(), &query("")), None);
        assert_eq!(
            user(&HeaderMap::new(), &query("ja\nson")),
            None,
            "a name that cannot be a header value is no user"
        );
    }

    #[test]
    fn flaky_fails_its_share_evenly_and_the_same_way_every_time() {
        let run = |flaky: &mut Flaky, n: usize| -> String {
            (0..n)
                .map(|_| {
                    if flaky.on_request().is_some() {
                        'x'
                    } else {
                        '.'
                    }
                })
                .collect()
        };
        let mut flaky = Flaky::default();
        assert_eq!(run(&mut flaky, 8), "........", "off by default");
        flaky.set(50, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(run(&mut flaky, 8), ".x.x.x.x");
        flaky.set(25, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(run(&mut flaky, 8), "...x...x");
        flaky.set(100, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(flaky.on_request(), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(run(&mut flaky, 4), "xxxx");
        flaky.set(0, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(run(&mut flaky, 4), "....");
        flaky.set(33, StatusCode::SERVICE_UNAVAILABLE);
        let hundred = run(&mut flaky, 100);
        assert_eq!(hundred.matches('x').count(), 33);
        assert_eq!(run(&mut flaky, 100), hundred, "the pattern repeats");
    }

    #[test]
    fn the_admin_path_is_for_loopback_peers_only() {
        for peer in [
            "127.0.0.1:5000",
            "127.0.0.53:1",
            "[::1]:5000",
            "[::ffff:127.0.0.1]:5000",
        ] {
            assert!(admin_allowed(peer.parse().unwrap()), "{peer}");
        }
        for peer in [
            "10.244.0.12:5000",
            "169.254.255.3:80",
            "[::ffff:10.0.0.1]:1",
            "[fe80::1]:1",
            "127.0.0.6:41000",
        ] {
            assert!(!admin_allowed(peer.parse().unwrap()), "{peer}");
        }
    }

    #[test]
    fn a_part_needs_an_http_url_for_every_part_it_calls() {
        let error = |args: &Args| format!("{:#}", router(args).expect_err("refused"));
        let mut productpage = args(Part::Productpage, Version::V1);
        assert_eq!(
            error(&productpage),
            "productpage calls details: give --details-url"
        );
        productpage.details_url = Some("http://bookinfo.details.bookinfo.boshy:9080".into());
        assert_eq!(
            error(&productpage),
            "productpage calls reviews: give --reviews-url"
        );
        productpage.reviews_url = Some("https://reviews.bookinfo.boshy:9080".into());
        assert!(error(&productpage).contains("an http:// URL with a host is needed"));
        productpage.reviews_url = Some("http://reviews.bookinfo.boshy:9080".into());
        let _ = router(&productpage).unwrap();

        let _ = router(&args(Part::Reviews, Version::V1)).expect("reviews v1 calls nothing");
        assert_eq!(
            error(&args(Part::Reviews, Version::V3)),
            "reviews calls ratings: give --ratings-url"
        );
        for part in [Part::Details, Part::Ratings] {
            let _ = router(&args(part, Version::V2)).expect("details and ratings call nothing");
        }
    }

    #[test]
    fn productpage_gives_its_calls_three_seconds_and_the_others_ten() {
        let mut reviews = args(Part::Reviews, Version::V2);
        reviews.ratings_url = Some("http://127.0.0.1:1".into());
        assert_eq!(Calls::new(&reviews).unwrap().timeout_ms, 10_000);
        let mut productpage = args(Part::Productpage, Version::V1);
        productpage.details_url = Some("http://127.0.0.1:1".into());
        productpage.reviews_url = Some("http://127.0.0.1:1".into());
        assert_eq!(Calls::new(&productpage).unwrap().timeout_ms, 3_000);
        productpage.upstream_timeout_ms = Some(250);
        assert_eq!(Calls::new(&productpage).unwrap().timeout_ms, 250);
    }
}
