//! `conveyor`: the daemon and its tools.

mod dlq_cli;
mod dlq_jobs;
mod listen_cli;
mod migrations;
mod otel_env;
mod serve;
mod settings;
mod status;
mod system;
mod telemetry;
mod user_cli;
// Packaging: what the binary says about itself.
mod build_info;
mod docs_cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

// glibc's allocator spent about a third of the processing path's CPU (malloc, free,
// consolidation, and the kernel zeroing pages it had trimmed and took back): events are
// many small, short-lived allocations across threads, which mimalloc's per-thread pages suit.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration error (sysexits.h EX_USAGE).
const EX_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "conveyor", version = build_info::VERSION_LINE, about = "Actor-based event processing engine")]
struct Cli {
    /// Configuration file (default: ./config.toml when present).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Dead letters: list, show, replay, purge (through the running daemon).
    Dlq(dlq_cli::DlqArgs),
    /// Accounts: create users and admins directly in the store.
    User {
        #[command(subcommand)]
        command: user_cli::UserCommand,
    },
    /// Webhook tools.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// Development tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs_cli::CompletionsArgs),
    /// Print the manual page (roff) to stdout.
    Man,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (secrets redacted); exit 64 naming a bad key.
    Check,
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Receive deliveries on a local port, print each one and check its signature.
    Listen(listen_cli::ListenArgs),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a JWT signed with the configured key.
    Mint {
        #[arg(long)]
        sub: String,
        /// Comma-separated roles, e.g. device,user.
        #[arg(long, value_delimiter = ',', default_value = "user")]
        roles: Vec<String>,
        /// Lifetime: 90s, 15m, 1h, 10d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
}

pub(crate) fn parse_ttl(text: &str) -> Result<Duration, String> {
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{text:?}: expected a number with s, m, h or d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{text:?}: unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Generated from the command tree alone: no configuration needed.
    match &cli.command {
        Some(Command::Completions(args)) => return docs_cli::completions::<Cli>(args),
        Some(Command::Man) => return docs_cli::man::<Cli>(),
        _ => {}
    }
    let path = cli.config.clone().or_else(settings::default_path);
    let loaded = settings::load(path.as_deref()).and_then(|c| Ok((c, otel_env::OtelEnv::from_env()?)));
    let (config, otel) = match loaded {
        Ok(both) => both,
        Err(err) => {
            eprintln!("conveyor: {err}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        // Answered above, before the configuration.
        Command::Completions(_) | Command::Man => ExitCode::SUCCESS,
        Command::Config { command: ConfigCommand::Check } => {
            print!("{}", settings::render(&config));
            ExitCode::SUCCESS
        }
        Command::Token { command: TokenCommand::Mint { sub, roles, ttl } } => {
            match conveyor_identity::tokens::keys_for(&config).and_then(|keys| keys.mint(&sub, &roles, ttl)) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("conveyor: cannot sign the token: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::User { command } => run_async(user_cli::run(config, command)),
        Command::Migrate => run_async(serve::migrate(config)),
        Command::Dlq(args) => run_async(dlq_cli::run(config, args)),
        Command::Serve => run_async(serve::serve(config, otel)),
        Command::Webhook { command: WebhookCommand::Listen(args) } => run_async(listen_cli::run(args)),
    }
}

fn run_async(fut: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("conveyor: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "conveyor failed");
            eprintln!("conveyor: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
