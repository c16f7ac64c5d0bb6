//! Any text as a configuration file: no panic, and an error never repeats the password of a
//! URL in it (`scheme://user:Fuzz-Secret@host`). A value typed into another key is no secret
//! and may be quoted back (`unknown variant ...`).
#![no_main]

use std::collections::HashMap;

use breakwater::Config;
use libfuzzer_sys::fuzz_target;

const MARKER: &str = "Fuzz-Secret";

/// Whether `MARKER` stands as the password of a URL in `text`: after `://` and a `:`, and
/// before an `@`, with no whitespace or quote in between.
fn marker_is_a_url_password(text: &str) -> bool {
    text.match_indices(MARKER).any(|(at, _)| {
        let stop = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`');
        let before = &text[..at];
        let token_start = before.rfind(stop).map_or(0, |i| i + 1);
        let token_before = &before[token_start..];
        let after = &text[at + MARKER.len()..];
        let token_after = &after[..after.find(stop).unwrap_or(after.len())];
        token_before.contains("://") && token_before.ends_with(':') && token_after.contains('@')
    })
}

fuzz_target!(|text: &str| {
    if let Err(e) = Config::parse_over(Config::default(), Some(("fuzz.toml", text)), &HashMap::new())
        && marker_is_a_url_password(text)
    {
        let shown = e.to_string();
        assert!(!shown.contains(MARKER), "{shown}");
    }
});
