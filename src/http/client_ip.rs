//! Who sent a request: the peer, or the client named by a trusted proxy's
//! `X-Forwarded-For`; and the anonymised form that is all chronosd keeps.

use std::net::IpAddr;

pub use crate::payload::anonymise;

/// The client's address. `X-Forwarded-For` is believed only when the peer is a
/// trusted proxy; it is walked from the right, through trusted proxies, to the
/// first address that is not one. An entry that is not an address ends the
/// walk: whoever wrote it cannot be told apart from a client making names up,
/// so the request counts as the last trusted hop's (skipping it would let a
/// client put any address it likes behind it).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let Some(list) = forwarded_for else { return peer };
    let mut last_trusted = peer;
    for entry in list.rsplit(',') {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => last_trusted = ip,
            Ok(ip) => return ip,
            Err(_) => return last_trusted,
        }
    }
    last_trusted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxy = ip("10.0.0.1");
        assert_eq!(client_ip(ip("198.51.100.7"), Some("1.2.3.4"), &[proxy]), ip("198.51.100.7"));
        assert_eq!(client_ip(proxy, Some("1.2.3.4, 10.0.0.1"), &[proxy]), ip("1.2.3.4"));
        assert_eq!(client_ip(proxy, Some("spoofed, 5.6.7.8"), &[proxy]), ip("5.6.7.8"));
        assert_eq!(client_ip(proxy, None, &[proxy]), proxy);
    }

    #[test]
    fn an_entry_that_is_not_an_address_ends_the_walk() {
        let (proxy, inner) = (ip("10.0.0.1"), ip("10.0.0.2"));
        // Not skipped: the client behind garbage is unknown, so the request is the proxy's.
        assert_eq!(client_ip(proxy, Some("1.2.3.4, garbage"), &[proxy]), proxy);
        assert_eq!(client_ip(proxy, Some("1.2.3.4, unknown, 10.0.0.2"), &[proxy, inner]), inner);
        assert_eq!(client_ip(proxy, Some("1.2.3.4, 5.6.7.8:80"), &[proxy]), proxy);
        assert_eq!(client_ip(proxy, Some(""), &[proxy]), proxy);
        assert_eq!(client_ip(proxy, Some("10.0.0.2"), &[proxy, inner]), inner, "all hops trusted: the last one");
    }

    #[test]
    fn anonymisation_drops_the_host_part() {
        assert_eq!(anonymise(ip("203.0.113.77")), ip("203.0.113.0"));
        assert_eq!(anonymise(ip("2001:db8:abcd:12:1:2:3:4")), ip("2001:db8:abcd::"));
        assert_eq!(anonymise(ip("::ffff:192.0.2.9")), ip("192.0.2.0"));
    }
}
