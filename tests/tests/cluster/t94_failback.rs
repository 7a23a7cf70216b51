//! Failback to the preferred appliance: after its return from a crash it
//! gets the role back once it has been eligible for the delay; not while it
//! is in maintenance, nor while its service check fails.
use super::*;
use std::time::Instant;

const DELAY_SECS: u64 = 2;

async fn primary_is(c: &Cluster, i: usize) -> bool {
    c.status(i)
        .await
        .is_some_and(|s| s.this_host.role == "primary")
}

async fn wait_primary(c: &Cluster, i: usize, what: &str) {
    wait_until(what, Duration::from_secs(30), || async {
        primary_is(c, i).await.then_some(())
    })
    .await;
}

/// Node `i` does not become primary for `d`.
async fn stays_not_primary(c: &Cluster, i: usize, d: Duration, what: &str) {
    let started = Instant::now();
    while started.elapsed() < d {
        assert!(!primary_is(c, i).await, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn failbacks(c: &Cluster, i: usize) -> usize {
    let page: HistoryPage = c
        .get_json(i, "/api/v1/history?kind=swap&limit=500")
        .await
        .expect("history");
    page.items
        .iter()
        .filter(|e| e.actor == "tandem (failback)")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_goes_back_to_the_preferred_node_after_the_delay_only_when_eligible() {
    let mut c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b) = (r.primary, r.backup);
    let pname = c.nodes[p].name.clone();
    put_settings(&c, p, |v| {
        v["failback"] = json!({ "preferred": pname, "delay_secs": DELAY_SECS });
        v["check_hold_down_secs"] = json!(0);
    })
    .await;

    // The preferred node crashes and comes back: the role returns to it
    // after the delay, with every write made meanwhile.
    c.kill9(p);
    wait_primary(&c, b, "the backup to take over").await;
    let meanwhile = write_keys(&c, b, "meanwhile/", 20).await;
    c.restart(p).await;
    let restarted = Instant::now();
    wait_primary(&c, p, "the failback to the preferred node").await;
    assert!(
        restarted.elapsed() >= Duration::from_secs(DELAY_SECS),
        "failback after {:?}, before the delay",
        restarted.elapsed()
    );
    assert_eq!(c.list(p, "meanwhile/", true).await, meanwhile);
    assert_eq!(failbacks(&c, p).await, 1);

    // Maintenance of the preferred node moves the role away; no failback
    // while it lasts; after it ends and the delay, the role returns.
    let r = c
        .req(p, Method::POST, "/api/v1/maintenance")
        .json(&json!({ "node": pname, "reason": "firmware", "seconds": 4 }))
        .send()
        .await
        .expect("maintenance");
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    wait_primary(&c, b, "maintenance to move the role").await;
    stays_not_primary(
        &c,
        p,
        Duration::from_millis(3_000),
        "failback during maintenance",
    )
    .await;
    wait_primary(&c, p, "the failback after the maintenance").await;
    assert_eq!(failbacks(&c, p).await, 2);

    // A failing service check on the preferred node: the check moves the
    // role away, and no failback happens while the check fails.
    put_settings(&c, p, |v| {
        v["checks"] = json!([{ "name": "svc", "kind": "exec", "command": ["false"],
                               "nodes": [pname], "interval_ms": 200, "timeout_ms": 200,
                               "rise": 1, "fall": 1 }]);
    })
    .await;
    wait_primary(&c, b, "the failing check to move the role").await;
    stays_not_primary(
        &c,
        p,
        Duration::from_secs(DELAY_SECS + 2),
        "failback while the check fails",
    )
    .await;
    put_settings(&c, b, |v| v["checks"] = json!([])).await;
    wait_primary(&c, p, "the failback once the check is gone").await;
    assert_eq!(failbacks(&c, p).await, 3);
}
