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
//! A flush with something to send first yields once: the tasks already queued on this thread
//! (other calls on this connection finishing their answers) run, and their answers leave in the
//! same write. Under load a connection otherwise sent each unary answer on its own (0.92 sends
//! an answer at 64 calls in flight on 8 connections; 0.15 with the yield), and on loopback each
//! send also carries the receiving side's work. An idle server pays one trip through the run
//! queue.
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
//! (`ENHANCE_YOUR_CALM`, "too many connections"), so that its call fails at once rather than
//! waiting in the listen queue, and is closed; it is counted in
//! `tessera_grpc_connections_refused_total`, and logged at most every 10 seconds. A
//! connection that has not sent HTTP/2's client preface within 10 seconds is closed, so that
//! sockets that never speak (or speak a byte and stop) cannot keep the places of callers that
//! do; after the preface, HTTP/2 keepalive ends a peer that stops answering. When the process runs out of file
//! descriptors (or socket memory), the port pauses accepting for 100 ms and tries again, where
//! tonic's accept loop would stop for good.

use crate::observe::Metrics;
use futures::future::Either;
use futures::{Stream, StreamExt as _};
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tessera_telemetry::metrics::prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpIncoming};

/// Idle time before TCP keepalive probes start.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// Bytes gathered at most; larger writes go straight to the socket. A few answers' worth, and
/// a small part of what each connection's socket buffers already hold.
const WRITE_BUFFER: usize = 4096;

/// How often a full port logs that it refuses connections, or a process out of file
/// descriptors that it cannot accept.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How long a new connection has to send its HTTP/2 preface before it is closed.
pub const PREFACE_WITHIN: Duration = Duration::from_secs(10);

/// A client's preface as far as the deadline waits for it: the 24-byte connection preface and
/// the header of the SETTINGS frame that follows it (RFC 9113 §3.4).
const PREFACE_BYTES: usize = 24 + 9;

/// How long the port pauses when an accept fails for want of a resource.
const EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);

/// Refused connections that may wait at once for their peers to close, and how long each.
const LINGERING: usize = 64;
const LINGER: Duration = Duration::from_secs(1);

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
    /// Whether the flush under way has yielded once already.
    yielded: bool,
    /// This connection's place under the bound, given back when it closes.
    _place: Place,
    /// Until the peer's preface has arrived: how much of it is still to come, and when the
    /// connection is closed if it has not.
    preface: Option<(usize, Pin<Box<tokio::time::Sleep>>)>,
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
/// open at once, each closed if its HTTP/2 preface has not arrived within `preface_within`.
pub fn accept(
    listener: TcpListener,
    max_connections: usize,
    preface_within: Duration,
    metrics: Arc<Metrics>,
) -> anyhow::Result<impl Stream<Item = io::Result<BufferedWrites>>> {
    // The server builder's own keepalive setting applies only to listeners it binds itself.
    let incoming = TcpIncoming::from_listener(listener, true, Some(KEEPALIVE))
        .map_err(|e| anyhow::anyhow!("configuring the gRPC listener: {e}"))?;
    let places = Arc::new(Semaphore::new(max_connections));
    let lingering = Arc::new(Semaphore::new(LINGERING));
    let (mut refusals, mut exhaustions) = (Occasionally::default(), Occasionally::default());
    Ok(incoming.filter_map(move |accepted| {
        let admitted = match accepted {
            Err(e) if out_of_resources(&e) => {
                if let Some(failed) = exhaustions.count() {
                    tracing::error!(
                        error = %e,
                        failed_since_last_log = failed,
                        "the gRPC port cannot accept connections: the process is out of file descriptors or socket memory"
                    );
                }
                return Either::Right(async {
                    tokio::time::sleep(EXHAUSTED_PAUSE).await;
                    None
                });
            }
            Err(e) => Some(Err(e)),
            Ok(tcp) => match Arc::clone(&places).try_acquire_owned() {
                Ok(permit) => Some(Ok(BufferedWrites {
                    tcp,
                    gathered: Vec::new(),
                    yielded: false,
                    _place: Place::new(permit, metrics.grpc_connections.clone()),
                    preface: Some((PREFACE_BYTES, Box::pin(tokio::time::sleep(preface_within)))),
                })),
                Err(_) => {
                    metrics.grpc_connections_refused.inc();
                    if let Some(refused) = refusals.count() {
                        tracing::warn!(
                            max_connections,
                            refused_since_last_log = refused,
                            "the gRPC port holds grpc.max_connections connections: refusing new ones"
                        );
                    }
                    refuse(tcp, &lingering);
                    None
                }
            },
        };
        Either::Left(std::future::ready(admitted))
    }))
}

/// Whether an accept failed for want of a resource of the process or the machine.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Counts events, and says when one of them should be logged: the first, then the first after
/// each [`LOG_INTERVAL`] (with how many there were since the last line logged).
#[derive(Default)]
struct Occasionally {
    last_logged: Option<Instant>,
    since_logged: u64,
}

impl Occasionally {
    fn count(&mut self) -> Option<u64> {
        self.since_logged += 1;
        if self.last_logged.is_some_and(|at| at.elapsed() < LOG_INTERVAL) {
            return None;
        }
        self.last_logged = Some(Instant::now());
        Some(std::mem::take(&mut self.since_logged))
    }
}

/// Tells a connection refused at the bound why and closes it. Closing a socket whose peer
/// is still sending resets the connection, and the peer may then lose the GOAWAY; so, while
/// fewer than [`LINGERING`] refused connections wait, this one closes its side after the
/// GOAWAY and waits up to [`LINGER`] for its peer to close, discarding what it sends. Beyond
/// that it is closed at once: the peer sees a failed connection either way.
fn refuse(tcp: TcpStream, lingering: &Arc<Semaphore>) {
    let _ = tcp.try_write(REFUSAL);
    let Ok(place) = Arc::clone(lingering).try_acquire_owned() else { return };
    tokio::spawn(async move {
        let _place = place;
        let mut tcp = tcp;
        let _ = tcp.shutdown().await;
        let mut sink = [0u8; 1024];
        let drained = async { while let Ok(1..) = tcp.read(&mut sink).await {} };
        let _ = tokio::time::timeout(LINGER, drained).await;
    });
}

impl Connected for BufferedWrites {
    type ConnectInfo = <TcpStream as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

impl AsyncRead for BufferedWrites {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut me.tcp).poll_read(cx, buf);
        if let Some((awaited, deadline)) = &mut me.preface {
            match read {
                Poll::Ready(Ok(())) => {
                    *awaited = awaited.saturating_sub(buf.filled().len() - before);
                    if *awaited == 0 {
                        me.preface = None;
                    }
                }
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer did not send its HTTP/2 preface in time",
                    )));
                }
                _ => {}
            }
        }
        read
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
        if !me.gathered.is_empty() && !me.yielded {
            // Woken at once: the task goes to the back of its thread's run queue, behind the
            // calls that may have answers to add to this write.
            me.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(me.poll_send_gathered(cx))?;
        me.yielded = false;
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

    #[tokio::test]
    async fn an_accepted_connection_keeps_its_peer_declines_vectored_writes_and_sends_at_the_flush() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut accepted = Box::pin(accept(listener, 16, PREFACE_WITHIN, metrics).unwrap());
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

        // A flush with something to send yields once (and wakes its task to come back at
        // once); what is written meanwhile leaves with it, in one send.
        struct Wakes(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Wakes {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let wakes = Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        conn.write_all(b"one answer, ").await.unwrap();
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_pending());
        assert_eq!(
            wakes.0.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "a yield that nobody wakes would hang the connection"
        );
        conn.write_all(b"and another").await.unwrap();
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_ready());
        let mut both = [0u8; 23];
        client.read_exact(&mut both).await.unwrap();
        assert_eq!(&both, b"one answer, and another");
        // With nothing to send, a flush does not yield.
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_ready());

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

    /// A gRPC health service on a port of its own, behind [`accept`] with these bounds.
    async fn serve_health(
        max_connections: usize,
        preface_within: Duration,
    ) -> (std::net::SocketAddr, Arc<Metrics>, tokio::task::JoinHandle<Result<(), tonic::transport::Error>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let incoming = accept(listener, max_connections, preface_within, Arc::clone(&metrics)).unwrap();
        let (_, health) = tonic_health::server::health_reporter();
        let server =
            tokio::spawn(tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming));
        (addr, metrics, server)
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
        let (addr, metrics, _) = serve_health(2, PREFACE_WITHIN).await;

        let first = health_check(addr).await.expect("the first connection is served");
        let _second = health_check(addr).await.expect("the second connection is served");
        assert!(metrics.render().contains("tessera_grpc_connections 2"), "{}", metrics.render());

        // One more is refused: the call fails at once (tonic reports CANCELLED when the GOAWAY
        // came before the call's stream opened, RESOURCE_EXHAUSTED after; never a broken pipe,
        // as the refused connection waits for its peer to close), and a raw client reads the
        // GOAWAY's reason.
        let refused = health_check(addr).await.expect_err("a third connection was served");
        assert!(
            matches!(
                refused.code(),
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::ResourceExhausted
            ),
            "{refused:?}"
        );
        let refused_before = metrics.grpc_connections_refused.get();
        assert!(refused_before >= 1, "the gRPC client's connection was not counted");
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let mut told = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut told)).await.unwrap().unwrap();
        assert_eq!(told, REFUSAL, "a refused connection is told why, then closed");
        // Read as frames: an empty SETTINGS on stream 0, then a GOAWAY on stream 0 that
        // processed no stream, ENHANCE_YOUR_CALM, with its reason.
        assert_eq!(told[..9], [0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        let length = usize::from(told[9]) << 16 | usize::from(told[10]) << 8 | usize::from(told[11]);
        assert_eq!((length, told[12], told[13]), (told.len() - 18, 0x7, 0));
        assert_eq!(told[14..22], [0; 8], "stream 0, last stream 0");
        assert_eq!(told[22..26], [0, 0, 0, 0xb]);
        assert_eq!(&told[26..], b"too many connections");
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

    #[tokio::test]
    async fn a_connection_without_its_preface_is_closed_and_gives_its_place_back() {
        let (addr, metrics, _) = serve_health(1, Duration::from_millis(300)).await;

        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut got = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut got)).await;
        assert!(closed.is_ok(), "a silent connection was kept");
        // A part of the preface is not enough.
        let mut halting = TcpStream::connect(addr).await.unwrap();
        halting.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), halting.read_to_end(&mut got)).await;
        assert!(closed.is_ok(), "a connection that stopped inside its preface was kept");
        let channel = health_check(addr).await.expect("the silent connections' place was not given back");
        // One that speaks is kept past the deadline.
        tokio::time::sleep(Duration::from_millis(600)).await;
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.unwrap();
        assert_eq!(metrics.grpc_connections.get(), 1);
    }

    #[tokio::test]
    async fn the_port_keeps_accepting_after_the_process_ran_out_of_file_descriptors() {
        let (addr, metrics, server) = serve_health(1000, PREFACE_WITHIN).await;
        let _warm = health_check(addr).await.unwrap();

        // This test runs in a process of its own (nextest): lower its open-file limit to a few
        // more than it holds (with util-linux's prlimit), and connect until no descriptor is
        // left for the server to accept with.
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
        let (soft, hard): (u64, u64) = match line.split_whitespace().collect::<Vec<_>>()[3..5] {
            [soft, hard] => (soft.parse().unwrap(), hard.parse().unwrap()),
            _ => unreachable!(),
        };
        let set_limit = |soft: u64| {
            let pid = std::process::id().to_string();
            let status = std::process::Command::new("prlimit")
                .args(["--pid", &pid, &format!("--nofile={soft}:{hard}")])
                .status()
                .expect("running prlimit (util-linux)");
            assert!(status.success());
        };
        set_limit(open as u64 + 16);
        let mut clients = Vec::new();
        while clients.len() < 64 {
            match std::net::TcpStream::connect(addr) {
                Ok(c) => clients.push(c),
                Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let accepted = usize::try_from(metrics.grpc_connections.get()).unwrap();
        assert!(accepted < clients.len() + 1, "every connection was accepted: the limit was never reached");
        drop(clients);
        set_limit(soft);

        assert!(!server.is_finished(), "the accept loop stopped");
        health_check(addr).await.expect("the port no longer accepts");
    }
}
