use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_and_followers_redirect() {
    let c = Cluster::three(&[]).await;
    let l = c.leader().await;
    let written = write_keys(&c, l, "k/", 1000).await;
    assert_eq!(written.len(), 1000);

    let on_leader = c.list(l, "k/", false).await;
    assert_eq!(on_leader, written, "leader's linearizable list");
    let leader_applied = c.applied(l).await.expect("leader applied index");

    for f in (0..3).filter(|&i| i != l) {
        let name = &c.nodes[f].name;
        wait_until(
            &format!("{name} to apply {leader_applied}"),
            WAIT,
            || async {
                c.applied(f)
                    .await
                    .filter(|&a| a >= leader_applied)
                    .map(|_| ())
            },
        )
        .await;
        assert_eq!(c.list(f, "k/", true).await, written, "stale list on {name}");

        // One stale read: 200 with the applied-index header.
        let resp = c
            .req(f, Method::GET, "/api/v1/config/k/00042?stale=true")
            .send()
            .await
            .expect("stale read");
        assert_eq!(resp.status(), StatusCode::OK);
        let idx: u64 = resp
            .headers()
            .get("x-tandem-applied-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("X-Tandem-Applied-Index on a stale read");
        assert!(idx >= leader_applied, "{idx} < {leader_applied}");
        let entry: tandem_web::ConfigEntryView = resp.json().await.expect("an entry");
        assert_eq!(entry.value, written["k/00042"]);

        // A write on a follower: 421 pointing at the leader.
        let resp = c
            .put(f, "k/follower", &json!(1))
            .await
            .expect("put on a follower");
        assert_eq!(
            resp.status(),
            StatusCode::MISDIRECTED_REQUEST,
            "PUT on {name}"
        );
        let loc = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert_eq!(
            loc.as_deref(),
            Some(c.url(l, "/api/v1/config/k/follower").as_str()),
            "Location of a write on {name}"
        );
        error_body(resp, "PUT on a follower").await;

        // A linearizable read on a follower: 421 too.
        let resp = c
            .req(f, Method::GET, "/api/v1/config/k/00042")
            .send()
            .await
            .expect("read on a follower");
        assert_eq!(
            resp.status(),
            StatusCode::MISDIRECTED_REQUEST,
            "GET on {name}"
        );
        let loc = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert_eq!(
            loc.as_deref(),
            Some(c.url(l, "/api/v1/config/k/00042").as_str())
        );
    }
    // The refused follower write did not happen.
    let resp = c
        .req(l, Method::GET, "/api/v1/config/k/follower")
        .send()
        .await
        .expect("read on the leader");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
