//! The client commands: a thin layer over [`kiln::Kiln::connect_unix`].

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use kiln::model::{
    CreatedSandbox, EgressSpec, OnEmpty, SandboxFilter, SandboxSpec, SandboxState, TokenOp,
    TokenRequest,
};
use kiln::Kiln;

use super::{output, processes};

/// Where the daemon listens, and how to print.
#[derive(clap::Args, Clone)]
pub struct Conn {
    /// The daemon's unix socket (default: <state dir>/kiln.sock).
    #[arg(long, env = "KILN_SOCKET", global = true)]
    pub socket: Option<PathBuf>,
    /// JSON output for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Conn {
    pub async fn connect(&self) -> Result<Kiln> {
        let socket = self
            .socket
            .clone()
            .unwrap_or_else(|| kiln::Config::default().socket_path());
        Kiln::connect_unix(&socket)
            .await
            .with_context(|| format!("is `kiln serve` running on {}?", socket.display()))
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// `kiln create`.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// Template (default: the daemon's default).
    #[arg(long, short)]
    template: Option<String>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", short, value_parser = parse_kv)]
    labels: Vec<(String, String)>,
    /// Environment default KEY=VALUE for every exec (repeatable).
    #[arg(long = "env", short, value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// Default working directory of execs.
    #[arg(long)]
    cwd: Option<String>,
    /// Time to live, seconds (from ready).
    #[arg(long)]
    ttl: Option<u64>,
    /// Idle timeout, seconds.
    #[arg(long)]
    idle: Option<u64>,
    /// When the pool is empty: cold (boot now), wait, or fail.
    #[arg(long, value_parser = ["cold", "wait", "fail"], default_value = "cold")]
    on_empty: String,
    /// With --on-empty wait: how long, ms.
    #[arg(long)]
    wait_ms: Option<u64>,
    /// Idempotency key (a retry returns the same sandbox).
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Also issue a token scoped to the sandbox allowing these operations
    /// (exec, files; comma-separated); printed on a second line.
    #[arg(long, value_delimiter = ',', value_parser = parse_op)]
    token: Vec<TokenOp>,
    /// The token's lifetime, seconds (default: the sandbox's TTL).
    #[arg(long, requires = "token")]
    token_ttl: Option<u64>,
    /// Who holds the token, as the audit trail names them (default
    /// uid:<your uid>).
    #[arg(long, requires = "token")]
    token_subject: Option<String>,
    /// Let the sandbox reach these names through its HTTP/HTTPS proxy
    /// (`pypi.org`, `*.npmjs.org`; comma-separated or repeated). Replaces
    /// the template's allowlist and must lie within it. Without it (and
    /// without a template allowlist) the sandbox has no network.
    #[arg(long, value_delimiter = ',')]
    allow: Vec<String>,
    /// IP ranges a program may name as IP literals (`203.0.113.0/24`).
    #[arg(long, value_delimiter = ',')]
    allow_cidr: Vec<String>,
}

fn parse_op(s: &str) -> Result<TokenOp, String> {
    match s {
        "exec" => Ok(TokenOp::Exec),
        "files" => Ok(TokenOp::Files),
        other => Err(format!("unknown operation {other:?} (exec, files)")),
    }
}

/// `kiln ls`.
#[derive(clap::Args)]
pub struct LsArgs {
    /// Only sandboxes with label KEY=VALUE (repeatable).
    #[arg(long = "label", short, value_parser = parse_kv)]
    labels: Vec<(String, String)>,
    /// ready (default) or ended (tombstones).
    #[arg(long)]
    state: Option<String>,
}

/// `kiln exec`.
#[derive(clap::Args)]
pub struct ExecArgs {
    /// Sandbox id.
    sandbox: String,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short, value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// Working directory.
    #[arg(long)]
    cwd: Option<String>,
    /// Kill the command after this many seconds.
    #[arg(long)]
    timeout: Option<u64>,
    /// Start it and print its id; it runs on (see `kiln attach`, `kiln
    /// stdin`, `kiln kill`). Without it, leaving (Ctrl-C) kills it.
    #[arg(long, short)]
    detach: bool,
    /// Keep its stdin open for `kiln stdin` (after this command's own
    /// stdin, if that is not a terminal).
    #[arg(long)]
    stdin_open: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

/// `kiln cp`.
#[derive(clap::Args)]
pub struct CpArgs {
    /// Source: a local path or SANDBOX:PATH.
    from: String,
    /// Destination: a local path or SANDBOX:PATH.
    to: String,
}

/// `kiln rm`.
#[derive(clap::Args)]
pub struct RmArgs {
    /// Sandbox ids.
    #[arg(required = true)]
    sandboxes: Vec<String>,
}

/// `kiln pool`.
#[derive(clap::Args)]
pub struct PoolArgs {
    /// Template (all pools without it).
    template: Option<String>,
    /// Set the number of VMs to keep ready.
    #[arg(long, requires = "template")]
    target: Option<u32>,
}

/// `kiln events`.
#[derive(clap::Args)]
pub struct EventsArgs {
    /// Start after this sequence number (0: the oldest kept).
    #[arg(long, default_value_t = 0)]
    after: u64,
}

/// A client command.
pub enum Cmd {
    Create(CreateArgs),
    Ls(LsArgs),
    Exec(ExecArgs),
    Cp(CpArgs),
    Rm(RmArgs),
    Pool(PoolArgs),
    Events(EventsArgs),
    Ps(processes::PsArgs),
    Attach(processes::AttachArgs),
    Kill(processes::KillArgs),
    Stdin(processes::StdinArgs),
    Audit(super::audit::AuditArgs),
}

/// Runs a client command on a small runtime.
pub fn run(conn: Conn, cmd: Cmd) -> Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async move {
            match cmd {
                Cmd::Create(a) => create(&conn, a).await,
                Cmd::Ls(a) => ls(&conn, a).await,
                Cmd::Exec(a) => exec(&conn, a).await,
                Cmd::Cp(a) => cp(&conn, a).await,
                Cmd::Rm(a) => rm(&conn, a).await,
                Cmd::Pool(a) => pool(&conn, a).await,
                Cmd::Events(a) => events(&conn, a).await,
                Cmd::Ps(a) => processes::ps(&conn, a).await,
                Cmd::Attach(a) => processes::attach(&conn, a).await,
                Cmd::Kill(a) => processes::kill(&conn, a).await,
                Cmd::Stdin(a) => processes::stdin(&conn, a).await,
                Cmd::Audit(a) => super::audit::audit(&conn, a).await,
            }
        })
}

async fn create(conn: &Conn, a: CreateArgs) -> Result<ExitCode> {
    let kiln = conn.connect().await?;
    let spec = SandboxSpec {
        template: a.template,
        labels: a.labels.into_iter().collect(),
        env: a.env.into_iter().collect(),
        cwd: a.cwd,
        ttl_secs: a.ttl,
        idle_timeout_secs: a.idle,
        on_empty: match a.on_empty.as_str() {
            "wait" => OnEmpty::Wait,
            "fail" => OnEmpty::Fail,
            _ => OnEmpty::Cold,
        },
        wait_ms: a.wait_ms,
        token: (!a.token.is_empty()).then_some(TokenRequest {
            ops: a.token,
            ttl_secs: a.token_ttl,
            subject: a.token_subject,
        }),
        egress: (!a.allow.is_empty() || !a.allow_cidr.is_empty()).then_some(EgressSpec {
            allow: a.allow,
            cidrs: a.allow_cidr,
        }),
        ..SandboxSpec::default()
    };
    let sandbox = kiln
        .sandboxes()
        .create_idempotent(spec, a.idempotency_key)
        .await?;
    if conn.json {
        output::json(&CreatedSandbox {
            sandbox: sandbox.cached_info().clone(),
            token: sandbox.token().cloned(),
        })?;
    } else {
        println!("{}", sandbox.id());
        if let Some(t) = sandbox.token() {
            println!("{}", t.token);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn ls(conn: &Conn, a: LsArgs) -> Result<ExitCode> {
    let kiln = conn.connect().await?;
    let filter = SandboxFilter {
        labels: a.labels.into_iter().collect(),
        state: a.state.map(|s| s.parse::<SandboxState>()).transpose()?,
    };
    let list = kiln.sandboxes().list(filter).await?;
    if conn.json {
        output::json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.template.clone(),
                s.state.as_str().into(),
                s.end_reason.map_or_else(
                    || s.launch_type.as_str().to_string(),
                    |r| r.as_str().to_string(),
                ),
                s.running_execs.to_string(),
                output::until(s.expires_at_ms),
                output::pairs(&s.labels),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "TEMPLATE",
            "STATE",
            "LAUNCH/END",
            "EXECS",
            "EXPIRES",
            "LABELS",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

async fn exec(conn: &Conn, a: ExecArgs) -> Result<ExitCode> {
    let kiln = conn.connect().await?;
    let sandbox = kiln.sandboxes().get(&a.sandbox).await?;
    let mut builder = sandbox.exec(a.argv);
    for (k, v) in a.env {
        builder = builder.env(k, v);
    }
    if let Some(cwd) = a.cwd {
        builder = builder.cwd(cwd);
    }
    if let Some(t) = a.timeout {
        builder = builder.timeout(Duration::from_secs(t));
    }
    if a.stdin_open {
        builder = builder.keep_stdin_open();
    }
    if !std::io::stdin().is_terminal() {
        let mut stdin = Vec::new();
        std::io::stdin()
            .take(8 << 20)
            .read_to_end(&mut stdin)
            .context("reading stdin")?;
        builder = builder.stdin(stdin);
    }
    if a.detach {
        let info = builder.detach().await?;
        if conn.json {
            output::json(&info)?;
        } else {
            println!("{}", info.exec_id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let exec = builder.kill_on_drop(true).spawn().await?;
    processes::print_events(exec, conn.json).await
}

/// `SANDBOX:PATH` -> (sandbox, path); a local path -> None.
fn remote(spec: &str) -> Option<(&str, &str)> {
    let (id, path) = spec.split_once(':')?;
    (id.starts_with("sbx-") && !path.is_empty()).then_some((id, path))
}

async fn cp(conn: &Conn, a: CpArgs) -> Result<ExitCode> {
    let kiln = conn.connect().await?;
    match (remote(&a.from), remote(&a.to)) {
        (None, Some((id, path))) => {
            let file = tokio::fs::File::open(&a.from)
                .await
                .with_context(|| format!("opening {}", a.from))?;
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&file.metadata().await?.permissions())
                    & 0o777;
            let sandbox = kiln.sandboxes().get(id).await?;
            let written = sandbox
                .files()
                .write_with(path, Some(mode), file, None)
                .await?;
            if conn.json {
                output::json(&written)?;
            }
        }
        (Some((id, path)), None) => {
            let sandbox = kiln.sandboxes().get(id).await?;
            let mut stream = sandbox.files().read(path).await?;
            // Into a temp file next to the target, renamed when verified.
            let tmp = PathBuf::from(format!("{}.kiln-partial", a.to));
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("creating {}", tmp.display()))?;
            let copied = async {
                while let Some(chunk) = stream.next().await {
                    tokio::io::AsyncWriteExt::write_all(&mut file, &chunk?).await?;
                }
                tokio::io::AsyncWriteExt::flush(&mut file).await?;
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = copied {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
            tokio::fs::rename(&tmp, &a.to)
                .await
                .with_context(|| format!("writing {}", a.to))?;
            if conn.json {
                output::json(&serde_json::json!({"size": stream.size, "sha256": stream.sha256}))?;
            }
        }
        _ => bail!("exactly one side must be SANDBOX:PATH (sandbox ids start with sbx-)"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn rm(conn: &Conn, a: RmArgs) -> Result<ExitCode> {
    let kiln = conn.connect().await?;
    let mut failed = false;
    for id in &a.sandboxes {
        let deleted = async { kiln.sandboxes().get(id).await?.delete().await }.await;
        match deleted {
            Ok(tomb) if conn.json => output::json(&tomb)?,
            Ok(_) => println!("{id}"),
            Err(e) => {
                eprintln!("kiln: {id}: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn pool(conn: &Conn, a: PoolArgs) -> Result<ExitCode> {
    let kiln = conn.connect().await?;
    let pools = match (&a.template, a.target) {
        (Some(t), Some(target)) => vec![kiln.set_pool_target(t, target).await?],
        (Some(t), None) => vec![kiln.pool(t).await?],
        (None, _) => kiln.pools().await?,
    };
    if conn.json {
        output::json(&pools)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.template.clone(),
                p.target.to_string(),
                p.ready.to_string(),
                p.booting.to_string(),
                p.consecutive_failures.to_string(),
                p.memory.as_ref().map_or_else(
                    || "-".into(),
                    |m| {
                        let mib = |b: u64| format!("{:.1}", b as f64 / f64::from(1 << 20));
                        format!("{}/{}", mib(m.private_bytes), mib(m.shared_bytes))
                    },
                ),
                p.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    output::table(
        &[
            "TEMPLATE",
            "TARGET",
            "READY",
            "BOOTING",
            "FAILURES",
            "MIB PRIVATE/SHARED",
            "LAST ERROR",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

async fn events(conn: &Conn, a: EventsArgs) -> Result<ExitCode> {
    let kiln = conn.connect().await?;
    let mut events = kiln.events(a.after).await?;
    while let Some(e) = events.next().await {
        let e = e?;
        if conn.json {
            println!("{}", serde_json::to_string(&e)?);
        } else {
            let kind = serde_json::to_value(e.kind)?;
            println!(
                "{} {} {} {} {}",
                e.seq,
                kind.as_str().unwrap_or("?"),
                e.sandbox_id.as_deref().unwrap_or("-"),
                e.template.as_deref().unwrap_or("-"),
                e.reason.map_or("-", |r| r.as_str())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
