//! The roles a node can have. Plain data.

/// A node's role in the relationship.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serves users and accepts writes.
    Primary,
    /// Holds a copy, ready to take over.
    Backup,
    /// Votes and stores the log; never primary.
    Witness,
    /// Alone: no relationship.
    Standalone,
}

impl Role {
    /// The name shown everywhere.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::Witness => "witness",
            Role::Standalone => "standalone",
        }
    }
}

impl From<Role> for tandem_web::RoleName {
    fn from(r: Role) -> Self {
        match r {
            Role::Primary => Self::Primary,
            Role::Backup => Self::Backup,
            Role::Witness => Self::Witness,
            Role::Standalone => Self::Standalone,
        }
    }
}
