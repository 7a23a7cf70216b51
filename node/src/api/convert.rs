//! Stored records as the API's views, and API input as stored values.

use std::time::Duration;

use tandem_storage::{AdminUser, ConfigEntry, NodeKind, Response, Session};
use tandem_web::{ApiError, ConfigEntryView, SessionView, UserView};

/// How long the status page and `/api/v1/cluster` wait for each peer's
/// `/health`.
pub(super) const PEER_PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// Largest JSON value (config value or session data) accepted, in bytes of
/// its compact encoding. Keeps one log entry, and so one peer frame, small.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

pub(super) fn parse_json(text: &str) -> serde_json::Value {
    // Stored values were produced by serde_json from a Value, so they parse;
    // should one ever not, show it as a string rather than fail the read.
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

pub(super) fn config_view(e: ConfigEntry) -> ConfigEntryView {
    ConfigEntryView {
        value: parse_json(&e.value_json),
        key: e.key,
        version: e.version,
        updated_by: e.updated_by,
        updated_at_ms: e.updated_ms,
    }
}

pub(super) fn session_view(s: Session) -> SessionView {
    SessionView {
        data: parse_json(&s.data_json),
        id: s.id,
        owner: s.owner,
        created_at_ms: s.created_ms,
        expires_at_ms: s.expires_ms,
    }
}

pub(super) fn encode_value(v: &serde_json::Value) -> Result<String, ApiError> {
    let text = v.to_string();
    if text.len() > MAX_VALUE_BYTES {
        return Err(ApiError::BadRequest(format!(
            "value is {} bytes; the limit is {MAX_VALUE_BYTES}",
            text.len()
        )));
    }
    Ok(text)
}

pub(super) fn parse_kind(kind: Option<&str>) -> Result<NodeKind, ApiError> {
    match kind {
        None | Some("appliance") => Ok(NodeKind::Appliance),
        Some("witness") => Ok(NodeKind::Witness),
        Some(other) => Err(ApiError::BadRequest(format!(
            "kind must be \"appliance\" or \"witness\", not {other:?}"
        ))),
    }
}

pub(super) fn user_view(u: AdminUser) -> UserView {
    UserView {
        name: u.name,
        created_at_ms: u.created_ms,
        updated_at_ms: u.updated_ms,
        updated_by: u.updated_by,
    }
}

pub(super) fn unexpected(r: Response) -> ApiError {
    ApiError::Internal(format!("unexpected state machine response {r:?}"))
}
