//! `conveyor user create`: accounts made from the command line (the first admin, above
//! all), written straight into the store with the daemon's own rules and hashing.

use anyhow::Context;
use clap::Subcommand;
use conveyor_actors::cache::Cache;
use conveyor_actors::config::Config;
use conveyor_actors::store::Store;
use conveyor_identity::store::IdentityStore;
use conveyor_identity::{Registration, roles};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user; the password comes from CONVEYOR_USER_PASSWORD or the first line of stdin.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "admin")]
        name: String,
        #[arg(long, default_value = "1970-01-01")]
        birthday: String,
        /// Grant the admin role as well as user.
        #[arg(long)]
        admin: bool,
    },
}

pub async fn run(config: Config, command: UserCommand) -> anyhow::Result<()> {
    let UserCommand::Create { email, name, birthday, admin } = command;
    let password = match std::env::var("CONVEYOR_USER_PASSWORD") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    let store = Store::connect(&config).await.context("connecting to the store")?;
    store.migrate(crate::migrations::all()).await.context("applying migrations")?;
    let store = IdentityStore::new(store);
    let cache = Cache::memory(16);
    let identity = crate::system::start_identity(&config, &store, &cache, Default::default()).await?;
    let granted: &[&str] = if admin { &[roles::USER, roles::ADMIN] } else { &[roles::USER] };
    let user = identity
        .create_user(Registration { email, password, name, birthday }, granted)
        .await
        .context("creating the user")?;
    println!("{} {} roles={}", user.id, user.email, user.roles);
    Ok(())
}
