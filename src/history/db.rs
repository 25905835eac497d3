//! The two backends behind one type: SQLite (a file, WAL journal) or PostgreSQL, both through
//! sqlx pools that connect lazily, so a database that is down at start-up is retried by the
//! writer rather than refused. The schema is the same on both but for the few words the two
//! dialects spell differently (auto-increment keys, blobs); every query after it is the same
//! SQL, written once and run through `on_pool!`. Nothing here logs a URL or a password.

use super::HistoryError;
use crate::config::HistoryConfig;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;

/// How long one read of history may take, from asking the pool for a connection to the last
/// row: past it the read fails with `HistoryError::TimedOut`. PostgreSQL read connections
/// carry the same `statement_timeout`, so the server stops too.
pub const READ_TIME_LIMIT: Duration = Duration::from_secs(2);

/// Schema version stored in `meta`; a newer one found in the database is refused.
pub const SCHEMA_VERSION: i64 = 2;

/// A pool on either backend.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's pool: the same SQL on both.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::history::db::Db::Sqlite($pool) => $body,
            $crate::history::db::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

const SQLITE_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checks (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS instances (id INTEGER PRIMARY KEY, check_id BIGINT NOT NULL, \
     address TEXT NOT NULL, UNIQUE (check_id, address))",
    "CREATE TABLE IF NOT EXISTS runs (check_id BIGINT NOT NULL, at_ms BIGINT NOT NULL, \
     outcome SMALLINT NOT NULL, detail BLOB NOT NULL, PRIMARY KEY (check_id, at_ms)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS rollups (tier SMALLINT NOT NULL, check_id BIGINT NOT NULL, \
     instance_id BIGINT NOT NULL, bucket BIGINT NOT NULL, runs BIGINT NOT NULL, \
     down BIGINT NOT NULL, unmeasured BIGINT NOT NULL, hist BLOB NOT NULL, \
     PRIMARY KEY (tier, check_id, instance_id, bucket)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS transitions (check_id BIGINT NOT NULL, at_ms BIGINT NOT NULL, \
     from_state TEXT NOT NULL, to_state TEXT NOT NULL, \
     failing BIGINT NOT NULL, instances BIGINT NOT NULL, PRIMARY KEY (check_id, at_ms))",
    "CREATE TABLE IF NOT EXISTS incidents (id INTEGER PRIMARY KEY, check_id BIGINT NOT NULL, \
     started_ms BIGINT NOT NULL, confirmed_ms BIGINT NOT NULL, ended_ms BIGINT, \
     interrupted SMALLINT NOT NULL DEFAULT 0, cause TEXT NOT NULL, \
     episode_id TEXT, severity TEXT, end_reason TEXT)",
    "CREATE INDEX IF NOT EXISTS incidents_by_check ON incidents (check_id, started_ms)",
    "CREATE INDEX IF NOT EXISTS incidents_by_start ON incidents (started_ms)",
];

/// What version 2 added (failure episodes shared with notifications): run on a version 1
/// database before the statements after it.
const MIGRATE_TO_2: &[&str] = &[
    "ALTER TABLE incidents ADD COLUMN episode_id TEXT",
    "ALTER TABLE incidents ADD COLUMN severity TEXT",
    "ALTER TABLE incidents ADD COLUMN end_reason TEXT",
];

/// Indexes on columns a migration may have added: created after it.
const LATE_INDEXES: &[&str] =
    &["CREATE UNIQUE INDEX IF NOT EXISTS incidents_by_episode ON incidents (episode_id)"];

const POSTGRES_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checks (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS instances (id BIGSERIAL PRIMARY KEY, check_id BIGINT NOT NULL, \
     address TEXT NOT NULL, UNIQUE (check_id, address))",
    "CREATE TABLE IF NOT EXISTS runs (check_id BIGINT NOT NULL, at_ms BIGINT NOT NULL, \
     outcome SMALLINT NOT NULL, detail BYTEA NOT NULL, PRIMARY KEY (check_id, at_ms))",
    "CREATE TABLE IF NOT EXISTS rollups (tier SMALLINT NOT NULL, check_id BIGINT NOT NULL, \
     instance_id BIGINT NOT NULL, bucket BIGINT NOT NULL, runs BIGINT NOT NULL, \
     down BIGINT NOT NULL, unmeasured BIGINT NOT NULL, hist BYTEA NOT NULL, \
     PRIMARY KEY (tier, check_id, instance_id, bucket))",
    "CREATE TABLE IF NOT EXISTS transitions (check_id BIGINT NOT NULL, at_ms BIGINT NOT NULL, \
     from_state TEXT NOT NULL, to_state TEXT NOT NULL, \
     failing BIGINT NOT NULL, instances BIGINT NOT NULL, PRIMARY KEY (check_id, at_ms))",
    "CREATE TABLE IF NOT EXISTS incidents (id BIGSERIAL PRIMARY KEY, check_id BIGINT NOT NULL, \
     started_ms BIGINT NOT NULL, confirmed_ms BIGINT NOT NULL, ended_ms BIGINT, \
     interrupted SMALLINT NOT NULL DEFAULT 0, cause TEXT NOT NULL, \
     episode_id TEXT, severity TEXT, end_reason TEXT)",
    "CREATE INDEX IF NOT EXISTS incidents_by_check ON incidents (check_id, started_ms)",
    "CREATE INDEX IF NOT EXISTS incidents_by_start ON incidents (started_ms)",
];

impl Db {
    /// A pool that connects on first use.
    pub fn lazy(config: &HistoryConfig) -> Result<Db, HistoryError> {
        match &config.url {
            Some(url) => {
                let mut options = PgConnectOptions::from_str(url)
                    .map_err(|error| HistoryError::Url(redact(&error.to_string())))?
                    .application_name("bastion");
                if let Some(path) = &config.password_file {
                    let password = std::fs::read_to_string(path).map_err(|source| {
                        HistoryError::PasswordFile {
                            path: path.display().to_string(),
                            source,
                        }
                    })?;
                    options = options.password(password.trim_end_matches(['\r', '\n']));
                }
                Ok(Db::Postgres(
                    PgPoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(Duration::from_secs(5))
                        .connect_lazy_with(options),
                ))
            }
            None => {
                let options = SqliteConnectOptions::new()
                    .filename(&config.path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .auto_vacuum(SqliteAutoVacuum::Incremental)
                    .busy_timeout(Duration::from_secs(5));
                Ok(Db::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(Duration::from_secs(5))
                        .connect_lazy_with(options),
                ))
            }
        }
    }

    /// A second pool on the same database for reads (the API and the pages), so that reads
    /// never queue behind the writer's connections, and every read is bounded: PostgreSQL
    /// connections carry `statement_timeout`, SQLite ones a busy timeout, both
    /// `READ_TIME_LIMIT`, and a connection is waited for no longer. It never creates the
    /// database (reads start once the writer has opened it), and opening a SQLite read
    /// connection takes no lock a writer could hold.
    pub fn for_reading(&self) -> Db {
        let limit = READ_TIME_LIMIT;
        match self {
            Db::Sqlite(pool) => {
                // Only what a reader needs: the writer's `auto_vacuum` pragma takes the write
                // lock when a connection opens, so a reader opened during a long write
                // transaction would wait for it.
                let options = SqliteConnectOptions::new()
                    .filename(pool.connect_options().get_filename())
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(limit);
                Db::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(limit)
                        .connect_lazy_with(options),
                )
            }
            Db::Postgres(pool) => {
                let options = (*pool.connect_options())
                    .clone()
                    .options([("statement_timeout", limit.as_millis())]);
                Db::Postgres(
                    PgPoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(limit)
                        .connect_lazy_with(options),
                )
            }
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Creates the tables when missing, brings an older schema up to this version, and
    /// refuses a newer one.
    pub async fn ensure_schema(&self) -> Result<(), HistoryError> {
        let statements = match self {
            Db::Sqlite(_) => SQLITE_SCHEMA,
            Db::Postgres(_) => POSTGRES_SCHEMA,
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for statement in statements {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            // A new database is created at this version; an old one keeps the one it had.
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ('schema_version', $1) ON CONFLICT (key) DO NOTHING",
            )
            .bind(SCHEMA_VERSION)
            .execute(&mut *tx)
            .await?;
            let found: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'schema_version'")
                .fetch_one(&mut *tx)
                .await?;
            if found > SCHEMA_VERSION {
                return Err(HistoryError::BadQuery(format!(
                    "the history database has schema version {found}, newer than this build's {SCHEMA_VERSION}; use a newer bastion or another database"
                )));
            }
            if found < 2 {
                for statement in MIGRATE_TO_2 {
                    sqlx::query(statement).execute(&mut *tx).await?;
                }
                tracing::info!(from = found, to = SCHEMA_VERSION, "history database schema upgraded");
            }
            for statement in LATE_INDEXES {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE meta SET value = $1 WHERE key = 'schema_version'")
                .bind(SCHEMA_VERSION)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await);
    }
}

/// Drops the user information (`user:password@`) of every URL in a text that may quote one,
/// and the value of any `password=` parameter: error texts of the database driver can quote
/// the URL they were given.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme) = rest.find("://") {
        let (head, tail) = rest.split_at(scheme + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        // The last `@` ends the user information: a password may hold an unencoded `@`.
        match authority.rfind('@') {
            Some(at) => {
                out.push('…');
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    redact_password_parameters(&out)
}

fn redact_password_parameters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.to_ascii_lowercase().find("password=") {
        let (head, tail) = rest.split_at(at + "password=".len());
        out.push_str(head);
        out.push('…');
        let end = tail
            .find(|c: char| c == '&' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_drops_user_information_and_password_parameters() {
        assert_eq!(
            redact("cannot connect to postgres://u:p@ss@db:5432/h: refused"),
            "cannot connect to postgres://…@db:5432/h: refused"
        );
        assert_eq!(
            redact("user@example: postgres://bastion:secret@db/h and http://x/y"),
            "user@example: postgres://…@db/h and http://x/y"
        );
        assert_eq!(
            redact("postgres://db/h?sslmode=disable&Password=s3cret&x=1"),
            "postgres://db/h?sslmode=disable&Password=…&x=1"
        );
        assert_eq!(redact("no url here"), "no url here");
    }
}
