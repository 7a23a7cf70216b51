//! A voter that comes back does not disturb a healthy primary: the backup
//! is frozen (SIGSTOP) for three primary timeouts, long past its election
//! timeout, and resumed; the primary stays primary throughout, in the same
//! term and epoch, and goes on taking writes.
use super::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Instant;

fn signal(c: &Cluster, i: usize, sig: Signal) {
    let pid = c.nodes[i].pid().expect("the node runs");
    kill(Pid::from_raw(pid as i32), sig).expect("signalling our child");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_frozen_past_its_election_timeout_returns_without_a_new_term() {
    let c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b) = (r.primary, r.backup);
    write_keys(&c, p, "before/", 20).await;
    let before = c.status(p).await.expect("primary status");
    let timeout = Duration::from_millis(before.settings.primary_timeout_ms);

    signal(&c, b, Signal::SIGSTOP);
    tokio::time::sleep(timeout * 3).await;
    signal(&c, b, Signal::SIGCONT);
    let resumed = Instant::now();

    // Watch the primary for five primary timeouts after the resume
    // (bounded: one probe every 50 ms).
    let mut samples = 0;
    while resumed.elapsed() < timeout * 5 {
        let s = c.status(p).await.expect("the primary answers");
        assert_eq!(
            s.this_host.role,
            "primary",
            "{} stopped being primary {:?} after the backup resumed (term {} → {})",
            c.nodes[p].name,
            resumed.elapsed(),
            before.this_host.term,
            s.this_host.term
        );
        assert_eq!(
            s.this_host.term,
            before.this_host.term,
            "the term changed {:?} after the backup resumed",
            resumed.elapsed()
        );
        assert_eq!(s.epoch, before.epoch, "the epoch changed");
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(samples > 10, "only {samples} samples");
    write_keys(&c, p, "after/", 20).await;
    c.wait_caught_up(b).await;
    let back = c.status(b).await.expect("backup status");
    assert_eq!(back.this_host.role, "backup");
    assert_eq!(
        back.this_host.term, before.this_host.term,
        "the backup's term grew"
    );
}

/// The primary dies while the witness is behind (it was frozen while the
/// primary and the backup committed writes): the witness cannot win an
/// election (its log is shorter), so the backup must, and the witness's
/// own attempts must not keep it from doing so (they once raised the term
/// just ahead of the backup's Pre-Votes, round after round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_dies_while_the_witness_is_behind() {
    let mut c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b, w) = (r.primary, r.backup, r.witness);
    let before = c.status(p).await.expect("primary status");

    signal(&c, w, Signal::SIGSTOP);
    let written = write_keys(&c, p, "behind/", 20).await;
    c.wait_caught_up(b).await;
    c.kill9(p);
    signal(&c, w, Signal::SIGCONT);
    let killed = Instant::now();

    let taken = wait_until(
        "the backup to become primary with the witness behind",
        Duration::from_secs(10),
        || async {
            let s = c.status(b).await?;
            (s.this_host.role == "primary" && s.epoch > before.epoch).then_some(s)
        },
    )
    .await;
    eprintln!(
        "t89: backup primary {:?} after the kill (epoch {} -> {})",
        killed.elapsed(),
        before.epoch,
        taken.epoch
    );
    // One election, the backup's: the witness, which could not win, asked
    // first (Pre-Vote) and raised no term.
    assert_eq!(
        taken.this_host.term,
        before.this_host.term + 1,
        "terms were raised by elections that could not be won"
    );
    assert_eq!(c.list(b, "behind/", true).await, written);
    c.wait_caught_up(w).await;
}
