//! Request handling: the response to a DNS request, from the zone being served. No sockets:
//! the [transport](super::transport) receives, calls in here and sends what comes back, as
//! hickory's own servers do with a `RequestHandler`.
//!
//! - [`ZoneCell`]: the zone being served, replaced whole when a new name table arrives.
//! - [`DnsHandler`]: hickory's request handler around the pure [`dns::reply`] (hickory's TCP
//!   server calls it).
//! - [`udp_reply`]: the bytes hickory's UDP server would send for a datagram: the UDP loop's
//!   slow path, and what the [fast path](super::fast_path) must equal byte for byte (see the
//!   tests below).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::proto::op::{
    Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder,
};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tracing::{error, warn};

use super::dns::{self, Zone};
use crate::scope::admission::Admission;

/// The zone being served. Readers take the read lock only long enough to clone an `Arc`; a new
/// table is built outside the lock and swapped in whole, so a query sees the old zone or the new
/// one, never a mix, and building never stalls answering.
#[derive(Debug)]
pub(crate) struct ZoneCell(RwLock<Arc<Zone>>);

impl ZoneCell {
    pub(crate) fn new(zone: Zone) -> Self {
        ZoneCell(RwLock::new(Arc::new(zone)))
    }

    pub(crate) fn current(&self) -> Arc<Zone> {
        // A panic while holding the lock cannot leave a half-written Arc behind.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn replace(&self, zone: Zone) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(zone);
    }
}

/// Answers every request from the current zone; with an admission, a request for a name not
/// in the VM's scope yet first waits for it to be (docs/scope.md).
pub(crate) struct DnsHandler {
    zone: Arc<ZoneCell>,
    admission: Option<Arc<Admission>>,
}

impl DnsHandler {
    #[cfg(test)]
    pub(crate) fn new(zone: Arc<ZoneCell>) -> Self {
        Self::with_admission(zone, None)
    }

    pub(crate) fn with_admission(zone: Arc<ZoneCell>, admission: Option<Arc<Admission>>) -> Self {
        DnsHandler { zone, admission }
    }

    /// Waits until the name `request` asks about is in the VM's scope, when it is a served
    /// name that is not.
    async fn admit(&self, request: &Request) {
        let Some(admission) = &self.admission else {
            return;
        };
        let pending = match request.queries.queries() {
            [query] => self
                .zone
                .current()
                .pending_name(query.original().name())
                .cloned(),
            _ => None,
        };
        if let Some(slot) = pending {
            admission.admit(slot).await;
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // hickory echoes the question as the client sent it. A compression pointer there
        // points into the request's header, which the response changes (the QR bit): the
        // echo would be a name no client can decode. No resolver compresses the question, so
        // such a request is FORMERR, with no question, like one that does not decode.
        let sent = if is_self_contained(request.queries.as_bytes()) {
            self.admit(request).await;
            let zone = self.zone.current();
            let reply = dns::reply(&zone, request);
            let builder = MessageResponseBuilder::new(&request.queries, reply.edns.as_ref());
            let response = builder.build(reply.metadata, reply.answer.iter(), reply.soa, [], []);
            response_handle.send_response(response).await
        } else {
            let no_queries = no_queries();
            let response = MessageResponseBuilder::new(&no_queries, None)
                .error_msg(&request.metadata, ResponseCode::FormErr);
            response_handle.send_response(response).await
        };
        match sent {
            Ok(info) => info,
            Err(error) => {
                warn!(%error, client = %request.src(), "could not send a DNS response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// The bytes hickory's UDP server sends for `query` from `client`, or `None` when it sends
/// nothing (shorter than a header, or a response).
pub(crate) async fn udp_reply(
    handler: &DnsHandler,
    query: &[u8],
    client: SocketAddr,
) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(query)).ok()?;
    let capture = UdpEncoded::default();
    match Request::from_bytes(query.to_vec(), client, Protocol::Udp) {
        Ok(request) if request.metadata.message_type == MessageType::Response => return None,
        Ok(request) => {
            handler
                .handle_request::<_, TokioTime>(&request, capture.clone())
                .await;
        }
        Err(_) => {
            // The header decoded but the rest did not: FORMERR with no question, as hickory.
            let no_queries = no_queries();
            let response = MessageResponseBuilder::new(&no_queries, None)
                .error_msg(&header.metadata, ResponseCode::FormErr);
            capture.clone().send_response(response).await.ok()?;
        }
    }
    capture.take()
}

/// An empty question section.
fn no_queries() -> Queries {
    Queries::read(&mut BinDecoder::new(&[]), 0).expect("zero queries always decode")
}

/// Whether a question section, as the client sent it, names everything itself: no label is
/// a compression pointer (or another extended label type) that refers outside it.
fn is_self_contained(questions: &[u8]) -> bool {
    let mut at = 0;
    while at < questions.len() {
        loop {
            let Some(&length) = questions.get(at) else {
                return false;
            };
            if length & 0xC0 != 0 {
                return false;
            }
            at += 1 + usize::from(length);
            if length == 0 {
                break;
            }
        }
        at += 4; // type and class
    }
    at == questions.len()
}

/// Encodes a response as hickory's UDP server does and keeps the bytes.
#[derive(Clone, Default)]
struct UdpEncoded(Arc<Mutex<Option<Vec<u8>>>>);

impl UdpEncoded {
    fn take(&self) -> Option<Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for UdpEncoded {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = encode_for_udp(response)?;
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
        Ok(info)
    }
}

/// hickory's UDP encoding: bounded by the response's EDNS payload size (512 without EDNS,
/// RFC 1035 §4.2.1); a response that cannot be encoded becomes a bare SERVFAIL.
fn encode_for_udp<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> Result<(ResponseInfo, Vec<u8>), NetError> {
    let id = response.metadata().id;
    let max_size = response.edns().map_or(512, |edns| edns.max_payload());
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(max_size);
    match response.destructive_emit(&mut encoder) {
        Ok(info) => Ok((info, bytes)),
        Err(err) => {
            error!(error = %err, id, "could not encode a DNS response; sending SERVFAIL");
            let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
            metadata.response_code = ResponseCode::ServFail;
            let header = Header {
                metadata,
                counts: HeaderCounts::default(),
            };
            Ok((ResponseInfo::from(header), header.to_bytes()?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use hickory_server::proto::op::{Edns, Message, Query};
    use hickory_server::proto::rr::{Name, RData, RecordType};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use crate::names::table::NameTable;
    use crate::virtual_ip_agent::fast_path::MAX_REPLY_LEN;

    fn cell(names: &[(&str, Ipv4Addr)]) -> Arc<ZoneCell> {
        let table = NameTable {
            version: 1,
            tld: "boshy".into(),
            names: names.iter().map(|(n, ip)| (n.to_string(), *ip)).collect(),
            origins: Default::default(),
        };
        let apex = dns::apex_from_tld("boshy").unwrap();
        Arc::new(ZoneCell::new(Zone::build(&apex, 30, &table).0))
    }

    async fn exchange(cell: &Arc<ZoneCell>, query: &Message) -> Message {
        let bytes = udp_reply(
            &DnsHandler::new(cell.clone()),
            &query.to_vec().unwrap(),
            "127.0.0.1:5353".parse().unwrap(),
        )
        .await
        .expect("a response");
        Message::from_vec(&bytes).expect("the response decodes")
    }

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut msg = Message::query();
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        msg
    }

    /// A question whose name is a compression pointer into the header: hickory decodes it,
    /// and would echo it into a response where it points at other bytes.
    #[tokio::test]
    async fn a_compressed_question_is_formerr_with_a_response_that_decodes() {
        let cell = cell(&[("a.b.c.boshy", Ipv4Addr::new(169, 254, 255, 3))]);
        // id 0x0001, flags RD (0x0100: the byte at offset 2 is 0x01, a one-byte label),
        // one question: a 1-byte label "b" then a pointer to offset 2, type A, class IN.
        let query = [
            0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
            0x01, b'b', 0xC0, 0x02, 0x00, 0x01, 0x00, 0x01,
        ];
        assert!(
            Message::from_vec(&query).is_ok(),
            "the request itself decodes"
        );
        let bytes = udp_reply(
            &DnsHandler::new(cell),
            &query,
            "127.0.0.1:5353".parse().unwrap(),
        )
        .await
        .expect("a response");
        let response = Message::from_vec(&bytes).expect("the response decodes");
        assert_eq!(response.metadata.id, 1);
        assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
        assert!(response.queries.is_empty());
    }

    #[test]
    fn self_contained_questions_have_no_pointer_and_end_where_they_should() {
        let plain = [1, b'a', 0, 0, 1, 0, 1];
        assert!(is_self_contained(&plain));
        assert!(is_self_contained(&[]));
        assert!(!is_self_contained(&[1, b'a', 0xC0, 0x0C, 0, 1, 0, 1]));
        assert!(!is_self_contained(&[0x40, 0, 0, 1, 0, 1]));
        assert!(!is_self_contained(&[1, b'a', 0, 0, 1]), "cut short");
    }

    #[tokio::test]
    async fn wire_response_carries_question_answer_and_opt() {
        let cell = cell(&[("a.b.c.boshy", Ipv4Addr::new(169, 254, 255, 3))]);
        let mut msg = query("A.b.C.boshy.", RecordType::A);
        msg.set_edns(Edns::new());
        let response = exchange(&cell, &msg).await;
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.queries[0]
            .name()
            .eq_case(&Name::from_ascii("A.b.C.boshy.").unwrap()));
        assert_eq!(response.answers.len(), 1);
        assert!(response.answers[0]
            .name
            .eq_case(&Name::from_ascii("A.b.C.boshy.").unwrap()));
        assert_eq!(response.answers[0].ttl, 30);
        assert!(
            matches!(response.answers[0].data, RData::A(a) if a.0 == Ipv4Addr::new(169, 254, 255, 3))
        );
        assert!(response.edns.is_some());
    }

    #[tokio::test]
    async fn wire_nxdomain_has_the_soa_in_authority_and_no_opt_unless_asked() {
        let cell = cell(&[]);
        let response = exchange(&cell, &query("x.y.z.boshy.", RecordType::A)).await;
        assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
        assert!(response.metadata.authoritative);
        assert!(response.answers.is_empty());
        assert_eq!(response.authorities.len(), 1);
        assert_eq!(response.authorities[0].record_type(), RecordType::SOA);
        assert!(response.edns.is_none());
    }

    #[tokio::test]
    async fn a_replaced_zone_is_used_by_the_next_query() {
        let cell = cell(&[]);
        let apex = dns::apex_from_tld("boshy").unwrap();
        let table = NameTable {
            version: 2,
            tld: "boshy".into(),
            names: [("n.i.d.boshy".to_string(), Ipv4Addr::new(169, 254, 255, 4))]
                .into_iter()
                .collect(),
            origins: Default::default(),
        };
        cell.replace(Zone::build(&apex, 5, &table).0);
        let response = exchange(&cell, &query("n.i.d.boshy.", RecordType::A)).await;
        assert_eq!(response.answers.len(), 1);
    }

    #[test]
    fn garbage_packets_do_not_decode_into_requests() {
        // The server drops what is shorter than a header and answers FORMERR to the rest before
        // the handler is reached; here: decoding garbage is an error, never a panic.
        let garbage: [&[u8]; 4] = [
            b"",
            b"\x12\x34",
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc",
            &[0xff; 64],
        ];
        for bytes in garbage {
            let decoded = Request::from_bytes(
                bytes.to_vec(),
                "127.0.0.1:5353".parse().unwrap(),
                Protocol::Udp,
            );
            assert!(decoded.is_err(), "{bytes:?}");
        }
    }

    #[tokio::test]
    async fn undecodable_queries_get_formerr_and_responses_get_nothing() {
        let handler = DnsHandler::new(cell(&[]));
        let client = "127.0.0.1:5353".parse().unwrap();
        let formerr = udp_reply(
            &handler,
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc",
            client,
        )
        .await
        .expect("FORMERR");
        assert_eq!(&formerr[..4], &[0x12, 0x34, 0x81, 0x01]);
        assert_eq!(udp_reply(&handler, b"\x12\x34", client).await, None);
        let mut response = query("a.b.c.boshy.", RecordType::A);
        response.metadata.message_type = hickory_server::proto::op::MessageType::Response;
        assert_eq!(
            udp_reply(&handler, &response.to_vec().unwrap(), client).await,
            None
        );
    }

    /// Flips `name`'s letters to upper case at random, as DNS 0x20 clients do.
    fn random_case(rng: &mut StdRng, name: &str) -> String {
        name.chars()
            .map(|c| {
                if rng.gen_bool(0.5) {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    }

    /// A random query: mostly the common case, with every variation the fast path must either
    /// answer exactly as hickory would or leave to hickory.
    fn random_query(rng: &mut StdRng, names: &[String]) -> Vec<u8> {
        let known = &names[rng.gen_range(0..names.len())];
        let name = match rng.gen_range(0..10) {
            0 => format!("nope-{}.{known}", rng.gen_range(0..100)),
            1 => "deployment-1.boshy.".to_string(),
            2 => "example.com.".to_string(),
            _ => format!("{known}."),
        };
        let qtype = match rng.gen_range(0..10) {
            0 => RecordType::AAAA,
            1 => RecordType::TXT,
            _ => RecordType::A,
        };
        let mut msg = Message::query();
        msg.metadata.id = rng.gen();
        msg.add_query(Query::query(
            Name::from_ascii(random_case(rng, &name)).unwrap(),
            qtype,
        ));
        if rng.gen_bool(0.3) {
            let mut edns = Edns::new();
            edns.set_max_payload(rng.gen_range(0..5000));
            edns.set_dnssec_ok(rng.gen_bool(0.2));
            if rng.gen_bool(0.1) {
                edns.set_version(1);
            }
            msg.set_edns(edns);
        }
        let mut bytes = msg.to_vec().unwrap();
        // Any header flags a client may send; opcode and QR too, now and then.
        bytes[2] = rng.gen::<u8>() & if rng.gen_bool(0.9) { 0x07 } else { 0xff };
        bytes[3] = rng.gen();
        if rng.gen_bool(0.02) {
            bytes.push(0);
        }
        bytes
    }

    #[tokio::test]
    async fn fast_path_answers_byte_for_byte_as_the_slow_path() {
        let names: Vec<String> = (0..200)
            .map(|i| format!("svc-{i}.group-{}.deployment-{}.boshy", i % 7, i % 3))
            .collect();
        let entries: Vec<(&str, Ipv4Addr)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), Ipv4Addr::new(169, 254, 1, i as u8)))
            .collect();
        let cell = cell(&entries);
        let handler = DnsHandler::new(cell.clone());
        let zone = cell.current();
        let client = "127.0.0.1:5353".parse().unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        let (mut fast, mut with_edns) = (0, 0);
        let mut reply = [0u8; MAX_REPLY_LEN];
        for _ in 0..5000 {
            let query = random_query(&mut rng, &names);
            let slow = udp_reply(&handler, &query, client).await;
            if let Some(len) = zone.fast_answer(&query, &mut reply) {
                assert_eq!(Some(&reply[..len]), slow.as_deref(), "query {query:02x?}");
                fast += 1;
                with_edns += usize::from(query[11] == 1);
            }
        }
        // Most queries are the common case: the comparison above must have run on them.
        assert!(
            fast > 2000 && with_edns > 500,
            "fast path answered {fast} ({with_edns} EDNS)"
        );
    }
}
