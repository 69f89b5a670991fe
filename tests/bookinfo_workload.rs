//! `boshy example-bookinfo`, every part served in this process on 127.0.0.1 and calling the
//! others directly (in the lab, the mesh stands between them): the page is assembled from
//! details, reviews and ratings; the user, the request id and the trace context reach every
//! part; a failing, flaky or slow part is named on a page that still answers 200.
//!
//! The admin path's refusal of non-loopback peers cannot be played here (every peer is
//! loopback); `bookinfo::admin_allowed` is unit-tested.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::Router;
use boshy::bookinfo::{self, Args, Part, Version};
use boshy::workload::Instance;
use serde_json::Value;

/// The arguments of one part, as the bookinfo job template gives them (the instance group is
/// named after the part, as in fixtures/director/bookinfo.yml).
fn args(part: Part, version: Version, group: &str) -> Args {
    Args {
        part,
        version,
        listen: "127.0.0.1:0".parse().unwrap(),
        instance: Instance {
            deployment: "bookinfo".into(),
            instance_group: group.into(),
            index: Some(0),
            instance_id: format!("{group}-0-id"),
            az: "z1".into(),
            ip: "127.0.0.1".into(),
        },
        details_url: None,
        reviews_url: None,
        ratings_url: None,
        upstream_timeout_ms: None,
        check_config: false,
    }
}

/// Serves `router` on an ephemeral loopback port; its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(boshy::workload::serve(listener, router));
    format!("http://{address}")
}

/// The headers of every request `router` received, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<HeaderMap>>>);

impl Seen {
    fn recording(&self, router: Router) -> Router {
        let seen = self.clone();
        router.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                seen.0.lock().unwrap().push(request.headers().clone());
                next.run(request)
            },
        ))
    }

    fn last(&self) -> HeaderMap {
        self.0.lock().unwrap().last().cloned().expect("a request")
    }
}

/// Every part of bookinfo, reviews in version `reviews`; details and ratings record what they
/// receive.
struct Bookinfo {
    productpage: String,
    details: String,
    ratings: String,
    reviews: String,
    details_seen: Seen,
    ratings_seen: Seen,
}

impl Bookinfo {
    async fn start(reviews: Version) -> Bookinfo {
        let details_seen = Seen::default();
        let ratings_seen = Seen::default();
        let details_router =
            bookinfo::router(&args(Part::Details, Version::V1, "details")).unwrap();
        let details = serve(details_seen.recording(details_router)).await;
        let ratings_router =
            bookinfo::router(&args(Part::Ratings, Version::V1, "ratings")).unwrap();
        let ratings = serve(ratings_seen.recording(ratings_router)).await;
        let mut reviews_args = args(Part::Reviews, reviews, "reviews");
        reviews_args.ratings_url = Some(ratings.clone());
        let reviews = serve(bookinfo::router(&reviews_args).unwrap()).await;
        let mut page_args = args(Part::Productpage, Version::V1, "productpage");
        page_args.details_url = Some(details.clone());
        page_args.reviews_url = Some(reviews.clone());
        let productpage = serve(bookinfo::router(&page_args).unwrap()).await;
        Bookinfo {
            productpage,
            details,
            ratings,
            reviews,
            details_seen,
            ratings_seen,
        }
    }
}

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.expect("every answer is JSON"))
}

async fn post(url: &str) -> (u16, Value) {
    let response = reqwest::Client::new().post(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.expect("every answer is JSON"))
}

#[tokio::test]
async fn the_page_is_details_and_reviews_v2_with_ratings_and_every_part_gets_the_user() {
    let bookinfo = Bookinfo::start(Version::V2).await;
    let response = reqwest::Client::new()
        .get(format!("{}/productpage?u=jason", bookinfo.productpage))
        .header("x-request-id", "req-1")
        .header("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("x-not-propagated", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.unwrap();
    assert_eq!(page["part"], "productpage");
    assert_eq!(page["version"], "v1");
    assert_eq!(page["instance"]["instance_group"], "productpage");
    assert_eq!(page["instance"]["id"], "productpage-0-id");
    assert_eq!(page["user"], "jason");
    assert_eq!(page["details"]["part"], "details");
    assert_eq!(page["details"]["author"], "William Shakespeare");
    assert_eq!(page["details"]["instance"]["instance_group"], "details");
    let reviews = &page["reviews"];
    assert_eq!(reviews["part"], "reviews");
    assert_eq!(reviews["version"], "v2");
    assert_eq!(reviews["stars"], "black");
    assert_eq!(reviews["ratings"]["part"], "ratings");
    assert_eq!(reviews["reviews"][0]["rating"], 5);
    assert_eq!(reviews["reviews"][1]["rating"], 4);
    assert!(reviews.get("ratings_error").is_none(), "{reviews}");

    // details directly from productpage, ratings through reviews: both got the user (from
    // ?u=), the request id and the trace context, and nothing else of the request.
    for (part, seen) in [
        ("details", bookinfo.details_seen.last()),
        ("ratings", bookinfo.ratings_seen.last()),
    ] {
        assert_eq!(seen["end-user"], "jason", "{part}");
        assert_eq!(seen["x-request-id"], "req-1", "{part}");
        assert_eq!(
            seen["x-b3-traceid"], "80f198ee56343ba864fe8b2a57d3eff7",
            "{part}"
        );
        assert_eq!(
            seen["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "{part}"
        );
        assert!(seen.get("x-not-propagated").is_none(), "{part}");
    }

    // The end-user header of the request is the user too; without either there is none.
    let response = reqwest::Client::new()
        .get(format!("{}/productpage", bookinfo.productpage))
        .header("end-user", "alice")
        .send()
        .await
        .unwrap();
    let page: Value = response.json().await.unwrap();
    assert_eq!(page["user"], "alice");
    assert_eq!(bookinfo.ratings_seen.last()["end-user"], "alice");
    let (status, page) = get(&format!("{}/productpage", bookinfo.productpage)).await;
    assert_eq!((status, &page["user"]), (200, &Value::Null));
    assert!(bookinfo.details_seen.last().get("end-user").is_none());
}

#[tokio::test]
async fn reviews_v1_shows_no_stars_and_v3_red_ones() {
    let v1 = Bookinfo::start(Version::V1).await;
    let (status, reviews) = get(&format!("{}/reviews/0", v1.reviews)).await;
    assert_eq!(status, 200);
    assert_eq!(reviews["version"], "v1");
    assert!(reviews.get("stars").is_none(), "{reviews}");
    assert!(reviews["reviews"][0].get("rating").is_none(), "{reviews}");
    assert!(
        v1.ratings_seen.0.lock().unwrap().is_empty(),
        "v1 never calls ratings"
    );
    let v3 = Bookinfo::start(Version::V3).await;
    let (_, reviews) = get(&format!("{}/reviews/0", v3.reviews)).await;
    assert_eq!(reviews["stars"], "red");
    assert_eq!(reviews["reviews"][1]["rating"], 4);
    let (status, bad) = get(&format!("{}/reviews/zero", v3.reviews)).await;
    assert_eq!(status, 400);
    assert_eq!(bad["error"], "the product id must be a number");
}

#[tokio::test]
async fn a_flaky_part_is_named_on_a_page_that_still_answers() {
    let bookinfo = Bookinfo::start(Version::V2).await;
    let flaky = |base: &str, query: &str| format!("{base}/admin/flaky{query}");

    // Ratings fails every request: reviews says so and answers; so does the page.
    let (status, set) = post(&flaky(&bookinfo.ratings, "")).await;
    assert_eq!(status, 200);
    assert_eq!(
        set["flaky"],
        serde_json::json!({"percent": 100, "status": 503})
    );
    let (status, reviews) = get(&format!("{}/reviews/0", bookinfo.reviews)).await;
    assert_eq!(status, 200);
    assert_eq!(
        reviews["ratings_error"],
        "ratings: answered 503 Service Unavailable"
    );
    assert_eq!(reviews["stars"], "black");
    assert!(reviews["reviews"][0].get("rating").is_none(), "{reviews}");
    let (status, page) = get(&format!("{}/productpage", bookinfo.productpage)).await;
    assert_eq!(status, 200);
    assert_eq!(
        page["reviews"]["ratings_error"],
        "ratings: answered 503 Service Unavailable"
    );
    let (status, health) = get(&format!("{}/health", bookinfo.ratings)).await;
    assert_eq!((status, &health["status"]), (200, &Value::from("ok")));

    // Half, with another status: every second request, counted from the change.
    post(&flaky(&bookinfo.ratings, "?percent=50&status=500")).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(&format!("{}/ratings/0", bookinfo.ratings)).await.0);
    }
    assert_eq!(statuses, [200, 500, 200, 500, 200, 500]);
    let (status, failed) = get(&format!("{}/ratings/0", bookinfo.ratings)).await;
    assert_eq!(status, 200, "the seventh is a success again");
    assert_eq!(failed["part"], "ratings");
    post(&flaky(&bookinfo.ratings, "?percent=0")).await;
    let (_, page) = get(&format!("{}/productpage", bookinfo.productpage)).await;
    assert!(page["reviews"].get("ratings_error").is_none(), "{page}");

    // A failing details is named with its status, beside the reviews that still came.
    post(&flaky(&bookinfo.details, "?status=502")).await;
    let (status, page) = get(&format!("{}/productpage", bookinfo.productpage)).await;
    assert_eq!(status, 200);
    assert_eq!(page["details"]["status"], 502);
    assert_eq!(
        page["details"]["error"],
        "details: answered 502 Bad Gateway"
    );
    assert_eq!(page["reviews"]["part"], "reviews");

    // What the admin path refuses.
    for (query, error) in [
        ("?percent=101", "percent is 0 to 100"),
        ("?status=99", "status is 200 to 599"),
        ("?status=600", "status is 200 to 599"),
    ] {
        let (status, answer) = post(&flaky(&bookinfo.details, query)).await;
        assert_eq!(
            (status, &answer["error"]),
            (400, &Value::from(error)),
            "{query}"
        );
    }
    let (status, answer) = post(&flaky(&bookinfo.details, "?percent=half")).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("percent"),
        "{answer}"
    );
    let (status, answer) = get(&format!("{}/productpage", bookinfo.details)).await;
    assert_eq!(status, 404);
    assert_eq!(answer["error"], "details serves no /productpage");
}

#[tokio::test]
async fn a_slow_or_absent_part_is_named_once_the_timeout_has_passed() {
    let slow = serve(Router::new().route(
        "/reviews/0",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "too late"
        }),
    ))
    .await;
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut page_args = args(Part::Productpage, Version::V1, "productpage");
    page_args.details_url = Some(format!("http://{closed}"));
    page_args.reviews_url = Some(slow);
    page_args.upstream_timeout_ms = Some(300);
    let productpage = serve(bookinfo::router(&page_args).unwrap()).await;
    let started = std::time::Instant::now();
    let (status, page) = get(&format!("{productpage}/productpage")).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, 200);
    assert_eq!(page["reviews"]["error"], "reviews: no answer within 300 ms");
    assert_eq!(page["reviews"]["status"], Value::Null);
    let details = page["details"]["error"].as_str().unwrap();
    assert!(
        details.starts_with("details: error sending request") && details.contains("onnect"),
        "{details}"
    );
}
