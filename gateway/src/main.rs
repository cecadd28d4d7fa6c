//! `gateway run` serves; `gateway check` validates a configuration without starting.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::settings::{ConfigError, Settings};

/// jemalloc, measured side by side with glibc malloc on the same source (bench/pubsub.sh over
/// HTTPS, 10,000 subscribers): 37% less CPU per long-poll delivery (51 vs 81 us), the same
/// memory per subscriber, ~5% more per idle WebSocket. mimalloc was dropped earlier: it made
/// every idle connection 2.5x bigger.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "TLS, routing, static files, app proxy and realtime in one process"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (for the default `run` command).
    #[arg(long, short, default_value = "gateway.yaml", global = true)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Start serving (the default).
    Run {
        /// Take the listening sockets over from the running gateway instead of binding them
        /// (what `gateway upgrade` starts the new process with).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a configuration file, report every problem, and exit 2 if there is any.
    Check,
    /// Put the configuration file in force in the running gateway without dropping a
    /// connection: checks the file (exit 2 and every problem if it does not pass; nothing is
    /// sent), sends SIGHUP to the process in the pid file, and prints the outcome.
    Reload,
    /// Replace the running gateway with this binary without losing a request: starts a new
    /// process that takes the listening sockets over, then lets the old one drain and exit.
    Upgrade,
    /// Check a deployment end to end from outside: /ping, the app's WebSocket (with an idle
    /// wait), and Socket.IO handshake, polling and upgrade. Ends with "It worked." or the first
    /// failure, and a non-zero exit.
    Probe {
        /// The deployment's base URL, e.g. https://example.com or https://localhost:8443
        url: String,
        /// Accept any certificate (self-signed, the development certificate).
        #[arg(long)]
        insecure: bool,
        /// The app's WebSocket path.
        #[arg(long, default_value = "/cable")]
        ws_path: String,
        /// The Socket.IO path.
        #[arg(long, default_value = "/socket.io/")]
        socketio_path: String,
    },
}

/// Exit status for a configuration that does not pass: 2, like `nginx -t` failures in scripts
/// that distinguish "bad config" (2) from "crashed" (1).
const EXIT_BAD_CONFIG: u8 = 2;

/// How long `gateway reload` waits for the running gateway's outcome: a reload reads a few
/// files and builds tables, which takes milliseconds; a process that says nothing in 10 s is
/// not going to.
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long `gateway upgrade` waits for the new process at each step (ready for the sockets,
/// then serving): it builds everything a start does, joining Redis included.
const UPGRADE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long the old process keeps accepting beside the new one after the hand-over (pingora's
/// `CLOSE_TIMEOUT`), before it drains.
const UPGRADE_HANDOVER_S: u64 = 5;

/// `gateway reload`, after the file passed its check here. When this binary is not the one the
/// running gateway was started from (a new version was installed), the reload is an upgrade:
/// the new binary takes over, with this file ([`gateway::upgrade`]).
fn reload(settings: &Settings, config: &std::path::Path) -> ExitCode {
    if gateway::upgrade::binary_changed(&settings.pid_file) {
        println!("the installed binary differs from the running one: upgrading");
        return upgrade(settings, config);
    }
    match gateway::reload::request(&settings.pid_file, RELOAD_WAIT) {
        Ok(status) if status.ok => {
            if status.applied.is_empty() {
                println!("reloaded: nothing changed that applies without a restart");
            } else {
                println!("reloaded: {}", status.applied.join(", "));
            }
            for what in &status.restart_needed {
                println!("needs a restart to apply: {what}");
            }
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("reload refused; the configuration in force keeps serving:");
            for problem in &status.problems {
                println!("  {problem}");
            }
            ExitCode::from(EXIT_BAD_CONFIG)
        }
        Err(e) => {
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `gateway upgrade`.
fn upgrade(settings: &Settings, config: &std::path::Path) -> ExitCode {
    match gateway::upgrade::run(settings, config, UPGRADE_WAIT) {
        Ok((old, new)) => {
            println!(
                "upgraded: process {new} serves; process {old} drains and exits within {} s",
                settings.grace_period.as_secs() + UPGRADE_HANDOVER_S
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    gateway::logging::init();

    if let Some(Command::Probe {
        url,
        insecure,
        ws_path,
        socketio_path,
    }) = &cli.command
    {
        let mut opts = gateway::probe::Options::new(url.clone());
        opts.insecure = *insecure;
        opts.ws_path = ws_path.clone();
        opts.socketio_path = socketio_path.clone();
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("gateway: cannot start a runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match runtime.block_on(gateway::probe::run(&opts)) {
            Ok(()) => {
                println!("It worked.");
                ExitCode::SUCCESS
            }
            Err(why) => {
                println!("Failed: {why}");
                ExitCode::FAILURE
            }
        };
    }

    let settings = match Settings::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::from(match e {
                ConfigError::Read { .. } => 1,
                _ => EXIT_BAD_CONFIG,
            });
        }
    };
    match cli.command.unwrap_or(Command::Run { upgrade: false }) {
        Command::Check => {
            println!("{}: ok", cli.config.display());
            ExitCode::SUCCESS
        }
        Command::Reload => reload(&settings, &cli.config),
        Command::Upgrade => upgrade(&settings, &cli.config),
        // Answered before any configuration is read.
        Command::Probe { .. } => ExitCode::SUCCESS,
        Command::Run { upgrade } => {
            let built = match gateway::server::build(&settings, &cli.config, upgrade) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("gateway: cannot start: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let gateway::server::Built {
                server,
                reloader,
                drain,
            } = built;
            if let Err(e) = gateway::upgrade::on_sigquit(drain) {
                eprintln!("gateway: cannot listen for SIGQUIT (upgrade): {e}");
                return ExitCode::FAILURE;
            }
            if let Err(e) = gateway::reload::on_sighup(reloader.clone()) {
                eprintln!("gateway: cannot listen for SIGHUP (reload): {e}");
                return ExitCode::FAILURE;
            }
            if let Err(e) = reloader.announce() {
                tracing::warn!(pid_file = %settings.pid_file.display(), error = %e, "cannot write the pid file: `gateway reload` will not find this process (SIGHUP still reloads)");
            }
            if let Some(https) = settings.listen.https {
                tracing::info!("serving https://localhost:{}/", https.port());
            }
            gateway::notify::ready();
            server.run_forever()
        }
    }
}
