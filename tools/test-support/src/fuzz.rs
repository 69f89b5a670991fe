//! What the property-based fuzzers share: the runner (proptest runs in `cargo test` on
//! stable), YAML scalars, and YAML token soups; each fuzzer brings the words of its own
//! format.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_yaml::Value;

/// A runner for `cases` random inputs. Failures are reproduced from the printed input; no
/// regression files are written into the tree.
pub fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// A YAML scalar: null, a bool, one of `numbers`, any float, one of `words`, or printable
/// text of up to `max_text_chars` characters.
pub fn yaml_scalar(
    numbers: Vec<i64>,
    words: Vec<&'static str>,
    max_text_chars: usize,
) -> impl Strategy<Value = Value> + Clone {
    let text = proptest::string::string_regex(&format!("\\PC{{0,{max_text_chars}}}"))
        .expect("a valid regex");
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop::sample::select(numbers).prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|f| Value::Number(f.into())),
        prop::sample::select(words).prop_map(|s| Value::String(s.to_string())),
        text.prop_map(Value::String),
    ]
}

/// YAML's own significant tokens: block and flow structure, indentation, anchors, aliases and
/// merge keys, tags, quotes, block scalars, comments, complex keys, directives and document
/// markers, and characters a reader must survive (tab, byte-order mark, NUL).
const YAML_TOKENS: [&str; 30] = [
    "- ",
    "  ",
    "\n",
    "\n  ",
    "\n    ",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: ",
    "[",
    "]",
    "{",
    "}",
    ", ",
    ": ",
    "!tag ",
    "'",
    "\"",
    "|",
    ">",
    "#",
    "? ",
    "%YAML 1.2\n",
    "---\n",
    "...\n",
    "x",
    "\t",
    "\u{feff}",
    "\u{0}",
];

/// Up to `max_tokens` tokens in any order, from `words` (the format's own) and YAML's.
pub fn yaml_soup(words: &[&'static str], max_tokens: usize) -> impl Strategy<Value = String> {
    let tokens: Vec<&'static str> = words.iter().chain(&YAML_TOKENS).copied().collect();
    prop::collection::vec(prop::sample::select(tokens), 0..max_tokens)
        .prop_map(|tokens| tokens.concat())
}
