//! Errors as WAL-E reports them (MSG / DETAIL / HINT) and the process exit codes.
//!
//! Every exit code the binary can return is defined here and nowhere else.

use std::fmt;

/// Process exit codes (WAL-E's `main()` in `wal_e/cmd.py`, plus our additions).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A user-facing failure: bad configuration, nothing found, a failed transfer.
    /// `wal-fetch` returns it only when the store says the segment does not exist.
    pub const USER: u8 = 1;
    /// An internal error WAL-E never anticipated, and command-line usage errors.
    pub const UNEXPECTED: u8 = 2;
    /// `wal-fetch` could not reach the store after retrying. PostgreSQL treats
    /// an exit status above 125 as fatal and stops recovery, instead of taking
    /// "not found" as the end of the archive and promoting too early.
    pub const RESTORE_UNAVAILABLE: u8 = 126;
    /// No subcommand was given (WAL-E's argparse did not require one).
    pub const NO_COMMAND: u8 = 127;
}

/// An error meant for the operator: a message plus optional detail and hint,
/// rendered in WAL-E's `MSG:` / `DETAIL:` / `HINT:` style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserError {
    pub msg: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub exit_code: u8,
    /// The store said the requested object does not exist: the one failure
    /// wal-fetch may report to PostgreSQL as "no such file" (exit 1).
    pub not_found: bool,
}

impl UserError {
    pub fn new(msg: impl Into<String>) -> Self {
        UserError {
            msg: msg.into(),
            detail: None,
            hint: None,
            exit_code: exit::USER,
            not_found: false,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn exit_code(mut self, code: u8) -> Self {
        self.exit_code = code;
        self
    }

    /// Marks an authoritative "does not exist" answer from the store.
    pub fn not_found(mut self) -> Self {
        self.not_found = true;
        self.exit_code = exit::USER;
        self
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MSG: {}", self.msg)?;
        if let Some(detail) = &self.detail {
            write!(f, "\nDETAIL: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nHINT: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for UserError {}

/// The result type of commands: anything that is not a [`UserError`] is
/// reported as unexpected (exit 2), like WAL-E's "unprocessed exception".
pub type CmdResult<T = ()> = Result<T, CommandError>;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    User(#[from] UserError),
    #[error(transparent)]
    Unexpected(#[from] Box<dyn std::error::Error + Send + Sync>),
}

impl CommandError {
    pub fn unexpected(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        CommandError::Unexpected(err.into())
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::User(e) => e.exit_code,
            CommandError::Unexpected(_) => exit::UNEXPECTED,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, CommandError::User(e) if e.not_found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_msg_detail_hint_in_order() {
        let e = UserError::new("no storage prefix defined")
            .detail("nothing set")
            .hint("set WALE_FILE_PREFIX");
        assert_eq!(
            e.to_string(),
            "MSG: no storage prefix defined\nDETAIL: nothing set\nHINT: set WALE_FILE_PREFIX"
        );
        assert_eq!(CommandError::from(e).exit_code(), exit::USER);
    }

    #[test]
    fn unexpected_errors_exit_2() {
        let e = CommandError::unexpected("boom");
        assert_eq!(e.exit_code(), exit::UNEXPECTED);
    }
}
