use std::collections::HashMap;
use std::time::Duration;

use super::*;

fn signal(severity: pb::Severity, labels: &[(&str, &str)]) -> pb::Signal {
    pb::Signal {
        severity: severity.into(),
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ..pb::Signal::default()
    }
}

fn classifier(adjust: impl FnOnce(&mut ClassificationConfig)) -> Classifier {
    let mut config = ClassificationConfig::default();
    adjust(&mut config);
    Classifier::new(&config, Namespaces::table(&config)).unwrap()
}

impl Classifier {
    /// One alert looked up and classified, as `submit` does for a batch.
    fn classify_in(&self, signal: &pb::Signal, namespace: &str) -> Classification {
        let environments = futures::executor::block_on(self.namespace_environments(&[namespace]));
        self.classify(signal, &HashMap::new(), namespace, &environments)
    }
}

fn policy_file(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("priority.rego");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_built_in_policy_is_the_reference_table() {
    let c = classifier(|_| {});
    let priority = |severity, env: &str| c.classify_in(&signal(severity, &[("environment", env)]), "ns").priority;
    use pb::Severity::{Critical, Info, Warning};
    assert_eq!(priority(Critical, "production"), "P0");
    assert_eq!(priority(Critical, "staging"), "P1");
    assert_eq!(priority(Warning, "production"), "P1");
    assert_eq!(priority(Critical, "development"), "P2");
    assert_eq!(priority(Warning, "staging"), "P2");
    assert_eq!(priority(Info, "production"), "P3");
    assert_eq!(priority(Warning, "development"), "P2");
    // Compared literally, as the reference does.
    assert_eq!(priority(Critical, "prod"), "P2");
    // The team rule reads the alert's labels (the reference's input never had any).
    let platform = signal(Critical, &[("team", "platform-engineering")]);
    assert_eq!(c.classify_in(&platform, "ns").priority, "P0");
    assert_eq!(c.classify_in(&signal(Warning, &[("team", "platform-engineering")]), "ns").priority, "P2");
}

#[test]
fn the_environment_comes_from_the_namespace_table_then_the_alert_label() {
    let c = classifier(|config| {
        config.environments = HashMap::from([("shop".to_owned(), "production".to_owned())]);
    });
    let critical = |labels: &[(&str, &str)], ns: &str| c.classify_in(&signal(pb::Severity::Critical, labels), ns);
    let shop = critical(&[("environment", "staging")], "shop");
    assert_eq!((shop.environment.as_str(), shop.priority), ("production", "P0"), "the namespace's entry wins");
    assert_eq!(critical(&[("environment", "canary")], "other").environment, "canary", "any value, as-is");
    assert_eq!(critical(&[("environment", "PRODUCTION")], "other").environment, "PRODUCTION");
    assert_eq!(critical(&[], "other").environment, "unknown");
    assert_eq!(critical(&[("environment", "")], "other").environment, "unknown");
    let ignoring_labels = classifier(|config| config.alert_label = String::new());
    assert_eq!(
        ignoring_labels.classify_in(&signal(pb::Severity::Critical, &[("environment", "staging")]), "x").environment,
        "unknown"
    );
}

#[test]
fn the_remediation_path_follows_the_reference_table() {
    assert_eq!(remediation_path("production", "P0"), "aggressive");
    assert_eq!(remediation_path("production", "P2"), "conservative");
    assert_eq!(remediation_path("staging", "P2"), "manual");
    assert_eq!(remediation_path("development", "P1"), "moderate");
    assert_eq!(remediation_path("unknown", "P0"), "conservative");
    assert_eq!(remediation_path("canary", "P2"), "conservative");
    assert_eq!(remediation_path("production", "P3"), "manual");
    let c = classifier(|_| {});
    let r = c.classify_in(&signal(pb::Severity::Critical, &[("environment", "production")]), "ns");
    assert_eq!(r.remediation_path, "aggressive");
}

#[test]
fn a_custom_policy_decides_and_may_name_the_remediation_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = policy_file(
        &dir,
        r#"package kubernaut.gateway.priority
import rego.v1
default priority := "P3"
priority := "P0" if input.labels.team == "payments"
remediation_path := "manual" if input.namespace == "bank"
"#,
    );
    let c = classifier(|config| config.priority_policy = Some(path));
    let payments = c.classify_in(&signal(pb::Severity::Warning, &[("team", "payments")]), "shop");
    assert_eq!((payments.priority, payments.remediation_path), ("P0", "conservative"), "unknown env, P0: the table");
    let bank = c.classify_in(&signal(pb::Severity::Warning, &[("team", "payments")]), "bank");
    assert_eq!((bank.priority, bank.remediation_path), ("P0", "manual"), "the policy's path");
    assert_eq!(c.classify_in(&signal(pb::Severity::Critical, &[]), "shop").priority, "P3");
}

#[test]
fn a_policy_that_cannot_be_used_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let load = |text: &str| {
        let path = policy_file(&dir, text);
        let config = ClassificationConfig { priority_policy: Some(path), ..ClassificationConfig::default() };
        Classifier::new(&config, Namespaces::table(&config))
    };
    assert!(matches!(load("package kubernaut.gateway.priority\npriority := "), Err(PolicyError::Compile { .. })));
    let no_answer = load("package kubernaut.gateway.priority\nimport rego.v1\nother := 1\n");
    assert!(matches!(no_answer, Err(PolicyError::NoPriority { .. })), "{no_answer:?}");
    let wrong_answer = load("package kubernaut.gateway.priority\nimport rego.v1\npriority := \"urgent\"\n");
    assert!(matches!(wrong_answer, Err(PolicyError::NoPriority { .. })), "{wrong_answer:?}");
    let config = ClassificationConfig {
        priority_policy: Some(dir.path().join("absent.rego")),
        ..ClassificationConfig::default()
    };
    let missing = Classifier::new(&config, Namespaces::table(&config));
    assert!(matches!(missing, Err(PolicyError::Read { .. })));
}

#[test]
fn a_policy_failing_at_run_time_gives_p2() {
    let dir = tempfile::tempdir().unwrap();
    // Two rules give different answers for a staging alert: a conflict, an evaluation error.
    let path = policy_file(
        &dir,
        r#"package kubernaut.gateway.priority
import rego.v1
priority := "P0" if input.severity == "critical"
priority := "P1" if input.environment == "staging"
"#,
    );
    let c = classifier(|config| config.priority_policy = Some(path));
    assert_eq!(c.classify_in(&signal(pb::Severity::Critical, &[("environment", "production")]), "ns").priority, "P0");
    assert_eq!(c.classify_in(&signal(pb::Severity::Critical, &[("environment", "staging")]), "ns").priority, "P2");
}

#[test]
fn a_changed_policy_file_is_read_again_and_a_broken_change_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = "package kubernaut.gateway.priority\nimport rego.v1\npriority := \"P1\"\n";
    let path = policy_file(&dir, v1);
    let policy = PriorityPolicy::load(Some(path.clone()), Duration::ZERO).unwrap();
    let labels = HashMap::new();
    let input =
        policy::Input { severity: "critical", environment: "unknown", namespace: "ns", labels: Layered::own(&labels) };
    assert_eq!(policy.decide(&input).priority, "P1");
    std::fs::write(&path, "package kubernaut.gateway.priority\nimport rego.v1\npriority := \"P3\" # v2\n").unwrap();
    assert_eq!(policy.decide(&input).priority, "P3", "the cache is dropped with the old policy");
    std::fs::write(&path, "package kubernaut.gateway.priority\npriority := ((\n").unwrap();
    assert_eq!(policy.decide(&input).priority, "P3", "a broken change keeps the policy in use");
}

#[test]
fn the_readme_example_policy_compiles_and_decides() {
    let readme = include_str!("../../../../README.md");
    let section = readme.split("## Environment, priority and remediation path").nth(1).expect("the README section");
    let example = section.split("```rego\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a rego block");
    let dir = tempfile::tempdir().unwrap();
    let path = policy_file(&dir, example);
    let c = classifier(|config| config.priority_policy = Some(path));
    let decide = |severity, labels: &[(&str, &str)], ns: &str| {
        let r = c.classify_in(&signal(severity, labels), ns);
        (r.priority, r.remediation_path)
    };
    use pb::Severity::{Critical, Info};
    assert_eq!(decide(Info, &[("team", "payments")], "shop"), ("P0", "conservative"));
    assert_eq!(decide(Critical, &[("environment", "production")], "shop"), ("P1", "conservative"));
    assert_eq!(decide(Critical, &[("environment", "staging")], "shop"), ("P3", "manual"));
    assert_eq!(decide(Critical, &[("environment", "production"), ("team", "payments")], "bank"), ("P0", "manual"));
}
