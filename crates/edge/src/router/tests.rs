use super::*;

const MIB: usize = 1024 * 1024;

#[test]
fn the_budget_charges_body_and_copies_and_refuses_past_it() {
    let budget = Budget::new(64 * MIB);
    // 7 MiB of signals: 0.5 MiB of body plus four copies, 28.5 MiB each; two fit, a third does not.
    let first = budget.reserve(MIB / 2, 7 * MIB).unwrap();
    let second = budget.reserve(MIB / 2, 7 * MIB).unwrap();
    assert!(matches!(budget.reserve(MIB / 2, 7 * MIB), Err(EdgeError::OverBudget)));
    // A small webhook still fits in what is left (64 - 57 MiB).
    let small = budget.reserve(10 * 1024, 1024 * 1024).unwrap();
    drop((first, second, small));
    assert_eq!(budget.permits.available_permits(), 64 * 1024, "every byte is given back");
}

#[test]
fn a_webhook_larger_than_the_budget_runs_alone_rather_than_never() {
    let budget = Budget::new(MIB);
    let alone = budget.reserve(MIB, 100 * MIB).unwrap();
    assert!(matches!(budget.reserve(1, 1), Err(EdgeError::OverBudget)));
    drop(alone);
    assert!(budget.reserve(1, 1).is_ok());
}

fn nets(cidrs: &[&str]) -> Vec<ipnet::IpNet> {
    cidrs.iter().map(|c| c.parse().unwrap()).collect()
}

#[test]
fn the_sender_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
    let client: Option<IpAddr> = Some("203.0.113.7".parse().unwrap());
    // No proxy trusted: a client's own X-Forwarded-For changes nothing.
    assert_eq!(sender(client, &["198.51.100.1"], &[]), "203.0.113.7");
    // A peer outside the trusted ranges is the sender, whatever it forwards.
    assert_eq!(sender(client, &["198.51.100.1"], &nets(&["10.0.0.0/8"])), "203.0.113.7");
    assert_eq!(sender(None, &["198.51.100.1"], &[]), "unknown");
}

#[test]
fn behind_trusted_proxies_the_sender_is_the_right_most_untrusted_hop() {
    let proxy: Option<IpAddr> = Some("10.0.0.5".parse().unwrap());
    let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
    // The client forged a first hop; the proxy appended the address it saw.
    assert_eq!(sender(proxy, &["1.2.3.4, 203.0.113.7"], &trusted), "203.0.113.7");
    // Two proxies, across two headers: the hops they appended are skipped.
    assert_eq!(sender(proxy, &["1.2.3.4, 203.0.113.7", "10.1.2.3"], &trusted), "203.0.113.7");
    assert_eq!(sender(proxy, &["203.0.113.7, fd00::1"], &trusted), "203.0.113.7");
    // Every hop a trusted proxy: the left-most.
    assert_eq!(sender(proxy, &["10.9.9.9, 10.1.1.1"], &trusted), "10.9.9.9");
    // Nothing forwarded, or a hop that is not an address: the last trusted one.
    assert_eq!(sender(proxy, &[], &trusted), "10.0.0.5");
    assert_eq!(sender(proxy, &["1.2.3.4, garbage"], &trusted), "10.0.0.5");
}
