//! Domain values. Secret-bearing types redact themselves in `Debug`, have no `Display`, and
//! give their value only through `expose()`.

use crate::error::OAuthError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

macro_rules! secret_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }
            /// The secret value itself. Never log it.
            pub fn expose(&self) -> &str {
                &self.0
            }
            /// The SHA-256 digest under which the secret is stored.
            pub fn digest(&self) -> tessera_crypto::Digest {
                tessera_crypto::Digest::of(self.0.as_bytes())
            }
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

secret_newtype!(
    /// A client secret as presented by a client.
    ClientSecret
);
secret_newtype!(
    /// A user's password as typed.
    Password
);
secret_newtype!(
    /// An opaque refresh token.
    RefreshToken
);
secret_newtype!(
    /// An authorization code.
    AuthorizationCode
);
secret_newtype!(
    /// A device code (RFC 8628).
    DeviceCode
);
secret_newtype!(
    /// A login session handle.
    SessionHandle
);
secret_newtype!(
    /// Any token presented for introspection or revocation.
    PresentedToken
);

/// A wire `grant_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GrantType {
    #[serde(rename = "authorization_code")]
    AuthorizationCode,
    #[serde(rename = "client_credentials")]
    ClientCredentials,
    #[serde(rename = "password")]
    Password,
    #[serde(rename = "refresh_token")]
    RefreshToken,
    #[serde(rename = "implicit")]
    Implicit,
    #[serde(rename = "urn:ietf:params:oauth:grant-type:device_code")]
    DeviceCode,
}

impl GrantType {
    /// The bounded label of a wire `grant_type`, for metrics and traces: clients send anything,
    /// and a label must not grow with what they send.
    pub fn label(wire: &str) -> &'static str {
        match GrantType::parse(wire) {
            Some(GrantType::DeviceCode) => "device_code",
            Some(g) => g.as_str(),
            None if wire.is_empty() => "none",
            None => "other",
        }
    }

    pub const ALL: [GrantType; 6] = [
        GrantType::AuthorizationCode,
        GrantType::ClientCredentials,
        GrantType::Password,
        GrantType::RefreshToken,
        GrantType::Implicit,
        GrantType::DeviceCode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::ClientCredentials => "client_credentials",
            GrantType::Password => "password",
            GrantType::RefreshToken => "refresh_token",
            GrantType::Implicit => "implicit",
            GrantType::DeviceCode => "urn:ietf:params:oauth:grant-type:device_code",
        }
    }

    /// Parses a wire grant type. `device_code` is accepted as a short alias of the RFC 8628 URN,
    /// as one of the JSON APIs our users come from sends it.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "device_code" => Some(GrantType::DeviceCode),
            other => Self::ALL.into_iter().find(|g| g.as_str() == other),
        }
    }
}

/// A set of scope tokens (RFC 6749 §3.3), kept sorted and without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<String>);

impl ScopeSet {
    /// Parses a space-delimited scope string. RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
    pub fn parse(s: &str) -> Result<Self, OAuthError> {
        if s.len() > 4096 {
            return Err(OAuthError::invalid_scope("scope is too long"));
        }
        let mut set = BTreeSet::new();
        for token in s.split(' ').filter(|t| !t.is_empty()) {
            if !token.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)) {
                return Err(OAuthError::invalid_scope("scope contains a character RFC 6749 §3.3 does not allow"));
            }
            set.insert(token.to_owned());
        }
        Ok(Self(set))
    }

    pub fn from_tokens<I: IntoIterator<Item = S>, S: Into<String>>(it: I) -> Self {
        Self(it.into_iter().map(Into::into).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, s: &str) -> bool {
        self.0.contains(s)
    }

    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        Self(self.0.union(&other.0).cloned().collect())
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(s)?;
            first = false;
        }
        Ok(())
    }
}

/// A registered client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub name: String,
    /// SHA-256 of the secret; `None` for public clients.
    pub secret_digest: Option<tessera_crypto::Digest>,
    pub confidential: bool,
    pub grant_types: Vec<GrantType>,
    /// Compared by exact string match (RFC 9700 §2.1).
    pub redirect_uris: Vec<String>,
    /// The scopes this client may ask for.
    pub scopes: Vec<String>,
    /// Seconds; `None` means the server default.
    pub access_token_ttl: Option<i64>,
    pub refresh_token_ttl: Option<i64>,
    /// First-party clients skip the consent page.
    pub skip_consent: bool,
    pub allow_implicit: bool,
    pub allow_plain_pkce: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// May watch revocations (WatchRevocations, Security Event Tokens by poll).
    pub watch_revocations: bool,
}

impl Client {
    pub fn allows_grant(&self, g: GrantType) -> bool {
        self.grant_types.contains(&g)
    }

    pub fn allowed_scopes(&self) -> ScopeSet {
        ScopeSet::from_tokens(self.scopes.iter().cloned())
    }
}

/// A user (resource owner).
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub disabled: bool,
    pub email: Option<String>,
    pub name: Option<String>,
    pub created_at: i64,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// A human description of a scope, for the consent and device pages.
pub fn describe_scope(scope: &str) -> String {
    match scope {
        "openid" => "Sign you in with your account".to_owned(),
        "profile" => "See your name and username".to_owned(),
        "email" => "See your email address".to_owned(),
        "offline_access" => "Stay connected when you are not using it".to_owned(),
        other => format!("Access “{other}”"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_labels_are_bounded_whatever_the_client_sends() {
        assert_eq!(GrantType::label("client_credentials"), "client_credentials");
        assert_eq!(GrantType::label("urn:ietf:params:oauth:grant-type:device_code"), "device_code");
        assert_eq!(GrantType::label(""), "none");
        assert_eq!(GrantType::label("urn:x:my-own-grant-with-a-long-name"), "other");
    }

    #[test]
    fn scope_parsing_sorts_dedups_and_rejects_bad_characters() {
        let s = ScopeSet::parse("write  read read").unwrap();
        assert_eq!(s.to_string(), "read write");
        assert!(ScopeSet::parse("a\"b").is_err());
        assert!(ScopeSet::parse("a\\b").is_err());
        assert!(ScopeSet::parse("").unwrap().is_empty());
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let s = ClientSecret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn the_short_device_grant_type_is_an_alias() {
        assert_eq!(GrantType::parse("device_code"), Some(GrantType::DeviceCode));
        assert_eq!(GrantType::parse(GrantType::DeviceCode.as_str()), Some(GrantType::DeviceCode));
        assert_eq!(GrantType::parse("implicit "), None);
    }
}
