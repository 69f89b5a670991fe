//! Request metrics on the VM (docs/telemetry.md): the agent takes its Envoy's access log
//! entries over gRPC on a Unix socket and serves them as Prometheus metrics labelled with
//! both sides' BOSH names.
//!
//! - `view` (pure): who each side of a logged connection is, from the name table's origins
//!   and the agent's own instance.
//! - `requests` (pure): the entries counted into labelled families and rendered as text.
//! - this file (I/O): Envoy's access log service on the socket the bootstrap's
//!   `boshy-telemetry` cluster dials (`xds::telemetry` configures what Envoy sends), and
//!   `/metrics` on a loopback port, which Envoy's own metrics listener proxies to the network
//!   behind mutual TLS (`xds::bootstrap`).

pub(crate) mod requests;
pub(crate) mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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

use crate::names::table::NameTable;
use requests::RequestMetrics;
use view::{MeshView, Workload};

/// What the agent's config says about telemetry (`AgentConfig::telemetry`).
pub(crate) struct Settings {
    pub access_log_socket: PathBuf,
    pub metrics_listen: SocketAddr,
    pub max_series: usize,
}

/// The metrics and the view their entries are labelled with, shared by the streams and the
/// metrics endpoint.
struct Shared {
    metrics: Mutex<RequestMetrics>,
    view: watch::Receiver<Arc<MeshView>>,
}

/// Starts the access log server and the metrics endpoint; the view follows `tables`.
pub(crate) async fn start(
    settings: Settings,
    own: Option<Workload>,
    mut tables: watch::Receiver<Arc<NameTable>>,
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
