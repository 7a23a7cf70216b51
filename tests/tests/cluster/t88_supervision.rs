//! An essential task that dies (here the role manager, made to panic by the
//! `TANDEM_TEST_FAULT` hook) must not leave a primary running without it:
//! the node stops leading, the other appliance takes over and accepts
//! writes, and the crippled node says why in `/health` and on the status
//! page until it is restarted.

use super::*;
use std::time::Instant;
use tandem_web::StatusView;

/// When the injected panic fires after the node starts: long enough for it
/// to catch up and be made primary by a planned swap first.
const FAULT_AFTER_MS: u64 = 15_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_role_manager_dies_stops_leading_and_says_so() {
    let mut c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    // The node to cripple: the backup, restarted with the fault armed.
    let x = r.backup;
    c.stop(x).await;
    let fault = format!("panic:role-manager:{FAULT_AFTER_MS}");
    let started = Instant::now();
    c.spawn_with_env(x, &[("TANDEM_TEST_FAULT", &fault)]);
    c.wait_health(x).await;
    c.wait_caught_up(x).await;
    c.wait_peer_reachable(r.primary, x, true).await;
    // Make it primary before the fault fires.
    let resp = c
        .req(r.primary, Method::POST, "/api/v1/relationship/swap")
        .json(&json!({"pull_sync": false, "force": false}))
        .send()
        .await
        .expect("swap answered");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let roles = c.wait_roles(WAIT).await;
    assert_eq!(roles.primary, x, "the swap made it primary: {roles:?}");
    assert!(
        started.elapsed() < Duration::from_millis(FAULT_AFTER_MS),
        "the swap finished after the fault was due ({:?}); raise FAULT_AFTER_MS",
        started.elapsed()
    );

    // The fault fires: /health says so, the node stops leading, the other
    // appliance takes over and accepts writes.
    let h = wait_until("/health to report the dead role manager", WAIT, || async {
        c.health(x).await.filter(|h| h.status == "degraded")
    })
    .await;
    assert!(
        h.problems.iter().any(|p| p.contains("role manager died")),
        "{:?}",
        h.problems
    );
    let other = r.primary;
    let after = wait_until("the other appliance to be primary", WAIT, || async {
        c.find_roles().await.filter(|x2| x2.primary == other)
    })
    .await;
    assert!(after.epoch > roles.epoch, "{after:?} after {roles:?}");
    c.put_ok(other, "after-the-fault", &json!(1)).await;
    let health = c.health(x).await.expect("the crippled node still answers");
    assert_ne!(health.role, "leader", "it must not lead: {health:?}");
    let s: StatusView = c.status(other).await.expect("status");
    assert!(
        s.this_host
            .notes
            .iter()
            .any(|n| n.contains("role manager died")),
        "the primary's status names the crippled peer: {:?}",
        s.this_host.notes
    );
    // It stays out of the way: still not leading a few heartbeats later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let health = c.health(x).await.expect("answers");
    assert_ne!(health.role, "leader", "{health:?}");
    assert_eq!(c.find_leader().await, Some(other));

    // A restart clears it.
    c.stop(x).await;
    c.restart(x).await;
    wait_until("the restarted node healthy", WAIT, || async {
        c.health(x)
            .await
            .filter(|h| h.status == "ok" && h.problems.is_empty())
    })
    .await;
}
