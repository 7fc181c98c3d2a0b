//! Seeing a server's GOAWAY as it arrives.
//!
//! hyper tells its user nothing when the server sends GOAWAY: a graceful one (an API server
//! shutting down, or rebalancing with `--goaway-chance`) leaves the connection open for its
//! streams in progress, its `SendRequest` still reports it open, and a request sent on it next
//! fails with `GoAway` (unsent, but handed back without the request). The session therefore
//! reads the server's frame headers as they pass on their way to hyper (nine bytes per frame,
//! payloads skipped) and lets the connection go the moment a GOAWAY arrives: new requests open
//! the next connection at once, and requests waiting for one of its stream slots move there.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// HTTP/2 frame type of GOAWAY (RFC 9113 §6.8).
const GOAWAY: u8 = 0x7;
/// Length of an HTTP/2 frame header (RFC 9113 §4.1).
const HEADER_LEN: usize = 9;

/// Where the server's byte stream is, frame by frame.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; HEADER_LEN],
    /// Header bytes seen of the frame being read.
    filled: usize,
    /// Payload bytes of the current frame still to skip.
    payload_left: usize,
}

impl Frames {
    /// Follows `bytes` (the next bytes from the server); `true` when a GOAWAY header was among
    /// them.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut goaway = false;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min(bytes.len());
                self.payload_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (HEADER_LEN - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == HEADER_LEN {
                self.filled = 0;
                let [a, b, c, kind, ..] = self.header;
                self.payload_left = (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c);
                goaway |= kind == GOAWAY;
            }
        }
        goaway
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/2 client connection's IO that runs `on_goaway` (once) when the server's GOAWAY
    /// frame arrives, before hyper reads it.
    pub(super) struct GoAwayWatch<T, F> {
        #[pin]
        io: T,
        frames: Frames,
        on_goaway: Option<F>,
    }
}

impl<T, F: FnOnce()> GoAwayWatch<T, F> {
    pub(super) fn new(io: T, on_goaway: F) -> Self {
        Self {
            io,
            frames: Frames::default(),
            on_goaway: Some(on_goaway),
        }
    }
}

impl<T: AsyncRead, F: FnOnce()> AsyncRead for GoAwayWatch<T, F> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let read = this.io.poll_read(cx, buf);
        if this.on_goaway.is_some()
            && this.frames.feed(&buf.filled()[before..])
            && let Some(on_goaway) = this.on_goaway.take()
        {
            on_goaway();
        }
        read
    }
}

impl<T: AsyncWrite, F> AsyncWrite for GoAwayWatch<T, F> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header: `len` payload bytes of frame type `kind` on stream 0.
    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut bytes = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            0,
            0,
            0,
            0,
            0,
        ];
        bytes.extend_from_slice(payload);
        bytes
    }

    /// SETTINGS, a DATA frame whose payload looks like a GOAWAY header, a PING, then a GOAWAY.
    fn server_bytes() -> (Vec<u8>, usize) {
        let mut bytes = frame(0x4, &[0, 3, 0, 0, 0, 100]);
        bytes.extend(frame(0x0, &frame(GOAWAY, &[0; 8])));
        bytes.extend(frame(0x6, &[1; 8]));
        let goaway_at = bytes.len();
        bytes.extend(frame(GOAWAY, &[0, 0, 0, 5, 0, 0, 0, 0]));
        (bytes, goaway_at)
    }

    #[test]
    fn a_goaway_is_seen_at_its_header_however_the_bytes_are_split() {
        let (bytes, goaway_at) = server_bytes();
        for chunk in 1..=bytes.len() {
            let mut frames = Frames::default();
            let mut seen_after = None;
            for (i, piece) in bytes.chunks(chunk).enumerate() {
                if frames.feed(piece) && seen_after.is_none() {
                    seen_after = Some((i + 1) * chunk);
                }
            }
            let seen_after = seen_after.expect("the GOAWAY was not seen");
            assert!(
                seen_after >= goaway_at + HEADER_LEN && seen_after < goaway_at + HEADER_LEN + chunk,
                "chunks of {chunk}: seen after {seen_after} bytes"
            );
        }
    }

    #[test]
    fn payloads_and_other_frames_are_not_goaways() {
        let (bytes, goaway_at) = server_bytes();
        let mut frames = Frames::default();
        assert!(!frames.feed(&bytes[..goaway_at]));
        assert!(!frames.feed(&[]));
    }

    #[tokio::test]
    async fn the_watch_passes_bytes_through_and_calls_back_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let (bytes, _) = server_bytes();
        let mut twice = bytes.clone();
        twice.extend(frame(GOAWAY, &[0; 8]));
        let (mut server, client) = tokio::io::duplex(64);
        let calls = AtomicUsize::new(0);
        let mut watch = GoAwayWatch::new(client, || {
            calls.fetch_add(1, Ordering::Relaxed);
        });
        let sent = twice.clone();
        let writer = tokio::spawn(async move {
            server.write_all(&sent).await.unwrap();
            let mut echo = [0; 5];
            server.read_exact(&mut echo).await.unwrap();
            echo
        });
        let mut read = vec![0; twice.len()];
        watch.read_exact(&mut read).await.unwrap();
        watch.write_all(b"hello").await.unwrap();
        assert_eq!(read, twice);
        assert_eq!(&writer.await.unwrap(), b"hello");
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
