//! Limits that keep a hostile manifest from costing unbounded CPU or memory before it is
//! read: the nesting depth of YAML flow collections, and the number of nodes a document
//! expands to with its aliases replayed. Both are checked before serde_yaml builds anything.

use std::cell::Cell;

use serde::de::{
    DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess, VariantAccess,
    Visitor,
};

/// Deeper flow nesting than this is refused before libyaml sees it: libyaml's scanner does
/// work proportional to the flow depth for every token, so 100 KB of `[` costs minutes of
/// CPU, while serde_yaml refuses anything nested deeper than 128 anyway. Counted on the raw
/// text (brackets in quoted strings too), which only ever over-counts.
pub(crate) const MAX_FLOW_DEPTH: usize = 256;

/// A manifest that expands to more YAML nodes than this, aliases replayed, is refused before
/// it is built in memory. serde_yaml bounds alias replay only to 100 times the document's
/// event count, so a 1 MB document of aliases of one large anchor could still expand to
/// billions of nodes ("billion laughs"). Real manifests (cf-deployment with its ops files)
/// have tens of thousands of nodes.
pub(crate) const MAX_MANIFEST_NODES: usize = 1_000_000;

/// Whether the running count of `[`/`{` minus `]`/`}` ever passes `limit`.
pub(crate) fn flow_depth_exceeds(yaml: &str, limit: usize) -> bool {
    let mut depth = 0usize;
    for byte in yaml.bytes() {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

pub(crate) enum SizeCheck {
    TooManyNodes,
    Yaml(serde_yaml::Error),
}

/// Walks the document as serde_yaml replays it (aliases expanded) without building anything,
/// and stops as soon as it has seen more than [`MAX_MANIFEST_NODES`] nodes, so the time and
/// memory of an alias bomb are bounded by the budget, not by the expansion.
pub(crate) fn check_expanded_size(yaml: &str) -> Result<(), SizeCheck> {
    // An alias replays an anchor, and an anchor is written with `&`: without one anywhere in
    // the text, the document expands to no more nodes than it holds, and this walk (about
    // 40% of reading a rule config, measured by `boshy-bench rules`) is skipped. Whatever it
    // would have said of invalid YAML, building the value says next.
    if !yaml.contains('&') {
        return Ok(());
    }
    let budget = Cell::new(MAX_MANIFEST_NODES);
    let walked =
        NodeCounter { budget: &budget }.deserialize(serde_yaml::Deserializer::from_str(yaml));
    match walked {
        Ok(()) => Ok(()),
        Err(_) if budget.get() == 0 => Err(SizeCheck::TooManyNodes),
        Err(err) => Err(SizeCheck::Yaml(err)),
    }
}

/// Counts nodes against a shared budget; every visit of a node costs one.
#[derive(Clone, Copy)]
struct NodeCounter<'b> {
    budget: &'b Cell<usize>,
}

impl NodeCounter<'_> {
    fn spend<E: serde::de::Error>(self) -> Result<(), E> {
        match self.budget.get().checked_sub(1) {
            Some(left) if left > 0 => {
                self.budget.set(left);
                Ok(())
            }
            _ => {
                self.budget.set(0);
                Err(E::custom("the node budget is spent"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for NodeCounter<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeCounter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.spend()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.spend()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.spend()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.spend()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.spend()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.spend()
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.spend()
    }
    fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<(), D::Error> {
        self.deserialize(inner)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.spend()?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.spend()?;
        while map.next_entry_seed(self, self)?.is_some() {}
        Ok(())
    }
    /// serde_yaml presents a `!tag value` as an enum: the tag, then the value.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        self.spend()?;
        let (IgnoredAny, value) = data.variant::<IgnoredAny>()?;
        value.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::manifest::{parse, ManifestError};

    #[test]
    fn alias_bombs_are_refused_without_expanding_them() {
        // Billion laughs: nine levels of nine aliases of the level below.
        let mut bomb = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for level in 1..10 {
            let below = format!("*a{}", level - 1);
            bomb.push_str(&format!(
                "a{level}: &a{level} [{}]\n",
                [below.as_str(); 9].join(", ")
            ));
        }
        bomb.push_str("instance_groups: *a9\n");
        assert!(parse("bomb", &bomb).is_err());

        // Under serde_yaml's own replay limit (100x the events), but 4 million nodes.
        let anchor = vec!["1"; 2000].join(", ");
        let aliases = vec!["*big"; 2000].join(", ");
        let wide = format!("big: &big [{anchor}]\ninstance_groups: []\nall: [{aliases}]\n");
        let err = parse("wide", &wide).unwrap_err();
        assert!(matches!(err, ManifestError::TooManyNodes { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("\"wide\"") && msg.contains("alias bomb"),
            "{msg}"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!(
            "instance_groups: {}{}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let err = parse("deep", &deep).unwrap_err();
        assert!(matches!(err, ManifestError::TooDeep { .. }), "{err}");
        let nested = format!("instance_groups: {}{}\n", "[".repeat(200), "]".repeat(200));
        let err = parse("nested", &nested).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
        let block = format!("instance_groups:\n{}1\n", "- ".repeat(5_000));
        let err = parse("block", &block).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }

    #[test]
    fn balanced_brackets_anywhere_are_fine() {
        let many = "[a], {b: c}, ".repeat(1000);
        let yaml = format!("x: [{many}]\ninstance_groups: []\nscript: \"[[[[ ]]]]\"\n");
        assert!(parse("d", &yaml).is_ok());
    }

    #[test]
    fn manifests_with_anchors_under_the_budget_parse() {
        let yaml = "ports: &ports\n- {name: http, number: 8080}\n\
                    instance_groups:\n\
                    - name: a\n  jobs:\n  - {name: j, expose_ports: *ports}\n\
                    - name: b\n  jobs:\n  - {name: j, expose_ports: *ports}\n";
        let parsed = parse("d", yaml).unwrap();
        assert_eq!(parsed.services.len(), 2);
    }
}
