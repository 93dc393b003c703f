//! One module per command; [`dispatch`] maps the parsed command line to them.

use crate::cli::Command;
use crate::config::Settings;
use crate::error::{CmdResult, UserError};
use crate::storage;

pub async fn dispatch(command: Command, settings: &Settings) -> CmdResult {
    // Every store-using command opens the store first, so a bad prefix is
    // reported the same way whatever the command.
    let _store = storage::open(settings)?;
    match command {
        Command::Version => Ok(()),
        other => Err(not_available(&other.log_name()).into()),
    }
}

/// Commands whose implementation has not landed yet parse their arguments and
/// then say so, instead of silently doing nothing.
fn not_available(name: &str) -> UserError {
    UserError::new(format!(
        "{name} is not available in this version of wal-e yet"
    ))
    .detail("The command line was accepted, but this command has not been implemented.")
    .hint("See README.rst for the commands this version supports.")
}
