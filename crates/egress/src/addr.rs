//! Addresses a jail never reaches, whatever its allow-list says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why `ip` may not be connected to, or `None` when it may. `own` are this node's addresses.
pub fn forbidden(ip: IpAddr, own: &[IpAddr]) -> Option<&'static str> {
    if own.contains(&ip) {
        return Some("one of this server's own addresses");
    }
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6, own),
    }
}

fn in_net(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const NETS: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "an unspecified address (0.0.0.0/8)"),
        ([127, 0, 0, 0], 8, "a loopback address"),
        ([10, 0, 0, 0], 8, "a private address (10.0.0.0/8)"),
        ([172, 16, 0, 0], 12, "a private address (172.16.0.0/12)"),
        ([192, 168, 0, 0], 16, "a private address (192.168.0.0/16)"),
        ([100, 64, 0, 0], 10, "a shared (carrier-grade NAT) address"),
        (
            [169, 254, 0, 0],
            16,
            "a link-local address (cloud metadata lives there)",
        ),
        ([192, 0, 0, 0], 24, "an IETF protocol address"),
        (
            [198, 18, 0, 0],
            15,
            "a benchmarking address (runcell's own)",
        ),
        ([224, 0, 0, 0], 4, "a multicast address"),
        ([240, 0, 0, 0], 4, "a reserved address"),
    ];
    NETS.iter()
        .find(|(net, prefix, _)| in_net(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn forbidden_v6(ip: Ipv6Addr, own: &[IpAddr]) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    // IPv4-mapped, -compatible and NAT64 forms are judged by the IPv4 address inside.
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return forbidden(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), own);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return forbidden(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), own);
    }
    match s[0] {
        x if x & 0xfe00 == 0xfc00 => Some("a unique-local address (fc00::/7, cloud metadata too)"),
        x if x & 0xffc0 == 0xfe80 => Some("a link-local address"),
        x if x & 0xffc0 == 0xfec0 => Some("a site-local address"),
        x if x & 0xff00 == 0xff00 => Some("a multicast address"),
        _ => None,
    }
}

/// This node's own addresses (every interface's), read now.
pub fn own_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says which struct it is.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no(ip: &str) -> bool {
        forbidden(ip.parse().unwrap(), &[]).is_some()
    }

    #[test]
    fn private_loopback_link_local_and_metadata_are_never_reachable() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(no(ip), "{ip} must be refused");
        }
        for ip in [
            "203.0.113.2",
            "8.8.8.8",
            "172.32.0.1",
            "151.101.0.223",
            "2a04:4e42::223",
        ] {
            assert!(!no(ip), "{ip} must be allowed");
        }
    }

    #[test]
    fn the_nodes_own_addresses_are_refused() {
        let own: Vec<IpAddr> = vec!["203.0.113.1".parse().unwrap()];
        assert!(forbidden("203.0.113.1".parse().unwrap(), &own).is_some());
        assert!(forbidden("::ffff:203.0.113.1".parse().unwrap(), &own).is_some());
        assert!(own_addresses().contains(&"127.0.0.1".parse().unwrap()));
    }
}
