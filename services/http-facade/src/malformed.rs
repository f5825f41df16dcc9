//! Requests that actix-http's HTTP/1 parser refuses get the facade's JSON error too.
//!
//! A request whose head does not parse (a bad or repeated `Content-Length`, a NUL in a header,
//! a garbage request line) or whose header section outgrows the parser's buffer never reaches
//! the App: in actix-http 3.20.0 the dispatcher (`src/h1/dispatcher.rs`, `poll_request`, the
//! `ParseError::TooLarge` arm and the catch-all `Err(err)` arm below it) queues a hard-coded
//! `Response::with_body(431, ())` or `Response::bad_request().drop_body()`, which no
//! middleware, `ErrorHandlers` or other hook sees, and closes the connection. So the answer is
//! replaced one level down, on the bytes: every accepted connection is wrapped in
//! [`JsonRefusals`], whose write side recognises the head of that answer and writes the JSON
//! answer in its place. Nothing here parses requests.
//!
//! Why recognising it is exact:
//! - The dispatcher encodes that head in one piece at the end of its write buffer, and nothing
//!   follows it: it has stopped reading (`READ_DISCONNECT`) and next shuts the connection down.
//!   Every `poll_write` is handed the whole unwritten rest of that buffer (`poll_flush`). So the
//!   head is always complete and always at the very end of the bytes one write is given, after
//!   the rest of any earlier (pipelined) answer: it is found in constant time, with no
//!   buffering, and any other write goes straight to the socket, uncopied.
//! - Its bytes are fixed: `HTTP/1.x 400 Bad Request` or `HTTP/1.x 431 Request Header Fields Too
//!   Large`, `content-length: 0`, perhaps a `connection` line, `date`, the empty line. No answer
//!   of the App ends like that. Every one carries `x-content-type-options` and `x-frame-options`
//!   (`DefaultHeaders` in lib.rs), and every 4xx of the App has a JSON or HTML body: `ApiError`,
//!   `BearerError`, the pages, and `json_errors` for anything else: `grep -rn 'finish()' src/`
//!   finds only redirects, the 200 of `/oauth2/revoke`, cookie builders and a `Debug` impl. Nor
//!   does a body end in a raw CRLF CRLF: JSON escapes control characters, pages end with their
//!   template's closing tag, and the stylesheet and metrics end in a plain newline.

use crate::error::ErrorBody;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tessera_core::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The status lines the dispatcher's refusals may carry (the version is that of the last
/// request it parsed on the connection, HTTP/1.1 before any) and what the JSON answer says.
const REFUSALS: [(&[u8], &str); 2] = [
    (b"400 Bad Request", "the HTTP request is malformed"),
    (b"431 Request Header Fields Too Large", "the request header section is too large"),
];
const VERSIONS: [&[u8]; 2] = [b"HTTP/1.1 ", b"HTTP/1.0 "];
/// The length of an IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`.
const DATE_LEN: usize = 29;

/// A refusal head found at the end of a write.
#[derive(Debug, PartialEq)]
struct Refusal<'a> {
    /// Where the head starts in the write.
    start: usize,
    version: &'a [u8],
    status: &'a [u8],
    description: &'static str,
    date: &'a [u8],
}

/// The dispatcher's refusal head, if `buf` ends with one.
fn refusal(buf: &[u8]) -> Option<Refusal<'_>> {
    // `date` is the last header actix writes, then the empty line.
    let rest = buf.strip_suffix(b"\r\n\r\n")?;
    let (rest, date) = rest.split_at(rest.len().checked_sub(DATE_LEN)?);
    if !date.ends_with(b" GMT") {
        return None;
    }
    let rest = rest.strip_suffix(b"date: ")?;
    let rest = [b"connection: close\r\n".as_slice(), b"connection: keep-alive\r\n"]
        .into_iter()
        .find_map(|line| rest.strip_suffix(line))
        .unwrap_or(rest);
    let rest = rest.strip_suffix(b"\r\ncontent-length: 0\r\n")?;
    let (status, description) = REFUSALS.into_iter().find(|(status, _)| rest.ends_with(status))?;
    let rest = &rest[..rest.len() - status.len()];
    let version = VERSIONS.into_iter().find(|v| rest.ends_with(v))?;
    Some(Refusal { start: rest.len() - version.len(), version, status, description, date })
}

/// The JSON answer that replaces a refusal: same status and date, the body and headers of
/// every other error of the facade, and the connection closed as the dispatcher will close it.
fn answer(r: &Refusal<'_>) -> Option<Vec<u8>> {
    let body = serde_json::to_vec(&ErrorBody {
        error: ErrorCode::InvalidRequest.as_str().to_owned(),
        error_description: r.description.to_owned(),
    })
    .ok()?;
    let mut out = Vec::with_capacity(320 + body.len());
    for part in [
        r.version,
        r.status,
        b"\r\ncontent-type: application/json\r\ncontent-length: ",
        body.len().to_string().as_bytes(),
        b"\r\ncache-control: no-store\r\npragma: no-cache\r\nx-content-type-options: nosniff\r\n",
        b"x-frame-options: DENY\r\nconnection: close\r\ndate: ",
        r.date,
        b"\r\n\r\n",
        &body,
    ] {
        out.extend_from_slice(part);
    }
    Some(out)
}

/// A connection whose parser refusals are answered as JSON (see the module's documentation).
/// Reads pass through; so does every write that does not end with a refusal head.
#[derive(Debug)]
pub struct JsonRefusals<T> {
    io: T,
    /// The JSON answer accepted in place of a refusal head, and how much of it is sent.
    answer: Vec<u8>,
    sent: usize,
}

impl<T> JsonRefusals<T> {
    pub fn new(io: T) -> Self {
        Self { io, answer: Vec::new(), sent: 0 }
    }
}

impl<T: AsyncWrite + Unpin> JsonRefusals<T> {
    /// Sends what is left of the JSON answer.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.answer.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.answer[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonRefusals<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        let Some(r) = refusal(buf) else {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        };
        if r.start > 0 {
            // What precedes the head (the end of a pipelined answer) goes first, as it is; the
            // dispatcher then writes again from where this stopped, the head still at the end.
            return Pin::new(&mut this.io).poll_write(cx, &buf[..r.start]);
        }
        match answer(&r) {
            Some(answer) => {
                // The head counts as written, as in a buffered writer; the answer goes out on
                // the flush the dispatcher makes after every write (or on the shutdown).
                this.answer = answer;
                this.sent = 0;
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut this.io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonRefusals<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    /// A socket that takes at most `chunk` bytes per write, so every write is partial.
    struct Trickle {
        chunk: usize,
        written: Vec<u8>,
        writes: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.chunk);
            this.written.extend_from_slice(&buf[..n]);
            this.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn head(status_line: &str, connection: &str) -> String {
        format!("{status_line}\r\ncontent-length: 0\r\n{connection}date: {DATE}\r\n\r\n")
    }

    /// What `chunk`-byte writes of `bytes` put on the wire, written as the dispatcher does:
    /// the whole rest of its buffer each time, then a flush.
    async fn through(bytes: &[u8], chunk: usize) -> Vec<u8> {
        let mut conn = JsonRefusals::new(Trickle { chunk, written: vec![], writes: 0 });
        conn.write_all(bytes).await.unwrap();
        conn.flush().await.unwrap();
        conn.io.written
    }

    fn json_answer(wire: &[u8]) -> (String, serde_json::Value) {
        let text = std::str::from_utf8(wire).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.parse().ok())
            .expect("a content-length");
        assert_eq!(length, body.len(), "{text}");
        (head.to_owned(), serde_json::from_str(body).unwrap())
    }

    #[tokio::test]
    async fn each_refusal_head_becomes_the_json_answer_whole_or_trickled() {
        let cases = [
            ("HTTP/1.1 400 Bad Request", "", "the HTTP request is malformed"),
            ("HTTP/1.1 400 Bad Request", "connection: close\r\n", "the HTTP request is malformed"),
            ("HTTP/1.0 400 Bad Request", "connection: keep-alive\r\n", "the HTTP request is malformed"),
            ("HTTP/1.1 431 Request Header Fields Too Large", "", "the request header section is too large"),
        ];
        for (status_line, connection, description) in cases {
            for chunk in [1, 7, 4096] {
                let wire = through(head(status_line, connection).as_bytes(), chunk).await;
                let (head, json) = json_answer(&wire);
                assert!(head.starts_with(&format!("{status_line}\r\n")), "{head}");
                for line in [
                    "content-type: application/json",
                    "cache-control: no-store",
                    "connection: close",
                    "x-content-type-options: nosniff",
                    &format!("date: {DATE}"),
                ] {
                    assert!(head.lines().any(|l| l == line), "{line} missing from {head}");
                }
                assert_eq!(json["error"], "invalid_request");
                assert_eq!(json["error_description"], description);
            }
        }
    }

    #[tokio::test]
    async fn a_pipelined_answer_before_the_refusal_is_sent_as_it_is() {
        let ok = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: {DATE}\r\n\r\nok");
        let bytes = format!("{ok}{}", head("HTTP/1.1 400 Bad Request", ""));
        for chunk in [1, 5, 4096] {
            let wire = through(bytes.as_bytes(), chunk).await;
            assert!(wire.starts_with(ok.as_bytes()));
            let (_, json) = json_answer(&wire[ok.len()..]);
            assert_eq!(json["error_description"], "the HTTP request is malformed");
        }
    }

    #[tokio::test]
    async fn anything_else_passes_through_in_one_uncut_write() {
        let cases = [
            // An App error: its own headers and a body.
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\
                 date: {DATE}\r\n\r\n{{}}"
            ),
            // An empty answer with any other status, or another header.
            head("HTTP/1.1 408 Request Timeout", "connection: close\r\n"),
            head("HTTP/1.1 400 Bad Request", "x-frame-options: DENY\r\n"),
            // A head alone, its body to follow.
            format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: {DATE}\r\n\r\n"),
            // Not a date.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: 12345678901234567890123456789\r\n\r\n".to_owned(),
            String::new(),
        ];
        for bytes in cases {
            assert_eq!(refusal(bytes.as_bytes()), None, "{bytes:?}");
            let mut conn = JsonRefusals::new(Trickle { chunk: usize::MAX, written: vec![], writes: 0 });
            conn.write_all(bytes.as_bytes()).await.unwrap();
            conn.flush().await.unwrap();
            assert_eq!(conn.io.written, bytes.as_bytes());
            assert!(conn.io.writes <= 1);
        }
    }

    #[test]
    fn the_head_is_found_only_at_the_very_end() {
        let h = head("HTTP/1.1 431 Request Header Fields Too Large", "connection: close\r\n");
        let r = refusal(format!("xyz{h}").as_bytes()).map(|r| (r.start, r.description));
        assert_eq!(r, Some((3, "the request header section is too large")));
        assert_eq!(refusal(format!("{h}x").as_bytes()), None);
        assert_eq!(refusal(&h.as_bytes()[1..]), None);
    }
}
