//! Credentials rotate without a restart: `tandem token rotate-admin`
//! prints a new admin token, and the old one stops working on every node.
use super::*;
use std::ffi::OsString;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_rotates_without_a_restart() {
    let mut c = Cluster::three(&[]).await;
    let old = c.admin_token.clone();
    // Asked of a backup: the CLI follows the redirect to the primary.
    let r = c.wait_roles(WAIT).await;
    let out = tandem([
        OsString::from("token"),
        "rotate-admin".into(),
        "--dir".into(),
        c.nodes[r.backup].dir.clone().into(),
        "--token".into(),
        old.clone().into(),
    ])
    .await
    .expect_ok("tandem token rotate-admin");
    let new = out.stdout.trim().to_string();
    assert!(new.starts_with("tdm_") && new != old, "{out:?}");
    for i in 0..c.nodes.len() {
        let url = c.url(i, "/api/v1/status");
        wait_until("the new admin token on every node", WAIT, || async {
            let with = |t: &str| c.http.get(&url).bearer_auth(t.to_owned()).send();
            let (o, n) = (with(&old).await.ok()?, with(&new).await.ok()?);
            (o.status() == StatusCode::UNAUTHORIZED && n.status() == StatusCode::OK).then_some(())
        })
        .await;
    }
    c.admin_token = new;
    let h = history(&c, r.primary, "admin_token_rotated").await;
    assert_eq!(h.items.len(), 1, "{h:?}");
    // The old token cannot rotate it back.
    let again = tandem([
        OsString::from("token"),
        "rotate-admin".into(),
        "--dir".into(),
        c.nodes[r.primary].dir.clone().into(),
        "--token".into(),
        old.into(),
    ])
    .await;
    assert_ne!(again.code, Some(0), "{again:?}");
}
