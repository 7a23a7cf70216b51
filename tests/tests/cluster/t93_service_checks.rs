//! Service checks move the role: each appliance checks its own HTTP service
//! (a small server in this test process, one per node, whose answers the
//! test sets). A flapping service with fewer than `fall` failures in a row
//! moves nothing; a failing service on the primary moves the role to the
//! backup with no acknowledged write lost — but only while the backup's own
//! check is healthy; after a move, the hold-down keeps the role where it is.
use super::*;
use tandem_tests::service::{Mode, TestService};
use tandem_web::{ReadinessView, RoleHealth, SettingsView};

/// The state of check `name` in node `i`'s own status.
async fn check_state(c: &Cluster, i: usize, name: &str) -> Option<String> {
    let s = c.status(i).await?;
    s.this_host
        .checks
        .iter()
        .find(|k| k.name == name)
        .map(|k| k.state.clone())
}

async fn wait_check(c: &Cluster, i: usize, state: &str) {
    let what = format!("check web on {} to be {state}", c.nodes[i].name);
    wait_until(&what, WAIT, || async {
        (check_state(c, i, "web").await.as_deref() == Some(state)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_service_moves_the_role_to_a_healthy_backup_only() {
    let c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b) = (r.primary, r.backup);
    let (on_p, on_b) = (TestService::start().await, TestService::start().await);
    let settings: SettingsView = c.get_json(p, "/api/v1/settings").await.expect("settings");
    let mut body = settings_body(&settings);
    body["checks"] = json!([{
        "name": "web", "kind": "http",
        "targets": { c.nodes[p].name.clone(): on_p.url, c.nodes[b].name.clone(): on_b.url },
        "interval_ms": 100, "timeout_ms": 100, "rise": 2, "fall": 3
    }]);
    body["check_hold_down_secs"] = json!(600);
    let r = c
        .req(p, Method::PUT, "/api/v1/settings")
        .json(&body)
        .send()
        .await
        .expect("PUT settings");
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    wait_check(&c, p, "healthy").await;
    wait_check(&c, b, "healthy").await;

    // A flapping service (two failures, one success): fewer than `fall`
    // failures in a row, so the check never fails and nothing moves.
    on_p.set(Mode::Flapping);
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(2) {
        assert_eq!(check_state(&c, p, "web").await.as_deref(), Some("healthy"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        c.wait_roles(WAIT).await.primary,
        p,
        "a flapping service moved the role"
    );
    on_p.set(Mode::Up);

    // The backup's service fails: it is not eligible, and says so.
    on_b.set(Mode::Down);
    wait_check(&c, b, "failing").await;
    let r = c
        .req(b, Method::GET, "/health/backup")
        .send()
        .await
        .expect("health");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let h: RoleHealth = r.json().await.expect("json");
    assert!(
        h.reason
            .as_deref()
            .is_some_and(|r| r.contains("service check web")),
        "{h:?}"
    );
    let ready: ReadinessView = c.get_json(p, "/api/v1/readiness").await.expect("readiness");
    assert!(!ready.would_fail_over, "{ready:?}");
    assert!(
        ready
            .reasons
            .iter()
            .any(|r| r.contains("service checks are failing")),
        "{ready:?}"
    );

    // Now the primary's service fails too: with no healthy backup it stays
    // primary and says why.
    let before = write_keys(&c, p, "before/", 30).await;
    on_p.set(Mode::Down);
    wait_check(&c, p, "failing").await;
    wait_until("the primary to say why it stays", WAIT, || async {
        let s = c.status(p).await?;
        s.this_host
            .notes
            .iter()
            .any(|n| n.contains("stays primary") && n.contains("own checks are failing"))
            .then_some(())
    })
    .await;
    assert_eq!(c.wait_roles(WAIT).await.primary, p);
    let blocked = history(&c, p, "check_move_blocked").await;
    assert!(!blocked.items.is_empty(), "no check_move_blocked event");

    // The backup's service recovers: the role moves to it (planned swap),
    // with every acknowledged write.
    on_b.set(Mode::Up);
    wait_until("the role to move to the healthy backup", WAIT, || async {
        let s = c.status(b).await?;
        (s.this_host.role == "primary").then_some(())
    })
    .await;
    assert_eq!(c.list(b, "before/", true).await, before);
    let swaps = history(&c, b, "swap").await;
    assert!(
        swaps.items.iter().any(|e| e.actor == "tandem (check web)"),
        "the move does not name the check: {:?}",
        swaps.items
    );
    let states = history(&c, b, "check_state").await;
    assert!(
        states
            .items
            .iter()
            .any(|e| e.details["state"] == "failing" && e.details["check"] == "web"),
        "{:?}",
        states.items
    );

    // Hold-down: the new primary's service fails too; the role does not
    // move back within `check_hold_down_secs`, and the page says why.
    on_p.set(Mode::Up);
    wait_check(&c, p, "healthy").await;
    on_b.set(Mode::Down);
    wait_check(&c, b, "failing").await;
    wait_until("the hold-down to be shown", WAIT, || async {
        let s = c.status(b).await?;
        s.this_host
            .notes
            .iter()
            .any(|n| n.contains("check_hold_down_secs"))
            .then_some(())
    })
    .await;
    assert_eq!(
        c.wait_roles(WAIT).await.primary,
        b,
        "the role moved back within the hold-down"
    );
}
