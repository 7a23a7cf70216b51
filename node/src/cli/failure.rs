//! How a command fails: the exit codes scripts rely on and the one-line
//! reason.

use crate::client::ClientError;

/// Exit code: usage error.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: the cluster refused the request.
pub const EXIT_REFUSED: i32 = 3;
/// Exit code: the node could not be reached.
pub const EXIT_UNREACHABLE: i32 = 4;

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// Process exit code.
    pub code: i32,
    /// The one-line reason.
    pub error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        let code = match error.downcast_ref::<ClientError>() {
            Some(ClientError::Transport { .. }) => EXIT_UNREACHABLE,
            Some(ClientError::Api { status, .. }) if status.is_client_error() => EXIT_REFUSED,
            _ => 1,
        };
        Self { code, error }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        anyhow::Error::from(e).into()
    }
}

pub(crate) fn usage(message: String) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error: anyhow::anyhow!(message),
    }
}
