//! example-httpbin: the sample workload. A small HTTP server whose answers say which BOSH
//! instance served them, so a curl through the mesh shows the load balancing, and who called:
//! the caller's SPIFFE ID that its Envoy verified (`x-forwarded-client-cert`), also printed
//! on the workload's log line for each request.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Result;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::workload::{self, Instance};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:9000")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub instance: Instance,
}

#[derive(Serialize)]
struct GetResponse<'a> {
    args: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
    origin: String,
    url: String,
    instance: &'a Instance,
    /// The caller's identity as the VM's Envoy verified it, when it came over mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    caller: Option<String>,
}

/// The SPIFFE ID of the caller in Envoy's `x-forwarded-client-cert` header: the `URI=` of the
/// last element (Envoy appends the peer it verified; earlier elements are earlier hops').
fn caller(headers: &HeaderMap) -> Option<String> {
    let xfcc = headers.get("x-forwarded-client-cert")?.to_str().ok()?;
    let last = xfcc.rsplit(',').next()?;
    last.split(';')
        .find_map(|field| field.trim().strip_prefix("URI="))
        .map(|uri| uri.trim_matches('"').to_string())
}

pub fn router(args: &Args) -> Router {
    Router::new()
        .route("/get", get(get_handler))
        .route("/post", post(get_handler))
        .route("/status/{code}", get(status_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(args.instance.clone())
}

async fn get_handler(
    State(identity): State<Instance>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(args): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Json<serde_json::Value> {
    let caller = caller(&headers);
    let headers = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    tracing::info!(
        path = %uri.path(),
        peer = %peer,
        caller = caller.as_deref().unwrap_or("-"),
        "request"
    );
    let response = GetResponse {
        args,
        headers,
        origin: peer.ip().to_string(),
        url: uri.to_string(),
        instance: &identity,
        caller,
    };
    Json(serde_json::to_value(response).expect("response serializes"))
}

async fn status_handler(Path(code): Path<u16>) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

pub async fn run(args: Args) -> Result<()> {
    workload::listen_and_serve(
        "example-httpbin",
        args.listen,
        &args.instance,
        router(&args),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn get_says_which_instance_answered() {
        let args = Args {
            listen: "127.0.0.1:0".parse().unwrap(),
            instance: Instance {
                deployment: "sample-deployment".into(),
                instance_group: "banana".into(),
                index: Some(2),
                instance_id: "abc".into(),
                az: "z3".into(),
                ip: "10.244.0.12".into(),
            },
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(workload::serve(listener, router(&args)));
        let body: serde_json::Value = reqwest::get(format!("http://{addr}/get?x=1"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["instance"]["instance_group"], "banana");
        assert_eq!(body["instance"]["index"], 2);
        assert_eq!(body["instance"]["ip"], "10.244.0.12");
        assert_eq!(body["args"]["x"], "1");
        assert_eq!(body["origin"], "127.0.0.1");
        assert!(
            body.get("caller").is_none(),
            "no mutual TLS, no caller: {body}"
        );
        let client = reqwest::Client::new();
        let body: serde_json::Value = client
            .post(format!("http://{addr}/post"))
            .header(
                "x-forwarded-client-cert",
                "By=spiffe://boshy/deployment/d/instance_group/banana;Hash=ab;\
                 URI=spiffe://boshy/deployment/d/instance_group/apricot",
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            body["caller"],
            "spiffe://boshy/deployment/d/instance_group/apricot"
        );
        let status = reqwest::get(format!("http://{addr}/status/503"))
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 503);
    }
}
