//! `TRUSTED_PROXIES`: the load balancers whose `X-Forwarded-For` is
//! believed, as Traefik's `forwardedHeaders.trustedIPs` and nginx's
//! `set_real_ip_from` with `real_ip_recursive on`.
//!
//! From a peer in the list, the client's `X-Forwarded-For` chain is kept
//! (the peer appended), and the client is the rightmost address of the
//! chain that is not itself a trusted proxy: what the access log, the
//! waifu's `X-Real-IP` and incidents name. From anyone else, every
//! forwarding field is dropped and written afresh with the peer's address.

use std::net::IpAddr;

/// An address block, `10.0.0.0/8` or `fd00::/8`; a bare address is itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    network: IpAddr,
    bits: u8,
}

/// Why a block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address or an address block such as 10.0.0.0/8 or fd00::/8")]
pub struct BadCidr(pub String);

impl std::str::FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Cidr, BadCidr> {
        let bad = || BadCidr(s.to_owned());
        let (addr, bits) = match s.trim().split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (s.trim(), None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) if !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()) => {
                b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        Ok(Cidr { network, bits })
    }
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` agree.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = (usize::from(bits / 8), bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// The trusted load balancers; empty by default (nobody is trusted).
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub(crate) fn new(blocks: Vec<Cidr>) -> Self {
        TrustedProxies(blocks)
    }

    /// Whether `ip` is a trusted proxy.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client behind `peer`: `peer` itself unless it is trusted; then
    /// the rightmost address in the `X-Forwarded-For` values that is not a
    /// trusted proxy (or the leftmost, if all are). A chain with anything
    /// but addresses in it stops the walk there: what is left of it was
    /// written by whoever sent it, not by a proxy.
    pub(crate) fn client<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
    ) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        for value in forwarded_for.rev() {
            for hop in waifus_http1::token::list_elements(value).rev() {
                let Some(ip) = std::str::from_utf8(hop).ok().and_then(parse_hop) else {
                    return client;
                };
                client = ip;
                if !self.contains(ip) {
                    return ip;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` element: an address, IPv6 possibly bracketed,
/// possibly with a port (some proxies write one).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (addr, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(blocks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(blocks.iter().map(|b| b.parse().unwrap()).collect())
    }

    #[test]
    fn blocks() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("192.168.1.0/24", "192.168.1.77", true),
            ("192.168.1.0/25", "192.168.1.200", false),
            ("172.16.0.0/12", "172.31.255.255", true),
            ("172.16.0.0/12", "172.32.0.0", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "fe80::1", false),
            ("::1", "::1", true),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("::/0", "10.1.2.3", false),
        ];
        for (block, addr, want) in cases {
            let c: Cidr = block.parse().unwrap();
            assert_eq!(c.contains(ip(addr)), *want, "{block} {addr}");
        }
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "ten",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_client_is_the_last_untrusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        let lb = ip("10.0.0.5");
        let chain =
            |values: &[&'static str]| values.iter().map(|v| v.as_bytes()).collect::<Vec<_>>();
        // Not trusted: the peer, whatever it says.
        assert_eq!(
            t.client(ip("203.0.113.9"), chain(&["1.2.3.4"]).into_iter()),
            ip("203.0.113.9")
        );
        // Trusted: the hop it names.
        assert_eq!(
            t.client(lb, chain(&["198.51.100.7"]).into_iter()),
            ip("198.51.100.7")
        );
        // A client's forged prefix is skipped: the rightmost untrusted wins.
        assert_eq!(
            t.client(lb, chain(&["6.6.6.6, 198.51.100.7, 10.0.0.9"]).into_iter()),
            ip("198.51.100.7")
        );
        assert_eq!(
            t.client(lb, chain(&["6.6.6.6", "198.51.100.7"]).into_iter()),
            ip("198.51.100.7")
        );
        // Ports and brackets as some proxies write them.
        assert_eq!(
            t.client(lb, chain(&["198.51.100.7:4711"]).into_iter()),
            ip("198.51.100.7")
        );
        assert_eq!(
            t.client(lb, chain(&["[2001:db8::1]:80"]).into_iter()),
            ip("2001:db8::1")
        );
        // Garbage stops the walk at the last good hop.
        assert_eq!(
            t.client(lb, chain(&["198.51.100.7, nonsense, 10.0.0.9"]).into_iter()),
            ip("10.0.0.9")
        );
        assert_eq!(t.client(lb, chain(&[]).into_iter()), lb);
    }
}
