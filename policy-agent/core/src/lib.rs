//! The policy core: what NetworkPolicy means for a set of pods, with no cluster and no kernel.
//!
//! It loads and checks manifests ([`manifest`]), resolves a snapshot into the state each node's
//! maps hold ([`policy`]), and answers who can reach whom across nodes ([`explain`]). The agent,
//! its tests and the lab all use it; it depends on neither kube, aya nor tokio, so everything
//! here is tested without root.

pub mod api;
pub mod explain;
pub mod manifest;
pub mod matrix;
pub mod policy;
pub mod telemetry;

/// An error and its sources, on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `text` with every character that could steer a terminal written as an escape (`\u{1b}`):
/// control characters and the bidirectional formatting characters. For printing names and
/// other text that came from input.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(steers_terminal) {
        return text.into();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if steers_terminal(c) {
            escaped.extend(c.escape_unicode());
        } else {
            escaped.push(c);
        }
    }
    escaped.into()
}

/// Whether printing `c` raw could move the cursor, recolour or reorder what a terminal shows.
pub fn steers_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}
