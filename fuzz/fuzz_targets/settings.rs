//! The token service's settings through `Settings::load`: a TOML file and an environment
//! table, merged, deserialized and validated. Loading never panics, and an error never shows
//! the value of a secret key (`admin.token`, `keys.encryption_key`, the database and Redis
//! URLs).
//!
//! Input: the TOML file, then optionally a line `%%` and environment variables, one
//! `NAME=value` a line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use tessera_token_service::settings::Settings;

/// Stands in for a secret in a second load of the same input.
const MARKER: &str = "Zq8wMarkerSecret";

fn toml_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("tessera-fuzz-settings-{}.toml", std::process::id())))
}

/// The values the input gives secret keys, as a naive reader finds them: environment
/// variables naming a secret or its table, and TOML lines `token = …`, `encryption_key = …`,
/// `url = …`, `redis = …` and the like (valid TOML or not). URLs count twice: whole, and their
/// password.
fn secrets(toml: &str, env: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (name, value) in env {
        let path = name.strip_prefix("TESSERA_").map(|rest| rest.to_lowercase().replace("__", "."));
        // A secret's table counts too: `TESSERA_REDIS=redis://…` is a URL in the wrong place.
        let secret = matches!(
            path.as_deref(),
            Some(
                "admin.token"
                    | "keys.encryption_key"
                    | "database.url"
                    | "redis.url"
                    | "admin"
                    | "keys"
                    | "database"
                    | "redis"
            )
        ) || name == "DATABASE_URL"
            || name == "REDIS_URL";
        if secret {
            found.push(value.clone());
        }
    }
    for line in toml.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
        if matches!(key, "token" | "encryption_key" | "url" | "admin" | "keys" | "database" | "redis") {
            found.push(value.trim().trim_matches(|c| c == '"' || c == '\'').to_owned());
        }
    }
    let passwords: Vec<String> = found
        .iter()
        .filter_map(|v| {
            let (_, rest) = v.split_once("://")?;
            let userinfo = &rest[..rest.rfind('@')?];
            Some(userinfo.split_once(':')?.1.to_owned())
        })
        .collect();
    found.extend(passwords);
    found
}

fn load(toml: &str, env: &[(String, String)]) -> Result<Settings, String> {
    std::fs::write(toml_path(), toml).expect("the temporary settings file is writable");
    Settings::load(Some(toml_path()), &env.to_vec()).map_err(|e| format!("{e:#}"))
}

fn split_owned(text: &str) -> (String, Vec<(String, String)>) {
    let (toml, env) = split(text);
    (toml.to_owned(), env)
}

/// The input's TOML file and environment.
fn split(text: &str) -> (&str, Vec<(String, String)>) {
    let (toml, env_text) = text.split_once("\n%%\n").unwrap_or((text, ""));
    let env = env_text.lines().filter_map(|line| line.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned()));
    (toml, env.collect())
}

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let (toml, env) = split(&text);

    match load(toml, &env) {
        Ok(settings) => {
            // A loaded configuration is a valid one, and the core accepts it.
            settings.validate().expect("loaded settings validate");
            settings.core_config().expect("loaded settings make a core configuration");
        }
        Err(message) => {
            assert!(message.starts_with("invalid configuration") || message.contains(':'), "{message:?}");
            for secret in secrets(toml, &env) {
                // Only a value that appears once, as a secret, can be told apart from text of
                // the input that a message may rightly quote.
                if secret.len() >= 8
                    && text.matches(secret.as_str()).count() == 1
                    && message.contains(&secret)
                    && !text.contains(MARKER)
                {
                    // Quoted, or text the message holds anyway ("redis+sent" is in the list of
                    // schemes): the same input with the secret replaced tells which.
                    let (toml, env) = split_owned(&text.replacen(&secret, MARKER, 1));
                    let again = load(&toml, &env).err().unwrap_or_default();
                    assert!(again.contains(&secret) && !again.contains(MARKER), "a secret in the error: {message:?}");
                }
            }
        }
    }

    // The same input with a known secret in one of the four places.
    if text.contains(MARKER) {
        return;
    }
    let mut marked = env.clone();
    marked.push(match input.len() % 4 {
        0 => ("TESSERA_ADMIN__TOKEN".into(), MARKER.into()),
        1 => ("TESSERA_KEYS__ENCRYPTION_KEY".into(), MARKER.into()),
        2 => ("DATABASE_URL".into(), format!("postgres://tessera:{MARKER}@db:5432/tessera")),
        _ => ("REDIS_URL".into(), format!("redis+sentinel://app:{MARKER}@s1,s2/mymaster")),
    });
    if let Err(message) = load(toml, &marked) {
        assert!(!message.contains(MARKER), "a secret in the error: {message:?}");
    }
});
