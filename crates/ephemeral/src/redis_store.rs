//! The Redis ephemeral store. Every trait method is one round trip: a single command or one
//! Lua script, so each mutation is atomic on the server whatever the number of nodes.
//!
//! Key layout, all under the caller's `key_prefix`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `code:<digest hex>` | hash | `kind` (`grant`/`tombstone`), `until` (Unix s), `body` (JSON), `replayed` (`0`/`1`) |
//! | `device:<digest hex>` | hash | `grant` (JSON), `user_code`, `expires_at`, `interval`, `status`, `user_id`, `auth_time`, `last_poll_ms` |
//! | `user_code:<user code>` | string | the device digest hex (set with `NX`) |
//! | `session:<digest hex>` | string | the `LoginSession` JSON |
//! | `failures:<key>` | string | the counter (`INCR`, window set with `PEXPIRE … NX`) |
//! | `revoked:<jti>` | string | the token's `exp` |
//!
//! Revocations are announced on the channel `<prefix>revocations` as `"<jti> <exp>"`.
//! Hashes keep the stored JSON opaque to Lua: scripts compare only the plain number fields,
//! so no value is re-encoded by cjson (whose 14-digit numbers would round large integers).

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt as _};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script};
use tessera_core::ports::{
    CodeGrant, CodeTake, DecideOutcome, DeviceDecision, DeviceGrant, DevicePoll, DeviceStatus,
    Ephemeral, Issued, LoginSession,
};
use tessera_core::{StoreError, StoreResult};
use tessera_crypto::Digest;

use crate::{
    from_json, reclaim_ttl_secs, to_json, wall_now, DEVICE_GRACE_SECS, MAX_TTL_SECS,
    RECLAIM_GRACE_SECS, STORE,
};

/// Each connection attempt gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Each command gives up after this; every script here is O(1) or one bounded SCAN step.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys examined per SCAN step of `revoked_access`.
const SCAN_COUNT: usize = 500;

/// The Redis [`Ephemeral`]. Cheap to clone: clones share one multiplexed connection.
#[derive(Clone)]
pub struct RedisEphemeral {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisEphemeral {
    // The URL is not kept: it may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEphemeral")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Maps a Redis failure. Connection, I/O and timeout failures mean the store is unreachable;
/// the connection manager reconnects on the next command. Type errors are reworded because
/// redis-rs quotes the offending reply, which may be stored content.
fn store_error(e: RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        StoreError::Unavailable {
            store: STORE,
            reason: e.to_string(),
        }
    } else if e.kind() == ErrorKind::TypeError {
        StoreError::Other(format!("unexpected reply from the {STORE}"))
    } else {
        StoreError::Other(e.to_string())
    }
}

fn timed_out(what: &str) -> StoreError {
    StoreError::Unavailable {
        store: STORE,
        reason: format!("{what} timed out"),
    }
}

fn unexpected(what: &str) -> StoreError {
    StoreError::Other(format!("unexpected {what} reply from the {STORE}"))
}

fn parse_i64(what: &str, raw: &str) -> StoreResult<i64> {
    raw.parse().map_err(|_| unexpected(what))
}

/// Escapes glob metacharacters so a prefix matches only itself in `SCAN … MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Replaces a code with itself, in `kind = grant` form. Never merges with an earlier value.
/// KEYS[1] code key; ARGV grant JSON, expires_at, ttl.
static PUT_CODE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'kind', 'grant', 'until', ARGV[2], 'body', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// Single use: a live grant becomes a tombstone holding `issued` and is returned once; a live
/// tombstone is marked replayed and returned. Dead entries (checked against the caller's
/// `now`, not the TTL) are unknown.
/// KEYS[1] code key; ARGV now, issued JSON, tombstone dead_at, tombstone ttl.
static TAKE_CODE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local f = redis.call('HMGET', KEYS[1], 'kind', 'until', 'body')
if not f[1] then return {'unknown'} end
if tonumber(ARGV[1]) >= tonumber(f[2]) then return {'unknown'} end
if f[1] == 'grant' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'kind', 'tombstone', 'until', ARGV[3], 'body', ARGV[2], 'replayed', '0')
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {'fresh', f[3]}
end
redis.call('HSET', KEYS[1], 'replayed', '1')
return {'replayed', f[3]}
",
    )
});

/// Claims the user code (NX) and stores the device authorization as pending.
/// KEYS[1] device key, KEYS[2] user code key; ARGV grant JSON, user_code, expires_at,
/// interval, ttl, device digest hex.
static PUT_DEVICE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if not redis.call('SET', KEYS[2], ARGV[6], 'NX', 'EX', ARGV[5]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'grant', ARGV[1], 'user_code', ARGV[2], 'expires_at', ARGV[3],
  'interval', ARGV[4], 'status', 'pending')
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
",
    )
});

/// The live device authorization a user code names: {grant, interval, status, user_id,
/// auth_time}, or an empty array.
/// KEYS[1] user code key; ARGV device key prefix, user code, now.
static LOOKUP_USER_CODE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local hex = redis.call('GET', KEYS[1])
if not hex then return {} end
local f = redis.call('HMGET', ARGV[1] .. hex,
  'grant', 'user_code', 'expires_at', 'interval', 'status', 'user_id', 'auth_time')
if not f[1] or f[2] ~= ARGV[2] then return {} end
if tonumber(ARGV[3]) >= tonumber(f[3]) then return {} end
return {f[1], f[4], f[5], f[6] or '', f[7] or ''}
",
    )
});

/// Records a decision on a live, pending device authorization.
/// KEYS[1] user code key; ARGV device key prefix, user code, now, 'approved'|'denied',
/// user_id, auth_time.
static DECIDE_DEVICE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local hex = redis.call('GET', KEYS[1])
if not hex then return 'not_found' end
local k = ARGV[1] .. hex
local f = redis.call('HMGET', k, 'user_code', 'expires_at', 'status')
if not f[1] or f[1] ~= ARGV[2] then return 'not_found' end
if tonumber(ARGV[3]) >= tonumber(f[2]) then return 'not_found' end
if f[3] ~= 'pending' then return 'already_decided' end
if ARGV[4] == 'approved' then
  redis.call('HSET', k, 'status', 'approved', 'user_id', ARGV[5], 'auth_time', ARGV[6])
else
  redis.call('HSET', k, 'status', 'denied')
end
return 'decided'
",
    )
});

/// One poll (RFC 8628 §3.4–3.5): expiry first; a pending authorization polled sooner than
/// `interval` after the previous poll gets `slow_down` and 5 more seconds; an approval is
/// handed out once, then the authorization is consumed.
/// KEYS[1] device key; ARGV now_ms.
static POLL_DEVICE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local f = redis.call('HMGET', KEYS[1],
  'grant', 'expires_at', 'interval', 'status', 'user_id', 'auth_time', 'last_poll_ms')
if not f[1] then return {'unknown'} end
local now_ms = tonumber(ARGV[1])
if now_ms >= tonumber(f[2]) * 1000 then return {'expired'} end
local status = f[4]
if status == 'pending' then
  local interval = tonumber(f[3])
  redis.call('HSET', KEYS[1], 'last_poll_ms', ARGV[1])
  if f[7] and now_ms - tonumber(f[7]) < interval * 1000 then
    local raised = string.format('%d', interval + 5)
    redis.call('HSET', KEYS[1], 'interval', raised)
    return {'slow_down', raised}
  end
  return {'pending'}
elseif status == 'approved' then
  redis.call('HSET', KEYS[1], 'status', 'consumed')
  return {'approved', f[1], f[3], f[5], f[6]}
elseif status == 'denied' then
  return {'denied'}
end
return {'consumed'}
",
    )
});

/// Counts a failure; the window starts at the first one (NX keeps later ones from moving it).
/// KEYS[1] counter key; ARGV window in ms.
static RECORD_FAILURE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1], 'NX')
return n
",
    )
});

/// Stores a revocation and announces it, atomically.
/// KEYS[1] revoked key; ARGV exp, ttl, channel, message.
static REVOKE_ACCESS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
",
    )
});

/// One SCAN step over revocations with their values: {next cursor, key, exp, key, exp, …}.
/// ARGV cursor, MATCH pattern, COUNT.
static SCAN_REVOKED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local r = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local out = {r[1]}
for _, k in ipairs(r[2]) do
  local v = redis.call('GET', k)
  if v then
    out[#out + 1] = k
    out[#out + 1] = v
  end
end
return out
",
    )
});

impl RedisEphemeral {
    /// Connects to `url` (`redis://…`); every key and channel is prefixed by `key_prefix`.
    /// Fails fast with `StoreError::Unavailable` if Redis cannot be reached; once connected,
    /// a lost connection is re-established by the next command after Redis comes back.
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(store_error)?;
        // No connection retries: a command fails fast and the following one tries afresh,
        // rather than a request waiting out a backoff.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(0);
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT + RESPONSE_TIMEOUT,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| timed_out("connecting"))?
        .map_err(store_error)?;
        Ok(Self {
            client,
            conn,
            prefix: key_prefix.to_owned(),
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}revocations", self.prefix)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> StoreResult<T> {
        let mut conn = self.conn.clone();
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> StoreResult<T> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await.map_err(store_error)
    }
}

/// Rebuilds a device grant from its stored JSON and the live `interval` field.
fn device_grant(raw_grant: &str, raw_interval: &str) -> StoreResult<DeviceGrant> {
    let mut grant: DeviceGrant = from_json("device", raw_grant)?;
    grant.interval = parse_i64("device interval", raw_interval)?;
    Ok(grant)
}

fn device_status(status: &str, user_id: &str, auth_time: &str) -> StoreResult<DeviceStatus> {
    Ok(match status {
        "pending" => DeviceStatus::Pending,
        "approved" => DeviceStatus::Approved {
            user_id: user_id.to_owned(),
            auth_time: parse_i64("device auth_time", auth_time)?,
        },
        "denied" => DeviceStatus::Denied,
        "consumed" => DeviceStatus::Consumed,
        _ => return Err(unexpected("device status")),
    })
}

#[async_trait]
impl Ephemeral for RedisEphemeral {
    async fn ping(&self) -> StoreResult<()> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    async fn put_code(&self, code: Digest, grant: &CodeGrant) -> StoreResult<()> {
        let ttl = reclaim_ttl_secs(grant.expires_at, wall_now(), RECLAIM_GRACE_SECS);
        let body = to_json("code", grant)?;
        let _: i64 = self
            .run(
                PUT_CODE
                    .key(self.key("code", &code.to_hex()))
                    .arg(body)
                    .arg(grant.expires_at)
                    .arg(ttl),
            )
            .await?;
        Ok(())
    }

    async fn peek_code(&self, code: Digest, now: i64) -> StoreResult<Option<CodeGrant>> {
        let fields: Vec<Option<String>> = self
            .query(
                redis::cmd("HMGET")
                    .arg(self.key("code", &code.to_hex()))
                    .arg(&["kind", "until", "body"]),
            )
            .await?;
        let [Some(kind), Some(until), Some(body)] = fields.as_slice() else {
            return Ok(None);
        };
        if kind != "grant" || now >= parse_i64("code", until)? {
            return Ok(None);
        }
        Ok(Some(from_json("code", body)?))
    }

    async fn take_code(
        &self,
        code: Digest,
        now: i64,
        issued: &Issued,
        tombstone_ttl: i64,
    ) -> StoreResult<CodeTake> {
        let body = to_json("code tombstone", issued)?;
        let reply: Vec<String> = self
            .run(
                TAKE_CODE
                    .key(self.key("code", &code.to_hex()))
                    .arg(now)
                    .arg(body)
                    .arg(now.saturating_add(tombstone_ttl))
                    .arg(tombstone_ttl.clamp(1, MAX_TTL_SECS)),
            )
            .await?;
        match reply.as_slice() {
            [tag] if tag == "unknown" => Ok(CodeTake::Unknown),
            [tag, grant] if tag == "fresh" => Ok(CodeTake::Fresh(from_json("code", grant)?)),
            [tag, issued] if tag == "replayed" => {
                Ok(CodeTake::Replayed(from_json("code tombstone", issued)?))
            }
            _ => Err(unexpected("take_code")),
        }
    }

    async fn code_replayed(&self, code: Digest) -> StoreResult<bool> {
        let replayed: Option<String> = self
            .query(
                redis::cmd("HGET")
                    .arg(self.key("code", &code.to_hex()))
                    .arg("replayed"),
            )
            .await?;
        Ok(replayed.as_deref() == Some("1"))
    }

    async fn put_device(&self, device: Digest, grant: &DeviceGrant) -> StoreResult<()> {
        let ttl = reclaim_ttl_secs(grant.expires_at, wall_now(), DEVICE_GRACE_SECS);
        let body = to_json("device", grant)?;
        let stored: i64 = self
            .run(
                PUT_DEVICE
                    .key(self.key("device", &device.to_hex()))
                    .key(self.key("user_code", &grant.user_code))
                    .arg(body)
                    .arg(&grant.user_code)
                    .arg(grant.expires_at)
                    .arg(grant.interval)
                    .arg(ttl)
                    .arg(device.to_hex()),
            )
            .await?;
        if stored == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict(
                "the user code is already in use".into(),
            ))
        }
    }

    async fn lookup_user_code(
        &self,
        user_code: &str,
        now: i64,
    ) -> StoreResult<Option<(DeviceGrant, DeviceStatus)>> {
        let reply: Vec<String> = self
            .run(
                LOOKUP_USER_CODE
                    .key(self.key("user_code", user_code))
                    .arg(self.key("device", ""))
                    .arg(user_code)
                    .arg(now),
            )
            .await?;
        match reply.as_slice() {
            [] => Ok(None),
            [grant, interval, status, user_id, auth_time] => Ok(Some((
                device_grant(grant, interval)?,
                device_status(status, user_id, auth_time)?,
            ))),
            _ => Err(unexpected("lookup_user_code")),
        }
    }

    async fn decide_device(
        &self,
        user_code: &str,
        decision: &DeviceDecision,
        now: i64,
    ) -> StoreResult<DecideOutcome> {
        let mut invocation = DECIDE_DEVICE.key(self.key("user_code", user_code));
        invocation
            .arg(self.key("device", ""))
            .arg(user_code)
            .arg(now);
        match decision {
            DeviceDecision::Approve { user_id, auth_time } => {
                invocation.arg("approved").arg(user_id).arg(*auth_time);
            }
            DeviceDecision::Deny => {
                invocation.arg("denied").arg("").arg(0);
            }
        }
        let outcome: String = self.run(&invocation).await?;
        match outcome.as_str() {
            "decided" => Ok(DecideOutcome::Decided),
            "not_found" => Ok(DecideOutcome::NotFound),
            "already_decided" => Ok(DecideOutcome::AlreadyDecided),
            _ => Err(unexpected("decide_device")),
        }
    }

    async fn poll_device(&self, device: Digest, now_ms: i64) -> StoreResult<DevicePoll> {
        let reply: Vec<String> = self
            .run(
                POLL_DEVICE
                    .key(self.key("device", &device.to_hex()))
                    .arg(now_ms),
            )
            .await?;
        match reply.as_slice() {
            [tag] => match tag.as_str() {
                "unknown" => Ok(DevicePoll::Unknown),
                "expired" => Ok(DevicePoll::Expired),
                "pending" => Ok(DevicePoll::Pending),
                "denied" => Ok(DevicePoll::Denied),
                "consumed" => Ok(DevicePoll::Consumed),
                _ => Err(unexpected("poll_device")),
            },
            [tag, interval] if tag == "slow_down" => Ok(DevicePoll::SlowDown {
                interval: parse_i64("device interval", interval)?,
            }),
            [tag, grant, interval, user_id, auth_time] if tag == "approved" => {
                Ok(DevicePoll::Approved {
                    grant: device_grant(grant, interval)?,
                    user_id: user_id.clone(),
                    auth_time: parse_i64("device auth_time", auth_time)?,
                })
            }
            _ => Err(unexpected("poll_device")),
        }
    }

    async fn put_session(&self, handle: Digest, session: &LoginSession) -> StoreResult<()> {
        let ttl = reclaim_ttl_secs(session.expires_at, wall_now(), RECLAIM_GRACE_SECS);
        let body = to_json("session", session)?;
        let _: () = self
            .query(
                redis::cmd("SET")
                    .arg(self.key("session", &handle.to_hex()))
                    .arg(body)
                    .arg("EX")
                    .arg(ttl),
            )
            .await?;
        Ok(())
    }

    async fn get_session(&self, handle: Digest, now: i64) -> StoreResult<Option<LoginSession>> {
        let raw: Option<String> = self
            .query(redis::cmd("GET").arg(self.key("session", &handle.to_hex())))
            .await?;
        let Some(raw) = raw else { return Ok(None) };
        let session: LoginSession = from_json("session", &raw)?;
        Ok((now < session.expires_at).then_some(session))
    }

    async fn delete_session(&self, handle: Digest) -> StoreResult<()> {
        let _: i64 = self
            .query(redis::cmd("DEL").arg(self.key("session", &handle.to_hex())))
            .await?;
        Ok(())
    }

    async fn record_failure(&self, key: &str, window_secs: i64) -> StoreResult<u32> {
        let window_ms = window_secs.clamp(1, MAX_TTL_SECS) * 1000;
        let count: i64 = self
            .run(RECORD_FAILURE.key(self.key("failures", key)).arg(window_ms))
            .await?;
        Ok(u32::try_from(count.max(0)).unwrap_or(u32::MAX))
    }

    async fn failures(&self, key: &str) -> StoreResult<u32> {
        let count: Option<i64> = self
            .query(redis::cmd("GET").arg(self.key("failures", key)))
            .await?;
        Ok(u32::try_from(count.unwrap_or(0).max(0)).unwrap_or(u32::MAX))
    }

    async fn clear_failures(&self, key: &str) -> StoreResult<()> {
        let _: i64 = self
            .query(redis::cmd("DEL").arg(self.key("failures", key)))
            .await?;
        Ok(())
    }

    async fn revoke_access(&self, jti: &str, exp: i64) -> StoreResult<()> {
        let ttl = reclaim_ttl_secs(exp, wall_now(), RECLAIM_GRACE_SECS);
        let _: i64 = self
            .run(
                REVOKE_ACCESS
                    .key(self.key("revoked", jti))
                    .arg(exp)
                    .arg(ttl)
                    .arg(self.channel())
                    .arg(format!("{jti} {exp}")),
            )
            .await?;
        Ok(())
    }

    async fn revoked_access(&self, now: i64) -> StoreResult<Vec<(String, i64)>> {
        let key_prefix = self.key("revoked", "");
        let pattern = format!("{}*", glob_escape(&key_prefix));
        // SCAN may return a key more than once: collect by jti.
        let mut revoked = std::collections::HashMap::new();
        let mut cursor = String::from("0");
        loop {
            let reply: Vec<String> = self
                .run(SCAN_REVOKED.arg(&cursor).arg(&pattern).arg(SCAN_COUNT))
                .await?;
            let Some((next, pairs)) = reply.split_first() else {
                return Err(unexpected("revoked_access"));
            };
            for pair in pairs.chunks(2) {
                let [key, exp] = pair else {
                    return Err(unexpected("revoked_access"));
                };
                let exp = parse_i64("revocation", exp)?;
                if let Some(jti) = key.strip_prefix(&key_prefix).filter(|_| exp > now) {
                    revoked.insert(jti.to_owned(), exp);
                }
            }
            if next == "0" {
                return Ok(revoked.into_iter().collect());
            }
            cursor = next.clone();
        }
    }

    async fn subscribe_revocations(&self) -> StoreResult<BoxStream<'static, (String, i64)>> {
        // A dedicated connection: a subscribed connection can carry nothing else.
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| timed_out("connecting for revocations"))?
            .map_err(store_error)?;
        tokio::time::timeout(RESPONSE_TIMEOUT, pubsub.subscribe(self.channel()))
            .await
            .map_err(|_| timed_out("subscribing to revocations"))?
            .map_err(store_error)?;
        // The stream ends when the connection's reader ends, i.e. when the connection is lost.
        Ok(pubsub
            .into_on_message()
            .filter_map(|msg| async move {
                let payload: String = msg.get_payload().ok()?;
                let (jti, exp) = payload.rsplit_once(' ')?;
                Some((jti.to_owned(), exp.parse().ok()?))
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_metacharacters_in_a_prefix_are_escaped() {
        assert_eq!(glob_escape("t:[a]*?\\"), "t:\\[a\\]\\*\\?\\\\");
    }
}
