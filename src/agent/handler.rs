//! The I/O edge of the agent's DNS: hickory's request handler around the pure [`dns::reply`],
//! the current zone it reads, and the UDP + TCP server.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tracing::warn;

use super::dns::{self, Zone};

/// How long a TCP client may stay idle between queries before the connection is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// The zone being served. Readers take the read lock only long enough to clone an `Arc`; a new
/// table is built outside the lock and swapped in whole, so a query sees the old zone or the new
/// one, never a mix, and building never stalls answering.
#[derive(Debug)]
pub struct ZoneCell(RwLock<Arc<Zone>>);

impl ZoneCell {
    pub fn new(zone: Zone) -> Self {
        ZoneCell(RwLock::new(Arc::new(zone)))
    }

    pub fn current(&self) -> Arc<Zone> {
        // A panic while holding the lock cannot leave a half-written Arc behind.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, zone: Zone) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(zone);
    }
}

/// Answers every request from the current zone.
pub struct DnsHandler {
    zone: Arc<ZoneCell>,
}

impl DnsHandler {
    pub fn new(zone: Arc<ZoneCell>) -> Self {
        DnsHandler { zone }
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let zone = self.zone.current();
        let reply = dns::reply(&zone, request);
        let builder = MessageResponseBuilder::new(&request.queries, reply.edns.as_ref());
        let response = builder.build(reply.metadata, reply.answer.iter(), reply.soa, [], []);
        match response_handle.send_response(response).await {
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

/// Binds UDP and TCP on `listen` and starts answering from `zone`. Binding errors name the
/// address (a port below 1024 needs root or CAP_NET_BIND_SERVICE).
pub async fn serve(listen: SocketAddr, zone: Arc<ZoneCell>) -> Result<Server<DnsHandler>> {
    let udp = tokio::net::UdpSocket::bind(listen)
        .await
        .with_context(|| format!("DNS: cannot bind UDP {listen}"))?;
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("DNS: cannot bind TCP {listen}"))?;
    let mut server = Server::new(DnsHandler::new(zone));
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::Mutex;

    use hickory_server::net::runtime::TokioTime;
    use hickory_server::net::xfer::Protocol;
    use hickory_server::net::NetError;
    use hickory_server::proto::op::{Edns, Message, Query};
    use hickory_server::proto::rr::{Name, RData, Record, RecordType};
    use hickory_server::proto::serialize::binary::BinEncoder;
    use hickory_server::zone_handler::MessageResponse;

    use crate::names::table::NameTable;

    /// Encodes the response the way the server would and keeps the bytes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    #[async_trait::async_trait]
    impl ResponseHandler for Captured {
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
            let mut bytes = Vec::new();
            let info = response.destructive_emit(&mut BinEncoder::new(&mut bytes))?;
            *self.0.lock().unwrap() = bytes;
            Ok(info)
        }
    }

    fn cell(names: &[(&str, Ipv4Addr)]) -> Arc<ZoneCell> {
        let table = NameTable {
            version: 1,
            tld: "boshy".into(),
            names: names.iter().map(|(n, ip)| (n.to_string(), *ip)).collect(),
        };
        let apex = dns::apex_from_tld("boshy").unwrap();
        Arc::new(ZoneCell::new(Zone::build(&apex, 30, &table).0))
    }

    async fn exchange(cell: &Arc<ZoneCell>, query: &Message) -> Message {
        let request = Request::from_bytes(
            query.to_vec().unwrap(),
            "127.0.0.1:5353".parse().unwrap(),
            Protocol::Udp,
        )
        .unwrap();
        let captured = Captured::default();
        DnsHandler::new(cell.clone())
            .handle_request::<_, TokioTime>(&request, captured.clone())
            .await;
        let bytes = captured.0.lock().unwrap().clone();
        Message::from_vec(&bytes).expect("the response decodes")
    }

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut msg = Message::query();
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        msg
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
}
