//! The daemon's state in SQLite (bundled) under the state dir: VMs (for
//! re-adoption), sandboxes and their tombstones, pool targets, execs,
//! idempotency keys and the event feed (the audit trail has a database of
//! its own, `audit_log.rs`). Records are JSON in one column each: the
//! schema stays small, the types stay in Rust.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::model::{Event, ExecResult, SandboxInfo};
use crate::vm_process::{AgentAddr, ProcessIdentity};
use crate::Error;

/// Store failures (always a daemon fault for the API).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// SQLite failed.
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored record does not parse.
    #[error("state database record: {0}")]
    Json(#[from] serde_json::Error),
    /// The database file could not be created owner-only.
    #[error("state database file: {0}")]
    File(#[source] std::io::Error),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Internal(e.to_string())
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// Where a VM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum VmPhase {
    /// Booting.
    Booting,
    /// Ready in its pool.
    Pooled,
    /// Serving a sandbox.
    Claimed,
}

/// What the daemon must remember of a VM to re-adopt it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VmRow {
    /// VM id.
    pub id: String,
    /// Template.
    pub template: String,
    /// Process identity (pid + start time).
    pub identity: ProcessIdentity,
    /// Run directory.
    pub run_dir: std::path::PathBuf,
    /// Agent address.
    pub agent: AgentAddr,
    /// Guest memory, MiB.
    pub mem_mib: u64,
    /// Phase.
    pub phase: VmPhase,
    /// Sandbox it serves.
    pub sandbox_id: Option<String>,
    /// When it became ready, ms since the epoch.
    pub ready_at_ms: Option<u64>,
}

/// An exec as stored: what ties the daemon's exec id to the agent's
/// process (kept across daemon restarts), and its result once seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExecRecord {
    /// Exec id.
    pub id: String,
    /// Sandbox.
    pub sandbox_id: String,
    /// Program.
    pub argv: Vec<String>,
    /// Started, ms since the epoch.
    pub started_at_ms: u64,
    /// The result once it ended.
    pub result: Option<ExecResult>,
    /// The agent's id of the process (`None` in records written before
    /// execs were agent processes).
    #[serde(default)]
    pub agent_id: Option<u64>,
    /// The program's timeout, ms.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The agent forgot the process before the daemon saw it end.
    #[serde(default)]
    pub gone: bool,
    /// Who started it: a socket peer's uid...
    #[serde(default)]
    pub uid: Option<u32>,
    /// ... or a token's subject (the audit trail names them with its end).
    #[serde(default)]
    pub subject: Option<String>,
}

/// What an idempotency key says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reservation {
    /// First use: go ahead (and complete or release it).
    New,
    /// Done before with the same body: this resource.
    Replay(String),
    /// A request with this key is still running.
    InFlight,
    /// Used before with another body.
    Mismatch,
}

/// The database.
pub(crate) struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS vms (id TEXT PRIMARY KEY, row TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY, info TEXT NOT NULL, ended INTEGER NOT NULL, ended_at_ms INTEGER);
CREATE TABLE IF NOT EXISTS pools (template TEXT PRIMARY KEY, target INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS execs (id TEXT PRIMARY KEY, sandbox_id TEXT NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, body_hash TEXT NOT NULL, resource_id TEXT,
    created_at_ms INTEGER NOT NULL, PRIMARY KEY (scope, key));
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS egress_usage (sandbox_id TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
";

/// Events kept for `GET /v1/events?after_seq=` (older ones are trimmed).
const EVENTS_KEPT: i64 = 100_000;

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    Ok(serde_json::to_string(v)?)
}

fn from_json<T: DeserializeOwned>(s: &str) -> Result<T> {
    Ok(serde_json::from_str(s)?)
}

impl Store {
    /// Opens (creating) the database at `path`.
    /// Owner-only (it holds sandbox labels, argv and agent addresses),
    /// also when an older kiln created it with the default mode; SQLite
    /// gives its journal files the same mode.
    pub fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(StoreError::File)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(StoreError::File)?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// An in-memory database (tests).
    #[cfg(test)]
    pub fn in_memory() -> Self {
        let conn = Connection::open_in_memory().expect("in-memory sqlite");
        conn.execute_batch(SCHEMA).expect("schema");
        Store {
            conn: Mutex::new(conn),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    /// Inserts or replaces a VM.
    pub fn put_vm(&self, row: &VmRow) -> Result<()> {
        let json = to_json(row)?;
        self.with(|c| {
            c.prepare_cached("INSERT OR REPLACE INTO vms (id, row) VALUES (?1, ?2)")?
                .execute(params![row.id, json])?;
            Ok(())
        })
    }

    /// Forgets a VM.
    pub fn delete_vm(&self, id: &str) -> Result<()> {
        self.with(|c| {
            c.prepare_cached("DELETE FROM vms WHERE id = ?1")?
                .execute(params![id])?;
            Ok(())
        })
    }

    /// Every VM.
    pub fn vms(&self) -> Result<Vec<VmRow>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT row FROM vms ORDER BY id")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|r| from_json(&r?)).collect()
        })
    }

    /// Inserts or replaces a sandbox (a tombstone when it has ended).
    pub fn put_sandbox(&self, info: &SandboxInfo) -> Result<()> {
        let json = to_json(info)?;
        let ended = i64::from(info.end_reason.is_some());
        let ended_at = info
            .ended_at_ms
            .map(|t| i64::try_from(t).unwrap_or(i64::MAX));
        self.with(|c| {
            c.prepare_cached("INSERT OR REPLACE INTO sandboxes (id, info, ended, ended_at_ms) VALUES (?1, ?2, ?3, ?4)")?.execute(params![info.id, json, ended, ended_at],
            )?;
            Ok(())
        })
    }

    /// One sandbox or tombstone.
    pub fn sandbox(&self, id: &str) -> Result<Option<SandboxInfo>> {
        self.with(|c| {
            let json: Option<String> = c
                .query_row(
                    "SELECT info FROM sandboxes WHERE id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()?;
            json.map(|j| from_json(&j)).transpose()
        })
    }

    /// Sandboxes, live ones only or tombstones only.
    pub fn sandboxes(&self, ended: bool) -> Result<Vec<SandboxInfo>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT info FROM sandboxes WHERE ended = ?1 ORDER BY id")?;
            let rows = stmt.query_map(params![i64::from(ended)], |r| r.get::<_, String>(0))?;
            rows.map(|r| from_json(&r?)).collect()
        })
    }

    /// Drops tombstones (and their execs) that ended before `before_ms`.
    pub fn purge_tombstones(&self, before_ms: u64) -> Result<usize> {
        let before = i64::try_from(before_ms).unwrap_or(i64::MAX);
        self.with(|c| {
            for table in ["execs", "egress_usage"] {
                c.execute(
                    &format!(
                        "DELETE FROM {table} WHERE sandbox_id IN
                           (SELECT id FROM sandboxes WHERE ended = 1 AND ended_at_ms < ?1)"
                    ),
                    params![before],
                )?;
            }
            Ok(
                c.prepare_cached("DELETE FROM sandboxes WHERE ended = 1 AND ended_at_ms < ?1")?
                    .execute(params![before])?,
            )
        })
    }

    /// Records that sandbox `id` has moved `bytes` through its egress
    /// proxy in all (a total: it never goes down).
    pub fn set_egress_used(&self, id: &str, bytes: u64) -> Result<()> {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.with(|c| {
            c.prepare_cached(
                "INSERT INTO egress_usage (sandbox_id, bytes) VALUES (?1, ?2)
                 ON CONFLICT (sandbox_id) DO UPDATE SET bytes = max(bytes, excluded.bytes)",
            )?
            .execute(params![id, bytes])?;
            Ok(())
        })
    }

    /// Bytes sandbox `id` has moved through its egress proxy (0 if none).
    pub fn egress_used(&self, id: &str) -> Result<u64> {
        self.with(|c| {
            let bytes: Option<i64> = c
                .query_row(
                    "SELECT bytes FROM egress_usage WHERE sandbox_id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(bytes.map_or(0, |b| u64::try_from(b).unwrap_or(0)))
        })
    }

    /// Sets a pool's target.
    pub fn set_pool_target(&self, template: &str, target: u32) -> Result<()> {
        self.with(|c| {
            c.prepare_cached("INSERT OR REPLACE INTO pools (template, target) VALUES (?1, ?2)")?
                .execute(params![template, target])?;
            Ok(())
        })
    }

    /// Pool targets set through the API (they win over the config).
    pub fn pool_targets(&self) -> Result<Vec<(String, u32)>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT template, target FROM pools")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Inserts or updates an exec (an update keeps its place in the
    /// sandbox's order).
    pub fn put_exec(&self, e: &ExecRecord) -> Result<()> {
        let json = to_json(e)?;
        self.with(|c| {
            c.prepare_cached(
                "INSERT INTO execs (id, sandbox_id, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            )?
            .execute(params![e.id, e.sandbox_id, json])?;
            Ok(())
        })
    }

    /// The newest `limit` execs of a sandbox, newest first.
    pub fn execs_of(&self, sandbox_id: &str, limit: u32) -> Result<Vec<ExecRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT record FROM execs WHERE sandbox_id = ?1 ORDER BY rowid DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![sandbox_id, limit], |r| r.get::<_, String>(0))?;
            rows.map(|r| from_json(&r?)).collect()
        })
    }

    /// A sandbox's execs whose end the daemon has not seen yet, oldest
    /// first.
    pub fn unfinished_execs(&self, sandbox_id: &str) -> Result<Vec<ExecRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT record FROM execs WHERE sandbox_id = ?1
                   AND json_extract(record, '$.result') IS NULL
                   AND json_extract(record, '$.agent_id') IS NOT NULL
                   AND NOT coalesce(json_extract(record, '$.gone'), 0)
                 ORDER BY rowid",
            )?;
            let rows = stmt.query_map(params![sandbox_id], |r| r.get::<_, String>(0))?;
            rows.map(|r| from_json(&r?)).collect()
        })
    }

    /// Records an exec's end (`result`, or `None`: gone) unless one is
    /// recorded already. Returns the stored record and whether this call
    /// recorded the end (exactly one call does); `None` for an unknown
    /// exec.
    pub fn settle_exec(
        &self,
        id: &str,
        result: Option<ExecResult>,
    ) -> Result<Option<(ExecRecord, bool)>> {
        self.with(|c| {
            let json: Option<String> = c
                .query_row("SELECT record FROM execs WHERE id = ?1", params![id], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(json) = json else {
                return Ok(None);
            };
            let mut record: ExecRecord = from_json(&json)?;
            if record.result.is_some() || record.gone {
                return Ok(Some((record, false)));
            }
            record.gone = result.is_none();
            record.result = result;
            c.prepare_cached("UPDATE execs SET record = ?2 WHERE id = ?1")?
                .execute(params![id, to_json(&record)?])?;
            Ok(Some((record, true)))
        })
    }

    /// One exec.
    pub fn exec(&self, id: &str) -> Result<Option<ExecRecord>> {
        self.with(|c| {
            let json: Option<String> = c
                .query_row("SELECT record FROM execs WHERE id = ?1", params![id], |r| {
                    r.get(0)
                })
                .optional()?;
            json.map(|j| from_json(&j)).transpose()
        })
    }

    /// Claims idempotency key `key` in `scope` for a request whose body
    /// hashes to `hash`.
    pub fn reserve(&self, scope: &str, key: &str, hash: &str, now_ms: u64) -> Result<Reservation> {
        self.with(|c| {
            let found: Option<(String, Option<String>)> = c
                .query_row(
                    "SELECT body_hash, resource_id FROM idempotency WHERE scope = ?1 AND key = ?2",
                    params![scope, key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(match found {
                None => {
                    c.prepare_cached("INSERT INTO idempotency (scope, key, body_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4)")?.execute(params![scope, key, hash, i64::try_from(now_ms).unwrap_or(i64::MAX)],
                    )?;
                    Reservation::New
                }
                Some((h, _)) if h != hash => Reservation::Mismatch,
                Some((_, Some(id))) => Reservation::Replay(id),
                Some((_, None)) => Reservation::InFlight,
            })
        })
    }

    /// Records the resource a reserved key produced.
    pub fn complete(&self, scope: &str, key: &str, resource_id: &str) -> Result<()> {
        self.with(|c| {
            c.prepare_cached(
                "UPDATE idempotency SET resource_id = ?3 WHERE scope = ?1 AND key = ?2",
            )?
            .execute(params![scope, key, resource_id])?;
            Ok(())
        })
    }

    /// Frees a reserved key whose request failed (a retry may use it).
    pub fn release(&self, scope: &str, key: &str) -> Result<()> {
        self.with(|c| {
            c.prepare_cached(
                "DELETE FROM idempotency WHERE scope = ?1 AND key = ?2 AND resource_id IS NULL",
            )?
            .execute(params![scope, key])?;
            Ok(())
        })
    }

    /// Drops keys older than `before_ms`, and keys left in flight by a
    /// daemon that died.
    pub fn purge_keys(&self, before_ms: u64, in_flight_too: bool) -> Result<()> {
        let before = i64::try_from(before_ms).unwrap_or(i64::MAX);
        self.with(|c| {
            c.prepare_cached(
                "DELETE FROM idempotency WHERE created_at_ms < ?1 OR (?2 AND resource_id IS NULL)",
            )?
            .execute(params![before, in_flight_too])?;
            Ok(())
        })
    }

    /// Appends an event; returns it with its sequence number.
    pub fn append_event(&self, mut event: Event) -> Result<Event> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.prepare_cached("INSERT INTO events (event) VALUES ('')")?
                .execute([])?;
            let seq = tx.last_insert_rowid();
            event.seq = u64::try_from(seq).unwrap_or_default();
            tx.prepare_cached("UPDATE events SET event = ?2 WHERE seq = ?1")?
                .execute(params![seq, to_json(&event)?])?;
            tx.prepare_cached("DELETE FROM events WHERE seq <= ?1")?
                .execute(params![seq - EVENTS_KEPT])?;
            tx.commit()?;
            Ok(event)
        })
    }

    /// Up to `limit` events after `after_seq`, oldest first.
    pub fn events_after(&self, after_seq: u64, limit: u32) -> Result<Vec<Event>> {
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT event FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            let rows = stmt.query_map(params![after, limit], |r| r.get::<_, String>(0))?;
            rows.map(|r| from_json(&r?)).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EndReason;
    use crate::model::{EventKind, LaunchType, SandboxState};

    fn info(id: &str) -> SandboxInfo {
        SandboxInfo {
            id: id.into(),
            template: "minimal".into(),
            state: SandboxState::Ready,
            launch_type: LaunchType::Warm,
            labels: [("team".to_string(), "a".to_string())].into(),
            env: Default::default(),
            cwd: None,
            egress: None,
            ttl_secs: 60,
            idle_timeout_secs: 30,
            created_at_ms: 1,
            ready_at_ms: Some(2),
            last_activity_ms: 2,
            expires_at_ms: Some(32_002),
            running_execs: 0,
            created_by_uid: Some(1000),
            ended_at_ms: None,
            end_reason: None,
        }
    }

    #[test]
    fn sandboxes_and_tombstones() {
        let s = Store::in_memory();
        s.put_sandbox(&info("a")).expect("put");
        s.put_sandbox(&info("b")).expect("put");
        let mut gone = info("b");
        gone.state = SandboxState::Ended;
        gone.end_reason = Some(EndReason::Idle);
        gone.ended_at_ms = Some(100);
        s.put_sandbox(&gone).expect("tombstone");
        assert_eq!(s.sandboxes(false).expect("live").len(), 1);
        assert_eq!(s.sandboxes(true).expect("ended"), vec![gone.clone()]);
        assert_eq!(s.sandbox("b").expect("get"), Some(gone));
        assert_eq!(s.purge_tombstones(100).expect("purge"), 0);
        assert_eq!(s.purge_tombstones(101).expect("purge"), 1);
        assert_eq!(s.sandbox("b").expect("get"), None);
        assert_eq!(s.sandbox("a").expect("get"), Some(info("a")));
    }

    #[test]
    fn egress_usage_only_grows_and_goes_with_the_tombstone() {
        let s = Store::in_memory();
        assert_eq!(s.egress_used("b").expect("none yet"), 0);
        s.set_egress_used("b", 500).expect("set");
        // A report that arrives late (a smaller total) changes nothing.
        s.set_egress_used("b", 300).expect("set");
        assert_eq!(s.egress_used("b").expect("get"), 500);
        s.set_egress_used("b", 700).expect("set");
        assert_eq!(s.egress_used("b").expect("get"), 700);
        let mut gone = info("b");
        gone.state = SandboxState::Ended;
        gone.end_reason = Some(EndReason::Idle);
        gone.ended_at_ms = Some(100);
        s.put_sandbox(&gone).expect("tombstone");
        assert_eq!(s.purge_tombstones(101).expect("purge"), 1);
        assert_eq!(s.egress_used("b").expect("purged"), 0);
    }

    #[test]
    fn vms_round_trip() {
        let s = Store::in_memory();
        let row = VmRow {
            id: "vm-1".into(),
            template: "minimal".into(),
            identity: ProcessIdentity {
                pid: 42,
                start_ticks: 7,
            },
            run_dir: "/tmp/x".into(),
            agent: AgentAddr::HybridVsock("/tmp/x/vsock.sock".into()),
            mem_mib: 256,
            phase: VmPhase::Pooled,
            sandbox_id: None,
            ready_at_ms: Some(5),
        };
        s.put_vm(&row).expect("put");
        assert_eq!(s.vms().expect("vms"), vec![row.clone()]);
        s.delete_vm("vm-1").expect("delete");
        assert!(s.vms().expect("vms").is_empty());
    }

    #[test]
    fn idempotency_keys() {
        let s = Store::in_memory();
        assert_eq!(
            s.reserve("create", "k", "h1", 1).expect("r"),
            Reservation::New
        );
        assert_eq!(
            s.reserve("create", "k", "h1", 1).expect("r"),
            Reservation::InFlight
        );
        assert_eq!(
            s.reserve("create", "k", "h2", 1).expect("r"),
            Reservation::Mismatch
        );
        s.complete("create", "k", "sbx-1").expect("complete");
        assert_eq!(
            s.reserve("create", "k", "h1", 1).expect("r"),
            Reservation::Replay("sbx-1".into())
        );
        // Another scope is another key space.
        assert_eq!(
            s.reserve("exec:a", "k", "h9", 1).expect("r"),
            Reservation::New
        );
        s.release("exec:a", "k").expect("release");
        assert_eq!(
            s.reserve("exec:a", "k", "h8", 1).expect("r"),
            Reservation::New
        );
        s.purge_keys(2, false).expect("purge");
        assert_eq!(
            s.reserve("create", "k", "h2", 3).expect("r"),
            Reservation::New
        );
    }

    #[test]
    fn events_get_growing_sequence_numbers() {
        let s = Store::in_memory();
        let ev = |kind| Event {
            seq: 0,
            at_ms: 1,
            kind,
            sandbox_id: Some("a".into()),
            template: None,
            reason: None,
            expires_at_ms: None,
            message: None,
        };
        let a = s.append_event(ev(EventKind::Created)).expect("append");
        let b = s.append_event(ev(EventKind::Ready)).expect("append");
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(s.events_after(0, 10).expect("after"), vec![a, b.clone()]);
        assert_eq!(s.events_after(1, 10).expect("after"), vec![b]);
        assert!(s.events_after(2, 10).expect("after").is_empty());
    }

    #[test]
    fn execs_keep_their_order_and_unfinished_ones_are_found() {
        let s = Store::in_memory();
        let rec = |id: &str, agent_id| ExecRecord {
            id: id.into(),
            sandbox_id: "sbx".into(),
            agent_id,
            ..ExecRecord::default()
        };
        s.put_exec(&rec("a", Some(1))).expect("a");
        s.put_exec(&rec("b", Some(2))).expect("b");
        s.put_exec(&rec("c", None)).expect("c (an old record)");
        s.put_exec(&ExecRecord {
            sandbox_id: "other".into(),
            ..rec("d", Some(1))
        })
        .expect("d");
        let (settled, first) = s
            .settle_exec("a", Some(ExecResult::default()))
            .expect("settle")
            .expect("known");
        assert!(first && settled.result.is_some());
        let (_, again) = s.settle_exec("a", None).expect("settle").expect("known");
        assert!(!again, "an end is recorded once");
        assert!(s.settle_exec("nope", None).expect("settle").is_none());
        let ids = |v: Vec<ExecRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(s.execs_of("sbx", 10).expect("list")), ["c", "b", "a"]);
        assert_eq!(ids(s.execs_of("sbx", 1).expect("list")), ["c"]);
        assert_eq!(ids(s.unfinished_execs("sbx").expect("unfinished")), ["b"]);
        let (gone, first) = s.settle_exec("b", None).expect("settle").expect("known");
        assert!(first && gone.gone);
        assert!(s.unfinished_execs("sbx").expect("unfinished").is_empty());
        // Records from before execs were agent processes still parse.
        let old = r#"{"id":"x","sandbox_id":"sbx","argv":[],"started_at_ms":1,"result":null}"#;
        let parsed: ExecRecord = serde_json::from_str(old).expect("old record");
        assert_eq!(parsed.agent_id, None);
    }
}
