use super::*;

fn keys(text: &str) -> Reads {
    Reads::of(text)
}

#[test]
fn the_built_in_policy_reads_one_label() {
    let reads = Reads::of(DEFAULT_POLICY);
    assert_eq!(reads.labels, LabelsRead::Keys(vec!["team".to_owned()]));
    assert!(!reads.namespace && !reads.remediation_path);
}

#[test]
fn what_a_policy_reads_is_found_conservatively() {
    let named = keys(
        r#"p := "P0" if { input.labels.team == "a"; input.labels["app.kubernetes.io/name"] == "x"; input.namespace == "n" }"#,
    );
    assert_eq!(named.labels, LabelsRead::Keys(vec!["app.kubernetes.io/name".to_owned(), "team".to_owned()]));
    assert!(named.namespace);
    // Any other use of the labels, or of the whole input, may read every label.
    for text in [
        "p if { some k; input.labels[k] == \"x\" }",
        "p if { object.get(input.labels, \"team\", \"\") == \"a\" }",
        "p if { x := input; x.labels.team == \"a\" }",
        "p if { input[\"labels\"].team == \"a\" }",
    ] {
        assert_eq!(keys(text).labels, LabelsRead::All, "{text}");
    }
    // Words that only contain "input" are not uses of it.
    assert_eq!(keys("my_input := 1\ninputs := 2").labels, LabelsRead::Keys(vec![]));
    assert!(keys("remediation_path := \"manual\"").remediation_path);
}

#[test]
fn a_decision_is_cached_by_what_the_policy_reads_only() {
    let policy = PriorityPolicy::load(None, Duration::from_secs(60)).unwrap();
    let with = |pod: &str, team: &str| {
        HashMap::from([("pod".to_owned(), pod.to_owned()), ("team".to_owned(), team.to_owned())])
    };
    let (a, b, c) =
        (with("api-1", "platform-engineering"), with("api-2", "platform-engineering"), with("api-1", "payments"));
    let input =
        |labels| Input { severity: "critical", environment: "unknown", namespace: "ns", labels: Layered::own(labels) };
    assert_eq!(policy.decide(&input(&a)).priority, "P0");
    assert_eq!(policy.decide(&input(&b)).priority, "P0");
    assert_eq!(policy.decide(&input(&c)).priority, "P2", "another team is another input");
    let cached = policy.loaded.lock().unwrap().cache.len();
    assert_eq!(cached, 2, "two pods of one team are one decision");
}

#[test]
fn comments_are_not_reads() {
    let reads = keys("# input.labels[k] and remediation_path\np if { input.labels.team == \"a#b\" } # input\n");
    assert_eq!(reads.labels, LabelsRead::Keys(vec!["team".to_owned()]));
    assert!(!reads.remediation_path);
}
