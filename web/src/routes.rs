//! The axum router: routes, handlers, authentication and the middleware that
//! keeps every error JSON and points `NotLeader` answers at the leader; and
//! the OpenAPI document, derived from the handlers' `#[utoipa::path]`
//! attributes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION,
};
use axum::http::{StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::routing::future::RouteFuture;
use tower::{Layer, Service};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::put;
use axum::Extension;
use futures::Stream;

use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::backend::{
    AdminBackend, AdminTokenRotated, ApiTokenCreated, ApiTokenRequest, ApiTokenView, BreakOutcome,
    CertificateView, ClusterView, ConfigEntryView, ConfigPut, HealthView, HistoryPage, JoinRequest,
    JoinResponse, JoinTokenRequest, JoinTokenView, ListView, PasswordChange, ReadMeta,
    ReadinessView, RejoinRequest, RejoinTokenRequest, RoleHealth, SessionCreate, SessionView,
    SettingsUpdate, SettingsView, SetupOutcome, SetupRequest, StatusView, SwapOutcome, SwapRequest,
    SyncReport, SyncRequest, UserCreate, UserPassword, UserView, ADMIN_TOKEN_ACTOR,
};
use crate::error::{ErrorBody, LeaderRedirect};
use crate::extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::maintenance::{
    check_node, validate_maintenance_start, validate_window, MaintenanceOutcome, MaintenanceStart,
    MaintenanceView, WindowRequest,
};
use crate::openapi::{
    ref_inlined_schemas, BearerScheme, E400, E401, E403, E404, E405, E409, E413, E415, E421, E429,
    E500, E503, E507,
};
use crate::settings::validate_settings;
use crate::ui::{
    csrf_ok, ui_router, valid_user_name, Caller, Sessions, Ui, MAX_PASSWORD_LEN, MIN_PASSWORD_LEN,
};
use crate::ApiError;

/// Largest accepted request body (1 MiB); larger bodies get a 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest configuration key.
pub const MAX_KEY_LEN: usize = 256;
/// Longest session lifetime (one year).
pub const MAX_TTL_SECS: u64 = 31_536_000;
/// List size when `?limit=` is absent.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Largest accepted `?limit=`.
pub const MAX_LIST_LIMIT: usize = 1000;

/// History page size when `?limit=` is absent.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;
/// Largest accepted history `?limit=`.
pub const MAX_HISTORY_LIMIT: usize = 500;
/// Longest history `?kind=` filter.
const MAX_HISTORY_KIND_LEN: usize = 64;

/// One route of the admin API, as registered by [`router`] and described by
/// [`openapi()`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRoute {
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path in axum syntax (`{id}`, `{*key}` for the rest of the path).
    pub path: &'static str,
    /// Whether the route needs the bearer token.
    pub auth: bool,
}

const fn open(method: &'static str, path: &'static str) -> ApiRoute {
    ApiRoute {
        method,
        path,
        auth: false,
    }
}

const fn authed(method: &'static str, path: &'static str) -> ApiRoute {
    ApiRoute {
        method,
        path,
        auth: true,
    }
}

/// Every route [`router`] serves. `router` refuses (in debug builds) to
/// register a path missing here, and the tests check that the router
/// answers each method listed, no other, and that the OpenAPI document
/// lists exactly these.
pub const ROUTES: &[ApiRoute] = &[
    open("GET", "/health"),
    open("GET", "/health/primary"),
    open("GET", "/health/backup"),
    open("GET", "/api/v1/openapi.json"),
    open("POST", "/api/v1/join"),
    authed("GET", "/api/v1/config"),
    authed("GET", "/api/v1/config/{*key}"),
    authed("PUT", "/api/v1/config/{*key}"),
    authed("DELETE", "/api/v1/config/{*key}"),
    authed("GET", "/api/v1/sessions"),
    authed("POST", "/api/v1/sessions"),
    authed("GET", "/api/v1/sessions/{id}"),
    authed("DELETE", "/api/v1/sessions/{id}"),
    authed("GET", "/api/v1/cluster"),
    authed("POST", "/api/v1/join-tokens"),
    authed("POST", "/api/v1/rejoin-tokens"),
    authed("POST", "/api/v1/admin-token"),
    authed("POST", "/api/v1/certs/renew"),
    authed("GET", "/api/v1/status"),
    authed("GET", "/api/v1/history"),
    authed("GET", "/api/v1/settings"),
    authed("PUT", "/api/v1/settings"),
    authed("POST", "/api/v1/relationship/swap"),
    authed("POST", "/api/v1/relationship/sync"),
    authed("POST", "/api/v1/relationship/break"),
    authed("POST", "/api/v1/relationship/rejoin"),
    authed("POST", "/api/v1/relationship/remove-witness"),
    authed("POST", "/api/v1/relationship/setup"),
    authed("GET", "/api/v1/readiness"),
    authed("GET", "/api/v1/users"),
    authed("POST", "/api/v1/users"),
    authed("PUT", "/api/v1/users/{name}"),
    authed("DELETE", "/api/v1/users/{name}"),
    authed("POST", "/api/v1/account/password"),
    authed("GET", "/api/v1/api-tokens"),
    authed("POST", "/api/v1/api-tokens"),
    authed("DELETE", "/api/v1/api-tokens/{id}"),
    authed("GET", "/api/v1/maintenance"),
    authed("POST", "/api/v1/maintenance"),
    authed("DELETE", "/api/v1/maintenance/{node}"),
    authed("POST", "/api/v1/maintenance/windows"),
    authed("DELETE", "/api/v1/maintenance/windows/{id}"),
];

/// The OpenAPI document of [`ROUTES`]: every operation from its handler's
/// `#[utoipa::path]`, every schema from the view types' `ToSchema`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tandem admin API",
        description = "Status, settings and actions of a Tandem relationship (primary, backup, \
                       witness). Writes accept an `X-Tandem-Actor` header naming who acts \
                       (default `api`). Every error answer is an `ErrorBody`."
    ),
    paths(
        health,
        health_primary,
        health_backup,
        openapi_json,
        join,
        config_list,
        config_get,
        config_put,
        config_delete,
        session_list,
        session_create,
        session_get,
        session_delete,
        cluster,
        create_join_token,
        create_rejoin_token,
        rotate_admin_token,
        renew_certificate,
        status,
        history,
        settings_get,
        settings_put,
        swap,
        sync,
        break_relationship,
        rejoin,
        remove_witness,
        setup,
        readiness,
        users_list,
        user_create,
        user_set_password,
        user_delete,
        account_password,
        api_token_list,
        api_token_create,
        api_token_revoke,
        maintenance_get,
        maintenance_start,
        maintenance_end,
        window_schedule,
        window_cancel,
    ),
    // Schemas that are only named by `ref(...)` (bodies that may be left
    // out) or only reached through response types are not collected by
    // themselves.
    components(schemas(ErrorBody, SwapRequest, SyncRequest, BreakRequest, ApiTokenRequest)),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// The OpenAPI 3.1 document of every route in [`ROUTES`], served at
/// `GET /api/v1/openapi.json`: generated from the handlers' attributes and
/// the view types, so it lists what the API serves.
pub fn openapi() -> serde_json::Value {
    // The document is plain data with string keys: it always serializes.
    let mut doc =
        serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes to JSON");
    ref_inlined_schemas(&mut doc);
    doc
}

/// Server-sent events: `event: status` with a [`crate::StatusView`] every
/// second. Authenticated like the API; not in [`ROUTES`] (an endless
/// stream, not a JSON answer).
pub const EVENTS_PATH: &str = "/api/v1/events";

/// Interval between two status events of [`EVENTS_PATH`].
pub const EVENT_INTERVAL: Duration = Duration::from_secs(1);

/// A path being registered; debug builds check it is in [`ROUTES`].
fn listed(path: &'static str) -> &'static str {
    debug_assert!(
        ROUTES.iter().any(|r| r.path == path),
        "route {path} is registered but missing from ROUTES (and the OpenAPI document)"
    );
    path
}

/// Response header: applied index of the state machine that served a read.
pub const APPLIED_INDEX_HEADER: HeaderName = HeaderName::from_static("x-tandem-applied-index");
/// Response header: `true` when a read was served locally (`?stale=true`).
pub const STALE_HEADER: HeaderName = HeaderName::from_static("x-tandem-stale");
/// Optional request header naming who makes a write (recorded as
/// `updated_by`); `api` when absent. 1..=64 chars of `[A-Za-z0-9._@:-]`.
pub const ACTOR_HEADER: HeaderName = HeaderName::from_static("x-tandem-actor");

/// Actor recorded for writes without an [`ACTOR_HEADER`].
const DEFAULT_ACTOR: &str = "api";
const MAX_ACTOR_LEN: usize = 64;
const MAX_ID_LEN: usize = 256;
const MAX_NAME_LEN: usize = 256;

/// Builds the admin API router over `backend`.
///
/// Routes (all JSON; every error is an [`ErrorBody`]; the full list with
/// methods is [`ROUTES`], described by `GET /api/v1/openapi.json`):
/// - Open: `GET /health`; `GET /health/primary` and `GET /health/backup`
///   (`?max_lag=`; 200 when `ok`, else 503, a [`RoleHealth`] body either
///   way); `GET /api/v1/openapi.json`; `POST /api/v1/join` (the join token
///   in the body is the credential).
/// - Bearer-protected (`Authorization: Bearer <token>`, checked with
///   [`AdminBackend::authorize`]):
///   `GET /api/v1/config` (`?prefix=&limit=&stale=`),
///   `GET|PUT|DELETE /api/v1/config/{*key}`,
///   `POST|GET /api/v1/sessions` (`?limit=&stale=`),
///   `GET|DELETE /api/v1/sessions/{id}`,
///   `GET /api/v1/cluster` (`?stale=`), `POST /api/v1/join-tokens`,
///   `GET /api/v1/status`, `GET /api/v1/history` (`?before=&limit=&kind=`),
///   `GET|PUT /api/v1/settings`, `POST /api/v1/relationship/swap|sync|break`
///   (an empty body means default options), `GET /api/v1/readiness`.
///
/// Reads carry [`APPLIED_INDEX_HEADER`] (when known) and [`STALE_HEADER`].
/// Creations answer 201, deletions 204. Invalid settings answer 400 with
/// kind `invalid` and per-field messages; refused actions 409 with kind
/// `refused`. Unknown routes answer 404, bodies over [`MAX_BODY_BYTES`] 413.
pub fn router<B: AdminBackend>(backend: Arc<B>) -> AdminApp {
    let sessions = Arc::new(Sessions::default());
    let ui = ui_router(Ui {
        backend: Arc::clone(&backend),
        sessions: Arc::clone(&sessions),
    });
    let protected = Router::new()
        .route(listed("/api/v1/config"), get(config_list::<B>))
        .route(
            listed("/api/v1/config/{*key}"),
            get(config_get::<B>)
                .put(config_put::<B>)
                .delete(config_delete::<B>),
        )
        .route(
            listed("/api/v1/sessions"),
            get(session_list::<B>).post(session_create::<B>),
        )
        .route(
            listed("/api/v1/sessions/{id}"),
            get(session_get::<B>).delete(session_delete::<B>),
        )
        .route(listed("/api/v1/cluster"), get(cluster::<B>))
        .route(listed("/api/v1/join-tokens"), post(create_join_token::<B>))
        .route(
            listed("/api/v1/rejoin-tokens"),
            post(create_rejoin_token::<B>),
        )
        .route(listed("/api/v1/admin-token"), post(rotate_admin_token::<B>))
        .route(listed("/api/v1/certs/renew"), post(renew_certificate::<B>))
        .route(listed("/api/v1/status"), get(status::<B>))
        .route(listed("/api/v1/history"), get(history::<B>))
        .route(
            listed("/api/v1/settings"),
            get(settings_get::<B>).put(settings_put::<B>),
        )
        .route(listed("/api/v1/relationship/swap"), post(swap::<B>))
        .route(listed("/api/v1/relationship/sync"), post(sync::<B>))
        .route(
            listed("/api/v1/relationship/break"),
            post(break_relationship::<B>),
        )
        .route(listed("/api/v1/relationship/rejoin"), post(rejoin::<B>))
        .route(listed("/api/v1/relationship/setup"), post(setup::<B>))
        .route(
            listed("/api/v1/relationship/remove-witness"),
            post(remove_witness::<B>),
        )
        .route(listed("/api/v1/readiness"), get(readiness::<B>))
        .route(
            listed("/api/v1/users"),
            get(users_list::<B>).post(user_create::<B>),
        )
        .route(
            listed("/api/v1/users/{name}"),
            put(user_set_password::<B>).delete(user_delete::<B>),
        )
        .route(
            listed("/api/v1/account/password"),
            post(account_password::<B>),
        )
        .route(
            listed("/api/v1/api-tokens"),
            get(api_token_list::<B>).post(api_token_create::<B>),
        )
        .route(
            listed("/api/v1/api-tokens/{id}"),
            axum::routing::delete(api_token_revoke::<B>),
        )
        .route(
            listed("/api/v1/maintenance"),
            get(maintenance_get::<B>).post(maintenance_start::<B>),
        )
        .route(
            listed("/api/v1/maintenance/{node}"),
            axum::routing::delete(maintenance_end::<B>),
        )
        .route(
            listed("/api/v1/maintenance/windows"),
            post(window_schedule::<B>),
        )
        .route(
            listed("/api/v1/maintenance/windows/{id}"),
            axum::routing::delete(window_cancel::<B>),
        )
        .route(EVENTS_PATH, get(events::<B>))
        .route_layer(middleware::from_fn_with_state(
            Ui {
                backend: Arc::clone(&backend),
                sessions: Arc::clone(&sessions),
            },
            require_auth::<B>,
        ));

    let router = Router::new()
        .route(listed("/health"), get(health::<B>))
        .route(listed("/health/primary"), get(health_primary::<B>))
        .route(listed("/health/backup"), get(health_backup::<B>))
        .route(listed("/api/v1/openapi.json"), get(openapi_json))
        .route(listed("/api/v1/join"), post(join::<B>))
        .merge(protected)
        .fallback(not_found)
        .with_state(backend)
        .merge(ui);
    AdminApp { router, sessions }
}

/// The admin application as one tower service: the [`Router`], with what
/// every request and every answer needs done once around it: the login
/// sessions and the body limit go into the request, a `NotLeader` answer
/// gets its `Location`, and an error answer that is not JSON yet becomes
/// one.
///
/// This is done here rather than with `Router::layer`, which wraps each
/// route separately and costs several boxed services and futures per
/// request (no CPU difference was measurable on this machine; fewer
/// allocations on every request).
#[derive(Clone)]
pub struct AdminApp {
    router: Router,
    sessions: Arc<Sessions>,
}

impl<B> Service<axum::http::Request<B>> for AdminApp
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AdminFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> AdminFuture {
        req.extensions_mut().insert(Arc::clone(&self.sessions));
        let uri = req.uri().clone();
        let mut routed = DefaultBodyLimit::max(MAX_BODY_BYTES).layer(self.router.clone());
        AdminFuture {
            inner: routed.call(req),
            uri,
        }
    }
}

/// Response future of [`AdminApp`].
pub struct AdminFuture {
    inner: RouteFuture<Infallible>,
    /// The request's URI, for the `Location` of a `NotLeader` answer.
    uri: Uri,
}

impl Future for AdminFuture {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Ok(mut resp) = ready!(Pin::new(&mut this.inner).poll(cx));
        add_leader_location(&mut resp, &this.uri);
        let mut resp = ensure_json_error(resp);
        // Answers carry tokens, hashes' owners, configuration: no cache
        // keeps them, and no browser reads them as anything but what they
        // say they are (a route that chose its own caching keeps it).
        let h = resp.headers_mut();
        h.entry(axum::http::header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
        h.entry(axum::http::header::X_CONTENT_TYPE_OPTIONS)
            .or_insert(HeaderValue::from_static("nosniff"));
        Poll::Ready(Ok(resp))
    }
}

// ---- middleware ----------------------------------------------------------

/// Authenticates an API request: a bearer token (admin token or a per-user
/// API token; no CSRF token needed), else a login session cookie, whose
/// state-changing requests must carry the session's CSRF token (403
/// otherwise) and act as the logged-in user (its name replaces any
/// [`ACTOR_HEADER`]).
/// Who a bearer call is: `None` for the admin token, else the API token's
/// user.
#[derive(Debug, Clone)]
struct Bearer(Option<String>);

async fn require_auth<B: AdminBackend>(
    State(ui): State<Ui<B>>,
    mut req: Request,
    next: Next,
) -> Response {
    if req.headers().contains_key(AUTHORIZATION) {
        let Some(who) = bearer_token(req.headers()).and_then(|t| ui.backend.authorize(t)) else {
            return ApiError::Unauthorized.into_response();
        };
        // Recorded as the credential's owner, never as what the request
        // says: an API token's user, or the admin token with the name the
        // caller gave (`admin-token:alice`) as a label.
        let declared = req.headers().contains_key(ACTOR_HEADER);
        let recorded = match (who.as_str(), declared) {
            (ADMIN_TOKEN_ACTOR, true) => match actor(req.headers()) {
                Ok(name) => {
                    let room = MAX_ACTOR_LEN - ADMIN_TOKEN_ACTOR.len() - 1;
                    let name: String = name.chars().take(room).collect();
                    format!("{ADMIN_TOKEN_ACTOR}:{name}")
                }
                Err(e) => return e.into_response(),
            },
            _ => who,
        };
        match HeaderValue::from_str(&recorded) {
            Ok(v) => {
                req.headers_mut().insert(ACTOR_HEADER, v);
            }
            Err(_) => return ApiError::Unauthorized.into_response(),
        }
        req.extensions_mut().insert(Caller(None));
        req.extensions_mut().insert(Bearer(
            (recorded != ADMIN_TOKEN_ACTOR && !recorded.starts_with("admin-token:"))
                .then(|| recorded.clone()),
        ));
        return next.run(req).await;
    }
    let Some((_, user)) = ui.session(req.headers()).await else {
        return ApiError::Unauthorized.into_response();
    };
    let safe = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if !safe && !csrf_ok(req.headers(), &user) {
        return ApiError::Forbidden("missing or wrong CSRF token (X-CSRF-Token)".into())
            .into_response();
    }
    match HeaderValue::from_str(&user.name) {
        Ok(v) => {
            req.headers_mut().insert(ACTOR_HEADER, v);
        }
        Err(_) => return ApiError::Unauthorized.into_response(),
    }
    req.extensions_mut().insert(Caller(Some(user)));
    next.run(req).await
}

/// The token of an `Authorization: Bearer <token>` header (scheme
/// case-insensitive), if there is a non-empty one.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Completes 421 `NotLeader` answers with `Location: <leader><path?query>`;
/// only [`AdminApp`] knows the original URI.
fn add_leader_location(resp: &mut Response, uri: &Uri) {
    if let Some(LeaderRedirect(base)) = resp.extensions_mut().remove::<LeaderRedirect>() {
        let location = leader_url(&base, uri);
        match HeaderValue::from_str(&location) {
            Ok(v) => {
                resp.headers_mut().insert(LOCATION, v);
            }
            Err(_) => tracing::warn!(%location, "leader address is not a valid Location"),
        }
    }
}

fn leader_url(base: &str, uri: &Uri) -> String {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    format!("{}{}", base.trim_end_matches('/'), path_and_query)
}

/// Safety net: any error response that is not JSON yet (axum's 405, a
/// rejection from a layer…) gets an [`ErrorBody`], keeping its status and
/// headers (such as `Allow`).
fn ensure_json_error(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if is_json {
        return resp;
    }
    let (mut parts, _) = resp.into_parts();
    let body = ErrorBody {
        error: kind_for_status(status).to_owned(),
        message: status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase(),
        leader_api: None,
        fields: None,
    };
    let bytes = match serde_json::to_vec(&body) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize an error body");
            Vec::new()
        }
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(bytes))
}

fn kind_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

// ---- helpers -------------------------------------------------------------

/// A read answer: JSON body plus the read-metadata headers.
fn read_response<T: Serialize>(body: T, meta: ReadMeta) -> Response {
    let mut resp = Json(body).into_response();
    let headers = resp.headers_mut();
    if let Some(index) = meta.applied_index {
        headers.insert(APPLIED_INDEX_HEADER, HeaderValue::from(index));
    }
    headers.insert(
        STALE_HEADER,
        HeaderValue::from_static(if meta.stale { "true" } else { "false" }),
    );
    resp
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-')
}

/// Checks a configuration key: 1..=256 chars of `[A-Za-z0-9._:/-]`.
///
/// # Errors
/// `BadRequest` naming the problem.
pub fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(ApiError::BadRequest(format!(
            "key must be 1..={MAX_KEY_LEN} characters long"
        )));
    }
    if !key.chars().all(is_key_char) {
        return Err(ApiError::BadRequest(
            "key may only contain A-Z a-z 0-9 . _ : / -".to_owned(),
        ));
    }
    Ok(())
}

fn validate_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "session id must be 1..={MAX_ID_LEN} characters of A-Z a-z 0-9 . _ : -"
        )))
    }
}

fn validate_ttl(ttl_secs: u64) -> Result<(), ApiError> {
    if (1..=MAX_TTL_SECS).contains(&ttl_secs) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "ttl_secs must be between 1 and {MAX_TTL_SECS}"
        )))
    }
}

fn validate_kind(kind: &str) -> Result<(), ApiError> {
    if matches!(kind, "appliance" | "witness") {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "kind must be \"appliance\" or \"witness\"".to_owned(),
        ))
    }
}

fn validate_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        Err(ApiError::BadRequest(format!(
            "{field} must be 1..={max} characters without control characters"
        )))
    } else {
        Ok(())
    }
}

fn validate_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIST_LIMIT),
        Some(n) if (1..=MAX_LIST_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIST_LIMIT}"
        ))),
    }
}

/// The writer recorded for a mutation: [`ACTOR_HEADER`] or `api`.
fn actor(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(ACTOR_HEADER) else {
        return Ok(DEFAULT_ACTOR.to_owned());
    };
    let ok = value.to_str().ok().filter(|s| {
        !s.is_empty()
            && s.len() <= MAX_ACTOR_LEN
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | ':' | '-'))
    });
    ok.map(str::to_owned).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "x-tandem-actor must be 1..={MAX_ACTOR_LEN} characters of A-Z a-z 0-9 . _ @ : -"
        ))
    })
}

// ---- query strings -------------------------------------------------------

/// `?stale=` of a single read.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ReadQuery {
    /// Serve from this node's state machine without a leader check.
    #[serde(default)]
    stale: bool,
}

/// Query of `GET /api/v1/config`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ConfigListQuery {
    /// Only keys starting with this.
    #[serde(default)]
    prefix: Option<String>,
    /// Most entries to return: 1..=1000, default 100.
    #[serde(default)]
    limit: Option<usize>,
    /// Serve from this node's state machine without a leader check.
    #[serde(default)]
    stale: bool,
}

/// Query of `GET /api/v1/sessions`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Most sessions to return: 1..=1000, default 100.
    #[serde(default)]
    limit: Option<usize>,
    /// Serve from this node's state machine without a leader check.
    #[serde(default)]
    stale: bool,
}

/// Query of `GET /api/v1/history`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// Only events with `seq` below this (`next_before` of the previous
    /// page).
    #[serde(default)]
    before: Option<u64>,
    /// Most events to return: 1..=500, default 50.
    #[serde(default)]
    limit: Option<usize>,
    /// Only events of this kind.
    #[serde(default)]
    kind: Option<String>,
}

/// Query of `GET /health/backup`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct BackupHealthQuery {
    /// Most committed entries the backup may lack.
    #[serde(default)]
    max_lag: Option<u64>,
}

/// Body of `POST /api/v1/relationship/break`: nothing (`{}` or no body).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BreakRequest {}

// ---- handlers ------------------------------------------------------------

/// Liveness and Raft role of this node.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses(
        (status = 200, description = "alive", body = HealthView),
        E405, E500, E503
    ),
)]
async fn health<B: AdminBackend>(State(backend): State<Arc<B>>) -> Result<Response, ApiError> {
    let view = backend.health().await?;
    Ok(Json(view).into_response())
}

/// List configuration entries in key order.
#[utoipa::path(
    get,
    path = "/api/v1/config",
    tag = "config",
    params(ConfigListQuery),
    responses(
        (
            status = 200,
            description = "the entries",
            body = ListView<ConfigEntryView>,
            headers(
                ("X-Tandem-Applied-Index" = u64, description = "applied index of the read"),
                ("X-Tandem-Stale" = bool, description = "whether it was served locally (`stale`)")
            )
        ),
        E400, E401, E405, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn config_list<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiQuery(q): ApiQuery<ConfigListQuery>,
) -> Result<Response, ApiError> {
    let limit = validate_limit(q.limit)?;
    let prefix = q.prefix.filter(|p| !p.is_empty());
    if let Some(p) = &prefix {
        if p.len() > MAX_KEY_LEN || !p.chars().all(is_key_char) {
            return Err(ApiError::BadRequest(format!(
                "prefix must be at most {MAX_KEY_LEN} characters of A-Z a-z 0-9 . _ : / -"
            )));
        }
    }
    let (items, meta) = backend.config_list(prefix, limit, q.stale).await?;
    Ok(read_response(ListView { items }, meta))
}

/// One configuration entry.
#[utoipa::path(
    get,
    path = "/api/v1/config/{key}",
    tag = "config",
    params(
        ("key" = String, Path, description = "1..=256 characters of A-Z a-z 0-9 . _ : / -"),
        ReadQuery
    ),
    responses(
        (
            status = 200,
            description = "the entry",
            body = ConfigEntryView,
            headers(
                ("X-Tandem-Applied-Index" = u64, description = "applied index of the read"),
                ("X-Tandem-Stale" = bool, description = "whether it was served locally (`stale`)")
            )
        ),
        E400, E401, E404, E405, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn config_get<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    validate_key(&key)?;
    let (entry, meta) = backend.config_get(key, q.stale).await?;
    Ok(read_response(entry, meta))
}

/// Create or replace an entry.
#[utoipa::path(
    put,
    path = "/api/v1/config/{key}",
    tag = "config",
    params(("key" = String, Path, description = "1..=256 characters of A-Z a-z 0-9 . _ : / -")),
    request_body = ConfigPut,
    responses(
        (status = 200, description = "written", body = ConfigEntryView),
        E400, E401, E403, E405, E409, E413, E415, E421, E500, E503, E507
    ),
    security(("bearer" = [])),
)]
async fn config_put<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiPath(key): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ConfigPut>,
) -> Result<Response, ApiError> {
    validate_key(&key)?;
    let actor = actor(&headers)?;
    let entry = backend
        .config_put(key, body.value, body.if_version, actor)
        .await?;
    Ok(Json(entry).into_response())
}

/// Remove an entry.
#[utoipa::path(
    delete,
    path = "/api/v1/config/{key}",
    tag = "config",
    params(("key" = String, Path, description = "1..=256 characters of A-Z a-z 0-9 . _ : / -")),
    responses(
        (status = 204, description = "removed"),
        E400, E401, E403, E404, E405, E421, E500, E503, E507
    ),
    security(("bearer" = [])),
)]
async fn config_delete<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiPath(key): ApiPath<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    validate_key(&key)?;
    let actor = actor(&headers)?;
    backend.config_delete(key, actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a session.
#[utoipa::path(
    post,
    path = "/api/v1/sessions",
    tag = "sessions",
    request_body = SessionCreate,
    responses(
        (status = 201, description = "created", body = SessionView),
        E400, E401, E403, E405, E413, E415, E421, E500, E503, E507
    ),
    security(("bearer" = [])),
)]
async fn session_create<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiJson(body): ApiJson<SessionCreate>,
) -> Result<Response, ApiError> {
    validate_text("owner", &body.owner, MAX_NAME_LEN)?;
    validate_ttl(body.ttl_secs)?;
    let view = backend.session_create(body).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// List live sessions.
#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    tag = "sessions",
    params(ListQuery),
    responses(
        (
            status = 200,
            description = "the sessions",
            body = ListView<SessionView>,
            headers(
                ("X-Tandem-Applied-Index" = u64, description = "applied index of the read"),
                ("X-Tandem-Stale" = bool, description = "whether it was served locally (`stale`)")
            )
        ),
        E400, E401, E405, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn session_list<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = validate_limit(q.limit)?;
    let (items, meta) = backend.session_list(limit, q.stale).await?;
    Ok(read_response(ListView { items }, meta))
}

/// One session.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "session id", pattern = r"^[A-Za-z0-9._:-]{1,256}$"), ReadQuery),
    responses(
        (
            status = 200,
            description = "the session",
            body = SessionView,
            headers(
                ("X-Tandem-Applied-Index" = u64, description = "applied index of the read"),
                ("X-Tandem-Stale" = bool, description = "whether it was served locally (`stale`)")
            )
        ),
        E400, E401, E404, E405, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn session_get<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    validate_id(&id)?;
    let (view, meta) = backend.session_get(id, q.stale).await?;
    Ok(read_response(view, meta))
}

/// Remove a session.
#[utoipa::path(
    delete,
    path = "/api/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "session id", pattern = r"^[A-Za-z0-9._:-]{1,256}$")),
    responses(
        (status = 204, description = "removed"),
        E400, E401, E403, E404, E405, E421, E500, E503, E507
    ),
    security(("bearer" = [])),
)]
async fn session_delete<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    validate_id(&id)?;
    backend.session_delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Membership and replication progress.
#[utoipa::path(
    get,
    path = "/api/v1/cluster",
    tag = "cluster",
    params(ReadQuery),
    responses(
        (
            status = 200,
            description = "the cluster as this node sees it",
            body = ClusterView,
            headers(
                ("X-Tandem-Applied-Index" = u64, description = "applied index of the read"),
                ("X-Tandem-Stale" = bool, description = "whether it was served locally (`stale`)")
            )
        ),
        E400, E401, E405, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn cluster<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    let view = backend.cluster(q.stale).await?;
    // The answering node's own applied index is the one that matters for
    // the read-metadata headers.
    let applied_index = view
        .members
        .iter()
        .find(|m| m.id == view.this_node)
        .and_then(|m| m.applied_index);
    let meta = ReadMeta {
        applied_index,
        stale: q.stale,
    };
    Ok(read_response(view, meta))
}

/// Mint a one-time join token.
#[utoipa::path(
    post,
    path = "/api/v1/join-tokens",
    tag = "cluster",
    request_body = JoinTokenRequest,
    responses(
        (status = 201, description = "created", body = JoinTokenView),
        E400, E401, E403, E405, E413, E415, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn create_join_token<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<JoinTokenRequest>,
) -> Result<Response, ApiError> {
    if let Some(ttl) = body.ttl_secs {
        validate_ttl(ttl)?;
    }
    if let Some(kind) = &body.kind {
        validate_kind(kind)?;
    }
    let actor = actor(&headers)?;
    let view = backend.create_join_token(body, actor).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Mint a one-time rejoin token for a node that a break removed or a forced
/// promotion replaced: only that node (by the id its certificate carries)
/// can use it, once, to come back as the backup.
#[utoipa::path(
    post,
    path = "/api/v1/rejoin-tokens",
    tag = "cluster",
    request_body = RejoinTokenRequest,
    responses(
        (status = 201, description = "created", body = JoinTokenView),
        E400, E401, E403, E405, E413, E415, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn create_rejoin_token<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RejoinTokenRequest>,
) -> Result<Response, ApiError> {
    if let Some(ttl) = body.ttl_secs {
        validate_ttl(ttl)?;
    }
    let actor = actor(&headers)?;
    let view = backend.create_rejoin_token(body, actor).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Renew this node's certificate now: a new key and a certificate for the
/// same names, presented from the next connection on (no restart). Nodes
/// also do it by themselves at two thirds of the certificate's life.
#[utoipa::path(
    post,
    path = "/api/v1/certs/renew",
    tag = "cluster",
    request_body(
        content = ref("#/components/schemas/BreakRequest"),
        content_type = "application/json",
        description = "Optional: no body at all means every default."
    ),
    responses(
        (status = 200, description = "renewed", body = CertificateView),
        E400, E401, E403, E405, E409, E413, E415, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn renew_certificate<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    OptionalJson(BreakRequest {}): OptionalJson<BreakRequest>,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    Ok(Json(backend.renew_certificate(actor).await?).into_response())
}

/// Replace the admin token: the new one is in the answer (shown once), the
/// old one stops working at once on every node.
#[utoipa::path(
    post,
    path = "/api/v1/admin-token",
    tag = "cluster",
    responses(
        (status = 200, description = "rotated", body = AdminTokenRotated),
        E401, E403, E405, E421, E500, E503, E507
    ),
    security(("bearer" = [])),
)]
async fn rotate_admin_token<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    let view = backend.rotate_admin_token(actor).await?;
    Ok(Json(view).into_response())
}

/// Admit a node with a join token (the token is the credential).
#[utoipa::path(
    post,
    path = "/api/v1/join",
    tag = "cluster",
    request_body = JoinRequest,
    responses(
        (status = 200, description = "admitted", body = JoinResponse),
        E400, E403, E405, E409, E413, E415, E421, E429, E500, E503, E507
    ),
)]
async fn join<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    sessions: Option<Extension<Arc<Sessions>>>,
    client: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    ApiJson(body): ApiJson<JoinRequest>,
) -> Result<Response, ApiError> {
    let Some(Extension(sessions)) = sessions else {
        return join_checked(&*backend, body).await;
    };
    // A client whose join tokens keep failing waits: the same window and
    // count as failed logins, per client address.
    let client = client.map_or_else(|| "unknown".to_owned(), |c| c.0 .0.ip().to_string());
    let key = [format!("join:{client}")];
    if let Some(secs) = sessions.retry_after(&key) {
        tracing::warn!(%client, "join attempts rate limited");
        return Err(ApiError::TooManyRequests {
            message: format!(
                "too many refused joins from this address; try again in {secs} seconds"
            ),
            retry_after_secs: secs,
        });
    }
    let answer = join_checked(&*backend, body).await;
    if matches!(answer, Err(ApiError::Forbidden(_))) {
        sessions.fail(&key);
    }
    answer
}

async fn join_checked<B: AdminBackend>(
    backend: &B,
    body: JoinRequest,
) -> Result<Response, ApiError> {
    validate_text("token", &body.token, MAX_NAME_LEN)?;
    validate_text("name", &body.name, MAX_NAME_LEN)?;
    validate_kind(&body.kind)?;
    validate_text("peer_addr", &body.peer_addr, MAX_NAME_LEN)?;
    validate_text("api_addr", &body.api_addr, MAX_NAME_LEN)?;
    if body.csr_pem.trim().is_empty() {
        return Err(ApiError::BadRequest("csr_pem must not be empty".to_owned()));
    }
    let view = backend.join(body).await?;
    Ok(Json(view).into_response())
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "this document", content_type = "application/json"),
        E405
    ),
)]
async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi())
}

/// A role health answer: 200 when `ok`, else 503; the body either way, and
/// never cached by a proxy.
fn role_health_response(view: RoleHealth) -> Response {
    let status = if view.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = (status, Json(view)).into_response();
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

/// For load balancers: 200 when this node is the serving primary, else 503.
#[utoipa::path(
    get,
    path = "/health/primary",
    tag = "health",
    responses(
        (status = 200, description = "the serving primary", body = RoleHealth),
        (status = 503, description = "not the serving primary (`ok` false)", body = RoleHealth),
        E405, E500
    ),
)]
async fn health_primary<B: AdminBackend>(
    State(backend): State<Arc<B>>,
) -> Result<Response, ApiError> {
    Ok(role_health_response(backend.health_primary().await?))
}

/// For load balancers: 200 when this node is a backup (within `max_lag`
/// entries), else 503.
#[utoipa::path(
    get,
    path = "/health/backup",
    tag = "health",
    params(BackupHealthQuery),
    responses(
        (status = 200, description = "a backup in sync", body = RoleHealth),
        (status = 503, description = "not a backup, or lagging (`ok` false)", body = RoleHealth),
        E400, E405, E500
    ),
)]
async fn health_backup<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiQuery(q): ApiQuery<BackupHealthQuery>,
) -> Result<Response, ApiError> {
    Ok(role_health_response(
        backend.health_backup(q.max_lag).await?,
    ))
}

/// This host, its peers, topology, settings, epoch and primary (this node's
/// view).
#[utoipa::path(
    get,
    path = "/api/v1/status",
    tag = "relationship",
    responses(
        (
            status = 200,
            description = "the status",
            body = StatusView,
            headers(
                ("X-Tandem-Applied-Index" = u64, description = "applied index of the read"),
                ("X-Tandem-Stale" = bool, description = "whether it was served locally (`stale`)")
            )
        ),
        E401, E405, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn status<B: AdminBackend>(State(backend): State<Arc<B>>) -> Result<Response, ApiError> {
    let view = backend.status().await?;
    let meta = ReadMeta {
        applied_index: view.this_host.applied_index,
        stale: true,
    };
    Ok(read_response(view, meta))
}

fn validate_history_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_HISTORY_LIMIT),
        Some(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_HISTORY_LIMIT}"
        ))),
    }
}

/// Status history, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/history",
    tag = "relationship",
    params(HistoryQuery),
    responses(
        (status = 200, description = "one page", body = HistoryPage),
        E400, E401, E405, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn history<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Response, ApiError> {
    let limit = validate_history_limit(q.limit)?;
    let kind = q.kind.filter(|k| !k.is_empty());
    if let Some(k) = &kind {
        let ok = k.len() <= MAX_HISTORY_KIND_LEN
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(ApiError::BadRequest(format!(
                "kind must be at most {MAX_HISTORY_KIND_LEN} characters of A-Z a-z 0-9 . _ -"
            )));
        }
    }
    let page = backend.history(q.before, limit, kind).await?;
    Ok(Json(page).into_response())
}

/// The replicated relationship settings.
#[utoipa::path(
    get,
    path = "/api/v1/settings",
    tag = "relationship",
    responses(
        (status = 200, description = "the settings", body = SettingsView),
        E401, E405, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn settings_get<B: AdminBackend>(
    State(backend): State<Arc<B>>,
) -> Result<Response, ApiError> {
    Ok(Json(backend.settings().await?).into_response())
}

/// Replace the settings (every field required).
#[utoipa::path(
    put,
    path = "/api/v1/settings",
    tag = "relationship",
    request_body = SettingsUpdate,
    responses(
        (status = 200, description = "written", body = SettingsView),
        E400, E401, E403, E405, E409, E413, E415, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn settings_put<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SettingsUpdate>,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    validate_settings(&body).map_err(|fields| ApiError::Invalid { fields })?;
    Ok(Json(backend.settings_put(body, actor).await?).into_response())
}

/// Swap primary and backup (planned unless `force`; `pull_sync` catches up
/// first).
#[utoipa::path(
    post,
    path = "/api/v1/relationship/swap",
    tag = "relationship",
    request_body(
        content = ref("#/components/schemas/SwapRequest"),
        content_type = "application/json",
        description = "Optional: no body at all means every default."
    ),
    responses(
        (status = 200, description = "swapped", body = SwapOutcome),
        E400, E401, E403, E405, E409, E413, E415, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn swap<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<SwapRequest>,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    Ok(Json(backend.swap(body, actor).await?).into_response())
}

/// Bring the backup up to date now, optionally verifying state digests.
#[utoipa::path(
    post,
    path = "/api/v1/relationship/sync",
    tag = "relationship",
    request_body(
        content = ref("#/components/schemas/SyncRequest"),
        content_type = "application/json",
        description = "Optional: no body at all means every default."
    ),
    responses(
        (status = 200, description = "synced", body = SyncReport),
        E400, E401, E403, E405, E409, E413, E415, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn sync<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<SyncRequest>,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    Ok(Json(backend.sync(body, actor).await?).into_response())
}

/// End the relationship: each side becomes standalone.
#[utoipa::path(
    post,
    path = "/api/v1/relationship/break",
    tag = "relationship",
    request_body(
        content = ref("#/components/schemas/BreakRequest"),
        content_type = "application/json",
        description = "Optional: no body at all means every default."
    ),
    responses(
        (status = 200, description = "broken", body = BreakOutcome),
        E400, E401, E403, E405, E409, E413, E415, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn break_relationship<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    OptionalJson(BreakRequest {}): OptionalJson<BreakRequest>,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    Ok(Json(backend.break_relationship(actor).await?).into_response())
}

/// Come back as the backup after a forced promotion or a break: discard
/// this copy and resync. The primary admits the node only with a rejoin
/// token an administrator made there for it.
#[utoipa::path(
    post,
    path = "/api/v1/relationship/rejoin",
    tag = "relationship",
    request_body = RejoinRequest,
    responses(
        (status = 200, description = "rejoined", body = BreakOutcome),
        E400, E401, E403, E405, E409, E413, E415, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn rejoin<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RejoinRequest>,
) -> Result<Response, ApiError> {
    if body.token.trim().is_empty() || body.token.len() > MAX_TOKEN_LEN {
        return Err(ApiError::BadRequest(format!(
            "token must be a rejoin token (1 to {MAX_TOKEN_LEN} bytes): make one for this node on the primary with `tandem token --rejoin <node-id>`"
        )));
    }
    let actor = actor(&headers)?;
    Ok(Json(backend.rejoin(body.token, actor).await?).into_response())
}

/// Longest accepted address in a setup request.
const MAX_ADDRESS_LEN: usize = 256;
/// Longest accepted join or rejoin token.
const MAX_TOKEN_LEN: usize = 512;

/// Set up relationship from a standalone node: join the primary's cluster
/// with a join token made there, as backup or witness (this node's own
/// data is discarded, then it restarts with its new identity).
#[utoipa::path(
    post,
    path = "/api/v1/relationship/setup",
    tag = "relationship",
    request_body = SetupRequest,
    responses(
        (status = 200, description = "joined; restarting", body = SetupOutcome),
        E400, E401, E403, E405, E409, E413, E415, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn setup<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SetupRequest>,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    let mut fields = std::collections::BTreeMap::new();
    let mut check = |name: &str, value: &str, max: usize| {
        if value.trim().is_empty() || value.len() > max || value.chars().any(char::is_whitespace) {
            fields.insert(
                name.to_owned(),
                format!("required: 1..={max} characters without spaces"),
            );
        }
    };
    check("primary", body.primary.trim(), MAX_ADDRESS_LEN);
    check("token", body.token.trim(), MAX_TOKEN_LEN);
    if let Some(a) = &body.reverse_address {
        if !a.trim().is_empty() {
            check("reverse_address", a.trim(), MAX_ADDRESS_LEN);
        }
    }
    if !fields.is_empty() {
        return Err(ApiError::Invalid { fields });
    }
    Ok(Json(backend.setup(body, actor).await?).into_response())
}

/// Remove the witness from a live pair (pair + witness becomes pair only).
#[utoipa::path(
    post,
    path = "/api/v1/relationship/remove-witness",
    tag = "relationship",
    request_body(
        content = ref("#/components/schemas/BreakRequest"),
        content_type = "application/json",
        description = "Optional: no body at all means every default."
    ),
    responses(
        (status = 200, description = "removed", body = BreakOutcome),
        E400, E401, E403, E405, E409, E413, E415, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn remove_witness<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    OptionalJson(BreakRequest {}): OptionalJson<BreakRequest>,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    Ok(Json(backend.remove_witness(actor).await?).into_response())
}

/// Would the backup take over if the primary died now, after how long,
/// losing what?
#[utoipa::path(
    get,
    path = "/api/v1/readiness",
    tag = "relationship",
    responses(
        (status = 200, description = "readiness", body = ReadinessView),
        E401, E405, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn readiness<B: AdminBackend>(State(backend): State<Arc<B>>) -> Result<Response, ApiError> {
    Ok(Json(backend.readiness().await?).into_response())
}

// ---- users, API tokens, events --------------------------------------------

fn validate_user_name(name: &str) -> Result<(), ApiError> {
    if valid_user_name(name) {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            fields: [(
                "name".to_owned(),
                "must be 1..=64 characters of A-Z a-z 0-9 . _ @ -".to_owned(),
            )]
            .into(),
        })
    }
}

fn validate_password(field: &str, password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if (MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&n) && !password.chars().any(char::is_control)
    {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            fields: [(
                field.to_owned(),
                format!(
                    "must be {MIN_PASSWORD_LEN}..={MAX_PASSWORD_LEN} characters without control characters"
                ),
            )]
            .into(),
        })
    }
}

/// Admin users of the web UI.
#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    responses(
        (status = 200, description = "the users", body = ListView<UserView>),
        E401, E405, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn users_list<B: AdminBackend>(State(backend): State<Arc<B>>) -> Result<Response, ApiError> {
    let items = backend.users().await?;
    Ok(Json(ListView { items }).into_response())
}

/// Add an admin user.
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    request_body = UserCreate,
    responses(
        (status = 201, description = "created", body = UserView),
        E400, E401, E403, E405, E409, E413, E415, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn user_create<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UserCreate>,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    validate_user_name(&body.name)?;
    validate_password("password", &body.password)?;
    if backend.users().await?.iter().any(|u| u.name == body.name) {
        return Err(ApiError::Conflict(format!(
            "user {:?} already exists",
            body.name
        )));
    }
    let view = backend.user_put(body.name, body.password, actor).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Set a user's password.
#[utoipa::path(
    put,
    path = "/api/v1/users/{name}",
    tag = "users",
    params(("name" = String, Path, description = "user name", pattern = r"^[A-Za-z0-9._@-]{1,64}$")),
    request_body = UserPassword,
    responses(
        (status = 200, description = "changed", body = UserView),
        E400, E401, E403, E404, E405, E413, E415, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn user_set_password<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UserPassword>,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    validate_user_name(&name)?;
    validate_password("password", &body.password)?;
    if !backend.users().await?.iter().any(|u| u.name == name) {
        return Err(ApiError::NotFound(format!("no user {name:?}")));
    }
    let view = backend.user_put(name, body.password, actor).await?;
    Ok(Json(view).into_response())
}

/// Remove a user (not the last one) and its API tokens.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{name}",
    tag = "users",
    params(("name" = String, Path, description = "user name", pattern = r"^[A-Za-z0-9._@-]{1,64}$")),
    responses(
        (status = 204, description = "removed"),
        E400, E401, E403, E404, E405, E409, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn user_delete<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let actor = actor(&headers)?;
    validate_user_name(&name)?;
    backend.user_delete(name.clone(), actor).await?;
    sessions.remove_user(&name);
    Ok(StatusCode::NO_CONTENT)
}

/// Change the logged-in user's own password (login session only).
#[utoipa::path(
    post,
    path = "/api/v1/account/password",
    tag = "users",
    request_body = PasswordChange,
    responses(
        (status = 204, description = "changed"),
        E400, E401, E403, E405, E413, E415, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn account_password<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    Extension(Caller(caller)): Extension<Caller>,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let Some(user) = caller else {
        return Err(ApiError::Forbidden(
            "changing one's own password needs a login session; use PUT /api/v1/users/{name}"
                .into(),
        ));
    };
    validate_password("new_password", &body.new_password)?;
    if body.old_password.is_empty() || body.old_password.chars().count() > MAX_PASSWORD_LEN {
        return Err(ApiError::Forbidden("the current password is wrong".into()));
    }
    backend
        .change_password(user.name, body.old_password, body.new_password)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Per-user API tokens (without their secrets).
#[utoipa::path(
    get,
    path = "/api/v1/api-tokens",
    tag = "users",
    responses(
        (status = 200, description = "the tokens", body = ListView<ApiTokenView>),
        E401, E405, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn api_token_list<B: AdminBackend>(
    State(backend): State<Arc<B>>,
) -> Result<Response, ApiError> {
    let items = backend.api_token_list().await?;
    Ok(Json(ListView { items }).into_response())
}

/// Create a per-user API token (a bearer credential); the token is shown
/// once.
#[utoipa::path(
    post,
    path = "/api/v1/api-tokens",
    tag = "users",
    request_body(
        content = ref("#/components/schemas/ApiTokenRequest"),
        content_type = "application/json",
        description = "Optional: no body at all means every default."
    ),
    responses(
        (status = 201, description = "created", body = ApiTokenCreated),
        E400, E401, E403, E404, E405, E413, E415, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn api_token_create<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    Extension(Caller(caller)): Extension<Caller>,
    bearer: Option<Extension<Bearer>>,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<ApiTokenRequest>,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    // A user makes tokens for itself; only the admin token makes them for
    // anyone.
    let own = caller
        .map(|c| c.name)
        .or_else(|| bearer.and_then(|Extension(Bearer(who))| who));
    let user = match (body.user.filter(|u| !u.is_empty()), own) {
        (Some(u), Some(me)) if u != me => {
            return Err(ApiError::Forbidden(format!(
                "{me} may create API tokens for itself only; the admin token creates them for other users"
            )))
        }
        (Some(u), _) => u,
        (None, Some(me)) => me,
        (None, None) => {
            return Err(ApiError::BadRequest(
                "user is required with the admin token".into(),
            ))
        }
    };
    validate_user_name(&user)?;
    let view = backend.api_token_create(user, actor).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Revoke a per-user API token.
#[utoipa::path(
    delete,
    path = "/api/v1/api-tokens/{id}",
    tag = "users",
    params((
        "id" = String,
        Path,
        description = "API token id",
        pattern = r"^[A-Za-z0-9._:-]{1,256}$"
    )),
    responses(
        (status = 204, description = "revoked"),
        E400, E401, E403, E404, E405, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn api_token_revoke<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let actor = actor(&headers)?;
    validate_id(&id)?;
    backend.api_token_revoke(id, actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/events`: a `status` event now and every
/// [`EVENT_INTERVAL`]; an `error` event (with the message) when the status
/// cannot be read.
async fn events<B: AdminBackend>(
    State(backend): State<Arc<B>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold((backend, true), |(backend, first)| async move {
        if !first {
            tokio::time::sleep(EVENT_INTERVAL).await;
        }
        let event = match backend.status().await {
            Ok(view) => Event::default()
                .event("status")
                .json_data(&view)
                .unwrap_or_else(|e| Event::default().event("error").data(e.to_string())),
            Err(e) => Event::default().event("error").data(e.to_string()),
        };
        Some((Ok(event), (backend, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(validate_key("a").is_ok());
        assert!(validate_key("app/db.url:v1_x-y").is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(validate_key("a b").is_err());
        assert!(validate_key("é").is_err());
        assert!(validate_key("a?b").is_err());
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }

    #[test]
    fn leader_urls() {
        let uri: Uri = "/api/v1/config/a/b?stale=false".parse().expect("valid uri");
        assert_eq!(
            leader_url("https://10.0.0.2:8443/", &uri),
            "https://10.0.0.2:8443/api/v1/config/a/b?stale=false"
        );
    }
}

// ---- maintenance (bodies and checks in `crate::maintenance`) ---------------

/// Who is in maintenance now and which windows are scheduled.
#[utoipa::path(
    get,
    path = "/api/v1/maintenance",
    tag = "maintenance",
    responses(
        (status = 200, description = "the maintenance state", body = MaintenanceView),
        E401, E405, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn maintenance_get<B: AdminBackend>(
    State(backend): State<Arc<B>>,
) -> Result<Response, ApiError> {
    Ok(Json(backend.maintenance().await?).into_response())
}

/// Hold a node out of service now (the role moves away from it first).
#[utoipa::path(
    post,
    path = "/api/v1/maintenance",
    tag = "maintenance",
    request_body = MaintenanceStart,
    responses(
        (status = 200, description = "in maintenance", body = MaintenanceOutcome),
        E400, E401, E403, E404, E405, E409, E413, E415, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn maintenance_start<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<MaintenanceStart>,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    validate_maintenance_start(&body).map_err(|fields| ApiError::Invalid { fields })?;
    Ok(Json(backend.maintenance_start(body, actor).await?).into_response())
}

/// End a node's maintenance now.
#[utoipa::path(
    delete,
    path = "/api/v1/maintenance/{node}",
    tag = "maintenance",
    params(("node" = String, Path, description = "the node's name (or id)")),
    responses(
        (status = 200, description = "maintenance ended", body = MaintenanceOutcome),
        E400, E401, E403, E404, E405, E409, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn maintenance_end<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiPath(node): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    let mut fields = std::collections::BTreeMap::new();
    check_node(&node, &mut fields);
    if !fields.is_empty() {
        return Err(ApiError::Invalid { fields });
    }
    Ok(Json(backend.maintenance_end(node, actor).await?).into_response())
}

/// Schedule a maintenance window.
#[utoipa::path(
    post,
    path = "/api/v1/maintenance/windows",
    tag = "maintenance",
    request_body = WindowRequest,
    responses(
        (status = 200, description = "scheduled", body = MaintenanceView),
        E400, E401, E403, E404, E405, E409, E413, E415, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn window_schedule<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<WindowRequest>,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    validate_window(&body).map_err(|fields| ApiError::Invalid { fields })?;
    Ok(Json(backend.window_schedule(body, actor).await?).into_response())
}

/// Cancel a window that has not started.
#[utoipa::path(
    delete,
    path = "/api/v1/maintenance/windows/{id}",
    tag = "maintenance",
    params(("id" = u64, Path, description = "the window's id")),
    responses(
        (status = 200, description = "cancelled", body = MaintenanceView),
        E400, E401, E403, E404, E405, E409, E421, E500, E503
    ),
    security(("bearer" = [])),
)]
async fn window_cancel<B: AdminBackend>(
    State(backend): State<Arc<B>>,
    ApiPath(id): ApiPath<u64>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    Ok(Json(backend.window_cancel(id, actor).await?).into_response())
}
