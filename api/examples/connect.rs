//! The same calls against a running `kiln serve` daemon: create, stream an
//! exec's events as they happen, delete.
//!
//! ```text
//! kiln serve &                                   # or with --socket PATH
//! cargo run -p kiln --example connect [SOCKET]
//! ```

use futures_util::StreamExt;
use kiln::model::{ExecEvent, SandboxSpec};
use kiln::Kiln;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let socket = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("KILN_SOCKET").map(Into::into))
        .unwrap_or_else(|| kiln::Config::default().socket_path());
    let kiln = Kiln::connect_unix(&socket).await?;
    let sandbox = kiln.sandboxes().create(SandboxSpec::default()).await?;
    println!("sandbox {}", sandbox.id());
    let mut exec = sandbox
        .exec(["sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 1; done"])
        .spawn()
        .await?;
    while let Some(event) = exec.next().await {
        match event? {
            ExecEvent::Stdout { data, data_b64, .. } => {
                print!(
                    "{}",
                    String::from_utf8_lossy(&ExecEvent::bytes(&data, &data_b64))
                );
            }
            ExecEvent::Exited { result, .. } => println!("exited: {:?}", result.exit_code),
            _ => {}
        }
    }
    sandbox.delete().await?;
    Ok(())
}
