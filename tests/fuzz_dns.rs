//! Bad input on the agent's DNS request path, fuzzed with proptest (it runs on stable inside
//! `cargo test`; cargo-fuzz would need a nightly toolchain). Two layers:
//!
//! - the pure [`boshy::virtual_ip_agent::dns::reply`] on everything hickory decodes from random and
//!   mutated packets: never a panic, the id echoed, names outside the zone REFUSED;
//! - the real `boshy virtual-ip-agent` binary on a loopback port, over UDP and TCP: random bytes,
//!   mutated queries, hostile hand-made packets (oversized names, compression pointer loops,
//!   ANY/AXFR/IXFR, a hundred questions, EDNS with a 64 KiB UDP size and unknown options),
//!   truncated TCP frames and several queries pipelined on one connection. Every response
//!   decodes, and after every case the agent still answers a good query over UDP and TCP.
//!
//! Each test prints how many cases it ran (`cargo test --test fuzz_dns -- --nocapture`).

use boshy_test_support::dns_agent as agent;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use boshy_test_support::fuzz::runner;
use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use proptest::prelude::*;
use proptest::sample::Index;

use agent::{a_records, query, read_tcp_message, tcp_exchange, tcp_frame, udp_exchange, Agent};
use agent::{HOST, VIP};
use boshy::names::table::NameTable;
use boshy::virtual_ip_agent::dns::{apex_from_tld, reply, Zone};

const QTYPES: [RecordType; 10] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::SOA,
    RecordType::NS,
    RecordType::TXT,
    RecordType::ANY,
    RecordType::AXFR,
    RecordType::IXFR,
    RecordType::PTR,
    RecordType::HTTPS,
];

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9-]{1,20}",
        Just("boshy".to_string()),
        Just("BOSHY".to_string()),
        "[a-z]{63}",
    ]
}

/// Names under the zone (the served one in any case, made-up ones) and outside it.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(HOST.to_string()),
        Just(HOST.to_uppercase()),
        Just("boshy".to_string()),
        prop::collection::vec(label(), 1..6).prop_map(|labels| labels.join(".") + ".boshy"),
        prop::collection::vec(label(), 1..6).prop_map(|labels| labels.join(".")),
    ]
}

/// EDNS: any payload size, version 0 (sometimes 1), unknown options with arbitrary data.
fn edns() -> impl Strategy<Value = Option<Edns>> {
    let options = prop::collection::vec(
        (any::<u16>(), prop::collection::vec(any::<u8>(), 0..64)),
        0..4,
    );
    prop::option::of((any::<u16>(), prop::bool::weighted(0.1), options)).prop_map(|edns| {
        edns.map(|(payload, version_1, options)| {
            let mut edns = Edns::new();
            edns.set_max_payload(payload);
            edns.set_version(u8::from(version_1));
            for (code, data) in options {
                edns.options_mut().insert(EdnsOption::Unknown(code, data));
            }
            edns
        })
    })
}

/// A well-formed query: one or more questions, any type, class IN or CH, maybe EDNS.
fn valid_query() -> impl Strategy<Value = Vec<u8>> {
    let question = (
        name(),
        prop::sample::select(&QTYPES[..]),
        prop::bool::weighted(0.05),
    );
    (
        any::<u16>(),
        prop::collection::vec(question, 1..3),
        edns(),
        prop::bool::weighted(0.05),
    )
        .prop_filter_map("name not encodable", |(id, questions, edns, notify)| {
            let mut message = Message::query();
            message.metadata.id = id;
            if notify {
                message.metadata.op_code = OpCode::Notify;
            }
            for (name, qtype, chaos) in questions {
                let mut q = Query::query(Name::from_ascii(&name).ok()?, qtype);
                if chaos {
                    q.set_query_class(DNSClass::CH);
                }
                message.add_query(q);
            }
            if let Some(edns) = edns {
                message.set_edns(edns);
            }
            message.to_vec().ok()
        })
}

/// A valid query with a few bytes overwritten and perhaps cut short.
fn mutated_query() -> impl Strategy<Value = Vec<u8>> {
    (
        valid_query(),
        prop::collection::vec((any::<Index>(), any::<u8>()), 0..6),
        prop::option::of(any::<Index>()),
    )
        .prop_map(|(mut packet, flips, cut)| {
            for (at, byte) in flips {
                let at = at.index(packet.len());
                packet[at] = byte;
            }
            if let Some(cut) = cut {
                packet.truncate(cut.index(packet.len() + 1));
            }
            packet
        })
}

fn any_packet() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        mutated_query(),
        valid_query(),
    ]
}

fn zone() -> Zone {
    let table = NameTable {
        version: 3,
        tld: "boshy".into(),
        names: BTreeMap::from([(HOST.to_string(), VIP)]),
        origins: Default::default(),
    };
    Zone::build(&apex_from_tld("boshy").unwrap(), 5, &table).0
}

#[test]
fn reply_never_panics_echoes_the_id_and_refuses_names_outside_the_zone() {
    let zone = zone();
    let apex = apex_from_tld("boshy").unwrap();
    let decoded = Cell::new(0u32);
    let cases = Cell::new(0u32);
    runner(20_000)
        .run(&any_packet(), |packet| {
            cases.set(cases.get() + 1);
            let Ok(request) =
                Request::from_bytes(packet, "127.0.0.1:5353".parse().unwrap(), Protocol::Udp)
            else {
                return Ok(());
            };
            decoded.set(decoded.get() + 1);
            let reply = reply(&zone, &request);
            prop_assert_eq!(reply.metadata.id, request.metadata.id);
            prop_assert!(!reply.metadata.recursion_available);
            let rcode = reply.metadata.response_code;
            prop_assert!(
                [
                    ResponseCode::NoError,
                    ResponseCode::NXDomain,
                    ResponseCode::Refused,
                    ResponseCode::NotImp,
                    ResponseCode::FormErr,
                    ResponseCode::BADVERS,
                ]
                .contains(&rcode),
                "unexpected rcode {:?}",
                rcode
            );
            let queries = request.queries.queries();
            if let Some(answer) = &reply.answer {
                prop_assert_eq!(rcode, ResponseCode::NoError);
                prop_assert_eq!(queries.len(), 1);
                prop_assert!(
                    apex.zone_of(&answer.name),
                    "answer {} outside the zone",
                    answer.name
                );
            }
            let plain_query = request.metadata.op_code == OpCode::Query
                && request.edns.as_ref().is_none_or(|e| e.version() == 0);
            if let ([query], true) = (queries, plain_query) {
                if !apex.zone_of(query.original().name()) {
                    prop_assert_eq!(rcode, ResponseCode::Refused, "{}", query.original().name());
                    prop_assert!(reply.answer.is_none() && reply.soa.is_none());
                }
            }
            Ok(())
        })
        .unwrap();
    let (cases, decoded) = (cases.get(), decoded.get());
    println!("reply: {cases} cases, {decoded} decoded by hickory");
    assert!(
        decoded > cases / 3,
        "the generators should mostly make decodable packets"
    );
}

/// Sends `packet`, then a good query, over one UDP socket: the good query must be answered
/// (responses to the fuzz packet, if any, must decode; `udp_exchange` checks that).
fn udp_case(agent: &Agent, socket: &std::net::UdpSocket, packet: &[u8]) {
    socket.send_to(packet, agent.listen).unwrap();
    // An id the fuzz packet does not have, so the answer cannot be confused with its reply.
    let id = match packet {
        [a, b, ..] => u16::from_be_bytes([*a, *b]) ^ 0x8000,
        _ => 1,
    };
    let response = udp_exchange(socket, agent.listen, &query(HOST, RecordType::A, id))
        .unwrap_or_else(|| panic!("no answer after {packet:02x?}:\n{}", agent.log_text()));
    assert_eq!(a_records(&response), [VIP]);
}

#[test]
fn agent_survives_random_and_mutated_udp_packets() {
    let agent = Agent::start();
    let socket = agent::udp_socket(Duration::from_secs(3));
    let cases = Cell::new(0u32);
    runner(5000)
        .run(&any_packet(), |packet| {
            cases.set(cases.get() + 1);
            udp_case(&agent, &socket, &packet);
            Ok(())
        })
        .unwrap();
    agent.assert_still_answers();
    println!("UDP: {} cases against the running agent", cases.get());
}

/// What one TCP connection carries: framed packets (good queries or garbage), maybe cut off
/// in the middle of a frame.
#[derive(Debug, Clone)]
struct TcpCase {
    frames: Vec<Vec<u8>>,
    cut: Option<Index>,
}

fn tcp_case() -> impl Strategy<Value = TcpCase> {
    (
        prop::collection::vec(any_packet(), 1..8),
        prop::option::weighted(0.3, any::<Index>()),
    )
        .prop_map(|(frames, cut)| TcpCase { frames, cut })
}

/// The ids of frames that are good single-question A queries for the served host, which
/// must all be answered, in any order, on the same connection.
fn answerable_ids(frames: &[Vec<u8>]) -> Vec<u16> {
    frames
        .iter()
        .filter_map(|frame| Message::from_vec(frame).ok())
        .filter(|m| {
            m.metadata.op_code == OpCode::Query
                && m.edns.as_ref().is_none_or(|e| e.version() == 0)
                && m.queries.len() == 1
                && m.queries[0].query_type() == RecordType::A
                && m.queries[0].query_class() == DNSClass::IN
                && m.queries[0]
                    .name()
                    .to_ascii()
                    .eq_ignore_ascii_case(&format!("{HOST}."))
        })
        .map(|m| m.metadata.id)
        .collect()
}

fn run_tcp_case(agent: &Agent, case: &TcpCase) {
    let mut bytes: Vec<u8> = case.frames.iter().flat_map(|f| tcp_frame(f)).collect();
    if let Some(cut) = case.cut {
        bytes.truncate(cut.index(bytes.len()));
    }
    let mut stream = TcpStream::connect(agent.listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The agent may close the connection on garbage before it has read everything.
    let _ = stream.write_all(&bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answered: BTreeMap<u16, Message> = BTreeMap::new();
    while let Some(response) = read_tcp_message(&mut stream) {
        answered.insert(response.metadata.id, response);
    }
    if case.cut.is_none() && case.frames.iter().all(|f| Message::from_vec(f).is_ok()) {
        // Nothing broke the framing: every answerable query was answered, correctly.
        for id in answerable_ids(&case.frames) {
            let response = answered
                .get(&id)
                .unwrap_or_else(|| panic!("pipelined query {id} not answered: {case:02x?}"));
            assert_eq!(a_records(response), [VIP], "{response:?}");
        }
    }
}

#[test]
fn agent_survives_tcp_garbage_truncated_frames_and_pipelining() {
    let agent = Agent::start();
    let cases = Cell::new(0u32);
    runner(1000)
        .run(&tcp_case(), |case| {
            cases.set(cases.get() + 1);
            run_tcp_case(&agent, &case);
            agent.assert_still_answers();
            Ok(())
        })
        .unwrap();
    println!("TCP: {} connections against the running agent", cases.get());
}

#[test]
fn pipelined_queries_on_one_connection_are_all_answered() {
    let agent = Agent::start();
    let mut stream = TcpStream::connect(agent.listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let ids: Vec<u16> = (100..150).collect();
    let burst: Vec<u8> = ids
        .iter()
        .flat_map(|id| tcp_frame(&query(HOST, RecordType::A, *id)))
        .collect();
    stream.write_all(&burst).unwrap();
    let mut seen = Vec::new();
    for _ in &ids {
        let response = read_tcp_message(&mut stream).expect("one answer per query");
        assert_eq!(a_records(&response), [VIP]);
        seen.push(response.metadata.id);
    }
    seen.sort_unstable();
    assert_eq!(seen, ids);
}

/// A header for `qdcount` questions (and `arcount` additional records) with id `id`.
fn header(id: u16, qdcount: u16, arcount: u16) -> Vec<u8> {
    let mut bytes = id.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0x01, 0x00]); // a query, RD
    for count in [qdcount, 0, 0, arcount] {
        bytes.extend_from_slice(&count.to_be_bytes());
    }
    bytes
}

fn wire_name(labels: &[&[u8]]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for label in labels {
        bytes.push(label.len() as u8);
        bytes.extend_from_slice(label);
    }
    bytes.push(0);
    bytes
}

const TYPE_A_CLASS_IN: [u8; 4] = [0, 1, 0, 1];

/// Hand-made hostile packets and what the agent may answer to each (`None`: dropping it is
/// fine too; hickory answers FORMERR to what it cannot decode).
fn hostile_packets() -> Vec<(&'static str, Vec<u8>, Vec<ResponseCode>)> {
    let malformed = vec![ResponseCode::FormErr];
    let mut packets = Vec::new();

    // 5 labels of 63 bytes: 320 bytes, above the 255-byte limit of a name.
    let long = [b'a'; 63];
    let mut oversized = header(0x1001, 1, 0);
    oversized.extend(wire_name(&[&long, &long, &long, &long, &long, b"boshy"]));
    oversized.extend(TYPE_A_CLASS_IN);
    packets.push(("oversized name", oversized, malformed.clone()));

    // A label length of 64 is a reserved label type, not a label.
    let mut bad_label = header(0x1002, 1, 0);
    bad_label.push(64);
    bad_label.extend([b'x'; 64]);
    bad_label.push(0);
    bad_label.extend(TYPE_A_CLASS_IN);
    packets.push(("64-byte label", bad_label, malformed.clone()));

    // The name is a pointer to itself (offset 12).
    let mut self_loop = header(0x1003, 1, 0);
    self_loop.extend([0xc0, 0x0c]);
    self_loop.extend(TYPE_A_CLASS_IN);
    packets.push((
        "compression pointer to itself",
        self_loop,
        malformed.clone(),
    ));

    // `a` then a pointer back to the `a`: a.a.a.a... forever.
    let mut label_loop = header(0x1004, 1, 0);
    label_loop.extend([1, b'a', 0xc0, 0x0c]);
    label_loop.extend(TYPE_A_CLASS_IN);
    packets.push((
        "compression loop through a label",
        label_loop,
        malformed.clone(),
    ));

    // Two questions whose names point at each other.
    let mut mutual = header(0x1005, 2, 0);
    mutual.extend([0xc0, 0x12]); // offset 12 → 18
    mutual.extend(TYPE_A_CLASS_IN);
    mutual.extend([0xc0, 0x0c]); // offset 18 → 12
    mutual.extend(TYPE_A_CLASS_IN);
    packets.push(("mutual compression pointers", mutual, malformed.clone()));

    // A pointer past the end of the packet.
    let mut forward = header(0x1006, 1, 0);
    forward.extend([0xc0, 0xff]);
    forward.extend(TYPE_A_CLASS_IN);
    packets.push(("pointer past the end", forward, malformed.clone()));

    // The header claims more questions than there are.
    let mut short = header(0x1007, 3, 0);
    short.extend(wire_name(&[b"boshy"]));
    short.extend(TYPE_A_CLASS_IN);
    packets.push(("qdcount larger than the packet", short, malformed.clone()));

    // A hundred questions: nobody agrees what that means (RFC 9619).
    let host_labels: Vec<&[u8]> = HOST.split('.').map(str::as_bytes).collect();
    let mut hundred = header(0x1008, 100, 0);
    for _ in 0..100 {
        hundred.extend(wire_name(&host_labels));
        hundred.extend(TYPE_A_CLASS_IN);
    }
    packets.push(("a hundred questions", hundred, malformed.clone()));

    for (what, qtype, allowed) in [
        ("ANY", RecordType::ANY, ResponseCode::NotImp),
        ("AXFR", RecordType::AXFR, ResponseCode::Refused),
        ("IXFR", RecordType::IXFR, ResponseCode::Refused),
    ] {
        packets.push((what, query("boshy", qtype, 0x1010), vec![allowed]));
    }
    packets
}

/// Every hostile packet over UDP and over TCP: answered with one of the allowed codes (or
/// FORMERR from the decoder, or dropped), and the agent answers good queries afterwards.
#[test]
fn hostile_packets_are_refused_or_rejected_and_the_agent_keeps_answering() {
    let agent = Agent::start();
    let socket = agent::udp_socket(Duration::from_secs(2));
    for (what, packet, allowed) in hostile_packets() {
        socket.send_to(&packet, agent.listen).unwrap();
        let mut buffer = [0u8; 65535];
        if let Ok((len, _)) = socket.recv_from(&mut buffer) {
            let response = Message::from_vec(&buffer[..len]).expect("the response decodes");
            assert!(
                allowed.contains(&response.metadata.response_code),
                "{what} over UDP: {response:?}"
            );
            assert!(response.answers.is_empty(), "{what}: {response:?}");
        }
        let mut stream = TcpStream::connect(agent.listen).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.write_all(&tcp_frame(&packet));
        let _ = stream.shutdown(std::net::Shutdown::Write);
        if let Some(response) = read_tcp_message(&mut stream) {
            assert!(
                allowed.contains(&response.metadata.response_code),
                "{what} over TCP: {response:?}"
            );
            assert!(response.answers.is_empty(), "{what}: {response:?}");
        }
        agent.assert_still_answers();
    }
}

#[test]
fn edns_with_a_64k_udp_size_and_unknown_options_is_answered_within_1232_bytes() {
    let agent = Agent::start();
    let mut message = Message::query();
    message.metadata.id = 0x2001;
    message.add_query(Query::query(Name::from_ascii(HOST).unwrap(), RecordType::A));
    let mut edns = Edns::new();
    edns.set_max_payload(65535);
    edns.options_mut()
        .insert(EdnsOption::Unknown(65001, vec![0xab; 400]));
    edns.options_mut().insert(EdnsOption::Unknown(15, vec![]));
    message.set_edns(edns);
    let packet = message.to_vec().unwrap();

    let socket = agent::udp_socket(Duration::from_secs(2));
    let response = udp_exchange(&socket, agent.listen, &packet).expect("an answer");
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&response), [VIP]);
    let opt = response.edns.expect("OPT in the response");
    assert!(opt.max_payload() <= 1232, "{}", opt.max_payload());
    assert!(
        opt.options().as_ref().is_empty(),
        "unknown options are not echoed"
    );
    let tcp = tcp_exchange(agent.listen, &packet);
    assert_eq!(a_records(&tcp), [VIP]);

    // EDNS version 1 is BADVERS, without an answer.
    let mut message = Message::from_vec(&packet).unwrap();
    let mut edns = Edns::new();
    edns.set_version(1);
    message.set_edns(edns);
    let response =
        udp_exchange(&socket, agent.listen, &message.to_vec().unwrap()).expect("an answer");
    // BADVERS and BADSIG share the code 16; hickory decodes it as BADSIG.
    assert_eq!(u16::from(response.metadata.response_code), 16);
    assert!(response.answers.is_empty());
}

/// A client that opens a frame and never finishes it must not block other clients.
#[test]
fn a_stalled_tcp_frame_does_not_block_other_clients() {
    let agent = Agent::start();
    let mut stalled = TcpStream::connect(agent.listen).unwrap();
    stalled.write_all(&[0x01, 0x00, 0xab]).unwrap(); // says 256 bytes, sends one
    agent.assert_still_answers();
    stalled
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        !matches!(stalled.read(&mut byte), Ok(1)),
        "no response to half a frame"
    );
}
