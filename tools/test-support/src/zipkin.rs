//! A Zipkin collector for tests: takes spans on the Zipkin v2 HTTP API
//! (`POST /api/v2/spans`, a JSON array), keeps them, and lets the test read them. No Zipkin
//! server is packaged for this machine; Envoy's Zipkin tracer posts here as it would to
//! Zipkin, Jaeger or an OpenTelemetry collector.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

type Spans = Arc<Mutex<Vec<Value>>>;

/// The collector, listening until dropped.
pub struct Zipkin {
    spans: Spans,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Zipkin {
    /// Listens on `address` (the lab's host address, which the VMs reach).
    pub fn start(address: SocketAddr) -> Zipkin {
        let spans: Spans = Arc::default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(address))
            .unwrap_or_else(|e| panic!("binding the Zipkin collector on {address}: {e}"));
        let router = Router::new()
            .route("/api/v2/spans", post(receive))
            .with_state(spans.clone());
        runtime.spawn(async move { axum::serve(listener, router).await });
        Zipkin {
            spans,
            runtime: Some(runtime),
        }
    }

    /// The spans of trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<Value> {
        self.spans
            .lock()
            .expect("no panic holds the spans")
            .iter()
            .filter(|span| span["traceId"] == trace_id)
            .cloned()
            .collect()
    }

    /// Waits (at most `timeout`) until `done` holds of trace `trace_id`'s spans; panics with
    /// the spans otherwise.
    pub fn wait_for_trace(
        &self,
        trace_id: &str,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.trace(trace_id);
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id} after {timeout:?}: {}",
                serde_json::to_string_pretty(&spans).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// A Zipkin v2 post: an array of span objects, each with a trace id, an id and a local
/// endpoint; anything else is a 400, as Zipkin answers it.
async fn receive(State(spans): State<Spans>, Json(posted): Json<Value>) -> StatusCode {
    let Some(posted) = posted.as_array() else {
        return StatusCode::BAD_REQUEST;
    };
    let well_formed = posted.iter().all(|span| {
        span["traceId"].is_string() && span["id"].is_string() && span["localEndpoint"].is_object()
    });
    if !well_formed {
        return StatusCode::BAD_REQUEST;
    }
    spans
        .lock()
        .expect("no panic holds the spans")
        .extend(posted.iter().cloned());
    StatusCode::ACCEPTED
}

impl Drop for Zipkin {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
