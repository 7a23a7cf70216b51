//! The bandwidth limit on what this node sends to peers (snapshot chunks
//! and AppendEntries carrying entries; heartbeats are never held back): one
//! token bucket shared by every stream, so the limit applies to their sum.
//!
//! Knows nothing of Raft or the node: bytes and a rate.

use std::time::Duration;

/// Burst a bandwidth limit allows, as time at the limit rate.
const LIMIT_BURST: Duration = Duration::from_millis(50);

/// A token bucket shared by every stream this node sends: the limit applies
/// to their sum. The bucket holds at most [`LIMIT_BURST`] worth of bytes, or
/// the size of the previous send if that is more; a send larger than what it
/// holds goes into debt and waits until the debt is repaid, so a 1 MiB chunk
/// under a 64 KiB/s limit waits about 16 s.
///
/// The time a large send itself takes (TLS, the socket, a peer that reads
/// slowly) refills the bucket up to that send's size: with a cap of the
/// burst alone that time would be lost, and a busy machine would send 1 MiB
/// snapshot chunks well below the limit.
#[derive(Default)]
pub struct RateLimiter {
    bucket: tokio::sync::Mutex<Bucket>,
}

#[derive(Default)]
struct Bucket {
    tokens: f64,
    last: Option<tokio::time::Instant>,
    /// The size of the previous send.
    last_bytes: f64,
}

impl RateLimiter {
    /// Waits until `bytes` may be sent under `rate` bytes per second
    /// (0 = unlimited: returns at once). Concurrent callers queue in turn.
    pub async fn acquire(&self, bytes: usize, rate: u64) {
        if rate == 0 {
            return;
        }
        let rate = rate as f64;
        let mut b = self.bucket.lock().await;
        let now = tokio::time::Instant::now();
        let burst = rate * LIMIT_BURST.as_secs_f64();
        let cap = burst.max(b.last_bytes);
        let refill = b
            .last
            .map_or(burst, |t| now.duration_since(t).as_secs_f64() * rate);
        b.tokens = (b.tokens + refill).min(cap) - bytes as f64;
        b.last = Some(now);
        b.last_bytes = bytes as f64;
        if b.tokens < 0.0 {
            // Holding the lock while waiting makes the next sender wait its turn.
            tokio::time::sleep(Duration::from_secs_f64(-b.tokens / rate)).await;
            b.tokens = 0.0;
            b.last = Some(tokio::time::Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Bytes sent in `window` by `senders` concurrent senders of `chunk`-byte
    /// pieces through one limiter at `rate` bytes/s.
    async fn measure(rate: u64, chunk: usize, senders: usize, window: Duration) -> f64 {
        let limiter = Arc::new(RateLimiter::default());
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..senders {
            let (limiter, sent) = (limiter.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                while start.elapsed() < window {
                    limiter.acquire(chunk, rate).await;
                    sent.fetch_add(chunk as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.expect("sender ran");
        }
        let secs = start.elapsed().as_secs_f64();
        sent.load(std::sync::atomic::Ordering::Relaxed) as f64 / secs
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn limiter_holds_the_rate() {
        // Real time, 1.5 s, the cases side by side.
        let cases = [
            (1_000_000, 16 * 1024, 1),
            (1_000_000, 16 * 1024, 4),
            (65_536, 16 * 1024, 1),
            (200_000, 512 * 1024, 1), // chunks larger than the burst
            (4_000_000, 64 * 1024, 2),
        ];
        let runs = cases.map(|(rate, chunk, senders)| {
            tokio::spawn(measure(rate, chunk, senders, Duration::from_millis(1500)))
        });
        for ((rate, chunk, senders), run) in cases.into_iter().zip(runs) {
            let got = run.await.expect("measured");
            let ratio = got / rate as f64;
            assert!(
                (0.8..=1.2).contains(&ratio),
                "rate {rate}, chunk {chunk}, {senders} senders: {got:.0} B/s"
            );
        }
    }

    #[tokio::test]
    async fn time_spent_sending_counts_toward_the_rate() {
        // 512 KiB chunks at 1 MiB/s, each taking 200 ms to send after its
        // turn: 2 chunks a second, not 1.5.
        let rate = 1 << 20;
        let limiter = RateLimiter::default();
        let start = tokio::time::Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < Duration::from_millis(3000) {
            limiter.acquire(512 * 1024, rate).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            sent += 512 * 1024;
        }
        let ratio = sent as f64 / start.elapsed().as_secs_f64() / rate as f64;
        assert!((0.85..=1.1).contains(&ratio), "ratio {ratio:.3}");
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let limiter = RateLimiter::default();
        let start = tokio::time::Instant::now();
        for _ in 0..1000 {
            limiter.acquire(1 << 20, 0).await;
        }
        assert!(start.elapsed() < Duration::from_millis(100));
    }
}
