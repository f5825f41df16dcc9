//! Which address an HTTP request comes from, relayed to the token service with every call it
//! causes (see [`crate::backend::serving_client`]) so anonymous input can be throttled by
//! source (DESIGN.md rule 8).
//!
//! The TCP peer is the client unless it is one of `facade.trusted_proxies`. Only then is
//! `X-Forwarded-For` read, from the right, since each proxy appends the address it received
//! the request from: the first hop that is not a trusted proxy is the client. Hops to its left
//! were written by that client and prove nothing. A hop that is not an address ends the walk at
//! the last address a trusted proxy vouched for.

use std::net::{IpAddr, SocketAddr};
use tessera_proto::networks::TrustedNetworks;

/// The client's address, from the TCP peer and the request's `X-Forwarded-For` header lines
/// (in the order they arrived). `None` when the transport knows no peer.
pub fn client_addr<'a>(
    peer: Option<IpAddr>,
    forwarded_for: impl IntoIterator<Item = &'a [u8]>,
    trusted_proxies: &TrustedNetworks,
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    if !trusted_proxies.contains(peer) {
        return Some(peer);
    }
    let lines: Vec<&[u8]> = forwarded_for.into_iter().collect();
    let hops = lines.iter().rev().flat_map(|line| line.rsplit(|b| *b == b','));
    let mut client = peer;
    for hop in hops {
        let Some(ip) = hop_addr(hop) else { break };
        client = ip;
        if !trusted_proxies.contains(ip) {
            break;
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: an address, or an address with a port as some proxies write it
/// (`192.0.2.1:5000`, `[2001:db8::1]:443`).
fn hop_addr(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(hop).ok()?.trim();
    hop.parse::<IpAddr>().or_else(|_| hop.parse::<SocketAddr>().map(|a| a.ip())).ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_forwarded_for_is_walked_from_the_right_through_trusted_proxies_only() {
        let proxies: TrustedNetworks = "10.0.0.0/8, 192.0.2.10".parse().unwrap();
        let cases: &[(&str, &str, &[&str], &str)] = &[
            ("a peer that is no proxy is the client, whatever it claims", "198.51.100.1", &["1.2.3.4"], "198.51.100.1"),
            ("a trusted proxy without the header is the client", "10.0.0.1", &[], "10.0.0.1"),
            ("one proxy, one client", "10.0.0.1", &["203.0.113.7"], "203.0.113.7"),
            ("a spoofed hop left of the client is ignored", "10.0.0.1", &["6.6.6.6, 203.0.113.7"], "203.0.113.7"),
            (
                "a chain of trusted proxies is skipped",
                "10.0.0.1",
                &["203.0.113.7, 192.0.2.10, 10.9.9.9"],
                "203.0.113.7",
            ),
            (
                "header lines count in order, the last one rightmost",
                "10.0.0.1",
                &["6.6.6.6", "203.0.113.7, 10.2.2.2"],
                "203.0.113.7",
            ),
            ("a client hidden behind an untrusted proxy is that proxy", "10.0.0.1", &["1.1.1.1, 8.8.8.8"], "8.8.8.8"),
            ("all hops trusted: the leftmost", "10.0.0.1", &["10.3.3.3, 10.2.2.2"], "10.3.3.3"),
            ("garbage right after the proxy: the proxy", "10.0.0.1", &["203.0.113.7, unknown"], "10.0.0.1"),
            ("garbage after a trusted hop: that hop", "10.0.0.1", &["6.6.6.6, nope, 10.2.2.2"], "10.2.2.2"),
            ("an empty hop stops the walk", "10.0.0.1", &["203.0.113.7,"], "10.0.0.1"),
            ("ports are dropped", "10.0.0.1", &["203.0.113.7:5555"], "203.0.113.7"),
            ("IPv6 hops, bracketed with a port", "10.0.0.1", &["[2001:db8::7]:443"], "2001:db8::7"),
            ("IPv6 hops, bare", "10.0.0.1", &[" 2001:db8::7 "], "2001:db8::7"),
            ("an IPv4-mapped hop is the IPv4 address", "10.0.0.1", &["::ffff:203.0.113.7"], "203.0.113.7"),
            ("an IPv4-mapped proxy peer is trusted", "::ffff:10.0.0.1", &["203.0.113.7"], "203.0.113.7"),
        ];
        for (what, peer, lines, want) in cases {
            let got = client_addr(Some(peer.parse().unwrap()), lines.iter().map(|l| l.as_bytes()), &proxies);
            assert_eq!(got, Some(want.parse().unwrap()), "{what}");
        }
    }

    #[test]
    fn with_no_trusted_proxy_the_header_is_never_read() {
        let got =
            client_addr(Some("127.0.0.1".parse().unwrap()), [b"203.0.113.7".as_slice()], &TrustedNetworks::none());
        assert_eq!(got, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(client_addr(None, [b"203.0.113.7".as_slice()], &"0.0.0.0/0".parse().unwrap()), None);
    }

    #[test]
    fn a_hop_that_is_not_text_ends_the_walk() {
        let proxies: TrustedNetworks = "10.0.0.0/8".parse().unwrap();
        let got = client_addr(Some("10.0.0.1".parse().unwrap()), [b"203.0.113.7, \xff\xfe".as_slice()], &proxies);
        assert_eq!(got, Some("10.0.0.1".parse().unwrap()));
    }
}
