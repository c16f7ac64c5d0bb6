//! `breakwater doctor`: checks the Redis instances the configuration points
//! at, the way a running deployment uses them. Instances shared by several
//! services are checked once per address, with each service's prefix and
//! budget attributed to it.
//!
//! Per instance: reachable as each service's user (`PING`), version, the ACL
//! of each service's user, `maxmemory` against the budgets, a `volatile-*`
//! eviction policy, keys without a TTL under each prefix, memory used.
//!
//! Nothing here changes data or configuration, even where a permission is
//! (wrongly) granted: ACL questions go to `ACL DRYRUN` when an operator
//! connection (an admin URL, see [`DoctorArgs`]) or the user itself may run it; otherwise the
//! service's user is probed only with commands that change nothing if they
//! succeed (`CONFIG SET` of the value already set, `DEL` of a key that does not
//! exist, `KEYS` of a pattern that matches nothing), and destructive commands
//! (`FLUSHDB`, `FLUSHALL`, `DEBUG`, `SHUTDOWN`) are not probed at all.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use breakwater_keyspace::StoreKind;
use breakwater_signal::{Clock as _, SystemClock};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError};

use crate::config::Config;
use crate::plan::human;

/// How long one command may take (a `SCAN` page, a pipeline of `PTTL`s).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys asked for per `SCAN` page.
const SCAN_COUNT: u64 = 1_000;
/// Keys without a TTL named in a finding; the rest are counted.
const NAMED_KEYS: usize = 5;

/// The variable holding operator connection URLs (see [`DoctorArgs`]).
pub const ADMIN_URL_VAR: &str = "BREAKWATER_DOCTOR_ADMIN_URL";

/// `breakwater doctor` flags.
///
/// Operator connections to the instances, e.g. `redis://admin:<password>@redis:6379`, are for
/// what the services' users may not do: ACL DRYRUN of FLUSHDB and the like, SCAN for keys
/// without a TTL. They carry a password, so they never come from the command line (where
/// `ps` and shell history show them): they come from `BREAKWATER_DOCTOR_ADMIN_URL`
/// (whitespace-separated) or `--admin-url-file` (one per line; `#` starts a comment), one per
/// instance, matched by host:port.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DoctorArgs {
    /// A file of operator connection URLs, one per line, e.g.
    /// `redis://admin:<password>@redis:6379`; `BREAKWATER_DOCTOR_ADMIN_URL` may hold them instead.
    #[arg(long = "admin-url-file", value_name = "FILE")]
    pub admin_url_file: Option<std::path::PathBuf>,
}

/// The operator URLs of `args` and `env`.
///
/// # Errors
/// When `--admin-url-file` cannot be read (the message names the file, not its content).
pub fn admin_urls(args: &DoctorArgs, env: &std::collections::HashMap<String, String>) -> anyhow::Result<Vec<String>> {
    let mut urls: Vec<String> =
        env.get(ADMIN_URL_VAR).map(|v| v.split_whitespace().map(str::to_owned).collect()).unwrap_or_default();
    if let Some(file) = &args.admin_url_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("--admin-url-file {} cannot be read: {e}", file.display()))?;
        urls.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned));
    }
    Ok(urls)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Fail,
    Skip,
}

/// One checked thing: what was found, what was expected, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    /// `<host:port> [<service>] <check>`.
    pub subject: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        write!(f, "{status:<4} {}: {}", self.subject, self.message)
    }
}

/// Findings as they are made: printed at once, counted for the exit status.
#[derive(Debug, Default)]
struct Report {
    findings: Vec<Finding>,
}

impl Report {
    fn add(&mut self, status: Status, subject: impl Into<String>, message: impl Into<String>) {
        let finding = Finding { status, subject: subject.into(), message: message.into() };
        println!("{finding}");
        self.findings.push(finding);
    }

    fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }
}

/// Checks every Redis instance of `config` and prints one line per check.
///
/// # Errors
/// When any check failed (after all were printed).
pub async fn run(config: &Config, args: &DoctorArgs) -> anyhow::Result<()> {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let admin_urls = admin_urls(args, &env)?;
    let mut report = Report::default();
    let (instances, admins) = targets(config, &admin_urls, &mut report);
    let all_prefixes: Vec<String> =
        instances.values().flat_map(|i| i.services.iter().map(|s| s.prefix.clone())).collect();
    for (addr, instance) in &instances {
        check_instance(addr, instance, admins.get(addr).map(String::as_str), &all_prefixes, &mut report).await;
    }
    for addr in admins.keys().filter(|a| !instances.contains_key(*a)) {
        report.add(
            Status::Skip,
            format!("{addr} admin"),
            format!(
                "an admin URL points at {addr}, which no service uses ({}); it was not used: give the host:port of a configured instance",
                instances.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    let failed = report.count(Status::Fail);
    println!("doctor: {} ok, {failed} failed, {} skipped", report.count(Status::Ok), report.count(Status::Skip));
    if failed > 0 {
        anyhow::bail!("{failed} of {} checks failed", report.findings.len());
    }
    Ok(())
}

/// A service as it uses its Redis.
#[derive(Debug, Clone)]
struct Service {
    name: &'static str,
    prefix: String,
    /// The service's URL with its password (from `password_file` when set).
    connection: redis::ConnectionInfo,
    /// The ACL user of the URL; `None` is the `default` user.
    user: Option<String>,
    budget: u64,
    connect_timeout: Duration,
}

impl Service {
    fn user_name(&self) -> &str {
        self.user.as_deref().unwrap_or("default")
    }
}

#[derive(Debug, Default)]
struct Instance {
    services: Vec<Service>,
}

/// The Redis-backed services grouped by instance address, and the admin
/// URLs by address. Services on the in-process store and unusable URLs are
/// reported here.
fn targets(
    config: &Config,
    admin_urls: &[String],
    report: &mut Report,
) -> (BTreeMap<String, Instance>, BTreeMap<String, String>) {
    let services = [
        ("dedup", breakwater_dedup::KEYSPACE, &config.dedup.redis, config.dedup.store),
        ("storm", breakwater_storm::KEYSPACE, &config.storm.redis, config.storm.store),
        ("ratelimit", breakwater_ratelimit::KEYSPACE, &config.ratelimit.redis, config.ratelimit.store),
    ];
    let mut instances: BTreeMap<String, Instance> = BTreeMap::new();
    for (name, component, redis, store) in services {
        if store != StoreKind::Redis {
            let kind = match store {
                StoreKind::Embedded => "\"embedded\" (on disk)",
                StoreKind::Memory | StoreKind::Redis => "\"memory\" (in-process)",
            };
            report.add(
                Status::Skip,
                name,
                format!("{name}.store is {kind}, so {name} uses no Redis: nothing to check"),
            );
            continue;
        }
        let info = match redis.connection_info() {
            Ok(info) => info,
            Err(why) => {
                report.add(
                    Status::Fail,
                    name,
                    format!("{name}.redis.{why}: use redis://user[:password]@host:port, and password_file if the password is not in the URL"),
                );
                continue;
            }
        };
        instances.entry(info.addr().to_string()).or_default().services.push(Service {
            name,
            prefix: format!("{}:{component}:", redis.key_root),
            user: info.redis_settings().username().map(str::to_owned),
            connection: info.clone(),
            budget: redis.memory_budget_bytes,
            connect_timeout: Duration::from_millis(redis.connect_timeout_ms),
        });
    }
    let mut admins = BTreeMap::new();
    for url in admin_urls {
        match url.as_str().into_connection_info() {
            Ok(info) => {
                admins.insert(info.addr().to_string(), url.clone());
            }
            Err(e) => report.add(
                Status::Fail,
                "admin",
                format!(
                    "an admin URL ({}) does not parse ({}): use redis://user:password@host:port",
                    breakwater_keyspace::redact_url(url),
                    breakwater_keyspace::redact_credentials(&e.to_string())
                ),
            ),
        }
    }
    (instances, admins)
}

async fn connect(
    target: impl redis::IntoConnectionInfo,
    timeout: Duration,
) -> Result<MultiplexedConnection, RedisError> {
    let client = redis::Client::open(target)?;
    let config =
        AsyncConnectionConfig::new().set_connection_timeout(Some(timeout)).set_response_timeout(Some(RESPONSE_TIMEOUT));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Whether Redis refused `e` for want of a permission.
fn refused(e: &RedisError) -> bool {
    let text = e.to_string();
    e.code() == Some("NOPERM") || text.contains("no permissions") || text.contains("can't access")
}

/// `field` of an `INFO` section.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).map(str::trim)
}

/// A suffix no key has: probes `DEL` it, so they change nothing even when allowed.
fn probe_suffix() -> String {
    format!("doctor-probe-{}-{:x}", std::process::id(), SystemClock.now())
}

/// `a, b and c`.
fn listing<T: AsRef<str>>(items: &[T]) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_owned(),
        [init @ .., last] => {
            format!("{} and {}", init.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(", "), last.as_ref())
        }
    }
}

async fn check_instance(
    addr: &str,
    instance: &Instance,
    admin_url: Option<&str>,
    all_prefixes: &[String],
    report: &mut Report,
) {
    let timeout = instance.services.iter().map(|s| s.connect_timeout).max().unwrap_or(Duration::from_secs(1));
    let mut connections = Vec::new();
    for service in &instance.services {
        connections.push(check_reachable(addr, service, report).await);
    }
    let admin = match admin_url {
        Some(url) => match connect(url, timeout).await {
            Ok(conn) => Some(conn),
            Err(e) => {
                report.add(
                    Status::Fail,
                    format!("{addr} admin"),
                    format!(
                        "cannot connect with the admin URL ({}); checks that need it fall back to the services' users: \
                         fix the URL's user and password",
                        breakwater_keyspace::redact_credentials(&e.to_string())
                    ),
                );
                None
            }
        },
        None => None,
    };
    let Some(mut main) = admin.clone().or_else(|| connections.iter().flatten().next().cloned()) else {
        report.add(Status::Skip, format!("{addr} checks"), "nothing else checked: no connection to this instance");
        return;
    };

    let major = check_version(addr, instance, &mut main, report).await;
    let dryrun_admin = admin.clone().filter(|_| major.is_some_and(|m| m >= 7));

    let memory = redis::cmd("INFO").arg("memory").query_async::<String>(&mut main).await;
    let policy = memory.as_ref().ok().and_then(|info| info_field(info, "maxmemory_policy")).map(str::to_owned);
    for (service, conn) in instance.services.iter().zip(&connections) {
        check_acl(addr, service, conn.clone(), dryrun_admin.clone(), policy.as_deref(), all_prefixes, report).await;
    }
    match &memory {
        Ok(info) => check_memory(addr, instance, info, report),
        Err(e) => report.add(
            Status::Fail,
            format!("{addr} memory"),
            format!(
                "cannot read INFO memory ({e}); expected the services' users to be allowed INFO, \
                 which their drift guard needs: add +info to their ACL"
            ),
        ),
    }
    for (service, conn) in instance.services.iter().zip(&connections) {
        let scanner =
            admin.clone().map(|c| (c, "the admin")).or_else(|| conn.clone().map(|c| (c, service.user_name())));
        check_ttls(addr, service, scanner, admin_url.is_some(), report).await;
    }
}

/// The service reaches its Redis as its own user: the connection, if it does.
async fn check_reachable(addr: &str, service: &Service, report: &mut Report) -> Option<MultiplexedConnection> {
    let subject = format!("{addr} {} reachable", service.name);
    let user = service.user_name();
    let answer = match connect(service.connection.clone(), service.connect_timeout).await {
        Ok(mut conn) => redis::cmd("PING").query_async::<String>(&mut conn).await.map(|pong| (conn, pong)),
        Err(e) => Err(e),
    };
    match answer {
        Ok((conn, pong)) => {
            report.add(Status::Ok, subject, format!("PING as {user} answered {pong}"));
            Some(conn)
        }
        Err(e) => {
            report.add(
                Status::Fail,
                subject,
                format!(
                    "cannot PING as {user} ({e}); expected PONG: check that Redis runs at {addr} and that \
                     {}.redis.url names the right user and password",
                    service.name
                ),
            );
            None
        }
    }
}

/// The server's version, attributed the services it holds; its major version.
async fn check_version(
    addr: &str,
    instance: &Instance,
    conn: &mut MultiplexedConnection,
    report: &mut Report,
) -> Option<u32> {
    let version = match redis::cmd("INFO").arg("server").query_async::<String>(conn).await {
        Ok(info) => info_field(&info, "redis_version").unwrap_or("unknown").to_owned(),
        Err(e) => format!("unknown ({e})"),
    };
    let major: Option<u32> = version.split('.').next().and_then(|m| m.parse().ok());
    let holding = listing(&instance.services.iter().map(|s| format!("{} ({})", s.name, s.prefix)).collect::<Vec<_>>());
    let subject = format!("{addr} version");
    match major {
        Some(m) if m >= 6 => report.add(Status::Ok, subject, format!("Redis {version}, holding {holding}")),
        _ => report.add(
            Status::Fail,
            subject,
            format!(
                "Redis {version}, holding {holding}; expected 6.0 or later (7.0 or later for ACL DRYRUN), \
                 which per-service ACL users need: upgrade Redis"
            ),
        ),
    }
    major
}

/// The service's user may work under its prefix and nothing else.
async fn check_acl(
    addr: &str,
    service: &Service,
    conn: Option<MultiplexedConnection>,
    admin: Option<MultiplexedConnection>,
    policy: Option<&str>,
    all_prefixes: &[String],
    report: &mut Report,
) {
    let subject = format!("{addr} {} acl", service.name);
    let Some(user) = service.user.as_deref() else {
        report.add(
            Status::Skip,
            subject,
            format!(
                "{0} connects as the default user, so nothing limits it to {1}: give it its own ACL user \
                 as deploy/redis/ does (~{1}* and only the commands it needs) and put it in {0}.redis.url",
                service.name, service.prefix
            ),
        );
        return;
    };
    let suffix = probe_suffix();
    let mut outside: Vec<String> =
        all_prefixes.iter().filter(|p| **p != service.prefix).map(|p| format!("{p}{suffix}")).collect();
    outside.sort();
    outside.dedup();
    outside.push(suffix.clone());
    let own = format!("{}{suffix}", service.prefix);

    // ACL DRYRUN: the operator's connection, else the user's own if it may.
    let mut dryrun = match admin {
        Some(admin) => Some((admin, "ACL DRYRUN as the admin")),
        None => match conn.clone() {
            Some(mut c) => {
                let allowed = redis::cmd("ACL").arg("DRYRUN").arg(user).arg("PING").query_async::<String>(&mut c).await;
                allowed.is_ok().then_some((c, "ACL DRYRUN as the user itself"))
            }
            None => None,
        },
    };
    if let Some((c, how)) = dryrun.as_mut() {
        let mut forbidden: Vec<(String, Vec<String>)> = [
            ("CONFIG SET", &["CONFIG", "SET", "maxmemory", "1mb"][..]),
            // It returns masterauth and the data directory; the drift guard reads INFO instead.
            ("CONFIG GET", &["CONFIG", "GET", "maxmemory"]),
            ("FLUSHDB", &["FLUSHDB"]),
            ("FLUSHALL", &["FLUSHALL"]),
            ("KEYS", &["KEYS", "*"]),
            ("DEBUG", &["DEBUG", "SLEEP", "0"]),
            ("SHUTDOWN", &["SHUTDOWN", "NOSAVE"]),
        ]
        .into_iter()
        .map(|(name, args)| (name.to_owned(), args.iter().map(|a| (*a).to_owned()).collect()))
        .collect();
        forbidden.extend(outside.iter().map(|k| (format!("SET {k}"), vec!["SET".into(), k.clone(), "1".into()])));
        let needed = [
            ("EVALSHA", vec!["EVALSHA".to_owned(), "0".repeat(40), "1".into(), own.clone()]),
            ("SET", vec!["SET".to_owned(), own.clone(), "1".into(), "PX".into(), "1".into()]),
        ];
        let mut granted = Vec::new();
        let mut denied = Vec::new();
        for (name, args) in &forbidden {
            match redis::cmd("ACL").arg("DRYRUN").arg(user).arg(args).query_async::<String>(c).await {
                Ok(answer) if answer == "OK" => granted.push(name.clone()),
                Ok(_) => {}
                Err(e) => {
                    report.add(
                        Status::Fail,
                        subject,
                        format!("ACL DRYRUN {user} {name} failed ({e}): check the user exists"),
                    );
                    return;
                }
            }
        }
        for (name, args) in &needed {
            match redis::cmd("ACL").arg("DRYRUN").arg(user).arg(args).query_async::<String>(c).await {
                Ok(answer) if answer == "OK" => {}
                Ok(answer) => denied.push(format!("{name} under {} ({answer})", service.prefix)),
                Err(e) => denied.push(format!("{name} under {} ({e})", service.prefix)),
            }
        }
        let checked = format!(
            "CONFIG SET, CONFIG GET, FLUSHDB, FLUSHALL, KEYS, DEBUG, SHUTDOWN and writes outside {}",
            service.prefix
        );
        let (status, message) = acl_verdict(service, user, &granted, &denied, &checked, how);
        report.add(status, subject, message);
        return;
    }

    let Some(mut c) = conn else {
        report.add(
            Status::Skip,
            subject,
            format!("not checked: no connection as {user} and no admin URL ({ADMIN_URL_VAR} or --admin-url-file)"),
        );
        return;
    };
    let mut granted = Vec::new();
    let mut denied = Vec::new();
    let mut not_probed = vec!["FLUSHDB", "FLUSHALL", "DEBUG", "SHUTDOWN"];
    // Setting the policy Redis already has changes nothing, even if allowed.
    match policy {
        Some(policy) => {
            let set =
                redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg(policy).query_async::<()>(&mut c).await;
            if !matches!(&set, Err(e) if refused(e)) {
                granted
                    .push(format!("CONFIG SET (maxmemory-policy {policy}, its current value, was {})", answer(&set)));
            }
        }
        None => not_probed.insert(0, "CONFIG SET"),
    }
    // CONFIG GET changes nothing, so it can be probed; what it returns is not kept.
    let config_get = redis::cmd("CONFIG").arg("GET").arg("maxmemory").query_async::<Vec<String>>(&mut c).await;
    if !matches!(&config_get, Err(e) if refused(e)) {
        granted.push(format!(
            "CONFIG GET (was {}; it returns masterauth and the data directory)",
            if config_get.is_ok() { "accepted" } else { "not refused" }
        ));
    }
    let keys = redis::cmd("KEYS").arg(&own).query_async::<Vec<String>>(&mut c).await;
    if !matches!(&keys, Err(e) if refused(e)) {
        granted.push(format!("KEYS (was {})", answer(&keys)));
    }
    // DEL of a key that does not exist changes nothing, even if allowed.
    let del = |key: &str| redis::cmd("EVAL").arg("return redis.call('DEL', KEYS[1])").arg(1).arg(key).clone();
    for key in &outside {
        let wrote = del(key).query_async::<i64>(&mut c).await;
        if !matches!(&wrote, Err(e) if refused(e)) {
            granted.push(format!("a write to {key} through EVAL (was {})", answer(&wrote)));
        }
    }
    if let Err(e) = del(&own).query_async::<i64>(&mut c).await {
        denied.push(format!("a write under {} through EVAL ({e})", service.prefix));
    }
    let mut checked =
        if policy.is_some() { vec!["CONFIG SET", "CONFIG GET", "KEYS"] } else { vec!["CONFIG GET", "KEYS"] };
    let outside_writes = format!("writes outside {} through EVAL", service.prefix);
    checked.push(&outside_writes);
    let (status, message) = acl_verdict(service, user, &granted, &denied, &listing(&checked), "probed as the user");
    report.add(status, subject.clone(), message);
    report.add(
        Status::Skip,
        subject,
        format!(
            "{} not probed as {user}: they could act if allowed; give an admin URL ({ADMIN_URL_VAR} or --admin-url-file) to check them with ACL DRYRUN",
            listing(&not_probed)
        ),
    );
}

fn answer<T>(result: &Result<T, RedisError>) -> String {
    match result {
        Ok(_) => "accepted".to_owned(),
        Err(e) => format!("answered {e}"),
    }
}

/// The ACL finding: `granted` are forbidden commands the user may run,
/// `denied` needed ones it may not; `checked` says what was asked, `how` how.
fn acl_verdict(
    service: &Service,
    user: &str,
    granted: &[String],
    denied: &[String],
    checked: &str,
    how: &str,
) -> (Status, String) {
    let prefix = &service.prefix;
    if granted.is_empty() && denied.is_empty() {
        return (Status::Ok, format!("{user} may write under {prefix} and is refused {checked} ({how})"));
    }
    let mut found = Vec::new();
    if !granted.is_empty() {
        found.push(format!("{user} may run {}", listing(granted)));
    }
    if !denied.is_empty() {
        found.push(format!("{user} may not run {}", listing(denied)));
    }
    let message = format!(
        "{} ({how}); expected it limited to {prefix} and refused CONFIG SET, CONFIG GET, FLUSHDB, FLUSHALL, KEYS, DEBUG \
         and SHUTDOWN: define it as deploy/redis/ does (resetkeys ~{prefix}* -@all plus the commands {} needs) \
         and reload the ACL",
        found.join("; "),
        service.name
    );
    (Status::Fail, message)
}

/// `maxmemory` against the budgets, the eviction policy, memory used.
fn check_memory(addr: &str, instance: &Instance, info: &str, report: &mut Report) {
    let number = |field| info_field(info, field).and_then(|v| v.parse::<u64>().ok());
    let (Some(maxmemory), Some(used)) = (number("maxmemory"), number("used_memory")) else {
        report.add(
            Status::Fail,
            format!("{addr} memory"),
            "INFO memory has no maxmemory or used_memory: is this Redis?",
        );
        return;
    };
    let budget: u64 = instance.services.iter().map(|s| s.budget).sum();
    let budgeted = match instance.services.as_slice() {
        [one] => format!("the budget of {} ({}.redis.memory_budget_bytes)", one.name, one.name),
        many => format!(
            "the budgets of {} together (their redis.memory_budget_bytes)",
            listing(&many.iter().map(|s| s.name).collect::<Vec<_>>())
        ),
    };
    let subject = format!("{addr} maxmemory");
    if maxmemory == 0 {
        report.add(
            Status::Fail,
            subject,
            format!(
                "maxmemory is 0 (no limit): Redis grows until the host runs out of memory; expected at least \
                 {budget} ({}), {budgeted}: set maxmemory {budget} in its redis.conf",
                human(budget)
            ),
        );
    } else if maxmemory < budget {
        report.add(
            Status::Fail,
            subject,
            format!(
                "maxmemory is {maxmemory} ({}), less than {budget} ({}), {budgeted}: Redis evicts live state \
                 before the services reach their budgets; set maxmemory {budget} in its redis.conf \
                 (and CONFIG SET it as an operator), or lower the budgets",
                human(maxmemory),
                human(budget)
            ),
        );
    } else {
        report.add(
            Status::Ok,
            subject,
            format!("maxmemory is {maxmemory} ({}), at least {budgeted}: {}", human(maxmemory), human(budget)),
        );
    }

    let policy = info_field(info, "maxmemory_policy").unwrap_or("unknown");
    let subject = format!("{addr} maxmemory-policy");
    if breakwater_keyspace::is_volatile_policy(policy) {
        report.add(
            Status::Ok,
            subject,
            format!("{policy}: only keys with a TTL are evicted, and every Breakwater key has one"),
        );
    } else {
        let why = if policy == "noeviction" {
            "a full Redis then refuses writes with OOM, the seeds' outage"
        } else {
            "it may evict keys of others that have no TTL"
        };
        report.add(
            Status::Fail,
            subject,
            format!(
                "the eviction policy is {policy}: {why}; expected a volatile-* policy (every Breakwater key has a \
                 TTL, so eviction always has candidates): set maxmemory-policy volatile-lru in its redis.conf"
            ),
        );
    }

    let subject = format!("{addr} memory");
    if maxmemory == 0 {
        report.add(Status::Skip, subject, format!("{} used; no maxmemory to compare it with", human(used)));
    } else if breakwater_keyspace::nearly_full(used, maxmemory) {
        report.add(
            Status::Fail,
            subject,
            format!(
                "{used} bytes ({}) used of maxmemory {maxmemory} ({}), over 90%; expected room to spare: Redis is \
                 evicting state the services still need; raise the budgets and maxmemory (see `breakwater plan`)",
                human(used),
                human(maxmemory)
            ),
        );
    } else {
        report.add(
            Status::Ok,
            subject,
            format!("{} used of {} maxmemory ({}%)", human(used), human(maxmemory), used * 100 / maxmemory),
        );
    }
}

/// Every key under the service's prefix has a TTL.
async fn check_ttls(
    addr: &str,
    service: &Service,
    scanner: Option<(MultiplexedConnection, &str)>,
    have_admin: bool,
    report: &mut Report,
) {
    let subject = format!("{addr} {} keys", service.name);
    let prefix = &service.prefix;
    let Some((mut conn, as_whom)) = scanner else {
        report.add(
            Status::Skip,
            subject,
            format!("could not look for keys without a TTL under {prefix}: no connection"),
        );
        return;
    };
    match keys_without_ttl(&mut conn, prefix).await {
        Ok((scanned, missing)) if missing.is_empty() => report.add(
            Status::Ok,
            subject,
            format!("every key under {prefix} has a TTL ({scanned} scanned with SCAN and PTTL as {as_whom})"),
        ),
        Ok((scanned, missing)) => {
            let named = listing(&missing.iter().take(NAMED_KEYS).collect::<Vec<_>>());
            let more = missing.len().saturating_sub(NAMED_KEYS);
            report.add(
                Status::Fail,
                subject,
                format!(
                    "{} of {scanned} keys under {prefix} have no TTL: {named}{}; expected every key to expire, \
                     or volatile-* eviction cannot free them: find what wrote them, then DEL them or EXPIRE them",
                    missing.len(),
                    if more > 0 { format!(" and {more} more") } else { String::new() }
                ),
            );
        }
        Err(e) if refused(&e) && !have_admin => report.add(
            Status::Skip,
            subject,
            format!(
                "not looked for keys without a TTL under {prefix}, as {as_whom} may not SCAN ({e}), as intended: \
                 set {ADMIN_URL_VAR}=redis://<admin>:<password>@{addr} to check"
            ),
        ),
        Err(e) => report.add(
            Status::Fail,
            subject,
            format!("could not look for keys without a TTL under {prefix} as {as_whom}: {e}"),
        ),
    }
}

/// Keys scanned under `prefix`, and those of them without a TTL, sorted.
async fn keys_without_ttl(conn: &mut MultiplexedConnection, prefix: &str) -> Result<(u64, Vec<String>), RedisError> {
    let pattern = format!("{prefix}*");
    let (mut cursor, mut scanned, mut missing) = (0_u64, 0_u64, Vec::new());
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("PTTL").arg(key);
            }
            let ttls: Vec<i64> = pipe.query_async(conn).await?;
            scanned += keys.len() as u64;
            // -1: no TTL; -2: expired since SCAN saw it.
            missing.extend(keys.into_iter().zip(ttls).filter(|(_, ttl)| *ttl == -1).map(|(k, _)| k));
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    missing.sort();
    missing.dedup();
    Ok((scanned, missing))
}
