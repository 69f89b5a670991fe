//! The pilot side of the name-table stream.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::header;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::table::NameTable;
use super::wire::{Message, CONTENT_TYPE, HEARTBEAT_INTERVAL, WATCH_PATH};
use crate::catalog::model::Catalog;

/// Serves `GET /v1/names/watch` until the listener fails. Dropping the future closes every
/// open stream too, so followers notice at once and reconnect elsewhere.
pub async fn serve(
    listener: tokio::net::TcpListener,
    catalog: watch::Receiver<Arc<Catalog>>,
) -> anyhow::Result<()> {
    serve_with_heartbeat(listener, catalog, HEARTBEAT_INTERVAL).await
}

/// Like [`serve`], over mutual TLS: only followers presenting a certificate that `tls`
/// trusts get a stream; the others are refused in the handshake.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    catalog: watch::Receiver<Arc<Catalog>>,
    tls: Arc<rustls::ServerConfig>,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!("names server listening on {local} (mutual TLS)");
    let router = router(catalog, HEARTBEAT_INTERVAL);
    let mut incoming = crate::tls::incoming(listener, tls, "names");
    // The connections belong to this future, as with `serve`: dropping it closes them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = incoming.next() => {
                let stream = accepted.context("the TLS accept loop stopped")??;
                let Ok(peer) = crate::tls::peer_addr(&stream) else { continue };
                connections.spawn(crate::api::serve_connection(stream, peer, router.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

pub(crate) async fn serve_with_heartbeat(
    listener: tokio::net::TcpListener,
    catalog: watch::Receiver<Arc<Catalog>>,
    heartbeat: Duration,
) -> anyhow::Result<()> {
    crate::api::serve_router(listener, router(catalog, heartbeat), "names").await
}

fn router(catalog: watch::Receiver<Arc<Catalog>>, heartbeat: Duration) -> Router {
    Router::new()
        .route(WATCH_PATH, get(watch_names))
        .with_state(WatchConfig { catalog, heartbeat })
}

#[derive(Clone)]
struct WatchConfig {
    catalog: watch::Receiver<Arc<Catalog>>,
    heartbeat: Duration,
}

async fn watch_names(
    State(config): State<WatchConfig>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let stream = NameStream {
        catalog: config.catalog,
        heartbeat: config.heartbeat,
        sent: None,
        _open: OpenStream::new(peer),
    };
    let lines = futures::stream::unfold(stream, |mut stream| async move {
        let line = stream.next_line().await?;
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), stream))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, CONTENT_TYPE)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(lines))
        .expect("static headers are valid")
}

/// One follower's stream: what it has been sent, and when to send next.
struct NameStream {
    catalog: watch::Receiver<Arc<Catalog>>,
    heartbeat: Duration,
    /// The last table sent; `None` until the pilot has a catalog from the director.
    sent: Option<NameTable>,
    _open: OpenStream,
}

impl NameStream {
    /// The next line to send: the table when it differs from what this follower has, else a
    /// heartbeat after `heartbeat` of silence. `None` ends the stream (the pilot is stopping).
    ///
    /// Catalog version 0 is the pilot's placeholder before its first director poll: it is
    /// never sent as a table, because followers would replace a good table with an empty one
    /// every time a pilot restarts. Heartbeats keep the stream alive meanwhile.
    async fn next_line(&mut self) -> Option<Vec<u8>> {
        let deadline = Instant::now() + self.heartbeat;
        loop {
            let table = {
                let catalog = self.catalog.borrow_and_update();
                (catalog.version != 0).then(|| NameTable::from_catalog(&catalog))
            };
            if table.is_some() && table != self.sent {
                self.sent = table;
                return Some(Message::Table(self.sent.clone()?).to_line());
            }
            tokio::select! {
                changed = self.catalog.changed() => changed.ok()?,
                () = tokio::time::sleep_until(deadline) => {
                    let version = self.sent.as_ref().map_or(0, |t| t.version);
                    return Some(Message::Heartbeat(version).to_line());
                }
            }
        }
    }
}

/// Counts the stream in `boshy_names_streams` while it is open and logs its end.
struct OpenStream {
    peer: SocketAddr,
}

impl OpenStream {
    fn new(peer: SocketAddr) -> Self {
        Self::gauge().fetch_add(1, Ordering::Relaxed);
        tracing::info!(%peer, "name-table stream opened");
        OpenStream { peer }
    }

    fn gauge() -> &'static std::sync::atomic::AtomicU64 {
        &crate::metrics::global().names_streams
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        Self::gauge().fetch_sub(1, Ordering::Relaxed);
        tracing::info!(peer = %self.peer, "name-table stream closed");
    }
}
