use super::*;
use std::ffi::OsString;

/// A `tandem join` that must be refused: non-zero exit (3 when the
/// cluster refused), a one-line `tandem: ...` reason containing
/// `expect`, and no `node.toml` in the joiner's directory.
async fn assert_join_refused(
    c: &Cluster,
    name: &str,
    token: &str,
    code: Option<i32>,
    expect: &str,
) {
    let out = c.join_cmd(name, token, false).await;
    let reason = out.reason().to_string();
    match code {
        Some(code) => assert_eq!(
            out.code,
            Some(code),
            "join {name}: stdout {} stderr {}",
            out.stdout,
            out.stderr
        ),
        None => assert!(
            out.code.is_some_and(|c| c != 0),
            "join {name} did not fail: {:?} {}",
            out.code,
            out.stderr
        ),
    }
    assert!(
        reason.starts_with("tandem: ") && reason.contains(expect),
        "join {name}: reason {reason:?} does not mention {expect:?}"
    );
    assert!(
        !c.path().join(name).join("node.toml").exists(),
        "a refused join left {name}/node.toml"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_and_bad_tokens_are_refused() {
    let c = Cluster::three(&[]).await;
    let view = c.wait_voters(3).await;
    assert_eq!(view.cluster_id, c.cluster_id);
    assert_eq!(view.members.len(), 3, "{view:?}");
    let kinds: BTreeMap<&str, (&str, bool)> = view
        .members
        .iter()
        .map(|m| (m.name.as_str(), (m.kind.as_str(), m.voter)))
        .collect();
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("a", ("appliance", true)),
            ("b", ("appliance", true)),
            ("w", ("witness", true)),
        ])
    );
    let leader_id = view.leader.expect("a leader");
    let leader = c.index_of(leader_id).expect("the leader is a member");
    assert!(!c.nodes[leader].witness(), "the witness leads");
    // Exactly one node says it leads, and all agree on who.
    let mut leaders = 0;
    for i in 0..3 {
        let h = wait_until("a health view naming the leader", WAIT, || async {
            c.health(i).await.filter(|h| h.leader == Some(leader_id))
        })
        .await;
        assert_eq!(h.node, c.nodes[i].name);
        if h.role == "leader" {
            leaders += 1;
        }
    }
    assert_eq!(leaders, 1);

    // `tandem status` prints a table with the three names.
    let out = tandem([
        OsString::from("status"),
        OsString::from("--members"),
        "--dir".into(),
        c.nodes[0].dir.clone().into(),
        "--token".into(),
        c.admin_token.clone().into(),
    ])
    .await
    .expect_ok("tandem status");
    let mut lines = out.stdout.lines();
    assert!(
        lines.next().is_some_and(|l| l.contains(&c.cluster_id)),
        "status: {}",
        out.stdout
    );
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(
        &header[..3],
        ["ID", "NAME", "KIND"],
        "status: {}",
        out.stdout
    );
    let rows: BTreeMap<String, String> = lines
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[1].to_string(), cells[2].to_string())
        })
        .collect();
    assert_eq!(
        rows,
        BTreeMap::from([
            ("a".to_string(), "appliance".to_string()),
            ("b".to_string(), "appliance".to_string()),
            ("w".to_string(), "witness".to_string()),
        ]),
        "status: {}",
        out.stdout
    );

    // Refusals.
    let reused = c.used_tokens[0].clone();
    assert_join_refused(&c, "x-reused", &reused, Some(3), "already used").await;

    let before_ms = tandem_tests::now_ms();
    let expiring = c.token(false, Some(1)).await;
    let after_ms = tandem_tests::now_ms();
    assert!(after_ms - before_ms < 30_000);
    // Expires at most 1 s after the token was minted: wait for that
    // moment (bounded: about one second).
    wait_until(
        "the 1 s token to expire",
        Duration::from_secs(5),
        || async { (tandem_tests::now_ms() > after_ms + 1_200).then_some(()) },
    )
    .await;
    assert_join_refused(&c, "x-expired", &expiring, Some(3), "expired").await;

    let genuine = c.token(false, None).await;
    let parts: Vec<&str> = genuine.split('.').collect();
    assert_eq!(
        parts.len(),
        3,
        "token format id.secret.fingerprint: {genuine}"
    );
    let forged = format!("{}.{}.{}", parts[0], "A".repeat(parts[1].len()), parts[2]);
    assert_join_refused(&c, "x-forged", &forged, Some(3), "does not match").await;

    let other_ca = tandem_certs::ClusterCa::generate("another-cluster").expect("a CA");
    let foreign = format!("{}.{}.{}", parts[0], parts[1], other_ca.fingerprint());
    // The joiner pins the CA from the token: the TLS handshake with the
    // real cluster fails before anything is sent.
    let out = c.join_cmd("x-foreign", &foreign, false).await;
    eprintln!("t10: foreign CA join: {:?} {}", out.code, out.reason());
    assert!(out.code.is_some_and(|code| code != 0), "{out:?}");
    assert!(
        out.reason().starts_with("tandem: "),
        "reason {:?}",
        out.reason()
    );
    assert!(!c.path().join("x-foreign").join("node.toml").exists());

    // Membership unchanged.
    let after = c.wait_voters(3).await;
    let ids = |v: &tandem_web::ClusterView| -> Vec<(u64, bool)> {
        v.members.iter().map(|m| (m.id, m.voter)).collect()
    };
    assert_eq!(ids(&after), ids(&view));

    // The genuine token was not burnt by the forged attempts.
    let ok = c.join_cmd("x-genuine", &genuine, false).await;
    assert_eq!(ok.code, Some(0), "genuine token after forgeries: {ok:?}");
    assert!(c.path().join("x-genuine").join("node.toml").exists());
}

/// Joins that overlap (three joiners at once, as an installer running
/// on several machines would) must all succeed, or fail without burning
/// their token so that a retry works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_succeed_or_can_be_retried() {
    let c = Cluster::three(&[]).await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(c.token(false, None).await);
    }
    let names = ["j1", "j2", "j3"];
    let first = futures::future::join_all(
        names
            .iter()
            .zip(&tokens)
            .map(|(name, token)| c.join_cmd(name, token, false)),
    )
    .await;
    let mut failures = Vec::new();
    for ((name, token), out) in names.iter().zip(&tokens).zip(first) {
        if out.code == Some(0) {
            continue;
        }
        // A failed join must leave its token usable: retry once.
        let retry = c.join_cmd(&format!("{name}-retry"), token, false).await;
        if retry.code != Some(0) {
            failures.push(format!(
                "{name}: first {:?} {:?}; retry {:?} {:?}",
                out.code,
                out.reason(),
                retry.code,
                retry.reason()
            ));
        }
    }
    assert!(failures.is_empty(), "joins lost: {failures:#?}");
}
