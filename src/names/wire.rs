//! The lines of the name-table stream and their validation (see the module doc of `names`).

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde::{Deserialize, Serialize};

use super::table::NameTable;
use crate::catalog::manifest::is_dns_label;
use crate::health::ProbeSet;
use crate::text::clip;

/// The streaming endpoint on the pilot's names port.
pub(crate) const WATCH_PATH: &str = "/v1/names/watch";

/// Newline-delimited JSON.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// A line longer than this is a broken or hostile stream, not a big estate: a table of
/// 65 536 services with 253-character names is about 18 MB, a /16 holds fewer VIPs than that,
/// and real tables are a few KB.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// The pilot sends a heartbeat when it has sent nothing else for this long...
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// ...and the follower gives up on a stream that has been silent for this long (three
/// missed heartbeats), then reconnects.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One line of the stream: a JSON object with exactly one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Message {
    /// `{"table": {"version": 123, "tld": "boshy", "names": {"a.b.c.boshy": "169.254.255.1"}}}`
    Table(NameTable),
    /// `{"heartbeat": 123}`: the version of the last table sent on this stream, 0 before any.
    Heartbeat(u64),
    /// `{"probes": {"address": "10.0.0.5", "ports": [8080]}}`: what the follower's agent
    /// probes, sent only on a stream whose follower named its instance (so followers that do
    /// not know this line never get one), first when the claim is verified and again when the
    /// instance's exposed ports change.
    Probes(ProbeSet),
}

impl Message {
    /// The message as one stream line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a name-table message always serializes");
        line.push(b'\n');
        line
    }
}

/// What a follower accepts from a pilot before it replaces the table every DNS answer comes
/// from: names are lower-case DNS names under the table's tld, VIPs are link-local.
pub fn validate(table: &NameTable) -> Result<(), String> {
    if !is_dns_name(&table.tld) {
        return Err(format!(
            "tld {:?} is not a lower-case DNS name",
            clip(&table.tld)
        ));
    }
    let suffix = format!(".{}", table.tld);
    for (name, vip) in &table.names {
        if !is_dns_name(name) || !name.ends_with(&suffix) {
            return Err(format!(
                "name {:?} is not a lower-case DNS name under {:?}",
                clip(name),
                clip(&table.tld)
            ));
        }
        if !vip.is_link_local() || *vip == Ipv4Addr::new(169, 254, 169, 254) {
            return Err(format!(
                "name {:?} has VIP {vip}, outside the link-local VIP range",
                clip(name)
            ));
        }
    }
    if let Some(name) = table
        .origins
        .keys()
        .find(|name| !table.names.contains_key(*name))
    {
        return Err(format!(
            "origin of {:?}, a name the table does not have",
            clip(name)
        ));
    }
    Ok(())
}

/// Dot-separated DNS labels, at most 253 characters, no trailing dot.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// What a valid line asks of the follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A table to publish.
    Table(NameTable),
    /// The probes of the follower's agent.
    Probes(ProbeSet),
    /// A heartbeat or an empty line.
    Nothing,
}

/// What a line asks of the follower, or why the line is bad.
pub fn parse_line(line: &[u8]) -> anyhow::Result<Line> {
    if line.trim_ascii().is_empty() {
        return Ok(Line::Nothing);
    }
    let message: Message = serde_json::from_slice(line).map_err(|err| {
        let start = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
        anyhow!("bad line ({}), starting {start:?}", clip(&err.to_string()))
    })?;
    match message {
        Message::Heartbeat(_) => Ok(Line::Nothing),
        Message::Table(table) => {
            validate(&table).map_err(|err| anyhow!("invalid table: {err}"))?;
            Ok(Line::Table(table))
        }
        Message::Probes(probes) => Ok(Line::Probes(probes)),
    }
}

/// Splits a byte stream into lines, refusing any line longer than `MAX_LINE_BYTES`.
#[derive(Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// The lines `chunk` completes, without their newline.
    pub fn push(&mut self, chunk: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut lines = Vec::new();
        for piece in chunk.split_inclusive(|b| *b == b'\n') {
            let (body, complete) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            if self.pending.len() + body.len() > MAX_LINE_BYTES {
                bail!("a line is longer than {MAX_LINE_BYTES} bytes");
            }
            self.pending.extend_from_slice(body);
            if complete {
                lines.push(std::mem::take(&mut self.pending));
            }
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(names: &[(&str, [u8; 4])]) -> NameTable {
        NameTable {
            version: 7,
            tld: "boshy".into(),
            names: names
                .iter()
                .map(|(n, ip)| (n.to_string(), Ipv4Addr::from(*ip)))
                .collect(),
            origins: Default::default(),
        }
    }

    #[test]
    fn lines_are_one_json_object_with_one_key() {
        let t = table(&[("j.g.d.boshy", [169, 254, 255, 1])]);
        let line = Message::Table(t.clone()).to_line();
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"table\":{\"version\":7,\"tld\":\"boshy\",\"names\":{\"j.g.d.boshy\":\"169.254.255.1\"}}}\n"
        );
        assert_eq!(Message::Heartbeat(7).to_line(), b"{\"heartbeat\":7}\n");
        let back: Message = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, Message::Table(t));
        for bad in [
            "{}",
            "{\"heartbeat\":1,\"table\":{}}",
            "{\"other\":1}",
            "{\"heartbeat\":\"x\"}",
            "[1]",
        ] {
            assert!(serde_json::from_str::<Message>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validate_accepts_good_tables() {
        assert_eq!(validate(&table(&[])), Ok(()));
        assert_eq!(
            validate(&table(&[
                ("j.g.d.boshy", [169, 254, 255, 1]),
                ("x-1.y.z.boshy", [169, 254, 1, 2])
            ])),
            Ok(())
        );
    }

    #[test]
    fn validate_rejects_what_dns_must_not_answer() {
        for (name, vip) in [
            ("j.g.d.other", [169, 254, 255, 1]),
            ("boshy", [169, 254, 255, 1]),
            ("J.g.d.boshy", [169, 254, 255, 1]),
            ("j..d.boshy", [169, 254, 255, 1]),
            ("j.g.d.boshy.", [169, 254, 255, 1]),
            ("j.g.d.boshy", [10, 0, 0, 1]),
            ("j.g.d.boshy", [169, 254, 169, 254]),
        ] {
            let err = validate(&table(&[(name, vip)])).unwrap_err();
            assert!(err.contains(name), "{err}");
        }
        let mut bad_tld = table(&[]);
        bad_tld.tld = "bad tld".into();
        assert!(validate(&bad_tld).unwrap_err().contains("tld"));
    }

    #[test]
    fn line_buffer_joins_chunks_and_splits_lines() {
        let mut buffer = LineBuffer::default();
        assert!(buffer.push(b"{\"heart").unwrap().is_empty());
        assert_eq!(
            buffer.push(b"beat\":1}\n{\"a\"\n\n{").unwrap(),
            vec![
                b"{\"heartbeat\":1}".to_vec(),
                b"{\"a\"".to_vec(),
                Vec::new()
            ]
        );
        assert_eq!(buffer.push(b"}\n").unwrap(), vec![b"{}".to_vec()]);
    }

    #[test]
    fn line_buffer_refuses_overlong_lines() {
        let mut buffer = LineBuffer::default();
        let chunk = vec![b'x'; MAX_LINE_BYTES / 2];
        buffer.push(&chunk).unwrap();
        buffer.push(&chunk).unwrap();
        let err = buffer.push(b"x\n").unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");

        let mut buffer = LineBuffer::default();
        let mut long_line = vec![b'x'; MAX_LINE_BYTES + 1];
        long_line.push(b'\n');
        assert!(buffer.push(&long_line).is_err());
    }

    #[test]
    fn parse_line_tells_heartbeats_tables_and_garbage_apart() {
        assert_eq!(parse_line(b"{\"heartbeat\":3}").unwrap(), Line::Nothing);
        assert_eq!(parse_line(b"  ").unwrap(), Line::Nothing);
        let Line::Table(table) = parse_line(
            b"{\"table\":{\"version\":3,\"tld\":\"boshy\",\"names\":{\"a.b.c.boshy\":\"169.254.255.1\"}}}",
        )
        .unwrap() else {
            panic!("a table")
        };
        assert_eq!(table.version, 3);
        assert_eq!(
            parse_line(b"{\"probes\":{\"address\":\"10.0.0.5\",\"ports\":[80,8080]}}").unwrap(),
            Line::Probes(ProbeSet {
                address: [10, 0, 0, 5].into(),
                ports: vec![80, 8080],
                workload: None,
            })
        );
        // A WorkloadGroup member's: its probe and heartbeat. A BOSH instance's line has no
        // `workload` key, so agents of earlier releases (which refuse unknown keys) take it.
        let member = ProbeSet {
            address: [10, 0, 0, 6].into(),
            ports: vec![5672],
            workload: Some(crate::health::WorkloadProbe {
                probe: None,
                heartbeat_seconds: 10,
            }),
        };
        let line = Message::Probes(member.clone()).to_line();
        assert_eq!(
            parse_line(line.trim_ascii_end()).unwrap(),
            Line::Probes(member)
        );
        let bosh = Message::Probes(ProbeSet {
            address: [10, 0, 0, 5].into(),
            ports: vec![80],
            workload: None,
        })
        .to_line();
        assert!(
            !String::from_utf8_lossy(&bosh).contains("workload"),
            "{bosh:?}"
        );
        let err = parse_line(b"not json at all").unwrap_err().to_string();
        assert!(
            err.contains("bad line") && err.contains("not json"),
            "{err}"
        );
        let err = parse_line(
            b"{\"table\":{\"version\":3,\"tld\":\"boshy\",\"names\":{\"evil.com\":\"169.254.255.1\"}}}",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("invalid table") && err.contains("evil.com"),
            "{err}"
        );
    }
}
