//! A loopback TCP proxy that fails a service partway through a sequence of
//! calls, for tests of what a client reports when its backend goes away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A proxy to `upstream` (`host:port`) that passes the first `passes`
/// requests containing `marker` (and everything else) and cuts the
/// connection of each later one, as a backend that goes away would. Its
/// address.
///
/// A request is recognised by one read: on loopback a client's request of
/// a few kilobytes arrives in one.
pub async fn cutting_after(upstream: &str, marker: &'static [u8], passes: usize) -> SocketAddr {
    let upstream = upstream.to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let (upstream, seen) = (upstream.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut from_client, mut to_client) = inbound.into_split();
                let (mut from_upstream, mut to_upstream) = outbound.into_split();
                let answers = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_upstream, &mut to_client).await;
                });
                let mut buffer = vec![0; 64 * 1024];
                while let Ok(read) = from_client.read(&mut buffer).await {
                    let request = &buffer[..read];
                    let marked = request.windows(marker.len()).any(|window| window == marker);
                    if read == 0 || (marked && seen.fetch_add(1, Ordering::SeqCst) >= passes) {
                        break;
                    }
                    if to_upstream.write_all(request).await.is_err() {
                        break;
                    }
                }
                answers.abort();
            });
        }
    });
    address
}
