//! Any bytes as a Kubernetes Event body: no panic, and what comes out respects the caps.
#![no_main]

use breakwater_edge::adapters::{Caps, kubernetes_event};
use breakwater_signal::FingerprintRule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let caps = Caps::default();
    if let Ok(signals) = kubernetes_event::parse_capped(body, 0, &FingerprintRule::Resource, &caps) {
        for s in signals.iter().map(|i| &i.signal) {
            assert!(s.annotations.values().all(|v| v.len() <= caps.annotation_value_bytes));
        }
    }
});
