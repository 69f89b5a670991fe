//! Quoting untrusted input in error messages.

/// How much of a value from the network an error message quotes.
pub(crate) const MAX_QUOTED_CHARS: usize = 160;

/// `text` cut to [`MAX_QUOTED_CHARS`] characters, with the number of bytes left out: an error
/// that quotes what a peer sent must say what was wrong without turning a hostile megabyte
/// value into a megabyte log line.
pub fn clip(text: &str) -> String {
    clip_to(text, MAX_QUOTED_CHARS)
}

/// `text` cut to `max_chars` characters, with the number of bytes left out: for a whole
/// message that quotes input (a parser's error), which may say more than one quoted value.
pub fn clip_to(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}… ({} more bytes)", &text[..cut], text.len() - cut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_on_a_char_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(1000);
        let clipped = clip(&long);
        assert!(
            clipped.starts_with(&"é".repeat(MAX_QUOTED_CHARS)),
            "{clipped}"
        );
        assert!(clipped.ends_with(&format!("({} more bytes)", 2 * (1000 - MAX_QUOTED_CHARS))));
    }
}
