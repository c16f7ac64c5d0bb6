//! What classifying an alert costs (environment, Rego priority, remediation path): per alert
//! when the policy's decision is cached (a repeat of an incident the policy already saw), and
//! when it is evaluated (a new label set).
//!
//! `cargo bench -p breakwater-edge --bench classify`. Each figure is the median of 5 runs.

use std::collections::HashMap;
use std::time::Instant;

use breakwater_edge::classify::{Classifier, Namespaces};
use breakwater_edge::config::ClassificationConfig;
use breakwater_proto::v1 as pb;

const INCIDENTS: usize = 1000;
const RUNS: usize = 5;

fn signal(i: usize) -> pb::Signal {
    let labels: HashMap<String, String> = [
        ("alertname", "KubePodCrashLooping".to_owned()),
        ("namespace", format!("team-{}", i % 20)),
        ("pod", format!("api-{i}")),
        ("severity", "critical".to_owned()),
        ("team", "platform-engineering".to_owned()),
        ("environment", "production".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    pb::Signal { severity: pb::Severity::Critical.into(), labels, ..pb::Signal::default() }
}

fn median(mut ns: Vec<f64>) -> f64 {
    ns.sort_by(f64::total_cmp);
    ns[ns.len() / 2]
}

fn main() {
    let signals: Vec<pb::Signal> = (0..INCIDENTS).map(signal).collect();
    let config = ClassificationConfig::default();
    let mut cached = Vec::new();
    let mut evaluated = Vec::new();
    for _ in 0..RUNS {
        let classifier = Classifier::new(&config, Namespaces::table(&config)).expect("the built-in policy");
        // The namespace sources are asked once per webhook, not per alert (the table: no I/O;
        // the Kubernetes source's cache hit is measured by a unit test of classify/kubernetes).
        let environments = futures::executor::block_on(classifier.namespace_environments(&["prod"]));
        let shared = HashMap::new();
        // First pass: every label set is new to the policy.
        let start = Instant::now();
        for s in &signals {
            std::hint::black_box(classifier.classify(s, &shared, "prod", &environments));
        }
        evaluated.push(start.elapsed().as_nanos() as f64 / INCIDENTS as f64);
        // Then repeats: every decision is cached.
        let rounds = 50;
        let start = Instant::now();
        for _ in 0..rounds {
            for s in &signals {
                std::hint::black_box(classifier.classify(s, &shared, "prod", &environments));
            }
        }
        cached.push(start.elapsed().as_nanos() as f64 / (INCIDENTS * rounds) as f64);
    }
    println!("classify, decision cached:    {:>9.0} ns/alert (median of {RUNS})", median(cached));
    println!("classify, policy evaluated:   {:>9.0} ns/alert (median of {RUNS})", median(evaluated));
}
