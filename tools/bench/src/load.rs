//! A fixed-rate (open-loop) HTTP load generator: request i is due at start + i/rate whether or
//! not earlier ones have answered, and its latency counts from when it was due, so a slow
//! server cannot hide its queueing by slowing the client down (coordinated omission).
//! Percentiles are exact over every sample (a 20 s run at 1,000/s is 20,000 numbers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::percentile;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The URL to GET.
    #[arg(long)]
    pub url: String,
    /// Requests per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Seconds of load before measuring (connections warm, caches filled).
    #[arg(long, default_value_t = 2)]
    pub warmup_seconds: u64,
}

/// What a load run measured, printed as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadResult {
    pub url: String,
    pub rate: u64,
    pub sent: usize,
    pub ok: usize,
    pub errors: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The figures of a run from its latencies (ms, any order).
pub fn summarize(url: &str, rate: u64, mut latencies: Vec<f64>, errors: usize) -> LoadResult {
    latencies.sort_by(f64::total_cmp);
    let at = |q| percentile(&latencies, q).unwrap_or(f64::NAN);
    LoadResult {
        url: url.to_string(),
        rate,
        sent: latencies.len() + errors,
        ok: latencies.len(),
        errors,
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

/// Sends `rate` GETs per second to `url` for `seconds` (after `warmup` unmeasured seconds).
pub async fn generate(url: &str, rate: u64, seconds: u64, warmup: u64) -> Result<LoadResult> {
    if rate == 0 {
        bail!("--rate must be at least 1 request per second");
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(1024)
        .build()
        .context("building the HTTP client")?;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let total = rate * (warmup + seconds);
    let measured_from = rate * warmup;
    let samples = Arc::new(Mutex::new((
        Vec::with_capacity((rate * seconds) as usize),
        0usize,
    )));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let client = client.clone();
        let url = url.to_string();
        let samples = samples.clone();
        tasks.spawn(async move {
            let outcome = async {
                let response = client.get(&url).send().await?.error_for_status()?;
                response.bytes().await
            }
            .await;
            let latency_ms = due.elapsed().as_secs_f64() * 1000.0;
            if i >= measured_from {
                let mut samples = samples.lock().await;
                match outcome {
                    Ok(_) => samples.0.push(latency_ms),
                    Err(_) => samples.1 += 1,
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let (latencies, errors) = std::mem::take(&mut *samples.lock().await);
    Ok(summarize(url, rate, latencies, errors))
}

pub async fn run(args: Args) -> Result<()> {
    let result = generate(&args.url, args.rate, args.seconds, args.warmup_seconds).await?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_and_percentiles() {
        let latencies: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let result = summarize("http://x", 100, latencies, 3);
        assert_eq!((result.sent, result.ok, result.errors), (103, 100, 3));
        assert_eq!(
            (result.p50_ms, result.p99_ms, result.max_ms),
            (50.0, 99.0, 100.0)
        );
    }

    #[tokio::test]
    async fn a_short_run_against_a_local_server_answers_every_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/get", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let result = generate(&format!("http://{address}/get"), 200, 1, 0)
            .await
            .unwrap();
        assert_eq!(result.errors, 0);
        assert_eq!(result.ok, 200);
        assert!(result.p50_ms <= result.p99_ms);
    }
}
