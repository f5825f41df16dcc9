//! The gRPC port's connections: accepted with TCP_NODELAY (without it every unary answer waits
//! out the peer's delayed ACK, about 40 ms) and TCP keepalive (the operating system's check
//! under HTTP/2's own keepalive pings), and written to through a buffer, for this reason:
//!
//! On a connection that takes vectored writes, h2 sends a DATA payload of 256 bytes or more
//! from the payload's own buffer, and while it waits nothing else can be queued behind it, so
//! h2 flushes first. A unary answer is HEADERS, one DATA and the trailers: with a token in it
//! (about 500 bytes; well over 1 KiB with an ID token) every answer took two `writev`s, the
//! second for the 10-byte trailers alone. These connections decline vectored writes, and h2
//! then copies a payload under 1 KiB into its buffer, behind which the trailers and other
//! answers queue: one write an answer. A larger payload h2 still sends in two parts (what fits
//! its buffer, then the rest) before it flushes; beneath it the connection gathers the parts
//! until that flush, so such an answer takes two writes, as before, not three. A write as large
//! as the gathering buffer (a page of revocations, say) bypasses it.
//!
//! The gathering buffer exists only between a write and its flush (tokio's `BufWriter` would
//! keep 4 KiB for every connection from the moment it is accepted: 3,000 idle HTTP/2
//! connections cost 13.5 KiB each with it, 9.4 KiB without).
//!
//! h2 must write to this directly: a layer between them (TLS, were it ever added here) would
//! need to go beneath it.
//!
//! Bounded (DESIGN.md rule 8): the port holds at most `grpc.max_connections` connections at
//! once. One more is refused as it arrives: it gets HTTP/2's SETTINGS and a GOAWAY
//! (`ENHANCE_YOUR_CALM`, "too many connections"), so that its call fails at once (grpc-go
//! reports UNAVAILABLE; tonic CANCELLED, "connection closed") rather than waiting in the
//! listen queue, and is closed; it is counted in
//! `tessera_grpc_connections_refused_total`, and logged at most every 10 seconds.

use crate::observe::Metrics;
use futures::{Stream, StreamExt as _};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tessera_telemetry::metrics::prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpIncoming};

/// Idle time before TCP keepalive probes start.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// Bytes gathered at most; larger writes go straight to the socket. A few answers' worth, and
/// a small part of what each connection's socket buffers already hold.
const WRITE_BUFFER: usize = 4096;

/// How often a full port logs that it refuses connections.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What a connection refused at the bound is sent before it is closed: the server's HTTP/2
/// preface (an empty SETTINGS frame) and a GOAWAY with no stream processed, error code
/// ENHANCE_YOUR_CALM (RFC 9113 §6.8, §7) and a reason.
const REFUSAL: &[u8] = b"\0\0\0\x04\0\0\0\0\0\
    \0\0\x1c\x07\0\0\0\0\0\
    \0\0\0\0\0\0\0\x0btoo many connections";

/// An accepted connection that declines vectored writes and gathers what is written until
/// the flush.
pub struct BufferedWrites {
    tcp: TcpStream,
    /// Written and not yet sent; empty, and without an allocation, after each flush.
    gathered: Vec<u8>,
    /// This connection's place under the bound, given back when it closes.
    _place: Place,
}

/// A connection's place under the port's bound, counted in the open-connections gauge while
/// it is held.
struct Place {
    _permit: OwnedSemaphorePermit,
    open: IntGauge,
}

impl Place {
    fn new(permit: OwnedSemaphorePermit, open: IntGauge) -> Self {
        open.inc();
        Self { _permit: permit, open }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl BufferedWrites {
    /// Sends what was gathered, and lets its memory go.
    fn poll_send_gathered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.gathered.is_empty() {
            let sent = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.gathered))?;
            if sent == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.gathered.drain(..sent);
        }
        self.gathered = Vec::new();
        Poll::Ready(Ok(()))
    }
}

/// The connections `listener` accepts, each as [`BufferedWrites`], at most `max_connections`
/// open at once.
pub fn accept(
    listener: TcpListener,
    max_connections: usize,
    metrics: Arc<Metrics>,
) -> anyhow::Result<impl Stream<Item = io::Result<BufferedWrites>>> {
    // The server builder's own keepalive setting applies only to listeners it binds itself.
    let incoming = TcpIncoming::from_listener(listener, true, Some(KEEPALIVE))
        .map_err(|e| anyhow::anyhow!("configuring the gRPC listener: {e}"))?;
    let places = Arc::new(Semaphore::new(max_connections));
    let mut refusals = Refusals { last_logged: None, since_logged: 0 };
    Ok(incoming.filter_map(move |accepted| {
        let admitted = match accepted {
            Err(e) => Some(Err(e)),
            Ok(tcp) => match Arc::clone(&places).try_acquire_owned() {
                Ok(permit) => Some(Ok(BufferedWrites {
                    tcp,
                    gathered: Vec::new(),
                    _place: Place::new(permit, metrics.grpc_connections.clone()),
                })),
                Err(_) => {
                    metrics.grpc_connections_refused.inc();
                    refusals.note(max_connections);
                    refuse(tcp);
                    None
                }
            },
        };
        std::future::ready(admitted)
    }))
}

/// Refusals since the last log line.
struct Refusals {
    last_logged: Option<Instant>,
    since_logged: u64,
}

impl Refusals {
    fn note(&mut self, max_connections: usize) {
        self.since_logged += 1;
        if self.last_logged.is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL) {
            return;
        }
        tracing::warn!(
            max_connections,
            refused = self.since_logged,
            "the gRPC port holds grpc.max_connections connections: refusing new ones"
        );
        self.last_logged = Some(Instant::now());
        self.since_logged = 0;
    }
}

/// Tells a connection refused at the bound why, as far as its socket takes it without
/// waiting, and closes it.
fn refuse(tcp: TcpStream) {
    let _ = tcp.try_write(REFUSAL);
    // Dropping the socket closes it; what the peer sent unread may turn the close into a reset,
    // which a client reports as UNAVAILABLE all the same.
    drop(tcp);
}

impl Connected for BufferedWrites {
    type ConnectInfo = <TcpStream as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

impl AsyncRead for BufferedWrites {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for BufferedWrites {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.gathered.len() + buf.len() > WRITE_BUFFER {
            ready!(me.poll_send_gathered(cx))?;
        }
        if buf.len() >= WRITE_BUFFER {
            return Pin::new(&mut me.tcp).poll_write(cx, buf);
        }
        me.gathered.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_send_gathered(cx))?;
        Pin::new(&mut me.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_send_gathered(cx))?;
        Pin::new(&mut me.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn an_accepted_connection_keeps_its_peer_declines_vectored_writes_and_sends_at_the_flush() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Box::pin(accept(listener, 16, Arc::new(Metrics::new().unwrap())).unwrap());
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut conn = accepted.next().await.unwrap().unwrap();
        assert!(!conn.is_write_vectored());
        let socket = &conn.tcp;
        assert!(socket.nodelay().unwrap());
        assert_eq!(socket2::SockRef::from(socket).keepalive_time().unwrap(), KEEPALIVE);

        // The peer's address is what the throttles key anonymous input by.
        assert_eq!(conn.connect_info().remote_addr(), Some(client.local_addr().unwrap()));

        // An answer in parts, as h2 writes a large one: nothing leaves until the flush, then
        // all of it.
        let payload = vec![b'x'; 1500];
        conn.write_all(b"head").await.unwrap();
        conn.write_all(&payload).await.unwrap();
        conn.write_all(b"trailers").await.unwrap();
        let mut early = [0u8; 1];
        let nothing = tokio::time::timeout(Duration::from_millis(50), client.read(&mut early)).await;
        assert!(nothing.is_err(), "a write left before the flush");
        conn.flush().await.unwrap();
        assert_eq!(conn.gathered.capacity(), 0, "the gathered answer's memory outlived its flush");
        let mut got = vec![0u8; 1512];
        client.read_exact(&mut got).await.unwrap();
        assert!(got.starts_with(b"head") && got.ends_with(b"trailers") && got[4..1504] == payload[..]);

        // Larger than the buffer: straight through.
        let big = vec![b'y'; WRITE_BUFFER * 2];
        conn.write_all(&big).await.unwrap();
        conn.flush().await.unwrap();
        let mut got = vec![0u8; big.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);

        client.write_all(b"ask").await.unwrap();
        let mut asked = [0u8; 3];
        conn.read_exact(&mut asked).await.unwrap();
        assert_eq!(&asked, b"ask");
    }

    /// A gRPC health check over a new connection to `addr`.
    async fn health_check(addr: std::net::SocketAddr) -> Result<tonic::transport::Channel, tonic::Status> {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        HealthClient::new(channel.clone()).check(HealthCheckRequest { service: String::new() }).await?;
        Ok(channel)
    }

    #[tokio::test]
    async fn the_port_holds_at_most_its_bound_and_refuses_one_more_with_a_goaway() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let incoming = accept(listener, 2, Arc::clone(&metrics)).unwrap();
        let (_, health) = tonic_health::server::health_reporter();
        tokio::spawn(tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming));

        let first = health_check(addr).await.expect("the first connection is served");
        let _second = health_check(addr).await.expect("the second connection is served");
        assert!(metrics.render().contains("tessera_grpc_connections 2"), "{}", metrics.render());

        // One more is refused: the call fails at once (tonic reports the closed connection as
        // CANCELLED), and a raw client reads the GOAWAY's reason.
        let refused = health_check(addr).await.expect_err("a third connection was served");
        assert!(matches!(refused.code(), tonic::Code::Unavailable | tonic::Code::Cancelled), "{refused:?}");
        let refused_before = metrics.grpc_connections_refused.get();
        assert!(refused_before >= 1, "the gRPC client's connection was not counted");
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let mut told = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut told)).await.unwrap().unwrap();
        assert_eq!(told, REFUSAL, "a refused connection is told why, then closed");
        assert_eq!(&told[9..13], b"\0\0\x1c\x07", "a GOAWAY of 28 bytes follows the SETTINGS");
        assert_eq!(metrics.grpc_connections_refused.get(), refused_before + 1);
        assert!(metrics.render().contains("tessera_grpc_connections_refused_total "), "{}", metrics.render());

        // A connection that closes gives its place back.
        drop(first);
        let mut served = None;
        for _ in 0..100 {
            if let Ok(channel) = health_check(addr).await {
                served = Some(channel);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served.is_some(), "the place of a closed connection was not given back");
        assert!(metrics.render().contains("tessera_grpc_connections 2"), "{}", metrics.render());
    }
}
