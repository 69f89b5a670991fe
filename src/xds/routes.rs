//! Pure translation of the traffic model's HTTP routes (`crate::traffic::HttpRoute`) into
//! Envoy routes; `resources::route_configuration` puts them, in order, before the default
//! route of a VIP:port.
//!
//! One model route with several matches becomes one Envoy route per match, each with the
//! same action (Envoy's routes have one match each; Istio does the same). What each field
//! maps to:
//! - matches → `RouteMatch`: path (`path`, `prefix`, `safe_regex`, `case_sensitive`),
//!   headers (`HeaderMatcher`: a string matcher, `invert_match` for "does not match",
//!   `present_match`), the method (a matcher on `:method`), query parameters;
//! - forwarding → `RouteAction`: one cluster or `weighted_clusters`, `prefix_rewrite` or
//!   `regex_rewrite`, `host_rewrite_literal`, `timeout`, `retry_policy`,
//!   `request_mirror_policies`, and `hash_policy` when a destination's cluster hashes;
//! - redirect → `RedirectAction`;
//! - fault → the fault filter's config in the route's `typed_per_filter_config` (the filter
//!   is in the listener's chain, doing nothing for routes without one);
//! - header operations → the route's `request_headers_to_add`/`_remove` and
//!   `response_headers_to_add`/`_remove`.

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
    RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, query_parameter_matcher, redirect_action, route, route_action, route_match,
    weighted_cluster, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteMatch, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort, FaultAbort, HttpFault,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent, FractionalPercent};
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;

use super::resources::{destination_cluster, duration, mesh_retry_policy, weighted_clusters};
use crate::catalog::model::Labels;
use crate::traffic::{
    Fault, Forward, HashKey, HeaderCondition, HeaderEdits, HttpAction, HttpMatch, HttpRoute,
    LoadBalancer, Mirror, PathRewrite, Percentage, QueryParamMatch, Redirect, RedirectCode,
    Retries, StringMatch, TrafficRules,
};

/// The HTTP fault injection filter: in the chain of every listener whose routes come from the
/// traffic model, configured by each route that injects a fault.
pub(super) const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// The Envoy routes of one model route for a client that satisfies the `sourceLabels` in
/// `satisfied` and no others: one per match that holds for that client, none when the route
/// has nowhere to send requests (see `Forward`).
pub(super) fn envoy_routes(
    route: &HttpRoute,
    traffic: &TrafficRules,
    satisfied: &[&Labels],
) -> Vec<Route> {
    let action = match &route.action {
        HttpAction::Forward(forward) => match forward_action(forward, traffic) {
            Some(action) => route::Action::Route(action),
            None => return Vec::new(),
        },
        HttpAction::Redirect(redirect) => route::Action::Redirect(redirect_action(redirect)),
    };
    let matches: Vec<RouteMatch> = if route.matches.is_empty() {
        vec![route_match(&HttpMatch::default())]
    } else {
        route
            .matches
            .iter()
            .filter(|m| m.source_labels.is_empty() || satisfied.contains(&&m.source_labels))
            .map(route_match)
            .collect()
    };
    let template = Route {
        name: route.name.clone(),
        action: Some(action),
        typed_per_filter_config: route
            .fault
            .iter()
            .map(|fault| (FAULT_FILTER.to_string(), pack_any(http_fault(fault))))
            .collect(),
        request_headers_to_add: header_values(&route.headers.request),
        request_headers_to_remove: route.headers.request.remove.clone(),
        response_headers_to_add: header_values(&route.headers.response),
        response_headers_to_remove: route.headers.response.remove.clone(),
        ..Default::default()
    };
    matches
        .into_iter()
        .map(|m| Route {
            r#match: Some(m),
            ..template.clone()
        })
        .collect()
}

/// The hash policy of a request to the cluster of `port` (of `subset`) of service `host`:
/// Envoy computes a request's hash on the route, from what the destination's load balancer
/// hashes on. Empty unless that cluster uses a ring hash.
pub(super) fn hash_policy(
    traffic: &TrafficRules,
    host: &str,
    port: u16,
    subset: Option<&str>,
) -> Option<route_action::HashPolicy> {
    use route_action::hash_policy::{ConnectionProperties, Cookie, Header, PolicySpecifier};
    let rules = traffic.services.get(host)?;
    let Some(LoadBalancer::RingHash(key)) = rules.policy(port, subset).load_balancer else {
        return None;
    };
    let policy_specifier = match key {
        HashKey::Header(header_name) => PolicySpecifier::Header(Header {
            header_name,
            regex_rewrite: None,
        }),
        HashKey::Cookie { name, ttl, path } => PolicySpecifier::Cookie(Cookie {
            name,
            ttl: ttl.map(duration),
            path: path.unwrap_or_default(),
            attributes: Vec::new(),
        }),
        HashKey::SourceIp => {
            PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
        }
    };
    Some(route_action::HashPolicy {
        policy_specifier: Some(policy_specifier),
        terminal: false,
    })
}

/// `None` when no destination has a positive weight.
fn forward_action(forward: &Forward, traffic: &TrafficRules) -> Option<RouteAction> {
    let clusters = weighted_clusters(&forward.destinations);
    let cluster_specifier = match clusters.as_slice() {
        [] => return None,
        [(only, _)] => route_action::ClusterSpecifier::Cluster(only.clone()),
        several => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: several
                .iter()
                .map(|(name, weight)| weighted_cluster::ClusterWeight {
                    name: name.clone(),
                    weight: Some(UInt32Value { value: *weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    // One hash policy per route: the first destination's that has one (destinations of one
    // route nearly always share their service's load balancer).
    let hash_policy = forward
        .destinations
        .iter()
        .filter(|d| d.weight > 0)
        .find_map(|d| {
            let d = &d.destination;
            hash_policy(traffic, &d.host, d.port, d.subset.as_deref())
        });
    let rewrite = forward.rewrite.as_ref();
    let path_rewrite = rewrite.and_then(|r| r.path.as_ref());
    Some(RouteAction {
        cluster_specifier: Some(cluster_specifier),
        // No deadline unless the model gives one, as the default route (see there).
        timeout: Some(forward.timeout.map_or_else(Duration::default, duration)),
        retry_policy: retry_policy(forward.retries.as_ref()),
        prefix_rewrite: match path_rewrite {
            Some(PathRewrite::Prefix(prefix)) => prefix.clone(),
            _ => String::new(),
        },
        regex_rewrite: match path_rewrite {
            Some(PathRewrite::Full(path)) => Some(regex_substitution(
                // The whole path, once: anchored, the pattern cannot also match the empty
                // string at its end.
                "^.*$",
                // RE2 reads `\1` in a substitution as a capture group; a literal backslash
                // is `\\`.
                &path.replace('\\', "\\\\"),
            )),
            Some(PathRewrite::Regex {
                pattern,
                substitution,
            }) => Some(regex_substitution(pattern, substitution)),
            Some(PathRewrite::Prefix(_)) | None => None,
        },
        host_rewrite_specifier: rewrite
            .and_then(|r| r.authority.clone())
            .map(route_action::HostRewriteSpecifier::HostRewriteLiteral),
        request_mirror_policies: forward.mirrors.iter().map(mirror_policy).collect(),
        hash_policy: hash_policy.into_iter().collect(),
        ..Default::default()
    })
}

/// The model's retries, on top of the mesh's: a retry always goes to another endpoint than
/// those already tried. 0 attempts is no retry policy at all.
fn retry_policy(retries: Option<&Retries>) -> Option<RetryPolicy> {
    match retries {
        None => Some(mesh_retry_policy()),
        Some(retries) if retries.attempts == 0 => None,
        Some(retries) => Some(RetryPolicy {
            retry_on: retries.retry_on.clone(),
            num_retries: Some(UInt32Value {
                value: retries.attempts,
            }),
            per_try_timeout: retries.per_try_timeout.map(duration),
            retriable_status_codes: retries
                .retriable_status_codes
                .iter()
                .map(|&code| u32::from(code))
                .collect(),
            ..mesh_retry_policy()
        }),
    }
}

fn regex_substitution(pattern: &str, substitution: &str) -> RegexMatchAndSubstitute {
    RegexMatchAndSubstitute {
        pattern: Some(regex(pattern)),
        substitution: substitution.to_string(),
    }
}

fn mirror_policy(mirror: &Mirror) -> route_action::RequestMirrorPolicy {
    route_action::RequestMirrorPolicy {
        cluster: destination_cluster(&mirror.destination),
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(fraction(mirror.percentage)),
            runtime_key: String::new(),
        }),
        ..Default::default()
    }
}

fn redirect_action(redirect: &Redirect) -> RedirectAction {
    use redirect_action::RedirectResponseCode as Code;
    let code = match redirect.code {
        RedirectCode::MovedPermanently => Code::MovedPermanently,
        RedirectCode::Found => Code::Found,
        RedirectCode::SeeOther => Code::SeeOther,
        RedirectCode::TemporaryRedirect => Code::TemporaryRedirect,
        RedirectCode::PermanentRedirect => Code::PermanentRedirect,
    };
    RedirectAction {
        host_redirect: redirect.authority.clone().unwrap_or_default(),
        path_rewrite_specifier: redirect
            .path
            .clone()
            .map(redirect_action::PathRewriteSpecifier::PathRedirect),
        response_code: code as i32,
        ..Default::default()
    }
}

/// `HttpMatch::default()` is every request: the prefix `/`, nothing else.
fn route_match(m: &HttpMatch) -> RouteMatch {
    use route_match::PathSpecifier;
    let path_specifier = match &m.path {
        None => PathSpecifier::Prefix("/".to_string()),
        Some(StringMatch::Exact(path)) => PathSpecifier::Path(path.clone()),
        Some(StringMatch::Prefix(prefix)) => PathSpecifier::Prefix(prefix.clone()),
        Some(StringMatch::Regex(pattern)) => PathSpecifier::SafeRegex(regex(pattern)),
    };
    let method = m.method.as_ref().map(|method| HeaderMatcher {
        name: ":method".to_string(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            string_matcher(method),
        )),
        ..Default::default()
    });
    RouteMatch {
        path_specifier: Some(path_specifier),
        case_sensitive: m.ignore_path_case.then_some(BoolValue { value: false }),
        headers: method
            .into_iter()
            .chain(
                m.headers
                    .iter()
                    .map(|header| header_condition(header.name.clone(), &header.condition)),
            )
            .collect(),
        query_parameters: m.query_params.iter().map(query_parameter).collect(),
        ..Default::default()
    }
}

fn header_condition(name: String, condition: &HeaderCondition) -> HeaderMatcher {
    use header_matcher::HeaderMatchSpecifier;
    let (specifier, invert_match) = match condition {
        HeaderCondition::Matches(value) => (
            HeaderMatchSpecifier::StringMatch(string_matcher(value)),
            false,
        ),
        // Envoy's inverted string match also holds when the header is absent, which is what
        // "does not match" means.
        HeaderCondition::DoesNotMatch(value) => (
            HeaderMatchSpecifier::StringMatch(string_matcher(value)),
            true,
        ),
        HeaderCondition::Present => (HeaderMatchSpecifier::PresentMatch(true), false),
        HeaderCondition::Absent => (HeaderMatchSpecifier::PresentMatch(false), false),
    };
    HeaderMatcher {
        name,
        header_match_specifier: Some(specifier),
        invert_match,
        ..Default::default()
    }
}

fn query_parameter(param: &QueryParamMatch) -> QueryParameterMatcher {
    use query_parameter_matcher::QueryParameterMatchSpecifier;
    QueryParameterMatcher {
        name: param.name.clone(),
        query_parameter_match_specifier: Some(match &param.value {
            Some(value) => QueryParameterMatchSpecifier::StringMatch(string_matcher(value)),
            None => QueryParameterMatchSpecifier::PresentMatch(true),
        }),
    }
}

fn string_matcher(value: &StringMatch) -> StringMatcher {
    use string_matcher::MatchPattern;
    StringMatcher {
        match_pattern: Some(match value {
            StringMatch::Exact(exact) => MatchPattern::Exact(exact.clone()),
            StringMatch::Prefix(prefix) => MatchPattern::Prefix(prefix.clone()),
            StringMatch::Regex(pattern) => MatchPattern::SafeRegex(regex(pattern)),
        }),
        ignore_case: false,
    }
}

/// An RE2 expression (Envoy's only engine, so none is named).
fn regex(pattern: &str) -> RegexMatcher {
    RegexMatcher {
        regex: pattern.to_string(),
        ..Default::default()
    }
}

fn http_fault(fault: &Fault) -> HttpFault {
    HttpFault {
        delay: fault.delay.as_ref().map(|delay| FaultDelay {
            percentage: Some(fraction(delay.percentage)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                delay.duration,
            ))),
        }),
        abort: fault.abort.as_ref().map(|abort| FaultAbort {
            percentage: Some(fraction(abort.percentage)),
            error_type: Some(fault_abort::ErrorType::HttpStatus(u32::from(
                abort.http_status,
            ))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn fraction(percentage: Percentage) -> FractionalPercent {
    FractionalPercent {
        // Envoy reads a numerator above the denominator as all; say so plainly.
        numerator: percentage.per_million.min(1_000_000),
        denominator: fractional_percent::DenominatorType::Million as i32,
    }
}

/// `set` overwrites, `add` appends.
fn header_values(edits: &HeaderEdits) -> Vec<HeaderValueOption> {
    let option = |(key, value): (&String, &String), action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    edits
        .set
        .iter()
        .map(|header| option(header, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(
            edits
                .add
                .iter()
                .map(|(key, value)| option((key, value), HeaderAppendAction::AppendIfExistsOrAdd)),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration as StdDuration;

    use prost::Message;

    use super::*;
    use crate::traffic::testing::to;
    use crate::traffic::{
        FaultAbort as ModelAbort, FaultDelay as ModelDelay, HeaderMatch, HeaderOperations,
        PortPolicies, Rewrite, ServiceRules, TrafficPolicy, WeightedDestination,
    };

    const WEB: &str = "web.banana.sample.boshy";

    fn forward(destinations: Vec<WeightedDestination>) -> Forward {
        Forward {
            destinations,
            ..Default::default()
        }
    }

    fn route(matches: Vec<HttpMatch>, action: HttpAction) -> HttpRoute {
        HttpRoute {
            name: "r".to_string(),
            matches,
            action,
            fault: None,
            headers: HeaderOperations::default(),
        }
    }

    fn forward_route(forward: Forward) -> HttpRoute {
        route(Vec::new(), HttpAction::Forward(forward))
    }

    /// The one Envoy route of a model route with at most one match.
    fn only(route: &HttpRoute, traffic: &TrafficRules) -> Route {
        let [only] = envoy_routes(route, traffic, &[])
            .try_into()
            .expect("one Envoy route");
        only
    }

    fn route_action(route: &Route) -> &RouteAction {
        let Some(route::Action::Route(action)) = &route.action else {
            panic!("a route action: {route:?}")
        };
        action
    }

    fn path(specifier: &str) -> Option<StringMatch> {
        Some(StringMatch::Prefix(specifier.to_string()))
    }

    #[test]
    fn each_match_is_a_route_with_the_same_action_and_source_limited_ones_hold_for_their_clients() {
        let matches = vec![
            HttpMatch {
                path: path("/a"),
                ..Default::default()
            },
            HttpMatch {
                path: path("/b"),
                source_labels: BTreeMap::from([("app".to_string(), "x".to_string())]),
                ..Default::default()
            },
            HttpMatch {
                path: Some(StringMatch::Exact("/c".to_string())),
                ..Default::default()
            },
        ];
        let model = route(
            matches,
            HttpAction::Forward(forward(vec![to(WEB, 80, None, 1)])),
        );
        let paths = |routes: &[Route]| -> Vec<_> {
            routes
                .iter()
                .map(|r| r.r#match.as_ref().unwrap().path_specifier.clone().unwrap())
                .collect()
        };
        let routes = envoy_routes(&model, &TrafficRules::default(), &[]);
        assert_eq!(
            paths(&routes),
            [
                route_match::PathSpecifier::Prefix("/a".into()),
                route_match::PathSpecifier::Path("/c".into()),
            ]
        );
        assert_eq!(routes[0].action, routes[1].action);
        assert!(routes.iter().all(|r| r.name == "r"));
        let app_x = BTreeMap::from([("app".to_string(), "x".to_string())]);
        let app_y = BTreeMap::from([("app".to_string(), "y".to_string())]);
        let for_app_x = envoy_routes(&model, &TrafficRules::default(), &[&app_y, &app_x]);
        assert_eq!(
            paths(&for_app_x),
            [
                route_match::PathSpecifier::Prefix("/a".into()),
                route_match::PathSpecifier::Prefix("/b".into()),
                route_match::PathSpecifier::Path("/c".into()),
            ],
            "a client of app x has the match, in its place"
        );
        assert!(for_app_x[1].r#match.as_ref().unwrap().headers.is_empty());

        let only_limited = route(
            vec![HttpMatch {
                source_labels: BTreeMap::from([("app".to_string(), "x".to_string())]),
                ..Default::default()
            }],
            HttpAction::Forward(forward(vec![to(WEB, 80, None, 1)])),
        );
        assert_eq!(
            envoy_routes(&only_limited, &TrafficRules::default(), &[&app_y]),
            [],
            "not a catch-all: a route whose every match is limited to some clients is gone"
        );
    }

    #[test]
    fn matches_translate_path_headers_method_and_query() {
        use header_matcher::HeaderMatchSpecifier as H;
        use query_parameter_matcher::QueryParameterMatchSpecifier as Q;
        use string_matcher::MatchPattern as P;
        let header = |name: &str, condition| HeaderMatch {
            name: name.to_string(),
            condition,
        };
        let model = route(
            vec![HttpMatch {
                path: Some(StringMatch::Regex("/v[0-9]+/.*".to_string())),
                ignore_path_case: true,
                headers: vec![
                    header(
                        "x-a",
                        HeaderCondition::Matches(StringMatch::Exact("1".into())),
                    ),
                    header(
                        "x-b",
                        HeaderCondition::DoesNotMatch(StringMatch::Prefix("t".into())),
                    ),
                    header("x-c", HeaderCondition::Present),
                    header("x-d", HeaderCondition::Absent),
                ],
                method: Some(StringMatch::Exact("POST".to_string())),
                query_params: vec![
                    QueryParamMatch {
                        name: "q".to_string(),
                        value: Some(StringMatch::Regex("[a-z]+".to_string())),
                    },
                    QueryParamMatch {
                        name: "debug".to_string(),
                        value: None,
                    },
                ],
                source_labels: BTreeMap::new(),
            }],
            HttpAction::Forward(forward(vec![to(WEB, 80, None, 1)])),
        );
        let m = only(&model, &TrafficRules::default()).r#match.unwrap();
        assert_eq!(
            m.path_specifier,
            Some(route_match::PathSpecifier::SafeRegex(regex("/v[0-9]+/.*")))
        );
        assert_eq!(m.case_sensitive, Some(BoolValue { value: false }));
        let headers: Vec<(&str, Option<&H>, bool)> = m
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.as_str(),
                    h.header_match_specifier.as_ref(),
                    h.invert_match,
                )
            })
            .collect();
        let exact = |s: &str| H::StringMatch(string_matcher(&StringMatch::Exact(s.into())));
        assert_eq!(
            headers,
            [
                (":method", Some(&exact("POST")), false),
                ("x-a", Some(&exact("1")), false),
                (
                    "x-b",
                    Some(&H::StringMatch(StringMatcher {
                        match_pattern: Some(P::Prefix("t".into())),
                        ignore_case: false
                    })),
                    true
                ),
                ("x-c", Some(&H::PresentMatch(true)), false),
                ("x-d", Some(&H::PresentMatch(false)), false),
            ]
        );
        let query: Vec<(&str, Option<&Q>)> = m
            .query_parameters
            .iter()
            .map(|q| (q.name.as_str(), q.query_parameter_match_specifier.as_ref()))
            .collect();
        assert_eq!(
            query,
            [
                (
                    "q",
                    Some(&Q::StringMatch(StringMatcher {
                        match_pattern: Some(P::SafeRegex(regex("[a-z]+"))),
                        ignore_case: false
                    }))
                ),
                ("debug", Some(&Q::PresentMatch(true))),
            ]
        );
    }

    #[test]
    fn destinations_are_one_cluster_or_a_weighted_split_and_zero_weights_get_nothing() {
        let no_rules = TrafficRules::default();
        let single = only(
            &forward_route(forward(vec![
                to(WEB, 80, Some("v1"), 0),
                to(WEB, 80, Some("v2"), 3),
            ])),
            &no_rules,
        );
        assert_eq!(
            route_action(&single).cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(
                "outbound|80|v2|web.banana.sample.boshy".into()
            ))
        );
        let split = only(
            &forward_route(forward(vec![
                to(WEB, 80, Some("v1"), 75),
                to(WEB, 80, Some("v2"), 25),
                to("api.banana.sample.boshy", 9000, None, 0),
            ])),
            &no_rules,
        );
        let Some(route_action::ClusterSpecifier::WeightedClusters(split)) =
            &route_action(&split).cluster_specifier
        else {
            panic!("weighted clusters")
        };
        let weights: Vec<(&str, u32)> = split
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight.unwrap().value))
            .collect();
        assert_eq!(
            weights,
            [
                ("outbound|80|v1|web.banana.sample.boshy", 75),
                ("outbound|80|v2|web.banana.sample.boshy", 25)
            ]
        );
        assert_eq!(
            envoy_routes(
                &forward_route(forward(vec![to(WEB, 80, None, 0)])),
                &no_rules,
                &[]
            ),
            [],
            "nowhere to send: left out"
        );
    }

    #[test]
    fn forwarding_carries_rewrite_timeout_retries_and_mirrors() {
        let no_rules = TrafficRules::default();
        let with = |forward: Forward| only(&forward_route(forward), &no_rules);
        let plain = with(forward(vec![to(WEB, 80, None, 1)]));
        let plain = route_action(&plain);
        assert_eq!(plain.timeout, Some(Duration::default()), "no deadline");
        assert_eq!(plain.retry_policy, Some(mesh_retry_policy()));
        assert_eq!(
            (plain.prefix_rewrite.as_str(), &plain.regex_rewrite),
            ("", &None)
        );

        let full = with(Forward {
            rewrite: Some(Rewrite {
                path: Some(PathRewrite::Full(r"/new\path".to_string())),
                authority: Some("other.example".to_string()),
            }),
            timeout: Some(StdDuration::from_millis(1500)),
            retries: Some(Retries {
                attempts: 4,
                per_try_timeout: Some(StdDuration::from_secs(2)),
                retry_on: "5xx,retriable-status-codes".to_string(),
                retriable_status_codes: vec![409],
            }),
            mirrors: vec![Mirror {
                destination: to("shadow.banana.sample.boshy", 80, None, 0).destination,
                percentage: Percentage::percent(10),
            }],
            ..forward(vec![to(WEB, 80, None, 1)])
        });
        let full = route_action(&full);
        assert_eq!(
            full.regex_rewrite,
            Some(regex_substitution("^.*$", r"/new\\path")),
            "the whole path, a literal backslash escaped"
        );
        assert_eq!(
            full.host_rewrite_specifier,
            Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
                "other.example".into()
            ))
        );
        assert_eq!(
            full.timeout,
            Some(Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        let retry = full.retry_policy.as_ref().unwrap();
        assert_eq!(retry.retry_on, "5xx,retriable-status-codes");
        assert_eq!(retry.num_retries, Some(UInt32Value { value: 4 }));
        assert_eq!(
            retry.per_try_timeout,
            Some(Duration {
                seconds: 2,
                nanos: 0
            })
        );
        assert_eq!(retry.retriable_status_codes, [409]);
        assert_eq!(
            retry.retry_host_predicate,
            mesh_retry_policy().retry_host_predicate,
            "retries still go to other endpoints"
        );
        let [mirror] = full.request_mirror_policies.as_slice() else {
            panic!("one mirror")
        };
        assert_eq!(mirror.cluster, "outbound|80||shadow.banana.sample.boshy");
        assert_eq!(
            mirror.runtime_fraction.as_ref().unwrap().default_value,
            Some(FractionalPercent {
                numerator: 100_000,
                denominator: fractional_percent::DenominatorType::Million as i32
            })
        );

        let prefix = with(Forward {
            rewrite: Some(Rewrite {
                path: Some(PathRewrite::Prefix("/v2/".to_string())),
                authority: None,
            }),
            retries: Some(Retries {
                attempts: 0,
                per_try_timeout: None,
                retry_on: "5xx".to_string(),
                retriable_status_codes: Vec::new(),
            }),
            ..forward(vec![to(WEB, 80, None, 1)])
        });
        let prefix = route_action(&prefix);
        assert_eq!(prefix.prefix_rewrite, "/v2/");
        assert_eq!(
            prefix.retry_policy, None,
            "0 attempts: no retries, not even the mesh's"
        );
        assert_eq!(prefix.host_rewrite_specifier, None);
    }

    #[test]
    fn redirects_faults_and_header_operations() {
        let mut redirect = route(
            Vec::new(),
            HttpAction::Redirect(Redirect {
                path: Some("/moved".to_string()),
                authority: Some("new.example".to_string()),
                code: RedirectCode::PermanentRedirect,
            }),
        );
        redirect.fault = Some(Fault {
            delay: Some(ModelDelay {
                duration: StdDuration::from_millis(250),
                percentage: Percentage { per_million: 5 },
            }),
            abort: Some(ModelAbort {
                http_status: 503,
                percentage: Percentage {
                    per_million: 2_000_000,
                },
            }),
        });
        redirect.headers.request.set = BTreeMap::from([("x-set".to_string(), "1".to_string())]);
        redirect.headers.request.add = vec![("x-add".to_string(), "2".to_string())];
        redirect.headers.request.remove = vec!["x-gone".to_string()];
        redirect.headers.response.set = BTreeMap::from([("x-out".to_string(), "3".to_string())]);
        redirect.headers.response.remove = vec!["server".to_string()];
        let envoy = only(&redirect, &TrafficRules::default());
        assert_eq!(
            envoy.action,
            Some(route::Action::Redirect(RedirectAction {
                host_redirect: "new.example".into(),
                path_rewrite_specifier: Some(redirect_action::PathRewriteSpecifier::PathRedirect(
                    "/moved".into()
                )),
                response_code: redirect_action::RedirectResponseCode::PermanentRedirect as i32,
                ..Default::default()
            }))
        );
        let fault = HttpFault::decode(envoy.typed_per_filter_config[FAULT_FILTER].value.as_slice())
            .unwrap();
        let delay = fault.delay.unwrap();
        assert_eq!(
            delay.fault_delay_secifier,
            Some(fault_delay::FaultDelaySecifier::FixedDelay(Duration {
                seconds: 0,
                nanos: 250_000_000
            }))
        );
        assert_eq!(delay.percentage.unwrap().numerator, 5);
        let abort = fault.abort.unwrap();
        assert_eq!(
            abort.error_type,
            Some(fault_abort::ErrorType::HttpStatus(503))
        );
        assert_eq!(
            abort.percentage.unwrap().numerator,
            1_000_000,
            "more than all is all"
        );

        let edits = |options: &[HeaderValueOption]| -> Vec<(String, String, i32)> {
            options
                .iter()
                .map(|o| {
                    let h = o.header.as_ref().unwrap();
                    (h.key.clone(), h.value.clone(), o.append_action)
                })
                .collect()
        };
        let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
        let append = HeaderAppendAction::AppendIfExistsOrAdd as i32;
        assert_eq!(
            edits(&envoy.request_headers_to_add),
            [
                ("x-set".into(), "1".into(), overwrite),
                ("x-add".into(), "2".into(), append)
            ]
        );
        assert_eq!(envoy.request_headers_to_remove, ["x-gone"]);
        assert_eq!(
            edits(&envoy.response_headers_to_add),
            [("x-out".into(), "3".into(), overwrite)]
        );
        assert_eq!(envoy.response_headers_to_remove, ["server"]);

        let no_fault = only(
            &forward_route(forward(vec![to(WEB, 80, None, 1)])),
            &TrafficRules::default(),
        );
        assert!(
            no_fault.typed_per_filter_config.is_empty(),
            "only routes with a fault configure the filter"
        );
    }

    #[test]
    fn routes_to_a_ring_hash_cluster_hash_on_its_key() {
        use route_action::hash_policy::{Cookie, PolicySpecifier};
        let ring = |key| TrafficPolicy {
            load_balancer: Some(LoadBalancer::RingHash(key)),
            ..Default::default()
        };
        let mut rules = ServiceRules {
            policy: PortPolicies {
                all_ports: ring(HashKey::SourceIp),
                by_port: BTreeMap::new(),
            },
            ..Default::default()
        };
        rules.subsets.insert(
            "v1".to_string(),
            crate::traffic::Subset {
                endpoints: Default::default(),
                dns_endpoints: Default::default(),
                policy: PortPolicies {
                    all_ports: ring(HashKey::Cookie {
                        name: "session".to_string(),
                        ttl: Some(StdDuration::from_secs(60)),
                        path: Some("/".to_string()),
                    }),
                    by_port: BTreeMap::new(),
                },
            },
        );
        let traffic = TrafficRules {
            services: BTreeMap::from([(WEB.to_string(), rules)]),
            scope_pins: Vec::new(),
            security: Default::default(),
        };
        let hashes = |destinations| {
            route_action(&only(&forward_route(forward(destinations)), &traffic))
                .hash_policy
                .iter()
                .map(|h| h.policy_specifier.clone().unwrap())
                .collect::<Vec<_>>()
        };
        let session = PolicySpecifier::Cookie(Cookie {
            name: "session".into(),
            ttl: Some(Duration {
                seconds: 60,
                nanos: 0,
            }),
            path: "/".into(),
            attributes: Vec::new(),
        });
        assert_eq!(
            hashes(vec![to(WEB, 80, Some("v1"), 1)]),
            std::slice::from_ref(&session)
        );
        assert_eq!(
            hashes(vec![
                to("other.boshy", 80, None, 1),
                to(WEB, 80, Some("v1"), 1)
            ]),
            [session],
            "the first destination that hashes"
        );
        assert!(matches!(
            hashes(vec![to(WEB, 80, None, 1)]).as_slice(),
            [PolicySpecifier::ConnectionProperties(c)] if c.source_ip
        ));
        assert_eq!(hashes(vec![to("other.boshy", 80, None, 1)]), []);
    }
}
