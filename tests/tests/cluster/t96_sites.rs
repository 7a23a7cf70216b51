//! Sites and anti-affinity: a second appliance on the same host or site
//! joins only with `--allow-same-site`; status and readiness then warn,
//! and each node shows the others' sites.
use super::*;
use tandem_node::config::DataDir;

/// The exit code of a refused command (README "Exit codes").
const EXIT_REFUSED: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_appliance_on_one_host_or_site_joins_only_when_allowed() {
    let mut c = Cluster::init("a", &[]).await;
    // The site is given in node.toml after init: the primary records it
    // when it starts again.
    c.stop(0).await;
    let data = DataDir::new(&c.nodes[0].dir);
    let mut cfg = data.load().expect("a's node.toml");
    cfg.site = Some("north".into());
    data.save(&cfg).expect("saving a's node.toml");
    c.nodes[0].cfg = cfg;
    c.restart(0).await;
    wait_until("a's site recorded", WAIT, || async {
        let h = history(&c, 0, "placement").await;
        h.items
            .iter()
            .any(|e| e.actor == "tandem (node.toml)" && e.details["site"] == "north")
            .then_some(())
    })
    .await;
    assert_eq!(
        c.status(0)
            .await
            .expect("a's status")
            .this_host
            .site
            .as_deref(),
        Some("north")
    );

    // b on the same machine (the derived host identity): refused, nothing
    // written, the token kept for the next try.
    let token = c.token(false, None).await;
    let same_host = c.join_cmd_with("b", &token, false, &[]).await;
    assert_eq!(same_host.code, Some(EXIT_REFUSED), "{}", same_host.stderr);
    assert!(
        same_host.stderr.contains("shares host \"machine-")
            && same_host.stderr.contains("with appliance a")
            && same_host.stderr.contains("--allow-same-site"),
        "{}",
        same_host.stderr
    );
    assert!(!c.path().join("b").join("node.toml").exists());

    // Another host on the same site: refused for the site alone.
    let same_site = c
        .join_cmd_with(
            "b",
            &token,
            false,
            &["--host-id", "hv-2", "--site", "north"],
        )
        .await;
    assert_eq!(same_site.code, Some(EXIT_REFUSED), "{}", same_site.stderr);
    assert!(
        same_site
            .stderr
            .contains("shares site \"north\" with appliance a"),
        "{}",
        same_site.stderr
    );
    assert!(!c.path().join("b").join("node.toml").exists());

    // Allowed by the administrator: admitted, and warned about.
    c.join_cmd_with(
        "b",
        &token,
        false,
        &["--host-id", "hv-2", "--site", "north", "--allow-same-site"],
    )
    .await
    .expect_ok("join with --allow-same-site");
    let dir = c.path().join("b");
    let cfg = DataDir::new(&dir).load().expect("b's node.toml");
    assert_eq!(
        (cfg.site.as_deref(), cfg.host_id.as_deref()),
        (Some("north"), Some("hv-2"))
    );
    c.nodes.push(NodeProc {
        name: "b".into(),
        log: c.path().join("b.log"),
        dir,
        cfg,
        child: None,
    });
    c.spawn(1);
    c.wait_health(1).await;
    c.wait_members(2).await;
    let warning = "appliances a and b share site \"north\": one failure there takes both";
    for i in [0, 1] {
        wait_until("the same-site warning in status", WAIT, || async {
            c.status(i)
                .await?
                .this_host
                .notes
                .iter()
                .any(|n| n == warning)
                .then_some(())
        })
        .await;
        let r: tandem_web::ReadinessView =
            c.get_json(i, "/api/v1/readiness").await.expect("readiness");
        assert!(r.warnings.iter().any(|w| w == warning), "{r:?}");
    }
    let on_b = c.status(1).await.expect("b's status");
    assert_eq!(on_b.this_host.site.as_deref(), Some("north"));
    let a = on_b.peers.iter().find(|p| p.name == "a").expect("a on b");
    assert_eq!(a.site.as_deref(), Some("north"));
    let joined = history(&c, 0, "join").await;
    assert!(
        joined
            .items
            .iter()
            .any(|e| e.details["name"] == "b" && e.details["allow_same_site"] == true),
        "{joined:?}"
    );
    let text = tandem([
        "status".into(),
        "--dir".into(),
        c.nodes[0].dir.clone().into_os_string(),
        "--token".into(),
        std::ffi::OsString::from(&c.admin_token),
    ])
    .await
    .expect_ok("tandem status")
    .stdout;
    assert!(text.contains(warning), "{text}");

    // A witness is never refused for its place, but one on an appliance's
    // host is warned about: losing that host loses two votes.
    c.add_node("w", true).await;
    wait_until("the witness warning", WAIT, || async {
        c.status(0)
            .await?
            .this_host
            .notes
            .iter()
            .any(|n| {
                n.starts_with("witness w runs on the same host \"machine-")
                    && n.contains("as appliance a")
            })
            .then_some(())
    })
    .await;
}
