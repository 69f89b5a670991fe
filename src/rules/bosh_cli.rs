//! What of a file `bosh update-config` sends to the director: the bosh CLI reads the file as
//! YAML and keeps its first document only, so a file of several `---` documents loses all
//! but the first without a word. `boshy rules check` reads files the same way and says so.

/// The first YAML document of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstDocument<'a> {
    pub text: &'a str,
    /// Whether later documents hold anything: the bosh CLI would drop them.
    pub drops_documents: bool,
}

/// Splits off the first document. A document marker (`---`, or `...` which ends a document)
/// counts only at the start of a line and followed by a blank or the line's end, as in YAML;
/// inside a document no line can start that way, not even in a block scalar.
pub fn first_document(text: &str) -> FirstDocument<'_> {
    // The first document begins at a `---` or at the first content, whichever comes first;
    // the next marker after that ends it.
    let mut started = false;
    let mut end = text.len();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        match marker(line) {
            Some(Marker::Start) if !started => started = true,
            Some(_) if started => {
                end = offset;
                break;
            }
            Some(Marker::End) => {}
            _ => started |= is_content(line),
        }
        offset += line.len();
    }
    let rest = &text[end..];
    let drops_documents = rest.split_inclusive('\n').any(|line| match marker(line) {
        // Content may follow the marker on its line: `--- {a: 1}`.
        Some(_) => is_content(&line[3..]),
        None => is_content(line),
    });
    FirstDocument {
        text: &text[..end],
        drops_documents,
    }
}

enum Marker {
    Start,
    End,
}

fn marker(line: &str) -> Option<Marker> {
    let kind = if line.starts_with("---") {
        Marker::Start
    } else if line.starts_with("...") {
        Marker::End
    } else {
        return None;
    };
    match line[3..].chars().next() {
        None | Some(' ' | '\t' | '\r' | '\n') => Some(kind),
        Some(_) => None,
    }
}

/// Whether a line holds YAML content: not blank, not a comment, not a directive (`%YAML`).
fn is_content(line: &str) -> bool {
    let trimmed = line.trim();
    !trimmed.is_empty() && !trimmed.starts_with('#') && !line.starts_with('%')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// The first document as serde_yaml reads it.
    fn first_value(text: &str) -> Option<serde_yaml::Value> {
        let document = serde_yaml::Deserializer::from_str(text).next()?;
        serde_yaml::Value::deserialize(document).ok()
    }

    #[test]
    fn one_document_is_kept_whole() {
        for text in [
            "a: 1\n",
            "---\na: 1\n",
            "# comment\n---\na: 1\n---\n",
            "%YAML 1.1\n---\na: 1\n...\n",
            "a: |\n  ---\n  text\n",
            "a: 1\n--- # only a comment after\n# and here\n\n",
            "",
        ] {
            let first = first_document(text);
            assert!(!first.drops_documents, "{text:?}");
            assert_eq!(first_value(first.text), first_value(text), "{text:?}");
        }
    }

    #[test]
    fn later_documents_are_split_off_and_reported() {
        let first = first_document("---\na: 1\n---\nb: 2\n");
        assert_eq!(
            first,
            FirstDocument {
                text: "---\na: 1\n",
                drops_documents: true
            }
        );
        let first = first_document("a: 1\n--- {b: 2}\n");
        assert_eq!(
            first,
            FirstDocument {
                text: "a: 1\n",
                drops_documents: true
            }
        );
        let first = first_document("a: 1\n...\nb: 2\n");
        assert_eq!(
            first,
            FirstDocument {
                text: "a: 1\n",
                drops_documents: true
            }
        );
        // Not markers: more dashes, or text right after them.
        let first = first_document("a: 1\n----\n---x\n");
        assert!(!first.drops_documents);
        assert_eq!(first.text.len(), "a: 1\n----\n---x\n".len());
    }
}
