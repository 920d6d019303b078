//! Accepting connections without letting them exhaust the coordinator.
//!
//! [`guarded`] turns a bound listener into the stream of connections the gRPC server
//! serves, with three protections:
//!
//! - **A connection limit.** At most [`MAX_CONNECTIONS`] connections are open at once; the
//!   next one is accepted only when one closes (until then it waits in the kernel's
//!   backlog, holding no descriptor of ours).
//! - **A first-byte deadline.** A connection that sends nothing within
//!   [`HANDSHAKE_TIMEOUT`] of being accepted is closed, so idle sockets opened before
//!   any authentication or TLS cannot pile up. Established connections are then watched
//!   by HTTP/2 keep-alive pings (see `Coordinator::serve`).
//! - **Back-off on descriptor exhaustion.** When `accept` fails with EMFILE or ENFILE
//!   (too many open files) the loop waits [`ACCEPT_BACKOFF`] instead of spinning, and
//!   logs it once per episode.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::warn;

/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = ladder_limits::MAX_CONNECTIONS;

/// How long a new connection may stay silent before it is closed.
pub const HANDSHAKE_TIMEOUT: Duration = ladder_limits::HANDSHAKE_TIMEOUT;

/// Pause after `accept` failed for lack of file descriptors.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The connections accepted on `listener`, within `max_connections` open at once, each
/// closed when silent for `handshake_timeout` after it was accepted.
pub fn guarded(
    listener: TcpListener,
    max_connections: usize,
    handshake_timeout: Duration,
) -> impl futures::Stream<Item = io::Result<GuardedStream>> {
    let permits = Arc::new(Semaphore::new(max_connections));
    futures::stream::unfold(
        (listener, permits, false),
        move |(listener, permits, mut exhausted)| async move {
            loop {
                let permit = permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                match listener.accept().await {
                    Ok((stream, _)) => {
                        exhausted = false;
                        let _ = stream.set_nodelay(true);
                        let guarded = GuardedStream {
                            inner: stream,
                            _permit: permit,
                            first_byte: Some(Box::pin(tokio::time::sleep(handshake_timeout))),
                        };
                        return Some((Ok(guarded), (listener, permits, exhausted)));
                    }
                    Err(error) if is_descriptor_exhaustion(&error) => {
                        if !exhausted {
                            warn!(%error, "out of file descriptors; accepting more connections after a pause");
                            exhausted = true;
                        }
                        drop(permit);
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    // The peer went away between SYN and accept, and the like: next one.
                    Err(_) => drop(permit),
                }
            }
        },
    )
}

fn is_descriptor_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// An accepted connection holding its place under the connection limit until dropped.
pub struct GuardedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Until the first byte arrives: when the connection is closed if none does.
    first_byte: Option<Pin<Box<Sleep>>>,
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let filled = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.first_byte.is_some() {
            if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > filled {
                self.first_byte = None;
            } else if polled.is_pending() {
                let deadline = self.first_byte.as_mut().expect("checked");
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing within the handshake timeout",
                    )));
                }
            }
        }
        polled
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_silent_connection_is_closed_and_the_limit_holds_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(guarded(listener, 1, Duration::from_millis(200)));

        // A silent client: its connection fails to read once the deadline passes.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut first = incoming.next().await.unwrap().unwrap();
        let mut buf = [0u8; 8];
        let error = first.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);

        // With the limit of one held by `first`, a second client is not accepted...
        let mut talker = TcpStream::connect(addr).await.unwrap();
        talker.write_all(b"hello").await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(300), incoming.next()).await;
        assert!(waiting.is_err(), "accepted beyond the limit");
        // ...until `first` closes; then it is, and a client that talks is served.
        drop(first);
        let mut second = incoming.next().await.unwrap().unwrap();
        let n = second.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        tokio::time::sleep(Duration::from_millis(300)).await;
        talker.write_all(b"more").await.unwrap();
        let n = second.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"more", "no deadline after the first byte");
    }
}
