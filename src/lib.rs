//! wal-e: continuous archiving for PostgreSQL, a faithful Rust port of WAL-E.
//!
//! The binary is a thin shell around [`run`]; everything else lives in the
//! library so integration tests can drive it.

pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod durable;
pub mod error;
pub mod layout;
pub mod logging;
pub mod pipeline;
pub mod postgres;
pub mod progress;
pub mod storage;
pub mod tar_extract;
pub mod tar_partition;
pub mod timeline;

use std::io::{self, Write};

use bytes::Bytes;
use clap::Parser;
use futures_util::stream::BoxStream;

use crate::cli::{Cli, Command};
use crate::config::{Env, ProcessEnv, Settings};
use crate::error::{CommandError, UserError, exit};

/// The byte streams that flow through the pipeline stages and the stores.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Runs the command line of this process; returns the exit code.
///
/// As PostgreSQL's restore_command, `wal-fetch` may exit 1 only when the
/// archive says the file does not exist; every other failure, including bad
/// arguments, bad settings and panics, exits 126 so that recovery stops
/// instead of ending early.
pub fn run() -> u8 {
    let restore_command = std::env::args().any(|a| a == "wal-fetch");
    let failure_code = if restore_command {
        exit::RESTORE_UNAVAILABLE
    } else {
        exit::UNEXPECTED
    };
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(i32::from(failure_code));
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                failure_code
            } else {
                exit::OK
            };
        }
    };
    let env = ProcessEnv;
    let log_settings = logging::LogSettings::from_env(&env, cli.global.terse);
    logging::init(&log_settings, env.var("WALE_LOG_DESTINATION").is_some());

    let Some(command) = cli.command else {
        return no_command(&cli.global, &env);
    };
    if let Command::Version = command {
        return print_stdout(&format!("{}\n", env!("CARGO_PKG_VERSION")));
    }
    let restoring = matches!(command, Command::WalFetch(_));
    let settings = match Settings::from_args(&cli.global, &env) {
        Ok(settings) => settings,
        Err(err) => return restore_exit(restoring, report(&CommandError::User(err)), false),
    };
    if !matches!(
        command,
        Command::WalPush(_) | Command::WalFetch(_) | Command::WalPrefetch(_)
    ) {
        tracing::info!(
            target: "wal_e.main",
            detail = %format!("The subcommand is \"{}\".", command.log_name()),
            "starting WAL-E"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            return restore_exit(restoring, report(&CommandError::unexpected(err)), false);
        }
    };
    let result = runtime.block_on(commands::dispatch(command, settings, cli.global));
    // Dropping the runtime would wait for every blocking task, and one stuck
    // in the kernel on a hung NFS share never returns: wal-push's time bound
    // would not bound the process. What is still running after this grace
    // period is abandoned with the process.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match result {
        Ok(()) => exit::OK,
        Err(err) => restore_exit(restoring, report(&err), err.is_not_found()),
    }
}

/// How long the runtime waits at exit for blocking tasks still running.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// For wal-fetch, anything but "not found" becomes 126 (see [`run`]).
fn restore_exit(restoring: bool, code: u8, not_found: bool) -> u8 {
    if restoring && code != exit::OK && !not_found {
        exit::RESTORE_UNAVAILABLE
    } else {
        code
    }
}

/// WAL-E exits 127 when no subcommand is given but a prefix is configured,
/// and complains about the missing prefix otherwise.
fn no_command(global: &cli::GlobalArgs, env: &dyn Env) -> u8 {
    if config::has_prefix(global, env) {
        use clap::CommandFactory;
        let _ = writeln!(io::stderr(), "{}", Cli::command().render_usage());
        let _ = writeln!(io::stderr(), "wal-e: error: no subcommand given");
        return exit::NO_COMMAND;
    }
    match Settings::from_args(global, env) {
        Err(err) => report(&CommandError::User(err)),
        Ok(_) => exit::NO_COMMAND,
    }
}

fn print_stdout(text: &str) -> u8 {
    match io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => exit::OK,
        Err(_) => exit::UNEXPECTED,
    }
}

/// Logs a command's failure as WAL-E's `main()` does and picks the exit code.
///
/// An authoritative "no such file" is an answer, not a failure: a standby
/// asks for the next WAL file every few seconds. The command logged it at
/// INFO where it knew the details, as WAL-E did; nothing is added here.
fn report(err: &CommandError) -> u8 {
    match err {
        CommandError::User(UserError {
            not_found: true, ..
        }) => {}
        CommandError::User(UserError {
            msg, detail, hint, ..
        }) => {
            tracing::error!(
                target: "wal_e.main",
                detail = detail.as_deref(),
                hint = hint.as_deref(),
                "{msg}"
            );
        }
        CommandError::Unexpected(source) => {
            let mut chain = source.to_string();
            let mut cur = source.source();
            while let Some(cause) = cur {
                chain.push_str(&format!(": {cause}"));
                cur = cause.source();
            }
            tracing::error!(
                target: "wal_e.main",
                critical = true,
                detail = %chain,
                "An unprocessed exception has avoided all error handling"
            );
        }
    }
    err.exit_code()
}
