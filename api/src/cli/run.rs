//! `kiln run -- CMD ARGS...` and `kiln run --lang L (-c CODE | FILE | -)`:
//! boot a microVM, run one program in it, stream its output, exit with its
//! exit code, tear the VM down.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kiln::artifacts;
use kiln::lang::{Lang, Source};
use kiln::template::{self, Overrides};
use kiln::vm_process::{ExecOutput, SpawnOptions, VmProcess, VmSpec};
use kiln_agent::protocol::ExecRequest;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Exit code for a command that hit its timeout (as coreutils `timeout`).
const EXIT_TIMED_OUT: u8 = 124;
/// How long the guest may take to answer its first ping.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a clean guest poweroff may take before the VMM is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Where a program file given to `--lang` is copied in the guest.
const PROGRAM_DIR: &str = "/tmp/.kiln";

/// Arguments of `kiln run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Kill the command (its whole process group) after this many seconds.
    #[arg(long)]
    timeout: Option<u64>,
    /// Print boot and exec timings to stderr.
    #[arg(long)]
    timings: bool,
    /// Template: python-node (CPython, Node.js, bash on the runtime image),
    /// minimal (busybox only), or one of the registry's (`kiln template
    /// build`).
    #[arg(long, default_value = template::DEFAULT_TEMPLATE)]
    template: String,
    /// State directory whose template registry --template looks in
    /// (default: the same as `kiln serve`'s).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Run source code in this language: python, node or bash. The program is
    /// `-c CODE`, or the first argument: a host file, or `-` for stdin.
    #[arg(long)]
    lang: Option<Lang>,
    /// The program's source code (with --lang).
    #[arg(short = 'c', long = "code", requires = "lang")]
    code: Option<String>,
    /// vCPUs (default: the template's).
    #[arg(long)]
    vcpus: Option<u8>,
    /// Guest memory in MiB (default: the template's).
    #[arg(long)]
    mem_mib: Option<u32>,
    /// Runtime image (default: the template's).
    #[arg(long)]
    image: Option<PathBuf>,
    /// A writable disk of this many MiB (a sparse host file, removed with
    /// the VM) as the sandbox's writable layer instead of a tmpfs in guest
    /// memory (default: the template's).
    #[arg(long)]
    disk_mib: Option<u32>,
    /// Environment variable for the command (repeatable), KEY=VALUE.
    #[arg(long = "env", short = 'e', value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory in the guest.
    #[arg(long)]
    cwd: Option<String>,
    /// Guest kernel (default: the staged artifacts).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest initramfs (default: the staged artifacts).
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// kiln-vmm binary (default: next to this binary).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Write the guest's serial console to this file (slows the boot).
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Extra guest kernel arguments, e.g. `loglevel=7` with --serial-log.
    #[arg(long)]
    kernel_args: Option<String>,
    /// Guest RAM on small pages: less resident memory, slower boot.
    #[arg(long)]
    no_huge_pages: bool,
    /// Copy a host file into the sandbox before running: LOCAL:GUEST_PATH
    /// (repeatable; relative guest paths are under /home/sandbox).
    #[arg(long = "copy-in", value_parser = parse_copy)]
    copy_in: Vec<(String, String)>,
    /// Copy a sandbox file out after running: GUEST_PATH:LOCAL (repeatable).
    #[arg(long = "copy-out", value_parser = parse_copy)]
    copy_out: Vec<(String, String)>,
    /// Cap on the bytes of stdout+stderr returned (default 16 MiB); the
    /// rest is dropped and reported as truncated.
    #[arg(long)]
    max_output: Option<u64>,
    /// The command and its arguments; with --lang, the program file (or `-`)
    /// unless -c is given, then the program's arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_copy(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => Err(format!("expected FROM:TO, got {s:?}")),
    }
}

/// What to run: the argv, whether the host's stdin carries the program, and
/// a host program file to copy in first (host path, guest path).
struct Plan {
    argv: Vec<String>,
    program_on_stdin: bool,
    program_file: Option<(PathBuf, String)>,
}

fn plan(args: &RunArgs) -> Result<Plan> {
    let Some(lang) = args.lang else {
        anyhow::ensure!(
            !args.command.is_empty(),
            "nothing to run: give a command after --, or --lang"
        );
        return Ok(Plan {
            argv: args.command.clone(),
            program_on_stdin: false,
            program_file: None,
        });
    };
    let (source, rest, program_file) = match (&args.code, args.command.split_first()) {
        (Some(code), _) => (Source::Code(code.clone()), &args.command[..], None),
        (None, Some((first, rest))) if first == "-" => (Source::Stdin, rest, None),
        (None, Some((file, rest))) => {
            let host = PathBuf::from(file);
            anyhow::ensure!(host.is_file(), "program {file} is not a readable file");
            let name = host
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "main".into());
            let guest = format!("{PROGRAM_DIR}/{name}");
            (Source::GuestFile(guest.clone()), rest, Some((host, guest)))
        }
        (None, None) => {
            anyhow::bail!("--lang {lang} needs -c CODE, a program file, or - for stdin")
        }
    };
    Ok(Plan {
        argv: lang.argv(&source, rest),
        program_on_stdin: source == Source::Stdin,
        program_file,
    })
}

async fn copy_in(vm: &VmProcess, local: &Path, guest: &str) -> Result<()> {
    let file = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("opening {}", local.display()))?;
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&file.metadata().await?.permissions()) & 0o777;
    vm.upload(guest, Some(mode), tokio::io::BufReader::new(file))
        .await
        .with_context(|| {
            format!(
                "copying {} into the sandbox ({})",
                local.display(),
                vm.vmm_report()
            )
        })?;
    Ok(())
}

async fn copy_out(vm: &VmProcess, guest: &str, local: &Path) -> Result<()> {
    // Download next to the target, then rename: a failed copy leaves no
    // half file behind.
    let tmp = local.with_extension("kiln-partial");
    let file = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("creating {}", tmp.display()))?;
    match vm.download(guest, tokio::io::BufWriter::new(file)).await {
        Ok(_) => {
            std::fs::rename(&tmp, local).with_context(|| format!("writing {}", local.display()))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(anyhow::Error::new(e).context(format!(
                "copying {guest} out of the sandbox ({})",
                vm.vmm_report()
            )))
        }
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    if k.is_empty() {
        return Err(format!("empty variable name in {s:?}"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Runs the command; returns the process exit code.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let plan = plan(&args)?;
    // An unknown template is reported before the host's KVM (it is the
    // caller's mistake on any host); its files after.
    let registered = registry_template(&args)?;
    kiln::kvm_check::ensure_hardware_kvm()?;
    let template = resolve_template(&args, registered)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run_in_vm(args, plan, template))
}

/// Boots tried before a guest crash is the answer (the daemon's cold
/// create uses the same count).
const BOOT_ATTEMPTS: u32 = 2;

/// Boots a VM from `spec` and waits for its agent; boots once more when the
/// guest crashed before its agent answered (nothing of the user's has run
/// yet), never after a setup failure.
async fn boot(
    spec: &VmSpec,
    options: &SpawnOptions,
) -> std::result::Result<VmProcess, kiln::vm_process::VmProcessError> {
    let mut attempt = 1;
    loop {
        let vm = VmProcess::spawn(spec, options)?;
        match vm.wait_ready(BOOT_TIMEOUT).await {
            Ok(_) => return Ok(vm),
            Err(e) if e.guest_crashed() && attempt < BOOT_ATTEMPTS => {
                eprintln!("kiln: the guest crashed while booting ({e}); booting once more");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The registry's manifest of `--template` (and its directory), `None`
/// for a built-in template.
fn registry_template(args: &RunArgs) -> Result<Option<(kiln::registry::Manifest, PathBuf)>> {
    if template::BUILTIN.contains(&args.template.as_str()) {
        return Ok(None);
    }
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(kiln::config::default_state_dir);
    let registry = kiln::registry::Registry::new(&state_dir);
    let manifest = registry.get(&args.template).map_err(|e| match e {
        kiln::registry::RegistryError::NotFound(_) => anyhow::anyhow!(
            "unknown template {:?}: not built in (python-node, minimal) and not in the registry \
             of {} (see `kiln template ls`)",
            args.template,
            state_dir.display()
        ),
        other => other.into(),
    })?;
    Ok(Some((manifest, registry.dir_of(&args.template))))
}

/// A built-in template, else the registry's, with the command line's
/// paths over the template's.
fn resolve_template(
    args: &RunArgs,
    registered: Option<(kiln::registry::Manifest, PathBuf)>,
) -> Result<template::Template> {
    let Some((manifest, dir)) = registered else {
        return Ok(template::resolve(
            &args.template,
            &Overrides {
                kernel: args.kernel.as_deref(),
                initramfs: args.initramfs.as_deref(),
                image: args.image.as_deref(),
            },
        )?);
    };
    let mut t = manifest.template(&dir, true)?;
    if let Some(k) = &args.kernel {
        t.kernel = k.clone();
    }
    if let Some(i) = &args.initramfs {
        t.initramfs = i.clone();
    }
    if let Some(i) = &args.image {
        t.image = Some(i.clone());
    }
    Ok(t)
}

async fn run_in_vm(args: RunArgs, plan: Plan, t: template::Template) -> Result<ExitCode> {
    let mut config = t.vm_config();
    config.vcpus = args.vcpus.unwrap_or(t.vcpus);
    config.mem_mib = args.mem_mib.map_or(config.mem_mib, u64::from);
    config.serial_log = args.serial_log.clone();
    config.cmdline_extra = args.kernel_args.clone().unwrap_or_default();
    config.huge_pages = t.huge_pages && !args.no_huge_pages;
    let spec = VmSpec {
        vmm: artifacts::vmm_binary(args.vmm.as_deref())?,
        config,
    };
    let options = SpawnOptions {
        writable_disk_mib: args.disk_mib.or(t.disk_mib),
        ..SpawnOptions::default()
    };
    let vm = boot(&spec, &options).await.context("booting the sandbox")?;
    let ready = vm.spawned_at().elapsed();

    if let Some((host, guest)) = &plan.program_file {
        copy_in(&vm, host, guest).await?;
    }
    for (local, guest) in &args.copy_in {
        copy_in(&vm, Path::new(local), guest).await?;
    }
    let with_stdin = plan.program_on_stdin || !std::io::stdin().is_terminal();
    let request = ExecRequest {
        argv: plan.argv,
        max_output_bytes: args.max_output,
        // The template's environment under the command line's.
        env: t.env.clone().into_iter().chain(args.env.clone()).collect(),
        cwd: args.cwd.clone().or_else(|| t.working_dir.clone()),
        stdin: with_stdin,
        timeout_ms: args.timeout.map(|s| s.saturating_mul(1000)),
    };
    let exec_start = Instant::now();
    let stdin: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>> =
        with_stdin.then(|| Box::new(tokio::io::stdin()) as _);
    let (tx, mut rx) = mpsc::channel(16);
    let printer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        let mut err = tokio::io::stderr();
        while let Some(chunk) = rx.recv().await {
            let _ = match chunk {
                ExecOutput::Stdout(b) => out.write_all(&b).await.and(out.flush().await),
                ExecOutput::Stderr(b) => err.write_all(&b).await,
            };
        }
    });
    let status = vm.exec(request, stdin, tx).await;
    let _ = printer.await;
    let exec_time = exec_start.elapsed();
    let status = status
        .with_context(|| format!("running the command in the sandbox ({})", vm.vmm_report()))?;
    for (guest, local) in &args.copy_out {
        copy_out(&vm, guest, Path::new(local)).await?;
    }
    let vmm_exit = vm.shutdown(SHUTDOWN_TIMEOUT).await?;
    if vmm_exit.status.is_none() {
        eprintln!("kiln: the VM did not power off within {SHUTDOWN_TIMEOUT:?}; killed it");
    }

    if args.timings {
        let boot = vmm_exit
            .timings()
            .and_then(|t| t.kernel_boot())
            .map_or_else(|| "unknown".to_string(), ms);
        eprintln!(
            "kiln timings: spawn -> agent ready {}, kernel boot (entry -> userspace) {boot}, exec round trip {} (in guest {} ms)",
            ms(ready),
            ms(exec_time),
            status.duration_ms
        );
    }
    if status.truncated {
        eprintln!("kiln: output truncated at the output cap (--max-output)");
    }
    if status.oom_killed {
        eprintln!("kiln: the command ran out of memory and was killed (out-of-memory)");
    }
    if status.timed_out {
        eprintln!(
            "kiln: command timed out after {} s; its process group was killed",
            args.timeout.unwrap_or_default()
        );
        return Ok(ExitCode::from(EXIT_TIMED_OUT));
    }
    Ok(match (status.code, status.signal) {
        (Some(code), _) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + (sig & 0x7f)).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_env;

    #[test]
    fn env_parsing() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), String::new())));
        assert!(parse_env("novalue").is_err());
        assert!(parse_env("=x").is_err());
    }
}
