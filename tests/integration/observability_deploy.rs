//! The alerts and the dashboard in `deploy/observability/` name only metrics and labels that
//! Breakwater exports (`breakwater_telemetry::catalogue::METRICS`), every alert tells the
//! operator what is wrong, and the dashboard shows every metric.
//!
//! PromQL is read by a small scanner, not a full parser: it finds metric names, the label
//! matchers of their selectors and the labels of `by (…)`/`without (…)` clauses. It refuses what
//! it cannot check (`on (…)`, `ignoring (…)`, `group_left`, `group_right`) rather than passing it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use breakwater_telemetry::catalogue::{METRICS, Metric, MetricKind};
use serde_json::Value;

const RULE_FILE: &str = "deploy/observability/prometheus-rule.yaml";
const DASHBOARD_FILE: &str = "deploy/observability/grafana-dashboard.json";
const TELEMETRY_ENV_FILE: &str = "deploy/observability/breakwater-telemetry-env.yaml";
const JAEGER_FILE: &str = "deploy/observability/jaeger.yaml";

/// Catalogue metrics the dashboard may leave out, each with the reason. Keep it short: a metric
/// nobody looks at should not be exported.
const NOT_ON_DASHBOARD: &[(&str, &str)] = &[];

const SEVERITIES: &[&str] = &["critical", "warning", "info"];

fn read(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: cannot read: {e}"))
}

fn yaml_documents(file: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(&read(file)).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"))
}

// ---------------------------------------------------------------------------------------------
// PromQL scanner

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// Metric, label, function and keyword names.
    Ident(String),
    Str(String),
    /// `(`, `)`, `{`, `}` and `,`.
    Punct(char),
    /// Operators, matchers included (`=`, `!=`, `=~`, `!~`).
    Op(String),
    /// Numbers, durations, `[…]` ranges, Grafana variables: nothing to check.
    Other,
}

fn tokenize(expr: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let take_while = |mut i: usize, f: &dyn Fn(char) -> bool| {
        while i < chars.len() && f(chars[i]) {
            i += 1;
        }
        i
    };
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        match c {
            _ if c.is_whitespace() => i += 1,
            '#' => i = take_while(i, &|c| c != '\n'),
            '"' | '\'' | '`' => {
                let mut value = String::new();
                i += 1;
                loop {
                    let Some(&d) = chars.get(i) else { return Err(format!("unterminated string: {expr}")) };
                    i += 1;
                    if d == c {
                        break;
                    }
                    if d == '\\' && c != '`' {
                        let Some(&escaped) = chars.get(i) else { return Err(format!("bad escape: {expr}")) };
                        value.push(escaped);
                        i += 1;
                    } else {
                        value.push(d);
                    }
                }
                tokens.push(Token::Str(value));
            }
            '[' => {
                let Some(end) = chars[i..].iter().position(|&d| d == ']') else {
                    return Err(format!("unterminated [ in {expr}"));
                };
                i += end + 1;
                tokens.push(Token::Other);
            }
            '$' => {
                i += 1;
                i = if chars.get(i) == Some(&'{') {
                    take_while(i, &|c| c != '}') + 1
                } else {
                    take_while(i, &ident_char)
                };
                tokens.push(Token::Other);
            }
            '(' | ')' | '{' | '}' | ',' => {
                tokens.push(Token::Punct(c));
                i += 1;
            }
            _ if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let end = take_while(i, &ident_char);
                tokens.push(Token::Ident(chars[i..end].iter().collect()));
                i = end;
            }
            _ if c.is_ascii_digit() || c == '.' => {
                i = take_while(i, &|c| c.is_ascii_alphanumeric() || c == '.');
                tokens.push(Token::Other);
            }
            '=' | '!' | '>' | '<' => {
                let next = chars.get(i + 1).copied();
                let len = if matches!(next, Some('=' | '~')) { 2 } else { 1 };
                let op: String = chars[i..i + len].iter().collect();
                if op == "!" {
                    return Err(format!("stray ! in {expr}"));
                }
                tokens.push(Token::Op(op));
                i += len;
            }
            '+' | '-' | '*' | '/' | '%' | '^' | '@' => {
                tokens.push(Token::Op(c.to_string()));
                i += 1;
            }
            _ => return Err(format!("unexpected {c:?} in {expr}")),
        }
    }
    Ok(tokens)
}

/// One use of a catalogue metric in an expression.
struct MetricUse {
    token: usize,
    metric: &'static Metric,
    /// Named with `_bucket`: the histogram's `le` label is then allowed too.
    bucket: bool,
}

fn catalogue_metric(name: &str) -> Option<(&'static Metric, bool)> {
    if let Some(m) = METRICS.iter().find(|m| m.name == name) {
        return Some((m, false));
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        let m = METRICS.iter().find(|m| m.name == base && m.kind == MetricKind::Histogram)?;
        Some((m, *suffix == "_bucket"))
    })
}

fn allows_label(u: &MetricUse, label: &str) -> bool {
    u.metric.labels.contains(&label) || (u.bucket && label == "le")
}

/// Checks one expression; `place` says where it is ("deploy/…: alert X"). Returns the
/// catalogue metrics it uses and adds one message per problem to `errors`.
fn check_expr(expr: &str, place: &str, errors: &mut Vec<String>) -> BTreeSet<&'static str> {
    let mut used = BTreeSet::new();
    let tokens = match tokenize(expr) {
        Ok(tokens) => tokens,
        Err(e) => {
            errors.push(format!("{place}: {e}"));
            return used;
        }
    };
    // Matching parentheses, both ways.
    let mut partner = BTreeMap::new();
    let mut open = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Punct('(') => open.push(i),
            Token::Punct(')') => {
                let Some(o) = open.pop() else {
                    errors.push(format!("{place}: unbalanced ) in {expr}"));
                    return used;
                };
                partner.insert(o, i);
                partner.insert(i, o);
            }
            _ => {}
        }
    }
    if !open.is_empty() {
        errors.push(format!("{place}: unbalanced ( in {expr}"));
        return used;
    }

    // Pass 1: metric names and their selectors.
    let mut uses = Vec::new();
    let mut in_braces = vec![false; tokens.len()];
    let mut i = 0;
    while i < tokens.len() {
        if let Token::Ident(name) = &tokens[i]
            && name.starts_with("breakwater_")
        {
            let Some((metric, bucket)) = catalogue_metric(name) else {
                errors.push(format!(
                    "{place}: metric {name} is not in the catalogue (crates/telemetry/src/catalogue.rs)"
                ));
                i += 1;
                continue;
            };
            used.insert(metric.name);
            let u = MetricUse { token: i, metric, bucket };
            if tokens.get(i + 1) == Some(&Token::Punct('{')) {
                let mut j = i + 2;
                loop {
                    match (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2)) {
                        (Some(Token::Punct('}')), _, _) => break,
                        (Some(Token::Ident(label)), Some(Token::Op(op)), Some(Token::Str(_)))
                            if ["=", "!=", "=~", "!~"].contains(&op.as_str()) =>
                        {
                            if !allows_label(&u, label) {
                                errors.push(format!(
                                    "{place}: label {label} in the selector of {name} is not one of its labels {:?}",
                                    metric.labels
                                ));
                            }
                            j += 3;
                            if tokens.get(j) == Some(&Token::Punct(',')) {
                                j += 1;
                            }
                        }
                        _ => {
                            errors.push(format!("{place}: cannot read the selector of {name} in {expr}"));
                            break;
                        }
                    }
                }
                in_braces[i + 1..=j.min(tokens.len() - 1)].fill(true);
                i = j;
            }
            uses.push(u);
        }
        i += 1;
    }

    // Pass 2: `by (…)` and `without (…)`, checked against every metric they aggregate.
    for (i, t) in tokens.iter().enumerate() {
        let Token::Ident(word) = t else { continue };
        if in_braces[i] || tokens.get(i + 1) != Some(&Token::Punct('(')) {
            continue;
        }
        match word.as_str() {
            "by" | "without" => {}
            "on" | "ignoring" | "group_left" | "group_right" => {
                errors.push(format!(
                    "{place}: {word}(…) is not checked by tests/integration/observability_deploy.rs: aggregate both sides \
                     by the same labels instead, or teach the scanner"
                ));
                continue;
            }
            _ => continue,
        }
        let close = partner[&(i + 1)];
        let labels: Vec<&str> = tokens[i + 2..close]
            .iter()
            .filter_map(|t| match t {
                Token::Ident(l) => Some(l.as_str()),
                _ => None,
            })
            .collect();
        // `sum (x) by (l)` aggregates the group before; `sum by (l) (x)` the group after.
        let scope = if i > 0 && tokens[i - 1] == Token::Punct(')') {
            Some((partner[&(i - 1)], i - 1))
        } else if tokens.get(close + 1) == Some(&Token::Punct('(')) {
            Some((close + 1, partner[&(close + 1)]))
        } else {
            None
        };
        let Some((from, to)) = scope else {
            errors.push(format!("{place}: cannot find what {word} ({}) aggregates in {expr}", labels.join(", ")));
            continue;
        };
        for u in uses.iter().filter(|u| (from..to).contains(&u.token)) {
            for label in labels.iter().filter(|l| !allows_label(u, l)) {
                errors.push(format!(
                    "{place}: label {label} in {word} (…) over {} is not one of its labels {:?}",
                    u.metric.name, u.metric.labels
                ));
            }
        }
    }
    used
}

fn fail_on(errors: &[String]) {
    assert!(errors.is_empty(), "{} problem(s):\n  {}", errors.len(), errors.join("\n  "));
}

// ---------------------------------------------------------------------------------------------
// The files

/// (group, alert name, rule) for every alerting rule.
fn alert_rules() -> Vec<(String, String, Value)> {
    let rule: Value = serde_saphyr::from_str(&read(RULE_FILE)).unwrap_or_else(|e| panic!("{RULE_FILE}: {e}"));
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1", "{RULE_FILE}: apiVersion");
    assert_eq!(rule["kind"], "PrometheusRule", "{RULE_FILE}: kind");
    let groups = rule["spec"]["groups"].as_array().unwrap_or_else(|| panic!("{RULE_FILE}: no spec.groups"));
    let mut out = Vec::new();
    for group in groups {
        let group_name = group["name"].as_str().unwrap_or_else(|| panic!("{RULE_FILE}: a group has no name"));
        let rules = group["rules"].as_array().unwrap_or_else(|| panic!("{RULE_FILE}: group {group_name}: no rules"));
        for r in rules {
            let name = r["alert"]
                .as_str()
                .or_else(|| r["record"].as_str())
                .unwrap_or_else(|| panic!("{RULE_FILE}: group {group_name}: a rule has neither alert nor record"));
            out.push((group_name.to_owned(), name.to_owned(), r.clone()));
        }
    }
    assert!(!out.is_empty(), "{RULE_FILE}: no rules");
    out
}

/// Every panel, rows and the panels of collapsed rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn panel_place(panel: &Value) -> String {
    format!("{DASHBOARD_FILE}: panel {:?} (id {})", panel["title"].as_str().unwrap_or("?"), panel["id"])
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD_FILE)).unwrap_or_else(|e| panic!("{DASHBOARD_FILE}: not JSON: {e}"))
}

/// Checks every target expression of the dashboard; returns the metrics it shows.
fn check_dashboard_exprs(dashboard: &Value, errors: &mut Vec<String>) -> BTreeSet<&'static str> {
    let mut shown = BTreeSet::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let ref_id = target["refId"].as_str().unwrap_or("?");
            let place = format!("{} target {ref_id}", panel_place(panel));
            match target["expr"].as_str() {
                Some(expr) => shown.extend(check_expr(expr, &place, errors)),
                None => errors.push(format!("{place}: no expr")),
            }
        }
    }
    shown
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn alert_rules_name_catalogue_metrics_and_labels() {
    let mut errors = Vec::new();
    let mut used = BTreeSet::new();
    for (group, name, rule) in alert_rules() {
        let place = format!("{RULE_FILE}: group {group}, rule {name}");
        match rule["expr"].as_str() {
            Some(expr) => used.extend(check_expr(expr, &place, &mut errors)),
            None => errors.push(format!("{place}: expr is missing or not a string")),
        }
    }
    fail_on(&errors);
    assert!(used.len() >= 10, "{RULE_FILE}: the scanner found only {used:?}: is it still reading the rules?");
}

#[test]
fn every_alert_says_what_is_wrong_and_how_bad() {
    let mut errors = Vec::new();
    let mut names = BTreeSet::new();
    for (group, name, rule) in alert_rules() {
        let place = format!("{RULE_FILE}: group {group}, alert {name}");
        if rule["alert"].is_null() {
            continue;
        }
        if !names.insert(name.clone()) {
            errors.push(format!("{place}: alert name used twice"));
        }
        for annotation in ["summary", "description"] {
            if rule["annotations"][annotation].as_str().is_none_or(|s| s.trim().is_empty()) {
                errors.push(format!("{place}: no {annotation} annotation"));
            }
        }
        match rule["labels"]["severity"].as_str() {
            Some(s) if SEVERITIES.contains(&s) => {}
            Some(s) => errors.push(format!("{place}: severity {s:?} is not one of {SEVERITIES:?}")),
            None => errors.push(format!("{place}: no severity label")),
        }
    }
    fail_on(&errors);
}

#[test]
fn dashboard_names_catalogue_metrics_and_labels() {
    let mut errors = Vec::new();
    let shown = check_dashboard_exprs(&dashboard(), &mut errors);
    fail_on(&errors);
    assert!(!shown.is_empty(), "{DASHBOARD_FILE}: the scanner found no metric in any panel");
}

#[test]
fn dashboard_shows_every_catalogue_metric() {
    // Bad expressions are reported by dashboard_names_catalogue_metrics_and_labels.
    let shown = check_dashboard_exprs(&dashboard(), &mut Vec::new());
    let mut errors = Vec::new();
    for (name, reason) in NOT_ON_DASHBOARD {
        if !METRICS.iter().any(|m| m.name == *name) {
            errors.push(format!("NOT_ON_DASHBOARD: {name} ({reason}) is not in the catalogue: remove it"));
        }
        if shown.contains(name) {
            errors.push(format!("NOT_ON_DASHBOARD: {name} is on {DASHBOARD_FILE} after all: remove it"));
        }
    }
    for metric in METRICS {
        let counted = matches!(metric.kind, MetricKind::Counter | MetricKind::Gauge | MetricKind::Histogram);
        if counted && !shown.contains(metric.name) && !NOT_ON_DASHBOARD.iter().any(|(n, _)| *n == metric.name) {
            errors.push(format!(
                "{DASHBOARD_FILE}: no panel shows {} ({:?}): add one, or list it in NOT_ON_DASHBOARD with the reason",
                metric.name, metric.kind
            ));
        }
    }
    fail_on(&errors);
}

#[test]
fn dashboard_panel_ids_are_unique_and_queries_use_the_datasource_variable() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "breakwater", "{DASHBOARD_FILE}: uid");
    let mut variables = dashboard["templating"]["list"].as_array().into_iter().flatten();
    assert!(
        variables.any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "{DASHBOARD_FILE}: no Prometheus templating variable named datasource"
    );
    let mut errors = Vec::new();
    let mut ids: BTreeMap<i64, String> = BTreeMap::new();
    for panel in panels(&dashboard) {
        let place = panel_place(panel);
        match panel["id"].as_i64() {
            Some(id) => {
                if let Some(first) = ids.insert(id, place.clone()) {
                    errors.push(format!("{place}: id {id} is also the id of {first}"));
                }
            }
            None => errors.push(format!("{place}: no integer id")),
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            for (what, ds) in [("panel", &panel["datasource"]), ("target", &target["datasource"])] {
                if ds["uid"] != "${datasource}" {
                    errors.push(format!(
                        "{place}: {what} datasource {ds} is not the ${{datasource}} variable (target {})",
                        target["refId"]
                    ));
                }
            }
        }
    }
    fail_on(&errors);
}

#[test]
fn telemetry_env_points_at_the_jaeger_collector() {
    let docs = yaml_documents(TELEMETRY_ENV_FILE);
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "breakwater-telemetry")
        .unwrap_or_else(|| panic!("{TELEMETRY_ENV_FILE}: no ConfigMap breakwater-telemetry"));
    let data = &config_map["data"];
    for key in ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"] {
        assert!(data[key].is_string(), "{TELEMETRY_ENV_FILE}: ConfigMap breakwater-telemetry: {key} missing");
    }
    assert!(
        data["OTEL_SERVICE_NAME"].is_null(),
        "{TELEMETRY_ENV_FILE}: OTEL_SERVICE_NAME in a ConfigMap shared by envFrom names all five components alike"
    );

    let endpoint = data["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str().unwrap_or_default();
    let authority = endpoint.strip_prefix("http://").unwrap_or_else(|| {
        panic!("{TELEMETRY_ENV_FILE}: OTEL_EXPORTER_OTLP_ENDPOINT {endpoint} is not http://service.namespace:port")
    });
    let (host, port) =
        authority.split_once(':').unwrap_or_else(|| panic!("{TELEMETRY_ENV_FILE}: no port in {endpoint}"));
    let (service, rest) =
        host.split_once('.').unwrap_or_else(|| panic!("{TELEMETRY_ENV_FILE}: {endpoint} names no namespace"));
    let namespace = rest.split('.').next().unwrap_or(rest);
    let port: u64 = port.parse().unwrap_or_else(|_| panic!("{TELEMETRY_ENV_FILE}: port of {endpoint}"));

    let jaeger = yaml_documents(JAEGER_FILE);
    let found = jaeger.iter().any(|d| {
        d["kind"] == "Service"
            && d["metadata"]["name"] == service
            && d["metadata"]["namespace"] == namespace
            && d["spec"]["ports"].as_array().into_iter().flatten().any(|p| p["port"].as_u64() == Some(port))
    });
    assert!(
        found,
        "{JAEGER_FILE}: no Service {service} in namespace {namespace} with port {port} ({TELEMETRY_ENV_FILE})"
    );
}

// The scanner must catch what the tests above rely on it to catch.

fn problems(expr: &str) -> Vec<String> {
    let mut errors = Vec::new();
    check_expr(expr, "test", &mut errors);
    errors
}

#[test]
fn scanner_rejects_unknown_metrics_and_labels() {
    assert!(problems("sum by (component) (rate(breakwater_redis_errors_total{kind=\"oom\"}[5m])) > 0").is_empty());
    assert!(
        problems(
            "histogram_quantile(0.99, sum by (le, route) (rate(breakwater_http_request_duration_seconds_bucket[5m])))"
        )
        .is_empty()
    );
    assert!(problems("sum(rate(breakwater_redis_errors_total[5m])) by (component, kind)").is_empty());

    let e = problems("rate(breakwater_no_such_total[5m])");
    assert!(e.len() == 1 && e[0].contains("breakwater_no_such_total"), "{e:?}");
    let e = problems("rate(breakwater_http_requests_total_bucket[5m])");
    assert!(e.len() == 1 && e[0].contains("not in the catalogue"), "a counter has no _bucket: {e:?}");
    let e = problems("breakwater_degraded{component=\"dedup\", keyspace=\"x\"}");
    assert!(e.len() == 1 && e[0].contains("label keyspace"), "{e:?}");
    let e = problems("sum by (pod) (rate(breakwater_signals_total[5m]))");
    assert!(e.len() == 1 && e[0].contains("label pod"), "{e:?}");
    let e = problems("sum(rate(breakwater_signals_total[5m])) by (le)");
    assert!(e.len() == 1 && e[0].contains("label le"), "le only on histogram buckets: {e:?}");
    let e = problems("breakwater_redis_used_memory_bytes / on (component) breakwater_redis_memory_budget_bytes");
    assert!(e.len() == 1 && e[0].contains("on(…)"), "{e:?}");
    let e = problems("sum(rate(breakwater_signals_total[5m])");
    assert!(e.len() == 1 && e[0].contains("unbalanced"), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// The code

/// Every `.rs` file under `crates/*/src`, with its path relative to the repository.
fn source_files() -> Vec<(String, String)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).expect("crates/") {
        let src = krate.expect("crate").path().join("src");
        if src.is_dir() {
            walk(&src, &mut files);
        }
    }
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("source file");
            (p.strip_prefix(&root).unwrap_or(&p).display().to_string(), text)
        })
        .collect()
}

/// `(macro kind, metric name, label keys)` of every `counter!`/`gauge!`/`histogram!` call
/// whose name is a string literal.
fn recorded_metrics(text: &str) -> Vec<(MetricKind, String, Vec<String>)> {
    let mut found = Vec::new();
    for (kind, call) in
        [(MetricKind::Counter, "counter!("), (MetricKind::Gauge, "gauge!("), (MetricKind::Histogram, "histogram!(")]
    {
        for (at, _) in text.match_indices(call) {
            let args = text[at + call.len()..].trim_start();
            let Some(rest) = args.strip_prefix('"') else { continue };
            let Some((name, rest)) = rest.split_once('"') else { continue };
            let labels = top_level_args(rest)
                .iter()
                .filter_map(|arg| arg.split_once("=>"))
                .map(|(key, _)| key.trim().trim_matches('"').to_owned())
                .collect();
            found.push((kind, name.to_owned(), labels));
        }
    }
    found
}

/// The comma-separated arguments after the name, up to the call's closing
/// parenthesis (nesting and string literals respected).
fn top_level_args(rest: &str) -> Vec<String> {
    let (mut args, mut current, mut depth, mut in_string) = (Vec::new(), String::new(), 0usize, false);
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_string => {
                current.push(c);
                current.extend(chars.next());
                continue;
            }
            '"' => in_string = !in_string,
            '(' | '[' | '{' if !in_string => depth += 1,
            ')' | ']' | '}' if !in_string => {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            }
            ',' if !in_string && depth == 0 => {
                args.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    args.push(current);
    args
}

#[test]
fn every_metric_the_code_records_is_in_the_catalogue_with_its_kind_and_labels() {
    let mut errors = Vec::new();
    let mut seen = 0;
    for (file, text) in source_files() {
        for (kind, name, labels) in recorded_metrics(&text) {
            seen += 1;
            let Some(metric) = METRICS.iter().find(|m| m.name == name) else {
                errors.push(format!("{file}: {name} is recorded but not in the catalogue"));
                continue;
            };
            if metric.kind != kind {
                errors.push(format!("{file}: {name} is recorded as {kind:?}, catalogued as {:?}", metric.kind));
            }
            let mut labels = labels;
            labels.sort();
            let mut expected: Vec<String> = metric.labels.iter().map(|l| (*l).to_owned()).collect();
            expected.sort();
            if labels != expected {
                errors.push(format!("{file}: {name} is recorded with labels {labels:?}, catalogued {expected:?}"));
            }
        }
    }
    assert!(seen > 20, "the scanner found only {seen} metric calls: is it still reading the code?");
    fail_on(&errors);
}

#[test]
fn every_catalogue_metric_is_recorded_somewhere() {
    let code: String =
        source_files().into_iter().filter(|(file, _)| !file.ends_with("catalogue.rs")).map(|(_, text)| text).collect();
    let missing: Vec<&str> =
        METRICS.iter().map(|m| m.name).filter(|name| !code.contains(&format!("\"{name}\""))).collect();
    assert!(missing.is_empty(), "catalogued but never recorded: {missing:?}");
}
