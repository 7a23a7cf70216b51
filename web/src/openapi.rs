//! The parts of the OpenAPI document that belong to no one handler: one
//! error response per status that [`crate::ApiError`] maps to, each with the
//! [`ErrorBody`] schema, and the `bearer` security scheme.
//!
//! The document itself is derived in `routes` ([`crate::openapi()`]) from
//! the handlers' `#[utoipa::path]` attributes, which name these responses,
//! and from the view types' `ToSchema`. This module must not know the
//! routes.
//!
//! The response types are never built: each only carries a status, a
//! description (its doc comment), headers and the body type to the
//! `responses(...)` of `#[utoipa::path]`.

#![expect(
    dead_code,
    reason = "the response types are described to utoipa, never built or read"
)]

use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify};

use crate::error::ErrorBody;

/// A malformed request (`bad_request`: bad JSON, an unknown or missing
/// field, a bad parameter or header), or input failing validation
/// (`invalid`, with `fields` naming each bad field and what is wrong).
#[derive(IntoResponses)]
#[response(status = 400)]
pub(crate) struct E400(ErrorBody);

/// No valid bearer token and no login session (`unauthorized`).
#[derive(IntoResponses)]
#[response(
    status = 401,
    headers(("WWW-Authenticate" = String, description = "`Bearer`"))
)]
pub(crate) struct E401(ErrorBody);

/// Not allowed (`forbidden`): a login-session request that changes
/// something without the session's `X-CSRF-Token`, a wrong join token or
/// current password.
#[derive(IntoResponses)]
#[response(status = 403)]
pub(crate) struct E403(ErrorBody);

/// No such item (`not_found`).
#[derive(IntoResponses)]
#[response(status = 404)]
pub(crate) struct E404(ErrorBody);

/// This path does not serve the method used (`method_not_allowed`).
#[derive(IntoResponses)]
#[response(
    status = 405,
    headers(("Allow" = String, description = "the methods this path serves"))
)]
pub(crate) struct E405(ErrorBody);

/// A precondition such as `if_version` does not hold (`conflict`), or the
/// node declines the action in its current situation (`refused`); nothing
/// was changed.
#[derive(IntoResponses)]
#[response(status = 409)]
pub(crate) struct E409(ErrorBody);

/// The request body is larger than 1 MiB (`payload_too_large`).
#[derive(IntoResponses)]
#[response(status = 413)]
pub(crate) struct E413(ErrorBody);

/// The request body is not `application/json` (`unsupported_media_type`).
#[derive(IntoResponses)]
#[response(status = 415)]
pub(crate) struct E415(ErrorBody);

/// This node is not the leader (`not_leader`, with `leader_api`): send the
/// request to `Location`.
#[derive(IntoResponses)]
#[response(
    status = 421,
    headers(("Location" = String, description = "the same path and query on the leader"))
)]
pub(crate) struct E421(ErrorBody);

/// An unexpected failure (`internal`); the detail is in the node's log.
#[derive(IntoResponses)]
#[response(status = 500)]
pub(crate) struct E500(ErrorBody);

/// Temporarily unable to serve (`unavailable`), or not the leader with no
/// leader known (`not_leader`): retry later.
#[derive(IntoResponses)]
#[response(
    status = 503,
    headers(("Retry-After" = u64, description = "seconds to wait before retrying"))
)]
pub(crate) struct E503(ErrorBody);

/// Too many failed attempts from this client (`too_many_requests`):
/// retry after the time given.
#[derive(IntoResponses)]
#[response(
    status = 429,
    headers(("Retry-After" = u64, description = "seconds to wait before retrying"))
)]
pub(crate) struct E429(ErrorBody);

/// The node's disk is below its free-space reserve
/// (`insufficient_storage`); nothing was changed.
#[derive(IntoResponses)]
#[response(status = 507)]
pub(crate) struct E507(ErrorBody);

/// Adds the `bearer` security scheme that the authenticated operations
/// require.
pub(crate) struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "The admin token or a per-user API token. The web UI's login session \
                 cookie is accepted instead (with `X-CSRF-Token` on changes).",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Replaces every copy of a component schema found inside another component
/// schema with a `$ref` to it.
///
/// utoipa composes the type parameter of a generic schema inline:
/// `ListView<UserView>` would carry a whole copy of `UserView`, and a view
/// that is only listed (`ApiTokenView`) would be a named schema nothing
/// refers to.
pub(crate) fn ref_inlined_schemas(doc: &mut Value) {
    let Some(Value::Object(schemas)) = doc.pointer_mut("/components/schemas") else {
        return;
    };
    let named: Vec<(String, Value)> = schemas
        .iter()
        .map(|(name, schema)| (name.clone(), schema.clone()))
        .collect();
    for schema in schemas.values_mut() {
        for child in children(schema) {
            replace_copies(child, &named);
        }
    }
}

fn replace_copies(value: &mut Value, named: &[(String, Value)]) {
    if let Some((name, _)) = named.iter().find(|(_, schema)| schema == value) {
        *value = json!({ "$ref": format!("#/components/schemas/{name}") });
        return;
    }
    for child in children(value) {
        replace_copies(child, named);
    }
}

fn children(value: &mut Value) -> Vec<&mut Value> {
    match value {
        Value::Object(map) => map.values_mut().collect(),
        Value::Array(items) => items.iter_mut().collect(),
        _ => Vec::new(),
    }
}
