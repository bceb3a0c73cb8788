//! Snapshots through the VMM's control socket, and the resume step of a
//! VM restored from one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_agent::async_client;
use kiln_agent::protocol::Resume;
use kiln_vmm::snapshot::control::{ControlReply, ControlRequest};
use kiln_vmm::snapshot::SnapshotReport;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::disk::DISK_NAME;
use super::{VmProcess, VmProcessError, CONTROL_NAME};
use crate::agent_link::AgentError;

/// Random bytes a resume pushes into the guest's RNG.
const RESUME_SEED_BYTES: usize = 64;
/// Longest control reply read.
const MAX_REPLY_BYTES: u64 = 64 * 1024;

impl VmProcess {
    /// Snapshots the VM into its [`super::SpawnOptions::snapshot_dir`]
    /// (the guest is paused meanwhile), then lets it run on (`resume`) or
    /// stop. Host connections to the guest are dropped by the snapshot.
    ///
    /// A VM with a writable disk is snapshotted only when it stops: once
    /// the VMM has exited, its disk is copied next to the snapshot
    /// ([`super::disk::DISK_NAME`]), so every clone starts from the disk
    /// its memory remembers.
    pub async fn snapshot(
        &self,
        resume: bool,
        timeout: Duration,
    ) -> Result<SnapshotReport, VmProcessError> {
        if self.disk.is_some() && resume {
            return Err(VmProcessError::Control(
                "a VM with a writable disk can only be snapshotted when it stops (resume=false)"
                    .into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let request = ControlRequest::Snapshot { resume };
        let reply = tokio::time::timeout(timeout, self.control(&request))
            .await
            .map_err(|_| VmProcessError::Control(format!("no reply within {timeout:?}")))??;
        let report = match (reply.ok, reply.snapshot) {
            (true, Some(report)) => report,
            (_, _) => {
                return Err(VmProcessError::Control(
                    reply.error.unwrap_or_else(|| "snapshot failed".into()),
                ))
            }
        };
        if let (Some(disk), Some(dir)) = (&self.disk, &self.snapshot_dir) {
            tokio::time::timeout_at(deadline, self.wait())
                .await
                .map_err(|_| {
                    VmProcessError::Control(format!(
                        "the VM did not stop within {timeout:?} after its snapshot"
                    ))
                })?;
            let (disk, copy) = (disk.clone(), dir.join(DISK_NAME));
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_file(&copy);
                super::disk::copy(&disk, &copy)
            })
            .await
            .map_err(|e| VmProcessError::Control(format!("copying the disk: {e}")))??;
        }
        Ok(report)
    }

    async fn control(&self, request: &ControlRequest) -> Result<ControlReply, VmProcessError> {
        let err = |what: &str, e: std::io::Error| VmProcessError::Control(format!("{what}: {e}"));
        let path = self.dir.join(CONTROL_NAME);
        let mut stream = UnixStream::connect(&path)
            .await
            .map_err(|e| err(&path.display().to_string(), e))?;
        let mut line = serde_json::to_vec(request).map_err(|e| err("encode", e.into()))?;
        line.push(b'\n');
        stream.write_all(&line).await.map_err(|e| err("send", e))?;
        let mut reply = Vec::new();
        BufReader::new(stream.take(MAX_REPLY_BYTES))
            .read_until(b'\n', &mut reply)
            .await
            .map_err(|e| err("read", e))?;
        serde_json::from_slice(&reply)
            .map_err(|e| VmProcessError::Control(format!("bad reply: {e}")))
    }

    /// Tells a restored guest it is a new machine: a fresh seed for its
    /// RNG and the host's time for its clock.
    pub(super) async fn resume_guest(&self, timeout: Duration) -> Result<(), VmProcessError> {
        let mut seed = vec![0u8; RESUME_SEED_BYTES];
        getrandom::fill(&mut seed)
            .map_err(|e| VmProcessError::Control(format!("no host randomness: {e}")))?;
        let unix_time_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut conn = self.agent.connect(Some(timeout)).await?;
        async_client::resume(&mut conn, &Resume { seed, unix_time_ns })
            .await
            .map_err(|e| VmProcessError::Agent(AgentError::Agent(e)))
    }
}
