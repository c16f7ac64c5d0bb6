//! Replays the committed fuzz corpus (`fuzz/corpus/prometheus`, `fuzz/corpus/kubernetes_event`)
//! through the adapters' entry points, as the fuzz targets call them: no input panics, what
//! comes out respects the caps, and the hostile cases of issue 11 get the answer they should.
//! This is how scripts/test exercises the corpus on a stable compiler.

use std::path::{Path, PathBuf};

use breakwater_edge::EdgeError;
use breakwater_edge::adapters::{Caps, TRUNCATED_ANNOTATION, kubernetes_event, prometheus};
use breakwater_signal::FingerprintRule;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .map(|path: PathBuf| (name(&path), std::fs::read(&path).unwrap()))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the {target} corpus has {} files", files.len());
    files
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn namespace_labels() -> Vec<String> {
    prometheus::DEFAULT_NAMESPACE_LABELS.map(str::to_owned).to_vec()
}

/// What the prometheus target does with one input: the numbers of signals and of alerts set
/// aside as invalid, or the error.
fn prometheus_target(body: &[u8]) -> Result<(usize, usize), EdgeError> {
    let caps = Caps::default();
    let parsed = prometheus::read(body, &caps)?;
    assert!(parsed.expanded_bytes() <= caps.expanded_bytes);
    let read = parsed.signals(0, &FingerprintRule::Resource, &namespace_labels());
    assert!(read.shared.labels.values().all(|v| v.len() <= caps.label_value_bytes));
    assert!(read.shared.annotations.values().all(|v| v.len() <= caps.annotation_value_bytes));
    let signals = read.incoming;
    for s in signals.iter().filter_map(|i| i.as_ref().ok()).map(|i| &i.signal) {
        assert!(s.labels.values().all(|v| v.len() <= caps.label_value_bytes));
        assert!(s.annotations.values().all(|v| v.len() <= caps.annotation_value_bytes));
    }
    let invalid = signals.iter().filter(|i| i.is_err()).count();
    Ok((signals.len() - invalid, invalid))
}

#[test]
fn every_prometheus_corpus_file_is_answered_without_panic() {
    for (file, body) in corpus("prometheus") {
        let outcome = std::panic::catch_unwind(|| prometheus_target(&body));
        let outcome = outcome.unwrap_or_else(|_| panic!("{file} panicked"));
        match file.as_str() {
            "valid-one-alert.json" | "huge-label-100k.json" | "resolved.json" => {
                assert_eq!(outcome.as_ref().ok(), Some(&(1, 0)), "{file}: {outcome:?}");
            }
            // One alert that cannot be a signal: answered in its result, the webhook is 2xx.
            "deep-nesting.json" | "missing-alertname.json" | "bad-status.json" | "label-values-not-strings.json" => {
                assert_eq!(outcome.as_ref().ok(), Some(&(0, 1)), "{file}: {outcome:?}");
            }
            // Common values are held once, however many alerts share them.
            "amplification-1000-alerts-10k-common.json" | "amplification-1000-alerts-4k-common.json" => {
                assert_eq!(outcome.ok(), Some((1000, 0)), "{file}");
            }
            // Many tiny alerts are many signals: past the expansion cap, refused before any is built.
            "expansion-40000-tiny-alerts.json" => {
                assert!(matches!(outcome, Err(EdgeError::ExpansionTooLarge { .. })), "{file}: {outcome:?}");
            }
            "empty" | "null.json" | "alerts-not-array.json" | "latin1-bytes.json" | "trailing-garbage.json" => {
                assert!(matches!(outcome, Err(EdgeError::BadRequest(_))), "{file}: {outcome:?}");
            }
            _ => {}
        }
    }
}

#[test]
fn a_cut_value_is_listed_on_its_signal() {
    let (_, body) = corpus("prometheus").into_iter().find(|(f, _)| f == "multibyte-label-at-cap.json").unwrap();
    let signals =
        prometheus::read(&body, &Caps::default()).unwrap().signals(0, &FingerprintRule::Resource, &namespace_labels());
    let signal = &signals.incoming[0].as_ref().unwrap().signal;
    assert_eq!(signal.annotations[TRUNCATED_ANNOTATION], "annotations.a,labels.blob");
    // Cut at a character boundary: 4096 bytes fall inside a 2-byte 'é'.
    assert_eq!(signal.labels["blob"].len(), 4096);
}

#[test]
fn every_kubernetes_event_corpus_file_is_answered_without_panic() {
    let caps = Caps::default();
    for (file, body) in corpus("kubernetes_event") {
        let outcome = std::panic::catch_unwind(|| {
            kubernetes_event::parse_capped(&body, 0, &FingerprintRule::Resource, &caps).map(|signals| {
                for s in signals.iter().map(|i| &i.signal) {
                    assert!(s.annotations.values().all(|v| v.len() <= caps.annotation_value_bytes));
                }
                signals.len()
            })
        });
        let outcome = outcome.unwrap_or_else(|_| panic!("{file} panicked"));
        match file.as_str() {
            "valid-warning.json" | "huge-message-100k.json" | "cluster-scoped.json" => {
                assert_eq!(outcome.as_ref().ok(), Some(&1), "{file}: {outcome:?}");
            }
            "normal.json" | "empty" | "deep-nesting.json" | "latin1-bytes.json" => {
                assert!(matches!(outcome, Err(EdgeError::BadRequest(_))), "{file}: {outcome:?}");
            }
            _ => {}
        }
    }
}
