//! What no gRPC client would send, sent to the real ADS server on loopback: every stream gets
//! a gRPC status that says what was wrong, and the server goes on serving everyone else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use boshy::xds::bootstrap::AdsMode;
use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use {boshy_xds_fleet::estate::estate, boshy_xds_fleet::fleet::Fleet};

const ADS: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService";

/// (grpc-status, grpc-message as sent, percent-encoded) of one stream that sends `body` to
/// `method` and then waits.
async fn status_of(address: SocketAddr, method: &str, body: &[u8]) -> (String, String) {
    let tcp = TcpStream::connect(address).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("HTTP/2 ready");
    let request = http::Request::post(format!("http://{address}{ADS}/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).expect("send headers");
    send.send_data(Bytes::copy_from_slice(body), false)
        .expect("send body");
    let response = response.await.expect("response headers");
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let (parts, mut body) = response.into_parts();
    // "Trailers-Only": the status comes with the headers.
    let status = match parts.headers.get("grpc-status") {
        Some(_) => parts.headers,
        None => {
            while let Some(data) = body.data().await {
                data.expect("response data");
            }
            body.trailers()
                .await
                .expect("trailers")
                .expect("the stream ends with a status")
        }
    };
    let text = |name: &str| {
        status
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (text("grpc-status"), text("grpc-message"))
}

#[tokio::test]
async fn garbage_streams_get_a_status_naming_the_fault_and_everyone_else_is_still_served() {
    let (_catalog_tx, catalog_rx) = watch::channel(Arc::new(estate(1, 5, 2)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind xDS");
    let address = listener.local_addr().unwrap();
    tokio::spawn(boshy::xds::serve(listener, catalog_rx));

    let (code, message) = status_of(
        address,
        "DeltaAggregatedResources",
        &[0, 0, 0, 0, 2, 0xff, 0xff],
    )
    .await;
    assert_eq!(code, "3", "INVALID_ARGUMENT: {message}");
    assert!(message.starts_with("malformed%20request"), "{message}");

    let (code, message) =
        status_of(address, "StreamAggregatedResources", &[1, 0, 0, 0, 1, 0]).await;
    assert_eq!(code, "12", "UNIMPLEMENTED: {message}");
    assert!(message.contains("compressed"), "{message}");

    let (code, message) = status_of(
        address,
        "DeltaAggregatedResources",
        &[0, 0xff, 0xff, 0xff, 0xff],
    )
    .await;
    assert_eq!(code, "8", "RESOURCE_EXHAUSTED: {message}");
    assert!(message.contains("4294967295%20bytes"), "{message}");

    let (code, message) = status_of(address, "FetchClusters", &[]).await;
    assert_eq!(code, "12", "UNIMPLEMENTED: {message}");
    assert!(message.contains("FetchClusters"), "{message}");

    // Nothing else broke: Envoy-like streams still get the whole estate.
    let started = Instant::now();
    let fleet = Fleet::connect(address, 2, AdsMode::Delta)
        .await
        .expect("streams connect");
    let initial = fleet.settle(started, 4).await.expect("initial sync");
    assert!(initial.iter().any(|r| !r.resources.is_empty()));
}
