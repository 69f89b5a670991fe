//! The DNS fast path: the common query — one question, class IN, type A, for a name the zone
//! serves, standard query flags, optionally a plain EDNS OPT — answered straight from wire
//! bytes, with no decoding into hickory's types and no allocation.
//!
//! The table holds, per served name, its lower-cased wire-format owner name and the rest of the
//! answer record already encoded (type, class, TTL, VIP). A reply is the request's header with
//! the response flags patched in, the request's question copied as it came (so the client's
//! letter case, including DNS 0x20 randomisation, is echoed), the answer's owner name — the
//! question's name again, uncompressed, because that is what hickory 0.26 writes — that record
//! and, when the request had one, our OPT. Anything else returns `None` and goes to hickory; the
//! bytes are the ones hickory would send (see the equivalence tests in `handler.rs`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;
use std::sync::Arc;

use hickory_server::proto::rr::Name;

use super::dns::EDNS_PAYLOAD;
use crate::scope::Slot;

const HEADER_LEN: usize = 12;
/// The longest wire-format name (RFC 1035 §3.1).
const MAX_NAME_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;
const TYPE_A: u16 = 1;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// An A record after its owner name: type, class, TTL, length, address.
const ANSWER_LEN: usize = 14;
const OPT_LEN: usize = 11;
/// The longest reply: header, the longest question, the answer and an OPT.
pub(crate) const MAX_REPLY_LEN: usize =
    HEADER_LEN + MAX_NAME_LEN + 4 + MAX_NAME_LEN + ANSWER_LEN + OPT_LEN;

// Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.2.2).
const FLAG_QR: u8 = 0x80;
const OPCODE_MASK: u8 = 0x78;
const FLAG_AA: u8 = 0x04;
const FLAG_RD: u8 = 0x01;
const FLAG_CD: u8 = 0x10;

/// An encoded A record without its owner name.
type Answer = [u8; ANSWER_LEN];

/// The served names, keyed by lower-cased wire-format name, with their encoded answers and
/// their slots in the VM's scope (`crate::scope::gate`).
#[derive(Debug, Default)]
pub(crate) struct FastAnswers {
    answers: HashMap<Box<[u8]>, Entry, BuildHasherDefault<NameHasher>>,
}

/// A served name's answer and its slot in the VM's scope.
type Entry = (Answer, Arc<Slot>);

/// A word-at-a-time multiplicative hash (the one rustc uses for its own tables, "FxHash"):
/// a few cycles per name where the default SipHash costs tens. It needs no secret key because
/// only the control plane's names are inserted; a query can only look up, and a lookup of any
/// name probes the same short chains.
#[derive(Default)]
struct NameHasher(u64);

impl NameHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.add(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        tail[..words.remainder().len()].copy_from_slice(words.remainder());
        self.add(u64::from_le_bytes(tail));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl FastAnswers {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        FastAnswers {
            answers: HashMap::with_capacity_and_hasher(capacity, Default::default()),
        }
    }

    /// Serves `name` (fully qualified) as `vip` with `ttl`, answered at once while `slot` is in
    /// scope; the last insert of a name wins.
    pub(crate) fn insert(&mut self, name: &Name, vip: Ipv4Addr, ttl: u32, slot: Arc<Slot>) {
        let mut answer = [0u8; ANSWER_LEN];
        answer[..2].copy_from_slice(&TYPE_A.to_be_bytes());
        answer[2..4].copy_from_slice(&CLASS_IN.to_be_bytes());
        answer[4..8].copy_from_slice(&ttl.to_be_bytes());
        answer[8..10].copy_from_slice(&4u16.to_be_bytes());
        answer[10..].copy_from_slice(&vip.octets());
        self.answers.insert(lower_wire_name(name), (answer, slot));
    }

    /// The VIP of `name`, matched case-insensitively, and its slot.
    pub(crate) fn vip(&self, name: &Name) -> Option<(Ipv4Addr, &Arc<Slot>)> {
        self.answers
            .get(&lower_wire_name(name))
            .map(|(answer, slot)| {
                let [a, b, c, d] = answer[10..] else {
                    unreachable!("an answer ends with 4 address bytes")
                };
                (Ipv4Addr::new(a, b, c, d), slot)
            })
    }

    /// The slot of the name `query` asks about (whatever the type), when that name is served
    /// and not in scope: the query waits for the scope. Pure, no allocation.
    pub(crate) fn pending(&self, query: &[u8]) -> Option<&Arc<Slot>> {
        let header = query.get(..HEADER_LEN)?;
        if u16::from_be_bytes([header[4], header[5]]) != 1 {
            return None;
        }
        let (lower_name, name_len, _) = lower_question_name(query)?;
        let (_, slot) = self.answers.get(&lower_name[..name_len])?;
        (!slot.in_scope()).then_some(slot)
    }

    pub(crate) fn len(&self) -> usize {
        self.answers.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// Writes the reply to `query` into `reply` and returns its length, or `None` when the query
    /// is not the common case (the caller then asks hickory). Pure: no I/O, no allocation.
    pub(crate) fn answer(&self, query: &[u8], reply: &mut [u8; MAX_REPLY_LEN]) -> Option<usize> {
        let request = CommonQuery::parse(query)?;
        let (answer, slot) = self.answers.get(&request.lower_name[..request.name_len])?;
        if !slot.in_scope() {
            return None;
        }
        slot.mark_asked();

        let question = &query[HEADER_LEN..request.question_end];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            reply[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&query[..2]); // id
        put(&[FLAG_QR | FLAG_AA | (query[2] & FLAG_RD), query[3] & FLAG_CD]);
        put(&1u16.to_be_bytes()); // questions
        put(&1u16.to_be_bytes()); // answers
        put(&0u16.to_be_bytes()); // authority
        put(&u16::from(request.edns_payload.is_some()).to_be_bytes()); // additional
        put(question);
        put(&question[..request.name_len]);
        put(answer);
        if let Some(payload) = request.edns_payload {
            put(&[0]); // root owner
            put(&TYPE_OPT.to_be_bytes());
            put(&payload.clamp(512, EDNS_PAYLOAD).to_be_bytes());
            put(&[0, 0, 0, 0]); // extended rcode, version 0, no flags
            put(&0u16.to_be_bytes()); // no options
        }
        Some(at)
    }
}

/// What the fast path needs from a request it can answer.
struct CommonQuery {
    lower_name: [u8; MAX_NAME_LEN],
    name_len: usize,
    /// Offset just past the question's class.
    question_end: usize,
    /// The client's UDP payload size, when it sent a plain OPT.
    edns_payload: Option<u16>,
}

impl CommonQuery {
    fn parse(query: &[u8]) -> Option<CommonQuery> {
        let header = query.get(..HEADER_LEN)?;
        let count = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
        // A query (not a response), opcode QUERY; other flag bits do not change the answer.
        let is_query = header[2] & (FLAG_QR | OPCODE_MASK) == 0;
        let additional = count(10);
        if !is_query || count(4) != 1 || count(6) != 0 || count(8) != 0 || additional > 1 {
            return None;
        }

        let (lower_name, name_len, at) = lower_question_name(query)?;
        let field = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes(query.get(at..at + 2)?.try_into().ok()?))
        };
        if field(at)? != TYPE_A || field(at + 2)? != CLASS_IN {
            return None;
        }
        let question_end = at + 4;

        let edns_payload = if additional == 1 {
            // Only a plain OPT: root owner, EDNS version 0, no extended rcode, no options.
            let opt = query.get(question_end..question_end + OPT_LEN)?;
            let plain = opt[0] == 0
                && field(question_end + 1)? == TYPE_OPT
                && opt[5] == 0
                && opt[6] == 0
                && field(question_end + 9)? == 0;
            if !plain {
                return None;
            }
            Some(field(question_end + 3)?)
        } else {
            None
        };
        let end = question_end + if edns_payload.is_some() { OPT_LEN } else { 0 };
        if query.len() != end {
            return None;
        }
        Some(CommonQuery {
            lower_name,
            name_len,
            question_end,
            edns_payload,
        })
    }
}

/// The first question's name, ASCII lower-cased, its length, and the offset just past it.
fn lower_question_name(query: &[u8]) -> Option<([u8; MAX_NAME_LEN], usize, usize)> {
    let mut lower_name = [0u8; MAX_NAME_LEN];
    let mut name_len = 0;
    let mut at = HEADER_LEN;
    loop {
        let label_len = usize::from(*query.get(at)?);
        // Compression pointers and extended label types never start a question we serve.
        if label_len > MAX_LABEL_LEN || name_len + 1 + label_len > MAX_NAME_LEN {
            return None;
        }
        let label = query.get(at..at + 1 + label_len)?;
        for (to, from) in lower_name[name_len..].iter_mut().zip(label) {
            *to = from.to_ascii_lowercase();
        }
        name_len += label.len();
        at += label.len();
        if label_len == 0 {
            return Some((lower_name, name_len, at));
        }
    }
}

/// `name` in wire format (length-prefixed labels ending with the root), ASCII lower-cased.
fn lower_wire_name(name: &Name) -> Box<[u8]> {
    let mut wire = Vec::with_capacity(name.len() + 1);
    for label in name.iter() {
        wire.push(label.len() as u8);
        wire.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    wire.push(0);
    wire.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> FastAnswers {
        gated_table(&crate::scope::Gate::open())
    }

    fn gated_table(gate: &crate::scope::Gate) -> FastAnswers {
        let mut answers = FastAnswers::default();
        answers.insert(
            &Name::from_ascii("a.b.c.boshy.").unwrap(),
            Ipv4Addr::new(169, 254, 255, 3),
            30,
            gate.slot("a.b.c.boshy"),
        );
        answers
    }

    #[test]
    fn a_name_out_of_scope_is_left_pending_whatever_the_type_and_answered_once_admitted() {
        let gate = crate::scope::Gate::scoped();
        let table = gated_table(&gate);
        let a = query([0x01, 0x00]);
        assert_eq!(answer(&table, &a), None);
        assert_eq!(table.pending(&a).map(|s| s.hostname()), Some("a.b.c.boshy"));
        let mut aaaa = a.clone();
        let at = aaaa.len() - 3;
        aaaa[at] = 28; // AAAA
        assert!(
            table.pending(&aaaa).is_some(),
            "every type waits: getaddrinfo asks both"
        );
        let mut other = a.clone();
        other[13] = b'X';
        assert!(table.pending(&other).is_none(), "a name not served");

        // Cut or garbage datagrams name nothing that waits: they go the usual way.
        for cut in 0..a.len() - 4 {
            assert!(table.pending(&a[..cut]).is_none(), "cut at {cut}");
        }
        let mut pointer = a.clone();
        pointer[12] = 0xc0; // a compression pointer where the name starts
        assert!(table.pending(&pointer).is_none());
        let mut two = a.clone();
        two[5] = 2; // two questions
        assert!(table.pending(&two).is_none());

        gate.admit(["a.b.c.boshy"], 0);
        assert!(table.pending(&a).is_none());
        assert!(answer(&table, &a).is_some());
        assert_eq!(
            gate.sweep(10, 5),
            Vec::<String>::new(),
            "the answer marked it asked"
        );
    }

    /// A query for `a.b.c.boshy.` A with the given header flag bytes.
    fn query(flags: [u8; 2]) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, flags[0], flags[1], 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend(b"\x01A\x01b\x01C\x05boshy\x00\x00\x01\x00\x01");
        q
    }

    fn answer(table: &FastAnswers, query: &[u8]) -> Option<Vec<u8>> {
        let mut reply = [0u8; MAX_REPLY_LEN];
        table
            .answer(query, &mut reply)
            .map(|len| reply[..len].to_vec())
    }

    #[test]
    fn names_of_a_large_table_hash_apart() {
        use std::hash::BuildHasher;
        let hasher = BuildHasherDefault::<NameHasher>::default();
        let hashes: std::collections::HashSet<u64> = (0..10_000)
            .map(|i| {
                let name = Name::from_ascii(format!(
                    "svc-{}.group-{}.deployment-{}.boshy.",
                    i % 10,
                    (i / 10) % 10,
                    i / 100
                ))
                .unwrap();
                hasher.hash_one(lower_wire_name(&name))
            })
            .collect();
        assert_eq!(hashes.len(), 10_000, "no two names share a hash");
    }

    #[test]
    fn vip_lookup_ignores_case() {
        let table = table();
        assert_eq!(
            table
                .vip(&Name::from_ascii("A.B.c.BOSHY.").unwrap())
                .map(|(vip, _)| vip),
            Some(Ipv4Addr::new(169, 254, 255, 3))
        );
        assert!(table
            .vip(&Name::from_ascii("b.c.boshy.").unwrap())
            .is_none());
    }

    #[test]
    fn reply_echoes_id_question_and_rd_and_carries_the_record() {
        let q = query([0x01, 0x00]);
        let reply = answer(&table(), &q).expect("answered");
        assert_eq!(
            &reply[..12],
            &[0x12, 0x34, 0x85, 0x00, 0, 1, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(
            &reply[12..q.len()],
            &q[12..],
            "question as sent, case included"
        );
        let (owner, record) = reply[q.len()..].split_at(q.len() - 16);
        assert_eq!(owner, &q[12..q.len() - 4], "owner name as asked");
        assert_eq!(record, &[0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 169, 254, 255, 3]);
    }

    #[test]
    fn plain_opt_gets_our_opt_with_the_payload_clamped() {
        for (asked, given) in [(4096u16, EDNS_PAYLOAD), (100, 512), (1000, 1000)] {
            let mut q = query([0x01, 0x00]);
            q[11] = 1;
            q.extend([0, 0, 41]);
            q.extend(asked.to_be_bytes());
            q.extend([0, 0, 0, 0, 0, 0]);
            let reply = answer(&table(), &q).expect("answered");
            let opt = &reply[reply.len() - OPT_LEN..];
            let mut expected = vec![0, 0, 41];
            expected.extend(given.to_be_bytes());
            expected.extend([0, 0, 0, 0, 0, 0]);
            assert_eq!(opt, &expected[..]);
        }
    }

    #[test]
    fn everything_else_is_left_to_hickory() {
        let table = table();
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut q = query([0x01, 0x00]);
            edit(&mut q);
            q
        };
        let cases = [
            ("response", with(&|q| q[2] |= 0x80)),
            ("opcode update", with(&|q| q[2] |= 5 << 3)),
            ("two questions", with(&|q| q[5] = 2)),
            ("an answer section", with(&|q| q[7] = 1)),
            ("type AAAA", with(&|q| q[26] = 28)),
            ("class CH", with(&|q| q[28] = 3)),
            ("unknown name", with(&|q| q[13] = b'x')),
            ("trailing byte", with(&|q| q.push(0))),
            ("truncated", with(&|q| q.truncate(20))),
            ("compression pointer", with(&|q| q[12] = 0xc0)),
            (
                "OPT with an option",
                with(&|q| {
                    q[11] = 1;
                    q.extend([0, 0, 41, 16, 0, 0, 0, 0, 0, 0, 4, 0, 10, 0, 0]);
                }),
            ),
            (
                "EDNS version 1",
                with(&|q| {
                    q[11] = 1;
                    q.extend([0, 0, 41, 16, 0, 0, 1, 0, 0, 0, 0]);
                }),
            ),
            ("short header", vec![0x12, 0x34, 0x01]),
        ];
        for (what, q) in cases {
            assert_eq!(answer(&table, &q), None, "{what}");
        }
    }
}
