//! Sets of trusted networks: the relays whose `x-tessera-client-addr` the token service
//! believes (`grpc.trusted_relays`, see [`crate::CLIENT_ADDR_METADATA`]) and the HTTP proxies
//! whose `X-Forwarded-For` a facade believes (`facade.trusted_proxies`). Shared by both
//! services, so it lives with the contract between them.

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

#[cfg(test)]
mod tests {
    use super::*;

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
