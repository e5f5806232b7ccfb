//! `conveyor completions <shell>` and `conveyor man`: both generated from the clap tree
//! the binary parses, so they never drift from it.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, CommandFactory};

/// Which shell the completion script is for.
#[derive(Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

/// Prints the completion script for `shell` of the command tree `C`.
pub fn completions<C: CommandFactory>(args: &CompletionsArgs) -> ExitCode {
    let mut command = C::command();
    let name = command.get_name().to_string();
    // Into memory first: the generator panics on a failed write (e.g. `| head`).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    print(&script)
}

/// Prints the manual page (roff) of `C`; `man -l -` or `man ./conveyor.1` shows it.
pub fn man<C: CommandFactory>() -> ExitCode {
    let mut page = Vec::new();
    if let Err(err) = clap_mangen::Man::new(C::command()).render(&mut page) {
        eprintln!("conveyor: cannot render the manual page: {err}");
        return ExitCode::FAILURE;
    }
    print(&page)
}

fn print(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader stopped early (`| head`): nothing to report.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("conveyor: {err}");
            ExitCode::FAILURE
        }
    }
}
