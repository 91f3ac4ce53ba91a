use clap::Parser;
use messaging::auth::{Claims, TokenKeys};
use messaging::config::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    messaging::telemetry::init_logging();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = messaging::Application::build(cli.settings).await?;
            app.run_until_stopped(messaging::app::shutdown_signal())
                .await
        }
        Command::Migrate => {
            let store = messaging::store::Store::connect(&cli.settings.database_url).await?;
            store.migrate().await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Token(t) => {
            let keys = TokenKeys::new(cli.settings.jwt_secret()?);
            let now = messaging::time::now_ms() / 1000;
            let claims = Claims {
                id: t.user_id.unwrap_or_else(messaging::ids::new_id),
                email: t.email,
                first_name: t.first_name,
                last_name: t.last_name,
                church_id: t.church_id,
                person_id: t.person_id,
                permissions: t.permissions,
                group_ids: t.group_ids,
                leader_group_ids: t.leader_group_ids,
                exp: Some(now + t.expires_in),
                nbf: None,
                iat: Some(now),
            };
            println!("{}", keys.mint(&claims)?);
            Ok(())
        }
    }
}
