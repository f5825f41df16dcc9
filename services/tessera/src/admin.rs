//! `tessera admin …`: a command-line client of the AdminService. Prints tables for people and
//! JSON (`--json`) for scripts.

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::json;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use tessera_proto::admin::v1 as pb;
use tessera_proto::admin::v1::admin_service_client::AdminServiceClient;
use tessera_token_service::settings::{ProcessEnv, Settings};
use tonic::transport::Channel;

#[derive(Args)]
pub struct AdminArgs {
    /// The token service's gRPC address (default: grpc.listen from the configuration).
    #[arg(long, env = "TESSERA_ADMIN_ENDPOINT")]
    endpoint: Option<String>,
    /// A file holding the admin credential (default: admin.token, else <data_dir>/admin-token).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Manage clients.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new signing key active; the old ones keep verifying until their tokens expire.
    Rotate,
    /// Print a fresh random key-encryption key for `keys.encryption_key` (no server needed).
    GenerateKek,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register a client. The secret of a confidential client is printed once.
    Create {
        /// The client id (default: random).
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// A public client (no secret; PKCE required).
        #[arg(long)]
        public: bool,
        /// An allowed grant type (repeatable): authorization_code, client_credentials,
        /// password, refresh_token, device_code, implicit.
        #[arg(long = "grant", required = true)]
        grants: Vec<String>,
        /// A redirect URI, matched exactly (repeatable).
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// An allowed scope (repeatable, or space-separated).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Access token lifetime in seconds.
        #[arg(long)]
        access_token_ttl: Option<i64>,
        /// Refresh token lifetime in seconds.
        #[arg(long)]
        refresh_token_ttl: Option<i64>,
        /// A first-party client: no consent page.
        #[arg(long)]
        skip_consent: bool,
        /// Allow the legacy implicit grant (response_type=token).
        #[arg(long)]
        allow_implicit: bool,
        /// Allow PKCE with the `plain` method.
        #[arg(long)]
        allow_plain_pkce: bool,
        /// Allow watching revocations (WatchRevocations and the security event poll
        /// endpoint), for a resource server that verifies tokens itself.
        #[arg(long)]
        watch_revocations: bool,
    },
    /// List clients.
    List,
    /// Show one client.
    Get { id: String },
    /// Delete a client.
    Delete { id: String },
    /// Replace a client's secret; the new one is printed once.
    RotateSecret { id: String },
    /// Set what a client may do besides its grants.
    Permissions {
        id: String,
        /// Whether it may watch revocations.
        #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
        watch_revocations: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user. The password comes from --password-stdin or the TESSERA_PASSWORD variable.
    Create {
        #[arg(long)]
        username: String,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// List users.
    List,
    /// Disable a user: no more logins or token refreshes.
    Disable { username: String },
    /// Enable a disabled user.
    Enable { username: String },
    /// Replace a user's password (from --password-stdin or TESSERA_PASSWORD).
    SetPassword {
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading the password from standard input")?;
        return Ok(s.trim_end_matches(['\n', '\r']).to_owned());
    }
    match std::env::var("TESSERA_PASSWORD") {
        Ok(p) if !p.is_empty() => Ok(p),
        _ => bail!("give the password with --password-stdin or the TESSERA_PASSWORD environment variable"),
    }
}

fn admin_token(settings: &Settings, file: Option<&Path>) -> anyhow::Result<String> {
    if let Some(path) = file {
        return Ok(std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned());
    }
    settings.admin_token().ok_or_else(|| {
        anyhow::anyhow!(
            "no admin credential: set TESSERA_ADMIN__TOKEN, pass --token-file, or start the server once so it writes {}",
            settings.admin_token_file().display()
        )
    })
}

fn client_json(c: &pb::Client) -> serde_json::Value {
    json!({
        "client_id": c.client_id,
        "name": c.name,
        "confidential": c.confidential,
        "grant_types": c.grant_types,
        "redirect_uris": c.redirect_uris,
        "scopes": c.scopes,
        "access_token_ttl": c.access_token_ttl,
        "refresh_token_ttl": c.refresh_token_ttl,
        "skip_consent": c.skip_consent,
        "allow_implicit": c.allow_implicit,
        "allow_plain_pkce": c.allow_plain_pkce,
        "watch_revocations": c.watch_revocations,
        "created_at": c.created_at,
    })
}

fn user_json(u: &pb::User) -> serde_json::Value {
    json!({"id": u.id, "username": u.username, "disabled": u.disabled, "email": u.email, "name": u.name, "created_at": u.created_at})
}

fn print_client(c: &pb::Client) {
    let kind = if c.confidential { "confidential" } else { "public" };
    println!("{}  ({}, {kind})", c.client_id, c.name);
    println!("  grants:        {}", c.grant_types.join(" "));
    println!("  redirect URIs: {}", c.redirect_uris.join(" "));
    println!("  scopes:        {}", c.scopes.join(" "));
    if c.watch_revocations {
        println!("  may watch revocations");
    }
}

/// One client, as JSON or as text.
fn show_client(c: &pb::Client, json: bool) {
    if json {
        println!("{}", client_json(c));
    } else {
        print_client(c);
    }
}

pub async fn run(args: &AdminArgs, config: Option<&Path>) -> anyhow::Result<()> {
    if let AdminCommand::Keys { command: KeysCommand::GenerateKek } = &args.command {
        let kek = tessera_crypto::seal::Kek::generate_b64();
        if args.json {
            println!("{}", json!({ "encryption_key": kek }));
        } else {
            println!("{kek}");
        }
        return Ok(());
    }
    let settings = Settings::load(config, &ProcessEnv)?;
    let endpoint = args.endpoint.clone().unwrap_or_else(|| settings.token_service_url());
    let endpoint = if endpoint.contains("://") { endpoint } else { format!("http://{endpoint}") };
    let token = admin_token(&settings, args.token_file.as_deref())?;
    let credential = tessera_proto::AdminCredential::new(&token)
        .ok_or_else(|| anyhow::anyhow!("the admin credential is not a valid header value"))?;
    let channel = Channel::from_shared(endpoint.clone())
        .context("invalid --endpoint")?
        .connect()
        .await
        .with_context(|| format!("connecting to the token service at {endpoint}"))?;
    let mut client = AdminServiceClient::with_interceptor(channel, credential);
    let failed = |s: tonic::Status| anyhow::anyhow!("{}", s.message());
    let json = args.json;
    match &args.command {
        AdminCommand::Client { command } => match command {
            ClientCommand::Create {
                id,
                name,
                public,
                grants,
                redirect_uris,
                scopes,
                access_token_ttl,
                refresh_token_ttl,
                skip_consent,
                allow_implicit,
                allow_plain_pkce,
                watch_revocations,
            } => {
                let req = pb::CreateClientRequest {
                    client_id: id.clone().unwrap_or_default(),
                    name: name.clone().unwrap_or_default(),
                    public: *public,
                    grant_types: grants.clone(),
                    redirect_uris: redirect_uris.clone(),
                    scopes: scopes.iter().flat_map(|s| s.split_whitespace().map(str::to_owned)).collect(),
                    access_token_ttl: access_token_ttl.unwrap_or(0),
                    refresh_token_ttl: refresh_token_ttl.unwrap_or(0),
                    skip_consent: *skip_consent,
                    allow_implicit: *allow_implicit,
                    allow_plain_pkce: *allow_plain_pkce,
                    watch_revocations: *watch_revocations,
                };
                let r = client.create_client(req).await.map_err(failed)?.into_inner();
                let c = r.client.unwrap_or_default();
                if json {
                    let mut v = client_json(&c);
                    if !r.client_secret.is_empty() {
                        v["client_secret"] = json!(r.client_secret);
                    }
                    println!("{v}");
                } else {
                    print_client(&c);
                    if !r.client_secret.is_empty() {
                        println!("  client secret: {}", r.client_secret);
                        println!("  (shown once: store it now)");
                    }
                }
            }
            ClientCommand::List => {
                let r = client.list_clients(pb::ListClientsRequest {}).await.map_err(failed)?.into_inner();
                if json {
                    println!("{}", json!(r.clients.iter().map(client_json).collect::<Vec<_>>()));
                } else {
                    r.clients.iter().for_each(print_client);
                }
            }
            ClientCommand::Get { id } => {
                let c = client
                    .get_client(pb::GetClientRequest { client_id: id.clone() })
                    .await
                    .map_err(failed)?
                    .into_inner();
                show_client(&c, json);
            }
            ClientCommand::Delete { id } => {
                client.delete_client(pb::DeleteClientRequest { client_id: id.clone() }).await.map_err(failed)?;
                if json {
                    println!("{}", json!({"deleted": id}));
                } else {
                    println!("deleted client {id}");
                }
            }
            ClientCommand::RotateSecret { id } => {
                let r = client
                    .rotate_client_secret(pb::RotateClientSecretRequest { client_id: id.clone() })
                    .await
                    .map_err(failed)?
                    .into_inner();
                if json {
                    println!("{}", json!({"client_id": id, "client_secret": r.client_secret}));
                } else {
                    println!("new secret for {id}: {}", r.client_secret);
                    println!("(shown once; the old secret no longer works)");
                }
            }
            ClientCommand::Permissions { id, watch_revocations } => {
                let c = client
                    .set_client_permissions(pb::SetClientPermissionsRequest {
                        client_id: id.clone(),
                        watch_revocations: *watch_revocations,
                    })
                    .await
                    .map_err(failed)?
                    .into_inner();
                show_client(&c, json);
            }
        },
        AdminCommand::Keys { command: KeysCommand::Rotate } => {
            let r = client.rotate_signing_key(pb::RotateSigningKeyRequest {}).await.map_err(failed)?.into_inner();
            if json {
                println!("{}", json!({ "kid": r.kid }));
            } else {
                println!("new active signing key: {}", r.kid);
            }
        }
        AdminCommand::Keys { command: KeysCommand::GenerateKek } => {}
        AdminCommand::User { command } => {
            let user = match command {
                UserCommand::Create { username, password_stdin, email, name } => {
                    let password = read_password(*password_stdin)?;
                    let req = pb::CreateUserRequest {
                        username: username.clone(),
                        password,
                        email: email.clone().unwrap_or_default(),
                        name: name.clone().unwrap_or_default(),
                    };
                    client.create_user(req).await.map_err(failed)?.into_inner()
                }
                UserCommand::List => {
                    let r = client.list_users(pb::ListUsersRequest {}).await.map_err(failed)?.into_inner();
                    if json {
                        println!("{}", json!(r.users.iter().map(user_json).collect::<Vec<_>>()));
                    } else {
                        for u in &r.users {
                            let state = if u.disabled { " (disabled)" } else { "" };
                            println!("{}  {}{state}", u.username, u.id);
                        }
                    }
                    return Ok(());
                }
                UserCommand::Disable { username } | UserCommand::Enable { username } => {
                    let disabled = matches!(command, UserCommand::Disable { .. });
                    let req = pb::SetUserDisabledRequest { username: username.clone(), disabled };
                    client.set_user_disabled(req).await.map_err(failed)?.into_inner()
                }
                UserCommand::SetPassword { username, password_stdin } => {
                    let password = read_password(*password_stdin)?;
                    let req = pb::SetUserPasswordRequest { username: username.clone(), password };
                    client.set_user_password(req).await.map_err(failed)?.into_inner()
                }
            };
            if json {
                println!("{}", user_json(&user));
            } else {
                let state = if user.disabled { " (disabled)" } else { "" };
                println!("{}  {}{state}", user.username, user.id);
            }
        }
    }
    Ok(())
}
