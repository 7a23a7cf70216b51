//! Node errors in the API's terms: one place maps each [`NodeError`] (and
//! each refusal of the state machine) to the [`ApiError`], and so the
//! status, it answers with. The tests below hold the whole table.

use tandem_web::ApiError;

use crate::errors::{JoinDenial, NodeError, StateRefusal};

/// Maps a node error to the API error with the same meaning.
pub(super) fn api(e: NodeError) -> ApiError {
    let message = e.message();
    match e {
        NodeError::NotLeader { leader_api } => ApiError::NotLeader { leader_api },
        NodeError::Refused(_) | NodeError::PeerUnreachable { .. } => ApiError::Refused(message),
        NodeError::Rejected(r) => rejected(r),
        NodeError::JoinDenied(JoinDenial::SameSite { .. } | JoinDenial::TopologyFull { .. }) => {
            ApiError::Conflict(message)
        }
        NodeError::JoinDenied(_) => ApiError::Forbidden(message),
        NodeError::BadRequest(m) => ApiError::BadRequest(m),
        NodeError::NotFound(m) => ApiError::NotFound(m),
        NodeError::Unavailable(m) => ApiError::Unavailable(m),
        NodeError::Internal(m) => ApiError::Internal(m),
        NodeError::InsufficientStorage(m) => ApiError::InsufficientStorage(m),
    }
}

/// Maps a refusal of the replicated state machine: input it does not
/// accept is a bad request, a missing user is not found, a join token that
/// does not fit is forbidden, a state that does not allow the change is a
/// conflict.
pub(super) fn rejected(r: StateRefusal) -> ApiError {
    let message = r.to_string();
    match r {
        StateRefusal::TooLarge { .. }
        | StateRefusal::TooLong { .. }
        | StateRefusal::NotJson
        | StateRefusal::NotJsonObject { .. }
        | StateRefusal::UserName { .. }
        | StateRefusal::PasswordHash
        | StateRefusal::NestedMulti => ApiError::BadRequest(message),
        StateRefusal::NoUser { .. } => ApiError::NotFound(message),
        StateRefusal::UnknownToken
        | StateRefusal::TokenMismatch
        | StateRefusal::TokenUsed
        | StateRefusal::TokenExpired
        | StateRefusal::TokenKind { .. }
        | StateRefusal::TokenForOtherNode { .. } => ApiError::Forbidden(message),
        StateRefusal::LastAdmin => ApiError::Refused(message),
        StateRefusal::EpochMismatch { .. }
        | StateRefusal::EpochOverflow
        | StateRefusal::AlreadyBootstrapped
        | StateRefusal::VersionConflict { .. }
        | StateRefusal::TokenIdExists => ApiError::Conflict(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::{Action, Peer, Refusal, Remedy};
    use tandem_storage::Field;

    /// Every `NodeError` variant and the status and kind it answers with. A
    /// new variant fails to compile here until it is given its row.
    #[test]
    fn each_node_error_has_one_status() {
        let rows: Vec<(NodeError, u16, &str)> = vec![
            (NodeError::NotLeader { leader_api: None }, 503, "not_leader"),
            (
                NodeError::NotLeader {
                    leader_api: Some("https://b:8443".into()),
                },
                421,
                "not_leader",
            ),
            (
                NodeError::Refused(Refusal::NoRelationship(Action::Swap)),
                409,
                "refused",
            ),
            (
                NodeError::PeerUnreachable {
                    peer: Peer::Primary(1),
                    reason: None,
                    remedy: Remedy::ForcedPromotion,
                },
                409,
                "refused",
            ),
            (
                NodeError::Rejected(StateRefusal::VersionConflict {
                    expected: 1,
                    current: 2,
                }),
                409,
                "conflict",
            ),
            (
                NodeError::JoinDenied(JoinDenial::OtherCluster),
                403,
                "forbidden",
            ),
            (
                NodeError::JoinDenied(JoinDenial::AddressTaken {
                    address: "10.0.0.1".into(),
                    name: "a".into(),
                }),
                403,
                "forbidden",
            ),
            (
                NodeError::JoinDenied(JoinDenial::TopologyFull {
                    kind: tandem_storage::NodeKind::Witness,
                }),
                409,
                "conflict",
            ),
            (
                NodeError::JoinDenied(JoinDenial::SameSite {
                    name: "a".into(),
                    shared: "site \"x\"".into(),
                }),
                409,
                "conflict",
            ),
            (NodeError::BadRequest("bad".into()), 400, "bad_request"),
            (NodeError::NotFound("none".into()), 404, "not_found"),
            (NodeError::Unavailable("later".into()), 503, "unavailable"),
            (NodeError::Internal("disk".into()), 500, "internal"),
            (
                NodeError::InsufficientStorage("full".into()),
                507,
                "insufficient_storage",
            ),
        ];
        for (e, status, kind) in rows {
            // Exhaustive on purpose: a new variant must be added above.
            match &e {
                NodeError::NotLeader { .. }
                | NodeError::Refused(_)
                | NodeError::PeerUnreachable { .. }
                | NodeError::Rejected(_)
                | NodeError::JoinDenied(_)
                | NodeError::BadRequest(_)
                | NodeError::NotFound(_)
                | NodeError::Unavailable(_)
                | NodeError::Internal(_)
                | NodeError::InsufficientStorage(_) => {}
            }
            let what = format!("{e:?}");
            let a = api(e);
            assert_eq!(a.status().as_u16(), status, "{what}");
            assert_eq!(a.kind(), kind, "{what}");
        }
    }

    /// Every refusal of the state machine and its status.
    #[test]
    fn each_state_refusal_has_one_status() {
        let limit = 1;
        let rows: Vec<(StateRefusal, u16)> = vec![
            (
                StateRefusal::TooLarge {
                    field: Field::Value,
                    limit,
                },
                400,
            ),
            (
                StateRefusal::TooLong {
                    field: Field::KeyOrId,
                    limit,
                },
                400,
            ),
            (StateRefusal::NotJson, 400),
            (
                StateRefusal::NotJsonObject {
                    field: Field::Settings,
                },
                400,
            ),
            (StateRefusal::UserName { max: 64 }, 400),
            (StateRefusal::PasswordHash, 400),
            (StateRefusal::NestedMulti, 400),
            (StateRefusal::NoUser { user: "x".into() }, 404),
            (StateRefusal::UnknownToken, 403),
            (StateRefusal::TokenMismatch, 403),
            (StateRefusal::TokenUsed, 403),
            (StateRefusal::TokenExpired, 403),
            (
                StateRefusal::TokenKind {
                    token: tandem_storage::NodeKind::Witness,
                    asked: tandem_storage::NodeKind::Appliance,
                },
                403,
            ),
            (StateRefusal::LastAdmin, 409),
            (
                StateRefusal::EpochMismatch {
                    current: 2,
                    expected: 1,
                },
                409,
            ),
            (StateRefusal::EpochOverflow, 409),
            (StateRefusal::AlreadyBootstrapped, 409),
            (
                StateRefusal::VersionConflict {
                    expected: 1,
                    current: 2,
                },
                409,
            ),
            (StateRefusal::TokenIdExists, 409),
        ];
        for (r, status) in rows {
            let what = r.to_string();
            assert_eq!(rejected(r).status().as_u16(), status, "{what}");
        }
    }

    /// The message an API caller reads is the refusal's text, without the
    /// kind the JSON already carries.
    #[test]
    fn messages_carry_no_kind_prefix() {
        let e = NodeError::PeerUnreachable {
            peer: Peer::Node(2),
            reason: Some("connection refused".into()),
            remedy: Remedy::UseForce,
        };
        assert_eq!(
            e.message(),
            "node 2 cannot be contacted (connection refused); a planned swap needs it (use force)"
        );
        assert_eq!(
            NodeError::Refused(Refusal::NoBackup).message(),
            "there is no backup appliance"
        );
    }
}
