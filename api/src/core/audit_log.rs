//! The audit trail: `<state dir>/audit.db`, one append-only SQLite table
//! (a trigger refuses every UPDATE; rows go only by the retention bound).
//! A database of its own rather than a table in `kiln.db`: every exec and
//! file transfer appends here, and these writes and the periodic pruning
//! must not queue behind the state database's one connection; the file
//! can also be copied or shipped alone.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection};

use crate::model::{AuditFilter, AuditRecord, AUDIT_LIMIT};

/// Audit database failures.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuditError {
    /// SQLite failed.
    #[error("audit database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored record does not parse.
    #[error("audit database record: {0}")]
    Json(#[from] serde_json::Error),
    /// The database file cannot be created.
    #[error("creating the audit database: {0}")]
    Create(#[source] std::io::Error),
}

impl From<AuditError> for crate::Error {
    fn from(e: AuditError) -> Self {
        crate::Error::Internal(e.to_string())
    }
}

type Result<T> = std::result::Result<T, AuditError>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, sandbox_id TEXT,
    kind TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_sandbox ON audit (sandbox_id, id);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at_ms);
CREATE TRIGGER IF NOT EXISTS audit_append_only BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
";

fn db_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The audit database.
pub(crate) struct AuditLog {
    conn: Mutex<Connection>,
}

impl AuditLog {
    /// Opens (creating, owner-only: records hold argv and paths) the
    /// database at `path`. SQLite gives its journal files the same mode.
    pub fn open(path: &Path) -> Result<Self> {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(AuditError::Create)?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Self::with_conn(conn)
    }

    /// An in-memory database (tests).
    #[cfg(test)]
    pub fn in_memory() -> Self {
        Self::with_conn(Connection::open_in_memory().expect("in-memory sqlite")).expect("schema")
    }

    fn with_conn(conn: Connection) -> Result<Self> {
        conn.execute_batch(SCHEMA)?;
        Ok(AuditLog {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    /// Appends `record` (its `id` is assigned here); returns the id.
    pub fn append(&self, record: &AuditRecord) -> Result<u64> {
        let json = serde_json::to_string(record)?;
        self.with(|c| {
            c.prepare_cached(
                "INSERT INTO audit (at_ms, sandbox_id, kind, record) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                db_i64(record.at_ms),
                record.sandbox_id,
                record.kind.as_str(),
                json
            ])?;
            Ok(u64::try_from(c.last_insert_rowid()).unwrap_or_default())
        })
    }

    /// The newest records that pass `filter`, oldest first.
    pub fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let limit = filter
            .limit
            .unwrap_or(AUDIT_LIMIT.0)
            .clamp(1, AUDIT_LIMIT.1);
        let mut rows = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, record FROM audit
                 WHERE (?1 IS NULL OR sandbox_id = ?1) AND (?2 IS NULL OR at_ms >= ?2)
                   AND (?3 IS NULL OR kind = ?3)
                 ORDER BY id DESC LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![
                    filter.sandbox,
                    filter.since.map(db_i64),
                    filter.kind.map(|k| k.as_str()),
                    limit
                ],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )?;
            rows.map(|r| {
                let (id, json) = r?;
                let mut record: AuditRecord = serde_json::from_str(&json)?;
                record.id = u64::try_from(id).unwrap_or_default();
                Ok(record)
            })
            .collect::<Result<Vec<_>>>()
        })?;
        rows.reverse();
        Ok(rows)
    }

    /// The retention bound: drops records older than `before_ms`, then the
    /// oldest beyond the newest `max_rows`. Returns how many went.
    pub fn prune(&self, max_rows: u64, before_ms: u64) -> Result<usize> {
        self.with(|c| {
            let old = c
                .prepare_cached("DELETE FROM audit WHERE at_ms < ?1")?
                .execute(params![db_i64(before_ms)])?;
            let over = c
                .prepare_cached("DELETE FROM audit WHERE id <= (SELECT max(id) FROM audit) - ?1")?
                .execute(params![db_i64(max_rows)])?;
            Ok(old + over)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AuditKind, AuditResult, AuditWhat};

    fn record(at_ms: u64, sandbox: &str, kind: AuditKind) -> AuditRecord {
        AuditRecord {
            id: 0,
            at_ms,
            uid: Some(1000),
            subject: None,
            sandbox_id: Some(sandbox.into()),
            kind,
            what: AuditWhat::default(),
            result: AuditResult::ok(),
        }
    }

    #[test]
    fn append_and_filter() {
        let log = AuditLog::in_memory();
        log.append(&record(10, "a", AuditKind::Create)).expect("1");
        log.append(&record(20, "a", AuditKind::Exec)).expect("2");
        log.append(&record(30, "b", AuditKind::Exec)).expect("3");
        let ids = |f: AuditFilter| -> Vec<u64> {
            log.query(&f).expect("query").iter().map(|r| r.id).collect()
        };
        assert_eq!(ids(AuditFilter::default()), [1, 2, 3]);
        let sandbox_a = AuditFilter {
            sandbox: Some("a".into()),
            ..AuditFilter::default()
        };
        assert_eq!(ids(sandbox_a), [1, 2]);
        let execs = AuditFilter {
            kind: Some(AuditKind::Exec),
            ..AuditFilter::default()
        };
        assert_eq!(ids(execs), [2, 3]);
        let since = AuditFilter {
            since: Some(20),
            ..AuditFilter::default()
        };
        assert_eq!(ids(since), [2, 3]);
        let newest = AuditFilter {
            limit: Some(2),
            ..AuditFilter::default()
        };
        assert_eq!(ids(newest), [2, 3]);
        let r = &log.query(&AuditFilter::default()).expect("all")[0];
        assert_eq!(
            (r.uid, r.kind, r.at_ms),
            (Some(1000), AuditKind::Create, 10)
        );
    }

    #[test]
    fn the_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("kiln-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("audit.db");
        let log = AuditLog::open(&path).expect("open");
        log.append(&record(1, "a", AuditKind::Create))
            .expect("append");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(log);
        assert_eq!(
            AuditLog::open(&path)
                .expect("reopen")
                .query(&AuditFilter::default())
                .expect("query")
                .len(),
            1
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn records_cannot_be_changed() {
        let log = AuditLog::in_memory();
        log.append(&record(10, "a", AuditKind::Create)).expect("1");
        let err = log
            .with(|c| {
                Ok(c.prepare_cached("UPDATE audit SET kind = 'exec'")?
                    .execute([])?)
            })
            .expect_err("append-only");
        assert!(err.to_string().contains("append-only"), "{err}");
    }

    #[test]
    fn retention_by_age_and_by_rows() {
        let log = AuditLog::in_memory();
        for at in 1..=10 {
            log.append(&record(at * 100, "a", AuditKind::Exec))
                .expect("append");
        }
        // Older than 300 ms: 100 and 200 go.
        assert_eq!(log.prune(100, 300).expect("prune"), 2);
        // The newest 3 stay.
        assert_eq!(log.prune(3, 0).expect("prune"), 5);
        let left: Vec<u64> = log
            .query(&AuditFilter::default())
            .expect("query")
            .iter()
            .map(|r| r.at_ms)
            .collect();
        assert_eq!(left, [800, 900, 1000]);
        // New ids keep growing after a prune.
        let id = log
            .append(&record(1100, "a", AuditKind::Exec))
            .expect("append");
        assert_eq!(id, 11);
    }
}
