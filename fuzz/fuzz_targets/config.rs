//! Any text as a configuration file: no panic, and an error never repeats a URL's password.
#![no_main]

use std::collections::HashMap;

use breakwater::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = Config::parse_over(Config::default(), Some(("fuzz.toml", text)), &HashMap::new()) {
        let shown = e.to_string();
        assert!(!shown.contains("Fuzz-Secret"), "{shown}");
    }
});
