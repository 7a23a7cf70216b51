//! The thread the admin listener runs its TLS handshakes on, at a lower
//! CPU priority than the runtime's threads.
//!
//! A handshake is the costly part of a new connection (a key exchange and
//! a signature, before anything is known of the client). Run on the
//! runtime, a flood of them took the CPU the heartbeats need, and a
//! primary lost its leadership to a flood of connections; on this thread
//! a flood only delays other handshakes. The peer listener does not use
//! it: members' own connections must not wait behind a busy CPU.

use tokio_util::sync::{CancellationToken, DropGuard};

/// The nice value of the handshake thread (the runtime's threads have 0).
const HANDSHAKE_NICE: i32 = 10;

/// The handshake thread and its runtime; the thread ends when this is
/// dropped, and the handshakes still under way with it.
pub(crate) struct HandshakeThread {
    handle: tokio::runtime::Handle,
    _stop: DropGuard,
}

impl HandshakeThread {
    /// Starts the thread.
    ///
    /// # Errors
    /// Its runtime or the thread cannot be created.
    pub(crate) fn start() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("tls-handshakes".into())
            .spawn(move || {
                lower_priority();
                rt.block_on(stopped.cancelled());
            })?;
        Ok(Self {
            handle,
            _stop: stop.drop_guard(),
        })
    }

    /// The runtime to spawn handshakes on.
    pub(crate) fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    /// Runs `handshake` on the thread.
    #[cfg(test)]
    fn spawn<F>(&self, handshake: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(handshake)
    }
}

/// Lowers the calling thread's CPU priority (Linux keeps a nice value per
/// thread). Where that fails the thread keeps the default: only the
/// isolation is lost, so the error is ignored.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority reads no memory; `who = 0` is the calling thread.
    unsafe {
        let _ = libc::setpriority(libc::PRIO_PROCESS, 0, HANDSHAKE_NICE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Futures run on the thread, at the lower priority, and stop with it.
    #[tokio::test]
    async fn runs_futures_at_a_lower_priority() {
        let thread = HandshakeThread::start().expect("the thread starts");
        let nice = thread
            .spawn(async {
                // SAFETY: getpriority reads no memory.
                unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
            })
            .await
            .expect("the task ran");
        #[cfg(target_os = "linux")]
        assert!(nice >= HANDSHAKE_NICE, "nice {nice}");
        let _ = nice;
        let pending = thread.spawn(std::future::pending::<()>());
        drop(thread);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), pending).await;
        assert!(
            matches!(ended, Ok(Err(ref e)) if e.is_cancelled()),
            "a task outlived its thread: {ended:?}"
        );
    }
}
