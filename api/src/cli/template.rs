//! `kiln template build|ls|show|rm`: the template registry of a state
//! directory (`kiln::registry`). Builds write the registry directly (a
//! running daemon picks them up); `rm` goes through the daemon when one
//! holds the state directory, so it can refuse a template in use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kiln::model::EgressSpec;
use kiln::registry::{Manifest, Registry, TemplateSpec};

use super::client::Conn;
use super::{image_build, output};

/// `kiln template ...`.
#[derive(clap::Args)]
pub struct TemplateArgs {
    #[command(subcommand)]
    command: TemplateCommand,
    /// State directory (default: the same as `kiln serve`'s).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum TemplateCommand {
    /// Build (or rebuild) a template from an image or Debian packages.
    Build(Box<BuildArgs>),
    /// List the registry's templates.
    Ls,
    /// Show one template's manifest.
    Show {
        /// Template name.
        name: String,
    },
    /// Remove a template (refused while a daemon's pool or sandbox uses
    /// it).
    Rm {
        /// Template name.
        name: String,
    },
}

/// `kiln template build`: exactly one source (the `source` group; another
/// source joins it).
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["image", "debian_packages", "from_oci"])))]
struct BuildArgs {
    /// Template name: [a-z0-9][a-z0-9._-]{0,62}, not a built-in's.
    name: String,
    /// An existing erofs or ext4 image (copied in).
    #[arg(long)]
    image: Option<PathBuf>,
    /// An OCI image: an OCI image layout directory, or a `docker save` /
    /// `podman save` archive. Its env and working directory become the
    /// template's (under --env and --workdir). Needs root.
    #[arg(long, value_name = "PATH")]
    from_oci: Option<PathBuf>,
    /// With --from-oci: which image of several (a ref.name annotation or a
    /// docker tag).
    #[arg(long, requires = "from_oci")]
    reference: Option<String>,
    /// Build the image from these Debian packages (comma-separated) and
    /// their dependencies, the way the default image is built.
    #[arg(long, value_delimiter = ',')]
    debian_packages: Vec<String>,
    /// Python packages (name[==version], comma-separated) the image's own
    /// pip installs into /usr/local (with --debian-packages including
    /// python3-pip).
    #[arg(long, value_delimiter = ',', requires = "debian_packages")]
    pip: Vec<String>,
    /// npm packages (name[@version], comma-separated) the image's own npm
    /// installs into /usr/local (with --debian-packages including npm).
    #[arg(long, value_delimiter = ',', requires = "debian_packages")]
    npm: Vec<String>,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 512)]
    mem_mib: u32,
    /// Per-sandbox writable disk, MiB (default: the memory-backed overlay).
    #[arg(long)]
    disk_mib: Option<u32>,
    /// Environment of every exec, KEY=VALUE (repeatable).
    #[arg(long = "env", short, value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// Working directory of execs.
    #[arg(long)]
    workdir: Option<String>,
    /// Default egress allowlist of its sandboxes: domain names
    /// (comma-separated or repeated; `*.example.org` for subdomains).
    #[arg(long = "egress-allow", value_delimiter = ',')]
    egress_allow: Vec<String>,
    /// Default egress IP ranges (CIDR) of its sandboxes.
    #[arg(long = "egress-cidr", value_delimiter = ',')]
    egress_cidr: Vec<String>,
    /// Guest kernel (default: the staged artifacts').
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest initramfs (default: the staged artifacts').
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// The daemon's config file: its template names are refused.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Runs a `kiln template` command.
pub fn run(args: TemplateArgs, conn: Conn) -> Result<ExitCode> {
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(kiln::config::default_state_dir);
    let registry = Registry::new(&state_dir);
    match args.command {
        TemplateCommand::Build(b) => build(&registry, &state_dir, *b, &conn),
        TemplateCommand::Ls => ls(&registry, conn.json),
        TemplateCommand::Show { name } => {
            let m = registry.get(&name)?;
            if conn.json {
                output::json(&m)?;
            } else {
                show(&registry, &m);
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Rm { name } => rm(&registry, &state_dir, &name, &conn),
    }
}

/// The daemon's socket for `state_dir` when a daemon holds it.
fn daemon_socket(state_dir: &Path, conn: &Conn) -> Option<PathBuf> {
    kiln::daemon_holds(state_dir).then(|| {
        conn.socket
            .clone()
            .unwrap_or_else(|| state_dir.join("kiln.sock"))
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Refuses names the daemon's config (given, or asked of the running
/// daemon) takes.
fn check_not_configured(name: &str, args: &BuildArgs, socket: Option<&Path>) -> Result<()> {
    if let Some(path) = &args.config {
        let config = kiln::Config::from_file(path)?;
        if config.templates.contains_key(name) {
            bail!(
                "template {name:?} is defined in {}; pick another name",
                path.display()
            );
        }
    }
    if let Some(socket) = socket {
        let taken = runtime()?.block_on(async {
            let k = kiln::Kiln::connect_unix(socket).await?;
            k.templates().await
        });
        if let Ok(templates) = taken {
            if let Some(t) = templates
                .iter()
                .find(|t| t.name == name && t.source != "registry")
            {
                bail!(
                    "template {name:?} is {} of the running daemon; pick another name",
                    if t.source == "builtin" {
                        "a built-in template"
                    } else {
                        "in the config file"
                    }
                );
            }
        }
    }
    Ok(())
}

fn build(registry: &Registry, state_dir: &Path, args: BuildArgs, conn: &Conn) -> Result<ExitCode> {
    kiln::registry::check_name(&args.name)?;
    check_not_configured(&args.name, &args, daemon_socket(state_dir, conn).as_deref())?;
    let egress =
        (!args.egress_allow.is_empty() || !args.egress_cidr.is_empty()).then(|| EgressSpec {
            allow: args.egress_allow.clone(),
            cidrs: args.egress_cidr.clone(),
        });
    let spec = TemplateSpec {
        vcpus: args.vcpus,
        mem_mib: args.mem_mib,
        disk_mib: args.disk_mib,
        egress,
        kernel: args.kernel.clone(),
        initramfs: args.initramfs.clone(),
        env: args.env.iter().cloned().collect::<BTreeMap<_, _>>(),
        working_dir: args.workdir.clone(),
        ..TemplateSpec::default()
    };
    // Check the spec before a long image build.
    spec.check()?;
    let manifest = match (&args.image, &args.from_oci) {
        (Some(image), _) => {
            let abs = std::path::absolute(image).unwrap_or_else(|_| image.clone());
            registry.register(&args.name, image, spec, &format!("image:{}", abs.display()))?
        }
        (None, Some(oci)) => from_oci(registry, state_dir, &args, oci, spec)?,
        (None, None) => {
            let image = image_build::debian_packages(
                &args.name,
                &args.debian_packages,
                &args.pip,
                &args.npm,
            )?;
            let mut source = format!("debian-packages:{}", args.debian_packages.join(","));
            for (what, items) in [("pip", &args.pip), ("npm", &args.npm)] {
                if !items.is_empty() {
                    source.push_str(&format!(" {what}:{}", items.join(",")));
                }
            }
            registry.register(&args.name, &image, spec, &source)?
        }
    };
    if conn.json {
        output::json(&manifest)?;
    } else {
        println!(
            "{}  {}  {}",
            manifest.name,
            &manifest.image_sha256[..12],
            human_bytes(manifest.image_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds the image from an OCI image in a scratch directory of the state
/// dir, then registers it with the image's env, working directory, user,
/// entrypoint and command (the command line's env and workdir on top).
fn from_oci(
    registry: &Registry,
    state_dir: &Path,
    args: &BuildArgs,
    source: &Path,
    mut spec: TemplateSpec,
) -> Result<Manifest> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let scratch = Scratch(state_dir.join(format!(".oci-build-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    std::fs::create_dir(&scratch.0).with_context(|| format!("creating {}", scratch.0.display()))?;
    let out = scratch.0.join("image.erofs");
    let options = kiln::template_build::OciBuildOptions {
        reference: args.reference.clone(),
        ..Default::default()
    };
    let image = kiln::template_build::build_from_oci(source, &out, &options)
        .with_context(|| format!("building a template from {}", source.display()))?;
    let mut env: BTreeMap<String, String> = image
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.append(&mut spec.env);
    spec.env = env;
    spec.working_dir = spec
        .working_dir
        .take()
        .or_else(|| image.working_dir.clone().filter(|d| !d.is_empty()));
    spec.user = image.user.clone().filter(|u| !u.is_empty());
    spec.entrypoint = image.entrypoint.clone();
    spec.cmd = image.cmd.clone();
    spec.check()?;
    let abs = std::path::absolute(source).unwrap_or_else(|_| source.to_path_buf());
    let described = format!("oci:{}@{}", abs.display(), image.digest);
    Ok(registry.register(&args.name, &out, spec, &described)?)
}

fn ls(registry: &Registry, json: bool) -> Result<ExitCode> {
    let listed = registry.list()?;
    if json {
        let rows: Vec<serde_json::Value> = listed
            .iter()
            .map(|l| match &l.manifest {
                Ok(m) => serde_json::to_value(m).unwrap_or_default(),
                Err(e) => serde_json::json!({"name": l.name, "error": e.to_string()}),
            })
            .collect();
        output::json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|l| match &l.manifest {
            Ok(m) => vec![
                m.name.clone(),
                m.image_sha256[..12].to_string(),
                human_bytes(m.image_bytes),
                m.spec.vcpus.to_string(),
                m.spec.mem_mib.to_string(),
                m.build.source.clone(),
            ],
            Err(e) => vec![
                l.name.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("error: {e}"),
            ],
        })
        .collect();
    output::table(
        &["NAME", "HASH", "SIZE", "VCPUS", "MEM_MIB", "SOURCE"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

fn show(registry: &Registry, m: &Manifest) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let path = |v: &Option<PathBuf>| {
        v.as_ref()
            .map_or_else(|| "(artifacts)".into(), |p| p.display().to_string())
    };
    println!("name:         {}", m.name);
    println!(
        "image:        {}",
        registry.dir_of(&m.name).join(&m.image).display()
    );
    println!("image sha256: {}", m.image_sha256);
    println!(
        "image size:   {} ({})",
        human_bytes(m.image_bytes),
        m.image_format.extension()
    );
    println!("vcpus:        {}", m.spec.vcpus);
    println!("mem_mib:      {}", m.spec.mem_mib);
    println!(
        "disk_mib:     {}",
        m.spec
            .disk_mib
            .map_or_else(|| "-".into(), |d| d.to_string())
    );
    println!("env:          {}", output::pairs(&m.spec.env));
    println!("workdir:      {}", opt(&m.spec.working_dir));
    println!("user:         {}", opt(&m.spec.user));
    println!("entrypoint:   {}", m.spec.entrypoint.join(" "));
    println!("cmd:          {}", m.spec.cmd.join(" "));
    println!(
        "egress:       {}",
        m.spec.egress.as_ref().map_or_else(
            || "none".into(),
            |e| [e.allow.clone(), e.cidrs.clone()].concat().join(",")
        )
    );
    println!("kernel:       {}", path(&m.spec.kernel));
    println!("initramfs:    {}", path(&m.spec.initramfs));
    println!("source:       {}", m.build.source);
    println!(
        "built at:     {} ms (kiln {})",
        m.build.built_at_ms, m.build.kiln_version
    );
    println!("revision:     {}", m.revision);
}

fn rm(registry: &Registry, state_dir: &Path, name: &str, conn: &Conn) -> Result<ExitCode> {
    kiln::registry::check_name(name)?;
    match daemon_socket(state_dir, conn) {
        Some(socket) => runtime()?.block_on(async {
            let k = kiln::Kiln::connect_unix(&socket).await.with_context(|| {
                format!(
                    "a daemon holds {} but its socket {} does not answer",
                    state_dir.display(),
                    socket.display()
                )
            })?;
            k.delete_template(name).await?;
            anyhow::Ok(())
        })?,
        None => registry.remove(name)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn human_bytes(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    if n >= MIB {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    } else {
        format!("{n} B")
    }
}
