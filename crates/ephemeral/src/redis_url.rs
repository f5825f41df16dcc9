//! Parsing of the Redis store URL into the kind of deployment it names.
//!
//! `redis://`, `rediss://`, `redis+unix://` and `unix://` URLs are handed to redis-rs untouched.
//! The two high-availability forms are parsed here, because a URL with several hosts is not a
//! URL the `url` crate (or redis-rs) accepts:
//!
//! ```text
//! redis+sentinel://[[username][:password]@]host[:port][,host[:port]…]/master-name[/db][?sentinel_username=…&sentinel_password=…]
//! redis+cluster://[[username][:password]@]host[:port][,host[:port]…][/]
//! ```
//!
//! Error messages name the scheme and the part that is wrong but never quote the URL: a
//! password with an unescaped `/` or `?` shifts every later part, so any part may hold a
//! piece of it.

use redis::{ConnectionAddr, ConnectionInfo, RedisConnectionInfo};
use tessera_core::StoreError;

/// The port a sentinel listens on unless the URL says otherwise.
const SENTINEL_PORT: u16 = 26379;
/// The port a cluster node listens on unless the URL says otherwise.
const CLUSTER_PORT: u16 = 6379;

pub(crate) const SENTINEL_SCHEME: &str = "redis+sentinel";
pub(crate) const CLUSTER_SCHEME: &str = "redis+cluster";

/// The schemes redis-rs itself understands, passed through as they are.
const SINGLE_SCHEMES: [&str; 4] = ["redis", "rediss", "redis+unix", "unix"];

/// What a store URL names.
pub(crate) enum Target<'a> {
    /// One Redis server; the URL goes to redis-rs as it is.
    Single(&'a str),
    Sentinel(SentinelTarget),
    Cluster(ClusterTarget),
}

/// A master found through sentinels.
pub(crate) struct SentinelTarget {
    /// The sentinels, with the sentinels' own credentials (if any).
    pub sentinels: Vec<ConnectionInfo>,
    pub master_name: String,
    /// Database and credentials for the master the sentinels name.
    pub master: RedisConnectionInfo,
}

/// The seed nodes of a cluster, each with the cluster's credentials.
pub(crate) struct ClusterTarget {
    pub nodes: Vec<ConnectionInfo>,
}

fn invalid(scheme: &str, problem: &str) -> StoreError {
    StoreError::Other(format!("invalid {scheme} URL for the ephemeral store: {problem}"))
}

pub(crate) fn parse(url: &str) -> Result<Target<'_>, StoreError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(StoreError::Other(
            "the ephemeral store URL has no scheme; expected redis://, rediss://, redis+sentinel:// or \
             redis+cluster://"
                .into(),
        ));
    };
    let lower = scheme.to_ascii_lowercase();
    match lower.as_str() {
        s if SINGLE_SCHEMES.contains(&s) => Ok(Target::Single(url)),
        SENTINEL_SCHEME => parse_sentinel(rest).map(Target::Sentinel),
        CLUSTER_SCHEME => parse_cluster(rest).map(Target::Cluster),
        _ => {
            // A scheme is letters, digits, `+`, `-` and `.`; anything else is not quoted, as it
            // may be part of a mistyped secret.
            let shown = if !scheme.is_empty()
                && scheme.len() <= 32
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            {
                format!("unsupported scheme `{scheme}://`")
            } else {
                "unsupported scheme".to_owned()
            };
            Err(StoreError::Other(format!(
                "{shown} in the ephemeral store URL; expected redis://, rediss://, redis+sentinel:// or \
                 redis+cluster://"
            )))
        }
    }
}

/// The parts every multi-host URL shares.
struct Parts {
    username: Option<String>,
    password: Option<String>,
    hosts: Vec<(String, u16)>,
    /// The path after the hosts, without its leading `/` (may be empty).
    path: String,
    /// Decoded `name=value` pairs of the query string.
    query: Vec<(String, String)>,
}

fn split_parts(scheme: &str, rest: &str, default_port: u16) -> Result<Parts, StoreError> {
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, path),
        None => (rest, ""),
    };
    let (userinfo, hostlist) = match authority.rsplit_once('@') {
        Some((userinfo, hostlist)) => (Some(userinfo), hostlist),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(userinfo) => {
            let (user, pass) = match userinfo.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (userinfo, None),
            };
            let user =
                decode(user).ok_or_else(|| invalid(scheme, "the username is not valid percent-encoded UTF-8"))?;
            let pass = pass
                .map(|p| decode(p).ok_or_else(|| invalid(scheme, "the password is not valid percent-encoded UTF-8")))
                .transpose()?;
            ((!user.is_empty()).then_some(user), pass.filter(|p| !p.is_empty()))
        }
    };
    let hosts = hostlist
        .split(',')
        .map(|hostport| parse_hostport(scheme, hostport, default_port))
        .collect::<Result<Vec<_>, _>>()?;
    let query = match query {
        None => Vec::new(),
        Some(query) => query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                match (decode(name), decode(value)) {
                    (Some(name), Some(value)) => Ok((name, value)),
                    _ => Err(invalid(scheme, "a query parameter is not valid percent-encoded UTF-8")),
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(Parts { username, password, hosts, path: path.to_owned(), query })
}

fn parse_hostport(scheme: &str, hostport: &str, default_port: u16) -> Result<(String, u16), StoreError> {
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:26379`.
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(invalid(scheme, "an IPv6 host lacks its closing `]`"));
        };
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| invalid(scheme, "junk after an IPv6 host"))?),
        };
        (host, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(invalid(scheme, "a host is empty (hosts are separated by single commas)"));
    }
    if host.chars().any(|c| c.is_whitespace() || c == '%') {
        return Err(invalid(scheme, "a host name holds a space or a `%`"));
    }
    let port = match port {
        None => default_port,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(invalid(scheme, "a port is not a number from 1 to 65535")),
        },
    };
    Ok((host.to_owned(), port))
}

fn tcp(host: &str, port: u16, redis: RedisConnectionInfo) -> ConnectionInfo {
    ConnectionInfo { addr: ConnectionAddr::Tcp(host.to_owned(), port), redis }
}

fn parse_sentinel(rest: &str) -> Result<SentinelTarget, StoreError> {
    let scheme = SENTINEL_SCHEME;
    let parts = split_parts(scheme, rest, SENTINEL_PORT)?;
    let mut segments = parts.path.split('/');
    let master_name = segments.next().unwrap_or_default();
    let master_name = decode(master_name)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| invalid(scheme, "the master name is missing after the hosts (…/master-name[/db])"))?;
    let db = match segments.next() {
        None | Some("") => 0,
        Some(db) => db.parse::<i64>().ok().filter(|db| *db >= 0).ok_or_else(|| {
            invalid(scheme, "the database after the master name is not a non-negative number (…/master-name/db)")
        })?,
    };
    if segments.any(|s| !s.is_empty()) {
        return Err(invalid(scheme, "the path has more than a master name and a database"));
    }
    let mut sentinel_auth = RedisConnectionInfo::default();
    for (name, value) in parts.query {
        match name.as_str() {
            "sentinel_username" => sentinel_auth.username = Some(value).filter(|v| !v.is_empty()),
            "sentinel_password" => sentinel_auth.password = Some(value).filter(|v| !v.is_empty()),
            _ => {
                return Err(invalid(
                    scheme,
                    "unknown query parameter (only sentinel_username and sentinel_password are understood)",
                ))
            }
        }
    }
    let master = RedisConnectionInfo { db, username: parts.username, password: parts.password, ..Default::default() };
    Ok(SentinelTarget {
        sentinels: parts.hosts.iter().map(|(host, port)| tcp(host, *port, sentinel_auth.clone())).collect(),
        master_name,
        master,
    })
}

fn parse_cluster(rest: &str) -> Result<ClusterTarget, StoreError> {
    let scheme = CLUSTER_SCHEME;
    let parts = split_parts(scheme, rest, CLUSTER_PORT)?;
    match parts.path.as_str() {
        "" | "0" => {}
        _ => return Err(invalid(scheme, "a cluster has only database 0, so the URL takes no path")),
    }
    if !parts.query.is_empty() {
        return Err(invalid(scheme, "a cluster URL takes no query parameters"));
    }
    let auth = RedisConnectionInfo { username: parts.username, password: parts.password, ..Default::default() };
    Ok(ClusterTarget { nodes: parts.hosts.iter().map(|(host, port)| tcp(host, *port, auth.clone())).collect() })
}

/// Percent-decodes a URL part; `None` if an escape is malformed or the result is not UTF-8.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(info: &ConnectionInfo) -> String {
        match &info.addr {
            ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            _ => panic!("not tcp"),
        }
    }

    fn error(url: &str) -> String {
        match parse(url) {
            Err(StoreError::Other(message)) => message,
            Err(e) => panic!("{url}: not Other: {e:?}"),
            Ok(_) => panic!("{url}: parsed"),
        }
    }

    #[test]
    fn single_server_urls_pass_through_untouched() {
        for url in ["redis://127.0.0.1:6379", "rediss://:pw@host/2", "REDIS://h", "unix:///tmp/redis.sock"] {
            assert!(matches!(parse(url), Ok(Target::Single(u)) if u == url), "{url}");
        }
    }

    #[test]
    fn a_sentinel_url_names_sentinels_a_master_a_database_and_credentials() {
        let Ok(Target::Sentinel(t)) = parse(
            "redis+sentinel://app:p%40ss%2Fw:rd@s1:26380,[::1],s3/my%20master/3?sentinel_password=sp&sentinel_username=su",
        ) else {
            panic!("not a sentinel target");
        };
        assert_eq!(t.sentinels.iter().map(addr).collect::<Vec<_>>(), ["s1:26380", "::1:26379", "s3:26379"]);
        assert_eq!(t.master_name, "my master");
        assert_eq!(t.master.db, 3);
        assert_eq!(t.master.username.as_deref(), Some("app"));
        assert_eq!(t.master.password.as_deref(), Some("p@ss/w:rd"));
        for s in &t.sentinels {
            assert_eq!(s.redis.username.as_deref(), Some("su"));
            assert_eq!(s.redis.password.as_deref(), Some("sp"));
            assert_eq!(s.redis.db, 0);
        }

        let Ok(Target::Sentinel(t)) = parse("redis+sentinel://:secret@10.0.0.1/mymaster/") else {
            panic!("not a sentinel target");
        };
        assert_eq!(t.master.db, 0);
        assert_eq!(t.master.username, None);
        assert_eq!(t.master.password.as_deref(), Some("secret"));
        assert_eq!(t.sentinels[0].redis.password, None, "the sentinels get no password unless told");
    }

    #[test]
    fn a_cluster_url_names_seed_nodes_and_credentials() {
        let Ok(Target::Cluster(t)) = parse("redis+cluster://:pw@n1:7000,n2:7001,n3") else {
            panic!("not a cluster target");
        };
        assert_eq!(t.nodes.iter().map(addr).collect::<Vec<_>>(), ["n1:7000", "n2:7001", "n3:6379"]);
        assert!(t.nodes.iter().all(|n| n.redis.password.as_deref() == Some("pw")));
        assert!(matches!(parse("redis+cluster://n1:7000/"), Ok(Target::Cluster(_))));
        assert!(matches!(parse("redis+cluster://n1:7000/0"), Ok(Target::Cluster(_))));
    }

    #[test]
    fn a_malformed_url_is_an_error_that_names_the_scheme_but_not_the_secret() {
        let secret = "hunter2";
        for (url, expected) in [
            (format!("redis+sentinel://:{secret}@s1:26379"), "master name is missing"),
            (format!("redis+sentinel://:{secret}@s1:26379/m/x{secret}"), "database"),
            (format!("redis+sentinel://:{secret}@s1:26379/m/1/2"), "path"),
            (format!("redis+sentinel://:{secret}@s1:26379/m?{secret}=1"), "unknown query parameter"),
            (format!("redis+sentinel://:{secret}@s1:{secret}/m"), "port"),
            (format!("redis+sentinel://:{secret}@s1,,s2/m"), "host is empty"),
            (format!("redis+sentinel://:pa/{secret}@s1/m"), "host is empty"),
            (format!("redis+cluster://:{secret}@n1:70000"), "port"),
            (format!("redis+cluster://:{secret}@n1/1"), "only database 0"),
            (format!("redis+cluster://:{secret}@n1?x=1"), "no query"),
            (format!("redis+cluster://:%zz{secret}@n1"), "percent-encoded"),
            (format!("redis+cluster://:{secret}@[::1:7000"), "closing"),
            (format!("sentinel://:{secret}@s1/m"), "unsupported scheme `sentinel://`"),
            (format!(":{secret}@s1:26379"), "no scheme"),
            (format!("{secret} x://h"), "unsupported scheme in"),
        ] {
            let message = error(&url);
            assert!(message.contains(expected), "{url}: {message}");
            assert!(!message.contains(secret), "{url}: {message}");
        }
        assert!(error("redis+sentinel://s1/").starts_with("invalid redis+sentinel URL"));
        assert!(error("redis+cluster://n1/5").starts_with("invalid redis+cluster URL"));
    }
}
