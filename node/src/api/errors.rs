//! Node errors in the API's terms: one place maps each [`NodeError`] to
//! the [`ApiError`] (and so the status) it answers with.

use tandem_web::ApiError;

use crate::node::NodeError;

/// Maps an action's error: refusals are 409 with the reason.
pub(super) fn action(e: NodeError) -> ApiError {
    match e {
        NodeError::Refused(m) => ApiError::Refused(m),
        other => api(other),
    }
}

/// Maps a node error to the API error with the same meaning.
pub(super) fn api(e: NodeError) -> ApiError {
    match e {
        NodeError::NotLeader { leader_api } => ApiError::NotLeader { leader_api },
        NodeError::Refused(m) => ApiError::Forbidden(m),
        NodeError::BadRequest(m) => ApiError::BadRequest(m),
        NodeError::Unavailable(m) => ApiError::Unavailable(m),
        NodeError::Internal(m) => ApiError::Internal(m),
        NodeError::InsufficientStorage(m) => ApiError::InsufficientStorage(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `NodeError` variant and the status it answers with, through a
    /// data call (`api`) and through an action (`action`: swap, sync,
    /// break…, where a refusal is a conflict with the situation, not a
    /// denial of the caller). A new variant fails to compile here until it
    /// is given its row.
    #[test]
    fn each_node_error_has_one_status_per_kind_of_call() {
        let rows: Vec<(NodeError, u16, u16)> = vec![
            (NodeError::NotLeader { leader_api: None }, 503, 503),
            (
                NodeError::NotLeader {
                    leader_api: Some("https://b:8443".into()),
                },
                421,
                421,
            ),
            (NodeError::Refused("no".into()), 403, 409),
            (NodeError::BadRequest("bad".into()), 400, 400),
            (NodeError::Unavailable("later".into()), 503, 503),
            (NodeError::Internal("disk".into()), 500, 500),
            (NodeError::InsufficientStorage("full".into()), 507, 507),
        ];
        for (e, data, act) in rows {
            // Exhaustive on purpose: a new variant must be added above.
            match &e {
                NodeError::NotLeader { .. }
                | NodeError::Refused(_)
                | NodeError::BadRequest(_)
                | NodeError::Unavailable(_)
                | NodeError::Internal(_)
                | NodeError::InsufficientStorage(_) => {}
            }
            let what = format!("{e:?}");
            assert_eq!(api(e.clone()).status().as_u16(), data, "data call: {what}");
            assert_eq!(action(e).status().as_u16(), act, "action: {what}");
        }
    }
}
