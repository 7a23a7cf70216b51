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

    // The genuine token was not burnt by the forged attempts: it passes
    // every token check, and is refused only because the relationship
    // has its two appliances already.
    assert_join_refused(&c, "x-genuine", &genuine, Some(3), "two appliances already").await;
    // A second witness neither.
    let witness = c.token(true, None).await;
    let out = c.join_cmd("x-witness", &witness, true).await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.reason().contains("has a witness already"), "{out:?}");
    assert_eq!(ids(&c.wait_voters(3).await), ids(&view));
}

/// A token admits only its kind (a witness token never makes an appliance,
/// which would receive the CA key), and a join with a made-up token costs
/// no replicated entry: it is refused before anything is proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_admit_their_kind_and_forged_joins_cost_nothing() {
    let mut c = Cluster::init("a", &[]).await;
    let witness = c.token(true, None).await;
    assert_join_refused(&c, "x", &witness, Some(3), "for kind witness").await;
    assert!(!c.path().join("x").join("ca.key").exists());
    // The refusal did not spend it: it still admits a witness.
    c.join_cmd("w", &witness, true)
        .await
        .expect_ok("the witness token admits a witness");
    let appliance = c.token(false, None).await;
    let out = c.join_cmd("y", &appliance, true).await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.reason().contains("for kind appliance"), "{out:?}");
    c.add_node("b", false).await;

    // 20 joins with made-up tokens of the right form and CA.
    let fp = appliance
        .rsplit('.')
        .next()
        .expect("a fingerprint")
        .to_string();
    let committed = |h: Option<tandem_web::HealthView>| h.and_then(|h| h.committed_index);
    let l = c.leader().await;
    let before = committed(c.health(l).await).expect("a committed index");
    // Refused, and after five refusals from one address within a minute
    // (two happened above: the kinds), rate limited.
    let mut statuses = Vec::new();
    for n in 0..20 {
        let r = c
            .req(l, Method::POST, "/api/v1/join")
            .json(&json!({
                "token": format!("f{n}.forgedsecret{n}.{fp}"), "name": format!("f{n}"),
                "kind": "appliance", "peer_addr": "127.0.0.1:9", "api_addr": "https://127.0.0.1:9",
                "csr_pem": "not a CSR"
            }))
            .send()
            .await
            .expect("POST /api/v1/join");
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"), "{r:?}");
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses,
        [[403; 3].as_slice(), [429; 17].as_slice()].concat(),
        "{statuses:?}"
    );
    let after = committed(c.health(l).await).expect("a committed index");
    // Background duties may commit one or two entries meanwhile; before
    // the local check every forged join committed one.
    assert!(
        after - before < 5,
        "20 forged joins advanced the commit index from {before} to {after}"
    );
}

/// Joins that overlap (joiners at once, as an installer running on
/// several machines would): the witness and one appliance get in, or fail
/// without burning their token so that a retry works; two appliances
/// racing for the one free place never both get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_succeed_or_can_be_retried() {
    let c = Cluster::init("a", &[]).await;
    let mut joiners = Vec::new();
    for (name, witness) in [("j1", false), ("j2", false), ("jw", true)] {
        joiners.push((name, witness, c.token(witness, None).await));
    }
    let first = futures::future::join_all(
        joiners
            .iter()
            .map(|(name, witness, token)| c.join_cmd(name, token, *witness)),
    )
    .await;
    let mut failures = Vec::new();
    let mut full = 0;
    for ((name, witness, token), out) in joiners.iter().zip(first) {
        if out.code == Some(0) {
            continue;
        }
        if out.reason().contains("two appliances already") {
            full += 1;
            continue;
        }
        // A failed join must leave its token usable: retry once.
        let retry = c.join_cmd(&format!("{name}-retry"), token, *witness).await;
        if retry.reason().contains("two appliances already") {
            full += 1;
        } else if retry.code != Some(0) {
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
    assert_eq!(full, 1, "exactly one appliance found the relationship full");
    let view: tandem_web::ClusterView = c.get_json(0, "/api/v1/cluster").await.expect("cluster");
    let mut kinds: Vec<&str> = view.members.iter().map(|m| m.kind.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["appliance", "appliance", "witness"], "{view:?}");
}

/// Every file and directory a node keeps is for its own user only: the
/// data directory 0700, nothing in it readable by group or others (keys,
/// log segments, sled's files with the password hashes) but the
/// certificates and node.toml.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_for_its_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::three(&[]).await;
    let l = c.leader().await;
    for n in 0..20 {
        c.put_ok(l, &format!("private/{n}"), &json!(n)).await;
    }
    fn walk(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, u32)>) {
        for e in std::fs::read_dir(dir).expect("readable").flatten() {
            let meta = e.metadata().expect("metadata");
            out.push((e.path(), meta.permissions().mode() & 0o777));
            if meta.is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    for node in &c.nodes {
        let mode = std::fs::metadata(&node.dir)
            .expect("the data directory")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{}", node.dir.display());
        let mut all = Vec::new();
        walk(&node.dir, &mut all);
        assert!(all.len() > 5, "{all:?}");
        // Certificates and node.toml hold nothing secret (0644, inside the
        // 0700 directory).
        let public = ["ca.pem", "node.pem", "node.toml"].map(|f| node.dir.join(f));
        let open: Vec<_> = all
            .iter()
            .filter(|(p, m)| m & 0o077 != 0 && !public.contains(p))
            .collect();
        assert!(open.is_empty(), "readable by others: {open:?}");
    }
}

/// A node raises its open-files limit (to the hard limit, at most 65,536):
/// its admin connections never starve Raft of descriptors. Started with a
/// soft limit of 256 (`prlimit`, which execs the node: same PID).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_raises_its_open_files_limit() {
    let root = tempfile::tempdir().expect("a temporary directory");
    let dir = root.path().join("a");
    let (init, ca_pem, _) = tandem_tests::init_node(&dir, "a", &[]).await;
    let limits_of = |pid: u32| -> (u64, String) {
        let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or_default()
            .to_string();
        let soft = line
            .split_whitespace()
            .nth(3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let hard = line.split_whitespace().nth(4).unwrap_or("0").to_string();
        (soft, hard)
    };
    let (_, hard) = limits_of(std::process::id());
    let want = if hard == "unlimited" {
        65_536
    } else {
        hard.parse::<u64>().expect("a number").min(65_536)
    };
    assert!(want > 256, "the hard limit {hard} leaves nothing to raise");
    let mut child = tokio::process::Command::new("prlimit")
        .arg(format!("--nofile=256:{hard}"))
        .arg(tandem_tests::tandem_bin())
        .arg("run")
        .arg("--dir")
        .arg(&dir)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit runs the node");
    let pid = child.id().expect("a pid");
    let http = tandem_tests::https_client(&ca_pem);
    let api = init["api"].as_str().expect("api").to_string();
    wait_until("the node to answer", WAIT, || async {
        let r = http.get(format!("{api}/health")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let (soft, _) = limits_of(pid);
    let _ = child.kill().await;
    assert_eq!(soft, want, "the node runs with a soft limit of {soft}");
}
