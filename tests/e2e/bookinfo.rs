//! Bookinfo, in the lab of `tests/e2e.rs`: the lab's bookinfo deployment
//! (fixtures/director/bookinfo.yml) on VMs with the real agent, DNAT rules and Envoy, played
//! as docs/bookinfo.md plays it, with `lab rules apply` (as `bosh update-config`), `lab ssh`
//! and curl:
//!
//! - the page is assembled through the mesh: productpage calls details by its mesh name, and
//!   both details instances answer; each reviews version, called by its job's mesh name, shows
//!   its stars (v2 and v3 call ratings through the mesh);
//! - `reviews.bookinfo.boshy`, which the lab's ServiceEntry defines over three instance
//!   groups, resolves to a VIP of its own and is balanced over the three versions without
//!   routes;
//! - each step of Istio's traffic tasks routes as it says, counted over real requests: all to
//!   v1; jason to v2 and everyone else to v1; 50/50 between v2 and v3; a 7 s delay for jason
//!   on ratings (measured, and productpage's 3 s timeout firing); an abort with 500 for jason;
//!   an abort for the calls from reviews v3 alone (`sourceLabels`, a route configuration per
//!   caller); a flaky details instance seen on pages until retries hide it;
//! - the pilot accepts every step; only someone on the VM can make an instance flaky.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::LAB;

const PAGE: &str = "http://bookinfo.productpage.bookinfo.boshy:9080/productpage?u=jason";
const ANONYMOUS_PAGE: &str = "http://bookinfo.productpage.bookinfo.boshy:9080/productpage";
const CLIENT: &str = "bookinfo/productpage/0";

/// `curl -s URL` (with `extra` curl arguments) on `vm`, as JSON.
fn curl_json(vm: &str, extra: &[&str], url: &str) -> Value {
    let mut args = vec!["ssh", vm, "--", "curl", "-sS", "--max-time", "10"];
    args.extend(extra);
    args.push(url);
    let body = LAB.ok(&args);
    serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{url} from {vm}: not JSON ({e}): {body}"))
}

/// `group/index` of the instance that gave `answer`.
fn answered_by(answer: &Value) -> String {
    format!(
        "{}/{}",
        answer["instance"]["instance_group"].as_str().unwrap(),
        answer["instance"]["index"]
    )
}

/// The pilot's verdict on the rule config `name` once it has judged version `id` (any
/// version when `None`).
fn verdict(name: &str, id: Option<&str>) -> Value {
    let pilot = LAB.pilot_ips().into_iter().next().expect("a bosh-pilot VM");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = LAB.api_get(&pilot, "/v1/rules").unwrap_or_default();
        let configs: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
        let judged = configs.iter().find(|c| {
            c["name"] == name && id.is_none_or(|id| c["id"] == id) && !c["verdict"].is_null()
        });
        if let Some(config) = judged {
            return config["verdict"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the pilot never judged {name} ({id:?}): {configs:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `lab rules apply --name NAME fixtures/rules/bookinfo/FILE`; the config's new id.
fn apply(name: &str, file: &str) -> String {
    let path = format!(
        "{}/fixtures/rules/bookinfo/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = LAB.ok(&["rules", "apply", "--name", name, &path]);
    out.split(": id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no id in {out:?}"))
        .to_string()
}

fn assert_accepted(verdict: &Value, what: &str) {
    assert_eq!(verdict["status"], "accepted", "{what}: {verdict}");
    assert_eq!(verdict["errors"], serde_json::json!([]), "{what}");
    assert_eq!(verdict["warnings"], serde_json::json!([]), "{what}");
}

/// `n` answers of `url` from `vm`, curled in one shell loop on the VM (one `lab ssh`, not `n`),
/// with `extra` curl arguments: each as JSON, with `"http_status"` and `"seconds"` (curl's
/// total time) added.
fn curl_many(vm: &str, extra: &str, url: &str, n: usize) -> Vec<Value> {
    let script = format!(
        "for i in $(seq {n}); do curl -sS --max-time 20 {extra} -w '\\n%{{http_code}} %{{time_total}}\\n' '{url}'; done"
    );
    let out = LAB.ok(&["ssh", vm, "--", "sh", "-c", &script]);
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 2 * n, "{n} answers of {url} from {vm}:\n{out}");
    lines
        .chunks(2)
        .map(|pair| {
            let mut answer: Value = serde_json::from_str(pair[0])
                .unwrap_or_else(|_| serde_json::json!({ "body": pair[0] }));
            let (status, seconds) = pair[1].split_once(' ').expect("status and time");
            answer["http_status"] = status.parse::<u16>().expect("status").into();
            answer["seconds"] = seconds.parse::<f64>().expect("time").into();
            answer
        })
        .collect()
}

/// The version of reviews on a page (`error` when the call failed).
fn reviews_version(page: &Value) -> String {
    page["reviews"]["version"]
        .as_str()
        .unwrap_or("error")
        .to_string()
}

/// How many pages (for `user`, or nobody) showed each version of reviews.
fn reviews_versions(user: Option<&str>, n: usize) -> BTreeMap<String, usize> {
    let url = match user {
        Some(user) => {
            format!("http://bookinfo.productpage.bookinfo.boshy:9080/productpage?u={user}")
        }
        None => ANONYMOUS_PAGE.to_string(),
    };
    let mut counts = BTreeMap::new();
    for page in curl_many(CLIENT, "", &url, n) {
        *counts.entry(reviews_version(&page)).or_default() += 1;
    }
    counts
}

/// Applies a step (as `bosh update-config`), waits for the pilot's verdict on it, then until
/// the Envoys on the path route by it (`routed`: each VM's Envoy converges on its own; the
/// deadline bounds a broken run).
fn step(name: &str, file: &str, routed: impl Fn() -> bool) {
    let id = apply(name, file);
    assert_accepted(&verdict(name, Some(&id)), file);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !routed() {
        assert!(
            Instant::now() < deadline,
            "{file}: the mesh never routed by it"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn only(version: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(version.to_string(), n)])
}

/// Plays the bookinfo tasks in the running lab of `tests/e2e.rs`; leaves no instance flaky and
/// the routes and subsets deleted.
pub fn bookinfo_plays_istios_traffic_tasks() {
    // The page, through the mesh, for jason; details from both instances in turn.
    let mut details = BTreeSet::new();
    for _ in 0..6 {
        let page = curl_json(CLIENT, &[], PAGE);
        assert_eq!(page["part"], "productpage");
        assert_eq!(page["user"], "jason");
        assert_eq!(page["details"]["author"], "William Shakespeare", "{page}");
        details.insert(answered_by(&page["details"]));
    }
    assert_eq!(
        details,
        BTreeSet::from(["details/0".to_string(), "details/1".to_string()])
    );

    // Each version of reviews by its own job's name: v1 without stars, v2 and v3 with the
    // stars of ratings, which they call through the mesh.
    for (group, stars) in [
        ("reviews-v1", None),
        ("reviews-v2", Some("black")),
        ("reviews-v3", Some("red")),
    ] {
        let url = format!("http://bookinfo.{group}.bookinfo.boshy:9080/reviews/0");
        let reviews = curl_json(CLIENT, &[], &url);
        assert_eq!(answered_by(&reviews), format!("{group}/0"));
        assert_eq!(reviews["stars"].as_str(), stars, "{reviews}");
        if stars.is_some() {
            assert_eq!(reviews["reviews"][0]["rating"], 5, "{reviews}");
            assert_eq!(answered_by(&reviews["ratings"]), "ratings/0");
        }
    }

    // The ServiceEntry the lab applied: one name and VIP for the three reviews groups, each of
    // whose instances is an endpoint; without routes, round robin over the three versions.
    assert_accepted(&verdict("bookinfo-reviews", None), "bookinfo-reviews");
    let services = LAB.registration();
    let reviews = boshy_test_support::lab::service(&services, "reviews.bookinfo.boshy");
    assert_eq!(reviews["service_entry"], "bookinfo-reviews/reviews");
    assert_eq!(
        reviews["endpoints"].as_array().unwrap().len(),
        3,
        "{reviews}"
    );
    let vip = reviews["vip"].as_str().unwrap();
    assert_eq!(LAB.dig(CLIENT, "reviews.bookinfo.boshy"), vip);
    let round_robin = reviews_versions(None, 30);
    assert_eq!(
        round_robin.keys().collect::<Vec<_>>(),
        ["v1", "v2", "v3"],
        "every version answers: {round_robin:?}"
    );
    assert!(round_robin.values().all(|&n| n >= 5), "{round_robin:?}");

    // Request routing: the subsets, then everyone to v1.
    let id = apply("bookinfo-subsets", "destination-rules.yml");
    assert_accepted(&verdict("bookinfo-subsets", Some(&id)), "bookinfo-subsets");
    step("bookinfo-routes", "all-v1.yml", || {
        reviews_versions(Some("jason"), 10) == only("v1", 10)
    });
    assert_eq!(reviews_versions(Some("jason"), 20), only("v1", 20));
    assert_eq!(reviews_versions(None, 20), only("v1", 20));

    // jason to v2 (black stars), everyone else to v1.
    step("bookinfo-routes", "reviews-jason-v2.yml", || {
        reviews_versions(Some("jason"), 5) == only("v2", 5)
    });
    for page in curl_many(CLIENT, "", PAGE, 10) {
        assert_eq!(page["reviews"]["version"], "v2", "{page}");
        assert_eq!(page["reviews"]["stars"], "black", "{page}");
    }
    assert_eq!(reviews_versions(None, 20), only("v1", 20));

    // 50/50 between v2 and v3, for everyone.
    step("bookinfo-routes", "reviews-v2-v3-50-50.yml", || {
        !reviews_versions(None, 10).contains_key("v1")
    });
    let split = reviews_versions(None, 100);
    println!("reviews v2/v3 50/50 over 100 pages: {split:?}");
    let (v2, v3) = (split.get("v2").copied(), split.get("v3").copied());
    assert_eq!(v2.unwrap_or(0) + v3.unwrap_or(0), 100, "{split:?}");
    // Binomial(100, 0.5): outside 30..=70 once in about 10^5 runs.
    assert!(
        (30..=70).contains(&v2.unwrap_or(0)),
        "v2 got {v2:?} of 100: {split:?}"
    );

    // A 7 s delay on jason's calls to ratings: measured on ratings itself, and on the page,
    // where productpage's 3 s timeout to reviews (v2, waiting for ratings) fires first.
    // Routed once jason's page shows it: the delay is in the Envoy of reviews' VM, which
    // converges on its own (the page's own Envoy may have the step first).
    let timed_out = |page: &Value| {
        page["reviews"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer within 3000 ms"))
    };
    step("bookinfo-routes", "ratings-delay-jason.yml", || {
        reviews_versions(None, 5) == only("v1", 5) && timed_out(&curl_many(CLIENT, "", PAGE, 1)[0])
    });
    let ratings = "http://bookinfo.ratings.bookinfo.boshy:9080/ratings/0";
    let delayed = &curl_many(CLIENT, "-H 'end-user: jason'", ratings, 1)[0];
    assert_eq!(delayed["http_status"], 200, "{delayed}");
    assert!(
        delayed["seconds"].as_f64().unwrap() >= 7.0,
        "jason's ratings call took {}s, not at least the 7s delay",
        delayed["seconds"]
    );
    let fast = &curl_many(CLIENT, "", ratings, 1)[0];
    assert!(fast["seconds"].as_f64().unwrap() < 7.0, "{fast}");
    let page = &curl_many(CLIENT, "", PAGE, 1)[0];
    assert!(page["seconds"].as_f64().unwrap() >= 3.0, "{page}");
    assert_eq!(page["http_status"], 200);
    assert!(
        timed_out(page),
        "productpage's timeout to reviews fired: {page}"
    );

    // An abort with 500 on jason's calls to ratings: reviews v2 shows it, the page answers.
    let aborted = |page: &Value| {
        page["reviews"]["ratings_error"]
            .as_str()
            .is_some_and(|e| e.contains("500"))
    };
    step("bookinfo-routes", "ratings-abort-jason.yml", || {
        curl_many(CLIENT, "-H 'end-user: jason'", ratings, 1)[0]["http_status"] == 500
            && aborted(&curl_many(CLIENT, "", PAGE, 1)[0])
    });
    for answer in curl_many(CLIENT, "-H 'end-user: jason'", ratings, 10) {
        assert_eq!(answer["http_status"], 500, "{answer}");
    }
    for page in curl_many(CLIENT, "", PAGE, 5) {
        assert_eq!(page["http_status"], 200);
        assert_eq!(page["reviews"]["version"], "v2", "{page}");
        assert!(aborted(&page), "{page}");
    }
    assert_eq!(
        curl_many(CLIENT, "", ratings, 5)
            .iter()
            .filter(|a| a["http_status"] == 200)
            .count(),
        5,
        "everyone else's ratings calls pass"
    );

    // Routing by the caller (sourceLabels): ratings aborts the calls that come from reviews
    // v3's VM, whose Envoy alone has that route; v2's calls and productpage's pass.
    let statuses_from = |vm: &str, n| -> Vec<u64> {
        curl_many(vm, "", ratings, n)
            .iter()
            .map(|answer| answer["http_status"].as_u64().unwrap())
            .collect()
    };
    step(
        "bookinfo-routes",
        "ratings-abort-from-reviews-v3.yml",
        || {
            statuses_from("bookinfo/reviews-v3/0", 1) == [503]
                && statuses_from("bookinfo/reviews-v2/0", 1) == [200]
        },
    );
    assert_eq!(statuses_from("bookinfo/reviews-v3/0", 5), [503; 5]);
    assert_eq!(statuses_from("bookinfo/reviews-v2/0", 5), [200; 5]);
    assert_eq!(
        statuses_from(CLIENT, 5),
        [200; 5],
        "nor productpage's calls"
    );
    let mut versions = BTreeSet::new();
    for page in curl_many(CLIENT, "", ANONYMOUS_PAGE, 20) {
        let version = reviews_version(&page);
        match version.as_str() {
            "v2" => assert_eq!(page["reviews"]["stars"], "black", "{page}"),
            "v3" => assert!(
                page["reviews"]["ratings_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("503")),
                "{page}"
            ),
            _ => panic!("reviews split between v2 and v3: {page}"),
        }
        versions.insert(version);
    }
    assert_eq!(versions.len(), 2, "20 pages showed both v2 and v3");

    // A flaky details instance, made so from its own VM (not from another), shows on some
    // pages until retries hide it.
    step("bookinfo-routes", "all-v1.yml", || {
        reviews_versions(Some("jason"), 5) == only("v1", 5)
    });
    let refused = curl_json(
        CLIENT,
        &["-X", "POST"],
        "http://bookinfo.details.bookinfo.boshy:9080/admin/flaky?percent=50",
    );
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("the admin path answers only on the VM itself")),
        "{refused}"
    );
    let flaky = curl_json(
        "bookinfo/details/1",
        &["-X", "POST"],
        "http://127.0.0.1:9080/admin/flaky?percent=50",
    );
    assert_eq!(flaky["flaky"]["percent"], 50);
    let failures = |n| {
        curl_many(CLIENT, "", PAGE, n)
            .iter()
            .filter(|page| {
                assert_eq!(page["http_status"], 200, "the page answers: {page}");
                !page["details"]["error"].is_null()
            })
            .count()
    };
    let without_retries = failures(20);
    assert!(
        (1..20).contains(&without_retries),
        "{without_retries} of 20 pages showed the flaky details instance"
    );
    step("bookinfo-routes", "details-retries.yml", || {
        failures(10) == 0
    });
    assert_eq!(failures(40), 0, "retries hide the flaky instance");
    curl_json(
        "bookinfo/details/1",
        &["-X", "POST"],
        "http://127.0.0.1:9080/admin/flaky?percent=0",
    );

    // The routes and subsets deleted (the pilots drop them at their next full resync: the
    // director writes no event for a delete).
    for name in ["bookinfo-routes", "bookinfo-subsets"] {
        LAB.ok(&["rules", "delete", name]);
    }
}
