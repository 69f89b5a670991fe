//! The agent's DNS transport: the sockets, and no DNS beyond what framing needs. It binds UDP
//! and TCP on the listen address and hands every request to the request handling beside it
//! ([`handler`](super::handler), and the [fast path](super::fast_path) for UDP), then sends
//! back what that returns.
//!
//! TCP is hickory's server around [`DnsHandler`]. UDP is our own receive loop on a thread of its
//! own, in batches ([`udp_batch`]): the common query is answered by the fast path and everything
//! else by [`udp_reply`], encoded the way hickory's UDP server encodes it, so the bytes on the
//! wire do not depend on the path taken.

// The crate denies unsafe code; this module alone may use it, for the libc calls of recvmmsg
// and sendmmsg (std has neither), behind a safe interface.
#[allow(unsafe_code)]
mod udp_batch;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hickory_server::Server;
use tracing::warn;

use super::fast_path::MAX_REPLY_LEN;
use super::handler::{udp_reply, DnsHandler, ZoneCell};
use crate::scope::admission::Admission;
use udp_batch::Batch;

/// How long a TCP client may stay idle between queries before the connection is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// The running DNS server: our UDP loop and hickory's TCP server.
pub(crate) struct DnsServer {
    udp: UdpThread,
    tcp: Server<DnsHandler>,
}

impl DnsServer {
    pub(crate) async fn shutdown_gracefully(&mut self) -> Result<()> {
        // A UDP exchange is one datagram each way: there is nothing in flight to drain.
        self.udp.stop();
        self.tcp
            .shutdown_gracefully()
            .await
            .context("DNS server shutdown")
    }
}

/// Binds UDP and TCP on `listen` and starts answering from `zone`; `fast_path: false` sends
/// every UDP query through hickory. With `admission`, a query for a name not in the VM's
/// scope is answered once it is (docs/scope.md), without holding up the others. Binding errors name the address (a port below 1024 needs
/// root or CAP_NET_BIND_SERVICE). Must run inside a tokio runtime: TCP is served on it, and
/// the UDP thread asks hickory through it.
pub(crate) async fn serve(
    listen: SocketAddr,
    zone: Arc<ZoneCell>,
    fast_path: bool,
    admission: Option<Arc<Admission>>,
) -> Result<DnsServer> {
    let udp = std::net::UdpSocket::bind(listen)
        .with_context(|| format!("DNS: cannot bind UDP {listen}"))?;
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("DNS: cannot bind TCP {listen}"))?;
    let udp = UdpThread::start(udp, zone.clone(), fast_path, admission.clone())?;
    let mut tcp_server = Server::new(DnsHandler::with_admission(zone, admission));
    tcp_server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    Ok(DnsServer {
        udp,
        tcp: tcp_server,
    })
}

/// hickory's UDP receive buffer: a longer datagram is cut here, as hickory would cut it.
const UDP_RECEIVE_BUFFER: usize = 4096;
/// How often an idle UDP thread looks whether it should stop.
const UDP_STOP_CHECK: Duration = Duration::from_millis(500);

/// The thread that answers UDP; it stops within [`UDP_STOP_CHECK`] of `stop` or of being
/// dropped.
struct UdpThread {
    stopping: Arc<AtomicBool>,
}

impl UdpThread {
    fn start(
        socket: std::net::UdpSocket,
        zone: Arc<ZoneCell>,
        fast_path: bool,
        admission: Option<Arc<Admission>>,
    ) -> Result<Self> {
        socket
            .set_read_timeout(Some(UDP_STOP_CHECK))
            .context("DNS: setting the UDP receive timeout")?;
        let stopping = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Handle::current();
        let stop = stopping.clone();
        std::thread::Builder::new()
            .name("dns-udp".into())
            .spawn(move || {
                serve_udp(
                    &Arc::new(socket),
                    zone,
                    fast_path,
                    admission,
                    &runtime,
                    &stop,
                )
            })
            .context("DNS: starting the UDP thread")?;
        Ok(UdpThread { stopping })
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

impl Drop for UdpThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One thread answers every datagram, a batch at a time, with blocking system calls: each
/// `recvmmsg` waits for the first query and takes every other one already waiting, and one
/// `sendmmsg` sends their replies (see [`udp_batch`]). That is two system calls per batch; an
/// async loop adds an `epoll_wait` and a `recvmmsg` that finds nothing per batch, which costs
/// more than answering once the fast path has made the answer a lookup and a copy. The slow path
/// never waits on anything, so asking hickory on the runtime from here does not block for long;
/// a query that must wait for the VM's scope is handed to a task that answers it on its own.
fn serve_udp(
    socket: &Arc<std::net::UdpSocket>,
    zone: Arc<ZoneCell>,
    fast_path: bool,
    admission: Option<Arc<Admission>>,
    runtime: &tokio::runtime::Handle,
    stopping: &AtomicBool,
) {
    let handler = Arc::new(DnsHandler::with_admission(zone.clone(), admission.clone()));
    let mut batch = Batch::<UDP_RECEIVE_BUFFER>::new();
    let mut fast_replies = vec![[0u8; MAX_REPLY_LEN]; udp_batch::BATCH];
    let mut slow_replies: Vec<Option<Vec<u8>>> = vec![None; udp_batch::BATCH];
    while !stopping.load(Ordering::Relaxed) {
        match batch.receive(socket) {
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(error) => {
                // ICMP errors from earlier sends surface here; they concern that client only.
                warn!(%error, "error receiving DNS queries over UDP");
                continue;
            }
        }
        let zone_now = zone.current();
        let mut fast_lengths = [0usize; udp_batch::BATCH];
        for i in 0..batch.len() {
            slow_replies[i] = None;
            let Some(client) = batch.sender(i).filter(|client| can_answer(*client)) else {
                continue;
            };
            let query = batch.datagram(i);
            let pending = admission.as_ref().zip(zone_now.pending(query));
            if let Some((admission, slot)) = pending {
                let (admission, slot, handler) = (admission.clone(), slot.clone(), handler.clone());
                let (socket, query) = (socket.clone(), query.to_vec());
                runtime.spawn(async move {
                    admission.admit(slot).await;
                    if let Some(reply) = udp_reply(&handler, &query, client).await {
                        if let Err(error) = socket.send_to(&reply, client) {
                            warn!(%error, %client, "could not send a DNS response");
                        }
                    }
                });
                continue;
            }
            match fast_path
                .then(|| zone_now.fast_answer(query, &mut fast_replies[i]))
                .flatten()
            {
                Some(len) => fast_lengths[i] = len,
                None => slow_replies[i] = runtime.block_on(udp_reply(&handler, query, client)),
            }
        }
        let replies: Vec<(usize, &[u8])> = (0..batch.len())
            .filter_map(|i| match &slow_replies[i] {
                Some(reply) => Some((i, reply.as_slice())),
                None if fast_lengths[i] > 0 => Some((i, &fast_replies[i][..fast_lengths[i]])),
                None => None,
            })
            .collect();
        let sent = batch.send(socket, &replies).unwrap_or(0);
        // What sendmmsg did not take (an error on one datagram stops it there) goes one by one.
        for (i, reply) in &replies[sent..] {
            let Some(client) = batch.sender(*i) else {
                continue;
            };
            if let Err(error) = socket.send_to(reply, client) {
                warn!(%error, %client, "could not send a DNS response");
            }
        }
    }
}

/// As hickory's server: never answer port 0 or an unspecified or broadcast address.
fn can_answer(client: SocketAddr) -> bool {
    client.port() != 0
        && match client.ip() {
            IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_broadcast(),
            IpAddr::V6(v6) => !v6.is_unspecified(),
        }
}
