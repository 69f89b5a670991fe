//! Admission of new connections on the pilot's TLS ports (xDS and names) under a storm: when
//! every Envoy and agent of a foundation reconnects at once (a pilot restarted), each new
//! connection waits for one of [`PERMITS`] before its TLS handshake, and holds it through its
//! first exchange: until the connection has been quiet for [`QUIET`] (the first responses
//! sent and answered) or for [`HOLD_MAX`] at most. So the early connections handshake and
//! sync at full speed and leave the room to the next, instead of thousands progressing slowly
//! together, each past its client's timeouts, whose retries are work thrown away. The waiting
//! connections cost a socket and a small task; their clients' timers run meanwhile as they
//! would in the kernel's accept queue.
//!
//! [`Admission::admit`] waits for a permit; [`Admitted`] wraps the connection's stream and
//! marks each read and write; a watchdog task per admitted connection gives the permit back
//! once the connection was quiet long enough, it reached [`HOLD_MAX`], or it ended.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Connections in their handshake and first exchange at once, per port. Enough to keep the
/// cores busy while clients answer (the round trips of a first xDS exchange), few enough
/// that the run queue stays short and no admitted handshake is starved past
/// `tls::HANDSHAKE_TIMEOUT` (with 128 permits held 250 ms at most, admission outran two
/// shared cores and 12 of 2,500 Envoys lost their handshake; bench/notes.md, fleet).
pub const PERMITS: usize = 64;
/// A connection this long without a byte read or written has finished its first exchange.
pub const QUIET: Duration = Duration::from_millis(20);
/// The longest a connection holds its permit, quiet or not. On two shared cores a first xDS
/// exchange among 64 takes a second or two, so this bounds the work in progress rather than
/// the rate; a slow client cannot hold a permit longer.
pub const HOLD_MAX: Duration = Duration::from_secs(2);

/// The permits of one port.
#[derive(Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    quiet: Duration,
    hold_max: Duration,
}

/// Overrides [`PERMITS`], [`QUIET`] and [`HOLD_MAX`]: `<permits>,<quiet ms>,<hold ms>`; `0`
/// permits admit every connection at once (no admission).
pub const ENV: &str = "BOSHY_PILOT_ADMISSION";

impl Default for Admission {
    fn default() -> Self {
        let tuned = std::env::var(ENV).ok().and_then(|v| parse_tuning(&v));
        let (permits, quiet, hold_max) = tuned.unwrap_or((PERMITS, QUIET, HOLD_MAX));
        Admission::new(permits, quiet, hold_max)
    }
}

/// `<permits>,<quiet ms>,<hold ms>`; `0` permits: as many as a semaphore holds.
fn parse_tuning(value: &str) -> Option<(usize, Duration, Duration)> {
    let mut parts = value.split(',').map(|p| p.trim().parse::<u64>().ok());
    let (permits, quiet, hold) = (parts.next()??, parts.next()??, parts.next()??);
    let permits = match permits {
        0 => Semaphore::MAX_PERMITS,
        n => usize::try_from(n).ok()?,
    };
    Some((
        permits,
        Duration::from_millis(quiet),
        Duration::from_millis(hold),
    ))
}

impl Admission {
    pub fn new(permits: usize, quiet: Duration, hold_max: Duration) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(permits)),
            quiet,
            hold_max,
        }
    }

    /// Waits for a permit: the connection's handshake may start. Hold the returned [`Ticket`]
    /// until the stream is wrapped with [`Ticket::wrap`] (dropping it gives the permit back).
    pub async fn admit(&self) -> Ticket {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        Ticket {
            permit,
            quiet: self.quiet,
            hold_max: self.hold_max,
            started: Instant::now(),
        }
    }

    /// Permits free now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

/// A permit taken by a connection that has not yet its stream (it is in its handshake).
pub struct Ticket {
    permit: OwnedSemaphorePermit,
    quiet: Duration,
    hold_max: Duration,
    started: Instant,
}

impl Ticket {
    /// The connection's stream, holding the permit until its first exchange is over.
    pub fn wrap<S>(self, inner: S) -> Admitted<S> {
        let activity = Arc::new(AtomicU64::new(0));
        let (ended, ended_rx) = oneshot::channel();
        tokio::spawn(watchdog(
            self.permit,
            self.started,
            activity.clone(),
            self.quiet,
            self.hold_max,
            ended_rx,
        ));
        Admitted {
            inner,
            activity,
            started: self.started,
            _ended: ended,
        }
    }
}

/// Gives the permit back once the connection was quiet for `quiet`, held it `hold_max`, or
/// ended. `activity` is the last read or write, in milliseconds since `started`.
async fn watchdog(
    permit: OwnedSemaphorePermit,
    started: Instant,
    activity: Arc<AtomicU64>,
    quiet: Duration,
    hold_max: Duration,
    mut ended: oneshot::Receiver<()>,
) {
    let deadline = started + hold_max;
    loop {
        let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
        let wake = (last + quiet).min(deadline);
        if wake <= Instant::now() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            _ = &mut ended => break,
        }
    }
    drop(permit);
}

/// A connection's stream while (and after) it is admitted: every read and write that moves
/// bytes postpones the end of its first exchange.
pub struct Admitted<S> {
    inner: S,
    activity: Arc<AtomicU64>,
    started: Instant,
    /// Dropped with the connection: its watchdog gives the permit back at once.
    _ended: oneshot::Sender<()>,
}

impl<S> Admitted<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn mark(&self) {
        let millis = self.started.elapsed().as_millis() as u64;
        self.activity.store(millis, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.mark();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Admitted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.mark();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.mark();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Admitted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn admission(permits: usize) -> Admission {
        Admission::new(permits, Duration::from_millis(100), Duration::from_secs(1))
    }

    #[test]
    fn the_tuning_is_permits_quiet_and_hold() {
        assert_eq!(
            parse_tuning("128, 10, 500"),
            Some((128, Duration::from_millis(10), Duration::from_millis(500)))
        );
        assert_eq!(parse_tuning("0,0,0").unwrap().0, Semaphore::MAX_PERMITS);
        assert_eq!(parse_tuning("64,10"), None);
        assert_eq!(parse_tuning("x,1,1"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_is_held_through_the_first_exchange_and_given_back_once_quiet() {
        let admission = admission(1);
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut admitted = admission.admit().await.wrap(ours);
        assert_eq!(
            admission.available(),
            0,
            "in its handshake and first exchange"
        );
        // Requests and responses 50 ms apart: still in the first exchange.
        for _ in 0..5 {
            theirs.write_all(b"request").await.unwrap();
            let mut buf = [0; 7];
            admitted.read_exact(&mut buf).await.unwrap();
            admitted.write_all(b"response").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(admission.available(), 0);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(admission.available(), 1, "quiet for 100 ms");
        drop(admitted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_gives_its_permit_back_after_the_longest_hold() {
        let admission = admission(1);
        let (ours, _theirs) = tokio::io::duplex(1 << 20);
        let mut admitted = admission.admit().await.wrap(ours);
        for _ in 0..15 {
            admitted.write_all(b"x").await.unwrap();
            tokio::time::sleep(Duration::from_millis(90)).await;
        }
        assert_eq!(admission.available(), 1, "1 s at most, busy or not");
    }

    #[tokio::test(start_paused = true)]
    async fn connections_wait_for_a_permit_and_an_ended_one_gives_it_back_at_once() {
        let admission = admission(2);
        let (a, _a) = tokio::io::duplex(64);
        let (b, _b) = tokio::io::duplex(64);
        let first = admission.admit().await.wrap(a);
        let _second = admission.admit().await.wrap(b);
        let waiting = admission.admit();
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), &mut waiting)
                .await
                .is_err(),
            "a third waits"
        );
        drop(first);
        let third = tokio::time::timeout(Duration::from_millis(10), waiting).await;
        assert!(
            third.is_ok(),
            "the first ended: its permit went to the third"
        );
        // A ticket dropped before its stream (a failed handshake) gives the permit back too.
        drop(third);
        assert_eq!(admission.available(), 1);
    }
}
