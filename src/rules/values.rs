//! The values inside Istio's resources, read the way Istio reads them: durations (`7s`,
//! `0.5s`, `100ms`, `1m`, `1h30m`), percentages, string matches (with their regexes checked),
//! the enums Istio writes in capitals, and the Istio fields boshy-istio refuses by name.

use std::time::Duration;

use serde::de::{Deserializer, Error as _};
use serde::Deserialize;

/// The longest duration accepted, protobuf's `Duration` maximum (10,000 years): Istio's
/// durations are protobuf durations.
const MAX_DURATION_SECS: u64 = 315_576_000_000;

/// Parses a duration as Istio accepts it (Go's syntax): one or more `<number><unit>` with the
/// units `h`, `m`, `s`, `ms`, `us` (or `µs`) and `ns`, a number possibly with a fraction
/// (`0.5s`, `1h30m`); `0` alone is zero. Negative durations are refused.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let refuse = || {
        format!(
            "{:?} is not a duration: write it like 7s, 0.5s, 100ms, 1m or 1h",
            crate::text::clip(text)
        )
    };
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total_nanos: u128 = 0;
    if rest.is_empty() {
        return Err(refuse());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(refuse)?;
        let (number, after) = rest.split_at(number_len);
        let (unit_nanos, unit_len) = [
            ("ns", 1u128),
            ("us", 1_000),
            ("µs", 1_000),
            ("ms", 1_000_000),
            ("s", 1_000_000_000),
            ("m", 60_000_000_000),
            ("h", 3_600_000_000_000),
        ]
        .iter()
        .filter(|(unit, _)| after.starts_with(unit))
        // `ms` before `m`: the longest unit that matches.
        .max_by_key(|(unit, _)| unit.len())
        .map(|(unit, nanos)| (*nanos, unit.len()))
        .ok_or_else(refuse)?;
        total_nanos += component_nanos(number, unit_nanos).ok_or_else(refuse)?;
        if total_nanos > u128::from(MAX_DURATION_SECS) * 1_000_000_000 {
            return Err(format!(
                "{:?} is longer than the longest duration ({MAX_DURATION_SECS}s)",
                crate::text::clip(text)
            ));
        }
        rest = &after[unit_len..];
    }
    let secs = (total_nanos / 1_000_000_000) as u64;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// `number` (digits, then optionally `.` and digits) times a unit, in nanoseconds; digits
/// past the nanosecond are dropped. `None` when it is not such a number or is far too large.
fn component_nanos(number: &str, unit_nanos: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    // More than 20 digits is beyond any accepted duration in any unit.
    if !all_digits(whole) || !all_digits(fraction) || whole.len() > 20 {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let fraction = &fraction[..fraction.len().min(18)];
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    Some(whole * unit_nanos + fraction * unit_nanos / scale)
}

/// serde's `deserialize_with` for a required duration.
pub(crate) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(D::Error::custom)
}

/// serde's `deserialize_with` for an optional duration (with `#[serde(default)]`).
pub(crate) fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

/// Istio's `Percent`: `{value: 50}`, from 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "PercentFields")]
pub struct Percent(f64);

impl Percent {
    pub fn value(self) -> f64 {
        self.0
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PercentFields {
    /// Absent is 0, as in Istio (a protobuf double).
    #[serde(default)]
    value: f64,
}

impl TryFrom<PercentFields> for Percent {
    type Error = String;
    fn try_from(fields: PercentFields) -> Result<Self, String> {
        if (0.0..=100.0).contains(&fields.value) {
            Ok(Percent(fields.value))
        } else {
            Err(format!(
                "a percentage is from 0 to 100, found {}",
                fields.value
            ))
        }
    }
}

/// The longest regex accepted, in bytes. Envoy refuses complex RE2 programs anyway (its
/// program size limit); this keeps a config from making the control plane compile megabytes.
pub(crate) const MAX_REGEX_BYTES: usize = 1024;

/// The compiled size a regex may reach when it is checked (the `regex` crate's own limit is
/// 10 MB): a short pattern such as `a{1000}{1000}` must not cost the control plane memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Istio's `StringMatch`: exactly one of `exact`, `prefix` and `regex` (RE2 syntax, matched
/// against the whole value by Envoy).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "StringMatchFields")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// Checked: it compiles, under [`MAX_REGEX_BYTES`].
    Regex(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StringMatchFields {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

impl TryFrom<StringMatchFields> for StringMatch {
    type Error = String;
    fn try_from(fields: StringMatchFields) -> Result<Self, String> {
        match (fields.exact, fields.prefix, fields.regex) {
            (Some(exact), None, None) => Ok(StringMatch::Exact(exact)),
            (None, Some(prefix), None) => Ok(StringMatch::Prefix(prefix)),
            (None, None, Some(regex)) => {
                check_regex(&regex)?;
                Ok(StringMatch::Regex(regex))
            }
            _ => Err("a string match has exactly one of `exact`, `prefix` and `regex`".into()),
        }
    }
}

/// Whether Envoy's RE2 can be expected to take `pattern`: the `regex` crate's syntax is RE2's
/// (no backreferences, no lookaround) but for a few extensions of its own, so a pattern it
/// refuses is refused here with its reason.
pub(crate) fn check_regex(pattern: &str) -> Result<(), String> {
    if pattern.len() > MAX_REGEX_BYTES {
        return Err(format!(
            "a regex is at most {MAX_REGEX_BYTES} bytes, this one is {}",
            pattern.len()
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(drop)
        .map_err(|err| {
            // The crate's message spans lines (the pattern, a caret, the reason): keep the
            // reason.
            let text = err.to_string();
            let reason = text
                .lines()
                .rev()
                .map(str::trim)
                .find(|line| !line.is_empty())
                .unwrap_or("invalid")
                .trim_start_matches("error: ");
            format!(
                "regex {:?} is not valid: {reason}",
                crate::text::clip(pattern)
            )
        })
}

/// One of Istio's capitalized enum words: `accepted` maps a word to its value, `refused`
/// names the words Istio has but boshy-istio does not take, with the reason.
pub(crate) fn word<T: Copy>(
    text: &str,
    accepted: &[(&str, T)],
    refused: &[(&str, &str)],
) -> Result<T, String> {
    if let Some((_, value)) = accepted.iter().find(|(word, _)| *word == text) {
        return Ok(*value);
    }
    if let Some((_, reason)) = refused.iter().find(|(word, _)| *word == text) {
        return Err(format!("{text} is not supported: {reason}"));
    }
    let words: Vec<&str> = accepted.iter().map(|(word, _)| *word).collect();
    Err(format!(
        "unknown value {:?}, expected one of {}",
        crate::text::clip(text),
        words.join(", ")
    ))
}

/// The reason given for an Istio field boshy-istio does not support.
const UNSUPPORTED: &str =
    "this Istio field is not supported by boshy-istio (docs/rules.md lists those that are)";

/// The type of an Istio field boshy-istio does not support: such fields are declared in the
/// types, read by [`refuse`], so that the error says the field is refused rather than
/// unknown. Reading one always fails, so it never holds anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Refused;

/// serde's `deserialize_with` for a field boshy-istio refuses: any value is an error, which
/// serde_path_to_error reports at the field's path.
pub(crate) fn refuse<'de, D: Deserializer<'de>>(_: D) -> Result<Refused, D::Error> {
    Err(D::Error::custom(UNSUPPORTED))
}

/// serde's `deserialize_with` for `tls` in a traffic policy.
pub(crate) fn refuse_tls<'de, D: Deserializer<'de>>(_: D) -> Result<Refused, D::Error> {
    Err(D::Error::custom(
        "TLS settings (mutual TLS, TLS origination) are not supported yet: Envoys connect \
         to each other in plain TCP",
    ))
}

/// serde's `deserialize_with` for a WorkloadGroup template's `address`.
pub(crate) fn refuse_group_address<'de, D: Deserializer<'de>>(_: D) -> Result<Refused, D::Error> {
    Err(D::Error::custom(
        "not supported: a member's address is the one its registration comes from, not the \
         template's",
    ))
}

/// serde's `deserialize_with` for a WorkloadGroup template's `serviceAccount`.
pub(crate) fn refuse_service_account<'de, D: Deserializer<'de>>(_: D) -> Result<Refused, D::Error> {
    Err(D::Error::custom(
        "not supported: a member's identity comes from the mesh's CA, as every VM's does",
    ))
}

/// serde's `deserialize_with` for a Sidecar's `outboundTrafficPolicy`.
pub(crate) fn refuse_outbound_traffic_policy<'de, D: Deserializer<'de>>(
    _: D,
) -> Result<Refused, D::Error> {
    Err(D::Error::custom(
        "not supported: a Sidecar only adds to the scope of the VMs it selects, it never \
         restricts it; a name of the mesh outside its hosts still joins a VM's scope when the \
         VM resolves it, and names outside the mesh are not the mesh's to allow or block",
    ))
}

/// serde's `deserialize_with` for an AuthorizationPolicy's `targetRef` and `targetRefs`.
pub(crate) fn refuse_target_ref<'de, D: Deserializer<'de>>(_: D) -> Result<Refused, D::Error> {
    Err(D::Error::custom(
        "not supported: there are no Gateway API resources to target in a BOSH mesh; a \
         policy applies to instance groups by `selector`",
    ))
}

/// A port number of an AuthorizationPolicy: Istio writes them as strings (`"9080"`), and a
/// YAML number is taken too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyPort(pub u16);

impl<'de> Deserialize<'de> for PolicyPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl serde::de::Visitor<'_> for PortVisitor {
            type Value = PolicyPort;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port number from 1 to 65535, as a string or a number")
            }
            fn visit_u64<E: serde::de::Error>(self, number: u64) -> Result<PolicyPort, E> {
                match u16::try_from(number) {
                    Ok(port) if port > 0 => Ok(PolicyPort(port)),
                    _ => Err(E::custom(format!(
                        "{number} is not a port number (1 to 65535)"
                    ))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, number: i64) -> Result<PolicyPort, E> {
                u64::try_from(number)
                    .map_err(|_| E::custom(format!("{number} is not a port number (1 to 65535)")))
                    .and_then(|number| self.visit_u64(number))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<PolicyPort, E> {
                match text.parse::<u64>() {
                    Ok(number) if !text.starts_with('+') => self.visit_u64(number),
                    _ => Err(E::custom(format!(
                        "{:?} is not a port number (1 to 65535)",
                        crate::text::clip(text)
                    ))),
                }
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_istio_writes_them() {
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("7s", ms(7000)),
            ("0.5s", ms(500)),
            ("100ms", ms(100)),
            ("1m", ms(60_000)),
            ("1h", ms(3_600_000)),
            ("1h30m", ms(5_400_000)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1.5ms", Duration::from_micros(1500)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("3ns", Duration::from_nanos(3)),
            (".5s", ms(500)),
            ("2.s", ms(2000)),
            ("0.0000000019s", Duration::from_nanos(1)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_durations_say_how_to_write_one() {
        for text in [
            "", "7", "s", "-1s", "1d", "1.2.3s", "1 s", " 1s", "1s ", "1e3s", "1S", "+1s", ".s",
            "1sm",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains("is not a duration"), "{text}: {err}");
        }
        let err = parse_duration("99999999999999999999h").unwrap_err();
        assert!(err.contains("longest duration"), "{err}");
        assert!(parse_duration(&format!("{}h", "9".repeat(40))).is_err());
        assert!(parse_duration("315576000000s").is_ok());
        assert!(parse_duration("315576000001s").is_err());
    }

    #[test]
    fn regexes_are_compiled_and_bounded() {
        assert!(check_regex("^/api/v[0-9]+/.*$").is_ok());
        assert!(check_regex("(?i)jason").is_ok());
        let err = check_regex("(unclosed").unwrap_err();
        assert!(err.contains("unclosed group"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        // RE2 has no backreferences and no lookaround; neither has the regex crate.
        assert!(check_regex(r"(a)\1").is_err());
        assert!(check_regex("a(?=b)").is_err());
        assert!(check_regex(&"a".repeat(MAX_REGEX_BYTES + 1))
            .unwrap_err()
            .contains("at most"));
        let err = check_regex("a{1000}{1000}").unwrap_err();
        assert!(err.contains("size limit"), "{err}");
    }

    #[test]
    fn policy_ports_are_strings_or_numbers_from_1_to_65535() {
        let port = |yaml: &str| serde_yaml::from_str::<PolicyPort>(yaml).map(|p| p.0);
        assert_eq!(port("'9080'").unwrap(), 9080);
        assert_eq!(port("9080").unwrap(), 9080);
        for bad in [
            "0", "'0'", "65536", "-1", "'http'", "'+80'", "''", "1.5", "[80]",
        ] {
            let err = port(bad).unwrap_err().to_string();
            assert!(err.contains("port number"), "{bad}: {err}");
        }
    }

    #[test]
    fn words_name_what_is_accepted_and_why_others_are_refused() {
        let accepted = [("A", 1), ("B", 2)];
        let refused = [("C", "C is elsewhere")];
        assert_eq!(word("B", &accepted, &refused), Ok(2));
        assert_eq!(
            word("C", &accepted, &refused).unwrap_err(),
            "C is not supported: C is elsewhere"
        );
        assert_eq!(
            word("a", &accepted, &refused).unwrap_err(),
            "unknown value \"a\", expected one of A, B"
        );
    }
}
