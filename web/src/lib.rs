//! Tandem's admin listener: the HTTPS JSON API (`/api/v1/...`), `/health`,
//! and the TLS accept loop that serves them.
//!
//! This crate must not depend on `node` or `storage`: it declares what it
//! needs as the [`AdminBackend`] trait with its own view types, and `node`
//! implements it. It holds no Raft, sled or certificate logic; the TLS
//! configuration arrives ready-made.
//!
//! Modules:
//! - `backend`: [`AdminBackend`] and the JSON views / request bodies.
//! - `checks`: service checks in the settings ([`CheckSpec`]), their
//!   validation and [`CheckView`] (a leaf).
//! - `error`: [`ApiError`], the one error type, and its single HTTP mapping.
//! - `routes`: [`router`], handlers, bearer authentication, validation, and
//!   [`openapi()`], the OpenAPI 3.1 document of every route, generated with
//!   utoipa from the handlers' `#[utoipa::path]` attributes and the view
//!   types' `ToSchema` derives.
//! - `extract`: extractors that turn axum rejections into [`ApiError`]s.
//! - `maintenance`: the bodies, views and checks of `/api/v1/maintenance…`
//!   (a leaf; the handlers are in `routes`).
//! - `names`: [`RoleName`], [`KindName`], [`Topology`]: closed sets of
//!   names, serialized as the strings the JSON has always had.
//! - `settings`: [`validate_settings`], the pure settings checks.
//! - `openapi`: the document's shared parts: one error response per status
//!   [`ApiError`] maps to (all with the [`ErrorBody`] schema) and the bearer
//!   security scheme.
//! - `conn`: one admin connection's bounds ([`ConnLimits`]): admission,
//!   the deadline to its first request, request bodies' deadline, the
//!   close of an idle connection.
//! - `tls`: [`serve_tls`], the accept loop with graceful shutdown.
//! - `ui`: the admin web UI: login sessions (cookie + CSRF token), login
//!   rate limits, the HTML pages and their embedded assets, server-sent
//!   status events.

mod backend;
mod checks;
mod conn;
mod error;
mod extract;
mod maintenance;
mod names;
mod openapi;
mod routes;
mod settings;
mod tls;
mod ui;

pub use backend::{
    AdminBackend, AdminTokenRotated, ApiTokenCreated, ApiTokenRequest, ApiTokenView, BreakOutcome,
    CertificateView, ClusterView, ConfigEntryView, ConfigPut, HealthView, HistoryEventView,
    HistoryPage, HostView, JoinRequest, JoinResponse, JoinTokenRequest, JoinTokenView, ListView,
    MemberView, PasswordChange, PeerView, ReadMeta, ReadinessView, RejoinRequest,
    RejoinTokenRequest, RoleHealth, SessionCreate, SessionView, SettingsUpdate, SettingsView,
    SetupOutcome, SetupRequest, SharedIpView, StatusView, SwapOutcome, SwapRequest, SyncReport,
    SyncRequest, UserCreate, UserPassword, UserView, VerifyReport, ADMIN_TOKEN_ACTOR,
};
pub use backend::{
    Failback, FailbackOff, DEFAULT_MAINTENANCE_MAX_MINUTES, DEFAULT_MAINTENANCE_REMINDER_SECS,
};
pub use checks::{
    CheckSpec, CheckView, CHECK_COUNT, CHECK_HOLD_DOWN_SECS, CHECK_INTERVAL_MS,
    DEFAULT_CHECK_HOLD_DOWN_SECS, MAX_CHECKS,
};
pub use conn::{BodyTimeout, ConnLimits};
pub use error::{ApiError, ErrorBody};
pub use maintenance::{
    validate_maintenance_start, validate_window, HoldView, MaintenanceOutcome, MaintenanceStart,
    MaintenanceView, WindowRequest, WindowView, MAINTENANCE_MAX_MINUTES, MAINTENANCE_REMINDER_SECS,
    MAX_MAINTENANCE_REASON_LEN,
};
pub use names::{KindName, RoleName, Topology};
pub use routes::{
    openapi, router, validate_key, AdminApp, AdminFuture, ApiRoute, ACTOR_HEADER,
    APPLIED_INDEX_HEADER, DEFAULT_HISTORY_LIMIT, DEFAULT_LIST_LIMIT, EVENTS_PATH, EVENT_INTERVAL,
    MAX_BODY_BYTES, MAX_HISTORY_LIMIT, MAX_KEY_LEN, MAX_LIST_LIMIT, MAX_TTL_SECS, ROUTES,
    STALE_HEADER,
};
pub use settings::{
    validate_settings, MAX_INTERFACE_LEN, MAX_SHARED_IPS, MAX_TEST_IPS, MIN_BANDWIDTH_BPS,
    PRIMARY_TIMEOUT_MS, VERIFY_INTERVAL_SECS,
};
pub use tls::{serve_tls, SHUTDOWN_GRACE};
pub use ui::{CSRF_HEADER, LOGIN_MAX_FAILURES, LOGIN_WINDOW, SESSION_COOKIE, SESSION_TTL};
