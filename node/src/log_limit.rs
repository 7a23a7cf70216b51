//! openraft's repeated warnings, limited (DESIGN rule 8).
//!
//! openraft warns once per failed RPC ("ReplicationCore recv RPCError",
//! "update progress error", "failed to send a heartbeat", a failed vote
//! request): against a peer that is down that is a line per attempt, for as
//! long as it stays down. Tandem's peer client says the same thing once per
//! loss and return of the peer, with counts (`peer_reach`). So each of
//! openraft's warning call sites gets one line per [`REPEAT_WINDOW`]; errors
//! and every other level pass untouched, as does everything of Tandem's own.
//!
//! The binary installs it with the subscriber (`main.rs`), whatever
//! `RUST_LOG` says.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

use crate::util::lock;

/// One line per call site per window.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(30);

/// A per-layer filter: passes the first warning of each openraft call site,
/// then at most one per [`REPEAT_WINDOW`].
#[derive(Default)]
pub struct OpenraftWarnLimit {
    last: Mutex<HashMap<Identifier, Instant>>,
}

fn limited(meta: &Metadata<'_>) -> bool {
    meta.is_event() && *meta.level() == Level::WARN && meta.target().starts_with("openraft")
}

impl OpenraftWarnLimit {
    /// Whether an event of `meta` may be written at `now`; counts it if so.
    fn pass(&self, meta: &Metadata<'_>, now: Instant) -> bool {
        if !limited(meta) {
            return true;
        }
        let mut last = lock(&self.last);
        match last.get(&meta.callsite()) {
            Some(t) if now.saturating_duration_since(*t) < REPEAT_WINDOW => false,
            _ => {
                last.insert(meta.callsite(), now);
                true
            }
        }
    }
}

impl<S> Filter<S> for OpenraftWarnLimit {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        self.pass(meta, Instant::now())
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // Limited call sites are asked about each event; the rest never.
        if limited(meta) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    use super::*;

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);
    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn openraft_warnings_once_per_window_everything_else_always() {
        let n = Arc::new(AtomicUsize::new(0));
        let sub = tracing_subscriber::registry()
            .with(Count(n.clone()).with_filter(OpenraftWarnLimit::default()));
        tracing::subscriber::with_default(sub, || {
            for _ in 0..1000 {
                tracing::warn!(target: "openraft::replication", "recv RPCError");
            }
            assert_eq!(n.load(Ordering::Relaxed), 1, "one line per call site");
            for _ in 0..10 {
                tracing::warn!(target: "openraft::core::heartbeat", "heartbeat failed");
                tracing::error!(target: "openraft::core", "storage error");
                tracing::warn!(target: "tandem_node::roles", "ours");
                tracing::info!(target: "openraft::core", "info");
            }
            assert_eq!(n.load(Ordering::Relaxed), 1 + 1 + 10 + 10 + 10);
        });
        // The window: a call site passes again once it has elapsed.
        let f = OpenraftWarnLimit::default();
        let meta = tracing::Metadata::new(
            "w",
            "openraft::replication",
            Level::WARN,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CS)),
            tracing::metadata::Kind::EVENT,
        );
        let t0 = Instant::now();
        assert!(f.pass(&meta, t0));
        assert!(!f.pass(&meta, t0 + REPEAT_WINDOW - Duration::from_millis(1)));
        assert!(f.pass(&meta, t0 + REPEAT_WINDOW));
    }

    struct Cs;
    static CS: Cs = Cs;
    impl tracing::Callsite for Cs {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!("not registered")
        }
    }
}
