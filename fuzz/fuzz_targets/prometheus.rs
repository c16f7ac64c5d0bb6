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
    let namespace_labels = prometheus::DEFAULT_NAMESPACE_LABELS.map(str::to_owned);
    let signals = parsed.signals(0, &FingerprintRule::Resource, &namespace_labels);
    assert!(signals.shared.labels.values().all(|v| v.len() <= caps.label_value_bytes));
    assert!(signals.shared.annotations.values().all(|v| v.len() <= caps.annotation_value_bytes));
    for read in signals.incoming {
        match read {
            Ok(incoming) => assert!(incoming.signal.labels.values().all(|v| v.len() <= caps.label_value_bytes)),
            Err(invalid) => assert!(!invalid.reason.is_empty()),
        }
    }
});
