//! The one error type of the admin API and its single HTTP mapping.

use std::collections::BTreeMap;

use axum::http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::ToSchema;

/// Seconds a client is told to wait (`Retry-After`) on a 503.
const RETRY_AFTER_SECS: &str = "1";

/// Every failure the admin API can report.
///
/// [`IntoResponse`] maps each variant to exactly one status code and renders
/// an [`ErrorBody`]. Backends return these from [`crate::AdminBackend`]
/// methods; the router also produces them for client mistakes (bad JSON,
/// wrong content type, oversized bodies, invalid keys…).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// This node cannot serve the request; the leader can.
    ///
    /// With a known leader: 421 Misdirected Request and
    /// `Location: <leader_api><original path and query>` (added by the
    /// router, which knows the original URI). Without one: 503 with
    /// `Retry-After`.
    #[error("{}", not_leader_message(.leader_api.as_deref()))]
    NotLeader {
        /// Base URL of the leader's admin API (e.g. `https://10.0.0.1:8443`),
        /// when known.
        leader_api: Option<String>,
    },
    /// Missing or wrong bearer token: 401.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// Authenticated but not allowed (or a join token that is invalid): 403.
    #[error("{0}")]
    Forbidden(String),
    /// No such key, session, route…: 404.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or fails validation: 400.
    #[error("{0}")]
    BadRequest(String),
    /// Method not supported on this route: 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A precondition (such as `if_version`) does not hold: 409.
    #[error("{0}")]
    Conflict(String),
    /// The request body exceeds the limit: 413.
    #[error("request body too large")]
    PayloadTooLarge,
    /// The body is not `application/json`: 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Temporarily unable to serve (no quorum, shutting down…): 503 with
    /// `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
    /// Input that fails validation field by field (settings): 400 with
    /// kind `invalid` and [`ErrorBody::fields`] naming each bad field
    /// (`test_ips[2]`, `shared_ips[0].address`…) and what is wrong with it.
    #[error("{}", invalid_message(.fields))]
    Invalid {
        /// Field path → what is wrong with it.
        fields: BTreeMap<String, String>,
    },
    /// An action (swap, sync, break…) the node declines in its current
    /// situation, e.g. a planned swap while the peer is unreachable: 409
    /// with kind `refused`. Nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// A bug or an unexpected failure: 500. The detail is logged at `error`
    /// and the client gets a generic message.
    #[error("internal error: {0}")]
    Internal(String),
    /// The node's disk is below its free-space reserve: 507 with kind
    /// `insufficient_storage`. Nothing was changed.
    #[error("{0}")]
    InsufficientStorage(String),
    /// Too many failed attempts from this client (joins with bad tokens):
    /// 429 with `Retry-After`. Nothing was changed.
    #[error("{message}")]
    TooManyRequests {
        /// What to do.
        message: String,
        /// Seconds to wait.
        retry_after_secs: u64,
    },
}

fn not_leader_message(leader_api: Option<&str>) -> String {
    match leader_api {
        Some(api) => format!("this node is not the leader; the leader serves the API at {api}"),
        None => "this node is not the leader and no leader is known; retry later".to_owned(),
    }
}

fn invalid_message(fields: &BTreeMap<String, String>) -> String {
    if fields.is_empty() {
        return "invalid input".to_owned();
    }
    let list: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("invalid input: {}", list.join("; "))
}

impl ApiError {
    /// The status code this error maps to.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotLeader {
                leader_api: Some(_),
            } => StatusCode::MISDIRECTED_REQUEST,
            Self::NotLeader { leader_api: None } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) | Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) | Self::Refused(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The machine-readable `error` field of the body.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotLeader { .. } => "not_leader",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::BadRequest(_) => "bad_request",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict(_) => "conflict",
            Self::Invalid { .. } => "invalid",
            Self::Refused(_) => "refused",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
            Self::InsufficientStorage(_) => "insufficient_storage",
            Self::TooManyRequests { .. } => "too_many_requests",
        }
    }

    /// One value of every variant, `NotLeader` both with and without a
    /// leader (they map to different statuses): the list from which the
    /// OpenAPI document takes the kinds of [`ErrorBody::error`], and against
    /// which the tests check the mapping and the document.
    pub fn examples() -> Vec<Self> {
        let text = || "example".to_owned();
        let all = vec![
            Self::NotLeader {
                leader_api: Some("https://192.0.2.1:8443".to_owned()),
            },
            Self::NotLeader { leader_api: None },
            Self::Unauthorized,
            Self::Forbidden(text()),
            Self::NotFound(text()),
            Self::BadRequest(text()),
            Self::MethodNotAllowed,
            Self::Conflict(text()),
            Self::PayloadTooLarge,
            Self::UnsupportedMediaType(text()),
            Self::Unavailable(text()),
            Self::Invalid {
                fields: BTreeMap::from([("field".to_owned(), text())]),
            },
            Self::Refused(text()),
            Self::Internal(text()),
            Self::InsufficientStorage(text()),
            Self::TooManyRequests {
                message: text(),
                retry_after_secs: 30,
            },
        ];
        // No `_` arm: a new variant does not compile here until it is also
        // in the list above.
        for e in &all {
            match e {
                Self::NotLeader { .. }
                | Self::Unauthorized
                | Self::Forbidden(_)
                | Self::NotFound(_)
                | Self::BadRequest(_)
                | Self::MethodNotAllowed
                | Self::Conflict(_)
                | Self::PayloadTooLarge
                | Self::UnsupportedMediaType(_)
                | Self::Unavailable(_)
                | Self::Invalid { .. }
                | Self::Refused(_)
                | Self::Internal(_)
                | Self::InsufficientStorage(_)
                | Self::TooManyRequests { .. } => {}
            }
        }
        all
    }

    /// Maps an axum extractor rejection (by its status) to an `ApiError`,
    /// keeping axum's explanation as the message.
    pub(crate) fn from_rejection(status: StatusCode, text: String) -> Self {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType(text),
            s if s.is_server_error() => Self::Internal(text),
            // 400 (syntax), 422 (unknown field, wrong type, missing field) and
            // anything else the client sent wrong.
            _ => Self::BadRequest(text),
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable kind, e.g. `not_found` (see [`ApiError::kind`]).
    #[schema(schema_with = kind_schema)]
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    /// For `not_leader`: the leader's API base URL, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_api: Option<String>,
    /// For `invalid`: field path → what is wrong with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, String>>,
}

/// The schema of [`ErrorBody::error`]: a string, one of the kinds of
/// [`ApiError::examples`].
fn kind_schema() -> Object {
    let mut kinds: Vec<&str> = Vec::new();
    for kind in ApiError::examples().iter().map(ApiError::kind) {
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(kinds))
        .description(Some(
            "Machine-readable kind; `leader_api` comes with `not_leader`, `fields` with `invalid`.",
        ))
        .build()
}

/// Response extension asking the router's redirect middleware to set
/// `Location` to this base URL followed by the original path and query.
#[derive(Debug, Clone)]
pub(crate) struct LeaderRedirect(pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "internal error in admin API");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let leader_api = match &self {
            Self::NotLeader { leader_api } => leader_api.clone(),
            _ => None,
        };
        let fields = match &self {
            Self::Invalid { fields } => Some(fields.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: self.kind().to_owned(),
            message,
            leader_api,
            fields,
        };
        let mut resp = (status, Json(body)).into_response();
        match self {
            Self::NotLeader {
                leader_api: Some(api),
            } => {
                resp.extensions_mut().insert(LeaderRedirect(api));
            }
            Self::NotLeader { leader_api: None } | Self::Unavailable(_) => {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            }
            Self::Unauthorized => {
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::TooManyRequests {
                retry_after_secs, ..
            } => {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            _ => {}
        }
        resp
    }
}
