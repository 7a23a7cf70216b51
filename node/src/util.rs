//! Small helpers every room of the node uses, each defined once: the wall
//! clock in milliseconds, a task handle that aborts on drop, a lock that
//! survives a poisoned mutex, and a single-flight flag released by a guard.
//!
//! Nothing here knows the node, Raft or the network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Locks `m` even if a thread panicked while holding it: every mutex of the
/// node guards data that stays consistent between statements (maps,
/// counters, `Option`s replaced whole), so the data is still usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`lock`] for reading an `RwLock`.
pub fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`lock`] for writing an `RwLock`.
pub fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A spawned task that is aborted when this handle is dropped.
pub struct AbortOnDrop<T = ()>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A single-flight flag: at most one holder of [`Flight`] at a time.
#[derive(Default, Clone)]
pub struct SingleFlight(Arc<AtomicBool>);

/// Proof of holding a [`SingleFlight`]; dropping it releases the flag,
/// also when the task that holds it panics or is cancelled, so a failed duty
/// never leaves the next one disabled.
pub struct Flight(Arc<AtomicBool>);

impl SingleFlight {
    /// Takes the flag, or `None` while someone holds it.
    pub fn claim(&self) -> Option<Flight> {
        self.0
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| Flight(self.0.clone()))
    }

    /// Whether someone holds it now.
    pub fn held(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_holder_does_not_disable_the_next_one() {
        let f = SingleFlight::default();
        let held = f.claim().expect("free at first");
        assert!(f.held() && f.claim().is_none(), "one holder at a time");
        // The duty panics while it holds the flight.
        let r = tokio::spawn(async move {
            let _held = held;
            panic!("a duty that fails");
        })
        .await;
        assert!(r.is_err_and(|e| e.is_panic()));
        assert!(!f.held());
        let again = f.claim().expect("the next duty runs");
        drop(again);
        // Cancelled while holding it: released too.
        let held = f.claim().expect("free");
        let t = tokio::spawn(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        t.abort();
        assert!(t.await.is_err_and(|e| e.is_cancelled()));
        assert!(f.claim().is_some());
    }

    #[test]
    fn a_poisoned_lock_is_still_usable() {
        let m = Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().expect("not poisoned yet");
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
