//! Pools and sandboxes in this process (each VM is still its own kiln-vmm
//! process): create a sandbox from the warm pool, run Python in it, move a
//! file in and out, delete it.
//!
//! ```text
//! cargo run -p kiln --example embedded [STATE_DIR]
//! ```
//! Needs a host whose KVM can boot Linux and the staged artifacts
//! (`tools/build-artifacts`, or `KILN_ARTIFACTS`).

use std::time::Duration;

use kiln::model::SandboxSpec;
use kiln::{Config, Kiln};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = Config::default();
    if let Some(dir) = std::env::args_os().nth(1) {
        config.state_dir = dir.into();
    }
    let kiln = Kiln::embedded(config).await?;
    let result = run(&kiln).await;
    // Drains: every VM stops.
    kiln.shutdown().await;
    result
}

async fn run(kiln: &Kiln) -> anyhow::Result<()> {
    let sandbox = kiln
        .sandboxes()
        .create(SandboxSpec {
            env: [("GREETING".into(), "hello".into())].into(),
            ..SandboxSpec::default()
        })
        .await?;
    println!(
        "sandbox {} ({:?})",
        sandbox.id(),
        sandbox.cached_info().launch_type
    );
    sandbox
        .files()
        .write("data.txt", std::io::Cursor::new(b"3\n4\n".to_vec()))
        .await?;
    let out = sandbox
        .exec([
            "python3",
            "-c",
            "import os; print(os.environ['GREETING'], sum(int(l) for l in open('data.txt')))",
        ])
        .timeout(Duration::from_secs(30))
        .output()
        .await?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    sandbox.delete().await?;
    Ok(())
}
