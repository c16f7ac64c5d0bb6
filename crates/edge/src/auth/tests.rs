use std::time::Duration;

use breakwater_testkit::{FakeApiServer, Fault, Verb};
use http::HeaderValue;

use super::*;
use crate::config::AuthMode;

const SA: &str = "system:serviceaccount:monitoring:alertmanager";
const GROUP: &str = "remediation.kubernaut.io";
const RESOURCE: &str = "remediationrequests";

fn headers(authorization: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert(http::header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
    }
    headers
}

#[test]
fn the_bearer_token_is_read_from_the_authorization_header() {
    assert_eq!(bearer_token(&headers(Some("Bearer abc"))), Some("abc"));
    assert_eq!(bearer_token(&headers(Some("bearer  abc "))), Some("abc"));
    assert_eq!(bearer_token(&headers(Some("Basic YWxhZGRpbjpvcGVu"))), None);
    assert_eq!(bearer_token(&headers(Some("Bearer "))), None);
    assert_eq!(bearer_token(&headers(Some("Bearer"))), None);
    assert_eq!(bearer_token(&headers(None)), None);
}

#[test]
fn an_identity_too_long_for_ratelimit_is_sent_as_its_digest() {
    assert_eq!(Identity("token:alertmanager".into()).sender(), "token:alertmanager");
    let long = Identity("u".repeat(300));
    let sender = long.sender();
    assert!(sender.starts_with("sha256:") && sender.len() == 7 + 64, "{sender}");
    assert_ne!(sender, Identity("v".repeat(300)).sender(), "each long name keeps its own bucket");
}

fn static_config(paths: &[&Path]) -> AuthConfig {
    AuthConfig {
        mode: Some(AuthMode::Static),
        token_files: paths.iter().map(|p| p.to_path_buf()).collect(),
        token_reload_secs: 1,
        ..AuthConfig::default()
    }
}

#[tokio::test]
async fn static_tokens_come_from_files_and_directories_named_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("alertmanager"), "token-a\n").unwrap();
    std::fs::write(secret.join("k8s-events"), "token-b").unwrap();
    // A mounted Secret keeps its versions in dot-directories; they are not tokens.
    std::fs::create_dir(secret.join("..2026_01_01")).unwrap();
    std::fs::write(secret.join(".hidden"), "token-hidden").unwrap();
    let single = dir.path().join("ci");
    std::fs::write(&single, "  token-c  ").unwrap();

    let auth = Authenticator::from_token_files(&static_config(&[&secret, &single])).unwrap();
    let who = async |token| auth.authenticate(Some(token)).await.map(|i| i.name().to_owned());
    assert_eq!(who("token-a").await.unwrap(), "token:alertmanager");
    assert_eq!(who("token-b").await.unwrap(), "token:k8s-events");
    assert_eq!(who("token-c").await.unwrap(), "token:ci");
    assert_eq!(who("token-hidden").await, Err(AuthError::Invalid));
    assert_eq!(who("token-").await, Err(AuthError::Invalid));
    assert_eq!(who("token-a ").await, Err(AuthError::Invalid), "the header's token is compared as sent");
    assert_eq!(auth.authenticate(None).await, Err(AuthError::Missing));
}

#[test]
fn unusable_token_files_fail_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let err = Authenticator::from_token_files(&static_config(&[&missing])).err().unwrap().to_string();
    assert!(err.starts_with("edge.auth.token_files: cannot read") && err.contains("missing"), "{err}");

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let err = Authenticator::from_token_files(&static_config(&[&empty])).err().unwrap().to_string();
    assert!(err.contains("holds no token"), "{err}");

    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, "same").unwrap();
    std::fs::write(&b, "same").unwrap();
    let err = Authenticator::from_token_files(&static_config(&[&a, &b])).err().unwrap().to_string();
    assert!(err.contains("hold the same token"), "{err}");
    assert!(!err.contains("same\""), "the token is never shown: {err}");

    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("a"), "different").unwrap();
    let err = Authenticator::from_token_files(&static_config(&[&a, &other])).err().unwrap().to_string();
    assert!(err.contains("two tokens are named \"a\""), "{err}");

    let void = dir.path().join("void");
    std::fs::create_dir(&void).unwrap();
    let err = Authenticator::from_token_files(&static_config(&[&void])).err().unwrap().to_string();
    assert!(err.contains("holds no token file"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn rotated_token_files_take_effect_and_a_failed_read_keeps_the_old_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alertmanager");
    std::fs::write(&file, "old").unwrap();
    let auth = Authenticator::from_token_files(&static_config(&[&file])).unwrap();
    assert!(auth.authenticate(Some("old")).await.is_ok());

    std::fs::write(&file, "new").unwrap();
    assert!(auth.authenticate(Some("old")).await.is_ok(), "read again only every token_reload_secs");
    tokio::time::advance(Duration::from_millis(1100)).await;
    assert_eq!(auth.authenticate(Some("new")).await.unwrap().name(), "token:alertmanager");
    assert_eq!(auth.authenticate(Some("old")).await, Err(AuthError::Invalid));

    // The Secret briefly gone (or emptied) while it is updated: the tokens in use stay.
    std::fs::remove_file(&file).unwrap();
    tokio::time::advance(Duration::from_millis(1100)).await;
    assert!(auth.authenticate(Some("new")).await.is_ok());
}

fn kubernetes_config() -> KubernetesAuthConfig {
    KubernetesAuthConfig { timeout_ms: 500, ..KubernetesAuthConfig::default() }
}

/// A fake API server that knows the token `good` (a granted service account),
/// `ungranted` (a user with no grant), and no other.
async fn api_server() -> FakeApiServer {
    let api = FakeApiServer::start().await;
    api.accept_token("good", SA, &["system:serviceaccounts", "system:serviceaccounts:monitoring"]);
    api.accept_token("ungranted", "jane", &["developers"]);
    api.grant("system:serviceaccounts:monitoring", "create", GROUP, RESOURCE);
    api
}

fn reviews(api: &FakeApiServer, plural: &str) -> usize {
    api.request_log().iter().filter(|(verb, path, _)| *verb == Verb::Create && path.ends_with(plural)).count()
}

#[tokio::test]
async fn kubernetes_reviews_the_token_then_the_identitys_access() {
    let api = api_server().await;
    let auth = Authenticator::kubernetes(api.client_without_retry(), &kubernetes_config());
    assert_eq!(auth.authenticate(Some("good")).await.unwrap().name(), SA);
    assert_eq!(auth.authenticate(Some("nobody-issued-this")).await, Err(AuthError::Invalid));
    let err = auth.authenticate(Some("ungranted")).await.unwrap_err();
    assert_eq!(
        err,
        AuthError::Forbidden {
            identity: "jane".into(),
            verb: "create".into(),
            resource: "remediationrequests.remediation.kubernaut.io".into()
        }
    );
    assert_eq!(err.to_string(), "jane may not create remediationrequests.remediation.kubernaut.io");
    assert_eq!(auth.authenticate(None).await, Err(AuthError::Missing));
    // An invalid token is not worth an access review.
    assert_eq!((reviews(&api, "tokenreviews"), reviews(&api, "subjectaccessreviews")), (3, 2));
}

#[tokio::test]
async fn the_access_review_asks_for_the_configured_verb_resource_and_namespace() {
    let api = api_server().await;
    api.grant(SA, "update", "example.com", "widgets");
    let config = KubernetesAuthConfig {
        verb: "update".into(),
        group: "example.com".into(),
        resource: "widgets".into(),
        namespace: "monitoring".into(),
        ..kubernetes_config()
    };
    let auth = Authenticator::kubernetes(api.client_without_retry(), &config);
    assert_eq!(auth.authenticate(Some("good")).await.unwrap().name(), SA);
    let err = auth.authenticate(Some("ungranted")).await.unwrap_err().to_string();
    assert_eq!(err, "jane may not update widgets.example.com in namespace monitoring");
}

#[tokio::test]
async fn verdicts_are_cached_so_a_webhook_costs_no_api_call() {
    let api = api_server().await;
    let auth = Authenticator::kubernetes(api.client_without_retry(), &kubernetes_config());
    for _ in 0..5 {
        assert!(auth.authenticate(Some("good")).await.is_ok());
        assert!(matches!(auth.authenticate(Some("ungranted")).await, Err(AuthError::Forbidden { .. })));
        assert_eq!(auth.authenticate(Some("bad")).await, Err(AuthError::Invalid));
    }
    assert_eq!((reviews(&api, "tokenreviews"), reviews(&api, "subjectaccessreviews")), (3, 2));

    // A revoked token is refused once its verdict expires; with a TTL of 0, at once.
    let uncached = KubernetesAuthConfig { cache_ttl_secs: 0, denied_cache_ttl_secs: 0, ..kubernetes_config() };
    let auth = Authenticator::kubernetes(api.client_without_retry(), &uncached);
    assert!(auth.authenticate(Some("good")).await.is_ok());
    api.revoke_token("good");
    assert_eq!(auth.authenticate(Some("good")).await, Err(AuthError::Invalid));
}

#[tokio::test]
async fn an_api_failure_is_unavailable_not_unauthorized_and_is_not_cached() {
    let api = api_server().await;
    let auth = Authenticator::kubernetes(api.client_without_retry(), &kubernetes_config());
    api.inject_for(Verb::Create, Fault::Status { code: 503, retry_after_secs: None }, 1);
    let err = auth.authenticate(Some("good")).await.unwrap_err();
    assert!(matches!(&err, AuthError::Unavailable(cause) if cause.contains("tokenreview")), "{err:?}");
    assert!(!format!("{err:?}").contains("good"), "the token is not in the cause: {err:?}");
    assert_eq!(auth.authenticate(Some("good")).await.unwrap().name(), SA, "the next webhook is reviewed again");

    // The edge's own account may not create reviews: unavailable, with the fix in the log's cause.
    api.inject_for(Verb::Create, Fault::Status { code: 403, retry_after_secs: None }, 1);
    let err = auth.authenticate(Some("ungranted")).await.unwrap_err();
    assert!(matches!(&err, AuthError::Unavailable(cause) if cause.contains("auth-delegator-role.yaml")), "{err:?}");

    // Slower than timeout_ms: unavailable too.
    api.inject_for(Verb::Create, Fault::Latency(Duration::from_secs(2)), 1);
    let err = auth.authenticate(Some("ungranted")).await.unwrap_err();
    assert!(matches!(&err, AuthError::Unavailable(cause) if cause.contains("500 ms")), "{err:?}");
}

#[tokio::test]
async fn the_cache_is_bounded_and_forgets_what_expires_first() {
    let cache = ReviewCache::new(2);
    let now = Instant::now();
    let allowed = |name: &str| Verdict::Allowed(Identity(name.into()));
    cache.insert(digest("a"), allowed("a"), now + Duration::from_secs(60));
    cache.insert(digest("b"), Verdict::Invalid, now + Duration::from_secs(10));
    cache.insert(digest("c"), allowed("c"), now + Duration::from_secs(60));
    assert_eq!(cache.len(), 2);
    assert!(cache.get(&digest("b"), now).is_none(), "the entry closest to expiring made room");
    assert!(cache.get(&digest("a"), now).is_some() && cache.get(&digest("c"), now).is_some());
    // Past its expiry an entry is gone.
    assert!(cache.get(&digest("a"), now + Duration::from_secs(61)).is_none());
    assert_eq!(cache.len(), 1);
}

#[tokio::test]
async fn requests_with_one_new_token_at_once_share_one_review() {
    let api = api_server().await;
    api.inject_for(Verb::Create, Fault::Latency(Duration::from_millis(100)), 1);
    let auth = Arc::new(Authenticator::kubernetes(api.client_without_retry(), &kubernetes_config()));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let auth = Arc::clone(&auth);
            tokio::spawn(async move { auth.authenticate(Some("good")).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().name(), SA);
    }
    assert_eq!((reviews(&api, "tokenreviews"), reviews(&api, "subjectaccessreviews")), (1, 1));

    // A failure is shared too, and not kept: the next request asks again.
    api.inject_for(Verb::Create, Fault::Latency(Duration::from_millis(100)), 1);
    api.inject_for(Verb::Create, Fault::Status { code: 500, retry_after_secs: None }, 1);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let auth = Arc::clone(&auth);
            tokio::spawn(async move { auth.authenticate(Some("ungranted")).await })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Err(AuthError::Unavailable(_))));
    }
    assert!(matches!(auth.authenticate(Some("ungranted")).await, Err(AuthError::Forbidden { .. })));
}
