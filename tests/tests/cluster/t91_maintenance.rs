//! Maintenance mode and windows: the role moves away from a node put in
//! maintenance, a node in maintenance is never made primary (also when the
//! other appliance dies: the pair waits and says why), a hold ends by
//! itself, a window moves the role at its start and gives it back at its
//! end, and bad requests change nothing.
use super::*;
use std::time::Instant;
use tandem_tests::now_ms;
use tandem_web::{MaintenanceOutcome, MaintenanceView, ReadinessView, RoleHealth};

async fn maintenance(c: &Cluster, i: usize) -> MaintenanceView {
    c.get_json(i, "/api/v1/maintenance")
        .await
        .unwrap_or_else(|| panic!("GET /api/v1/maintenance on {}", c.nodes[i].name))
}

/// POSTs `body` to `path` on node `i`; the status and the JSON answer.
async fn post(c: &Cluster, i: usize, path: &str, body: Value) -> (StatusCode, Value) {
    let r = c
        .req(i, Method::POST, path)
        .header("x-tandem-actor", "ops")
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn delete(c: &Cluster, i: usize, path: &str) -> (StatusCode, Value) {
    let r = c
        .req(i, Method::DELETE, path)
        .header("x-tandem-actor", "ops")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_moves_the_role_and_a_node_in_maintenance_is_never_promoted() {
    let mut c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b, w) = (r.primary, r.backup, r.witness);
    let written = write_keys(&c, p, "before/", 50).await;
    let (pname, bname) = (c.nodes[p].name.clone(), c.nodes[b].name.clone());

    // Bad requests change nothing.
    let bad = [
        (
            json!({"node": "nobody", "reason": "x", "minutes": 5}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"node": c.nodes[w].name, "reason": "x", "minutes": 5}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"node": pname, "reason": "x", "minutes": 100_000}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"node": pname, "reason": "x"}),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (body, want) in bad {
        let (status, answer) = post(&c, p, "/api/v1/maintenance", body.clone()).await;
        assert_eq!(status, want, "{body}: {answer}");
    }
    assert_eq!(maintenance(&c, p).await, MaintenanceView::default());

    // Maintenance of the primary: the role moves to the backup first.
    let (status, answer) = post(
        &c,
        p,
        "/api/v1/maintenance",
        json!({"node": pname, "reason": "firmware update", "minutes": 30}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let outcome: MaintenanceOutcome = serde_json::from_value(answer).expect("an outcome");
    assert_eq!(outcome.moved_to, Some(c.nodes[b].id()), "{outcome:?}");
    assert_eq!(outcome.maintenance.nodes.len(), 1);
    assert_eq!(outcome.maintenance.nodes[0].node, pname);
    assert_eq!(outcome.maintenance.nodes[0].by, "admin-token:ops");
    let moved = c.wait_roles(WAIT).await;
    assert_eq!(moved.primary, b, "the role moved to the backup");
    assert_eq!(c.list(b, "before/", true).await, written);
    let s = c.status(b).await.expect("status");
    assert_eq!(s.maintenance.len(), 1, "{:?}", s.maintenance);
    assert_eq!(s.maintenance[0].reason, "firmware update");

    // The node in maintenance is not eligible, and says so.
    let r = c
        .req(p, Method::GET, "/health/backup")
        .send()
        .await
        .expect("health");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let h: RoleHealth = r.json().await.expect("json");
    assert!(
        h.reason
            .as_deref()
            .is_some_and(|r| r.contains("maintenance")),
        "{h:?}"
    );
    let ready: ReadinessView = c.get_json(b, "/api/v1/readiness").await.expect("readiness");
    assert!(!ready.would_fail_over, "{ready:?}");
    assert!(
        ready.reasons.iter().any(|r| r.contains("in maintenance")),
        "{ready:?}"
    );
    // A swap back is refused while it lasts.
    let (status, answer) = post(&c, b, "/api/v1/relationship/swap", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("in maintenance")),
        "{answer}"
    );
    // A second hold on the other appliance would leave no primary.
    let (status, answer) = post(
        &c,
        b,
        "/api/v1/maintenance",
        json!({"node": bname, "reason": "x", "minutes": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(maintenance(&c, b).await.nodes.len(), 1);

    // The new primary dies: the node in maintenance is not promoted; the
    // pair waits (the witness leads, nobody is primary).
    let after_move = write_keys(&c, b, "after-move/", 20).await;
    c.wait_caught_up(p).await;
    let epoch = c.status(b).await.expect("status").epoch;
    c.kill9(b);
    let timeout = Duration::from_millis(s.settings.primary_timeout_ms);
    let watched = Instant::now();
    let mut samples = 0;
    while watched.elapsed() < timeout * 5 {
        if let Some(s) = c.status(p).await {
            assert_ne!(
                s.this_host.role, "primary",
                "a node in maintenance was promoted"
            );
            assert_eq!(s.epoch, epoch, "the epoch moved");
            samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(samples > 5, "only {samples} status answers");
    let ready: ReadinessView = c.get_json(p, "/api/v1/readiness").await.expect("readiness");
    assert!(!ready.would_fail_over, "{ready:?}");

    // Ending the maintenance (on whichever node leads now: the witness)
    // lets the pair recover: the node becomes primary with every write.
    let leader = wait_until("a leader", WAIT, || c.find_leader()).await;
    let (status, answer) = delete(&c, leader, &format!("/api/v1/maintenance/{pname}")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    wait_until(
        "the node out of maintenance to become primary",
        WAIT,
        || async {
            let s = c.status(p).await?;
            (s.this_host.role == "primary" && s.epoch > epoch).then_some(())
        },
    )
    .await;
    assert_eq!(c.list(p, "before/", true).await, written);
    assert_eq!(c.list(p, "after-move/", true).await, after_move);
    let (status, _) = delete(&c, p, &format!("/api/v1/maintenance/{pname}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "ending it twice");
    let kinds: Vec<String> = history(&c, p, "maintenance_end")
        .await
        .items
        .iter()
        .map(|e| e.actor.clone())
        .collect();
    assert_eq!(kinds, vec!["admin-token:ops".to_string()]);
    assert_eq!(history(&c, p, "maintenance_start").await.items.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_expire_and_a_window_moves_the_role_and_gives_it_back() {
    let c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b) = (r.primary, r.backup);
    let (pname, bname) = (c.nodes[p].name.clone(), c.nodes[b].name.clone());

    // A hold of the backup for two seconds ends by itself.
    let (status, answer) = post(
        &c,
        p,
        "/api/v1/maintenance",
        json!({"node": bname, "reason": "cable", "seconds": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["moved_to"],
        Value::Null,
        "the backup's hold moves nothing"
    );
    assert_eq!(maintenance(&c, p).await.nodes.len(), 1);
    wait_until("the hold to expire", WAIT, || async {
        let ended = history(&c, p, "maintenance_end").await;
        ended
            .items
            .iter()
            .any(|e| e.details["reason"] == "it expired")
            .then_some(())
    })
    .await;
    assert_eq!(maintenance(&c, p).await.nodes, vec![]);
    assert_eq!(
        c.wait_roles(WAIT).await.primary,
        p,
        "a backup's hold moves nothing"
    );

    // A window in the past is refused; one ahead is scheduled.
    let now = now_ms();
    let (status, answer) = post(
        &c,
        p,
        "/api/v1/maintenance/windows",
        json!({"node": pname, "reason": "x", "start_ms": now - 1_000, "end_ms": now + 1_000}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (start, end) = (now + 2_000, now + 6_000);
    let (status, answer) = post(
        &c,
        p,
        "/api/v1/maintenance/windows",
        json!({"node": pname, "reason": "disk swap", "start_ms": start, "end_ms": end}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["windows"][0]["node"], pname.as_str());
    // Overlapping windows that would leave no primary are refused.
    let (status, answer) = post(
        &c,
        p,
        "/api/v1/maintenance/windows",
        json!({"node": bname, "reason": "x", "start_ms": start + 1_000, "end_ms": end + 1_000}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(maintenance(&c, p).await.windows.len(), 1);

    // At its start the role moves to the backup...
    wait_until("the window to move the role", WAIT, || async {
        let s = c.status(b).await?;
        (s.this_host.role == "primary").then_some(())
    })
    .await;
    assert!(
        now_ms() >= start,
        "the role moved before the window's start"
    );
    let held = maintenance(&c, b).await;
    assert_eq!(held.nodes.len(), 1, "{held:?}");
    assert_eq!(held.windows, vec![]);
    // ... and at its end it comes back.
    wait_until("the window's end to give the role back", WAIT, || async {
        let s = c.status(p).await?;
        (s.this_host.role == "primary").then_some(())
    })
    .await;
    assert!(
        now_ms() >= end,
        "the role came back before the window's end"
    );
    assert_eq!(maintenance(&c, p).await, MaintenanceView::default());
    for kind in [
        "maintenance_scheduled",
        "maintenance_reminder",
        "maintenance_start",
    ] {
        let page = history(&c, p, kind).await;
        assert!(
            page.items.iter().any(|e| e.details["window"] == json!(1)),
            "no {kind} event for window 1: {:?}",
            page.items
        );
    }
    let ends = history(&c, p, "maintenance_end").await;
    assert!(
        ends.items
            .iter()
            .any(|e| e.details["reason"] == "the window ended"),
        "{:?}",
        ends.items
    );
}
