//! The push fan-out load client against the real ADS server, in-process on loopback, at
//! smoke size: what each simulated Envoy receives for a catalog change, delta and state of
//! the world. (`scripts/bench push` runs the same client at 1,000 and 5,000 streams.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use boshy::xds::bootstrap::AdsMode;
use boshy::xds::resources::ResourceType;
use boshy_xds_fleet::estate::{estate, Change};
use boshy_xds_fleet::fleet::{Fleet, Received};
use tokio::net::TcpListener;
use tokio::sync::watch;

const STREAMS: usize = 20;
const SERVICES: usize = 30;
const INSTANCES: usize = 3;

/// Starts a server on the estate, connects the fleet and waits for its initial sync.
async fn synced_fleet(
    mode: AdsMode,
) -> (
    watch::Sender<Arc<boshy::catalog::model::Catalog>>,
    Fleet,
    Vec<Received>,
) {
    let catalog = estate(1, SERVICES, INSTANCES);
    let (catalog_tx, catalog_rx) = watch::channel(Arc::new(catalog));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind xDS");
    let address = listener.local_addr().unwrap();
    tokio::spawn(boshy::xds::serve(listener, catalog_rx));
    let started = Instant::now();
    let fleet = Fleet::connect(address, STREAMS, mode)
        .await
        .expect("streams connect");
    let initial = fleet.settle(started, 4).await.expect("initial sync");
    (catalog_tx, fleet, initial)
}

/// Makes `change` to the catalog; returns what the fleet received once every stream got
/// responses of `types` resource types.
async fn push(
    catalog_tx: &watch::Sender<Arc<boshy::catalog::model::Catalog>>,
    fleet: &Fleet,
    change: Change,
    types: usize,
) -> Vec<Received> {
    let changed = change.apply(&catalog_tx.borrow(), INSTANCES);
    let at = Instant::now();
    catalog_tx.send_replace(Arc::new(changed));
    fleet.settle(at, types).await.expect("every stream updated")
}

/// Per stream: (type, resources, removed) of every response, in arrival order.
fn by_stream(received: &[Received]) -> BTreeMap<usize, Vec<(ResourceType, usize, usize)>> {
    let mut streams: BTreeMap<usize, Vec<(ResourceType, usize, usize)>> = BTreeMap::new();
    for r in received {
        streams.entry(r.stream).or_default().push((
            r.resource_type,
            r.resources.len(),
            r.removed.len(),
        ));
    }
    streams
}

/// Every stream ends up with the whole estate, whatever the order of its responses.
fn assert_whole_estate(initial: &[Received]) {
    for (stream, responses) in by_stream(initial) {
        let count = |t: ResourceType| -> usize {
            initial
                .iter()
                .filter(|r| r.stream == stream && r.resource_type == t)
                .flat_map(|r| r.resources.iter())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        assert_eq!(count(ResourceType::Cluster), SERVICES, "{responses:?}");
        assert_eq!(count(ResourceType::Endpoint), SERVICES, "{responses:?}");
        // One per VIP:port, and `outbound`.
        assert_eq!(count(ResourceType::Listener), SERVICES + 1, "{responses:?}");
        assert_eq!(count(ResourceType::Route), SERVICES, "{responses:?}");
    }
}

#[tokio::test]
async fn delta_an_endpoint_change_sends_each_stream_exactly_one_cluster_load_assignment() {
    let (catalog_tx, fleet, initial) = synced_fleet(AdsMode::Delta).await;
    assert_whole_estate(&initial);

    let pushed = push(&catalog_tx, &fleet, Change::Endpoint, 1).await;

    assert_eq!(pushed.len(), STREAMS, "one response per stream: {pushed:?}");
    for response in &pushed {
        assert_eq!(response.resource_type, ResourceType::Endpoint);
        assert_eq!(response.resources, [Change::endpoint_cluster()]);
        assert!(response.removed.is_empty());
    }
}

#[tokio::test]
async fn delta_a_new_service_sends_only_its_own_four_resources() {
    let (catalog_tx, fleet, _) = synced_fleet(AdsMode::Delta).await;
    let pushed = push(&catalog_tx, &fleet, Change::Service, 4).await;
    for (stream, mut responses) in by_stream(&pushed) {
        responses.sort();
        assert_eq!(
            responses,
            [
                (ResourceType::Cluster, 1, 0),
                (ResourceType::Endpoint, 1, 0),
                (ResourceType::Listener, 1, 0),
                (ResourceType::Route, 1, 0),
            ],
            "stream {stream}"
        );
    }
}

#[tokio::test]
async fn state_of_the_world_an_endpoint_change_resends_every_cluster_load_assignment() {
    let (catalog_tx, fleet, initial) = synced_fleet(AdsMode::Sotw).await;
    assert_whole_estate(&initial);

    let pushed = push(&catalog_tx, &fleet, Change::Endpoint, 1).await;

    assert_eq!(pushed.len(), STREAMS, "one response per stream: {pushed:?}");
    for response in &pushed {
        assert_eq!(response.resource_type, ResourceType::Endpoint);
        assert_eq!(
            response.resources.len(),
            SERVICES,
            "the whole EDS set again"
        );
    }
}
