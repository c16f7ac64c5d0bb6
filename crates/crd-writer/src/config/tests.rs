use super::*;

#[test]
fn defaults_are_valid_and_documented_values() {
    let config = CrdWriterConfig::default();
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(config.sink, SinkKind::Directory);
    assert_eq!(config.directory, PathBuf::from("./remediations"));
    assert_eq!(config.fallback_namespace, "kubernaut-system");
    assert_eq!(config.flush_interval(), Duration::from_secs(1));
    assert_eq!(config.affected_resources_cap, 100);
    assert_eq!(config.retry, RetryConfig { max_attempts: 5, initial_backoff_ms: 100, max_backoff_ms: 5000 });
}

#[test]
fn empty_input_is_the_default_and_unknown_keys_are_rejected() -> Result<(), serde_json::Error> {
    let parsed: CrdWriterConfig = serde_json::from_str("{}")?;
    assert_eq!(parsed, CrdWriterConfig::default());
    let parsed: CrdWriterConfig =
        serde_json::from_str(r#"{"sink":"kubernetes","retry":{"max_attempts":3},"flush_interval_ms":250}"#)?;
    assert_eq!(parsed.sink, SinkKind::Kubernetes);
    assert_eq!(parsed.retry.max_attempts, 3);
    assert_eq!(parsed.retry.max_backoff_ms, 5000);
    assert_eq!(parsed.flush_interval_ms, 250);
    assert!(serde_json::from_str::<CrdWriterConfig>(r#"{"flush_interval":1}"#).is_err());
    assert!(serde_json::from_str::<CrdWriterConfig>(r#"{"retry":{"attempts":1}}"#).is_err());
    assert!(serde_json::from_str::<CrdWriterConfig>(r#"{"sink":"Kubernetes"}"#).is_err());
    Ok(())
}

#[test]
fn validation_names_key_value_and_range() {
    let cases: Vec<(CrdWriterConfig, &str)> = vec![
        (
            CrdWriterConfig { flush_interval_ms: 0, ..CrdWriterConfig::default() },
            "crd_writer.flush_interval_ms = 0 is not allowed: use 1..=60000",
        ),
        (
            CrdWriterConfig { affected_resources_cap: 5000, ..CrdWriterConfig::default() },
            "crd_writer.affected_resources_cap = 5000 is not allowed: use 1..=1000",
        ),
        (
            CrdWriterConfig {
                retry: RetryConfig { max_attempts: 0, ..RetryConfig::default() },
                ..CrdWriterConfig::default()
            },
            "crd_writer.retry.max_attempts = 0 is not allowed: use 1..=20",
        ),
        (
            CrdWriterConfig {
                retry: RetryConfig { initial_backoff_ms: 500, max_backoff_ms: 100, ..RetryConfig::default() },
                ..CrdWriterConfig::default()
            },
            "crd_writer.retry.max_backoff_ms = 100 is not allowed: use 500..=300000 (at least crd_writer.retry.initial_backoff_ms)",
        ),
    ];
    for (config, message) in cases {
        assert_eq!(config.validate(), Err(message.to_owned()));
    }
    let bad_ns = CrdWriterConfig { fallback_namespace: "Kubernaut_System".to_owned(), ..CrdWriterConfig::default() };
    let err = bad_ns.validate().err().unwrap_or_default();
    assert!(err.starts_with("crd_writer.fallback_namespace = \"Kubernaut_System\" is not allowed"), "{err}");
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let retry = RetryConfig { max_attempts: 10, initial_backoff_ms: 100, max_backoff_ms: 1000 };
    let waits: Vec<u128> = (1..=6).map(|n| retry.backoff(n).as_millis()).collect();
    assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
    assert_eq!(retry.backoff(200), Duration::from_millis(1000), "no overflow");
}
