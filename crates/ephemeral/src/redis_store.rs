//! The Redis ephemeral store. Every trait method is one round trip: a single command or one
//! Lua script, so each mutation is atomic on the server whatever the number of nodes.
//!
//! It reaches one server (`redis://`), the master of a Sentinel-monitored set
//! (`redis+sentinel://`) or a Redis Cluster (`redis+cluster://`); see
//! [`RedisEphemeral::connect`]. The methods are written once over `Conn`, which hands out a
//! connection of the right kind.
//!
//! Key layout, all under the caller's `key_prefix`:
//!
//! | key | on a cluster | type | holds |
//! |---|---|---|---|
//! | `code:<digest hex>` | same | hash | `kind` (`grant`/`tombstone`), `until` (Unix s), `body` (JSON), `replayed` (`0`/`1`) |
//! | `device:<digest hex>` | `{device}:<digest hex>` | hash | `grant` (JSON), `user_code`, `expires_at`, `interval`, `status`, `user_id`, `auth_time`, `last_poll_ms` |
//! | `user_code:<user code>` | `{device}:user_code:<user code>` | string | the device digest hex (set with `NX`) |
//! | `session:<digest hex>` | same | string | the `LoginSession` JSON |
//! | `throttle:<key>` | same | hash | `c` (attempts counted), `n` (no attempt before, Unix ms), `r` (forgotten at, Unix ms) |
//!
//! Revocations are announced on the channel `<prefix>revocations` in their wire form
//! (`Revocation::to_wire`); nothing of them is stored here: the durable revocation log is
//! their record.
//! Hashes keep the stored JSON opaque to Lua: scripts compare only the plain number fields,
//! so no value is re-encoded by cjson (whose 14-digit numbers would round large integers).
//!
//! On a cluster, a script may only touch keys of one hash slot. Code, session and failure
//! scripts touch one key each and need nothing. The device scripts go from a user code to its
//! device, and nothing but the user code is known when the user types it in, so no per-device
//! hash tag can be shared by both keys: every device and user-code key carries the tag
//! `{device}` and lives in one slot. The cost is that all device authorizations sit on one
//! shard; they come at the pace of people typing codes and devices polling every few seconds,
//! far below what one shard serves. (Tagging by device digest instead would need a second round
//! trip to read the user-code index before the script, and lose its atomic lookup.) The other modes keep the untagged layout, so nodes of an older
//! version and a newer one can share a store during an upgrade. A key prefix with braces is
//! refused on a cluster, as its braces would take the place of these tags.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt as _};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tessera_core::ports::{
    CodeGrant, CodeStore, CodeTake, DecideOutcome, DeviceDecision, DeviceGrant, DevicePoll, DeviceStatus, DeviceStore,
    Ephemeral, Issued, LoginSession, Revocation, RevocationFanout, SessionStore, ThrottleOp, ThrottlePolicy, Throttled,
    Throttles,
};
use tessera_core::{StoreError, StoreResult};
use tessera_crypto::Digest;

use crate::redis_ha::{
    store_error, timed_out, AnyConnection, ClusterConn, Conn, SentinelConn, SingleConn, CONNECT_TIMEOUT,
    RESPONSE_TIMEOUT,
};
use crate::redis_url::{self, Target, CLUSTER_SCHEME};
use crate::{
    from_json, reclaim_ttl_secs, to_json, wall_now, DEVICE_GRACE_SECS, MAX_TTL_SECS, RECLAIM_GRACE_SECS, STORE,
};

/// The Redis [`Ephemeral`]. Cheap to clone: clones share one multiplexed connection (on a
/// cluster, one connection per node).
#[derive(Clone)]
pub struct RedisEphemeral {
    conn: Conn,
    keys: Keys,
}

impl std::fmt::Debug for RedisEphemeral {
    // The URL is not kept: it may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.conn {
            Conn::Single(_) => "single",
            Conn::Sentinel(_) => "sentinel",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisEphemeral").field("mode", &mode).field("prefix", &self.keys.prefix).finish_non_exhaustive()
    }
}

/// The kinds of key; see the module's key layout.
#[derive(Clone, Copy)]
enum Kind {
    Code,
    Device,
    UserCode,
    Session,
    Throttle,
}

#[derive(Clone)]
struct Keys {
    prefix: String,
    /// Whether the hash tags a cluster needs are placed.
    cluster: bool,
}

impl Keys {
    fn key(&self, kind: Kind, id: &str) -> String {
        let prefix = &self.prefix;
        match (kind, self.cluster) {
            (Kind::Code, _) => format!("{prefix}code:{id}"),
            (Kind::Session, _) => format!("{prefix}session:{id}"),
            (Kind::Throttle, _) => format!("{prefix}throttle:{id}"),
            (Kind::Device, false) => format!("{prefix}device:{id}"),
            (Kind::UserCode, false) => format!("{prefix}user_code:{id}"),
            (Kind::Device, true) => format!("{prefix}{{device}}:{id}"),
            (Kind::UserCode, true) => format!("{prefix}{{device}}:user_code:{id}"),
        }
    }

    fn channel(&self) -> String {
        format!("{}revocations", self.prefix)
    }
}

fn unexpected(what: &str) -> StoreError {
    StoreError::Other(format!("unexpected {what} reply from the {STORE}"))
}

fn parse_i64(what: &str, raw: &str) -> StoreResult<i64> {
    raw.parse().map_err(|_| unexpected(what))
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
/// auth_time}, or an empty array. The device key is read from the index, so it cannot be
/// declared; on a cluster it shares the index's `{device}` tag, hence its slot.
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

/// Records a decision on a live, pending device authorization (the device key found as in
/// `LOOKUP_USER_CODE`).
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

/// One step of a throttle (see `ThrottlePolicy` and `ThrottleOp`), atomically.
/// KEYS[1] the throttle; ARGV now_ms, free, base_delay_ms, max_delay_ms, stop_after (0: never),
/// forget_after_ms, reclaim ttl in ms, op (`take`, `peek` or `record`).
/// Returns {0, count} allowed, {1, ms} wait, {2, ms} stopped.
static THROTTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(ARGV[1])
local op = ARGV[8]
local v = redis.call('HMGET', KEYS[1], 'c', 'n', 'r')
local c, n, r = 0, 0, 0
if v[3] and tonumber(v[3]) > now then
  c = tonumber(v[1]); n = tonumber(v[2]); r = tonumber(v[3])
end
if op ~= 'record' then
  local stop = tonumber(ARGV[5])
  if stop > 0 and c >= stop then return {2, r - now} end
  if now < n then return {1, n - now} end
  if op == 'peek' then return {0, c} end
end
c = c + 1
local free = tonumber(ARGV[2])
local d = 0
if c >= free then
  d = math.min(tonumber(ARGV[3]) * 2 ^ math.min(c - free, 40), tonumber(ARGV[4]))
end
-- Only a delay moves the next allowed time: with none, a caller whose clock read came a
-- moment earlier than the last one's is not told to wait.
local nxt = n
if d > 0 and now + math.floor(d) > n then nxt = now + math.floor(d) end
redis.call('HSET', KEYS[1], 'c', c, 'n', string.format('%d', nxt), 'r', string.format('%d', now + tonumber(ARGV[6])))
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return {0, c}
",
    )
});

/// Takes back a successful attempt (an entry left with nothing to remember is deleted).
/// KEYS[1] the throttle; ARGV[1] '1' to forget it entirely.
static FORGIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[1] == '1' then return redis.call('DEL', KEYS[1]) end
local c = tonumber(redis.call('HGET', KEYS[1], 'c') or '0')
if c <= 1 then return redis.call('DEL', KEYS[1]) end
redis.call('HINCRBY', KEYS[1], 'c', -1)
return 1
",
    )
});

impl RedisEphemeral {
    /// Connects to the store `url` names; every key and channel is prefixed by `key_prefix`.
    /// Fails fast with `StoreError::Unavailable` if it cannot be reached, and with
    /// `StoreError::Other` if the URL does not parse (the message names the scheme and the
    /// part at fault, never the URL, which may hold a password).
    ///
    /// ```text
    /// redis://[[username][:password]@]host[:port][/db]        one server (also rediss://, redis+unix://, unix://)
    /// redis+sentinel://[[username][:password]@]host[:port][,host[:port]…]/master-name[/db][?sentinel_username=…&sentinel_password=…]
    /// redis+cluster://[[username][:password]@]host[:port][,host[:port]…][/]
    /// ```
    ///
    /// * `redis://` and the other single-server forms go to redis-rs as they are. Once connected,
    ///   a lost connection is re-established by the next command after Redis comes back.
    /// * `redis+sentinel://` lists sentinels (port 26379 unless given) and names the master set
    ///   they monitor, in the form Python's Redis-Sentinel-Url package defined and other tools
    ///   (Prefect, RedisVL) adopted. The username and password, and the database, are those of
    ///   the master; sentinels that require a password of their own get it from
    ///   `sentinel_username` / `sentinel_password`. The master is found by asking
    ///   the sentinels in turn (redis-rs' sentinel client, which also checks that the server
    ///   answers `ROLE` as a master). When a command finds its connection broken, timed out, or
    ///   the server demoted (`READONLY`), that command fails as `Unavailable` and the next one
    ///   asks the sentinels again, so the store follows a failover by itself. Subscriptions go to
    ///   the current master too. A wrong master password shows as "no reachable master".
    /// * `redis+cluster://` lists seed nodes (port 6379 unless given), all with the same
    ///   credentials; the cluster has only database 0. The cluster client learns the slots from
    ///   the seeds and follows redirections and failovers itself. A subscription uses one node
    ///   at a time (every node receives every `PUBLISH` of the cluster): the seeds in turn, each
    ///   new subscription starting past the node the previous one used, then the nodes the
    ///   cluster reports. The key prefix must not contain `{` or `}` (see the key layout).
    ///
    /// Usernames, passwords, the master name and query values are percent-decoded, so a `/`, `?`
    /// or `%` in a password is written `%2F`, `%3F`, `%25`. TLS to sentinels or cluster nodes is
    /// not supported.
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self, StoreError> {
        let (conn, cluster) = match redis_url::parse(url)? {
            Target::Single(url) => (connect_single(url).await?, false),
            Target::Sentinel(target) => (Conn::Sentinel(Arc::new(SentinelConn::connect(target).await?)), false),
            Target::Cluster(target) => {
                if key_prefix.contains(['{', '}']) {
                    return Err(StoreError::Other(format!(
                        "a key prefix for a {CLUSTER_SCHEME}:// store must not contain braces: the store places \
                         its own hash tags"
                    )));
                }
                (Conn::Cluster(Arc::new(ClusterConn::connect(target).await?)), true)
            }
        };
        Ok(Self { conn, keys: Keys { prefix: key_prefix.to_owned(), cluster } })
    }

    fn key(&self, kind: Kind, id: &str) -> String {
        self.keys.key(kind, id)
    }

    async fn run<T: redis::FromRedisValue>(&self, invocation: &redis::ScriptInvocation<'_>) -> StoreResult<T> {
        let mut conn = self.conn.checkout().await?;
        let result = self.bounded(invocation.invoke_async(&mut conn)).await;
        self.conn.settle(&conn, result)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> StoreResult<T> {
        let mut conn: AnyConnection = self.conn.checkout().await?;
        let result = self.bounded(cmd.query_async(&mut conn)).await;
        self.conn.settle(&conn, result)
    }

    /// Bounds a command where its connection does not (see `Conn::op_timeout`).
    async fn bounded<T>(
        &self,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        match self.conn.op_timeout() {
            None => command.await,
            Some(limit) => tokio::time::timeout(limit, command)
                .await
                .unwrap_or_else(|_| Err(RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))),
        }
    }
}

/// One server, through a connection manager.
async fn connect_single(url: &str) -> StoreResult<Conn> {
    let client = redis::Client::open(url).map_err(store_error)?;
    // No connection retries: a command fails fast and the following one tries afresh,
    // rather than a request waiting out a backoff.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
        .set_number_of_retries(0);
    let manager = tokio::time::timeout(
        CONNECT_TIMEOUT + RESPONSE_TIMEOUT,
        ConnectionManager::new_with_config(client.clone(), config),
    )
    .await
    .map_err(|_| timed_out("connecting"))?
    .map_err(store_error)?;
    Ok(Conn::Single(Arc::new(SingleConn { client, manager })))
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
        "approved" => {
            DeviceStatus::Approved { user_id: user_id.to_owned(), auth_time: parse_i64("device auth_time", auth_time)? }
        }
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
}

#[async_trait]
impl CodeStore for RedisEphemeral {
    async fn put_code(&self, code: Digest, grant: &CodeGrant) -> StoreResult<()> {
        let ttl = reclaim_ttl_secs(grant.expires_at, wall_now(), RECLAIM_GRACE_SECS);
        let body = to_json("code", grant)?;
        let _: i64 = self
            .run(PUT_CODE.key(self.key(Kind::Code, &code.to_hex())).arg(body).arg(grant.expires_at).arg(ttl))
            .await?;
        Ok(())
    }

    async fn peek_code(&self, code: Digest, now: i64) -> StoreResult<Option<CodeGrant>> {
        let fields: Vec<Option<String>> = self
            .query(redis::cmd("HMGET").arg(self.key(Kind::Code, &code.to_hex())).arg(&["kind", "until", "body"]))
            .await?;
        let [Some(kind), Some(until), Some(body)] = fields.as_slice() else {
            return Ok(None);
        };
        if kind != "grant" || now >= parse_i64("code", until)? {
            return Ok(None);
        }
        Ok(Some(from_json("code", body)?))
    }

    async fn take_code(&self, code: Digest, now: i64, issued: &Issued, tombstone_ttl: i64) -> StoreResult<CodeTake> {
        let body = to_json("code tombstone", issued)?;
        let reply: Vec<String> = self
            .run(
                TAKE_CODE
                    .key(self.key(Kind::Code, &code.to_hex()))
                    .arg(now)
                    .arg(body)
                    .arg(now.saturating_add(tombstone_ttl))
                    .arg(tombstone_ttl.clamp(1, MAX_TTL_SECS)),
            )
            .await?;
        match reply.as_slice() {
            [tag] if tag == "unknown" => Ok(CodeTake::Unknown),
            [tag, grant] if tag == "fresh" => Ok(CodeTake::Fresh(from_json("code", grant)?)),
            [tag, issued] if tag == "replayed" => Ok(CodeTake::Replayed(from_json("code tombstone", issued)?)),
            _ => Err(unexpected("take_code")),
        }
    }

    async fn code_replayed(&self, code: Digest) -> StoreResult<bool> {
        let replayed: Option<String> =
            self.query(redis::cmd("HGET").arg(self.key(Kind::Code, &code.to_hex())).arg("replayed")).await?;
        Ok(replayed.as_deref() == Some("1"))
    }
}

#[async_trait]
impl DeviceStore for RedisEphemeral {
    async fn put_device(&self, device: Digest, grant: &DeviceGrant) -> StoreResult<()> {
        let ttl = reclaim_ttl_secs(grant.expires_at, wall_now(), DEVICE_GRACE_SECS);
        let body = to_json("device", grant)?;
        let stored: i64 = self
            .run(
                PUT_DEVICE
                    .key(self.key(Kind::Device, &device.to_hex()))
                    .key(self.key(Kind::UserCode, &grant.user_code))
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
            Err(StoreError::Conflict("the user code is already in use".into()))
        }
    }

    async fn lookup_user_code(&self, user_code: &str, now: i64) -> StoreResult<Option<(DeviceGrant, DeviceStatus)>> {
        let reply: Vec<String> = self
            .run(
                LOOKUP_USER_CODE
                    .key(self.key(Kind::UserCode, user_code))
                    .arg(self.key(Kind::Device, ""))
                    .arg(user_code)
                    .arg(now),
            )
            .await?;
        match reply.as_slice() {
            [] => Ok(None),
            [grant, interval, status, user_id, auth_time] => {
                Ok(Some((device_grant(grant, interval)?, device_status(status, user_id, auth_time)?)))
            }
            _ => Err(unexpected("lookup_user_code")),
        }
    }

    async fn decide_device(&self, user_code: &str, decision: &DeviceDecision, now: i64) -> StoreResult<DecideOutcome> {
        let mut invocation = DECIDE_DEVICE.key(self.key(Kind::UserCode, user_code));
        invocation.arg(self.key(Kind::Device, "")).arg(user_code).arg(now);
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
        let reply: Vec<String> =
            self.run(POLL_DEVICE.key(self.key(Kind::Device, &device.to_hex())).arg(now_ms)).await?;
        match reply.as_slice() {
            [tag] => match tag.as_str() {
                "unknown" => Ok(DevicePoll::Unknown),
                "expired" => Ok(DevicePoll::Expired),
                "pending" => Ok(DevicePoll::Pending),
                "denied" => Ok(DevicePoll::Denied),
                "consumed" => Ok(DevicePoll::Consumed),
                _ => Err(unexpected("poll_device")),
            },
            [tag, interval] if tag == "slow_down" => {
                Ok(DevicePoll::SlowDown { interval: parse_i64("device interval", interval)? })
            }
            [tag, grant, interval, user_id, auth_time] if tag == "approved" => Ok(DevicePoll::Approved {
                grant: device_grant(grant, interval)?,
                user_id: user_id.clone(),
                auth_time: parse_i64("device auth_time", auth_time)?,
            }),
            _ => Err(unexpected("poll_device")),
        }
    }
}

#[async_trait]
impl SessionStore for RedisEphemeral {
    async fn put_session(&self, handle: Digest, session: &LoginSession) -> StoreResult<()> {
        let ttl = reclaim_ttl_secs(session.expires_at, wall_now(), RECLAIM_GRACE_SECS);
        let body = to_json("session", session)?;
        let _: () = self
            .query(redis::cmd("SET").arg(self.key(Kind::Session, &handle.to_hex())).arg(body).arg("EX").arg(ttl))
            .await?;
        Ok(())
    }

    async fn get_session(&self, handle: Digest, now: i64) -> StoreResult<Option<LoginSession>> {
        let raw: Option<String> = self.query(redis::cmd("GET").arg(self.key(Kind::Session, &handle.to_hex()))).await?;
        let Some(raw) = raw else { return Ok(None) };
        let session: LoginSession = from_json("session", &raw)?;
        Ok((now < session.expires_at).then_some(session))
    }

    async fn delete_session(&self, handle: Digest) -> StoreResult<()> {
        let _: i64 = self.query(redis::cmd("DEL").arg(self.key(Kind::Session, &handle.to_hex()))).await?;
        Ok(())
    }
}

#[async_trait]
impl Throttles for RedisEphemeral {
    async fn throttle(
        &self,
        key: &str,
        policy: &ThrottlePolicy,
        op: ThrottleOp,
        now_ms: i64,
    ) -> StoreResult<Throttled> {
        let op = match op {
            ThrottleOp::Take => "take",
            ThrottleOp::Peek => "peek",
            ThrottleOp::Record => "record",
        };
        let forget_ms = policy.forget_after_ms.max(1);
        // Space is reclaimed on the server's clock, a little after the entry is forgotten on ours.
        let reclaim_ms = forget_ms.saturating_add(RECLAIM_GRACE_SECS * 1000).min(MAX_TTL_SECS * 1000);
        let reply: Vec<i64> = self
            .run(
                THROTTLE
                    .key(self.key(Kind::Throttle, key))
                    .arg(now_ms)
                    .arg(policy.free)
                    .arg(policy.base_delay_ms)
                    .arg(policy.max_delay_ms)
                    .arg(policy.stop_after)
                    .arg(forget_ms)
                    .arg(reclaim_ms)
                    .arg(op),
            )
            .await?;
        match reply[..] {
            [0, count] => Ok(Throttled::Allowed { count: u32::try_from(count.max(0)).unwrap_or(u32::MAX) }),
            [1, ms] => Ok(Throttled::Wait { retry_after_ms: ms }),
            [2, ms] => Ok(Throttled::Stopped { retry_after_ms: ms }),
            _ => Err(unexpected("throttle")),
        }
    }

    async fn forgive(&self, key: &str, entirely: bool) -> StoreResult<()> {
        let _: i64 = self.run(FORGIVE.key(self.key(Kind::Throttle, key)).arg(if entirely { "1" } else { "0" })).await?;
        Ok(())
    }
}

#[async_trait]
impl RevocationFanout for RedisEphemeral {
    async fn publish_revocation(&self, revocation: &Revocation) -> StoreResult<()> {
        let _: i64 = self.query(redis::cmd("PUBLISH").arg(self.keys.channel()).arg(revocation.to_wire())).await?;
        Ok(())
    }

    async fn subscribe_revocations(&self) -> StoreResult<BoxStream<'static, Revocation>> {
        // A dedicated connection: a subscribed connection can carry nothing else.
        let mut pubsub = self.conn.pubsub().await?;
        tokio::time::timeout(RESPONSE_TIMEOUT, pubsub.subscribe(self.keys.channel()))
            .await
            .map_err(|_| timed_out("subscribing to revocations"))?
            .map_err(store_error)?;
        // The stream ends when the connection's reader ends, i.e. when the connection is lost.
        Ok(pubsub
            .into_on_message()
            .filter_map(|msg| async move { Revocation::from_wire(&msg.get_payload::<String>().ok()?) })
            .boxed())
    }
}
