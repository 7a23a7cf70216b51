//! A primary-timeout change takes effect without a restart: the backup
//! and the witness switch their timers in turn (a longer timeout at once,
//! a shorter one after the old timeout), the primary's lease follows the
//! shorter value at once, nobody loses the role meanwhile, and no
//! acknowledged write is lost; then a failover runs on the new timeout.
use super::t30_failover::{assert_has_all, Writer};
use super::*;
use tandem_web::{HealthView, ReadinessView};

async fn set_timeout(c: &Cluster, i: usize, ms: u64) {
    put_settings(c, i, |b| b["primary_timeout_ms"] = json!(ms)).await;
}

async fn health(c: &Cluster, i: usize) -> HealthView {
    c.health(i)
        .await
        .unwrap_or_else(|| panic!("{} answers /health", c.nodes[i].name))
}

/// Waits until node `i` runs timers of `ms`.
async fn wait_running(c: &Cluster, i: usize, ms: u64) {
    wait_until(
        &format!("{} runs a {ms} ms primary timeout", c.nodes[i].name),
        Duration::from_secs(30),
        || async { (health(c, i).await.primary_timeout_ms == Some(ms)).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_timeout_changes_under_a_writer_without_a_restart() {
    let mut c = Cluster::three(&[]).await;
    let roles = c.wait_roles(WAIT).await;
    let (p, b, w) = (roles.primary, roles.backup, roles.witness);
    let epoch = c.status(p).await.expect("status").epoch;
    for i in [p, b, w] {
        assert_eq!(health(&c, i).await.primary_timeout_ms, Some(1000));
    }
    let writer = Writer::start(&c);
    wait_until("20 acknowledged writes", WAIT, || async {
        (writer.count() >= 20).then_some(())
    })
    .await;

    // Longer: the backup and the witness switch at once; the primary keeps
    // its lease on the shorter timeout (it may still be all a voter runs).
    set_timeout(&c, p, 3000).await;
    wait_running(&c, b, 3000).await;
    wait_running(&c, w, 3000).await;
    let on_p = health(&c, p).await;
    assert_eq!(on_p.lease_timeout_ms, Some(1000), "{on_p:?}");
    let notes = c.status(p).await.expect("status").this_host.notes;
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("primary timeout changing to 3000 ms")),
        "{notes:?}"
    );
    let r: ReadinessView = c.get_json(b, "/api/v1/readiness").await.expect("readiness");
    // With a witness: the longest election timeout (0.4 t) and a heartbeat.
    assert_eq!(r.after_ms, Some(1200 + 300), "{r:?}");
    let at = writer.count();
    wait_until("20 more writes on the longer timeout", WAIT, || async {
        (writer.count() >= at + 20).then_some(())
    })
    .await;

    // Shorter: the primary's lease follows at once; the others keep their
    // 3000 ms timers until every lease given under them has run out.
    set_timeout(&c, p, 500).await;
    wait_until("the primary's lease on 500 ms", WAIT, || async {
        (health(&c, p).await.lease_timeout_ms == Some(500)).then_some(())
    })
    .await;
    assert_eq!(health(&c, b).await.primary_timeout_ms, Some(3000));
    wait_running(&c, b, 500).await;
    wait_running(&c, w, 500).await;
    let at = writer.count();
    wait_until("20 more writes on the shorter timeout", WAIT, || async {
        (writer.count() >= at + 20).then_some(())
    })
    .await;
    // Nobody took the role meanwhile.
    let s = c.status(p).await.expect("status");
    assert_eq!((s.this_host.role.as_str(), s.epoch), ("primary", epoch));
    let r: ReadinessView = c.get_json(b, "/api/v1/readiness").await.expect("readiness");
    assert_eq!(r.after_ms, Some(200 + 50), "{r:?}");

    // A failover on the new timers.
    c.kill9(p);
    let new = c.primary().await;
    assert_eq!(new, b);
    let at = writer.count();
    wait_until(
        "20 writes acknowledged after the failover",
        WAIT,
        || async { (writer.count() >= at + 20).then_some(()) },
    )
    .await;
    let acked = writer.finish().await;
    assert_has_all(&c, new, &acked, false).await;
    eprintln!(
        "t97: {} writes acknowledged, all present on {}",
        acked.len(),
        c.nodes[new].name
    );
}
