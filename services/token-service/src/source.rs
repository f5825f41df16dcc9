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
//! The same type holds the facade's `facade.trusted_proxies`: the HTTP proxies whose
//! `X-Forwarded-For` it believes.

use ipnet::IpNet;
use serde::Deserialize;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A set of networks, parsed once when the settings load: in the settings, a list of CIDRs or
/// single addresses (`["10.0.0.0/8", "192.0.2.7"]`), or the same comma-separated in one
/// string (for an environment variable).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedNetworks(Vec<IpNet>);

impl TrustedNetworks {
    /// No network at all.
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// Loopback and the private ranges: where facades run beside the token service.
    pub fn loopback_and_private() -> Self {
        ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
            .into_iter()
            .filter_map(|net| net.parse().ok())
            .collect::<Vec<IpNet>>()
            .into()
    }

    /// Whether `ip` is in one of the networks. An IPv4-mapped IPv6 address (a dual-stack
    /// listener's view of an IPv4 peer) counts as the IPv4 address it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<IpNet>> for TrustedNetworks {
    fn from(nets: Vec<IpNet>) -> Self {
        Self(nets.into_iter().map(|n| n.trunc()).collect())
    }
}

impl FromStr for TrustedNetworks {
    type Err = String;

    /// Entries separated by commas or whitespace; each a CIDR or a single address.
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty()).map(parse_net).collect()
    }
}

impl FromIterator<IpNet> for TrustedNetworks {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> Self {
        iter.into_iter().collect::<Vec<_>>().into()
    }
}

fn parse_net(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{entry:?} is neither an IP address nor a CIDR such as 10.0.0.0/8"))
}

impl<'de> Deserialize<'de> for TrustedNetworks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            One(String),
        }
        match Raw::deserialize(d)? {
            Raw::List(entries) => entries.iter().map(|e| parse_net(e)).collect(),
            Raw::One(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for TrustedNetworks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for net in &self.0 {
            list.entry(&format_args!("{net}"));
        }
        list.finish()
    }
}

/// The address a request comes from: the relayed client address when the gRPC peer is a
/// trusted relay and sent one, else the peer's own address. `None` only when the transport
/// knows no peer (not a TCP connection).
pub fn client_source<T>(req: &tonic::Request<T>, trusted_relays: &TrustedNetworks) -> Option<IpAddr> {
    let peer = req.remote_addr()?.ip().to_canonical();
    if !trusted_relays.contains(peer) {
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
    fn a_request_without_a_tcp_peer_has_no_source() {
        let mut r = tonic::Request::new(());
        r.metadata_mut().insert(tessera_proto::CLIENT_ADDR_METADATA, "203.0.113.7".parse().unwrap());
        assert_eq!(client_source(&r, &TrustedNetworks::loopback_and_private()), None);
    }

    #[test]
    fn networks_parse_from_a_list_or_one_string_and_name_a_bad_entry() {
        let nets: TrustedNetworks = "10.0.0.0/8, 192.0.2.7 2001:db8::/32".parse().unwrap();
        assert!(nets.contains("10.200.0.1".parse().unwrap()));
        assert!(nets.contains("192.0.2.7".parse().unwrap()));
        assert!(!nets.contains("192.0.2.8".parse().unwrap()), "a single address is a /32");
        assert!(nets.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!nets.contains("2001:db9::1".parse().unwrap()));
        // Host bits are ignored, as in every CIDR notation reader.
        let nets: TrustedNetworks = "10.1.2.3/8".parse().unwrap();
        assert!(nets.contains("10.9.9.9".parse().unwrap()));
        for (what, bad) in [
            ("a host name", "proxy.internal"),
            ("a prefix too long", "10.0.0.0/33"),
            ("an address with a port", "10.0.0.1:80"),
            ("a half address", "10.0"),
        ] {
            let e = bad.parse::<TrustedNetworks>().expect_err(what);
            assert!(e.contains(bad), "{what}: {e}");
        }
        let list: TrustedNetworks = serde_json::from_str(r#"["127.0.0.1", "fc00::/7"]"#).unwrap();
        assert!(list.contains("fd12::1".parse().unwrap()));
        assert!(serde_json::from_str::<TrustedNetworks>(r#"["127.0.0.1", "nope"]"#).is_err());
        assert!("".parse::<TrustedNetworks>().unwrap().is_empty());
    }
}
