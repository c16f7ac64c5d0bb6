//! The cache against the testkit's fake API server, through a real `kube::Client`. Time is
//! passed in (`now`), so expiry is tested without waiting.

use std::time::{Duration, Instant};

use breakwater_proto::v1 as pb;
use breakwater_testkit::{FakeApiServer, Fault, Verb};

use super::*;
use crate::classify::{Classifier, Namespaces};

const OVERRIDES_NS: &str = "kubernaut-system";
const OVERRIDES: &str = "kubernaut-environment-overrides";

fn config(adjust: impl FnOnce(&mut ClassificationConfig)) -> ClassificationConfig {
    let mut config = ClassificationConfig::default();
    adjust(&mut config);
    config
}

fn environments(fake: &FakeApiServer, config: &ClassificationConfig) -> KubernetesEnvironments {
    KubernetesEnvironments::new(fake.client_without_retry(), config)
}

/// The environment `resolve` gives `namespace` at `now`.
async fn env_of(envs: &KubernetesEnvironments, namespace: &str, now: Instant) -> Option<String> {
    let resolved = envs.resolve(&[namespace], now).await;
    assert_eq!(resolved.len(), 1);
    resolved[0].1.as_deref().map(str::to_owned)
}

fn gets(fake: &FakeApiServer) -> usize {
    fake.count(Verb::Get)
}

#[tokio::test]
async fn the_label_wins_then_the_configmap_answers_and_else_none() {
    let fake = FakeApiServer::start().await;
    fake.set_namespace_labels("shop", &[("environment", "production")]);
    fake.set_namespace_labels("blog", &[("team", "web")]);
    fake.set_namespace_labels("empty", &[("environment", "")]);
    fake.set_configmap(OVERRIDES_NS, OVERRIDES, &[("shop", "staging"), ("blog", "development"), ("empty", "qa")]);
    let envs = environments(&fake, &config(|_| {}));
    let now = Instant::now();
    let resolved = envs.resolve(&["blog", "empty", "other", "shop"], now).await;
    let found: Vec<(&str, Option<&str>)> = resolved.iter().map(|(ns, env)| (ns.as_str(), env.as_deref())).collect();
    assert_eq!(
        found,
        [("blog", Some("development")), ("empty", Some("qa")), ("other", None), ("shop", Some("production"))],
        "the label beats the ConfigMap; an empty label is none"
    );
    assert_eq!(gets(&fake), 5, "four namespaces and the ConfigMap, once each");

    // Another label key, and no ConfigMap.
    let envs = environments(
        &fake,
        &config(|c| {
            c.namespace_label = "team".into();
            c.overrides_configmap = String::new();
        }),
    );
    assert_eq!(env_of(&envs, "blog", now).await.as_deref(), Some("web"));
    assert_eq!(env_of(&envs, "shop", now).await, None);
}

#[tokio::test]
async fn a_hit_asks_nothing_until_the_entry_expires() {
    let fake = FakeApiServer::start().await;
    fake.set_namespace_labels("shop", &[("environment", "production")]);
    let envs = environments(&fake, &config(|c| c.cache_ttl_secs = 30));
    let t0 = Instant::now();
    assert_eq!(env_of(&envs, "shop", t0).await.as_deref(), Some("production"));
    assert_eq!(gets(&fake), 2, "the namespace and the (missing) ConfigMap");

    fake.set_namespace_labels("shop", &[("environment", "staging")]);
    fake.set_configmap(OVERRIDES_NS, OVERRIDES, &[("blog", "development")]);
    for _ in 0..100 {
        assert_eq!(env_of(&envs, "shop", t0 + Duration::from_secs(29)).await.as_deref(), Some("production"));
    }
    assert_eq!(gets(&fake), 2, "hits ask nothing; the change is not seen yet");
    // A namespace not seen yet is asked for, but the ConfigMap's 404 is still remembered.
    assert_eq!(env_of(&envs, "blog", t0 + Duration::from_secs(29)).await, None);
    assert_eq!(gets(&fake), 3);

    let t1 = t0 + Duration::from_secs(31);
    assert_eq!(env_of(&envs, "shop", t1).await.as_deref(), Some("staging"));
    assert_eq!(env_of(&envs, "blog", t1).await.as_deref(), Some("development"), "the ConfigMap was read again");
    assert_eq!(gets(&fake), 5, "the expired namespace and ConfigMap; blog's entry still held");
}

#[tokio::test]
async fn a_failed_lookup_falls_back_and_is_remembered_briefly() {
    let fake = FakeApiServer::start().await;
    fake.set_namespace_labels("shop", &[("environment", "production")]);
    fake.set_configmap(OVERRIDES_NS, OVERRIDES, &[("shop", "staging")]);
    let envs = environments(&fake, &config(|_| {}));
    let t0 = Instant::now();
    // The namespace GET fails; the ConfigMap answers.
    fake.inject_for(Verb::Get, Fault::Status { code: 500, retry_after_secs: None }, 1);
    let first = env_of(&envs, "shop", t0).await;
    let log = fake.request_log();
    let failed_path = log.iter().find(|(_, _, code)| *code == 500).map(|(_, path, _)| path.clone());
    let expected = if failed_path.as_deref() == Some("/api/v1/namespaces/shop") { "staging" } else { "production" };
    assert_eq!(first.as_deref(), Some(expected), "{log:?}");
    let calls = gets(&fake);
    // Remembered for ERROR_TTL, not asked again at once …
    assert_eq!(env_of(&envs, "shop", t0 + Duration::from_secs(4)).await.as_deref(), Some(expected));
    assert_eq!(gets(&fake), calls);
    // … then asked again.
    assert_eq!(env_of(&envs, "shop", t0 + Duration::from_secs(6)).await.as_deref(), Some("production"));
    assert_eq!(gets(&fake), calls + 1);

    // Once known, a label stays in use through a failure after it expired.
    fake.inject_for(Verb::Get, Fault::Status { code: 503, retry_after_secs: None }, 2);
    let t2 = t0 + Duration::from_secs(60);
    assert_eq!(env_of(&envs, "shop", t2).await.as_deref(), Some("production"));
    // A namespace never known falls through to the ConfigMap (itself known from before).
    fake.inject_for(Verb::Get, Fault::Status { code: 403, retry_after_secs: None }, 1);
    fake.set_configmap(OVERRIDES_NS, OVERRIDES, &[("new", "canary")]);
    assert_eq!(env_of(&envs, "new", t2).await.as_deref(), None, "the ConfigMap as known, without new");
    assert_eq!(env_of(&envs, "new", t2 + Duration::from_secs(6)).await.as_deref(), Some("canary"));
}

#[tokio::test]
async fn a_slow_api_server_costs_at_most_the_lookup_timeout() {
    let fake = FakeApiServer::start().await;
    fake.set_namespace_labels("shop", &[("environment", "production")]);
    let envs = environments(&fake, &config(|c| c.lookup_timeout_ms = 100));
    fake.inject_for(Verb::Get, Fault::Latency(Duration::from_secs(3)), 2);
    let started = Instant::now();
    assert_eq!(env_of(&envs, "shop", started).await, None);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[tokio::test]
async fn a_namespace_asked_by_many_at_once_is_fetched_once() {
    let fake = FakeApiServer::start().await;
    fake.set_namespace_labels("shop", &[("environment", "production")]);
    fake.inject_for(Verb::Get, Fault::Latency(Duration::from_millis(200)), 2);
    let envs = environments(&fake, &config(|_| {}));
    let now = Instant::now();
    let all = futures::future::join_all((0..50).map(|_| env_of(&envs, "shop", now))).await;
    assert!(all.iter().all(|env| env.as_deref() == Some("production")), "{all:?}");
    assert_eq!(gets(&fake), 2, "one namespace GET and one ConfigMap GET for 50 callers");
}

#[tokio::test]
async fn the_cache_holds_at_most_its_entries() {
    let fake = FakeApiServer::start().await;
    let envs = environments(&fake, &config(|c| c.cache_max_entries = 3));
    let t0 = Instant::now();
    for (i, ns) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        envs.resolve(&[ns], t0 + Duration::from_secs(i as u64)).await;
    }
    assert_eq!(envs.labels.len(), 3);
    // The oldest went: "a" is asked again, "e" is not.
    let calls = gets(&fake);
    envs.resolve(&["e"], t0 + Duration::from_secs(5)).await;
    assert_eq!(gets(&fake), calls);
    envs.resolve(&["a"], t0 + Duration::from_secs(5)).await;
    assert_eq!(gets(&fake), calls + 1);
}

/// What a cache hit costs per alert: the batch's lookup and each alert's classification
/// (the policy's decision cached too), next to the same with the `environments` table.
/// Printed; the bound only catches a lookup per alert.
#[tokio::test]
async fn a_cache_hit_costs_little_per_alert() {
    let fake = FakeApiServer::start().await;
    fake.set_namespace_labels("shop", &[("environment", "production")]);
    fake.set_namespace_labels("blog", &[("environment", "staging")]);
    let kubernetes = config(|c| c.namespace_source = crate::config::NamespaceSource::Kubernetes);
    let table = config(|c| {
        c.environments = [("shop", "production"), ("blog", "staging")]
            .into_iter()
            .map(|(ns, env)| (ns.to_owned(), env.to_owned()))
            .collect();
    });
    let sources = [
        ("kubernetes", Classifier::new(&kubernetes, Namespaces::kubernetes(fake.client_without_retry(), &kubernetes))),
        ("table", Classifier::new(&table, Namespaces::table(&table))),
    ];
    let signal = |ns: &str| pb::Signal {
        severity: pb::Severity::Critical.into(),
        namespace: ns.to_owned(),
        labels: [("alertname", "HighLatency"), ("namespace", ns), ("pod", "api-1"), ("severity", "critical")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        ..pb::Signal::default()
    };
    for (source, classifier) in sources {
        let classifier = classifier.expect("the built-in policy");
        for batch_size in [1usize, 100] {
            let signals: Vec<pb::Signal> =
                (0..batch_size).map(|i| signal(if i % 2 == 0 { "shop" } else { "blog" })).collect();
            let targets: Vec<&str> = signals.iter().map(|s| s.namespace.as_str()).collect();
            let warm = classifier.namespace_environments(&targets).await;
            assert_eq!(classifier.classify(&signals[0], &HashMap::new(), targets[0], &warm).priority, "P0");
            drop(warm);
            let calls = gets(&fake);
            let rounds = 20_000 / batch_size;
            let started = Instant::now();
            for _ in 0..rounds {
                let environments = classifier.namespace_environments(&targets).await;
                for (signal, target) in signals.iter().zip(&targets) {
                    std::hint::black_box(classifier.classify(signal, &HashMap::new(), target, &environments));
                }
            }
            let per_alert = started.elapsed().as_nanos() / (rounds * batch_size) as u128;
            println!(
                "{source}, cache hit, batches of {batch_size}: {per_alert} ns per alert (lookup + classification)"
            );
            assert_eq!(gets(&fake), calls, "hits ask the API server nothing");
            assert!(per_alert < 1_000_000, "{per_alert} ns per alert");
        }
    }
}
