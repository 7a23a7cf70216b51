//! The hand-maintained OpenAPI 3.0 description of the admin API, served at
//! `GET /api/v1/openapi.json`. Tests check that it lists exactly the routes
//! in [`crate::ROUTES`] and that every `$ref` resolves.

use serde_json::{json, Map, Value};

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn body(name: &str, required: bool) -> Value {
    json!({
        "required": required,
        "content": { "application/json": { "schema": schema(name) } }
    })
}

fn ok(code: &str, description: &str, name: Option<&str>) -> (String, Value) {
    let mut r = json!({ "description": description });
    if let Some(name) = name {
        r["content"] = json!({ "application/json": { "schema": schema(name) } });
    }
    (code.to_owned(), r)
}

fn err(code: &str) -> (String, Value) {
    (
        code.to_owned(),
        json!({ "$ref": format!("#/components/responses/E{code}") }),
    )
}

fn query(name: &str, ty: Value, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": ty, "description": description })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" }, "description": description })
}

fn stale() -> Value {
    query(
        "stale",
        json!({ "type": "boolean", "default": false }),
        "serve from this node's state machine without a leader check",
    )
}

fn limit(default: u64, max: u64) -> Value {
    query(
        "limit",
        json!({ "type": "integer", "minimum": 1, "maximum": max, "default": default }),
        "most items to return",
    )
}

/// One operation. `auth` adds the bearer requirement and its 401.
fn op(
    summary: &str,
    auth: bool,
    params: Vec<Value>,
    request: Option<Value>,
    responses: Vec<(String, Value)>,
) -> Value {
    let mut o = json!({ "summary": summary });
    if !params.is_empty() {
        o["parameters"] = Value::Array(params);
    }
    if let Some(b) = request {
        o["requestBody"] = b;
    }
    let mut rs: Map<String, Value> = responses.into_iter().collect();
    if auth {
        rs.insert(
            "401".into(),
            json!({ "$ref": "#/components/responses/E401" }),
        );
        o["security"] = json!([{ "bearer": [] }]);
    } else {
        o["security"] = json!([]);
    }
    o["responses"] = Value::Object(rs);
    o
}

fn obj(required: &[&str], props: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": props })
}

fn int() -> Value {
    json!({ "type": "integer", "format": "int64", "minimum": 0 })
}

fn opt_int() -> Value {
    json!({ "type": "integer", "format": "int64", "minimum": 0, "nullable": true })
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn opt_string() -> Value {
    json!({ "type": "string", "nullable": true })
}

fn boolean() -> Value {
    json!({ "type": "boolean" })
}

fn array(items: Value) -> Value {
    json!({ "type": "array", "items": items })
}

fn role() -> Value {
    json!({ "type": "string", "enum": ["primary", "backup", "witness", "standalone"] })
}

fn kind() -> Value {
    json!({ "type": "string", "enum": ["appliance", "witness"] })
}

#[allow(clippy::too_many_lines)] // one literal document
fn schemas() -> Value {
    json!({
        "Error": obj(&["error", "message"], json!({
            "error": { "type": "string", "description": "machine-readable kind: not_leader, unauthorized, forbidden, not_found, bad_request, invalid, method_not_allowed, conflict, refused, payload_too_large, unsupported_media_type, unavailable, internal" },
            "message": string(),
            "leader_api": { "type": "string", "description": "not_leader: the leader's API base URL" },
            "fields": { "type": "object", "additionalProperties": string(), "description": "invalid: field path → problem" }
        })),
        "Health": obj(&["status", "node", "node_id", "role", "leader", "term", "applied_index", "last_log_index", "committed_index"], json!({
            "status": string(), "node": string(), "node_id": int(), "role": string(),
            "leader": opt_int(), "term": int(), "applied_index": opt_int(),
            "last_log_index": opt_int(), "committed_index": opt_int(),
            "snapshot_index": opt_int(), "purged_index": opt_int(),
            "shared_ips_held": array(string()),
            "disk_free_bytes": opt_int(), "disk_reserve_bytes": opt_int()
        })),
        "RoleHealth": obj(&["ok", "role", "reason"], json!({
            "ok": boolean(), "role": role(), "reason": opt_string()
        })),
        "ConfigEntry": obj(&["key", "value", "version", "updated_by", "updated_at_ms"], json!({
            "key": string(), "value": {}, "version": int(), "updated_by": string(), "updated_at_ms": int()
        })),
        "User": obj(&["name", "created_at_ms", "updated_at_ms", "updated_by"], json!({
            "name": string(), "created_at_ms": int(), "updated_at_ms": int(), "updated_by": string()
        })),
        "UserList": obj(&["items"], json!({ "items": array(schema("User")) })),
        "UserCreate": obj(&["name", "password"], json!({
            "name": { "type": "string", "description": "1..=64 chars of A-Za-z0-9._@-" },
            "password": { "type": "string", "description": "8..=256 characters" }
        })),
        "UserPassword": obj(&["password"], json!({ "password": string() })),
        "PasswordChange": obj(&["old_password", "new_password"], json!({
            "old_password": string(), "new_password": string()
        })),
        "ApiTokenRequest": obj(&[], json!({
            "user": { "type": "string", "description": "default: the logged-in user (required with a bearer token)" }
        })),
        "ApiToken": obj(&["id", "user", "created_at_ms"], json!({
            "id": string(), "user": string(), "created_at_ms": int()
        })),
        "ApiTokenList": obj(&["items"], json!({ "items": array(schema("ApiToken")) })),
        "ApiTokenCreated": obj(&["id", "user", "token", "created_at_ms"], json!({
            "id": string(), "user": string(), "token": { "type": "string", "description": "the bearer token, shown once" }, "created_at_ms": int()
        })),
        "ConfigList": obj(&["items"], json!({ "items": array(schema("ConfigEntry")) })),
        "ConfigPut": {
            "type": "object", "additionalProperties": false, "required": ["value"],
            "properties": { "value": {}, "if_version": int() }
        },
        "SessionCreate": {
            "type": "object", "additionalProperties": false, "required": ["owner", "ttl_secs"],
            "properties": {
                "owner": { "type": "string", "minLength": 1, "maxLength": 256 },
                "data": {},
                "ttl_secs": { "type": "integer", "minimum": 1, "maximum": 31_536_000 }
            }
        },
        "Session": obj(&["id", "owner", "data", "created_at_ms", "expires_at_ms"], json!({
            "id": string(), "owner": string(), "data": {}, "created_at_ms": int(), "expires_at_ms": int()
        })),
        "SessionList": obj(&["items"], json!({ "items": array(schema("Session")) })),
        "Member": obj(&["id", "name", "kind", "voter", "peer_addr", "api_addr"], json!({
            "id": int(), "name": string(), "kind": kind(), "voter": boolean(),
            "peer_addr": string(), "api_addr": string(), "last_log_index": opt_int(),
            "committed_index": opt_int(), "applied_index": opt_int(),
            "reachable": { "type": "boolean", "nullable": true }
        })),
        "Cluster": obj(&["cluster_id", "this_node", "leader", "term", "members"], json!({
            "cluster_id": string(), "this_node": int(), "leader": opt_int(), "term": int(),
            "members": array(schema("Member"))
        })),
        "JoinTokenRequest": {
            "type": "object", "additionalProperties": false,
            "properties": {
                "ttl_secs": { "type": "integer", "minimum": 1, "maximum": 31_536_000 },
                "kind": kind()
            }
        },
        "JoinToken": obj(&["token", "expires_at_ms"], json!({ "token": string(), "expires_at_ms": int() })),
        "JoinRequest": {
            "type": "object", "additionalProperties": false,
            "required": ["token", "name", "kind", "peer_addr", "api_addr", "csr_pem"],
            "properties": {
                "token": string(), "name": string(), "kind": kind(), "peer_addr": string(),
                "api_addr": string(), "csr_pem": string(), "actor": string()
            }
        },
        "SetupRequest": {
            "type": "object", "additionalProperties": false,
            "required": ["primary", "token"],
            "properties": {
                "primary": string(), "token": string(), "reverse_address": string(),
                "witness": boolean(), "discard_data": boolean()
            }
        },
        "SetupOutcome": obj(&["node_id", "cluster_id", "role", "primary", "reverse_address", "discarded_config_keys", "discarded_sessions"], json!({
            "node_id": int(), "cluster_id": string(), "role": string(), "primary": string(),
            "reverse_address": string(), "discarded_config_keys": int(), "discarded_sessions": int()
        })),
        "JoinResponse": obj(&["node_id", "cluster_id", "cert_pem", "ca_pem", "members"], json!({
            "node_id": int(), "cluster_id": string(), "cert_pem": string(), "ca_pem": string(),
            "ca_key_pem": string(), "members": array(schema("Member"))
        })),
        "Host": obj(&["id", "name", "kind", "role", "site", "epoch", "term", "leader", "last_log_index", "committed_index", "applied_index", "lease_valid", "primary_since_ms", "shared_ips_held", "notes", "peer_addr"], json!({
            "id": int(), "name": string(), "kind": kind(), "role": role(), "site": opt_string(),
            "epoch": int(), "term": int(), "leader": opt_int(), "last_log_index": opt_int(),
            "committed_index": opt_int(), "applied_index": opt_int(), "lease_valid": boolean(),
            "primary_since_ms": opt_int(), "shared_ips_held": array(string()), "notes": array(string()),
            "peer_addr": string()
        })),
        "Peer": obj(&["id", "name", "kind", "role", "voter", "reachable", "last_contact_ms", "lag_entries", "lag_bytes", "lag_ms", "api_addr"], json!({
            "id": int(), "name": string(), "kind": kind(), "role": role(), "voter": boolean(),
            "reachable": boolean(), "last_contact_ms": opt_int(), "lag_entries": opt_int(),
            "lag_bytes": opt_int(), "lag_ms": opt_int(), "api_addr": string()
        })),
        "Status": obj(&["this_host", "peers", "topology", "settings", "epoch", "primary"], json!({
            "this_host": schema("Host"), "peers": array(schema("Peer")),
            "topology": { "type": "string", "enum": ["pair+witness", "pair", "standalone"] },
            "settings": schema("Settings"), "epoch": int(), "primary": opt_int()
        })),
        "HistoryEvent": obj(&["seq", "at_ms", "node", "node_name", "kind", "actor", "details"], json!({
            "seq": int(), "at_ms": int(), "node": int(), "node_name": opt_string(),
            "kind": string(), "actor": string(), "details": {}
        })),
        "HistoryPage": obj(&["items", "next_before", "total"], json!({
            "items": array(schema("HistoryEvent")), "next_before": opt_int(), "total": int()
        })),
        "SharedIp": {
            "type": "object", "additionalProperties": false, "required": ["address", "interfaces"],
            "properties": {
                "address": { "type": "string", "example": "192.0.2.10/24" },
                "interfaces": {
                    "type": "object", "minProperties": 1,
                    "additionalProperties": { "type": "string", "pattern": "^[A-Za-z0-9._-]{1,15}$" },
                    "description": "node name → interface name"
                }
            }
        },
        "Settings": obj(&["version", "updated_by", "updated_at_ms", "primary_timeout_ms", "auto_failover", "test_ips", "verify_interval_secs", "bandwidth_limit_bps", "backup_operations", "shared_ips"], json!({
            "version": int(), "updated_by": opt_string(), "updated_at_ms": opt_int(),
            "primary_timeout_ms": int(), "auto_failover": boolean(), "test_ips": array(string()),
            "verify_interval_secs": int(), "bandwidth_limit_bps": int(),
            "backup_operations": boolean(), "shared_ips": array(schema("SharedIp"))
        })),
        "SettingsUpdate": {
            "type": "object", "additionalProperties": false,
            "required": ["primary_timeout_ms", "auto_failover", "test_ips", "verify_interval_secs", "bandwidth_limit_bps", "backup_operations", "shared_ips"],
            "properties": {
                "primary_timeout_ms": { "type": "integer", "minimum": 300, "maximum": 60_000 },
                "auto_failover": boolean(),
                "test_ips": { "type": "array", "maxItems": 8, "items": string(), "description": "IP (ICMP) or IP:port (TCP)" },
                "verify_interval_secs": { "type": "integer", "minimum": 0, "maximum": 604_800, "description": "0 (off) or 60..=604800" },
                "bandwidth_limit_bps": { "type": "integer", "minimum": 0, "description": "0 (unlimited) or >= 65536" },
                "backup_operations": boolean(),
                "shared_ips": { "type": "array", "maxItems": 16, "items": schema("SharedIp") },
                "if_version": int()
            }
        },
        "SwapRequest": {
            "type": "object", "additionalProperties": false,
            "properties": {
                "pull_sync": { "type": "boolean", "default": false },
                "force": { "type": "boolean", "default": false }
            }
        },
        "SwapOutcome": obj(&["previous_primary", "new_primary", "epoch", "forced", "pull_sync", "duration_ms", "sync"], json!({
            "previous_primary": opt_int(), "new_primary": int(), "epoch": int(),
            "forced": boolean(), "pull_sync": boolean(), "duration_ms": int(),
            "sync": { "allOf": [schema("SyncReport")], "nullable": true }
        })),
        "SyncRequest": {
            "type": "object", "additionalProperties": false,
            "properties": { "verify": { "type": "boolean", "default": false } }
        },
        "SyncReport": obj(&["backup", "from_index", "to_index", "entries", "bytes", "snapshot", "duration_ms", "verify"], json!({
            "backup": int(), "from_index": opt_int(), "to_index": int(), "entries": int(),
            "bytes": int(), "snapshot": boolean(), "duration_ms": int(),
            "verify": { "allOf": [schema("VerifyReport")], "nullable": true }
        })),
        "VerifyReport": obj(&["index", "local_digest", "peer_digest", "matches"], json!({
            "index": int(), "local_digest": string(), "peer_digest": string(), "matches": boolean()
        })),
        "BreakRequest": { "type": "object", "additionalProperties": false, "properties": {} },
        "BreakOutcome": obj(&["former_peers", "role"], json!({
            "former_peers": array(int()), "role": role()
        })),
        "Readiness": obj(&["would_fail_over", "after_ms", "lag_entries", "reasons", "certificates_ok", "shared_ips_ok"], json!({
            "would_fail_over": boolean(), "after_ms": opt_int(), "lag_entries": opt_int(),
            "reasons": array(string()), "certificates_ok": boolean(), "shared_ips_ok": boolean()
        }))
    })
}

fn error_responses() -> Value {
    let e = |description: &str| {
        json!({
            "description": description,
            "content": { "application/json": { "schema": schema("Error") } }
        })
    };
    json!({
        "E400": e("malformed request: bad JSON, unknown or missing field, bad parameter (bad_request), or settings failing validation (invalid, with fields)"),
        "E401": e("missing or wrong bearer token"),
        "E403": e("forbidden (invalid join token…)"),
        "E404": e("no such key, session or route"),
        "E409": e("precondition failed (conflict) or action refused (refused)"),
        "E421": e("not the leader: Location points at the leader"),
        "E503": e("unavailable, or not the leader and none known (Retry-After)"),
        "E507": e("the node's disk is below its free-space reserve (insufficient_storage); nothing changed")
    })
}

/// The OpenAPI 3.0 document describing every route of [`crate::router`].
#[allow(clippy::too_many_lines)] // one literal document
pub fn openapi() -> Value {
    let applied = "X-Tandem-Applied-Index / X-Tandem-Stale headers describe the read";
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Tandem admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Status, settings and actions of a Tandem relationship (primary, backup, witness). Writes accept an X-Tandem-Actor header naming who acts (default \"api\")."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas(),
            "responses": error_responses()
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/health": {
                "get": op("Liveness and Raft role of this node", false, vec![], None,
                    vec![ok("200", "alive", Some("Health")), err("503")])
            },
            "/health/primary": {
                "get": op("For load balancers: 200 when this node is the serving primary, else 503", false, vec![], None,
                    vec![ok("200", "primary", Some("RoleHealth")), ok("503", "not primary", Some("RoleHealth"))])
            },
            "/health/backup": {
                "get": op("For load balancers: 200 when this node is a backup (within max_lag entries), else 503", false,
                    vec![query("max_lag", int(), "most committed entries the backup may lack")], None,
                    vec![ok("200", "backup in sync", Some("RoleHealth")), ok("503", "not a backup, or lagging", Some("RoleHealth")), err("400")])
            },
            "/api/v1/openapi.json": {
                "get": op("This document", false, vec![], None,
                    vec![ok("200", "OpenAPI 3.0 document", None)])
            },
            "/api/v1/join": {
                "post": op("Admit a node with a join token (the token is the credential)", false, vec![],
                    Some(body("JoinRequest", true)),
                    vec![ok("200", "admitted", Some("JoinResponse")), err("400"), err("403"), err("421"), err("503")])
            },
            "/api/v1/config": {
                "get": op("List configuration entries in key order", true,
                    vec![query("prefix", string(), "only keys starting with this"), limit(100, 1000), stale()], None,
                    vec![ok("200", applied, Some("ConfigList")), err("400"), err("421"), err("503")])
            },
            "/api/v1/config/{key}": {
                "parameters": [path_param("key", "1..=256 chars of A-Za-z0-9._:/- (may contain /)")],
                "get": op("One configuration entry", true, vec![stale()], None,
                    vec![ok("200", applied, Some("ConfigEntry")), err("400"), err("404"), err("421"), err("503")]),
                "put": op("Create or replace an entry", true, vec![], Some(body("ConfigPut", true)),
                    vec![ok("200", "written", Some("ConfigEntry")), err("400"), err("409"), err("421"), err("503"), err("507")]),
                "delete": op("Remove an entry", true, vec![], None,
                    vec![ok("204", "removed", None), err("400"), err("404"), err("421"), err("503"), err("507")])
            },
            "/api/v1/sessions": {
                "get": op("List live sessions", true, vec![limit(100, 1000), stale()], None,
                    vec![ok("200", applied, Some("SessionList")), err("400"), err("421"), err("503")]),
                "post": op("Create a session", true, vec![], Some(body("SessionCreate", true)),
                    vec![ok("201", "created", Some("Session")), err("400"), err("421"), err("503"), err("507")])
            },
            "/api/v1/sessions/{id}": {
                "parameters": [path_param("id", "session id")],
                "get": op("One session", true, vec![stale()], None,
                    vec![ok("200", applied, Some("Session")), err("400"), err("404"), err("421"), err("503")]),
                "delete": op("Remove a session", true, vec![], None,
                    vec![ok("204", "removed", None), err("400"), err("404"), err("421"), err("503"), err("507")])
            },
            "/api/v1/cluster": {
                "get": op("Membership and replication progress", true, vec![stale()], None,
                    vec![ok("200", applied, Some("Cluster")), err("400"), err("421"), err("503")])
            },
            "/api/v1/join-tokens": {
                "post": op("Mint a one-time join token", true, vec![], Some(body("JoinTokenRequest", true)),
                    vec![ok("201", "created", Some("JoinToken")), err("400"), err("421"), err("503")])
            },
            "/api/v1/status": {
                "get": op("This host, its peers, topology, settings, epoch and primary (this node's view)", true, vec![], None,
                    vec![ok("200", "status", Some("Status")), err("503")])
            },
            "/api/v1/history": {
                "get": op("Status history, newest first", true,
                    vec![
                        query("before", int(), "only events with seq below this (next_before of the previous page)"),
                        limit(50, 500),
                        query("kind", string(), "only events of this kind")
                    ], None,
                    vec![ok("200", "one page", Some("HistoryPage")), err("400"), err("503")])
            },
            "/api/v1/settings": {
                "get": op("The replicated relationship settings", true, vec![], None,
                    vec![ok("200", "settings", Some("Settings")), err("503")]),
                "put": op("Replace the settings (every field required)", true, vec![], Some(body("SettingsUpdate", true)),
                    vec![ok("200", "written", Some("Settings")), err("400"), err("409"), err("421"), err("503")])
            },
            "/api/v1/relationship/swap": {
                "post": op("Swap primary and backup (planned unless force; pull_sync catches up first)", true, vec![],
                    Some(body("SwapRequest", false)),
                    vec![ok("200", "swapped", Some("SwapOutcome")), err("400"), err("409"), err("421"), err("503")])
            },
            "/api/v1/relationship/sync": {
                "post": op("Bring the backup up to date now, optionally verifying state digests", true, vec![],
                    Some(body("SyncRequest", false)),
                    vec![ok("200", "synced", Some("SyncReport")), err("400"), err("409"), err("421"), err("503")])
            },
            "/api/v1/relationship/break": {
                "post": op("End the relationship: each side becomes standalone", true, vec![],
                    Some(body("BreakRequest", false)),
                    vec![ok("200", "broken", Some("BreakOutcome")), err("400"), err("409"), err("503")])
            },
            "/api/v1/relationship/rejoin": {
                "post": op("Come back as the backup after a forced promotion or a break: discard this copy and resync", true, vec![],
                    Some(body("BreakRequest", false)),
                    vec![ok("200", "rejoined", Some("BreakOutcome")), err("400"), err("409"), err("503")])
            },
            "/api/v1/relationship/remove-witness": {
                "post": op("Remove the witness from a live pair (pair + witness becomes pair only)", true, vec![],
                    Some(body("BreakRequest", false)),
                    vec![ok("200", "removed", Some("BreakOutcome")), err("400"), err("409"), err("503")])
            },
            "/api/v1/relationship/setup": {
                "post": op("Set up relationship from a standalone node: join the primary's cluster with a join token made there, as backup or witness (this node's own data is discarded, then it restarts with its new identity)", true, vec![],
                    Some(body("SetupRequest", true)),
                    vec![ok("200", "joined; restarting", Some("SetupOutcome")), err("400"), err("409"), err("503")])
            },
            "/api/v1/readiness": {
                "get": op("Would the backup take over if the primary died now, after how long, losing what?", true, vec![], None,
                    vec![ok("200", "readiness", Some("Readiness")), err("503")])
            },
            "/api/v1/users": {
                "get": op("Admin users of the web UI", true, vec![], None,
                    vec![ok("200", "users", Some("UserList")), err("503")]),
                "post": op("Add an admin user", true, vec![], Some(body("UserCreate", true)),
                    vec![ok("201", "created", Some("User")), err("400"), err("409"), err("421"), err("503")])
            },
            "/api/v1/users/{name}": {
                "parameters": [path_param("name", "user name")],
                "put": op("Set a user's password", true, vec![], Some(body("UserPassword", true)),
                    vec![ok("200", "changed", Some("User")), err("400"), err("404"), err("421"), err("503")]),
                "delete": op("Remove a user (not the last one) and its API tokens", true, vec![], None,
                    vec![ok("204", "removed", None), err("400"), err("404"), err("409"), err("421"), err("503")])
            },
            "/api/v1/account/password": {
                "post": op("Change the logged-in user's own password (login session only)", true, vec![], Some(body("PasswordChange", true)),
                    vec![ok("204", "changed", None), err("400"), err("403"), err("421"), err("503")])
            },
            "/api/v1/api-tokens": {
                "get": op("Per-user API tokens (without secrets)", true, vec![], None,
                    vec![ok("200", "tokens", Some("ApiTokenList")), err("503")]),
                "post": op("Create a per-user API token (bearer credential); the token is shown once", true, vec![], Some(body("ApiTokenRequest", false)),
                    vec![ok("201", "created", Some("ApiTokenCreated")), err("400"), err("404"), err("421"), err("503")])
            },
            "/api/v1/api-tokens/{id}": {
                "parameters": [path_param("id", "token id")],
                "delete": op("Revoke a per-user API token", true, vec![], None,
                    vec![ok("204", "revoked", None), err("400"), err("404"), err("421"), err("503")])
            }
        }
    })
}
