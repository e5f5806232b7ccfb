//! Where webhooks may go. Endpoint URLs are checked when they are saved, and every address
//! a name resolves to is checked again when a request connects (a name may be re-pointed at
//! an internal address after it was saved, or resolve to one only sometimes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why an address is not a public one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    Public,
    /// 127.0.0.0/8, ::1: allowed by `webhooks.allow_loopback`.
    Loopback,
    /// Private, link-local (cloud metadata lives there), CGNAT, unique-local: allowed by
    /// `webhooks.allow_private`.
    Private,
    /// Unspecified, multicast, broadcast, reserved: never a webhook target.
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

fn classify_v4(ip: Ipv4Addr) -> AddressKind {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        AddressKind::Loopback
    } else if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || a == 0 || a >= 240 {
        AddressKind::Never
    } else if ip.is_private() || ip.is_link_local() || (a == 100 && (64..128).contains(&b)) || (a == 192 && b == 0) {
        AddressKind::Private
    } else {
        AddressKind::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressKind {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        AddressKind::Loopback
    } else if ip.is_unspecified() || ip.is_multicast() {
        AddressKind::Never
    } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 || first == 0x64 {
        // Unique-local (AWS's metadata fd00:ec2::254 among them), link-local, NAT64 local.
        AddressKind::Private
    } else {
        AddressKind::Public
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
