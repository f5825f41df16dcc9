//! The connections of the high-availability deployments: a master found through Redis
//! Sentinel, and a Redis Cluster. Both hand out connections that implement redis-rs'
//! `ConnectionLike`, so every store method is written once over [`Conn`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection, PubSub};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisFuture, Value};
use tessera_core::{StoreError, StoreResult};

use crate::redis_url::{ClusterTarget, SentinelTarget};
use crate::STORE;

/// Each connection attempt gives up after this.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Each command gives up after this; every script here is O(1) or one bounded SCAN step.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// One sentinel gets this long to name a master that answers `ROLE` as one.
const PER_SENTINEL_TIMEOUT: Duration = Duration::from_secs(2);
/// Finding the master through all the sentinels, and connecting to it, gives up after this.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// A cluster command gives up after this, redirections and retries included.
pub(crate) const CLUSTER_OP_TIMEOUT: Duration = Duration::from_secs(4);
/// Retries of one cluster command by the cluster client: `MOVED`/`ASK` redirections and
/// `TRYAGAIN` count, which a resharding or a failover needs followed. The client also retries
/// after a connection broke, when a script may already have run; for the single-use scripts a
/// second run fails safe (a take sees its own tombstone and reports a replay, a poll finds the
/// approval consumed), it never hands out a code or an approval twice.
const CLUSTER_RETRIES: u32 = 3;

pub(crate) fn unavailable(reason: impl Into<String>) -> StoreError {
    StoreError::Unavailable { store: STORE, reason: reason.into() }
}

pub(crate) fn timed_out(what: &str) -> StoreError {
    unavailable(format!("{what} timed out"))
}

/// Maps a Redis failure. Connection, I/O and timeout failures mean the store is unreachable
/// (the connection manager or the master lookup reconnects on the next command); so do the
/// states a restart, a failover or a resharding passes through, whatever the mode: a
/// `redis://` address that moves to a new server on failover meets them too. Type errors are
/// reworded because redis-rs quotes the offending reply, which may be stored content.
pub(crate) fn store_error(e: RedisError) -> StoreError {
    match e.kind() {
        _ if e.is_io_error() => unavailable(e.to_string()),
        ErrorKind::ReadOnly
        | ErrorKind::MasterDown
        | ErrorKind::ClusterDown
        | ErrorKind::TryAgain
        | ErrorKind::Moved
        | ErrorKind::Ask
        | ErrorKind::BusyLoadingError
        | ErrorKind::ClusterConnectionNotFound => unavailable(e.to_string()),
        ErrorKind::MasterNameNotFoundBySentinel => unavailable(
            "the sentinels name no reachable master by the configured name (down, failing over, or refusing \
             the configured credentials)",
        ),
        ErrorKind::TypeError => StoreError::Other(format!("unexpected reply from the {STORE}")),
        _ => StoreError::Other(e.to_string()),
    }
}

/// Whether a connection that failed this way should be dropped and the master found afresh:
/// it broke, timed out, or the server it reaches is no longer the master.
fn master_is_gone(e: &RedisError) -> bool {
    e.is_unrecoverable_error()
        || e.is_io_error()
        || e.is_timeout()
        || matches!(e.kind(), ErrorKind::ReadOnly | ErrorKind::MasterDown | ErrorKind::BusyLoadingError)
}

/// The store's connection, whichever kind of deployment it reaches. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server (`redis://`).
    Single(Arc<SingleConn>),
    /// A master found through sentinels (`redis+sentinel://`).
    Sentinel(Arc<SentinelConn>),
    /// A cluster (`redis+cluster://`); the cluster connection follows the slots by itself.
    Cluster(Arc<ClusterConn>),
}

/// One server, through a connection manager that reconnects by itself.
pub(crate) struct SingleConn {
    pub(crate) client: redis::Client,
    pub(crate) manager: ConnectionManager,
}

/// One checked-out connection of a [`Conn`].
pub(crate) enum AnyConnection {
    Manager(ConnectionManager),
    Master { generation: u64, conn: MultiplexedConnection },
    Cluster(ClusterConnection),
}

impl ConnectionLike for AnyConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            AnyConnection::Manager(c) => c.req_packed_command(cmd),
            AnyConnection::Master { conn, .. } => conn.req_packed_command(cmd),
            AnyConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            AnyConnection::Manager(c) => c.req_packed_commands(cmd, offset, count),
            AnyConnection::Master { conn, .. } => conn.req_packed_commands(cmd, offset, count),
            AnyConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConnection::Manager(c) => c.get_db(),
            AnyConnection::Master { conn, .. } => conn.get_db(),
            AnyConnection::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// A connection for one command or script.
    pub(crate) async fn checkout(&self) -> StoreResult<AnyConnection> {
        Ok(match self {
            Conn::Single(single) => AnyConnection::Manager(single.manager.clone()),
            Conn::Sentinel(sentinel) => {
                let master = sentinel.master().await?;
                AnyConnection::Master { generation: master.generation, conn: master.conn }
            }
            Conn::Cluster(cluster) => AnyConnection::Cluster(cluster.conn.clone()),
        })
    }

    /// How long one command may take in all, where the connection's own timeouts do not bound
    /// it: a cluster command may be redirected and retried.
    pub(crate) fn op_timeout(&self) -> Option<Duration> {
        match self {
            Conn::Single(_) | Conn::Sentinel(_) => None,
            Conn::Cluster(_) => Some(CLUSTER_OP_TIMEOUT),
        }
    }

    /// Maps the outcome of a command run on `used`; a master that is gone is forgotten so the
    /// next command finds the current one through the sentinels. Nothing is retried here: a
    /// script may have run before its connection broke (see `CLUSTER_RETRIES` for the cluster
    /// client's own retries).
    pub(crate) fn settle<T>(&self, used: &AnyConnection, result: redis::RedisResult<T>) -> StoreResult<T> {
        result.map_err(|e| {
            if let (Conn::Sentinel(sentinel), AnyConnection::Master { generation, .. }) = (self, used) {
                if master_is_gone(&e) {
                    sentinel.forget(*generation);
                }
            }
            store_error(e)
        })
    }

    /// A fresh connection for a subscription.
    pub(crate) async fn pubsub(&self) -> StoreResult<PubSub> {
        match self {
            Conn::Single(single) => tokio::time::timeout(CONNECT_TIMEOUT, single.client.get_async_pubsub())
                .await
                .map_err(|_| timed_out("connecting for revocations"))?
                .map_err(store_error),
            Conn::Sentinel(sentinel) => sentinel.pubsub().await,
            Conn::Cluster(cluster) => cluster.pubsub().await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sentinel

/// The master of one sentinel-monitored set, found through the sentinels and found again
/// whenever its connection breaks or it answers as a replica.
pub(crate) struct SentinelConn {
    master_name: String,
    node: SentinelNodeConnectionInfo,
    /// Held while the master is being looked for, so one caller asks the sentinels and the
    /// others wait for its answer.
    resolver: tokio::sync::Mutex<Resolver>,
    current: Mutex<Option<Master>>,
}

struct Resolver {
    /// One redis-rs `Sentinel` per sentinel address rather than one for all, so that a sentinel
    /// that does not answer costs its own deadline and not the whole search.
    sentinels: Vec<Sentinel>,
    /// The sentinel asked first: the last one that named a master.
    preferred: usize,
    generation: u64,
    /// When the last search failed; callers that waited for it fail with it.
    failed_at: Option<Instant>,
}

#[derive(Clone)]
pub(crate) struct Master {
    generation: u64,
    client: redis::Client,
    conn: MultiplexedConnection,
}

impl SentinelConn {
    /// Finds the master once, so an unreachable deployment fails here.
    pub(crate) async fn connect(target: SentinelTarget) -> StoreResult<Self> {
        let sentinels = target
            .sentinels
            .into_iter()
            .map(|info| Sentinel::build(vec![info]))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Other(format!("invalid sentinel address: {:?}", e.kind())))?;
        let this = Self {
            master_name: target.master_name,
            node: SentinelNodeConnectionInfo { tls_mode: None, redis_connection_info: Some(target.master) },
            resolver: tokio::sync::Mutex::new(Resolver { sentinels, preferred: 0, generation: 0, failed_at: None }),
            current: Mutex::new(None),
        };
        this.master().await?;
        Ok(this)
    }

    fn cached(&self) -> Option<Master> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Drops the master connection `generation`, unless a newer one has replaced it already.
    pub(crate) fn forget(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|m| m.generation == generation) {
            tracing::debug!(generation, "dropping the master connection; the sentinels will be asked again");
            *current = None;
        }
    }

    pub(crate) async fn master(&self) -> StoreResult<Master> {
        if let Some(master) = self.cached() {
            return Ok(master);
        }
        let asked = Instant::now();
        let mut resolver = self.resolver.lock().await;
        if let Some(master) = self.cached() {
            return Ok(master);
        }
        if resolver.failed_at.is_some_and(|failed| failed >= asked) {
            return Err(unavailable("no master could be found through the sentinels just now"));
        }
        match self.resolve(&mut resolver).await {
            Ok(master) => {
                resolver.failed_at = None;
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(master.clone());
                Ok(master)
            }
            Err(e) => {
                resolver.failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// Asks the sentinels in turn for the master (redis-rs checks that it answers `ROLE` as a
    /// master) and connects to it.
    async fn resolve(&self, resolver: &mut Resolver) -> StoreResult<Master> {
        let deadline = Instant::now() + RESOLVE_TIMEOUT;
        let count = resolver.sentinels.len();
        let mut last = None;
        for step in 0..count {
            let i = (resolver.preferred + step) % count;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let named = tokio::time::timeout(
                left.min(PER_SENTINEL_TIMEOUT),
                resolver.sentinels[i].async_master_for(&self.master_name, Some(&self.node)),
            )
            .await;
            let client = match named {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => {
                    last = Some(store_error(e));
                    continue;
                }
                Err(_) => {
                    last = Some(timed_out("asking a sentinel for the master"));
                    continue;
                }
            };
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(RESPONSE_TIMEOUT);
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
            match tokio::time::timeout(left, client.get_multiplexed_async_connection_with_config(&config)).await {
                Ok(Ok(conn)) => {
                    resolver.preferred = i;
                    resolver.generation += 1;
                    tracing::debug!(generation = resolver.generation, "connected to the master the sentinels name");
                    return Ok(Master { generation: resolver.generation, client, conn });
                }
                Ok(Err(e)) => last = Some(store_error(e)),
                Err(_) => last = Some(timed_out("connecting to the master")),
            }
        }
        Err(last.unwrap_or_else(|| timed_out("finding the master through the sentinels")))
    }

    /// A subscription connection to the current master. A cached master that refuses it is
    /// forgotten and the sentinels are asked once more.
    async fn pubsub(&self) -> StoreResult<PubSub> {
        let mut again = true;
        loop {
            let master = self.master().await?;
            let failure = match tokio::time::timeout(CONNECT_TIMEOUT, master.client.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => return Ok(pubsub),
                Ok(Err(e)) if master_is_gone(&e) => store_error(e),
                Ok(Err(e)) => return Err(store_error(e)),
                Err(_) => timed_out("connecting to the master for revocations"),
            };
            self.forget(master.generation);
            if !std::mem::take(&mut again) {
                return Err(failure);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster

/// A cluster connection (it learns the slots, follows `MOVED`/`ASK` and reconnects to nodes by
/// itself) and the nodes a subscription may use.
pub(crate) struct ClusterConn {
    conn: ClusterConnection,
    seeds: Vec<ConnectionInfo>,
    /// The seed a subscription tries first; moves past each one used, so a subscription that
    /// ended because its node failed starts again on another.
    next_seed: AtomicUsize,
}

impl ClusterConn {
    pub(crate) async fn connect(target: ClusterTarget) -> StoreResult<Self> {
        let client = ClusterClient::builder(target.nodes.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(10)
            .max_retry_wait(500)
            .build()
            .map_err(|e| StoreError::Other(format!("invalid cluster configuration: {:?}", e.kind())))?;
        let conn = tokio::time::timeout(CLUSTER_OP_TIMEOUT, client.get_async_connection())
            .await
            .map_err(|_| timed_out("connecting to the cluster"))?
            .map_err(store_error)?;
        Ok(Self { conn, seeds: target.nodes, next_seed: AtomicUsize::new(0) })
    }

    /// A subscription on any one node: a cluster delivers every `PUBLISH` to every node. The
    /// seed nodes are tried in turn, then the nodes the cluster currently reports.
    async fn pubsub(&self) -> StoreResult<PubSub> {
        let count = self.seeds.len();
        let start = self.next_seed.load(Ordering::Relaxed);
        let mut last = None;
        for step in 0..count {
            let i = (start + step) % count;
            match subscribe_to(&self.seeds[i]).await {
                Ok(pubsub) => {
                    self.next_seed.store(i + 1, Ordering::Relaxed);
                    return Ok(pubsub);
                }
                Err(e) => last = Some(e),
            }
        }
        for node in self.reported_nodes().await {
            if self.seeds.iter().any(|seed| same_addr(seed, &node)) {
                continue;
            }
            match subscribe_to(&node).await {
                Ok(pubsub) => return Ok(pubsub),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| unavailable("no cluster node accepted a subscription")))
    }

    /// The addresses `CLUSTER SLOTS` names, with the seeds' credentials; empty if it fails.
    async fn reported_nodes(&self) -> Vec<ConnectionInfo> {
        let Some(seed) = self.seeds.first() else { return Vec::new() };
        let mut conn = self.conn.clone();
        let asked = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            conn.route_command(
                redis::cmd("CLUSTER").arg("SLOTS"),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            ),
        )
        .await;
        let Ok(Ok(Value::Array(ranges))) = asked else { return Vec::new() };
        let mut nodes: Vec<ConnectionInfo> = Vec::new();
        for range in ranges {
            let Value::Array(range) = range else { continue };
            for node in range.into_iter().skip(2) {
                let Value::Array(node) = node else { continue };
                let (Some(host), Some(port)) = (node.first(), node.get(1)) else { continue };
                let (Ok(host), Ok(port)) =
                    (redis::from_redis_value::<String>(host), redis::from_redis_value::<u16>(port))
                else {
                    continue;
                };
                if host.is_empty() || host == "?" {
                    continue;
                }
                let node = ConnectionInfo { addr: ConnectionAddr::Tcp(host, port), redis: seed.redis.clone() };
                if !nodes.iter().any(|n| same_addr(n, &node)) {
                    nodes.push(node);
                }
            }
        }
        nodes
    }
}

async fn subscribe_to(node: &ConnectionInfo) -> StoreResult<PubSub> {
    let client = redis::Client::open(node.clone()).map_err(store_error)?;
    tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| timed_out("connecting to a cluster node for revocations"))?
        .map_err(store_error)
}

fn same_addr(a: &ConnectionInfo, b: &ConnectionInfo) -> bool {
    matches!((&a.addr, &b.addr), (ConnectionAddr::Tcp(ah, ap), ConnectionAddr::Tcp(bh, bp)) if ah == bh && ap == bp)
}
