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
mod t60_demo;
mod t70_relationship;
mod t75_failover_topologies;
mod t80_cli;
mod t85_bandwidth;
mod t87_dead_peer;
mod t88_supervision;
mod t89_returning_voter;
mod t90_admin_tls;
mod t91_maintenance;
mod t93_service_checks;
mod t94_failback;
mod t95_setup_relationship;
