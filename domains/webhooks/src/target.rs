//! Where webhooks may go. Endpoint URLs are checked when they are saved, and every address
//! a name resolves to is checked again when a request connects (a name may be re-pointed at
//! an internal address after it was saved, or resolve to one only sometimes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why an address is not a public one. The ranges follow IANA's IPv4 and IPv6
/// Special-Purpose Address Registries: what they mark not globally reachable is never
/// [`AddressKind::Public`]; addresses that embed an IPv4 address (IPv4-mapped, NAT64, 6to4,
/// Teredo) are judged by the address they lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    Public,
    /// 127.0.0.0/8, ::1: allowed by `webhooks.allow_loopback`.
    Loopback,
    /// Private, link-local (cloud metadata lives there), CGNAT, IETF protocol assignments,
    /// benchmarking, unique-local, site-local, local-use NAT64: allowed by
    /// `webhooks.allow_private`.
    Private,
    /// Unspecified, multicast, broadcast, documentation, reserved, deprecated relays, IPv6
    /// outside global unicast: never a webhook target.
    Never,
}

pub fn classify(ip: IpAddr) -> AddressKind {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

/// Whether `ip` lies in `net/len`.
fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> AddressKind {
    let [a, ..] = ip.octets();
    let never = [
        ([192, 0, 2, 0], 24),    // TEST-NET-1 (documentation)
        ([198, 51, 100, 0], 24), // TEST-NET-2
        ([203, 0, 113, 0], 24),  // TEST-NET-3
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated)
    ];
    let private = [
        ([100, 64, 0, 0], 10), // shared address space (CGNAT)
        ([192, 0, 0, 0], 24),  // IETF protocol assignments (DS-Lite, NAT64 discovery …)
        ([198, 18, 0, 0], 15), // benchmarking
    ];
    // The registry's globally reachable exceptions inside 192.0.0.0/24: PCP and TURN anycast.
    let global = [Ipv4Addr::new(192, 0, 0, 9), Ipv4Addr::new(192, 0, 0, 10)];
    if ip.is_loopback() {
        AddressKind::Loopback
    } else if ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0
        || a >= 240
        || never.iter().any(|&(net, len)| in_v4(ip, net, len))
    {
        AddressKind::Never
    } else if global.contains(&ip) {
        AddressKind::Public
    } else if ip.is_private() || ip.is_link_local() || private.iter().any(|&(net, len)| in_v4(ip, net, len)) {
        AddressKind::Private
    } else {
        AddressKind::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressKind {
    let s = ip.segments();
    let bits = u128::from(ip);
    let low_v4 = Ipv4Addr::from(bits as u32);
    if ip.is_loopback() {
        AddressKind::Loopback
    } else if ip.is_unspecified() || ip.is_multicast() {
        AddressKind::Never
    } else if in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        // NAT64 well-known prefix: the translator connects to the embedded IPv4 address.
        classify_v4(low_v4)
    } else if in_v6(ip, [0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48)
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
    {
        // Local-use NAT64, unique-local (AWS's metadata fd00:ec2::254 among them),
        // link-local, site-local (deprecated, still routed inside some networks).
        AddressKind::Private
    } else if (s[0] & 0xe000) != 0x2000 {
        // Outside 2000::/3, the only global unicast space: discard-only 100::/64, the rest of
        // 64::/16, IPv4-compatible ::/96, SRv6 5f00::/16, unassigned space.
        AddressKind::Never
    } else if s[0] == 0x2002 {
        // 6to4: the IPv4 address of the relay's far end sits in bits 16-47.
        classify_v4(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])))
    } else if s[0] == 0x2001 && s[1] == 0 {
        // Teredo: the client's IPv4 address, inverted, is the last 32 bits.
        classify_v4(Ipv4Addr::from(!(bits as u32)))
    } else if in_v6(ip, [0x2001, 0, 0, 0, 0, 0, 0, 0], 23) {
        classify_ietf_v6(ip)
    } else if in_v6(ip, [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32) || in_v6(ip, [0x3fff, 0, 0, 0, 0, 0, 0, 0], 20) {
        // Documentation.
        AddressKind::Never
    } else {
        AddressKind::Public
    }
}

/// 2001::/23, IETF protocol assignments: not globally reachable, but for the blocks the
/// registry marks reachable.
fn classify_ietf_v6(ip: Ipv6Addr) -> AddressKind {
    let anycast = [1u16, 2, 3].map(|last| Ipv6Addr::new(0x2001, 1, 0, 0, 0, 0, 0, last));
    let global = [
        ([0x2001, 3, 0, 0, 0, 0, 0, 0], 32),     // AMT
        ([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48), // AS112-v6
        ([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28),  // ORCHIDv2
        ([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28),  // Drone Remote ID
    ];
    if anycast.contains(&ip) || global.iter().any(|&(net, len)| in_v6(ip, net, len)) {
        AddressKind::Public
    } else if in_v6(ip, [0x2001, 2, 0, 0, 0, 0, 0, 0], 48) {
        // Benchmarking, like 198.18.0.0/15.
        AddressKind::Private
    } else {
        AddressKind::Never
    }
}

/// What the configuration lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetPolicy {
    pub allow_loopback: bool,
    pub allow_private: bool,
}

impl TargetPolicy {
    pub fn allows(&self, ip: IpAddr) -> bool {
        match classify(ip) {
            AddressKind::Public => true,
            AddressKind::Loopback => self.allow_loopback,
            AddressKind::Private => self.allow_private,
            AddressKind::Never => false,
        }
    }

    /// Checks a URL as saved: http(s), a host, no credentials, and a literal address (or
    /// `localhost`) only where allowed. Returns the reason to show the caller.
    pub fn check_url(&self, raw: &str) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be http:// or https://".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials".into());
        }
        if raw.chars().count() > 2048 {
            return Err("must be at most 2048 characters".into());
        }
        match url.host() {
            None => Err("needs a host".into()),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)).map(|_| url.clone()),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)).map(|_| url.clone()),
            Some(url::Host::Domain(name)) => {
                check_syntax(raw)?;
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if (name == "localhost" || name.ends_with(".localhost")) && !self.allow_loopback {
                    return Err("resolves to a loopback address, which webhooks.allow_loopback does not allow".into());
                }
                Ok(url.clone())
            }
        }
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if self.allows(ip) {
            return Ok(());
        }
        Err(match classify(ip) {
            AddressKind::Loopback => "is a loopback address, which webhooks.allow_loopback does not allow".into(),
            AddressKind::Private => {
                "is a private, link-local or metadata address, which webhooks.allow_private does not allow".into()
            }
            _ => "is not a routable unicast address".into(),
        })
    }
}

/// The documented form of a URL with a host name (`NewEndpoint::url`'s pattern), checked
/// exactly as documented: `http(s)://`, dot-separated labels of letters, digits and inner
/// hyphens (the last starting with a letter), an optional port 1-65535, an optional path
/// and query of URL characters, no fragment, no credentials.
fn check_syntax(raw: &str) -> Result<(), String> {
    const FORM: &str = "must look like https://host.example[:port][/path][?query]";
    let rest = raw.strip_prefix("https://").or_else(|| raw.strip_prefix("http://")).ok_or(FORM)?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let labels: Vec<&str> = host.split('.').collect();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let last_ok = labels.last().is_some_and(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()));
    if !(labels.iter().all(|l| label_ok(l)) && last_ok) {
        return Err(FORM.into());
    }
    if let Some(port) = port {
        let ok = !port.starts_with('0')
            && (1..=5).contains(&port.len())
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !ok {
            return Err("the port must be 1-65535".into());
        }
    }
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let url_char = |c: char| c.is_ascii_alphanumeric() || "._~%!$&'()*+,;=:@/-".contains(c);
    if !path.chars().all(url_char) || !query.unwrap_or("").chars().all(|c| url_char(c) || c == '?') {
        return Err("the path and query may hold only URL characters (no spaces, no fragment)".into());
    }
    Ok(())
}

/// reqwest's resolver: the system's answer minus every address the policy refuses; a name
/// with nothing left fails to connect, and the attempt is recorded as `blocked_target`.
pub struct GuardedResolver(pub TargetPolicy);

/// Raised by [`GuardedResolver`]; the client looks for it to classify the failure.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to addresses webhooks may not reach")]
pub struct BlockedTarget {
    pub host: String,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| policy.allows(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(BlockedTarget { host }) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl GuardedResolver {
    pub fn shared(policy: TargetPolicy) -> Arc<Self> {
        Arc::new(GuardedResolver(policy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn classifies_the_ranges_that_matter() {
        for (addr, kind) in [
            ("127.0.0.1", AddressKind::Loopback),
            ("::1", AddressKind::Loopback),
            ("::ffff:127.0.0.1", AddressKind::Loopback),
            ("10.1.2.3", AddressKind::Private),
            ("172.16.0.1", AddressKind::Private),
            ("192.168.1.1", AddressKind::Private),
            ("169.254.169.254", AddressKind::Private),
            ("100.100.100.200", AddressKind::Private),
            ("fd00:ec2::254", AddressKind::Private),
            ("fe80::1", AddressKind::Private),
            ("0.0.0.0", AddressKind::Never),
            ("224.0.0.1", AddressKind::Never),
            ("255.255.255.255", AddressKind::Never),
            ("8.8.8.8", AddressKind::Public),
            ("2606:4700::1111", AddressKind::Public),
        ] {
            assert_eq!(classify(ip(addr)), kind, "{addr}");
        }
    }

    #[test]
    fn urls_are_checked_against_the_policy() {
        let strict = TargetPolicy::default();
        for good in [
            "https://hooks.example.com/x",
            "http://a.b:8080/p/q?x=1&y=%20",
            "https://Hooks.Example.COM",
            "https://sub-1.x9.example:65535/a~b",
        ] {
            assert!(strict.check_url(good).is_ok(), "{good}");
        }
        for bad in [
            "ftp://example.com",
            "http://127.0.0.1:9/x",
            "http://localhost/x",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/",
            "http://user:pw@example.com/",
            "not a url",
            "https://example.com/a b",
            "https://example.com/#frag",
            "https://example.com:99999/",
            "https://-a.com/",
            "https://example.1/",
        ] {
            assert!(strict.check_url(bad).is_err(), "{bad}");
        }
        let tests = TargetPolicy { allow_loopback: true, allow_private: false };
        assert!(tests.check_url("http://127.0.0.1:9/x").is_ok());
        assert!(tests.check_url("http://10.0.0.1/").is_err());
    }

    /// Each special-purpose range of the IANA registries is refused by the default policy, and
    /// classified as documented.
    #[test]
    fn special_purpose_ranges_are_refused() {
        let strict = TargetPolicy::default();
        for (addr, kind) in [
            // IPv4
            ("0.1.2.3", AddressKind::Never),
            ("100.64.0.1", AddressKind::Private),
            ("100.127.255.254", AddressKind::Private),
            ("192.0.0.1", AddressKind::Private),
            ("192.0.0.170", AddressKind::Private),
            ("192.0.2.10", AddressKind::Never),
            ("192.88.99.1", AddressKind::Never),
            ("198.18.0.1", AddressKind::Private),
            ("198.19.255.254", AddressKind::Private),
            ("198.51.100.7", AddressKind::Never),
            ("203.0.113.9", AddressKind::Never),
            ("240.0.0.1", AddressKind::Never),
            ("172.31.255.255", AddressKind::Private),
            // IPv6
            ("::", AddressKind::Never),
            ("::127.0.0.1", AddressKind::Never),
            ("::ffff:10.0.0.1", AddressKind::Private),
            ("64:ff9b::7f00:1", AddressKind::Loopback),
            ("64:ff9b::a9fe:a9fe", AddressKind::Private),
            ("64:ff9b::c000:201", AddressKind::Never),
            ("64:ff9b:1::808:808", AddressKind::Private),
            ("64:1::1", AddressKind::Never),
            ("100::1", AddressKind::Never),
            ("2001::1", AddressKind::Never),
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", AddressKind::Loopback),
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", AddressKind::Private),
            ("2001:2::1", AddressKind::Private),
            ("2001:10::1", AddressKind::Never),
            ("2001:100::1", AddressKind::Never),
            ("2001:db8::1", AddressKind::Never),
            ("2002:7f00:1::1", AddressKind::Loopback),
            ("2002:a9fe:a9fe::1", AddressKind::Private),
            ("2002:c000:201::1", AddressKind::Never),
            ("3fff::1", AddressKind::Never),
            ("5f00::1", AddressKind::Never),
            ("fc00::1", AddressKind::Private),
            ("fec0::1", AddressKind::Private),
            ("ff02::1", AddressKind::Never),
        ] {
            assert_eq!(classify(ip(addr)), kind, "{addr}");
            assert!(!strict.allows(ip(addr)), "{addr} must be refused");
        }
    }

    #[test]
    fn globally_routable_addresses_stay_allowed() {
        let strict = TargetPolicy::default();
        for addr in [
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.0.0.9",
            "192.0.0.10",
            "192.0.43.10",
            "192.31.196.1",
            "192.175.48.6",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.254",
            "2001:1::1",
            "2001:3::1",
            "2001:4:112::1",
            "2001:200::1",
            "2001:4860:4860::8888",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
            "2002:808:808::1",
            "64:ff9b::808:808",
            "2620:4f:8000::1",
            "2a00:1450:4001::1",
        ] {
            assert_eq!(classify(ip(addr)), AddressKind::Public, "{addr}");
            assert!(strict.allows(ip(addr)), "{addr} must stay allowed");
        }
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses() {
        use reqwest::dns::Resolve;
        let strict = GuardedResolver(TargetPolicy::default());
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let err = strict.resolve(name).await.err().expect("localhost is refused");
        assert!(err.downcast_ref::<BlockedTarget>().is_some());
        let open = GuardedResolver(TargetPolicy { allow_loopback: true, allow_private: false });
        let addrs: Vec<_> = open.resolve("localhost".parse().expect("name")).await.expect("allowed").collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
