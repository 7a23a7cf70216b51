//! The admin listener's own runtime, and the thread argon2 runs on.
//!
//! Admin clients can be many and hostile (TLS handshakes, login floods
//! whose argon2 checks take a core each): on the runtime that runs Raft,
//! their work would queue in front of heartbeats and lease renewals, and a
//! primary could lose its role to a login flood. The admin listener runs on
//! worker threads of its own; Raft, the peer listener and storage keep the
//! process's runtime and its blocking pool. Argon2, the one heavy piece of
//! a request, runs on one thread of its own at nice [`ARGON2_NICE`]: when
//! the CPU is short, everything else goes first.

use std::io;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// Nice value of the argon2 thread: at 19, it gets the CPU only when
/// nothing at the normal priority wants it.
pub(crate) const ARGON2_NICE: i32 = 19;
/// Worker threads of the admin runtime.
const ADMIN_WORKERS: usize = 2;

/// The admin runtime; shut down without waiting when dropped (it may be
/// dropped inside the process's own runtime).
pub(crate) struct AdminRuntime(Option<tokio::runtime::Runtime>);

impl AdminRuntime {
    /// Builds it.
    ///
    /// # Errors
    /// The runtime's threads cannot be started.
    pub(crate) fn new() -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(ADMIN_WORKERS)
            .thread_name("tandem-admin")
            .enable_all()
            .build()?;
        Ok(Self(Some(rt)))
    }

    /// A handle to spawn the admin listener on.
    pub(crate) fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => unreachable!("the admin runtime is only taken on drop"),
        }
    }
}

impl Drop for AdminRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `f` on the argon2 thread (started at first use, at nice
/// [`ARGON2_NICE`]); its result, or an error if the thread is gone.
///
/// # Errors
/// The argon2 thread cannot be started or died.
pub(crate) async fn on_argon2_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    static JOBS: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let jobs = JOBS.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("tandem-argon2".into())
            .spawn(move || {
                lower_priority(ARGON2_NICE);
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the argon2 thread");
        }
        Mutex::new(tx)
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    crate::util::lock(jobs)
        .send(job)
        .map_err(|_| "the password-checking thread is gone".to_string())?;
    rx.await
        .map_err(|_| "the password check was dropped".to_string())
}

/// Lowers the calling thread's priority to `nice` (Linux: nice is per
/// thread). A failure only costs the priority: it is logged.
fn lower_priority(nice: i32) {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority reads no memory of ours; it only changes the
    // scheduling weight of thread `tid`, which is this thread.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if r != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "the argon2 thread keeps the normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn my_nice() -> i32 {
        // SAFETY: as in lower_priority; getpriority reads no memory of ours.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[tokio::test]
    async fn argon2_runs_on_its_own_low_priority_thread() {
        let (nice, name) =
            on_argon2_thread(|| (my_nice(), std::thread::current().name().map(str::to_owned)))
                .await
                .expect("the job runs");
        assert_eq!(nice, ARGON2_NICE);
        assert_eq!(name.as_deref(), Some("tandem-argon2"));
        // The callers are not lowered.
        assert_ne!(my_nice(), ARGON2_NICE);
    }
}
