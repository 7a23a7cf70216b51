use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_behind_a_purged_log_catches_up_by_snapshot() {
    let mut c = Cluster::three(&["--snapshot-every", "100", "--keep-behind-snapshot", "10"]).await;
    let l = c.leader().await;
    let f = (0..3)
        .find(|&i| i != l && !c.nodes[i].witness())
        .expect("an appliance follower");
    c.wait_caught_up(f).await;
    let f_last = c
        .health(f)
        .await
        .and_then(|h| h.last_log_index)
        .expect("follower last log index");
    assert_eq!(c.stop(f).await, Some(0), "SIGTERM exit code");

    let written = write_keys(&c, l, "s/", 600).await;
    let purged = wait_until(
        "the leader to purge the log the follower needs",
        WAIT,
        || async {
            c.health(l)
                .await
                .and_then(|h| h.purged_index)
                .filter(|&p| p > f_last)
        },
    )
    .await;
    let leader_h = c.health(l).await.expect("leader health");
    assert!(leader_h.snapshot_index.is_some_and(|s| s >= purged));

    c.restart(f).await;
    c.wait_caught_up(f).await;
    let h = c.health(f).await.expect("follower health");
    let snap = h.snapshot_index.expect("the follower has a snapshot");
    eprintln!(
        "t40: follower {} stopped at log {f_last}; leader purged {purged}; follower now {h:?}",
        c.nodes[f].name
    );
    assert!(
        snap > f_last,
        "snapshot index {snap} should cover entries written while it was down (last log {f_last})"
    );
    assert_eq!(c.list(f, "s/", true).await, written);
    assert_eq!(c.list(l, "s/", false).await, written);
}
