//! Tracing (docs/telemetry.md, "Tracing"), in the lab of `tests/e2e.rs`: the lab's pilots
//! point every Envoy at a Zipkin collector on the host, which this test plays
//! (`boshy_test_support::zipkin`). One request from apricot/3 with B3 headers goes through
//! bookinfo's productpage, which calls details: every hop's Envoys post their spans, all in
//! the caller's trace, each naming the BOSH identities of both sides.

use std::net::SocketAddr;
use std::time::Duration;

use boshy_test_support::zipkin::Zipkin;
use serde_json::Value;

use super::LAB;

const PRODUCTPAGE: &str = "bookinfo.productpage.bookinfo.boshy";
const DETAILS: &str = "bookinfo.details.bookinfo.boshy";

/// The span of `kind` posted by the Envoys of `service` (`<deployment>/<instance group>`)
/// whose name starts with `host`.
fn span<'a>(spans: &'a [Value], kind: &str, service: &str, host: &str) -> Option<&'a Value> {
    spans.iter().find(|span| {
        span["kind"] == kind
            && span["localEndpoint"]["serviceName"] == service
            && span["name"]
                .as_str()
                .is_some_and(|name| name.starts_with(host))
    })
}

fn tag<'a>(span: &'a Value, name: &str) -> &'a str {
    span["tags"][name].as_str().unwrap_or_default()
}

pub(crate) fn a_request_is_one_trace_through_every_service_it_crosses() {
    let subnet: ipnet::Ipv4Net = LAB.subnet.parse().expect("the lab's subnet");
    let host = subnet.hosts().next().expect("the lab's gateway");
    let zipkin = Zipkin::start(SocketAddr::new(host.into(), boshy_lab::ZIPKIN_PORT));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace_id = format!("{:032x}", nanos ^ 0x5eed_0000_0000_0000_0000_0000_0000_0000);
    let trace_header = format!("x-b3-traceid: {trace_id}");
    let page = LAB.http_status(
        "apricot/3",
        &format!("http://{PRODUCTPAGE}:9080/productpage"),
        &[
            &trace_header,
            "x-b3-spanid: a2fb4a1d1a96d312",
            "x-b3-sampled: 1",
        ],
    );
    assert_eq!(page, "200");
    let hops = [
        ("CLIENT", "sample-deployment/apricot", PRODUCTPAGE),
        ("SERVER", "bookinfo/productpage", PRODUCTPAGE),
        ("CLIENT", "bookinfo/productpage", DETAILS),
        ("SERVER", "bookinfo/details", DETAILS),
    ];
    let spans = zipkin.wait_for_trace(&trace_id, Duration::from_secs(30), |spans| {
        hops.iter()
            .all(|(kind, service, host)| span(spans, kind, service, host).is_some())
    });
    let [to_productpage, at_productpage, to_details, at_details] =
        hops.map(|(kind, service, host)| span(&spans, kind, service, host).unwrap());

    // The client spans name the service called by its BOSH names.
    for (client, instance_group) in [(to_productpage, "productpage"), (to_details, "details")] {
        assert_eq!(tag(client, "boshy.destination.deployment"), "bookinfo");
        assert_eq!(
            tag(client, "boshy.destination.instance_group"),
            instance_group
        );
        assert_eq!(tag(client, "boshy.destination.job"), "bookinfo");
    }
    assert_eq!(
        tag(to_productpage, "boshy.destination.service"),
        PRODUCTPAGE
    );
    // The server spans name the caller as its Envoy verified it.
    let apricot = "spiffe://boshy/deployment/sample-deployment/instance_group/apricot";
    let productpage = "spiffe://boshy/deployment/bookinfo/instance_group/productpage";
    assert!(
        tag(at_productpage, "boshy.source.identity").contains(apricot),
        "{at_productpage}"
    );
    assert!(
        tag(at_details, "boshy.source.identity").contains(productpage),
        "{at_details}"
    );
    // One trace, hop by hop: each server span is the child of its caller's client span, and
    // productpage's call to details is the child of the request productpage served.
    assert_eq!(at_productpage["parentId"], to_productpage["id"]);
    assert_eq!(to_details["parentId"], at_productpage["id"]);
    assert_eq!(at_details["parentId"], to_details["id"]);
    // productpage's own call out is not taken for a call in (its port is details' port).
    assert!(
        span(&spans, "SERVER", "bookinfo/productpage", DETAILS).is_none(),
        "{spans:#?}"
    );
    // Every Envoy took every traced listener, the ServiceEntry's too (no BOSH names to tag).
    let proxies: Value =
        serde_json::from_str(&LAB.ok(&["api", "/v1/proxies"])).expect("/v1/proxies is JSON");
    let nacks: Vec<&Value> = proxies["proxies"]
        .as_array()
        .expect("proxies")
        .iter()
        .flat_map(|proxy| proxy["types"].as_object().expect("types").values())
        .filter(|status| !status["last_nack"].is_null())
        .collect();
    assert!(nacks.is_empty(), "NACKs: {nacks:#?}");
}
