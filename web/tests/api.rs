//! Handler tests: the router against a small in-memory backend, driven with
//! `tower::ServiceExt::oneshot` (no sockets).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tandem_web::{
    router, AdminBackend, ApiError, ClusterView, ConfigEntryView, HealthView, JoinRequest,
    JoinResponse, JoinTokenRequest, JoinTokenView, MemberView, ReadMeta, SessionCreate,
    SessionView, MAX_BODY_BYTES,
};
use tower::ServiceExt;

const TOKEN: &str = "s3cret";
const APPLIED: u64 = 42;

#[derive(Default)]
struct State {
    config: BTreeMap<String, ConfigEntryView>,
    sessions: BTreeMap<String, SessionView>,
    next_session: u64,
    /// When set, every leader-only call answers `NotLeader` with this.
    not_leader: Option<Option<String>>,
    last_actor: Option<String>,
}

#[derive(Default)]
struct MemBackend {
    state: Mutex<State>,
}

impl MemBackend {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread poisons the lock; the test fails anyway.
        self.state.lock().expect("test backend lock poisoned")
    }

    /// Leader-only gate: linearizable reads and writes.
    fn leader_check(&self, stale: bool) -> Result<ReadMeta, ApiError> {
        if !stale {
            if let Some(leader_api) = self.lock().not_leader.clone() {
                return Err(ApiError::NotLeader { leader_api });
            }
        }
        Ok(ReadMeta {
            applied_index: Some(APPLIED),
            stale,
        })
    }
}

impl AdminBackend for MemBackend {
    fn authorize(&self, bearer_token: &str) -> bool {
        bearer_token == TOKEN
    }

    async fn health(&self) -> Result<HealthView, ApiError> {
        Ok(HealthView {
            status: "ok".into(),
            node: "n1".into(),
            node_id: 1,
            role: "leader".into(),
            leader: Some(1),
            term: 3,
            applied_index: Some(APPLIED),
            last_log_index: Some(APPLIED),
            committed_index: Some(APPLIED),
            snapshot_index: None,
            purged_index: None,
        })
    }

    async fn config_get(
        &self,
        key: String,
        stale: bool,
    ) -> Result<(ConfigEntryView, ReadMeta), ApiError> {
        let meta = self.leader_check(stale)?;
        let entry = self.lock().config.get(&key).cloned();
        entry
            .map(|e| (e, meta))
            .ok_or_else(|| ApiError::NotFound(format!("no key {key}")))
    }

    async fn config_list(
        &self,
        prefix: Option<String>,
        limit: usize,
        stale: bool,
    ) -> Result<(Vec<ConfigEntryView>, ReadMeta), ApiError> {
        let meta = self.leader_check(stale)?;
        let items = self
            .lock()
            .config
            .values()
            .filter(|e| prefix.as_deref().is_none_or(|p| e.key.starts_with(p)))
            .take(limit)
            .cloned()
            .collect();
        Ok((items, meta))
    }

    async fn config_put(
        &self,
        key: String,
        value: Value,
        if_version: Option<u64>,
        actor: String,
    ) -> Result<ConfigEntryView, ApiError> {
        self.leader_check(false)?;
        let mut st = self.lock();
        let current = st.config.get(&key).map_or(0, |e| e.version);
        if if_version.is_some_and(|v| v != current) {
            return Err(ApiError::Conflict(format!(
                "version is {current}, not {}",
                if_version.unwrap_or_default()
            )));
        }
        let entry = ConfigEntryView {
            key: key.clone(),
            value,
            version: current + 1,
            updated_by: actor.clone(),
            updated_at_ms: 1_000,
        };
        st.config.insert(key, entry.clone());
        st.last_actor = Some(actor);
        Ok(entry)
    }

    async fn config_delete(&self, key: String, actor: String) -> Result<(), ApiError> {
        self.leader_check(false)?;
        let mut st = self.lock();
        st.last_actor = Some(actor);
        st.config
            .remove(&key)
            .map(|_| ())
            .ok_or_else(|| ApiError::NotFound(format!("no key {key}")))
    }

    async fn session_create(&self, req: SessionCreate) -> Result<SessionView, ApiError> {
        self.leader_check(false)?;
        let mut st = self.lock();
        st.next_session += 1;
        let view = SessionView {
            id: format!("s{}", st.next_session),
            owner: req.owner,
            data: req.data,
            created_at_ms: 1_000,
            expires_at_ms: 1_000 + req.ttl_secs * 1_000,
        };
        st.sessions.insert(view.id.clone(), view.clone());
        Ok(view)
    }

    async fn session_get(
        &self,
        id: String,
        stale: bool,
    ) -> Result<(SessionView, ReadMeta), ApiError> {
        let meta = self.leader_check(stale)?;
        let view = self.lock().sessions.get(&id).cloned();
        view.map(|v| (v, meta))
            .ok_or_else(|| ApiError::NotFound(format!("no session {id}")))
    }

    async fn session_list(
        &self,
        limit: usize,
        stale: bool,
    ) -> Result<(Vec<SessionView>, ReadMeta), ApiError> {
        let meta = self.leader_check(stale)?;
        let items = self.lock().sessions.values().take(limit).cloned().collect();
        Ok((items, meta))
    }

    async fn session_delete(&self, id: String) -> Result<(), ApiError> {
        self.leader_check(false)?;
        self.lock()
            .sessions
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| ApiError::NotFound(format!("no session {id}")))
    }

    async fn cluster(&self, stale: bool) -> Result<ClusterView, ApiError> {
        self.leader_check(stale)?;
        Ok(ClusterView {
            cluster_id: "c1".into(),
            this_node: 1,
            leader: Some(1),
            term: 3,
            members: vec![MemberView {
                id: 1,
                name: "n1".into(),
                kind: "appliance".into(),
                voter: true,
                peer_addr: "127.0.0.1:7000".into(),
                api_addr: "https://127.0.0.1:8443".into(),
                last_log_index: Some(APPLIED),
                committed_index: None,
                applied_index: Some(APPLIED),
                reachable: None,
            }],
        })
    }

    async fn create_join_token(
        &self,
        _req: JoinTokenRequest,
        _actor: String,
    ) -> Result<JoinTokenView, ApiError> {
        self.leader_check(false)?;
        Ok(JoinTokenView {
            token: "join-abc".into(),
            expires_at_ms: 9_000,
        })
    }

    async fn join(&self, req: JoinRequest) -> Result<JoinResponse, ApiError> {
        self.leader_check(false)?;
        if req.token != "join-abc" {
            return Err(ApiError::Forbidden("invalid join token".into()));
        }
        Ok(JoinResponse {
            node_id: 2,
            cluster_id: "c1".into(),
            cert_pem: "CERT".into(),
            ca_pem: "CA".into(),
            ca_key_pem: None,
            members: Vec::new(),
        })
    }
}

fn app() -> (Arc<MemBackend>, Router) {
    let backend = Arc::new(MemBackend::default());
    (Arc::clone(&backend), router(backend))
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a JSON error body of this kind.
    #[track_caller]
    fn assert_error(&self, status: StatusCode, kind: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.body["error"], kind, "body: {}", self.body);
        assert!(self.body["message"].is_string(), "body: {}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "error bodies are JSON"
        );
    }
}

async fn send(app: &Router, req: Request<Body>) -> Resp {
    let resp = app
        .clone()
        .oneshot(req)
        .await
        .expect("router is infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body readable");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("non-JSON body ({e}): {}", String::from_utf8_lossy(&bytes)))
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn request(method: Method, uri: &str, token: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    b.body(body).expect("valid request")
}

async fn call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> Resp {
    send(app, request(method, uri, Some(TOKEN), body)).await
}

#[tokio::test]
async fn health_is_open() {
    let (_, app) = app();
    let r = send(&app, request(Method::GET, "/health", None, None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "ok");
    assert_eq!(r.body["applied_index"], APPLIED);
}

#[tokio::test]
async fn every_api_route_requires_the_bearer_token() {
    let (_, app) = app();
    let routes = [
        (Method::GET, "/api/v1/config", None),
        (Method::GET, "/api/v1/config/a", None),
        (Method::PUT, "/api/v1/config/a", Some(json!({"value": 1}))),
        (Method::DELETE, "/api/v1/config/a", None),
        (Method::GET, "/api/v1/sessions", None),
        (
            Method::POST,
            "/api/v1/sessions",
            Some(json!({"owner": "o", "ttl_secs": 5})),
        ),
        (Method::GET, "/api/v1/sessions/s1", None),
        (Method::DELETE, "/api/v1/sessions/s1", None),
        (Method::GET, "/api/v1/cluster", None),
        (Method::POST, "/api/v1/join-tokens", Some(json!({}))),
    ];
    for (method, uri, body) in routes {
        for token in [None, Some("wrong"), Some("")] {
            let r = send(&app, request(method.clone(), uri, token, body.clone())).await;
            r.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer"),
                "{method} {uri}"
            );
        }
        // Not a bearer scheme at all.
        let mut req = request(method.clone(), uri, None, body.clone());
        req.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Basic {TOKEN}").parse().expect("ascii"),
        );
        send(&app, req)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
        // And the right token gets past authentication.
        let r = call(&app, method.clone(), uri, body).await;
        assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
    }
}

#[tokio::test]
async fn join_needs_no_bearer_token() {
    let (_, app) = app();
    let body = json!({
        "token": "join-abc", "name": "n2", "kind": "witness",
        "peer_addr": "10.0.0.2:7000", "api_addr": "https://10.0.0.2:8443",
        "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----"
    });
    let r = send(
        &app,
        request(Method::POST, "/api/v1/join", None, Some(body.clone())),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["node_id"], 2);

    let mut bad = body.clone();
    bad["token"] = json!("nope");
    send(&app, request(Method::POST, "/api/v1/join", None, Some(bad)))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");

    let mut bad = body;
    bad["kind"] = json!("toaster");
    send(&app, request(Method::POST, "/api/v1/join", None, Some(bad)))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn join_token_create() {
    let (_, app) = app();
    let r = call(
        &app,
        Method::POST,
        "/api/v1/join-tokens",
        Some(json!({"ttl_secs": 600, "kind": "witness"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["token"], "join-abc");
    call(
        &app,
        Method::POST,
        "/api/v1/join-tokens",
        Some(json!({"kind": "toaster"})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    call(
        &app,
        Method::POST,
        "/api/v1/join-tokens",
        Some(json!({"ttl_secs": 0})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn config_round_trip() {
    let (backend, app) = app();
    let r = call(
        &app,
        Method::PUT,
        "/api/v1/config/app/db.url",
        Some(json!({"value": {"host": "db", "port": 5432}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["key"], "app/db.url");
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["updated_by"], "api");

    let r = call(&app, Method::GET, "/api/v1/config/app/db.url", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["value"], json!({"host": "db", "port": 5432}));

    // Second put with the actor header and a matching if_version.
    let mut req = request(
        Method::PUT,
        "/api/v1/config/app/db.url",
        Some(TOKEN),
        Some(json!({"value": null, "if_version": 1})),
    );
    req.headers_mut()
        .insert("x-tandem-actor", "alice@ops".parse().expect("ascii"));
    let r = send(&app, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.body["value"], Value::Null);
    assert_eq!(r.body["updated_by"], "alice@ops");

    call(
        &app,
        Method::PUT,
        "/api/v1/config/other",
        Some(json!({"value": "x"})),
    )
    .await;
    let r = call(&app, Method::GET, "/api/v1/config", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(2));
    let r = call(
        &app,
        Method::GET,
        "/api/v1/config?prefix=app/&limit=10",
        None,
    )
    .await;
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(r.body["items"][0]["key"], "app/db.url");
    let r = call(&app, Method::GET, "/api/v1/config?limit=1", None).await;
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(1));

    let r = call(&app, Method::DELETE, "/api/v1/config/app/db.url", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(backend.lock().last_actor.as_deref(), Some("api"));
    call(&app, Method::GET, "/api/v1/config/app/db.url", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    call(&app, Method::DELETE, "/api/v1/config/app/db.url", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn config_if_version_conflict() {
    let (_, app) = app();
    let put = |v: Value| call(&app, Method::PUT, "/api/v1/config/k", Some(v));
    // if_version 0: create only.
    assert_eq!(
        put(json!({"value": 1, "if_version": 0})).await.status,
        StatusCode::OK
    );
    put(json!({"value": 2, "if_version": 0}))
        .await
        .assert_error(StatusCode::CONFLICT, "conflict");
    put(json!({"value": 2, "if_version": 7}))
        .await
        .assert_error(StatusCode::CONFLICT, "conflict");
    assert_eq!(
        put(json!({"value": 2, "if_version": 1})).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn config_key_validation() {
    let (_, app) = app();
    let long = "k".repeat(257);
    for bad in ["a%20b", "a$b", "%C3%A9", long.as_str()] {
        let uri = format!("/api/v1/config/{bad}");
        call(&app, Method::GET, &uri, None)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
        call(&app, Method::PUT, &uri, Some(json!({"value": 1})))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    let ok = format!("/api/v1/config/{}", "k".repeat(256));
    assert_eq!(
        call(&app, Method::PUT, &ok, Some(json!({"value": 1})))
            .await
            .status,
        StatusCode::OK
    );
    let r = call(
        &app,
        Method::PUT,
        "/api/v1/config/A-z_0.9:x/y",
        Some(json!({"value": 1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["key"], "A-z_0.9:x/y");
    // Bad list parameters.
    call(&app, Method::GET, "/api/v1/config?limit=0", None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    call(&app, Method::GET, "/api/v1/config?limit=abc", None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    call(&app, Method::GET, "/api/v1/config?prefix=a%20b", None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    call(&app, Method::GET, "/api/v1/config/k?stale=maybe", None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn body_errors_are_json() {
    let (_, app) = app();
    // Unknown field.
    let r = call(
        &app,
        Method::PUT,
        "/api/v1/config/k",
        Some(json!({"value": 1, "extra": true})),
    )
    .await;
    r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("extra")),
        "{}",
        r.body
    );
    // Missing required field.
    call(
        &app,
        Method::PUT,
        "/api/v1/config/k",
        Some(json!({"if_version": 1})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    // Wrong type.
    call(
        &app,
        Method::POST,
        "/api/v1/sessions",
        Some(json!({"owner": "o", "ttl_secs": "ten"})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "bad_request");

    // Bad JSON.
    let raw = |body: &'static str, ct: Option<&str>| {
        let mut b = Request::builder()
            .method(Method::PUT)
            .uri("/api/v1/config/k")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(Body::from(body)).expect("valid request")
    };
    send(&app, raw("{\"value\": ", Some("application/json")))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    send(&app, raw("", Some("application/json")))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    // Wrong or missing content type.
    send(&app, raw("{\"value\": 1}", Some("text/plain")))
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    send(&app, raw("{\"value\": 1}", None))
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
}

#[tokio::test]
async fn oversized_body_is_413() {
    let (_, app) = app();
    let big = format!("{{\"value\": \"{}\"}}", "x".repeat(MAX_BODY_BYTES));
    let req = |with_length: bool| {
        let mut b = Request::builder()
            .method(Method::PUT)
            .uri("/api/v1/config/k")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json");
        if with_length {
            b = b.header(header::CONTENT_LENGTH, big.len());
        }
        b.body(Body::from(big.clone())).expect("valid request")
    };
    send(&app, req(true))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    send(&app, req(false))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // The unauthenticated join route has the same limit.
    let join = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/join")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big.clone()))
        .expect("valid request");
    send(&app, join)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json() {
    let (_, app) = app();
    call(&app, Method::GET, "/nope", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    call(&app, Method::GET, "/api/v2/config", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let r = call(&app, Method::POST, "/api/v1/cluster", Some(json!({}))).await;
    r.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert!(r.header("allow").is_some());
    send(&app, request(Method::DELETE, "/health", None, None))
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn not_leader_redirects_to_the_leader() {
    let (backend, app) = app();
    backend.lock().not_leader = Some(Some("https://10.0.0.9:8443/".into()));

    let r = call(
        &app,
        Method::PUT,
        "/api/v1/config/a/b?x=1",
        Some(json!({"value": 1})),
    )
    .await;
    r.assert_error(StatusCode::MISDIRECTED_REQUEST, "not_leader");
    assert_eq!(
        r.header("location"),
        Some("https://10.0.0.9:8443/api/v1/config/a/b?x=1")
    );
    assert_eq!(r.body["leader_api"], "https://10.0.0.9:8443/");

    let r = call(
        &app,
        Method::GET,
        "/api/v1/sessions?limit=5&stale=false",
        None,
    )
    .await;
    r.assert_error(StatusCode::MISDIRECTED_REQUEST, "not_leader");
    assert_eq!(
        r.header("location"),
        Some("https://10.0.0.9:8443/api/v1/sessions?limit=5&stale=false")
    );

    // Stale reads are served locally on a follower.
    let r = call(&app, Method::GET, "/api/v1/config?stale=true", None).await;
    assert_eq!(r.status, StatusCode::OK);

    // No known leader: 503 with Retry-After and no Location.
    backend.lock().not_leader = Some(None);
    let r = call(&app, Method::DELETE, "/api/v1/sessions/s1", None).await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "not_leader");
    assert!(r.header("retry-after").is_some());
    assert!(r.header("location").is_none());
}

#[tokio::test]
async fn reads_carry_applied_index_and_stale_headers() {
    let (_, app) = app();
    call(
        &app,
        Method::PUT,
        "/api/v1/config/k",
        Some(json!({"value": 1})),
    )
    .await;
    let s = call(
        &app,
        Method::POST,
        "/api/v1/sessions",
        Some(json!({"owner": "o", "ttl_secs": 5})),
    )
    .await;
    let sid = s.body["id"].as_str().expect("session id").to_owned();
    let reads = [
        "/api/v1/config".to_owned(),
        "/api/v1/config/k".to_owned(),
        "/api/v1/sessions".to_owned(),
        format!("/api/v1/sessions/{sid}"),
        "/api/v1/cluster".to_owned(),
    ];
    for path in reads {
        for (query, stale) in [
            ("", "false"),
            ("?stale=false", "false"),
            ("?stale=true", "true"),
        ] {
            let uri = format!("{path}{query}");
            let r = call(&app, Method::GET, &uri, None).await;
            assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
            assert_eq!(r.header("x-tandem-stale"), Some(stale), "{uri}");
            assert_eq!(
                r.header("x-tandem-applied-index"),
                Some(APPLIED.to_string().as_str()),
                "{uri}"
            );
        }
    }
}

#[tokio::test]
async fn sessions_round_trip() {
    let (_, app) = app();
    let r = call(
        &app,
        Method::POST,
        "/api/v1/sessions",
        Some(json!({"owner": "alice", "data": {"k": [1, 2]}, "ttl_secs": 60})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().expect("session id").to_owned();
    assert_eq!(r.body["expires_at_ms"], 61_000);

    // `data` defaults to null.
    let r = call(
        &app,
        Method::POST,
        "/api/v1/sessions",
        Some(json!({"owner": "bob", "ttl_secs": 1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["data"], Value::Null);

    let r = call(&app, Method::GET, &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["owner"], "alice");
    assert_eq!(r.body["data"], json!({"k": [1, 2]}));

    let r = call(&app, Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(2));
    let r = call(&app, Method::GET, "/api/v1/sessions?limit=1", None).await;
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(1));
    call(&app, Method::GET, "/api/v1/sessions?limit=1001", None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");

    let r = call(
        &app,
        Method::DELETE,
        &format!("/api/v1/sessions/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    call(&app, Method::GET, &format!("/api/v1/sessions/{id}"), None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    call(&app, Method::GET, "/api/v1/sessions/bad%20id", None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn session_ttl_and_owner_validation() {
    let (_, app) = app();
    for body in [
        json!({"owner": "o", "ttl_secs": 0}),
        json!({"owner": "o", "ttl_secs": 31_536_001}),
        json!({"owner": "o", "ttl_secs": -1}),
        json!({"owner": "", "ttl_secs": 5}),
        json!({"owner": "o"}),
        json!({"owner": "o", "ttl_secs": 5, "extra": 1}),
    ] {
        call(&app, Method::POST, "/api/v1/sessions", Some(body))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    for ttl in [1, 31_536_000] {
        let r = call(
            &app,
            Method::POST,
            "/api/v1/sessions",
            Some(json!({"owner": "o", "ttl_secs": ttl})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "ttl {ttl}: {}", r.body);
    }
}

#[tokio::test]
async fn backend_errors_map_to_one_status_each() {
    use axum::response::IntoResponse;
    let cases = [
        (ApiError::Unauthorized, 401, "unauthorized"),
        (ApiError::Forbidden("f".into()), 403, "forbidden"),
        (ApiError::NotFound("n".into()), 404, "not_found"),
        (ApiError::BadRequest("b".into()), 400, "bad_request"),
        (ApiError::Conflict("c".into()), 409, "conflict"),
        (ApiError::PayloadTooLarge, 413, "payload_too_large"),
        (ApiError::Unavailable("u".into()), 503, "unavailable"),
        (ApiError::Internal("secret detail".into()), 500, "internal"),
    ];
    for (err, status, kind) in cases {
        let resp = err.into_response();
        assert_eq!(resp.status().as_u16(), status);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body readable");
        let body: Value = serde_json::from_slice(&bytes).expect("JSON body");
        assert_eq!(body["error"], kind);
        assert!(!body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("secret"));
    }
}
