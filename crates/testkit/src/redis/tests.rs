use std::io::Write as _;

use super::resp::{encode_command, parse};
use super::{RedisServer, RespConnection, RespValue, unique_key_root};

#[test]
fn encodes_commands_as_bulk_string_arrays() {
    assert_eq!(encode_command(&["SET", "k", ""]), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
}

#[test]
fn parses_every_reply_type() {
    let cases: [(&[u8], RespValue); 7] = [
        (b"+OK\r\n", RespValue::Simple("OK".into())),
        (b"-ERR no\r\n", RespValue::Error("ERR no".into())),
        (b":-2\r\n", RespValue::Integer(-2)),
        (b"$5\r\nhe\r\no\r\n", RespValue::Bulk(b"he\r\no".to_vec())),
        (b"$-1\r\n", RespValue::Null),
        (b"*-1\r\n", RespValue::Null),
        (
            b"*2\r\n$1\r\n0\r\n*1\r\n$3\r\nkey\r\n",
            RespValue::Array(vec![
                RespValue::Bulk(b"0".to_vec()),
                RespValue::Array(vec![RespValue::Bulk(b"key".to_vec())]),
            ]),
        ),
    ];
    for (input, expected) in cases {
        let parsed = parse(input).expect("valid RESP").expect("complete reply");
        assert_eq!(parsed, (expected, input.len()), "input {:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn incomplete_replies_ask_for_more_bytes() {
    for input in [&b"+OK"[..], b"$5\r\nhel", b"*2\r\n:1\r\n", b""] {
        assert_eq!(parse(input).expect("valid prefix"), None);
    }
    assert!(parse(b"?what\r\n").is_err());
}

#[test]
fn display_renders_arrays_one_per_line() {
    let reply = RespValue::Array(vec![RespValue::Integer(1), RespValue::Null, RespValue::Simple("x".into())]);
    assert_eq!(reply.to_string(), "1\n\nx");
}

#[test]
fn key_roots_are_unique_and_colon_free() {
    let a = unique_key_root("dedup::window test");
    let b = unique_key_root("dedup::window test");
    assert_ne!(a, b);
    assert!(a.starts_with("t-dedup--window-test-"), "{a}");
    assert!(!a.contains(':') && !a.contains(' '), "{a}");
}

#[tokio::test]
async fn starts_answers_and_reports_its_urls() {
    let redis = RedisServer::start().await;
    assert_eq!(redis.admin_command(&["PING"]).await, "PONG");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.url_as("svc", "p@ss:word"), format!("redis://svc:p%40ss%3Aword@127.0.0.1:{}", redis.port()));
    assert_eq!(redis.admin_command(&["CONFIG", "GET", "save"]).await, "save\n");
    assert_eq!(redis.admin_command(&["CONFIG", "GET", "appendonly"]).await, "appendonly\nno");
}

#[tokio::test]
async fn parallel_servers_get_distinct_ports() {
    let servers = futures::future::join_all((0..4).map(|_| RedisServer::start())).await;
    let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4);
}

#[tokio::test]
async fn builder_options_reach_the_server_and_admin_can_change_them() {
    let redis = RedisServer::builder().maxmemory("16mb").maxmemory_policy("volatile-lru").start().await;
    assert_eq!(redis.admin_command(&["CONFIG", "GET", "maxmemory"]).await, format!("maxmemory\n{}", 16 * 1024 * 1024));
    assert_eq!(redis.admin_command(&["CONFIG", "GET", "maxmemory-policy"]).await, "maxmemory-policy\nvolatile-lru");
    assert_eq!(redis.admin_command(&["CONFIG", "SET", "maxmemory", "1mb"]).await, "OK");
    assert!(redis.admin_command(&["INFO", "memory"]).await.contains("maxmemory:1048576"));
    match redis.admin_resp(&["NOSUCHCOMMAND"]).await {
        RespValue::Error(err) => assert!(err.starts_with("ERR unknown command"), "{err}"),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[tokio::test]
async fn finds_keys_without_ttl() {
    let redis = RedisServer::start().await;
    let root = unique_key_root("ttl");
    let mut connection = redis.admin_connection().await;
    for i in 0..1500 {
        let key = format!("{root}:with:{i}");
        connection.command(&["SET", &key, "v", "EX", "100"]).await.expect("SET with TTL");
    }
    for key in ["a", "b"] {
        connection.command(&["SET", &format!("{root}:bare:{key}"), "v"]).await.expect("SET");
    }
    connection.command(&["SET", "other:bare", "v"]).await.expect("SET");
    assert_eq!(redis.admin_command(&["DBSIZE"]).await, "1503");
    assert_eq!(
        redis.keys_without_ttl(&format!("{root}:*")).await,
        vec![format!("{root}:bare:a"), format!("{root}:bare:b")]
    );
}

#[tokio::test]
async fn kill_refuses_connections_and_restart_comes_back_empty_on_the_same_port() {
    let mut redis = RedisServer::builder().maxmemory("8mb").start().await;
    let port = redis.port();
    redis.admin_command(&["SET", "k", "v"]).await;
    redis.kill().await;
    assert!(RespConnection::connect(port).await.is_err(), "port {port} still accepts after kill");
    redis.restart().await;
    assert_eq!(redis.port(), port);
    assert_eq!(redis.admin_command(&["DBSIZE"]).await, "0");
    assert_eq!(redis.admin_command(&["CONFIG", "GET", "maxmemory"]).await, "maxmemory\n8388608");
    // Restarting a running server works too.
    redis.restart().await;
    assert_eq!(redis.admin_command(&["PING"]).await, "PONG");
}

#[tokio::test]
async fn acl_file_users_can_log_in_and_default_stays_admin() {
    let mut acl = tempfile::NamedTempFile::new().expect("temp ACL file");
    writeln!(acl, "user default on nopass ~* &* +@all").expect("write ACL file");
    writeln!(acl, "user svc on >s3cret ~t-* +get +set").expect("write ACL file");
    let redis = RedisServer::builder().acl_file(acl.path()).start().await;
    let mut connection = RespConnection::connect(redis.port()).await.expect("connect");
    assert_eq!(connection.command(&["AUTH", "svc", "s3cret"]).await.expect("AUTH"), RespValue::Simple("OK".into()));
    let denied = connection.command(&["CONFIG", "GET", "maxmemory"]).await.expect("reply");
    assert!(matches!(&denied, RespValue::Error(err) if err.starts_with("NOPERM")), "{denied:?}");
    assert!(redis.admin_command(&["ACL", "LIST"]).await.contains("user svc on"));
}

#[tokio::test]
async fn losing_the_port_race_is_detected_not_mistaken_for_readiness() {
    let first = RedisServer::start().await;
    let second = RedisServer::start().await;
    assert!(
        second.launch(first.port()).await.is_none(),
        "a launch on a taken port must report the loss so the caller retries"
    );
    assert_eq!(first.admin_command(&["PING"]).await, "PONG");
}
