//! `breakwater plan`: the Redis memory each keyspace needs for a load, and
//! whether the configured budgets hold it (promise 5: memory needed = rate ×
//! window × bytes per entry). Pure arithmetic over the measured [`MEASURED`]
//! costs; `cli` prints the table and turns a short budget into a failure.

use std::fmt::Write as _;

use crate::config::Config;

/// What Redis holds per entry of each keyspace, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntryBytes {
    /// One open incident's dedup record.
    pub dedup_incident: f64,
    /// One delivery dedup remembers for the copy window (`dedup.copy_window_secs`).
    pub dedup_delivery: f64,
    /// A (namespace, alertname) window that did not storm: record + a one-resource set.
    pub storm_quiet_window: f64,
    /// A window that stormed: record, a set listing [`STORMED_WINDOW_LISTED`]
    /// resources, and the storm's counter.
    pub storm_stormed_window: f64,
    /// Each further listed resource costs this plus its id's length.
    pub storm_listed_resource: f64,
    /// A storm counter that outlives its window (`storm.count_ttl_secs`).
    pub storm_counter: f64,
    /// One sender's token bucket.
    pub ratelimit_bucket: f64,
}

/// Resources listed in the stormed window [`EntryBytes::storm_stormed_window`] was measured with.
pub const STORMED_WINDOW_LISTED: u64 = 8;

/// Assumed length of a listed resource id, `namespace:Kind:name`: a Pod of a
/// Deployment in a longish namespace (`payments-prod:Pod:api-7d9f8b6c5d-x2k4q`
/// is 38 bytes), rounded up.
pub const RESOURCE_ID_BYTES: f64 = 48.0;

/// Measured with `cargo bench -p breakwater-tests --bench redis_keyspaces` on
/// the 2-core build machine against Redis 7.0.15 (jemalloc 5.3.0, 64-bit), one
/// run (dedup's after its records became fields of small hashes; they were 212.9 and
/// 148.8 B as keys of their own): entries written through each service's own store on a fresh
/// redis-server, `INFO memory` `used_memory` after minus before, divided by the
/// entries (100,000 dedup records, quiet windows, counters and buckets; 10,000
/// windows stormed with 8 resources; 1,000 with 100). A further listed resource
/// is (100-resource window − 8-resource window) / 92 = 61.4 B, less its ~14-byte
/// id. Re-measure when a script's keys or values change or Redis is upgraded
/// (7.2 keeps small sets as listpacks, which makes listed resources cheaper).
pub const MEASURED: EntryBytes = EntryBytes {
    dedup_incident: 47.3,
    dedup_delivery: DEDUP_DELIVERY_BYTES,
    storm_quiet_window: 442.5,
    storm_stormed_window: 954.7,
    storm_listed_resource: 47.6,
    storm_counter: 132.8,
    ratelimit_bucket: 152.2,
};

/// Bytes per remembered delivery (a field of a small hash, its expiry as value), measured
/// like the others over 100,000 deliveries of one open incident.
pub const DEDUP_DELIVERY_BYTES: f64 = 82.4;

/// The load to plan for (`breakwater plan` flags).
#[derive(Debug, Clone, Copy, PartialEq, clap::Args)]
pub struct Load {
    /// Alerts per second the gateway accepts, averaged over the dedup window.
    #[arg(long)]
    pub alerts_per_second: f64,
    /// Share of alerts that are new incidents (0..=1); the rest repeat open ones.
    #[arg(long, default_value_t = 0.1)]
    pub unique_share: f64,
    /// Share of alerts delivered by Alertmanager with a `groupKey` (0..=1): dedup remembers
    /// each such delivery for the copy window, so its copies count once.
    #[arg(long, default_value_t = 1.0)]
    pub notified_share: f64,
    /// Distinct senders (Alertmanagers, event sources): one bucket each.
    #[arg(long, default_value_t = 10)]
    pub senders: u64,
    /// Distinct (namespace, alertname) pairs with new incidents per storm window.
    #[arg(long, default_value_t = 100)]
    pub namespaces_alertnames: u64,
    /// Share of those pairs that storm (0..=1).
    #[arg(long, default_value_t = 0.1)]
    pub storm_share: f64,
    /// Multiplies every estimate, for bursts and Redis overhead (at least 1).
    #[arg(long, default_value_t = 1.5)]
    pub headroom: f64,
}

impl Load {
    /// # Errors
    /// A sentence naming the flag, the bad value and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.alerts_per_second.is_finite() && self.alerts_per_second >= 0.0) {
            return Err(format!("--alerts-per-second {} is not allowed: use 0 or more", self.alerts_per_second));
        }
        for (flag, share) in [
            ("--unique-share", self.unique_share),
            ("--notified-share", self.notified_share),
            ("--storm-share", self.storm_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{flag} {share} is not allowed: use a share from 0 to 1"));
            }
        }
        if !(self.headroom.is_finite() && self.headroom >= 1.0) {
            return Err(format!("--headroom {} is not allowed: use 1 or more", self.headroom));
        }
        Ok(())
    }
}

/// One keyspace's estimate against its budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `dedup`, `storm` or `ratelimit`, as in the config sections.
    pub keyspace: &'static str,
    /// Keys (records) alive at once.
    pub entries: u64,
    /// Bytes needed, headroom included.
    pub needed: u64,
    /// `<keyspace>.redis.memory_budget_bytes`.
    pub budget: u64,
    /// How the estimate was made, for the operator.
    pub basis: String,
}

impl Row {
    /// By how many bytes the budget is short, if it is.
    pub fn short_by(&self) -> Option<u64> {
        (self.needed > self.budget).then(|| self.needed - self.budget)
    }
}

/// The estimate of every keyspace for one load and configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub load: Load,
    pub rows: [Row; 3],
}

impl Plan {
    /// Estimates each keyspace for `load` under `config`'s windows, with `bytes` per entry.
    pub fn new(load: Load, config: &Config, bytes: &EntryBytes) -> Self {
        let with_headroom = |raw: f64| (raw * load.headroom).round() as u64;

        // A new incident's record is kept one to two windows after its last alert: it is a
        // field of a hash that expires once every record in it is closed.
        let window = config.dedup.window_secs;
        let incidents = (load.alerts_per_second * load.unique_share * 2.0 * window as f64).round() as u64;
        // Each delivery with a groupKey is remembered the same way, for one to two copy windows.
        let copy_window = config.dedup.copy_window_secs;
        let deliveries = (load.alerts_per_second * load.notified_share * 2.0 * copy_window as f64).round() as u64;
        let dedup = Row {
            keyspace: "dedup",
            entries: incidents + deliveries,
            needed: with_headroom(incidents as f64 * bytes.dedup_incident + deliveries as f64 * bytes.dedup_delivery),
            budget: config.dedup.redis.memory_budget_bytes,
            basis: format!(
                "{} alerts/s × {} new × 2 × {window} s (dedup.window_secs) × {} B per open incident \
                 + {} alerts/s × {} notified × 2 × {copy_window} s (dedup.copy_window_secs) × {} B per delivery",
                load.alerts_per_second,
                percent(load.unique_share),
                bytes.dedup_incident,
                load.alerts_per_second,
                percent(load.notified_share),
                bytes.dedup_delivery
            ),
        };

        // Every window of a pair lives until it has been quiet for
        // inactivity_secs. A storm lists up to the cap of resources, and a pair
        // that keeps storming opens a window every max_window_secs whose
        // counter lives count_ttl_secs after the window ends.
        let storm_config = &config.storm;
        let pairs = load.namespaces_alertnames;
        let storms = ((pairs as f64 * load.storm_share).round() as u64).min(pairs);
        let listed = storm_config.affected_resources_cap;
        let extra_listed = listed.saturating_sub(STORMED_WINDOW_LISTED) as f64;
        let storm_window =
            bytes.storm_stormed_window + extra_listed * (RESOURCE_ID_BYTES + bytes.storm_listed_resource);
        let counters = storms * storm_config.count_ttl_secs.div_ceil(storm_config.max_window_secs.max(1));
        let storm = Row {
            keyspace: "storm",
            entries: pairs + counters,
            needed: with_headroom(
                (pairs - storms) as f64 * bytes.storm_quiet_window
                    + storms as f64 * storm_window
                    + counters as f64 * bytes.storm_counter,
            ),
            budget: storm_config.redis.memory_budget_bytes,
            basis: format!(
                "{} quiet windows × {} B + {storms} storms listing {listed} resources of ~{RESOURCE_ID_BYTES} B \
                 (storm.affected_resources_cap) × {} + {counters} counters of ended storm windows \
                 (storm.count_ttl_secs / storm.max_window_secs per storm) × {} B",
                pairs - storms,
                bytes.storm_quiet_window,
                human(storm_window.ceil() as u64),
                bytes.storm_counter
            ),
        };

        let ratelimit = Row {
            keyspace: "ratelimit",
            entries: load.senders,
            needed: with_headroom(load.senders as f64 * bytes.ratelimit_bucket),
            budget: config.ratelimit.redis.memory_budget_bytes,
            basis: format!("{} senders × {} B per bucket", load.senders, bytes.ratelimit_bucket),
        };
        Self { load, rows: [dedup, storm, ratelimit] }
    }

    /// The rows whose budget is short.
    pub fn short(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|row| row.short_by().is_some())
    }

    /// The table and how each estimate was made.
    pub fn render(&self) -> String {
        let load = &self.load;
        let mut out = format!(
            "Redis memory for {} alerts/s ({} new incidents), {} senders, {} (namespace, alertname) pairs \
             ({} storming), headroom ×{}:\n\n",
            load.alerts_per_second,
            percent(load.unique_share),
            load.senders,
            load.namespaces_alertnames,
            percent(load.storm_share),
            load.headroom
        );
        let _ = writeln!(out, "{:<10} {:>12} {:>11} {:>11}  verdict", "keyspace", "entries", "needed", "budget");
        for row in &self.rows {
            let verdict = match row.short_by() {
                Some(short) => format!("short by {}", human(short)),
                None => "fits".to_owned(),
            };
            let _ = writeln!(
                out,
                "{:<10} {:>12} {:>11} {:>11}  {verdict}",
                row.keyspace,
                thousands(row.entries),
                human(row.needed),
                human(row.budget)
            );
        }
        out.push('\n');
        for row in &self.rows {
            let _ = writeln!(out, "{}: {}.", row.keyspace, row.basis);
        }
        let _ = writeln!(
            out,
            "Needed = the sum × {} headroom; bytes per entry measured on Redis 7.0.15 (breakwater::plan::MEASURED); \
             budgets are <keyspace>.redis.memory_budget_bytes.",
            load.headroom
        );
        out
    }
}

/// `0.1` as `10%`.
fn percent(share: f64) -> String {
    format!("{}%", (share * 1000.0).round() / 10.0)
}

/// `30000` as `30,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units, as Redis reads `64mb`: `212 B`, `6.1 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests;
