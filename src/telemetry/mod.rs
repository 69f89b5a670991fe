//! Request metrics on the VM (docs/telemetry.md): the agent takes its Envoy's access log
//! entries over gRPC on a Unix socket and serves them as Prometheus metrics labelled with
//! both sides' BOSH names.
//!
//! - `view` (pure): who each side of a logged connection is, from the name table's origins
//!   and the agent's own instance.
//! - `requests` (pure): the entries counted into labelled families and rendered as text.
//! - `calls` (pure): the VM's outbound calls per destination over a window, which the agent
//!   sends every pilot for the console's service graph (`console::wire`).
//! - this file (I/O): Envoy's access log service on the socket the bootstrap's
//!   `boshy-telemetry` cluster dials (`xds::telemetry` configures what Envoy sends), and
//!   `/metrics` on a loopback port, which Envoy's own metrics listener proxies to the network
//!   behind mutual TLS (`xds::bootstrap`).

pub(crate) mod calls;
pub(crate) mod requests;
pub(crate) mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::routing::get;
use axum::Router;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::catalog::model::InstanceRef;
use crate::console::wire::{TrafficReport, TRAFFIC_PATH};
use crate::names::table::NameTable;
use requests::RequestMetrics;
use view::{MeshView, Workload};

/// What the agent's config says about telemetry (`AgentConfig::telemetry`).
pub(crate) struct Settings {
    pub access_log_socket: PathBuf,
    pub metrics_listen: SocketAddr,
    pub max_series: usize,
}

/// How long each window of calls the agent reports lasts.
const CALLS_WINDOW: Duration = Duration::from_secs(10);
/// How long a pilot has to take a window.
const CALLS_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the agent reports its VM's calls (the console's service graph): as which instance,
/// to which pilots, with the names stream's TLS.
pub(crate) struct CallsReporting {
    pub instance: InstanceRef,
    pub pilots: Vec<String>,
    pub tls: Option<rustls::ClientConfig>,
}

/// The metrics and the view their entries are labelled with, shared by the streams and the
/// metrics endpoint.
struct Shared {
    metrics: Mutex<RequestMetrics>,
    view: watch::Receiver<Arc<MeshView>>,
}

/// Starts the access log server and the metrics endpoint; the view follows `tables`. With
/// `reporting`, every window of the VM's calls goes to every pilot.
pub(crate) async fn start(
    settings: Settings,
    own: Option<Workload>,
    mut tables: watch::Receiver<Arc<NameTable>>,
    reporting: Option<CallsReporting>,
) -> Result<()> {
    let first = MeshView::new(own.clone(), &tables.borrow_and_update());
    let (view_tx, view) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        while tables.changed().await.is_ok() {
            let view = MeshView::new(own.clone(), &tables.borrow_and_update());
            if view_tx.send(Arc::new(view)).is_err() {
                return;
            }
        }
    });
    let shared = Arc::new(Shared {
        metrics: Mutex::new(RequestMetrics::new(settings.max_series)),
        view,
    });
    let listener =
        crate::fsutil::bind_private_socket(&settings.access_log_socket, "the access log socket")?;
    let socket = settings.access_log_socket.clone();
    let service = AccessLogServiceServer::new(AccessLogs {
        shared: shared.clone(),
    });
    tokio::spawn(async move {
        info!(socket = %socket.display(), "access log server listening");
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await;
        if let Err(err) = served {
            warn!(socket = %socket.display(), "the access log server stopped: {err}");
        }
    });
    let tcp = tokio::net::TcpListener::bind(settings.metrics_listen)
        .await
        .with_context(|| format!("binding the metrics endpoint {}", settings.metrics_listen))?;
    if let Some(reporting) = reporting {
        tokio::spawn(report_calls(shared.clone(), reporting));
    }
    info!(listen = %settings.metrics_listen, "serving request metrics on /metrics");
    let router = Router::new().route(
        "/metrics",
        get(move || async move {
            let text = shared
                .metrics
                .lock()
                .expect("no panic holds the metrics")
                .render();
            (
                [(
                    http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                text,
            )
        }),
    );
    tokio::spawn(crate::api::serve_router(tcp, router, "metrics"));
    Ok(())
}

/// Every [`CALLS_WINDOW`], sends the window's calls to every pilot at once. A quiet VM sends
/// one empty window after its last calls, then nothing: the pilots forget a report that is not
/// renewed.
async fn report_calls(shared: Arc<Shared>, reporting: CallsReporting) {
    let secure = reporting.tls.is_some();
    let client = match crate::names::http_client(reporting.tls) {
        Ok(client) => client,
        Err(err) => return warn!("the calls report has no HTTP client: {err}"),
    };
    let urls: Vec<String> = reporting
        .pilots
        .iter()
        .map(|pilot| format!("{}{TRAFFIC_PATH}", crate::names::base_url(pilot, secure)))
        .collect();
    let mut ticks = tokio::time::interval(CALLS_WINDOW);
    ticks.tick().await;
    let mut began = Instant::now();
    let mut quiet = true;
    // A pilot that refuses is logged when it starts and stops refusing, not every window.
    let mut refusing = vec![false; urls.len()];
    loop {
        ticks.tick().await;
        let calls = shared
            .metrics
            .lock()
            .expect("no panic holds the metrics")
            .take_calls();
        let report = TrafficReport {
            deployment: reporting.instance.deployment.clone(),
            instance: reporting.instance.instance_id.clone(),
            window_ms: began.elapsed().as_millis().max(1) as u64,
            calls,
        };
        began = Instant::now();
        let was_quiet = std::mem::replace(&mut quiet, report.calls.is_empty());
        if quiet && was_quiet {
            continue;
        }
        let sends = urls.iter().map(|url| {
            let sent = client.post(url).json(&report).send();
            async move {
                match tokio::time::timeout(CALLS_TIMEOUT, sent).await {
                    Err(_) => Err(format!("not taken within {CALLS_TIMEOUT:?}")),
                    Ok(Err(err)) => Err(crate::names::error_chain(&err)),
                    Ok(Ok(response)) if response.status().is_success() => Ok(()),
                    Ok(Ok(response)) => Err(format!("the pilot answered {}", response.status())),
                }
            }
        });
        let answers = futures::future::join_all(sends).await;
        for ((url, answer), refused) in urls.iter().zip(answers).zip(refusing.iter_mut()) {
            match answer {
                Err(reason) if !*refused => {
                    *refused = true;
                    warn!(%url, "the calls report was not taken: {reason}");
                }
                Ok(()) if *refused => {
                    *refused = false;
                    info!(%url, "the calls report is taken again");
                }
                _ => {}
            }
        }
    }
}

struct AccessLogs {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl AccessLogService for AccessLogs {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let mut stream = request.into_inner();
        // Envoy names its log on the first message only.
        let mut named = false;
        while let Some(message) = stream.message().await? {
            if let Some(identifier) = &message.identifier {
                named = identifier.log_name == crate::xds::telemetry::LOG_NAME;
                if !named {
                    warn!(log_name = %identifier.log_name, "an access log stream this agent does not count; ignored");
                }
            }
            if !named {
                continue;
            }
            let view = self.shared.view.borrow().clone();
            let mut metrics = self
                .shared
                .metrics
                .lock()
                .expect("no panic holds the metrics");
            match message.log_entries {
                Some(LogEntries::HttpLogs(logs)) => {
                    for entry in &logs.log_entry {
                        metrics.record_http(&view, entry);
                    }
                }
                Some(LogEntries::TcpLogs(logs)) => {
                    for entry in &logs.log_entry {
                        metrics.record_tcp(&view, entry);
                    }
                }
                None => {}
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}
