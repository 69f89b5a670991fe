//! The control plane's xDS metrics through the real ADS server on loopback: a stream that
//! NACKs a cluster and then ACKs the next catalog's clusters shows as pushes, a NACK naming
//! the cluster, an ACK, and the convergence of the snapshot that ACK completes.

use std::sync::Arc;
use std::time::Duration;

use boshy::xds::resources::ResourceType;
use boshy_xds_fleet::estate::estate;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;

const PATIENCE: Duration = Duration::from_secs(10);

/// The value of the sample `line_start` (a name with its labels), if `/metrics` has it.
fn sample(line_start: &str) -> Option<f64> {
    boshy::metrics::global().render().lines().find_map(|line| {
        line.strip_prefix(line_start)?
            .strip_prefix(' ')?
            .parse()
            .ok()
    })
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}:\n{}",
            boshy::metrics::global().render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cds_request(nonce: &str, version: &str, error: Option<String>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "metrics-test".into(),
            ..Node::default()
        }),
        type_url: ResourceType::Cluster.type_url().into(),
        response_nonce: nonce.into(),
        version_info: version.into(),
        error_detail: error.map(|message| Status {
            code: 3,
            message,
            ..Status::default()
        }),
        ..DiscoveryRequest::default()
    }
}

async fn next(responses: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(PATIENCE, responses.next())
        .await
        .expect("a response in time")
        .expect("the stream stays open")
        .expect("a response, not a status")
}

#[tokio::test]
async fn pushes_acks_nacks_and_convergence_are_counted_by_type_and_resource() {
    let (catalog_tx, catalog_rx) = watch::channel(Arc::new(estate(1, 2, 1)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind xDS");
    let address = listener.local_addr().unwrap();
    tokio::spawn(boshy::xds::serve(listener, catalog_rx));
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{address}"))
        .await
        .expect("connect");
    let (requests, outgoing) = mpsc::channel(4);
    requests.send(cds_request("", "", None)).await.unwrap();
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(outgoing))
        .await
        .expect("ADS stream")
        .into_inner();
    let first = next(&mut responses).await;
    let cluster = Cluster::decode(first.resources[0].value.as_slice())
        .expect("a cluster")
        .name;
    let nacks = format!("boshy_xds_nacks_total{{type=\"cds\",resource=\"{cluster}\"}}");
    assert_eq!(sample(&nacks), None);

    // Envoy names the cluster it refused in its message, after the reason's context.
    let message = format!("Error adding/updating cluster(s) {cluster}: invalid something");
    requests
        .send(cds_request(&first.nonce, "", Some(message)))
        .await
        .unwrap();
    eventually("the NACK counted with its cluster", || {
        sample(&nacks) == Some(1.0)
    })
    .await;
    assert!(sample("boshy_xds_pushes_total{type=\"cds\"}").is_some_and(|n| n >= 1.0));
    let converged = || sample("boshy_xds_convergence_seconds_count").unwrap_or(0.0);

    catalog_tx.send_replace(Arc::new(estate(2, 3, 1)));
    let second = next(&mut responses).await;
    assert_eq!(second.resources.len(), 3, "the new catalog's clusters");
    assert_eq!(sample("boshy_xds_acks_total{type=\"cds\"}"), None);
    // What the stream had answered has had time to count; the second snapshot waits for
    // the ACK.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let converged_before = converged();
    requests
        .send(cds_request(&second.nonce, &second.version_info, None))
        .await
        .unwrap();
    eventually("the ACK counted", || {
        sample("boshy_xds_acks_total{type=\"cds\"}") == Some(1.0)
    })
    .await;
    // Only the ACK can complete the second snapshot (a first one the stream saw late may
    // complete with it).
    eventually("the second snapshot converged", || {
        converged() > converged_before
    })
    .await;
}
