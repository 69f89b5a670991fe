//! What the parser and the validation say about a config: each finding names the config, the
//! resource (kind and name) and the field it is about.

use std::fmt;

use crate::text::{clip, clip_to};

/// How much of a message a finding keeps: serde's messages list the expected fields, which
/// can be long, but a message must not carry a hostile megabyte along.
const MAX_MESSAGE_CHARS: usize = 1000;

/// One error (it rejected a resource, or the whole config when `resource` is `None`) or one
/// warning.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// The director config's name (for `boshy rules check`, the file's).
    pub config: String,
    pub resource: Option<ResourceRef>,
    /// The field's path inside the resource, as Istio spells it: `spec.http[0].route[1].weight`.
    pub field: Option<String>,
    pub message: String,
}

impl Finding {
    pub(crate) fn new(
        config: &str,
        resource: Option<&ResourceRef>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            config: clip(config),
            resource: resource.cloned(),
            field: field.map(|field| clip_to(field, MAX_MESSAGE_CHARS / 4)),
            message: clip_to(&message.into(), MAX_MESSAGE_CHARS),
        }
    }

    /// The finding as `istioctl analyze` prints one, after the severity:
    /// `[reviews] VirtualService reviews: spec.http[0].route[1].weight: reason`.
    pub fn to_line(&self) -> String {
        let mut line = format!("[{}]", self.config);
        if let Some(resource) = &self.resource {
            line.push_str(&format!(" {}", resource.plain()));
        }
        line.push(':');
        if let Some(field) = &self.field {
            line.push_str(&format!(" {field}:"));
        }
        line.push_str(&format!(" {}", self.message));
        line
    }
}

impl fmt::Display for Finding {
    /// `config "reviews": VirtualService "reviews": spec.http[0].route[1].weight: reason`.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "config {:?}: ", self.config)?;
        if let Some(resource) = &self.resource {
            write!(f, "{resource}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A resource as its config names it, even one too broken to be read: its `kind` and
/// `metadata.name` as written (clipped), and its position in a `List`'s `items`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceRef {
    pub kind: Option<String>,
    pub name: Option<String>,
    /// Its index in `items` when the config is a `List`.
    pub item: Option<usize>,
}

impl ResourceRef {
    pub(crate) fn new(kind: Option<&str>, name: Option<&str>, item: Option<usize>) -> Self {
        ResourceRef {
            kind: kind.map(clip),
            name: name.map(clip),
            item,
        }
    }

    /// `VirtualService reviews`, quoting the name only when it is not a plain resource name.
    pub fn plain(&self) -> String {
        self.render(|name| {
            if super::parse::is_resource_name(name) {
                name.to_string()
            } else {
                format!("{name:?}")
            }
        })
    }

    fn render(&self, name: impl Fn(&str) -> String) -> String {
        let kind = self.kind.as_deref().unwrap_or("resource");
        match (&self.name, self.item) {
            (Some(resource), _) => format!("{kind} {}", name(resource)),
            (None, Some(item)) => format!("{kind} items[{item}]"),
            (None, None) => format!("{kind} (no metadata.name)"),
        }
    }
}

impl fmt::Display for ResourceRef {
    /// `VirtualService "reviews"`; without a name, `VirtualService items[2]`.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.render(|name| format!("{name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_read_config_resource_field_reason() {
        let resource = ResourceRef::new(Some("VirtualService"), Some("reviews"), None);
        let finding = Finding::new(
            "reviews",
            Some(&resource),
            Some("spec.http[0].route[1].weight"),
            "invalid type: string \"fifty\", expected u32",
        );
        assert_eq!(
            finding.to_string(),
            "config \"reviews\": VirtualService \"reviews\": spec.http[0].route[1].weight: \
             invalid type: string \"fifty\", expected u32"
        );
        assert_eq!(
            finding.to_line(),
            "[reviews] VirtualService reviews: spec.http[0].route[1].weight: \
             invalid type: string \"fifty\", expected u32"
        );
        let whole = Finding::new("bad", None, None, "not YAML");
        assert_eq!(whole.to_string(), "config \"bad\": not YAML");
        assert_eq!(whole.to_line(), "[bad]: not YAML");
    }

    #[test]
    fn resources_without_a_usable_name_are_still_named() {
        let unnamed = ResourceRef::new(Some("DestinationRule"), None, Some(2));
        assert_eq!(unnamed.to_string(), "DestinationRule items[2]");
        assert_eq!(
            ResourceRef::new(None, None, None).plain(),
            "resource (no metadata.name)"
        );
        let odd = ResourceRef::new(Some("VirtualService"), Some("Not A Name"), None);
        assert_eq!(odd.plain(), "VirtualService \"Not A Name\"");
    }

    #[test]
    fn hostile_sizes_are_clipped() {
        let huge = "x".repeat(100_000);
        let resource = ResourceRef::new(Some(&huge), Some(&huge), None);
        let finding = Finding::new(&huge, Some(&resource), Some(&huge), huge.clone());
        assert!(
            finding.to_string().len() < 3000,
            "{}",
            finding.to_string().len()
        );
    }
}
