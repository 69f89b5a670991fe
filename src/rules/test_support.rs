//! What the rules' unit tests share.

use super::parse::parse_config;
use super::Finding;

/// The errors and warnings (`field: message`) of one resource of `kind` (in `api_version`)
/// whose spec is `spec`, as `parse_config` finds them.
pub(super) fn findings_of(api_version: &str, kind: &str, spec: &str) -> (Vec<String>, Vec<String>) {
    let spec = spec.trim_end().replace('\n', "\n  ");
    let content = format!(
        "apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: r}}\nspec:\n  {spec}\n"
    );
    let parsed = parse_config("c", &content);
    let lines = |findings: &[Finding]| {
        findings
            .iter()
            .map(|f| format!("{}: {}", f.field.as_deref().unwrap_or(""), f.message))
            .collect()
    };
    (lines(&parsed.errors), lines(&parsed.warnings))
}
