//! DESIGN rule 8: a backup stopped for maintenance (SIGTERM) or killed
//! (-9) costs the primary nothing: its log grows by a few summary lines,
//! not a line per retry, its CPU stays where the writer's load puts it,
//! writes go on, and the backup is caught up within 2 s of answering again.
use super::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tandem_tests::proc_stats::cpu_time;

/// How long the backup stays down.
const DOWN: Duration = Duration::from_secs(30);
/// The writer's pace.
const WRITE_EVERY: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug)]
enum Down {
    Sigterm,
    Kill9,
}

/// Lines and bytes of a log file.
fn size_of(log: &std::path::Path) -> (usize, u64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    (text.lines().count(), text.len() as u64)
}

/// The fraction of one core process `pid` used over `window`.
async fn cpu_share(pid: u32, window: Duration) -> f64 {
    let (t0, c0) = (Instant::now(), cpu_time(pid).expect("cpu time"));
    tokio::time::sleep(window).await;
    let (t1, c1) = (Instant::now(), cpu_time(pid).expect("cpu time"));
    (c1 - c0).as_secs_f64() / (t1 - t0).as_secs_f64()
}

async fn backup_down_costs_the_primary_nothing(how: Down) {
    let mut c = Cluster::three(&[]).await;
    let r = c.wait_roles(WAIT).await;
    let (p, b) = (r.primary, r.backup);
    let pid = c.nodes[p].pid().expect("the primary runs");

    // A writer at a steady pace, counting outcomes.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let writer = {
        let req = c.req(p, Method::PUT, "/api/v1/config/x");
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(WRITE_EVERY);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let Some(rb) = req.try_clone() else { return };
                match rb.json(&json!({ "value": n })).send().await {
                    Ok(r) if r.status() == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    wait_until("the writer's first writes", WAIT, || async {
        (ok.load(Ordering::Relaxed) > 10).then_some(())
    })
    .await;
    let baseline = cpu_share(pid, Duration::from_secs(5)).await;

    let log = c.nodes[p].log.clone();
    let (lines0, bytes0) = size_of(&log);
    let (ok0, failed0) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    match how {
        Down::Sigterm => {
            c.stop(b).await;
        }
        Down::Kill9 => c.kill9(b),
    }
    let down = cpu_share(pid, DOWN).await;
    let (lines1, bytes1) = size_of(&log);
    let (ok1, failed1) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let grew = (lines1 - lines0, bytes1 - bytes0);
    println!(
        "{how:?} of the backup for {DOWN:?}: the primary's log grew by {} lines, {} bytes; \
         CPU {:.1} % of a core (writer alone {:.1} %); {} writes ok, {} failed",
        grew.0,
        grew.1,
        down * 100.0,
        baseline * 100.0,
        ok1 - ok0,
        failed1 - failed0
    );
    assert!(
        grew.0 <= 100 && grew.1 <= 64 * 1024,
        "{how:?}: the primary's log grew by {} lines, {} bytes:\n{}",
        grew.0,
        grew.1,
        tandem_tests::tail(&log, 40)
    );
    assert!(
        down <= baseline + 0.10,
        "{how:?}: the primary used {:.1} % of a core with the backup down, {:.1} % before",
        down * 100.0,
        baseline * 100.0
    );
    assert_eq!(
        failed1, failed0,
        "{how:?}: writes failed while the backup was down"
    );
    assert!(
        ok1 - ok0 >= (DOWN.as_millis() / WRITE_EVERY.as_millis() / 4) as u64,
        "{how:?}: only {} writes in {DOWN:?}",
        ok1 - ok0
    );

    // Back: caught up within 2 s of answering, the writer still running.
    c.spawn(b);
    c.wait_health(b).await;
    let answered = Instant::now();
    let caught_up = wait_until("the backup to catch up", WAIT, || async {
        // The leader first: a backup in step has applied as far a
        // moment later.
        let leader = c.applied(p).await?;
        let mine = c.applied(b).await?;
        (mine >= leader).then(|| answered.elapsed())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    println!("{how:?}: the backup caught up {caught_up:?} after it answered again");
    assert!(
        caught_up <= Duration::from_secs(2),
        "{how:?}: caught up only {caught_up:?} after it answered"
    );
    c.wait_caught_up(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_stopped_for_maintenance_costs_the_primary_nothing() {
    backup_down_costs_the_primary_nothing(Down::Sigterm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backup_costs_the_primary_nothing() {
    backup_down_costs_the_primary_nothing(Down::Kill9).await;
}
