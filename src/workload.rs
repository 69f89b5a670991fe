//! What the sample workloads (`example-httpbin`, `example-bookinfo`) share: who this BOSH
//! instance is, as its job template passes it from `spec`, and serving a router so that
//! handlers can see the peer's address.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::Router;
use serde::Serialize;

/// The BOSH instance a workload runs as: the job template passes `spec.deployment`,
/// `spec.name`, `spec.index`, `spec.id`, `spec.az` and `spec.ip`. Every answer carries it, so
/// a curl through the mesh shows which instance served it (the load balancing, a subset).
#[derive(clap::Args, Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Instance {
    #[arg(long, default_value = "")]
    pub deployment: String,
    #[arg(long, default_value = "")]
    pub instance_group: String,
    #[arg(long)]
    pub index: Option<u32>,
    /// The director's instance id (uuid).
    #[arg(long = "instance-id", default_value = "")]
    #[serde(rename = "id")]
    pub instance_id: String,
    #[arg(long, default_value = "")]
    pub az: String,
    /// The instance's own IP, as BOSH's `spec.ip` gives it.
    #[arg(long, default_value = "")]
    pub ip: String,
}

/// Serves `router` on `listener` until it fails, with the peer's address available to
/// handlers (`ConnectInfo<SocketAddr>`).
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// Binds `listen` and serves `router` there; `name` is the subcommand, for the log and errors.
pub async fn listen_and_serve(
    name: &str,
    listen: SocketAddr,
    instance: &Instance,
    router: Router,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("{name}: cannot listen on {listen}"))?;
    tracing::info!(%listen, instance_group = %instance.instance_group, index = ?instance.index, "{name} serving");
    serve(listener, router)
        .await
        .with_context(|| format!("{name}: server failed"))
}
