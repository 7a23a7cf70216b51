//! The admin web UI: login sessions, CSRF tokens, login rate limits, the HTML
//! pages and their embedded assets.
//!
//! Sessions live in memory on the node that created them (8 h, lost on
//! restart; why they are not replicated is in the README, "The web UI"), and
//! each request checks that the session's user still exists in the
//! replicated users: the cookie `tandem_session` (`HttpOnly; Secure;
//! SameSite=Strict; Path=/`) names one, and every state-changing request
//! made with it must carry the session's CSRF token (`X-CSRF-Token` header
//! or a `csrf` form field). The pages are plain HTML shells filled in by one
//! small script (`/ui/app.js`) that calls the JSON API; nothing is loaded
//! from elsewhere.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::header::{
    HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, RETRY_AFTER,
    SET_COOKIE,
};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use rand::RngCore;
use serde::Deserialize;

use crate::backend::AdminBackend;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "tandem_session";
/// Request header carrying the session's CSRF token.
pub const CSRF_HEADER: HeaderName = HeaderName::from_static("x-csrf-token");
/// Lifetime of a login session.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Window of the login rate limit.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Failed logins per user name, and per client address, within
/// [`LOGIN_WINDOW`] after which further attempts get a 429.
pub const LOGIN_MAX_FAILURES: usize = 5;
/// Most keys (user@address, address) the login and join throttle keeps.
const MAX_THROTTLE_KEYS: usize = 10_000;
/// Longest accepted password.
pub(crate) const MAX_PASSWORD_LEN: usize = 256;
/// Shortest accepted new password.
pub(crate) const MIN_PASSWORD_LEN: usize = 8;
/// Longest user name.
pub(crate) const MAX_USER_LEN: usize = 64;

const CSS: &str = include_str!("../assets/app.css");
const JS: &str = include_str!("../assets/app.js");
const LOGIN_HTML: &str = include_str!("../assets/login.html");
const FAILOVER_HTML: &str = include_str!("../assets/failover.html");
const SETTINGS_HTML: &str = include_str!("../assets/settings.html");
const DATA_HTML: &str = include_str!("../assets/data.html");
const SETUP_HTML: &str = include_str!("../assets/setup.html");
const USERS_HTML: &str = include_str!("../assets/users.html");

/// The logged-in user of a request, inserted by the auth middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionUser {
    pub(crate) name: String,
    pub(crate) csrf: String,
    /// The user's `updated_at_ms` at login: a later change of the user
    /// (its password) ends the session, on every node.
    pub(crate) stamp: u64,
}

/// Who made an authenticated API request: a login session, or `None` for a
/// bearer token.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) Option<SessionUser>);

struct Entry {
    user: SessionUser,
    expires: Instant,
}

/// Server-side session map and login failure counters (in memory).
#[derive(Default)]
pub(crate) struct Sessions {
    sessions: Mutex<HashMap<String, Entry>>,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Constant-time equality of two byte strings of public length.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// A new session for `user`: its id (the cookie value) and CSRF token.
    fn create(&self, user: &str, stamp: u64) -> (String, SessionUser) {
        let now = Instant::now();
        let id = random_token();
        let su = SessionUser {
            name: user.to_owned(),
            csrf: random_token(),
            stamp,
        };
        let mut map = lock(&self.sessions);
        map.retain(|_, e| e.expires > now);
        map.insert(
            id.clone(),
            Entry {
                user: su.clone(),
                expires: now + SESSION_TTL,
            },
        );
        (id, su)
    }

    fn get(&self, id: &str) -> Option<SessionUser> {
        let map = lock(&self.sessions);
        map.get(id)
            .filter(|e| e.expires > Instant::now())
            .map(|e| e.user.clone())
    }

    fn remove(&self, id: &str) {
        lock(&self.sessions).remove(id);
    }

    /// Ends every session of `user` (after the user was deleted).
    pub(crate) fn remove_user(&self, user: &str) {
        lock(&self.sessions).retain(|_, e| e.user.name != user);
    }

    /// The session named by the request's cookie, if valid.
    pub(crate) fn lookup(&self, headers: &HeaderMap) -> Option<(String, SessionUser)> {
        let id = session_cookie(headers)?;
        self.get(&id).map(|u| (id, u))
    }

    /// Seconds to wait when any of `keys` has too many recent failures.
    pub(crate) fn retry_after(&self, keys: &[String]) -> Option<u64> {
        let now = Instant::now();
        let mut map = lock(&self.failures);
        let mut wait = None;
        for k in keys {
            if let Some(q) = map.get_mut(k) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= LOGIN_WINDOW)
                {
                    q.pop_front();
                }
                if q.len() >= LOGIN_MAX_FAILURES {
                    let oldest = q.front().copied().unwrap_or(now);
                    let left = LOGIN_WINDOW.saturating_sub(now.duration_since(oldest));
                    let secs = left.as_secs().max(1);
                    wait = Some(wait.map_or(secs, |w: u64| w.max(secs)));
                }
            }
        }
        map.retain(|_, q| !q.is_empty());
        wait
    }

    pub(crate) fn fail(&self, keys: &[String]) {
        let now = Instant::now();
        let mut map = lock(&self.failures);
        if map.len() >= MAX_THROTTLE_KEYS {
            // Forget what is older than the window; if that is not enough,
            // the oldest entries (a flood of distinct keys cannot grow the
            // map without bound).
            map.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.duration_since(*t) < LOGIN_WINDOW)
            });
            while map.len() >= MAX_THROTTLE_KEYS {
                let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied())
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                map.remove(&oldest);
            }
        }
        for k in keys {
            let q = map.entry(k.clone()).or_default();
            q.push_back(now);
            while q.len() > LOGIN_MAX_FAILURES {
                q.pop_front();
            }
        }
    }

    fn clear(&self, key: &str) {
        lock(&self.failures).remove(key);
    }

    /// Takes back the newest failure counted for `key` (a login counted
    /// before its hash was checked turned out right).
    fn forgive(&self, key: &str) {
        let mut map = lock(&self.failures);
        if let Some(q) = map.get_mut(key) {
            q.pop_back();
            if q.is_empty() {
                map.remove(key);
            }
        }
    }

    /// How many keys the throttle holds.
    #[cfg(test)]
    fn throttle_keys(&self) -> usize {
        lock(&self.failures).len()
    }
}

/// The value of the `tandem_session` cookie, if any.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether the request's CSRF header matches the session's token.
pub(crate) fn csrf_ok(headers: &HeaderMap, user: &SessionUser) -> bool {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| ct_eq(t.as_bytes(), user.csrf.as_bytes()))
}

/// Whether `name` is a valid user name: 1..=64 of `[A-Za-z0-9._@-]`.
pub(crate) fn valid_user_name(name: &str) -> bool {
    // `admin-token` names the admin token in the history: no user has it.
    !name.is_empty()
        && name != crate::backend::ADMIN_TOKEN_ACTOR
        && name.len() <= MAX_USER_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
}

/// State of the UI routes.
pub(crate) struct Ui<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) sessions: Arc<Sessions>,
}

impl<B: AdminBackend> Ui<B> {
    /// The request's login session, if valid and its user still exists in
    /// the replicated users: sessions are per node, so a user removed on
    /// another node (the primary) loses its sessions here at their next
    /// request. A node that cannot read its users lets nobody in.
    pub(crate) async fn session(&self, headers: &HeaderMap) -> Option<(String, SessionUser)> {
        let (id, user) = self.sessions.lookup(headers)?;
        let now = self
            .backend
            .users()
            .await
            .ok()
            .and_then(|users| users.into_iter().find(|u| u.name == user.name));
        match now {
            None => {
                self.sessions.remove_user(&user.name);
                None
            }
            // Its password changed since this session logged in.
            Some(u) if u.updated_at_ms != user.stamp => {
                self.sessions.remove(&id);
                None
            }
            Some(_) => Some((id, user)),
        }
    }
}

impl<B> Clone for Ui<B> {
    fn clone(&self) -> Self {
        Self {
            backend: Arc::clone(&self.backend),
            sessions: Arc::clone(&self.sessions),
        }
    }
}

/// The UI routes: pages, login/logout and the assets.
pub(crate) fn ui_router<B: AdminBackend>(ui: Ui<B>) -> Router {
    Router::new()
        .route("/login", get(login_page::<B>))
        .route("/ui/login", post(login::<B>))
        .route("/ui/logout", post(logout::<B>))
        .route("/ui/app.js", get(asset_js))
        .route("/ui/app.css", get(asset_css))
        .route("/", get(page::<B, 0>))
        .route("/settings", get(page::<B, 1>))
        .route("/data", get(page::<B, 2>))
        .route("/setup", get(page::<B, 3>))
        .route("/users", get(page::<B, 4>))
        .with_state(ui)
}

fn with_headers(mut resp: Response, content_type: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("same-origin"),
    );
    resp
}

fn html(status: StatusCode, body: String) -> Response {
    with_headers((status, body).into_response(), "text/html; charset=utf-8")
}

async fn asset_js() -> Response {
    with_headers(JS.into_response(), "text/javascript; charset=utf-8")
}

async fn asset_css() -> Response {
    with_headers(CSS.into_response(), "text/css; charset=utf-8")
}

/// Escapes text for HTML element content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const PAGES: [(&str, &str, &str, &str); 5] = [
    ("failover", "/", "Failover", FAILOVER_HTML),
    ("settings", "/settings", "Settings", SETTINGS_HTML),
    ("data", "/data", "Data", DATA_HTML),
    ("setup", "/setup", "Set up", SETUP_HTML),
    ("users", "/users", "Users", USERS_HTML),
];

fn layout(page: usize, user: &SessionUser) -> String {
    let (id, _, title, body) = PAGES[page];
    let nav: String = PAGES
        .iter()
        .enumerate()
        .map(|(i, (pid, href, label, _))| {
            let current = if i == page {
                " aria-current=\"page\""
            } else {
                ""
            };
            format!("<a id=\"nav-{pid}\" href=\"{href}\"{current}>{label}</a>")
        })
        .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"csrf-token\" content=\"{csrf}\">\
<title>{title} · Tandem</title><link rel=\"stylesheet\" href=\"/ui/app.css\">\
<script src=\"/ui/app.js\" defer></script></head>\
<body data-page=\"{id}\" data-user=\"{user}\"><header class=\"top\"><span class=\"brand\">Tandem</span>\
<nav>{nav}</nav><form class=\"logout\" method=\"post\" action=\"/ui/logout\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><span id=\"whoami\">{user}</span> \
<button type=\"submit\" id=\"logout\">Log out</button></form></header>\
<div id=\"role-banner\" class=\"banner\" hidden></div>\
<div id=\"maintenance-banner\" class=\"banner maintenance\" role=\"alert\" hidden></div>\
<main>{body}</main></body></html>\n",
        csrf = esc(&user.csrf),
        user = esc(&user.name),
    )
}

fn login_html(message: Option<&str>, user: &str) -> String {
    let msg = message
        .map(|m| {
            format!(
                "<p id=\"login-error\" class=\"error\" role=\"alert\">{}</p>",
                esc(m)
            )
        })
        .unwrap_or_default();
    LOGIN_HTML
        .replace("{{message}}", &msg)
        .replace("{{user}}", &esc(user))
}

fn redirect(to: &'static str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn page<B: AdminBackend, const P: usize>(
    State(ui): State<Ui<B>>,
    headers: HeaderMap,
) -> Response {
    match ui.session(&headers).await {
        Some((_, user)) => html(StatusCode::OK, layout(P, &user)),
        None => redirect("/login"),
    }
}

async fn login_page<B: AdminBackend>(State(ui): State<Ui<B>>, headers: HeaderMap) -> Response {
    if ui.sessions.lookup(&headers).is_some() {
        return redirect("/");
    }
    html(StatusCode::OK, login_html(None, ""))
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
}

async fn login<B: AdminBackend>(State(ui): State<Ui<B>>, req: Request) -> Response {
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string());
    let form = match Form::<LoginForm>::from_request(req, &()).await {
        Ok(Form(f)) => f,
        Err(_) => {
            return html(
                StatusCode::BAD_REQUEST,
                login_html(Some("send the user name and password from the form"), ""),
            )
        }
    };
    let user = form.user.trim().to_owned();
    // Per user *and* address: a flood on `admin` from some addresses does
    // not lock the real administrator out from another one. Keys are
    // bounded in size (a name that is no valid user name is one key).
    let user_part = if valid_user_name(&user) {
        user.as_str()
    } else {
        "(invalid name)"
    };
    let user_key = format!("user:{user_part}@{addr}");
    let keys = [user_key.clone(), format!("addr:{addr}")];
    if let Some(secs) = ui.sessions.retry_after(&keys) {
        tracing::warn!(user = %user, %addr, "login rate limited");
        let mut r = html(
            StatusCode::TOO_MANY_REQUESTS,
            login_html(
                Some(&format!(
                    "too many failed logins; try again in {secs} seconds"
                )),
                &user,
            ),
        );
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        return r;
    }
    // Counted before the hash is checked: concurrent guesses cannot all
    // pass the limit while the first ones are being hashed.
    ui.sessions.fail(&keys);
    let plausible = valid_user_name(&user)
        && !form.password.is_empty()
        && form.password.chars().count() <= MAX_PASSWORD_LEN;
    let ok = if plausible {
        match ui.backend.verify_user(user.clone(), form.password).await {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check a login");
                return html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    login_html(Some(&format!("cannot check the login now: {e}")), &user),
                );
            }
        }
    } else {
        false
    };
    if !ok {
        tracing::info!(user = %user_part, %addr, "failed login");
        return html(
            StatusCode::UNAUTHORIZED,
            login_html(Some("wrong user name or password"), &user),
        );
    }
    ui.sessions.clear(&user_key);
    ui.sessions.forgive(&format!("addr:{addr}"));
    let stamp = ui
        .backend
        .users()
        .await
        .ok()
        .and_then(|users| users.into_iter().find(|u| u.name == user))
        .map_or(0, |u| u.updated_at_ms);
    let (id, _) = ui.sessions.create(&user, stamp);
    tracing::info!(user = %user, %addr, "login");
    let mut r = redirect("/");
    let cookie = format!(
        "{SESSION_COOKIE}={id}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

#[derive(Debug, Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout<B: AdminBackend>(State(ui): State<Ui<B>>, req: Request) -> Response {
    let headers = req.headers().clone();
    let Some((id, user)) = ui.sessions.lookup(&headers) else {
        return redirect("/login");
    };
    let form_csrf = Form::<LogoutForm>::from_request(req, &())
        .await
        .map(|Form(f)| f.csrf)
        .unwrap_or_default();
    let ok = csrf_ok(&headers, &user) || ct_eq(form_csrf.as_bytes(), user.csrf.as_bytes());
    if !ok {
        return crate::ApiError::Forbidden("missing or wrong CSRF token".into()).into_response();
    }
    ui.sessions.remove(&id);
    let mut r = redirect("/login");
    r.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static(
            "tandem_session=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_names() {
        let mut h = HeaderMap::new();
        assert_eq!(session_cookie(&h), None);
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; tandem_session=abc; b=2"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("abc"));
        assert!(valid_user_name("admin"));
        assert!(valid_user_name("a.b-c_d@e"));
        assert!(!valid_user_name(""));
        assert!(!valid_user_name("a b"));
        assert!(!valid_user_name(&"a".repeat(65)));
        assert!(
            !valid_user_name("admin-token"),
            "reserved for the admin token"
        );
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn the_throttle_keeps_a_bounded_number_of_keys() {
        let s = Sessions::default();
        for n in 0..(MAX_THROTTLE_KEYS + 500) {
            s.fail(&[format!("addr:10.0.{}.{}", n / 256, n % 256)]);
        }
        assert!(
            s.throttle_keys() <= MAX_THROTTLE_KEYS,
            "{}",
            s.throttle_keys()
        );
        // The newest are kept.
        let newest = MAX_THROTTLE_KEYS + 499;
        let key = format!("addr:10.0.{}.{}", newest / 256, newest % 256);
        s.fail(std::slice::from_ref(&key));
        assert!(lock(&s.failures).get(&key).is_some_and(|q| q.len() == 2));
    }

    #[test]
    fn rate_limit_counts_failures() {
        let s = Sessions::default();
        let keys = ["user:a".to_owned(), "addr:x".to_owned()];
        for _ in 0..LOGIN_MAX_FAILURES {
            assert_eq!(s.retry_after(&keys), None);
            s.fail(&keys);
        }
        assert!(s.retry_after(&keys).is_some_and(|w| (1..=60).contains(&w)));
        assert!(s.retry_after(&["addr:x".to_owned()]).is_some());
        assert!(s.retry_after(&["user:b".to_owned()]).is_none());
    }
}
