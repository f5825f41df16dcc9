//! Where a request comes from, for the throttles of anonymous input (DESIGN.md rule 8).
//!
//! A facade relays its HTTP client's address in the `x-tessera-client-addr` metadata of every
//! call ([`tessera_proto::CLIENT_ADDR_METADATA`]). Anyone can send that metadata, so it counts
//! only when the gRPC peer itself is a trusted relay (`grpc.trusted_relays`); from anyone else
//! the source is the peer's own address. Facades run inside the cluster, so the default trusts
//! loopback and the private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) and nothing on the
//! public internet: a deployment that exposes the gRPC port to untrusted hosts on a private
//! network narrows it to the facades' addresses.
//!
//! A facade in this same process (`tessera serve`, over a
//! [`tessera_proto::local::LocalChannel`]) is a trusted relay whatever the networks say, and
//! on its own behalf it is loopback.
//!
//! The networks are a [`TrustedNetworks`] (in `tessera-proto`, which the facade shares for its
//! `facade.trusted_proxies`).

use std::net::{IpAddr, Ipv4Addr};
use tessera_proto::local::LocalCaller;
pub use tessera_proto::networks::TrustedNetworks;

/// The address a request comes from: the relayed client address when the gRPC peer is a
/// trusted relay and sent one, else the peer's own address. `None` only when the transport
/// knows no peer (not a TCP connection).
pub fn client_source<T>(req: &tonic::Request<T>, trusted_relays: &TrustedNetworks) -> Option<IpAddr> {
    let local = req.extensions().get::<LocalCaller>().is_some();
    let peer = if local { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { req.remote_addr()?.ip().to_canonical() };
    if !local && !trusted_relays.contains(peer) {
        return Some(peer);
    }
    let Some(relayed) = req.metadata().get(tessera_proto::CLIENT_ADDR_METADATA) else {
        // A trusted peer calling on its own behalf (an internal service's Introspect).
        return Some(peer);
    };
    match relayed.to_str().ok().and_then(|v| v.trim().parse::<IpAddr>().ok()) {
        Some(ip) => Some(ip.to_canonical()),
        None => {
            tracing::debug!(%peer, "a relay sent a client address that is not an IP address; using the relay's");
            Some(peer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::transport::server::TcpConnectInfo;

    fn request(peer: &str, relayed: Option<&str>) -> tonic::Request<()> {
        let mut r = tonic::Request::new(());
        r.extensions_mut().insert(TcpConnectInfo { local_addr: None, remote_addr: Some(peer.parse().unwrap()) });
        if let Some(v) = relayed {
            r.metadata_mut().insert(tessera_proto::CLIENT_ADDR_METADATA, v.parse().unwrap());
        }
        r
    }

    #[test]
    fn the_relayed_address_counts_only_from_a_trusted_relay() {
        let relays = TrustedNetworks::loopback_and_private();
        let cases: &[(&str, &str, Option<&str>, &str)] = &[
            ("a facade on loopback relays its client", "127.0.0.1:5000", Some("203.0.113.7"), "203.0.113.7"),
            ("a facade in the cluster relays its client", "10.1.2.3:5000", Some("203.0.113.7"), "203.0.113.7"),
            ("a facade on 172.16/12", "172.31.255.1:5000", Some("2001:db8::1"), "2001:db8::1"),
            ("a facade on an IPv6 ULA", "[fd00::5]:5000", Some("203.0.113.7"), "203.0.113.7"),
            ("a dual-stack view of a private peer", "[::ffff:192.168.1.1]:5000", Some("203.0.113.7"), "203.0.113.7"),
            ("a relayed IPv4-mapped address is the IPv4 one", "127.0.0.1:1", Some("::ffff:203.0.113.7"), "203.0.113.7"),
            ("a public peer cannot claim an address", "198.51.100.9:5000", Some("10.0.0.1"), "198.51.100.9"),
            ("172.32/16 is not private", "172.32.0.1:5000", Some("203.0.113.7"), "172.32.0.1"),
            ("a trusted peer without metadata is itself", "10.0.0.9:5000", None, "10.0.0.9"),
            ("a trusted peer with garbage is itself", "10.0.0.9:5000", Some("not-an-ip"), "10.0.0.9"),
            ("a relayed address with a port is not an address", "10.0.0.9:5000", Some("1.2.3.4:80"), "10.0.0.9"),
        ];
        for (what, peer, relayed, want) in cases {
            let got = client_source(&request(peer, *relayed), &relays);
            assert_eq!(got, Some(want.parse().unwrap()), "{what}");
        }
    }

    #[test]
    fn with_no_trusted_relay_the_source_is_always_the_peer() {
        let got = client_source(&request("127.0.0.1:5000", Some("203.0.113.7")), &TrustedNetworks::none());
        assert_eq!(got, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_facade_of_this_process_is_a_trusted_relay_whatever_the_networks() {
        let local = |relayed: Option<&str>| {
            let mut r = tonic::Request::new(());
            r.extensions_mut().insert(LocalCaller);
            if let Some(v) = relayed {
                r.metadata_mut().insert(tessera_proto::CLIENT_ADDR_METADATA, v.parse().unwrap());
            }
            r
        };
        for relays in [TrustedNetworks::none(), TrustedNetworks::loopback_and_private()] {
            assert_eq!(client_source(&local(Some("203.0.113.7")), &relays), Some("203.0.113.7".parse().unwrap()));
            assert_eq!(client_source(&local(None), &relays), Some("127.0.0.1".parse().unwrap()), "on its own behalf");
            assert_eq!(client_source(&local(Some("garbage")), &relays), Some("127.0.0.1".parse().unwrap()));
        }
    }

    #[test]
    fn a_request_without_a_tcp_peer_has_no_source() {
        let mut r = tonic::Request::new(());
        r.metadata_mut().insert(tessera_proto::CLIENT_ADDR_METADATA, "203.0.113.7".parse().unwrap());
        assert_eq!(client_source(&r, &TrustedNetworks::loopback_and_private()), None);
    }
}
