//! Request rate limits per write key and per client IP (GCRA, from `governor`).
//! IPv6 clients are counted per network (`limits.ipv6_prefix`, /64 by
//! default): one host commonly holds a whole /64, and would otherwise have
//! 2^64 buckets. Time comes from a clock so that tests advance it instead of sleeping.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::error::IngestError;
use crate::config::LimitsConfig;

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Both limiters; cheap to share (`Arc`).
pub struct RateLimits<C: Clock = DefaultClock> {
    per_key: Keyed<usize, C>,
    per_ip: Keyed<IpAddr, C>,
    ipv6_prefix: u8,
    clock: C,
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_sec.max(1)).unwrap();
    Quota::per_second(rate).allow_burst(NonZeroU32::new(burst.max(1)).unwrap())
}

impl RateLimits<DefaultClock> {
    pub fn new(c: &LimitsConfig) -> Self {
        Self::with_clock(c, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    pub fn with_clock(c: &LimitsConfig, clock: C) -> Self {
        RateLimits {
            per_key: RateLimiter::dashmap_with_clock(quota(c.per_key_per_sec, c.per_key_burst), clock.clone()),
            per_ip: RateLimiter::dashmap_with_clock(quota(c.per_ip_per_sec, c.per_ip_burst), clock.clone()),
            ipv6_prefix: c.ipv6_prefix.min(128),
            clock,
        }
    }

    /// Counts one request from `ip` (its network, for IPv6); 429 with
    /// Retry-After when over the limit.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), IngestError> {
        self.per_ip
            .check_key(&bucket(ip, self.ipv6_prefix))
            .map_err(|not_until| IngestError::RateLimited { scope: "client IP", retry_after: ceil_secs(not_until.wait_time_from(self.clock.now())) })
    }

    /// Counts one request for the key at `index` in the key ring.
    pub fn check_key(&self, index: usize) -> Result<(), IngestError> {
        self.per_key
            .check_key(&index)
            .map_err(|not_until| IngestError::RateLimited { scope: "write key", retry_after: ceil_secs(not_until.wait_time_from(self.clock.now())) })
    }

    /// Forgets clients whose limits are back to full (bounds memory); call periodically.
    pub fn forget_idle(&self) {
        self.per_ip.retain_recent();
        self.per_ip.shrink_to_fit();
        self.per_key.retain_recent();
    }

    /// Client IPs currently tracked.
    pub fn tracked_ips(&self) -> usize {
        self.per_ip.len()
    }
}

/// The per-IP bucket of `ip`: an IPv4 address (also when mapped into IPv6)
/// itself, an IPv6 address its first `prefix` bits.
fn bucket(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

fn ceil_secs(d: std::time::Duration) -> u64 {
    (d.as_millis() as u64).div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    fn limits() -> (RateLimits<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let cfg = LimitsConfig { per_ip_per_sec: 2, per_ip_burst: 3, per_key_per_sec: 1, per_key_burst: 1, ..Default::default() };
        (RateLimits::with_clock(&cfg, clock.clone()), clock)
    }

    #[test]
    fn ip_burst_then_429_with_retry_after_then_recovers() {
        let (l, clock) = limits();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            l.check_ip(ip).unwrap();
        }
        match l.check_ip(ip) {
            Err(IngestError::RateLimited { scope: "client IP", retry_after }) => assert_eq!(retry_after, 1),
            other => panic!("{other:?}"),
        }
        // Other clients are unaffected.
        l.check_ip("192.0.2.2".parse().unwrap()).unwrap();
        clock.advance(Duration::from_millis(500));
        l.check_ip(ip).unwrap();
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_prefix() {
        let (l, _clock) = limits();
        // Three requests from three addresses of one /64: its burst is spent.
        for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff:ffff:ffff:ffff"] {
            l.check_ip(host.parse().unwrap()).unwrap();
        }
        assert!(matches!(l.check_ip("2001:db8:1:2::99".parse().unwrap()), Err(IngestError::RateLimited { .. })));
        // The next /64 is another client.
        l.check_ip("2001:db8:1:3::1".parse().unwrap()).unwrap();
        assert_eq!(bucket("2001:db8:1:2:aaaa::1".parse().unwrap(), 48), "2001:db8:1::".parse::<IpAddr>().unwrap());
        assert_eq!(bucket("2001:db8::1".parse().unwrap(), 128), "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(bucket("::ffff:192.0.2.9".parse().unwrap(), 64), "192.0.2.9".parse::<IpAddr>().unwrap(), "IPv4 mapped: the IPv4 client");
    }

    #[test]
    fn keys_are_limited_separately() {
        let (l, clock) = limits();
        l.check_key(0).unwrap();
        assert!(matches!(l.check_key(0), Err(IngestError::RateLimited { scope: "write key", .. })));
        l.check_key(1).unwrap();
        clock.advance(Duration::from_secs(1));
        l.check_key(0).unwrap();
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let (l, clock) = limits();
        for i in 0..100u8 {
            l.check_ip(IpAddr::from([10, 0, 0, i])).unwrap();
        }
        assert_eq!(l.tracked_ips(), 100);
        clock.advance(Duration::from_secs(10));
        l.forget_idle();
        assert_eq!(l.tracked_ips(), 0);
    }
}
