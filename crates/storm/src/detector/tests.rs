use super::*;

fn rules() -> StormRules {
    StormRules::new(10, 5, Duration::from_secs(60), Duration::from_secs(300), 100)
}

/// One (namespace, alertname) as a store keeps it: window, resource list and
/// the storm counter.
#[derive(Default)]
struct Sim {
    window: Option<Window>,
    list: Vec<String>,
    counter: u64,
}

impl Sim {
    /// Feeds alerts through `decide` the way a store does, all at `now`.
    fn feed(&mut self, rules: &StormRules, resources: &[&str], now: UnixMillis) -> Vec<Verdict> {
        resources
            .iter()
            .map(|r| {
                let (mut v, next) = rules.decide(self.window.as_ref(), self.list.iter().any(|l| l == r), now);
                if next.reset {
                    self.list.clear();
                }
                if next.add_resource {
                    self.list.push((*r).to_owned());
                }
                match next.count {
                    CountChange::None => {}
                    CountChange::Start => self.counter = 1,
                    CountChange::Increment => self.counter += 1,
                }
                if v.outcome != Outcome::None {
                    v.storm_alerts = self.counter;
                }
                self.window = Some(next.window);
                v
            })
            .collect()
    }
}

#[test]
fn rate_equal_to_threshold_is_not_a_storm_one_more_is() {
    let v = Sim::default().feed(&rules(), &["prod:Pod:a"; 11], 0);
    assert!(v[..10].iter().all(|v| v.outcome == Outcome::None));
    assert_eq!(v[10].outcome, Outcome::Opened);
    assert_eq!(v[10].storm, Some(StormType::Rate));
    assert_eq!(v[10].storm_alerts, 1);
}

#[test]
fn pattern_equal_to_threshold_is_not_a_storm_one_more_is() {
    let pods: Vec<String> = (0..7).map(|i| format!("prod:Pod:p{i}")).collect();
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    let v = Sim::default().feed(&rules(), &pods, 0);
    assert!(v[..5].iter().all(|v| v.outcome == Outcome::None));
    assert_eq!((v[5].outcome, v[5].storm), (Outcome::Opened, Some(StormType::Pattern)));
    assert_eq!((v[6].outcome, v[6].storm_alerts), (Outcome::Joined, 2));
}

#[test]
fn fifty_pods_make_five_individual_alerts_and_one_storm() {
    let pods: Vec<String> = (0..50).map(|i| format!("prod:Pod:p{i}")).collect();
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    let v = Sim::default().feed(&rules(), &pods, 0);
    assert_eq!(v.iter().filter(|v| v.outcome == Outcome::None).count(), 5);
    assert_eq!(v.iter().filter(|v| v.outcome == Outcome::Opened).count(), 1);
    assert_eq!(v.last().map(|v| v.storm_alerts), Some(45));
}

#[test]
fn window_closes_after_inactivity_and_next_storm_is_new() {
    let (r, mut sim) = (rules(), Sim::default());
    let v = sim.feed(&r, &["prod:Pod:a"; 11], 0);
    assert_eq!(v[10].outcome, Outcome::Opened);
    // 59.999 s later the window is still open…
    assert_eq!(sim.feed(&r, &["prod:Pod:a"], 59_999)[0].outcome, Outcome::Joined);
    // …and 60 s after the last alert it is closed: a fresh window starts.
    let v = sim.feed(&r, &["prod:Pod:a"], 59_999 + 60_000);
    assert_eq!(v[0].outcome, Outcome::None);
    assert_eq!(v[0].window_start, 119_999);
    assert_eq!(sim.list.len(), 1);
}

#[test]
fn window_closes_at_its_maximum_even_while_active() {
    let (r, mut sim) = (rules(), Sim::default());
    let mut now = 0;
    sim.feed(&r, &["prod:Pod:a"; 11], now);
    while now < 299_000 {
        now += 30_000;
        assert_eq!(sim.feed(&r, &["prod:Pod:a"], now.min(299_999))[0].outcome, Outcome::Joined);
    }
    let v = sim.feed(&r, &["prod:Pod:a"], 300_000);
    assert_eq!((v[0].outcome, v[0].window_start), (Outcome::None, 300_000));
}

#[test]
fn list_is_capped_and_overflow_counted() {
    let r = StormRules::new(1000, 2, Duration::from_secs(60), Duration::from_secs(300), 3);
    let mut sim = Sim::default();
    let v = sim.feed(&r, &["a", "b", "c", "d", "e", "a"], 0);
    assert_eq!(sim.list, ["a", "b", "c"]);
    assert_eq!(v.iter().map(|v| v.resource_listed).collect::<Vec<_>>(), [true, true, true, false, false, true]);
    assert_eq!(v[5].omitted, 2);
}

#[test]
fn counter_changes_follow_the_outcome() {
    let r = StormRules::new(1, 100, Duration::from_secs(60), Duration::from_secs(300), 100);
    let (_, first) = r.decide(None, false, 0);
    assert_eq!(first.count, CountChange::None);
    let (_, second) = r.decide(Some(&first.window), true, 1);
    assert_eq!(second.count, CountChange::Start);
    let (_, third) = r.decide(Some(&second.window), true, 2);
    assert_eq!(third.count, CountChange::Increment);
}
