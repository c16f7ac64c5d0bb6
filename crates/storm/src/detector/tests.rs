use super::*;

fn rules() -> StormRules {
    StormRules::new(10, 5, Duration::from_secs(60), Duration::from_secs(300), 100)
}

/// Feeds alerts through `decide` the way a store does; `resources[i]` is the
/// resource of alert i, all at `now`.
fn feed(rules: &StormRules, resources: &[&str], now: UnixMillis, window: &mut Option<Window>, list: &mut Vec<String>) -> Vec<Verdict> {
    resources
        .iter()
        .map(|r| {
            let (v, next) = rules.decide(window.as_ref(), list.iter().any(|l| l == r), now);
            if next.reset {
                list.clear();
            }
            if next.add_resource {
                list.push((*r).to_owned());
            }
            *window = Some(next.window);
            v
        })
        .collect()
}

#[test]
fn rate_equal_to_threshold_is_not_a_storm_one_more_is() {
    let (mut w, mut list) = (None, Vec::new());
    let same = ["prod:Pod:a"; 11];
    let v = feed(&rules(), &same, 0, &mut w, &mut list);
    assert!(v[..10].iter().all(|v| v.outcome == Outcome::None));
    assert_eq!(v[10].outcome, Outcome::Opened);
    assert_eq!(v[10].storm, Some(StormType::Rate));
    assert_eq!(v[10].storm_alerts, 1);
}

#[test]
fn pattern_equal_to_threshold_is_not_a_storm_one_more_is() {
    let (mut w, mut list) = (None, Vec::new());
    let pods: Vec<String> = (0..7).map(|i| format!("prod:Pod:p{i}")).collect();
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    let v = feed(&rules(), &pods, 0, &mut w, &mut list);
    assert!(v[..5].iter().all(|v| v.outcome == Outcome::None));
    assert_eq!((v[5].outcome, v[5].storm), (Outcome::Opened, Some(StormType::Pattern)));
    assert_eq!((v[6].outcome, v[6].storm_alerts), (Outcome::Joined, 2));
}

#[test]
fn fifty_pods_make_five_individual_alerts_and_one_storm() {
    let (mut w, mut list) = (None, Vec::new());
    let pods: Vec<String> = (0..50).map(|i| format!("prod:Pod:p{i}")).collect();
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    let v = feed(&rules(), &pods, 0, &mut w, &mut list);
    assert_eq!(v.iter().filter(|v| v.outcome == Outcome::None).count(), 5);
    assert_eq!(v.iter().filter(|v| v.outcome == Outcome::Opened).count(), 1);
    assert_eq!(v.last().map(|v| v.storm_alerts), Some(45));
}

#[test]
fn window_closes_after_inactivity_and_next_storm_is_new() {
    let r = rules();
    let (mut w, mut list) = (None, Vec::new());
    let v = feed(&r, &["prod:Pod:a"; 11], 0, &mut w, &mut list);
    assert_eq!(v[10].outcome, Outcome::Opened);
    // 59.999 s later the window is still open…
    assert_eq!(feed(&r, &["prod:Pod:a"], 59_999, &mut w, &mut list)[0].outcome, Outcome::Joined);
    // …and 60 s after the last alert it is closed: a fresh window starts.
    let v = feed(&r, &["prod:Pod:a"], 59_999 + 60_000, &mut w, &mut list);
    assert_eq!(v[0].outcome, Outcome::None);
    assert_eq!(v[0].window_start, 119_999);
    assert_eq!(list.len(), 1);
}

#[test]
fn window_closes_at_its_maximum_even_while_active() {
    let r = rules();
    let (mut w, mut list) = (None, Vec::new());
    let mut now = 0;
    feed(&r, &["prod:Pod:a"; 11], now, &mut w, &mut list);
    while now < 299_000 {
        now += 30_000;
        assert_eq!(feed(&r, &["prod:Pod:a"], now.min(299_999), &mut w, &mut list)[0].outcome, Outcome::Joined);
    }
    let v = feed(&r, &["prod:Pod:a"], 300_000, &mut w, &mut list);
    assert_eq!((v[0].outcome, v[0].window_start), (Outcome::None, 300_000));
}

#[test]
fn list_is_capped_and_overflow_counted() {
    let r = StormRules::new(1000, 2, Duration::from_secs(60), Duration::from_secs(300), 3);
    let (mut w, mut list) = (None, Vec::new());
    let v = feed(&r, &["a", "b", "c", "d", "e", "a"], 0, &mut w, &mut list);
    assert_eq!(list, ["a", "b", "c"]);
    assert_eq!(v.iter().map(|v| v.resource_listed).collect::<Vec<_>>(), [true, true, true, false, false, true]);
    assert_eq!(v[5].omitted, 2);
}
