//! Cluster and end-to-end tests: real `tandem` processes on loopback, driven
//! through the CLI, the HTTPS admin API and the peer listener.
//!
//! Each test owns a temporary directory and its own ports; at most two
//! clusters run at once (see `tandem_tests::cluster_slot`).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tandem_tests::{tandem, wait_until, Cluster, NodeProc, WAIT};
use tandem_web::HistoryPage;

/// The history events of `kind` on node `i`, newest first (up to 500).
async fn history(c: &Cluster, i: usize, kind: &str) -> HistoryPage {
    let path = format!("/api/v1/history?kind={kind}&limit=500");
    c.get_json(i, &path)
        .await
        .unwrap_or_else(|| panic!("GET {path} on {}", c.nodes[i].name))
}

/// A whole `PUT /api/v1/settings` body from a settings view (without its
/// read-only version fields), to edit and send back.
fn settings_body(view: &tandem_web::SettingsView) -> Value {
    let mut body = serde_json::to_value(view).expect("settings serialise");
    if let Some(o) = body.as_object_mut() {
        for k in ["version", "updated_by", "updated_at_ms"] {
            o.remove(k);
        }
    }
    body
}

/// Reads the settings on node `i`, applies `edit` to the whole body and
/// writes it back there; panics on any answer but 200.
async fn put_settings(c: &Cluster, i: usize, edit: impl FnOnce(&mut Value)) {
    let s: tandem_web::SettingsView = c.get_json(i, "/api/v1/settings").await.expect("settings");
    let mut body = settings_body(&s);
    edit(&mut body);
    let r = c
        .req(i, Method::PUT, "/api/v1/settings")
        .json(&body)
        .send()
        .await
        .expect("PUT settings");
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
}

/// Writes `count` keys `<prefix><n:05>` = `{"n": n, "s": "value-n"}` through
/// node `i`, 16 at a time; panics on any answer but 200.
async fn write_keys(c: &Cluster, i: usize, prefix: &str, count: usize) -> BTreeMap<String, Value> {
    use futures::StreamExt;
    let results: Vec<(String, Value)> = futures::stream::iter(0..count)
        .map(|n| async move {
            let key = format!("{prefix}{n:05}");
            let value = json!({ "n": n, "s": format!("value-{n}") });
            c.put_ok(i, &key, &value).await;
            (key, value)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The JSON error body of a failed request, checking it has an `error` field.
async fn error_body(resp: reqwest::Response, what: &str) -> (StatusCode, Value) {
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    assert!(
        ctype.starts_with("application/json"),
        "{what}: {status} with content-type {ctype:?}: {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: {status} body is not JSON ({e}): {text}"));
    assert!(
        body.get("error").and_then(Value::as_str).is_some(),
        "{what}: {status} body has no \"error\": {text}"
    );
    (status, body)
}

mod t10_bootstrap;
mod t20_replication;
mod t30_failover;
mod t40_snapshot_catch_up;
mod t50_bad_input;
mod t52_slow_clients;
mod t60_demo;
mod t70_relationship;
mod t75_failover_topologies;
mod t76_stood_down;
mod t80_cli;
mod t85_bandwidth;
mod t87_dead_peer;
mod t88_supervision;
mod t89_returning_voter;
mod t90_admin_tls;
mod t91_maintenance;
mod t92_certificate_names;
mod t92_login_flood;
mod t93_service_checks;
mod t94_failback;
mod t95_setup_relationship;
mod t96_sites;
mod t97_live_timeout;
mod t98_credentials;
mod t99_certificates;
