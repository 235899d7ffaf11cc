//! The `layoutfs` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = layoutfs::cli::Cli::parse();
    layoutfs::cli::init_logging(&cli.command);
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layoutfs: {e}");
            ExitCode::FAILURE
        }
    }
}
