//! The gRPC port's connections: accepted with TCP_NODELAY (without it every unary answer waits
//! out the peer's delayed ACK, about 40 ms) and TCP keepalive (a peer whose host vanished is
//! found), and written to as follows.
//!
//! h2 sends a DATA payload larger than 256 bytes from its own buffer, by vectored write, when
//! the connection says it supports vectored writes; and while such a payload waits, nothing
//! else can be queued behind it. A unary answer is HEADERS, one DATA and the trailers: with a
//! token in it (about 500 bytes), every answer took two `writev`s, the second one for the
//! 10-byte trailers. A connection that declines vectored writes makes h2 copy payloads of up
//! to 1 KiB into its buffer instead, so that an answer, and the answers ready with it, leave in
//! one write. Larger payloads (a JWK Set, a page of revocations) are still sent from their own
//! buffers.

use futures::{Stream, StreamExt as _};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpIncoming};

/// A connection that declines vectored writes; everything else is the inner connection's.
pub struct CopyingWrites<T>(T);

/// Idle time before TCP keepalive probes start.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// The connections `listener` accepts, each as [`CopyingWrites`].
pub fn accept(listener: TcpListener) -> anyhow::Result<impl Stream<Item = io::Result<CopyingWrites<TcpStream>>>> {
    // The server builder's own keepalive setting applies only to listeners it binds itself.
    let incoming = TcpIncoming::from_listener(listener, true, Some(KEEPALIVE))
        .map_err(|e| anyhow::anyhow!("configuring the gRPC listener: {e}"))?;
    Ok(incoming.map(|accepted| accepted.map(CopyingWrites)))
}

impl<T: Connected> Connected for CopyingWrites<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CopyingWrites<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CopyingWrites<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn an_accepted_connection_has_nodelay_and_keepalive_keeps_its_peer_and_declines_vectored_writes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Box::pin(accept(listener).unwrap());
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut conn = accepted.next().await.unwrap().unwrap();
        assert!(conn.0.nodelay().unwrap());
        assert!(socket2::SockRef::from(&conn.0).keepalive().unwrap());

        // The peer's address is what the throttles key anonymous input by.
        assert_eq!(conn.connect_info().remote_addr(), Some(client.local_addr().unwrap()));
        assert!(!conn.is_write_vectored());
        assert!(client.is_write_vectored(), "the inner connection would have taken vectored writes");

        conn.write_all(b"answer").await.unwrap();
        conn.flush().await.unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"answer");
        client.write_all(b"ask").await.unwrap();
        let mut asked = [0u8; 3];
        conn.read_exact(&mut asked).await.unwrap();
        assert_eq!(&asked, b"ask");
    }
}
