//! The `tcpstates` command: parse the command line, run, map the outcome to
//! a message and an exit code.

use std::io::Write;
use std::process::ExitCode;

use tcpstates::cli::{self, Parsed};

fn main() -> ExitCode {
    match cli::parse(std::env::args_os()) {
        Parsed::Exit { code: 0, message } => {
            // A closed stdout (`tcpstates -h | head -1`) is not an error.
            let _ = std::io::stdout().write_all(message.as_bytes());
            ExitCode::SUCCESS
        }
        Parsed::Exit { code, message } => {
            let _ = std::io::stderr().write_all(message.as_bytes());
            ExitCode::from(code)
        }
        Parsed::Run(config) => match tcpstates::session::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                let message = format!("{err:#}").replace('\n', " ");
                let _ = writeln!(std::io::stderr(), "tcpstates: {message}");
                ExitCode::FAILURE
            }
        },
    }
}
