use clap::Parser;
use messaging::auth::{Claims, TokenKeys};
use messaging::config::{Cli, Command};

// mimalloc: the request threads spent much of their time in glibc's malloc and free, and
// many small allocations are freed on another thread than the one that made them
// (BENCHMARKS.md, "Design decisions and their measurements").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (the Rust bindings lack it).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

fn main() -> anyhow::Result<()> {
    messaging::memory::enable();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(messaging::memory::on_park)
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    // Hand freed pages back at once rather than 10 ms later: idle sockets are what a node
    // holds most of, and the delayed purge kept each of them bigger (BENCHMARKS.md,
    // "Design decisions and their measurements").
    // SAFETY: mimalloc options may be set at any time; this one is a plain integer.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    let cli = Cli::parse();
    messaging::telemetry::init_logging();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve if messaging::lambda::is_lambda() => {
            messaging::lambda::run(cli.settings).await
        }
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
