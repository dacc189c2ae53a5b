//! Bounded capture of a guest's stdout or stderr.
//!
//! Unlike wasmtime-wasi's `MemoryOutputPipe`, which traps the guest once its
//! buffer is full, a capture keeps the first `capacity` bytes and silently
//! counts the rest: chatty output must never fail a job.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A cloneable handle to one bounded output buffer.
#[derive(Debug, Clone)]
pub struct Capture {
    inner: Arc<Mutex<CaptureBuffer>>,
}

#[derive(Debug)]
struct CaptureBuffer {
    kept: BytesMut,
    capacity: usize,
    dropped: u64,
}

/// What a guest wrote to one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The first bytes written, up to the capacity.
    pub bytes: Bytes,
    /// How many further bytes were written and dropped.
    pub dropped: u64,
}

impl Capture {
    /// A capture that keeps at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(CaptureBuffer {
                kept: BytesMut::new(),
                capacity,
                dropped: 0,
            })),
        }
    }

    /// A snapshot of what has been written so far.
    pub fn captured(&self) -> Captured {
        let buffer = self.lock();
        Captured {
            bytes: buffer.kept.clone().freeze(),
            dropped: buffer.dropped,
        }
    }

    fn lock(&self) -> MutexGuard<'_, CaptureBuffer> {
        // A panic while holding this lock cannot leave the buffer inconsistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.lock();
        let room = buffer.capacity.saturating_sub(buffer.kept.len());
        let kept = room.min(bytes.len());
        buffer.kept.extend_from_slice(&bytes[..kept]);
        buffer.dropped += (bytes.len() - kept) as u64;
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always writable: excess is dropped, never refused.
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_bytes_and_counts_the_rest() {
        let capture = Capture::new(4);
        capture.append(b"abc");
        capture.append(b"defg");
        let captured = capture.captured();
        assert_eq!(&captured.bytes[..], b"abcd");
        assert_eq!(captured.dropped, 3);
    }
}
