//! `kiln audit`: the audit trail as a table (or JSON).

use std::process::ExitCode;

use anyhow::{bail, Result};
use kiln::model::{AuditFilter, AuditKind, AuditOutcome, AuditRecord};

use super::client::Conn;
use super::output;

/// `kiln audit`.
#[derive(clap::Args)]
pub struct AuditArgs {
    /// Only this sandbox.
    #[arg(long)]
    sandbox: Option<String>,
    /// Only records this recent (`90s`, `10m`, `2h`, `7d`) or since this
    /// time (ms since the epoch).
    #[arg(long, value_parser = parse_since)]
    since: Option<u64>,
    /// Only this kind (create, delete, end, exec, exec_end, stdin, signal,
    /// file_write, file_read, mkdir, rename, remove, patch, pool_change,
    /// token_denied).
    #[arg(long)]
    kind: Option<String>,
    /// At most this many, the newest (default 1000).
    #[arg(long)]
    limit: Option<u32>,
}

/// `10m` ago (s, m, h, d) or a time in ms since the epoch, as ms since
/// the epoch.
fn parse_since(s: &str) -> Result<u64, String> {
    since_at(s, kiln::model::now_ms())
}

fn since_at(s: &str, now_ms: u64) -> Result<u64, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let unit = match s.chars().last() {
        Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        _ => {
            return Err(format!(
                "{s:?}: expected 90s, 10m, 2h, 7d or ms since the epoch"
            ))
        }
    };
    let n: u64 = s[..s.len() - 1]
        .parse()
        .map_err(|_| format!("{s:?}: expected a number before the unit"))?;
    Ok(now_ms.saturating_sub(n.saturating_mul(unit * 1000)))
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of ms since the epoch.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to the civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn who(r: &AuditRecord) -> String {
    match (&r.subject, r.uid) {
        (Some(s), _) => format!("token:{s}"),
        (None, Some(uid)) => format!("uid:{uid}"),
        (None, None) => "-".into(),
    }
}

fn what(r: &AuditRecord) -> String {
    let w = &r.what;
    let mut parts = Vec::new();
    if let Some(e) = &w.exec_id {
        parts.push(e.clone());
    }
    if let Some(argv) = &w.argv {
        parts.push(argv.join(" "));
    }
    if let Some(p) = &w.path {
        parts.push(p.clone());
    }
    if let Some(b) = w.bytes {
        parts.push(format!("{b} bytes"));
    }
    if let Some(s) = w.signal {
        parts.push(format!("signal {s}"));
    }
    if let Some(d) = &w.detail {
        parts.push(d.clone());
    }
    parts.join(" ")
}

fn result(r: &AuditRecord) -> String {
    let x = &r.result;
    let mut s = match x.outcome {
        AuditOutcome::Ok => "ok".to_string(),
        AuditOutcome::Error => "error".to_string(),
        AuditOutcome::Denied => "denied".to_string(),
    };
    if let Some(code) = x.exit_code {
        s.push_str(&format!(" exit {code}"));
    }
    if let Some(sig) = x.exit_signal {
        s.push_str(&format!(" signal {sig}"));
    }
    if let Some(ms) = x.duration_ms {
        s.push_str(&format!(" {ms}ms"));
    }
    if let Some(reason) = &x.reason {
        s.push_str(&format!(": {reason}"));
    }
    s
}

/// Prints the audit records that match.
pub async fn audit(conn: &Conn, a: AuditArgs) -> Result<ExitCode> {
    let kind = match a.kind {
        Some(k) => Some(k.parse::<AuditKind>()?),
        None => None,
    };
    if a.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let kiln = conn.connect().await?;
    let records = kiln
        .audit(AuditFilter {
            sandbox: a.sandbox,
            since: a.since,
            kind,
            limit: a.limit,
        })
        .await?;
    if conn.json {
        output::json(&records)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                utc(r.at_ms),
                who(r),
                r.sandbox_id.clone().unwrap_or_else(|| "-".into()),
                r.kind.as_str().into(),
                what(r),
                result(r),
            ]
        })
        .collect();
    output::table(
        &["TIME (UTC)", "WHO", "SANDBOX", "KIND", "WHAT", "RESULT"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_or_times() {
        assert_eq!(since_at("1700000000000", 5), Ok(1_700_000_000_000));
        assert_eq!(since_at("90s", 100_000), Ok(10_000));
        assert_eq!(since_at("1m", 100_000), Ok(40_000));
        assert_eq!(since_at("2h", 10_000_000), Ok(2_800_000));
        assert_eq!(since_at("1d", 1), Ok(0));
        for bad in ["", "m", "10x", "1.5h"] {
            assert!(since_at(bad, 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20");
    }
}
