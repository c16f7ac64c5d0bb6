//! `breakwater up` runs its five components in one process with no socket
//! between them: the edge calls ratelimit, dedup, storm and crd-writer
//! directly. Checked from the outside, on Linux, in the process's own socket
//! table after it has taken alerts and answered `/readyz`.
#![cfg(target_os = "linux")]

use std::collections::HashSet;

use breakwater_testkit::BreakwaterProcess as Process;
use serde_json::{Value, json};

/// TCP states in `/proc/net/tcp`.
const ESTABLISHED: &str = "01";
const LISTEN: &str = "0A";

/// One TCP socket of `/proc/<pid>/net/tcp{,6}`.
#[derive(Debug)]
struct TcpSocket {
    /// `tcp` or `tcp6`: addresses compare within one family.
    family: &'static str,
    local: (String, u16),
    remote: (String, u16),
    state: String,
}

/// `ADDRHEX:PORTHEX` as (address, port).
fn endpoint(field: &str) -> (String, u16) {
    let (addr, port) = field.split_once(':').expect("ADDR:PORT");
    (addr.to_owned(), u16::from_str_radix(port, 16).expect("hex port"))
}

/// The inodes of the sockets `pid` has open.
fn socket_inodes(pid: u32) -> HashSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd table")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect()
}

/// The TCP sockets of `pid` (of its network namespace, those whose inode it holds).
fn tcp_sockets(pid: u32) -> Vec<TcpSocket> {
    let inodes = socket_inodes(pid);
    let mut sockets = Vec::new();
    for family in ["tcp", "tcp6"] {
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/{family}")).unwrap_or_default();
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
            if fields.len() > 9 && inodes.contains(fields[9]) {
                sockets.push(TcpSocket {
                    family,
                    local: endpoint(fields[1]),
                    remote: endpoint(fields[2]),
                    state: fields[3].to_owned(),
                });
            }
        }
    }
    sockets
}

fn alert(alertname: &str, namespace: &str, pod: &str) -> Value {
    json!({"status": "firing", "labels": {"alertname": alertname, "namespace": namespace, "pod": pod, "severity": "critical"},
           "annotations": {"summary": format!("{pod} is in trouble")}})
}

#[tokio::test]
async fn up_opens_no_socket_between_its_components() {
    let dir = tempfile::tempdir().expect("temporary sink directory");
    let sink = dir.path().to_str().expect("utf-8 path");
    let env = [("RUST_LOG".to_owned(), "warn".to_owned())];
    let up =
        Process::start(env!("CARGO_BIN_EXE_breakwater"), &["up", "--listen", "127.0.0.1:0", "--sink-dir", sink], &env)
            .await;
    let pid = up.child.id().expect("running");
    let edge_port: u16 = up.addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("edge port");

    // Every component takes calls: a new incident, its repeat, a storm.
    let client = reqwest::Client::new();
    let post = async |alerts: Vec<Value>| {
        let body = json!({"version": "4", "status": "firing", "alerts": alerts});
        let response = client
            .post(format!("{}/api/v1/signals/prometheus", up.url()))
            .json(&body)
            .send()
            .await
            .expect("edge answers");
        (response.status().as_u16(), response.json::<Value>().await.expect("JSON body"))
    };
    let (status, first) = post(vec![alert("HighMemory", "prod", "api-1")]).await;
    assert_eq!((status, &first["results"][0]["outcome"]), (201, &json!("created")), "{first}");
    let (status, again) = post(vec![alert("HighMemory", "prod", "api-1")]).await;
    assert_eq!((status, &again["results"][0]["outcome"]), (202, &json!("duplicate")), "{again}");
    let pods = (1..=6).map(|p| alert("PodCrash", "stage", &format!("web-{p}"))).collect();
    let (status, storm) = post(pods).await;
    assert_eq!((status, &storm["results"][5]["outcome"]), (201, &json!("storm_created")), "{storm}");

    // Health and status checks reach all four too.
    let ready: Value =
        client.get(format!("{}/readyz", up.url())).send().await.expect("readyz").json().await.expect("JSON");
    assert_eq!(ready["status"], "ready", "{ready}");
    for component in ["ratelimit", "dedup", "storm", "crd-writer"] {
        assert_eq!(ready["components"][component]["state"], "serving", "{component}: {ready}");
    }

    let sockets = tcp_sockets(pid);
    let listening: Vec<&TcpSocket> = sockets.iter().filter(|s| s.state == LISTEN).collect();
    assert_eq!(listening.len(), 1, "one listening socket, the edge's: {sockets:#?}");
    assert_eq!(listening[0].local.1, edge_port, "{sockets:#?}");
    // The table is read right: this test's own keep-alive connection to the edge shows.
    assert!(
        sockets.iter().any(|s| s.state == ESTABLISHED && s.local.1 == edge_port),
        "the test's connection to the edge is missing: {sockets:#?}"
    );
    // No connection whose other end is the process itself.
    let own: HashSet<(&str, &(String, u16))> = sockets.iter().map(|s| (s.family, &s.local)).collect();
    let internal: Vec<&TcpSocket> =
        sockets.iter().filter(|s| s.state == ESTABLISHED && own.contains(&(s.family, &s.remote))).collect();
    assert!(internal.is_empty(), "connections between the process's own sockets: {internal:#?}");
}
