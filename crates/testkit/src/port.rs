//! Picking a free loopback port for child processes that must be told their port up front.
//!
//! In-process servers bind `127.0.0.1:0` and keep the listener; child processes cannot inherit
//! a listener, so we ask the kernel for a free port, release it and pass the number on. Another
//! test can take the port in between, so callers must detect a failed bind and retry.

use std::net::{Ipv4Addr, TcpListener};

/// How many ports a spawner tries before giving up.
pub(crate) const ATTEMPTS: usize = 8;

/// A port that was free a moment ago on 127.0.0.1.
pub(crate) fn pick_unused_port() -> u16 {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|listener| listener.local_addr()) {
        Ok(addr) => addr.port(),
        Err(err) => panic!("cannot bind 127.0.0.1:0 to pick a free port ({err}); is the loopback interface up?"),
    }
}

/// A listener on `127.0.0.1:0` for the in-process server `what`, and its address.
///
/// # Panics
///
/// Panics when it cannot bind a loopback port.
pub(crate) async fn bind_loopback(what: &str) -> (tokio::net::TcpListener, std::net::SocketAddr) {
    let listener = match tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
        Ok(listener) => listener,
        Err(err) => panic!("{what} cannot bind 127.0.0.1:0: {err}"),
    };
    match listener.local_addr() {
        Ok(addr) => (listener, addr),
        Err(err) => panic!("{what} has no local address: {err}"),
    }
}
