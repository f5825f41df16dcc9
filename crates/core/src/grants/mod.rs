//! The token endpoint's grants, one module each, named by their wire `grant_type`. Client
//! authentication and the allowed-grant check run once in [`Tessera::token`]; then an
//! exhaustive `match` dispatches, handing each grant only the capabilities it uses (its
//! `Flow`: the [`Issuer`](crate::issuing::Issuer), the store of its own kind of credential,
//! revocation or the password check), the way per-flow storage interfaces do.

mod authorization_code;
mod client_credentials;
mod device_code;
mod password;
mod refresh_token;

use crate::clients::ClientAuth;
use crate::error::OAuthError;
use crate::issuing::TokenSet;
use crate::model::{AuthorizationCode, DeviceCode, GrantType, Password, RefreshToken};
use crate::Tessera;

pub use device_code::{normalize_user_code, DeviceAuthorization};

/// A token request, typed.
#[derive(Debug)]
pub enum Grant {
    ClientCredentials {
        scope: String,
    },
    /// `source`: the client's address, for the throttles.
    Password {
        username: String,
        password: Password,
        scope: String,
        source: Option<std::net::IpAddr>,
    },
    RefreshToken {
        refresh_token: RefreshToken,
        scope: String,
    },
    AuthorizationCode {
        code: AuthorizationCode,
        redirect_uri: String,
        code_verifier: String,
    },
    DeviceCode {
        device_code: DeviceCode,
    },
}

impl Grant {
    pub fn grant_type(&self) -> GrantType {
        match self {
            Grant::ClientCredentials { .. } => GrantType::ClientCredentials,
            Grant::Password { .. } => GrantType::Password,
            Grant::RefreshToken { .. } => GrantType::RefreshToken,
            Grant::AuthorizationCode { .. } => GrantType::AuthorizationCode,
            Grant::DeviceCode { .. } => GrantType::DeviceCode,
        }
    }
}

impl Tessera {
    /// The token endpoint (RFC 6749 §3.2): authenticates the client, checks it may use the
    /// grant, and runs it.
    #[tracing::instrument(level = "debug", skip_all, fields(grant_type = grant.grant_type().as_str(), client_id = %crate::printable(&auth.client_id)))]
    pub async fn token(&self, auth: &ClientAuth, grant: Grant) -> Result<TokenSet, OAuthError> {
        let client = self.authenticate_client(auth).await?;
        self.require_grant(&client, grant.grant_type())?;
        // Each grant is handed what it uses and nothing else of the core.
        let issuer = self.issuer();
        // The grants that wait on a store run as futures of their own on the heap: held inline,
        // the largest of them would make every call's future that large, client_credentials'
        // included, and each layer above would copy it whole on the way (this future was
        // 2.7 KB; memcpy was 5 % of a client_credentials call's server CPU, part of it such
        // copies). Each of those grants pays one allocation, beside a store's round trip.
        match grant {
            Grant::ClientCredentials { scope } => client_credentials::run(issuer, &client, &scope),
            Grant::Password { username, password, scope, source } => {
                let flow = password::Flow { issuer, accounts: self };
                Box::pin(password::run(&flow, &client, &username, &password, &scope, source)).await
            }
            Grant::RefreshToken { refresh_token, scope } => {
                let flow = refresh_token::Flow { issuer, families: self.durable.as_ref(), revoking: self };
                Box::pin(refresh_token::run(&flow, &client, &refresh_token, &scope)).await
            }
            Grant::AuthorizationCode { code, redirect_uri, code_verifier } => {
                let flow = authorization_code::Flow { issuer, codes: self.ephemeral.as_ref(), revoking: self };
                Box::pin(authorization_code::run(&flow, &client, &code, &redirect_uri, &code_verifier)).await
            }
            Grant::DeviceCode { device_code } => {
                let flow = device_code::PollFlow { issuer, devices: self.ephemeral.as_ref() };
                Box::pin(device_code::poll(&flow, &client, &device_code)).await
            }
        }
    }
}
