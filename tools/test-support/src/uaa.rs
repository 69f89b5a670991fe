//! Tokens from the director simulator's UAA, as an operator or the pilot would hold them.

use std::time::Duration;

use boshy_director_sim::SimHandle;
use serde_json::{json, Value};

/// A client of the simulator's director and UAA, trusting its CA alone.
pub fn sim_client(sim: &SimHandle) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A token of the configured client (`pilot`, with `secret`; `bosh.admin`), by UAA's client
/// credentials grant.
pub async fn client_credentials_token(sim: &SimHandle, secret: &str) -> String {
    let body: Value = sim_client(sim)
        .post(format!("{}/oauth/token", sim.uaa_url()))
        .basic_auth("pilot", Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

/// A token signed by the simulator's UAA with `scopes`, valid for `ttl_seconds` (negative:
/// expired that long ago).
pub async fn issued_token(sim: &SimHandle, scopes: &[&str], ttl_seconds: i64) -> String {
    let body: Value = reqwest::Client::new()
        .post(format!("{}/_sim/tokens/issue", sim.control_url()))
        .json(&json!({"scopes": scopes, "ttl_seconds": ttl_seconds}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().unwrap().to_string()
}
