use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use imroute::{app::shutdown_signal, config::Config, telemetry, Application};

#[derive(Parser)]
#[command(
    name = "imroute",
    version,
    about = "Routes IM clients to gateway nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve {
        /// Config file (default config/imroute.yaml; missing means defaults).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the config and the overrides file, then exit 0 or 1.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the OpenAPI spec as YAML.
    Openapi,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Openapi => {
            print!("{}", imroute::api::openapi_yaml());
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => check_config(config),
        Command::Serve { config } => serve(config),
    }
}

fn load(config: Option<PathBuf>) -> Result<Config, ExitCode> {
    Config::load(config.as_deref()).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    })
}

fn check_config(config: Option<PathBuf>) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    match runtime.block_on(imroute::overrides::check_file(&config)) {
        Ok(note) => {
            println!("config ok; {note}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    let code = runtime.block_on(async {
        let app = match Application::build(config).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %e, "Cannot start");
                return ExitCode::from(1);
            }
        };
        match app.run_until_stopped(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "Server failed");
                ExitCode::from(1)
            }
        }
    });
    // A blocking task still at work (a huge overrides file being parsed)
    // must not hold the exit: requests are done, the store is left.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}
