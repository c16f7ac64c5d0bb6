use super::*;

fn load(alerts_per_second: f64) -> Load {
    Load {
        alerts_per_second,
        unique_share: 0.1,
        notified_share: 0.0,
        senders: 10,
        namespaces_alertnames: 100,
        storm_share: 0.1,
        headroom: 1.0,
    }
}

fn row<'a>(plan: &'a Plan, keyspace: &str) -> &'a Row {
    plan.rows.iter().find(|r| r.keyspace == keyspace).unwrap()
}

#[test]
fn dedup_holds_every_new_incident_for_its_window() {
    // 1000 alerts/s, 10% new, 300 s window: 30,000 open incidents, kept up to two windows
    // (a record's hash expires with its epoch): 60,000 × 212.8 B ≈ 12.8 MB.
    let bytes = EntryBytes { dedup_incident: 212.8, ..MEASURED };
    let plan = Plan::new(load(1000.0), &Config::default(), &bytes);
    let dedup = row(&plan, "dedup");
    assert_eq!(dedup.entries, 60_000);
    assert_eq!(dedup.needed, 12_768_000);
    assert!(dedup.basis.contains("2 × 300 s (dedup.window_secs)"), "{}", dedup.basis);

    let mut config = Config::default();
    config.dedup.window_secs = 60;
    assert_eq!(row(&Plan::new(load(1000.0), &config, &MEASURED), "dedup").entries, 12_000);
}

#[test]
fn dedup_remembers_each_notified_delivery_for_the_copy_window() {
    // 1000 alerts/s, all from Alertmanager, 120 s copy window: up to 240,000 deliveries on top.
    let bytes = EntryBytes { dedup_incident: 200.0, dedup_delivery: 100.0, ..MEASURED };
    let plan = Plan::new(Load { notified_share: 1.0, ..load(1000.0) }, &Config::default(), &bytes);
    let dedup = row(&plan, "dedup");
    assert_eq!(dedup.entries, 60_000 + 240_000);
    assert_eq!(dedup.needed, 60_000 * 200 + 240_000 * 100);
    assert!(dedup.basis.contains("2 × 120 s (dedup.copy_window_secs)"), "{}", dedup.basis);
}

#[test]
fn headroom_multiplies_every_estimate() {
    let bare = Plan::new(load(1000.0), &Config::default(), &MEASURED);
    let padded = Plan::new(Load { headroom: 1.5, ..load(1000.0) }, &Config::default(), &MEASURED);
    for (b, p) in bare.rows.iter().zip(&padded.rows) {
        assert_eq!(b.entries, p.entries);
        assert!(
            p.needed.abs_diff((b.needed as f64 * 1.5).round() as u64) <= 2,
            "{} {} {}",
            b.keyspace,
            b.needed,
            p.needed
        );
    }
    assert_eq!(row(&padded, "dedup").needed, (60_000.0 * MEASURED.dedup_incident * 1.5_f64).round() as u64);
}

#[test]
fn storm_counts_quiet_windows_storms_at_the_list_cap_and_lingering_counters() {
    let bytes = EntryBytes {
        storm_quiet_window: 400.0,
        storm_stormed_window: 1_000.0,
        storm_listed_resource: 52.0,
        storm_counter: 100.0,
        ..MEASURED
    };
    let mut config = Config::default();
    config.storm.affected_resources_cap = 18;
    config.storm.max_window_secs = 300;
    config.storm.count_ttl_secs = 900;
    let storm = Plan::new(load(1000.0), &config, &bytes).rows[1].clone();
    // 90 quiet windows, 10 storms each listing 10 more resources than measured,
    // and 900 / 300 = 3 counters of ended windows per storm.
    assert_eq!(storm.entries, 100 + 30);
    let per_storm = 1_000.0 + 10.0 * (RESOURCE_ID_BYTES + 52.0);
    assert_eq!(storm.needed, (90.0 * 400.0 + 10.0 * per_storm + 30.0 * 100.0) as u64);

    // A cap below the measured list does not subtract; no storms, no counters.
    config.storm.affected_resources_cap = 6;
    config.storm.pattern_threshold = 5;
    let few = Plan::new(Load { storm_share: 1.0, ..load(1.0) }, &config, &bytes).rows[1].clone();
    assert_eq!(few.needed, (100.0 * 1_000.0 + 300.0 * 100.0) as u64);
    let calm = Plan::new(Load { storm_share: 0.0, ..load(1.0) }, &config, &bytes).rows[1].clone();
    assert_eq!((calm.entries, calm.needed), (100, 40_000));
}

#[test]
fn ratelimit_is_one_bucket_per_sender() {
    let plan = Plan::new(Load { senders: 1_000, ..load(1.0) }, &Config::default(), &MEASURED);
    let ratelimit = row(&plan, "ratelimit");
    assert_eq!(ratelimit.entries, 1_000);
    assert_eq!(ratelimit.needed, (1_000.0 * MEASURED.ratelimit_bucket).round() as u64);
}

#[test]
fn budgets_come_from_each_services_redis_config() {
    let mut config = Config::default();
    config.dedup.redis.memory_budget_bytes = 2 << 20;
    config.storm.redis.memory_budget_bytes = 5 << 20;
    config.ratelimit.redis.memory_budget_bytes = 6 << 20;
    let plan = Plan::new(load(1000.0), &config, &MEASURED);
    assert_eq!(plan.rows.each_ref().map(|r| r.budget), [2 << 20, 5 << 20, 6 << 20]);
    let dedup = row(&plan, "dedup");
    assert_eq!(dedup.short_by(), Some(dedup.needed - 2_097_152));
    assert_eq!(plan.short().map(|r| r.keyspace).collect::<Vec<_>>(), ["dedup"]);
}

#[test]
fn table_shows_entries_needed_budget_and_verdict() {
    let mut config = Config::default();
    config.dedup.redis.memory_budget_bytes = 2 << 20;
    let text = Plan::new(load(1000.0), &config, &MEASURED).render();
    let dedup = text.lines().find(|l| l.starts_with("dedup ")).unwrap();
    assert!(dedup.contains("60,000") && dedup.contains("2.7 MiB") && dedup.contains("2.0 MiB"), "{text}");
    assert!(dedup.ends_with("short by 723.5 KiB"), "{text}");
    let ratelimit = text.lines().find(|l| l.starts_with("ratelimit ")).unwrap();
    assert!(ratelimit.ends_with("fits"), "{text}");
    assert!(text.contains("Redis 7.0.15"), "{text}");
}

#[test]
fn flags_outside_their_range_are_named() {
    assert_eq!(load(1.0).validate(), Ok(()));
    let bad = [
        (Load { unique_share: 1.5, ..load(1.0) }, "--unique-share 1.5 "),
        (Load { storm_share: -0.1, ..load(1.0) }, "--storm-share -0.1 "),
        (Load { headroom: 0.5, ..load(1.0) }, "--headroom 0.5 "),
        (Load { alerts_per_second: f64::NAN, ..load(1.0) }, "--alerts-per-second NaN "),
    ];
    for (load, message) in bad {
        let err = load.validate().unwrap_err();
        assert!(err.starts_with(message), "{err}");
    }
}

#[test]
fn sizes_print_in_binary_units() {
    assert_eq!(human(212), "212 B");
    assert_eq!(human(1024), "1.0 KiB");
    assert_eq!(human(6_384_000), "6.1 MiB");
    assert_eq!(human(64 << 20), "64.0 MiB");
    assert_eq!(human(3 << 30), "3.0 GiB");
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(30_000), "30,000");
    assert_eq!(thousands(1_234_567), "1,234,567");
    assert_eq!(percent(0.1), "10%");
    assert_eq!(percent(0.125), "12.5%");
}
