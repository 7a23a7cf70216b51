//! Real-browser tests of the admin web UI: Debian's `chromium` driven by
//! `chromedriver` (WebDriver, through fantoccini) against a real 3-node
//! cluster. Screenshots of every step go to `target/ui-screenshots/`.
//!
//! Needs `chromium` and `chromium-driver` (`.ci/run` installs them). Where
//! they are missing the test says why and passes, except with `CI=true`,
//! where it fails.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Method;
use serde_json::{json, Value};
use tandem_tests::{Cluster, WAIT};

const USER: &str = "ui-admin";
const PASSWORD: &str = "ui-password-1";
/// Bound on waiting for something to appear on a page.
const PAGE_WAIT: Duration = Duration::from_secs(30);

fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("creating target/ui-screenshots");
    dir
}

/// A chromedriver child process on a free loopback port.
struct Driver {
    child: tokio::process::Child,
    url: String,
    chromium: PathBuf,
    profiles: Vec<tempfile::TempDir>,
}

impl Driver {
    /// Starts chromedriver, or explains why it cannot (then `None`; a
    /// failure under `CI=true`).
    async fn start() -> Option<Self> {
        let chromium = which("chromium").or_else(|| which("chromium-browser"));
        let driver = which("chromedriver");
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let why = "browser tests need `chromium` and `chromedriver` on PATH \
                       (apt-get install -y chromium chromium-driver)";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{why}; failing because CI=true"
            );
            eprintln!("SKIPPED: {why}");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(Self {
            child,
            url,
            chromium,
            profiles: Vec::new(),
        })
    }

    /// A new headless browser session with its own profile (own cookies).
    async fn browser(&mut self, width: u32, height: u32) -> Client {
        let profile = tempfile::Builder::new()
            .prefix("tandem-chromium-")
            .tempdir()
            .expect("a profile directory");
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            // The cluster CA is not in the browser's store.
            "--ignore-certificate-errors".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        self.profiles.push(profile);
        let caps = json!({
            "acceptInsecureCerts": true,
            "goog:chromeOptions": { "binary": self.chromium, "args": args }
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a WebDriver session");
        client
            .set_window_size(width, height)
            .await
            .expect("window size");
        client
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Only our own child, by its handle.
        let _ = self.child.start_kill();
    }
}

async fn shot(b: &Client, name: &str) {
    let png = b.screenshot().await.expect("a screenshot");
    let path = screenshots_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("writing the screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// Text of the element `css`, or "" when absent.
async fn text(b: &Client, css: &str) -> String {
    match b.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the text of `css` satisfies `ok`; returns it.
async fn wait_text(b: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let t = text(b, css).await;
        if ok(&t) {
            return t;
        }
        if Instant::now() >= deadline {
            let _ = shot(b, &format!("failed-{}", css.replace(['#', ' ', '.'], "_"))).await;
            panic!("timed out waiting for {what} ({css} says {t:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn fill(b: &Client, css: &str, value: &str) {
    let e = b.find(Locator::Css(css)).await.expect(css);
    e.clear().await.expect("clear");
    e.send_keys(value).await.expect("typing");
}

async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

async fn login(b: &Client, base: &str, user: &str, password: &str) {
    b.goto(&format!("{base}/login")).await.expect("login page");
    fill(b, "#user", user).await;
    fill(b, "#password", password).await;
    click(b, "#login").await;
}

/// Value of a form field.
async fn value(b: &Client, css: &str) -> String {
    b.find(Locator::Css(css))
        .await
        .expect(css)
        .prop("value")
        .await
        .expect("value")
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_page_in_a_real_browser() {
    let Some(mut driver) = Driver::start().await else {
        return;
    };
    // The browsers start before the cluster: a browser's start-up takes
    // both cores of a small machine for a moment, long enough for a debug
    // build's primary to miss its lease and lose the role.
    let on_p = driver.browser(1280, 800).await;
    let on_b = driver.browser(1280, 800).await;
    let c = Cluster::three(&[]).await;
    let roles = c.wait_roles(WAIT).await;
    let (p, bk) = (roles.primary, roles.backup);
    let (p_name, b_name) = (c.nodes[p].name.clone(), c.nodes[bk].name.clone());
    let (p_url, b_url) = (c.nodes[p].api().to_owned(), c.nodes[bk].api().to_owned());

    // A UI user, made through the API with the admin token (replicated).
    let r = c
        .req(p, Method::POST, "/api/v1/users")
        .json(&json!({ "name": USER, "password": PASSWORD }))
        .send()
        .await
        .expect("POST /api/v1/users");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);

    // A wrong password is refused.
    login(&on_p, &p_url, USER, "not the password").await;
    wait_text(&on_p, "#login-error", "the refusal", |t| {
        t.contains("wrong user name or password")
    })
    .await;
    shot(&on_p, "01-wrong-password").await;

    // Log in: this host is the primary, the peer the backup.
    login(&on_p, &p_url, USER, PASSWORD).await;
    wait_text(&on_p, "#host-role", "this host as primary", |t| {
        t == "primary"
    })
    .await;
    wait_text(
        &on_p,
        &format!("tr[data-peer=\"{b_name}\"] .peer-role"),
        "the peer as backup",
        |t| t == "backup",
    )
    .await;
    wait_text(&on_p, "#role-banner", "the primary banner", |t| {
        t.contains("PRIMARY")
    })
    .await;
    assert_eq!(text(&on_p, "#swap").await, "Become backup");
    shot(&on_p, "02-failover-primary").await;

    // Sync now (with verify) shows its result.
    click(&on_p, "#sync-verify").await;
    click(&on_p, "#sync-now").await;
    let outcome = wait_text(&on_p, "#action-status", "the sync result", |t| {
        t.starts_with("Synced") || t.starts_with("Refused") || t.starts_with("Failed")
    })
    .await;
    assert!(outcome.starts_with("Synced"), "{outcome}");
    assert!(outcome.contains("digests match"), "{outcome}");
    shot(&on_p, "03-sync-now").await;

    // Become backup, confirmed in the dialog.
    click(&on_p, "#swap").await;
    let dialog = wait_text(&on_p, "#confirm-text", "the confirmation", |t| {
        t.contains("becomes the backup")
    })
    .await;
    assert!(dialog.contains(&b_name), "{dialog}");
    shot(&on_p, "04-swap-confirm").await;
    click(&on_p, "#confirm-ok").await;
    let outcome = wait_text(&on_p, "#action-status", "the swap result", |t| {
        t.starts_with("Swap done") || t.starts_with("Refused") || t.starts_with("Failed")
    })
    .await;
    assert!(outcome.starts_with("Swap done"), "{outcome}");
    // The page follows without a reload (server-sent events).
    wait_text(&on_p, "#host-role", "this host as backup", |t| {
        t == "backup"
    })
    .await;
    wait_text(
        &on_p,
        &format!("tr[data-peer=\"{b_name}\"] .peer-role"),
        "the peer as primary",
        |t| t == "primary",
    )
    .await;
    wait_text(&on_p, "#role-banner", "the backup banner", |t| {
        t.contains("BACKUP") && t.contains(&b_name)
    })
    .await;
    wait_text(&on_p, "#swap", "the swap label", |t| t == "Become primary").await;
    let link = on_p
        .find(Locator::Css("#primary-link"))
        .await
        .expect("a link to the primary")
        .attr("href")
        .await
        .expect("href")
        .unwrap_or_default();
    assert!(link.starts_with(&b_url), "{link} vs {b_url}");
    shot(&on_p, "05-after-swap-backup").await;

    // The other node's page shows it as the primary.
    login(&on_b, &b_url, USER, PASSWORD).await;
    wait_text(&on_b, "#host-role", "the other node as primary", |t| {
        t == "primary"
    })
    .await;
    wait_text(
        &on_b,
        &format!("tr[data-peer=\"{p_name}\"] .peer-role"),
        "the old primary as backup",
        |t| t == "backup",
    )
    .await;
    shot(&on_b, "06-other-node-primary").await;

    // Settings: a validation error is shown beside the field...
    on_b.goto(&format!("{b_url}/settings"))
        .await
        .expect("settings");
    wait_text(&on_b, "#settings-meta", "the settings", |t| {
        t.starts_with("Version")
    })
    .await;
    fill(&on_b, "#verify_interval_secs", "5").await;
    click(&on_b, "#save-settings").await;
    wait_text(
        &on_b,
        "[data-for=\"verify_interval_secs\"]",
        "the field error",
        |t| !t.is_empty(),
    )
    .await;
    shot(&on_b, "07-settings-invalid").await;
    // ...and a valid change is saved on the primary...
    fill(&on_b, "#verify_interval_secs", "7200").await;
    click(&on_b, "#save-settings").await;
    wait_text(&on_b, "#settings-status", "the save", |t| {
        t.starts_with("Saved")
    })
    .await;
    shot(&on_b, "08-settings-saved").await;
    // ...and seen on the other node.
    on_p.goto(&format!("{p_url}/settings"))
        .await
        .expect("settings");
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        on_p.refresh().await.expect("reload");
        wait_text(&on_p, "#settings-meta", "the settings", |t| {
            t.starts_with("Version")
        })
        .await;
        if value(&on_p, "#verify_interval_secs").await == "7200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the setting did not reach {p_name}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    shot(&on_p, "09-settings-on-other-node").await;

    // Phone width: the failover page still fits and its buttons are usable.
    on_p.set_window_size(390, 844).await.expect("narrow window");
    on_p.goto(&format!("{p_url}/"))
        .await
        .expect("failover page");
    wait_text(&on_p, "#host-role", "the role at phone width", |t| {
        t == "backup"
    })
    .await;
    let fits = on_p
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(
        fits,
        Value::Bool(true),
        "no horizontal page scroll at 390 px"
    );
    let sync = on_p
        .find(Locator::Css("#sync-now"))
        .await
        .expect("sync button");
    assert!(sync.is_displayed().await.expect("displayed"));
    shot(&on_p, "10-phone-width").await;

    on_p.close().await.expect("closing the browser");
    on_b.close().await.expect("closing the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maintenance_section_in_a_real_browser() {
    let Some(mut driver) = Driver::start().await else {
        return;
    };
    // Before the cluster: see `failover_page_in_a_real_browser`.
    let on_p = driver.browser(1280, 1000).await;
    let mut c = Cluster::three(&[]).await;
    let roles = c.wait_roles(WAIT).await;
    let (p, bk) = (roles.primary, roles.backup);
    let (p_url, b_name) = (c.nodes[p].api().to_owned(), c.nodes[bk].name.clone());
    let r = c
        .req(p, Method::POST, "/api/v1/users")
        .json(&json!({ "name": USER, "password": PASSWORD }))
        .send()
        .await
        .expect("POST /api/v1/users");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);

    login(&on_p, &p_url, USER, PASSWORD).await;
    wait_text(&on_p, "#host-role", "this host as primary", |t| {
        t == "primary"
    })
    .await;
    let banner = on_p
        .find(Locator::Css("#maintenance-banner"))
        .await
        .expect("the maintenance banner");
    assert!(
        !banner.is_displayed().await.expect("displayed"),
        "no maintenance yet"
    );

    // Put the backup in maintenance from the form, confirmed in the dialog.
    on_p.execute(
        "document.querySelector('#maintenance-node').value = arguments[0];",
        vec![json!(b_name)],
    )
    .await
    .expect("choosing the node");
    fill(&on_p, "#maintenance-reason", "replace a fan").await;
    fill(&on_p, "#maintenance-minutes", "45").await;
    click(&on_p, "#maintenance-start-button").await;
    let dialog = wait_text(&on_p, "#confirm-text", "the confirmation", |t| {
        t.contains("held out of service")
    })
    .await;
    assert!(dialog.contains(&b_name), "{dialog}");
    click(&on_p, "#confirm-ok").await;
    let outcome = wait_text(&on_p, "#maintenance-status", "the outcome", |t| {
        t.contains("started") || t.starts_with("Refused") || t.starts_with("Failed")
    })
    .await;
    assert!(outcome.contains("started"), "{outcome}");
    wait_text(&on_p, "#maintenance-banner", "the banner", |t| {
        t.contains(&format!("MAINTENANCE: {b_name}")) && t.contains("replace a fan")
    })
    .await;
    wait_text(
        &on_p,
        &format!("#maintenance-nodes tr[data-node=\"{b_name}\"]"),
        "the held node's row",
        |t| t.contains("replace a fan"),
    )
    .await;
    shot(&on_p, "30-maintenance-started").await;

    // End it from its row.
    click(&on_p, ".maintenance-end").await;
    wait_text(&on_p, "#maintenance-status", "the end", |t| {
        t.contains("ended")
    })
    .await;
    let deadline = Instant::now() + PAGE_WAIT;
    while banner.is_displayed().await.expect("displayed") {
        assert!(Instant::now() < deadline, "the banner stayed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Schedule a window an hour ahead, then cancel it.
    on_p.execute(
        "const d = new Date(Date.now() + 3600e3); d.setSeconds(0, 0);\
         const p = (n) => String(n).padStart(2, '0');\
         document.querySelector('#maintenance-start').value = d.getFullYear() + '-' +\
           p(d.getMonth() + 1) + '-' + p(d.getDate()) + 'T' + p(d.getHours()) + ':' + p(d.getMinutes());",
        vec![],
    )
    .await
    .expect("setting the start");
    fill(&on_p, "#maintenance-reason", "disk swap").await;
    click(&on_p, "#maintenance-start-button").await;
    wait_text(&on_p, "#maintenance-status", "the scheduling", |t| {
        t.contains("Window scheduled") || t.starts_with("Refused") || t.starts_with("Failed")
    })
    .await;
    wait_text(&on_p, "#maintenance-windows tbody", "the window row", |t| {
        t.contains("disk swap")
    })
    .await;
    shot(&on_p, "31-maintenance-window").await;
    click(&on_p, "#maintenance-windows tbody button").await;
    wait_text(&on_p, "#maintenance-status", "the cancel", |t| {
        t.contains("cancelled")
    })
    .await;
    wait_text(&on_p, "#maintenance-windows tbody", "no window", |t| {
        t.is_empty()
    })
    .await;
    let m: Value = c
        .get_json(p, "/api/v1/maintenance")
        .await
        .expect("maintenance");
    assert_eq!(m, json!({"nodes": [], "windows": []}));

    // The settings page shows the maintenance settings.
    on_p.goto(&format!("{p_url}/settings"))
        .await
        .expect("settings");
    wait_text(&on_p, "#settings-meta", "the settings", |t| {
        t.starts_with("Version")
    })
    .await;
    assert_eq!(value(&on_p, "#maintenance_max_minutes").await, "1440");

    // A service check from the settings page: bad JSON is refused beside
    // the field; a TCP check of this node's own admin port is shown
    // healthy on the failover page.
    fill(&on_p, "#checks", "[{").await;
    click(&on_p, "#save-settings").await;
    wait_text(&on_p, "[data-for=\"checks\"]", "the checks error", |t| {
        t.contains("JSON")
    })
    .await;
    let api_port = p_url
        .rsplit(':')
        .next()
        .expect("a port")
        .trim_end_matches('/');
    let check = json!([{
        "name": "admin-port", "kind": "tcp", "target": format!("127.0.0.1:{api_port}"),
        "nodes": [c.nodes[p].name], "interval_ms": 200, "timeout_ms": 100, "rise": 1, "fall": 2
    }]);
    fill(&on_p, "#checks", &check.to_string()).await;
    // Failback to this node (already primary: nothing moves) and the
    // check hold-down, from the same page.
    let p_name = c.nodes[p].name.clone();
    fill(&on_p, "#failback_preferred", &p_name).await;
    fill(&on_p, "#failback_delay_secs", "5").await;
    fill(&on_p, "#check_hold_down_secs", "120").await;
    click(&on_p, "#save-settings").await;
    wait_text(&on_p, "#settings-status", "the save", |t| {
        t.starts_with("Saved")
    })
    .await;
    let saved: Value = c.get_json(p, "/api/v1/settings").await.expect("settings");
    assert_eq!(
        (&saved["failback"], &saved["check_hold_down_secs"]),
        (&json!({"preferred": p_name, "delay_secs": 5}), &json!(120)),
        "{saved}"
    );
    on_p.goto(&format!("{p_url}/"))
        .await
        .expect("failover page");
    wait_text(
        &on_p,
        "#check-table tr[data-check=\"admin-port\"] .check-state",
        "the check's state",
        |t| t == "healthy",
    )
    .await;
    // Each peer's site (none given here).
    assert_eq!(
        text(&on_p, &format!("tr[data-peer=\"{b_name}\"] .peer-site")).await,
        "–"
    );
    shot(&on_p, "32-service-check").await;

    // Become backup even if the peer cannot be contacted: the backup is
    // stopped, the primary stands down; Become primary on it undoes that.
    assert_eq!(c.stop(bk).await, Some(0));
    click(&on_p, "#swap-force").await;
    click(&on_p, "#swap").await;
    wait_text(&on_p, "#confirm-text", "the forced confirmation", |t| {
        t.contains("stands down anyway")
    })
    .await;
    click(&on_p, "#confirm-ok").await;
    let outcome = wait_text(&on_p, "#action-status", "the forced demotion", |t| {
        t.starts_with("Stood down") || t.starts_with("Failed") || t.starts_with("Refused")
    })
    .await;
    assert!(outcome.contains("by hand"), "{outcome}");
    wait_text(&on_p, "#host-role", "the stood-down role", |t| {
        t == "backup"
    })
    .await;
    shot(&on_p, "33-stood-down").await;
    click(&on_p, "#swap-force").await;
    wait_text(&on_p, "#swap", "the undo button", |t| t == "Become primary").await;
    click(&on_p, "#swap").await;
    wait_text(&on_p, "#confirm-text", "the undo confirmation", |t| {
        t.contains("becomes the primary")
    })
    .await;
    click(&on_p, "#confirm-ok").await;
    let undone = wait_text(&on_p, "#action-status", "the undo", |t| {
        t.starts_with("Swap done") || t.starts_with("Failed") || t.starts_with("Refused")
    })
    .await;
    assert!(undone.starts_with("Swap done"), "{undone}");
    wait_text(&on_p, "#host-role", "primary again", |t| t == "primary").await;
    on_p.close().await.expect("closing the browser");
}

/// Accepts the page's `window.confirm`, once it is up; returns its text.
async fn accept_confirm(b: &Client) -> String {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        if let Ok(t) = b.get_alert_text().await {
            b.accept_alert().await.expect("accepting the confirmation");
            return t;
        }
        assert!(Instant::now() < deadline, "no confirmation appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn setup_page_joins_a_primary_in_a_real_browser() {
    let Some(mut driver) = Driver::start().await else {
        return;
    };
    let mut c = Cluster::init("a", &[]).await;
    let b_node = c.add_standalone("b").await;
    let (a_url, b_url) = (c.nodes[0].api().to_owned(), b_node.api.clone());
    let r = c
        .req(0, Method::POST, "/api/v1/users")
        .json(&json!({ "name": USER, "password": PASSWORD }))
        .send()
        .await
        .expect("POST /api/v1/users");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);

    // On the primary: a join token from the set-up page.
    let on_a = driver.browser(1280, 900).await;
    login(&on_a, &a_url, USER, PASSWORD).await;
    wait_text(&on_a, "#role-banner", "a's banner", |t| !t.is_empty()).await;
    on_a.goto(&format!("{a_url}/setup"))
        .await
        .expect("setup page");
    wait_text(&on_a, "#setup-state", "a's set-up state", |t| {
        t.contains("standalone")
    })
    .await;
    click(&on_a, "#create-token").await;
    let token = wait_text(&on_a, "#join-token", "the join token", |t| t.len() > 64).await;
    shot(&on_a, "21-setup-token-on-primary").await;

    // On the standalone node, with its own user: a refusal first...
    let on_b = driver.browser(1280, 900).await;
    login(&on_b, &b_url, &b_node.admin_user, &b_node.admin_password).await;
    wait_text(&on_b, "#role-banner", "b's banner", |t| {
        t.contains("STANDALONE")
    })
    .await;
    on_b.goto(&format!("{b_url}/setup"))
        .await
        .expect("setup page");
    wait_text(&on_b, "#setup-state", "b's set-up state", |t| {
        t.contains("standalone")
    })
    .await;
    fill(&on_b, "#setup-primary", &a_url).await;
    fill(&on_b, "#setup-token", "not-a-token").await;
    click(&on_b, "#setup-join").await;
    accept_confirm(&on_b).await;
    let refusal = wait_text(&on_b, "#setup-status", "the refusal", |t| {
        t.starts_with("Refused") || t.starts_with("Failed") || t.starts_with("Joined")
    })
    .await;
    assert!(refusal.contains("malformed join token"), "{refusal}");
    shot(&on_b, "22-setup-refused").await;

    // ...then the join with the primary's token and the reverse address.
    fill(&on_b, "#setup-token", &token).await;
    // The reverse connection address is filled in with this node's own.
    let reverse = c.nodes[b_node.index].cfg.peer_advertise.clone();
    assert_eq!(value(&on_b, "#setup-reverse").await, reverse);
    fill(&on_b, "#setup-reverse", &reverse).await;
    // a and b run on this one machine: refused until it is allowed.
    click(&on_b, "#setup-join").await;
    accept_confirm(&on_b).await;
    let refusal = wait_text(&on_b, "#setup-status", "the same-host refusal", |t| {
        t.contains("shares host") || t.starts_with("Joined")
    })
    .await;
    assert!(refusal.contains("shares host"), "{refusal}");
    click(&on_b, "#setup-same-site").await;
    click(&on_b, "#setup-join").await;
    let asked = accept_confirm(&on_b).await;
    assert!(asked.contains("as its backup"), "{asked}");
    let joined = wait_text(&on_b, "#setup-status", "the join", |t| {
        t.starts_with("Refused") || t.starts_with("Failed") || t.starts_with("Joined")
    })
    .await;
    assert!(joined.starts_with("Joined cluster"), "{joined}");
    assert!(joined.contains(&reverse), "{joined}");
    shot(&on_b, "23-setup-joined").await;

    // b restarts in place as the backup; the page sends the admin to the
    // login, where the primary's users now count.
    c.wait_health(b_node.index).await;
    c.nodes[b_node.index].cfg = tandem_node::config::DataDir::new(&c.nodes[b_node.index].dir)
        .load()
        .expect("b's node.toml");
    let deadline = Instant::now() + PAGE_WAIT;
    while !on_b
        .current_url()
        .await
        .expect("url")
        .as_str()
        .ends_with("/login")
    {
        assert!(
            Instant::now() < deadline,
            "the page did not go to the login"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    login(&on_b, &b_url, USER, PASSWORD).await;
    wait_text(&on_b, "#host-role", "b as backup", |t| t == "backup").await;
    wait_text(&on_b, "#role-banner", "the backup banner", |t| {
        t.contains("BACKUP")
    })
    .await;
    shot(&on_b, "24-joined-node-is-backup").await;
    // And the primary's page shows the new backup.
    on_a.goto(&format!("{a_url}/"))
        .await
        .expect("failover page");
    wait_text(
        &on_a,
        "tr[data-peer=\"b\"] .peer-role",
        "b as backup on a",
        |t| t == "backup",
    )
    .await;
    shot(&on_a, "25-primary-sees-backup").await;

    on_a.close().await.expect("closing the browser");
    on_b.close().await.expect("closing the browser");
}
