//! A small HTTP service on loopback for service-check tests and the checks
//! benchmark: it answers every request with 200 or 503 as the test says, and
//! notes when it answered each failure.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200 to everything.
    Up = 0,
    /// 503 to everything.
    Down = 1,
    /// 503, 503, 200, over and over (a flapping service).
    Flapping = 2,
}

/// The service; stops when dropped.
pub struct TestService {
    /// `http://127.0.0.1:PORT/health`.
    pub url: String,
    mode: Arc<AtomicU8>,
    failures: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestService {
    /// Starts one on a free loopback port, answering 200.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the test service");
        let url = format!("http://{}/health", listener.local_addr().expect("addr"));
        let mode = Arc::new(AtomicU8::new(Mode::Up as u8));
        let failures: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let served = Arc::new(AtomicU64::new(0));
        let (m, f) = (mode.clone(), failures.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (m, f, served) = (m.clone(), f.clone(), served.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = conn.read(&mut buf).await;
                    let n = served.fetch_add(1, Ordering::SeqCst);
                    let ok = match m.load(Ordering::SeqCst) {
                        0 => true,
                        2 => n % 3 == 2,
                        _ => false,
                    };
                    if !ok {
                        f.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(Instant::now());
                    }
                    let (status, body) = if ok {
                        ("200 OK", "fine")
                    } else {
                        ("503 Service Unavailable", "down")
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        Self {
            url,
            mode,
            failures,
            task,
        }
    }

    /// Changes what it answers from now on.
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// When it answered failures at or after `since`, in order.
    pub fn failures_since(&self, since: Instant) -> Vec<Instant> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .filter(|t| *t >= since)
            .collect()
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        self.task.abort();
    }
}
