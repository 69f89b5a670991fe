//! VMs outside BOSH joining WorkloadGroups (docs/workloads.md), pilot side, on two real
//! `boshy pilot` processes sharing the director simulator: join tokens are an admin's to
//! make; a VM joins from the address its connection comes from and both pilots see the
//! registration (the store is the director's `boshy-workloads` config, re-read on its event);
//! forged, expired, revoked, other-group tokens, a BOSH instance's address and an address of
//! another group are refused with their statuses; a restarted pilot keeps the registration;
//! the VM's certificate speaks for its own registration on the names port, and nothing else
//! on the API; heartbeats make its endpoint healthy, silence takes it out within the TTL, and
//! cost the director no write; leaving removes it everywhere.
//!
//! Everything runs on loopback: the simulator lists its instances in 127.10.0.0/24, and each
//! VM leaves from an address of its own in 127.0.0.0/8.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use boshy_director_sim::{self as sim, SimHandle};
use boshy_lab::pki::PILOT_SERVER_NAME;
use boshy_test_support::uaa::{client_credentials_token, issued_token};
use boshy_test_support::workloads::{
    answer, create_token, join, key_and_csr, listing, post_groups, sim_options, wait_listing,
    Durations, Pilot, Pki, POSTGRES, RABBITMQ, SECRET,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

const TTL_SECONDS: u64 = 3;
const HOSTNAME: &str = "rabbitmq.rabbitmq.legacy.boshy";

/// `POST /configs` requests the director took so far.
async fn config_writes(sim: &SimHandle) -> u64 {
    let requests: Value = reqwest::get(format!("{}/_sim/requests", sim.control_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    requests["by_route"]["POST /configs"].as_u64().unwrap_or(0)
}

/// The address of an instance the director lists.
async fn bosh_address(sim: &SimHandle) -> IpAddr {
    let state: Value = reqwest::get(format!("{}/_sim/state", sim.control_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ip = state["deployments"][0]["instances"][0]["ips"][0]
        .as_str()
        .unwrap();
    ip.parse().unwrap()
}

/// The endpoints of the group's service in `pilot`'s `/v1/registration`.
async fn endpoints(pilot: &Pilot, pki: &Pki, bearer: &str) -> Vec<Value> {
    let client = pki.client(pilot.api, Ipv4Addr::LOCALHOST.into(), None);
    let (_, body) = answer(
        client
            .get(pilot.url("/v1/registration"))
            .bearer_auth(bearer),
    )
    .await;
    let services: Vec<Value> = serde_json::from_str(&body).unwrap();
    let service = services
        .iter()
        .find(|s| s["hostname"] == HOSTNAME)
        .unwrap_or_else(|| panic!("{HOSTNAME} in {body}"));
    assert_eq!(service["workload_group"], RABBITMQ);
    service["endpoints"].as_array().unwrap().clone()
}

async fn wait_endpoint(pilot: &Pilot, pki: &Pki, bearer: &str, healthy: bool) {
    for _ in 0..150 {
        let endpoints = endpoints(pilot, pki, bearer).await;
        if endpoints.len() == 1 && endpoints[0]["healthy"] == healthy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the VM's endpoint never became healthy: {healthy}: {:?}\n{}",
        endpoints(pilot, pki, bearer).await,
        pilot.log_text()
    );
}

fn uri_sans(certificate_pem: &str) -> Vec<String> {
    let pem = Pem::iter_from_buffer(certificate_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, certificate) = x509_parser::parse_x509_certificate(&pem.contents).unwrap();
    let san = certificate.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_join_through_either_pilot_and_the_registration_store_is_shared() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let sim = sim::start(sim_options()).await.unwrap();
    post_groups(&sim).await;
    let durations = Durations {
        ttl_seconds: TTL_SECONDS,
        certificate_ttl_seconds: 3600,
        deregister_after_seconds: None,
    };
    let mut a = Pilot::new(dir.path(), "a", &sim, &pki, durations);
    let b = Pilot::new(dir.path(), "b", &sim, &pki, durations);
    a.wait_ready(&pki).await;
    b.wait_ready(&pki).await;
    let admin = client_credentials_token(&sim, SECRET).await;
    let reader = issued_token(&sim, &["bosh.read"], 600).await;
    // The group is accepted once the rule configs are judged.
    let ready = wait_listing(&a, &pki, &admin, "listing", |l| l["tokens"].is_array()).await;
    assert_eq!(ready["registrations"], json!([]));

    // Tokens are an admin's to make: bosh.read and a mesh client certificate are refused.
    let (status, _) = create_token(&a, &pki, &reader, RABBITMQ, 600).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let with_cert = pki.client(
        a.api,
        Ipv4Addr::LOCALHOST.into(),
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
    );
    let (status, body) = answer(
        with_cert
            .post(a.url("/v1/workloads/tokens"))
            .json(&json!({"group": RABBITMQ})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("bosh.admin"), "{body}");
    let mut created = None;
    for _ in 0..100 {
        let (status, body) = create_token(&a, &pki, &admin, RABBITMQ, 600).await;
        if status == StatusCode::CREATED {
            created = Some(body);
            break;
        }
        // 404 until this pilot judged the rule configs with the group.
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = created.expect("a token for the group");
    let token = created["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("boshy-join."), "{created}");
    assert_eq!(created["settings"]["server_name"], PILOT_SERVER_NAME);
    assert_eq!(created["settings"]["ttl_seconds"], TTL_SECONDS);
    assert_eq!(created["settings"]["ports"]["names"], a.names.port());
    let (status, unknown) = create_token(&a, &pki, &admin, "legacy/nope", 600).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");

    // A VM joins through pilot b with a token pilot a made: b reads the store afresh.
    let vm: IpAddr = Ipv4Addr::new(127, 0, 0, 21).into();
    let (key, csr) = key_and_csr();
    let (status, body) = join(&b, &pki, vm, &token, RABBITMQ, &csr).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", b.log_text());
    let joined: Value = serde_json::from_str(&body).unwrap();
    let id = joined["id"].as_str().unwrap().to_string();
    assert_eq!(joined["address"], "127.0.0.21");
    assert_eq!(joined["deployment"], "legacy");
    assert_eq!(joined["instance"], format!("rabbitmq/{id}"));
    let certificate = joined["certificate"].as_str().unwrap();
    assert_eq!(
        uri_sans(certificate),
        [format!("urn:boshy:workload:legacy:rabbitmq:{id}")]
    );
    assert!(!body.contains("sha256"), "{body}");
    std::fs::write(dir.path().join("vm.pem"), certificate).unwrap();
    std::fs::write(dir.path().join("vm.key"), &key).unwrap();
    let vm_cert = (dir.path().join("vm.pem"), dir.path().join("vm.key"));

    // Both pilots list it; the other learns of it from the director's event.
    for pilot in [&a, &b] {
        let listed = wait_listing(
            pilot,
            &pki,
            &reader,
            "the registration on both pilots",
            |l| l["registrations"].as_array().is_some_and(|r| r.len() == 1),
        )
        .await;
        let registration = &listed["registrations"][0];
        assert_eq!(registration["id"], id.as_str());
        assert_eq!(registration["address"], "127.0.0.21");
        assert_eq!(registration["labels"]["zone"], "dc1");
        let tokens = listed["tokens"].as_array().unwrap();
        assert!(
            !listed.to_string().contains(&token),
            "the secret is shown once"
        );
        assert_eq!(tokens.len(), 1);
        let endpoints = endpoints(pilot, &pki, &reader).await;
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0]["address"], "127.0.0.21");
        assert_eq!(endpoints[0]["instance"], id.as_str());
        assert_eq!(endpoints[0]["labels"]["app"], "rabbitmq");
    }

    // Refusals, each with its status and what was wrong.
    let secret = token.rsplit('.').next().unwrap();
    let forged = token.replace(secret, &"A".repeat(secret.len()));
    let (_, revoked) = create_token(&a, &pki, &admin, RABBITMQ, 600).await;
    let client = pki.client(a.api, Ipv4Addr::LOCALHOST.into(), None);
    let (status, body) = answer(
        client
            .delete(a.url(&format!(
                "/v1/workloads/tokens/{}",
                revoked["id"].as_str().unwrap()
            )))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, postgres) = create_token(&a, &pki, &admin, POSTGRES, 600).await;
    let postgres = postgres["token"].as_str().unwrap().to_string();
    // Made last: every write prunes the tokens past their expiry, and the expired token must
    // still be in the store (refused as expired) when its join comes; no write happens between.
    let (_, expired) = create_token(&a, &pki, &admin, RABBITMQ, 1).await;
    let expired_token = expired["token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let other_vm: IpAddr = Ipv4Addr::new(127, 0, 0, 22).into();
    let cases: [(&str, IpAddr, &str, StatusCode, &str); 8] = [
        (
            &forged,
            other_vm,
            RABBITMQ,
            StatusCode::UNAUTHORIZED,
            "forged",
        ),
        (
            &expired_token,
            other_vm,
            RABBITMQ,
            StatusCode::UNAUTHORIZED,
            "expired",
        ),
        (
            revoked["token"].as_str().unwrap(),
            other_vm,
            RABBITMQ,
            StatusCode::UNAUTHORIZED,
            "revoked",
        ),
        (
            "boshy-join.0123456789abcdef.x",
            other_vm,
            RABBITMQ,
            StatusCode::UNAUTHORIZED,
            "32 bytes",
        ),
        (
            &postgres,
            other_vm,
            RABBITMQ,
            StatusCode::FORBIDDEN,
            "legacy/postgres",
        ),
        (
            &token,
            other_vm,
            "legacy/nope",
            StatusCode::NOT_FOUND,
            "legacy/nope",
        ),
        (
            &token,
            bosh_address(&sim).await,
            RABBITMQ,
            StatusCode::CONFLICT,
            "BOSH instance",
        ),
        (
            &postgres,
            vm,
            POSTGRES,
            StatusCode::CONFLICT,
            "registered into the WorkloadGroup legacy/rabbitmq",
        ),
    ];
    for (token, from, group, status, says) in cases {
        let (_, csr) = key_and_csr();
        let (got, body) = join(&a, &pki, from, token, group, &csr).await;
        assert_eq!((got, body.contains(says)), (status, true), "{says}: {body}");
    }

    // The VM's certificate: no operator access; on the names port, its own registration only.
    let as_vm = |port| pki.client(port, vm, Some((&vm_cert.0, &vm_cert.1)));
    let (status, _) = answer(as_vm(a.api).get(a.url("/v1/registration"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let report = |instance: &str| json!({"deployment": "legacy", "instance": instance, "probe": {"passing": true}});
    let (status, body) = answer(
        as_vm(a.names)
            .post(a.names_url("/v1/names/health"))
            .json(&report("someone-else")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("speaks for no other instance"), "{body}");

    // Heartbeats: its agent's stream and a report every second make it healthy, and cost the
    // director no write.
    let stream = as_vm(a.names)
        .get(a.names_url(&format!("/v1/names/watch?deployment=legacy&instance={id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let reader_task = tokio::spawn(async move {
        let mut stream = stream;
        while let Ok(Some(_)) = stream.chunk().await {}
    });
    let writes_before = config_writes(&sim).await;
    for _ in 0..5 {
        let (status, body) = answer(
            as_vm(a.names)
                .post(a.names_url("/v1/names/health"))
                .json(&report(&id)),
        )
        .await;
        assert!(
            status == StatusCode::NO_CONTENT || status == StatusCode::CONFLICT,
            "{status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    wait_endpoint(&a, &pki, &reader, true).await;
    let listed = listing(&a, &pki, &reader).await;
    assert_eq!(listed["registrations"][0]["state"], "healthy", "{listed}");
    assert!(
        listed["registrations"][0]["last_heartbeat_ms"].is_u64(),
        "{listed}"
    );
    assert_eq!(
        config_writes(&sim).await,
        writes_before,
        "heartbeats write nothing"
    );

    // Silent: out of the Envoys within the TTL.
    reader_task.abort();
    wait_endpoint(&a, &pki, &reader, false).await;
    let listed = listing(&a, &pki, &reader).await;
    assert_eq!(listed["registrations"][0]["state"], "silent", "{listed}");

    // A restarted pilot keeps the registration.
    a.restart();
    a.wait_ready(&pki).await;
    let listed = wait_listing(&a, &pki, &reader, "after a restart", |l| {
        l["registrations"].as_array().is_some_and(|r| r.len() == 1)
    })
    .await;
    assert_eq!(listed["registrations"][0]["id"], id.as_str());

    // Leaving removes it at once, on both pilots.
    let (status, body) = answer(as_vm(b.api).post(b.url("/v1/workloads/leave"))).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", b.log_text());
    for pilot in [&a, &b] {
        wait_listing(pilot, &pki, &reader, "gone after leave", |l| {
            l["registrations"].as_array().is_some_and(|r| r.is_empty())
        })
        .await;
    }
    let (status, body) = answer(as_vm(b.api).post(b.url("/v1/workloads/leave"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // An operator removes a registration: bosh.admin only.
    let (_, csr) = key_and_csr();
    let (status, body) = join(&a, &pki, other_vm, &token, RABBITMQ, &csr).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let other_id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/workloads/registrations/{other_id}");
    let (status, _) = answer(client.delete(b.url(&path)).bearer_auth(&reader)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = answer(client.delete(a.url(&path)).bearer_auth(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for pilot in [&a, &b] {
        wait_listing(
            pilot,
            &pki,
            &reader,
            "gone after an operator's delete",
            |l| l["registrations"].as_array().is_some_and(|r| r.is_empty()),
        )
        .await;
    }

    let metrics = answer(client.get(a.url("/metrics")).bearer_auth(&reader))
        .await
        .1;
    for line in metrics.lines().filter(|l| l.starts_with("boshy_workload")) {
        println!("{line}");
    }
    for secret in [&token, &forged] {
        assert!(!a.log_text().contains(secret.as_str()) && !b.log_text().contains(secret.as_str()));
    }
}
