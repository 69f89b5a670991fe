//! The pure core of the agent's DNS: a [`Zone`] built once per name table, and [`reply`], which
//! computes the response to one request from (zone, request) with no I/O.
//!
//! The agent is authoritative for `<tld>.` only. It never recurses and never forwards: a question
//! outside the zone is REFUSED, so it cannot be used as an open resolver.

use std::collections::HashSet;
use std::sync::Arc;

use hickory_server::proto::op::{Edns, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, NS, SOA};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::zone_handler::MessageRequest;

use super::fast_path::{FastAnswers, MAX_REPLY_LEN};
use crate::names::table::NameTable;
use crate::scope::{Gate, Slot};

/// The UDP payload size the agent advertises in its OPT record (the DNS Flag Day 2020 value).
/// Its answers are a few hundred bytes at most, so it never needs more.
pub(crate) const EDNS_PAYLOAD: u16 = 1232;

/// SOA timers. Nothing transfers this zone, so refresh/retry/expire only need to be plausible;
/// the SOA minimum (the negative-caching TTL) is the zone's TTL so that a name that appears is
/// found as quickly as a changed address is.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86400;

/// One immutable snapshot of the zone `<tld>.`, built once per name table so that answering a
/// query is a hash lookup plus one record.
#[derive(Debug)]
pub struct Zone {
    apex: Name,
    ttl: u32,
    version: u64,
    /// The served hosts with their encoded A answers: the fast path answers from it, and the
    /// slow path looks VIPs up in it (case-insensitively), so each name is held once.
    hosts: FastAnswers,
    /// Names that own no record but have hosts below them (empty non-terminals, e.g.
    /// `banana.sample-deployment.boshy.`). They answer NODATA, not NXDOMAIN: a resolver that
    /// applies NXDOMAIN cuts (RFC 8020) would otherwise hide every host below them.
    interior: HashSet<Name>,
    soa: Record,
    ns: Record,
}

/// A name from the table that the zone does not serve, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedName {
    pub name: String,
    pub reason: String,
}

/// Turns a configured tld (`boshy`, `mesh.internal`, with or without a trailing dot) into the
/// zone apex. The error says what is wrong with it.
pub fn apex_from_tld(tld: &str) -> Result<Name, String> {
    let trimmed = tld.trim_end_matches('.');
    if trimmed.is_empty() {
        return Err("the tld is empty".into());
    }
    for label in trimmed.split('.') {
        if !is_hostname_label(label) {
            return Err(format!(
                "`{tld}` is not a DNS name: label `{label}` must be 1-63 letters, digits or \
                 hyphens, not starting or ending with a hyphen"
            ));
        }
    }
    let mut apex = Name::from_ascii(trimmed).map_err(|err| format!("`{tld}`: {err}"))?;
    apex.set_fqdn(true);
    Ok(apex.to_lowercase())
}

fn is_hostname_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

impl Zone {
    /// Builds the zone for `apex` from a name table, every name answered at once (no scope).
    /// Names the zone cannot serve (not under the apex, not a DNS name) are returned so the
    /// caller can log them; they never stop the rest.
    pub fn build(apex: &Name, ttl: u32, table: &NameTable) -> (Zone, Vec<SkippedName>) {
        Zone::build_gated(apex, ttl, table, &Gate::open())
    }

    /// [`Zone::build`], each name answered at once only while `gate` has it in the VM's scope.
    pub fn build_gated(
        apex: &Name,
        ttl: u32,
        table: &NameTable,
        gate: &Gate,
    ) -> (Zone, Vec<SkippedName>) {
        let mut hosts = FastAnswers::with_capacity(table.names.len());
        let mut interior = HashSet::new();
        let mut skipped = Vec::new();
        for (hostname, vip) in &table.names {
            match host_name(apex, hostname) {
                Ok(name) => {
                    hosts.insert(&name, *vip, ttl, gate.slot(hostname));
                    let mut parent = name.base_name();
                    while parent.num_labels() > apex.num_labels() && interior.insert(parent.clone())
                    {
                        parent = parent.base_name();
                    }
                }
                Err(reason) => skipped.push(SkippedName {
                    name: hostname.clone(),
                    reason,
                }),
            }
        }
        let zone = Zone {
            apex: apex.clone(),
            ttl,
            version: table.version,
            hosts,
            interior,
            soa: soa_record(apex, ttl, table.version),
            ns: Record::from_rdata(
                apex.clone(),
                ttl,
                RData::NS(NS(Name::from_ascii("localhost.").expect("valid name"))),
            ),
        };
        (zone, skipped)
    }

    /// A zone with no hosts: what the agent serves before it has any table.
    pub fn empty(apex: &Name, ttl: u32) -> Zone {
        Zone::build(apex, ttl, &NameTable::default()).0
    }

    /// The number of hostnames served.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The catalog version of the table the zone was built from.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn apex(&self) -> &Name {
        &self.apex
    }

    /// The reply to the common query (see `fast_path`), byte for byte what the slow
    /// path would send; `None` for every other request.
    pub(crate) fn fast_answer(
        &self,
        query: &[u8],
        reply: &mut [u8; MAX_REPLY_LEN],
    ) -> Option<usize> {
        self.hosts.answer(query, reply)
    }

    /// The slot of a served name the query asks about that is not in the VM's scope yet.
    pub(crate) fn pending(&self, query: &[u8]) -> Option<&Arc<Slot>> {
        self.hosts.pending(query)
    }

    /// The slot of `name` when it is served and not in the VM's scope yet.
    pub(crate) fn pending_name(&self, name: &Name) -> Option<&Arc<Slot>> {
        let (_, slot) = self.hosts.vip(name)?;
        (!slot.in_scope()).then_some(slot)
    }

    /// The answer to one question.
    fn lookup(&self, name: &Name, qtype: RecordType, qclass: DNSClass) -> Lookup<'_> {
        if qclass != DNSClass::IN || !self.apex.zone_of(name) {
            return Lookup::refused();
        }
        match qtype {
            // Handing out the whole table is not this server's job.
            RecordType::AXFR | RecordType::IXFR => return Lookup::refused(),
            RecordType::ANY => return Lookup::error(ResponseCode::NotImp),
            _ => {}
        }
        if *name == self.apex {
            return match qtype {
                RecordType::SOA => self.positive(self.soa.clone()),
                RecordType::NS => self.positive(self.ns.clone()),
                _ => self.negative(ResponseCode::NoError),
            };
        }
        if let Some((vip, slot)) = self.hosts.vip(name) {
            slot.mark_asked();
            return match qtype {
                // The owner name is the question's, so the answer echoes its case.
                RecordType::A => {
                    self.positive(Record::from_rdata(name.clone(), self.ttl, RData::A(A(vip))))
                }
                _ => self.negative(ResponseCode::NoError),
            };
        }
        if self.interior.contains(name) {
            return self.negative(ResponseCode::NoError);
        }
        self.negative(ResponseCode::NXDomain)
    }

    fn positive(&self, record: Record) -> Lookup<'_> {
        Lookup {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answer: Some(record),
            soa: None,
        }
    }

    /// NXDOMAIN or NODATA: the SOA goes in the authority section so resolvers can cache the
    /// negative answer (RFC 2308).
    fn negative(&self, rcode: ResponseCode) -> Lookup<'_> {
        Lookup {
            rcode,
            authoritative: true,
            answer: None,
            soa: Some(&self.soa),
        }
    }
}

fn host_name(apex: &Name, hostname: &str) -> Result<Name, String> {
    let mut name = Name::from_ascii(hostname.trim_end_matches('.'))
        .map_err(|err| format!("not a DNS name: {err}"))?;
    name.set_fqdn(true);
    if name.num_labels() <= apex.num_labels() || !apex.zone_of(&name) {
        return Err(format!("not under the zone {apex}"));
    }
    Ok(name)
}

/// The SOA follows the convention of BIND's built-in empty zones (`localhost.` as primary): this
/// zone exists only on the local agent. The serial is the table's catalog version (mod 2^32).
fn soa_record(apex: &Name, ttl: u32, version: u64) -> Record {
    let soa = SOA::new(
        Name::from_ascii("localhost.").expect("valid name"),
        Name::from_ascii("hostmaster.localhost.").expect("valid name"),
        version as u32,
        SOA_REFRESH,
        SOA_RETRY,
        SOA_EXPIRE,
        ttl,
    );
    Record::from_rdata(apex.clone(), ttl, RData::SOA(soa))
}

struct Lookup<'z> {
    rcode: ResponseCode,
    authoritative: bool,
    answer: Option<Record>,
    soa: Option<&'z Record>,
}

impl Lookup<'_> {
    fn refused() -> Self {
        Lookup::error(ResponseCode::Refused)
    }

    fn error(rcode: ResponseCode) -> Self {
        Lookup {
            rcode,
            authoritative: false,
            answer: None,
            soa: None,
        }
    }
}

/// Everything of a response except the question section, which is the request's, verbatim.
#[derive(Debug)]
pub struct Reply<'z> {
    pub metadata: Metadata,
    /// At most one record: an A for a host, or the SOA/NS of the apex.
    pub answer: Option<Record>,
    /// The zone's SOA, for NXDOMAIN and NODATA.
    pub soa: Option<&'z Record>,
    /// Present exactly when the request had an OPT record.
    pub edns: Option<Edns>,
}

/// The response to one request.
pub fn reply<'z>(zone: &'z Zone, request: &MessageRequest) -> Reply<'z> {
    let found = if request.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
        // RFC 6891 §6.1.3: only EDNS version 0 is spoken here.
        Lookup::error(ResponseCode::BADVERS)
    } else if request.metadata.op_code != OpCode::Query {
        Lookup::error(ResponseCode::NotImp)
    } else if let [query] = request.queries.queries() {
        zone.lookup(
            query.original().name(),
            query.query_type(),
            query.query_class(),
        )
    } else {
        // No question, or several: nobody agrees what several would mean (RFC 9619).
        Lookup::error(ResponseCode::FormErr)
    };
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = found.rcode;
    metadata.authoritative = found.authoritative;
    Reply {
        metadata,
        answer: found.answer,
        soa: found.soa,
        edns: request.edns.as_ref().map(response_edns),
    }
}

fn response_edns(query: &Edns) -> Edns {
    let mut edns = Edns::new();
    // hickory bounds the encoded UDP response by this value, so it must not exceed what the
    // client can receive.
    edns.set_max_payload(query.max_payload().clamp(512, EDNS_PAYLOAD));
    edns
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::net::xfer::Protocol;
    use hickory_server::proto::op::{Message, MessageType, Query};
    use hickory_server::server::Request;
    use std::net::Ipv4Addr;

    fn table() -> NameTable {
        NameTable {
            version: 7,
            tld: "boshy".into(),
            names: [
                (
                    "example-httpbin.banana.sample-deployment.boshy".to_string(),
                    Ipv4Addr::new(169, 254, 255, 7),
                ),
                (
                    "db.apricot.other.boshy".to_string(),
                    Ipv4Addr::new(169, 254, 255, 8),
                ),
            ]
            .into_iter()
            .collect(),
            origins: Default::default(),
        }
    }

    fn zone() -> Zone {
        let (zone, skipped) = Zone::build(&apex_from_tld("boshy").unwrap(), 5, &table());
        assert!(skipped.is_empty(), "{skipped:?}");
        zone
    }

    fn message(name: &str, qtype: RecordType) -> Message {
        let mut msg = Message::query();
        msg.metadata.id = 4242;
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        msg
    }

    fn request(msg: &Message) -> Request {
        Request::from_bytes(
            msg.to_vec().unwrap(),
            "127.0.0.1:5353".parse().unwrap(),
            Protocol::Udp,
        )
        .unwrap()
    }

    fn ask<'z>(zone: &'z Zone, name: &str, qtype: RecordType) -> Reply<'z> {
        reply(zone, &request(&message(name, qtype)))
    }

    fn a_of(reply: &Reply<'_>) -> Ipv4Addr {
        match &reply.answer.as_ref().expect("an answer").data {
            RData::A(A(ip)) => *ip,
            other => panic!("not an A record: {other:?}"),
        }
    }

    fn assert_negative(reply: &Reply<'_>, rcode: ResponseCode) {
        assert_eq!(reply.metadata.response_code, rcode);
        assert!(reply.metadata.authoritative);
        assert!(reply.answer.is_none());
        let soa = reply.soa.expect("SOA in the authority section");
        assert_eq!(soa.name, Name::from_ascii("boshy.").unwrap());
        assert!(matches!(soa.data, RData::SOA(_)));
    }

    #[test]
    fn known_name_gets_its_vip_with_the_ttl() {
        let zone = zone();
        let reply = ask(
            &zone,
            "example-httpbin.banana.sample-deployment.boshy.",
            RecordType::A,
        );
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.metadata.authoritative);
        assert!(!reply.metadata.recursion_available);
        assert!(reply.metadata.recursion_desired, "RD is copied");
        assert_eq!(reply.metadata.id, 4242);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(a_of(&reply), Ipv4Addr::new(169, 254, 255, 7));
        assert_eq!(reply.answer.as_ref().unwrap().ttl, 5);
        assert!(reply.soa.is_none());
    }

    #[test]
    fn matching_is_case_insensitive_and_the_answer_echoes_the_question() {
        let zone = zone();
        let asked = "Example-HTTPBIN.Banana.Sample-Deployment.BOSHY.";
        let reply = ask(&zone, asked, RecordType::A);
        assert_eq!(a_of(&reply), Ipv4Addr::new(169, 254, 255, 7));
        let owner = &reply.answer.as_ref().unwrap().name;
        assert!(owner.eq_case(&Name::from_ascii(asked).unwrap()), "{owner}");
    }

    #[test]
    fn unknown_name_under_the_tld_is_nxdomain_with_soa() {
        let zone = zone();
        assert_negative(
            &ask(&zone, "nope.banana.sample-deployment.boshy.", RecordType::A),
            ResponseCode::NXDomain,
        );
        assert_negative(
            &ask(
                &zone,
                "x.example-httpbin.banana.sample-deployment.boshy.",
                RecordType::A,
            ),
            ResponseCode::NXDomain,
        );
    }

    #[test]
    fn other_types_of_known_names_are_nodata_with_soa() {
        let zone = zone();
        for qtype in [
            RecordType::AAAA,
            RecordType::TXT,
            RecordType::MX,
            RecordType::HTTPS,
        ] {
            assert_negative(
                &ask(&zone, "db.apricot.other.boshy.", qtype),
                ResponseCode::NoError,
            );
        }
    }

    #[test]
    fn empty_non_terminals_are_nodata_not_nxdomain() {
        let zone = zone();
        for name in [
            "banana.sample-deployment.boshy.",
            "sample-deployment.boshy.",
        ] {
            assert_negative(&ask(&zone, name, RecordType::A), ResponseCode::NoError);
        }
    }

    #[test]
    fn names_outside_the_tld_are_refused() {
        let zone = zone();
        for name in ["example.com.", "boshy.example.com.", "notboshy.", "."] {
            let reply = ask(&zone, name, RecordType::A);
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::Refused,
                "{name}"
            );
            assert!(!reply.metadata.authoritative);
            assert!(reply.answer.is_none() && reply.soa.is_none());
        }
    }

    #[test]
    fn other_classes_are_refused() {
        let zone = zone();
        let mut msg = message("db.apricot.other.boshy.", RecordType::A);
        msg.queries[0].set_query_class(DNSClass::CH);
        let reply = reply(&zone, &request(&msg));
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn apex_answers_soa_and_ns_and_nodata_otherwise() {
        let zone = zone();
        let soa = ask(&zone, "BOSHY.", RecordType::SOA);
        assert_eq!(soa.metadata.response_code, ResponseCode::NoError);
        match &soa.answer.as_ref().unwrap().data {
            RData::SOA(soa) => assert_eq!(soa.serial, 7),
            other => panic!("{other:?}"),
        }
        let ns = ask(&zone, "boshy.", RecordType::NS);
        assert!(matches!(ns.answer.as_ref().unwrap().data, RData::NS(_)));
        assert_negative(&ask(&zone, "boshy.", RecordType::A), ResponseCode::NoError);
    }

    #[test]
    fn any_is_not_implemented_and_transfers_are_refused() {
        let zone = zone();
        let any = ask(&zone, "db.apricot.other.boshy.", RecordType::ANY);
        assert_eq!(any.metadata.response_code, ResponseCode::NotImp);
        for qtype in [RecordType::AXFR, RecordType::IXFR] {
            let xfr = ask(&zone, "boshy.", qtype);
            assert_eq!(xfr.metadata.response_code, ResponseCode::Refused);
            assert!(xfr.answer.is_none() && xfr.soa.is_none());
        }
    }

    #[test]
    fn several_questions_or_none_are_formerr() {
        let zone = zone();
        let mut two = message("db.apricot.other.boshy.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("boshy.").unwrap(),
            RecordType::SOA,
        ));
        let reply_two = reply(&zone, &request(&two));
        assert_eq!(reply_two.metadata.response_code, ResponseCode::FormErr);
        assert!(reply_two.answer.is_none());

        let none = Message::query();
        assert_eq!(
            reply(&zone, &request(&none)).metadata.response_code,
            ResponseCode::FormErr
        );
    }

    #[test]
    fn other_opcodes_are_not_implemented() {
        let zone = zone();
        let mut msg = message("db.apricot.other.boshy.", RecordType::A);
        msg.metadata.op_code = OpCode::Update;
        // An UPDATE is decoded with the zone section in place of the question.
        let reply = reply(&zone, &request(&msg));
        assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
        assert!(reply.answer.is_none());
    }

    #[test]
    fn edns_is_answered_with_edns_only_when_asked() {
        let zone = zone();
        let plain = ask(&zone, "db.apricot.other.boshy.", RecordType::A);
        assert!(plain.edns.is_none());

        let mut msg = message("db.apricot.other.boshy.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        msg.set_edns(edns);
        let with = reply(&zone, &request(&msg));
        assert_eq!(with.metadata.response_code, ResponseCode::NoError);
        let opt = with.edns.expect("OPT in the response");
        assert_eq!(opt.version(), 0);
        assert_eq!(opt.max_payload(), EDNS_PAYLOAD);
    }

    #[test]
    fn unknown_edns_version_is_badvers() {
        let zone = zone();
        let mut msg = message("db.apricot.other.boshy.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_version(1);
        msg.set_edns(edns);
        let reply = reply(&zone, &request(&msg));
        assert_eq!(reply.metadata.response_code, ResponseCode::BADVERS);
        assert!(reply.edns.is_some(), "BADVERS travels in the OPT record");
        assert!(reply.answer.is_none());
    }

    #[test]
    fn names_not_under_the_tld_are_skipped_and_reported() {
        let mut table = table();
        table
            .names
            .insert("db.other.mesh".into(), Ipv4Addr::new(169, 254, 255, 9));
        table
            .names
            .insert("boshy".into(), Ipv4Addr::new(169, 254, 255, 10));
        let (zone, skipped) = Zone::build(&apex_from_tld("boshy").unwrap(), 5, &table);
        assert_eq!(zone.len(), 2);
        let names: Vec<_> = skipped.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["boshy", "db.other.mesh"]);
    }

    #[test]
    fn multi_label_tld_works() {
        let apex = apex_from_tld("Mesh.Internal.").unwrap();
        assert_eq!(apex.to_string(), "mesh.internal.");
        let table = NameTable {
            version: 1,
            tld: "mesh.internal".into(),
            names: [(
                "a.b.c.mesh.internal".to_string(),
                Ipv4Addr::new(169, 254, 255, 1),
            )]
            .into_iter()
            .collect(),
            origins: Default::default(),
        };
        let (zone, _) = Zone::build(&apex, 5, &table);
        assert_eq!(
            a_of(&ask(&zone, "A.b.c.mesh.internal.", RecordType::A)),
            Ipv4Addr::new(169, 254, 255, 1)
        );
        let outside = ask(&zone, "internal.", RecordType::A);
        assert_eq!(outside.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn bad_tlds_are_rejected_with_a_reason() {
        for bad in ["", ".", "bo shy", "-boshy", "a..b", &"x".repeat(64)] {
            assert!(apex_from_tld(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn empty_zone_answers_nxdomain() {
        let zone = Zone::empty(&apex_from_tld("boshy").unwrap(), 5);
        assert!(zone.is_empty());
        assert_negative(
            &ask(&zone, "a.b.c.boshy.", RecordType::A),
            ResponseCode::NXDomain,
        );
    }
}
