//! Any bytes as an Alertmanager webhook body: no panic, and what comes out respects the caps.
#![no_main]

use breakwater_edge::adapters::{Caps, prometheus};
use breakwater_signal::FingerprintRule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let caps = Caps::default();
    let Ok(parsed) = prometheus::read(body, &caps) else { return };
    let expanded = parsed.expanded_bytes();
    assert!(expanded <= caps.expanded_bytes);
    if let Ok(signals) = parsed.signals(0, &FingerprintRule::Resource) {
        for s in signals.iter().map(|i| &i.signal) {
            assert!(s.labels.values().all(|v| v.len() <= caps.label_value_bytes));
        }
    }
});
