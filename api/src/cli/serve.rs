//! `kiln serve [--socket PATH] [--state-dir DIR] [--config FILE] [--listen ADDR]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use kiln::Config;

/// Arguments of `kiln serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML config: templates, pools, limits, timeouts (default: none, all
    /// defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// State directory (default: $KILN_STATE_DIR, /var/lib/kiln for root,
    /// else ~/.local/state/kiln).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Serve the API on TCP too, to sandbox-token holders only
    /// (`127.0.0.1:PORT`; loopback unless --listen-any).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Allow --listen on a non-loopback address (plain HTTP: put TLS in
    /// front of it).
    #[arg(long)]
    listen_any: bool,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs the daemon until SIGTERM/SIGINT (then drains).
pub fn serve(args: ServeArgs, socket: Option<PathBuf>) -> Result<ExitCode> {
    init_logging();
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(dir) = args.state_dir {
        config.state_dir = dir;
    }
    if let Some(socket) = socket {
        config.server.socket = Some(socket);
    }
    if let Some(addr) = args.listen {
        config.server.listen = Some(addr);
    }
    config.server.listen_any |= args.listen_any;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(kiln::server::serve(config))?;
    Ok(ExitCode::SUCCESS)
}
