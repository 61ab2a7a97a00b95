//! The portal's state in SQL: supernodes with their viewer counts, and live streams.
//!
//! Queries are built at run time and written in the SQL that SQLite and PostgreSQL
//! share, so that an operator may move the portal to PostgreSQL later. Every change
//! is one transaction: a failed request changes nothing. Rows past their time-to-live
//! are never returned, and are pruned from time to time.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use proto::identity::PublicKey;
use proto::overlay::{NodeId, Peer, StreamId};
use proto::portal::{StreamEntry, StreamUpdate, TamperEntry, TamperReport};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

/// How long each kind of row lives without renewal, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Ttl {
    pub supernode: u64,
    pub stream: u64,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    ttl: Ttl,
}

/// Why a stream could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("stream {stream} is already published by node {owner}")]
    Taken { stream: StreamId, owner: NodeId },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl Store {
    /// Opens (creating if need be) the database at `path` and brings its schema up to
    /// date.
    pub async fn open(path: &Path, ttl: Ttl) -> anyhow::Result<Store> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!().run(&pool).await?;
        Ok(Store { pool, ttl })
    }

    /// A write transaction. It takes SQLite's write lock up front (`BEGIN IMMEDIATE`),
    /// so that one that reads before it writes waits for other writers (the busy
    /// timeout) instead of failing with "database is locked". On PostgreSQL this
    /// would be a plain `BEGIN`.
    async fn write(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    pub fn ttl(&self) -> Ttl {
        self.ttl
    }

    /// Up to `limit` live supernodes, chosen at random so that load spreads, leaving
    /// out `except`.
    pub async fn supernodes(
        &self,
        now: u64,
        limit: usize,
        except: Option<&NodeId>,
    ) -> sqlx::Result<Vec<Peer>> {
        let rows = sqlx::query(
            "SELECT id, api, rtmp FROM supernodes
             WHERE last_seen >= ? AND id <> ?
             ORDER BY RANDOM() LIMIT ?",
        )
        .bind(since(now, self.ttl.supernode))
        .bind(except.map_or("", NodeId::as_str))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().filter_map(peer_of).collect())
    }

    pub async fn supernode(&self, id: &NodeId) -> sqlx::Result<Option<Peer>> {
        let row = sqlx::query("SELECT id, api, rtmp FROM supernodes WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().and_then(peer_of))
    }

    /// Records a supernode, or renews it, with its viewer counts.
    pub async fn renew_supernode(
        &self,
        peer: &Peer,
        key: &PublicKey,
        viewers: &[(StreamId, u32)],
        now: u64,
    ) -> sqlx::Result<()> {
        let mut tx = self.write().await?;
        record_key(&mut tx, &peer.id, key, now).await?;
        sqlx::query(
            "INSERT INTO supernodes (id, api, rtmp, last_seen) VALUES (?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE
             SET api = excluded.api, rtmp = excluded.rtmp, last_seen = excluded.last_seen",
        )
        .bind(peer.id.as_str())
        .bind(peer.api.to_string())
        .bind(peer.rtmp.to_string())
        .bind(now as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM viewers WHERE supernode = ?")
            .bind(peer.id.as_str())
            .execute(&mut *tx)
            .await?;
        for (stream, count) in viewers {
            sqlx::query("INSERT INTO viewers (supernode, stream, count) VALUES (?, ?, ?)")
                .bind(peer.id.as_str())
                .bind(stream.as_str())
                .bind(i64::from(*count))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    pub async fn remove_supernode(&self, id: &NodeId) -> sqlx::Result<()> {
        let mut tx = self.write().await?;
        for table in [
            "DELETE FROM viewers WHERE supernode = ?",
            "DELETE FROM supernodes WHERE id = ?",
        ] {
            sqlx::query(table)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Live streams, the most watched first.
    pub async fn streams(&self, now: u64) -> sqlx::Result<Vec<StreamEntry>> {
        let rows = sqlx::query(&format!(
            "{SELECT_STREAMS} WHERE s.updated >= ? ORDER BY viewers DESC, s.id"
        ))
        .bind(since(now, self.ttl.supernode))
        .bind(since(now, self.ttl.stream))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().filter_map(entry_of).collect())
    }

    /// A live stream.
    pub async fn stream(&self, id: &StreamId, now: u64) -> sqlx::Result<Option<StreamEntry>> {
        let row = sqlx::query(&format!(
            "{SELECT_STREAMS} WHERE s.updated >= ? AND s.id = ?"
        ))
        .bind(since(now, self.ttl.supernode))
        .bind(since(now, self.ttl.stream))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().and_then(entry_of))
    }

    /// Lists a stream or renews its listing; true if it is new. A live stream of
    /// another source is not taken over; an expired one is.
    pub async fn list_stream(
        &self,
        id: &StreamId,
        update: &StreamUpdate,
        key: &PublicKey,
        now: u64,
    ) -> Result<bool, ListError> {
        let mut tx = self.write().await?;
        let current = sqlx::query("SELECT source_id, started, updated FROM streams WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let live = current
            .as_ref()
            .filter(|row| row.get::<i64, _>("updated") >= since(now, self.ttl.stream));
        let started = match live {
            Some(row) => {
                let source: String = row.get("source_id");
                if source != update.source.id.as_str() {
                    return Err(ListError::Taken {
                        stream: id.clone(),
                        owner: NodeId::new(source).map_err(|e| sqlx::Error::Decode(e.into()))?,
                    });
                }
                Some(row.get::<i64, _>("started"))
            }
            None => None,
        };
        sqlx::query("DELETE FROM streams WHERE id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO streams (id, title, description, source_id, source_api, source_rtmp,
                                  started, updated, bitrate_kbps, width, height)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id.as_str())
        .bind(&update.title)
        .bind(&update.description)
        .bind(update.source.id.as_str())
        .bind(update.source.api.to_string())
        .bind(update.source.rtmp.to_string())
        .bind(started.unwrap_or(now as i64))
        .bind(now as i64)
        .bind(i64::from(update.bitrate_kbps))
        .bind(i64::from(update.width))
        .bind(i64::from(update.height))
        .execute(&mut *tx)
        .await?;
        record_key(&mut tx, &update.source.id, key, now).await?;
        tx.commit().await?;
        Ok(started.is_none())
    }

    /// The source of a stream's listing, live or not.
    pub async fn stream_source(&self, id: &StreamId) -> sqlx::Result<Option<Peer>> {
        let row = sqlx::query(
            "SELECT source_id AS id, source_api AS api, source_rtmp AS rtmp
             FROM streams WHERE id = ?",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().and_then(peer_of))
    }

    pub async fn unlist_stream(&self, id: &StreamId) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM streams WHERE id = ?")
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map(drop)
    }

    /// Counts of live supernodes and live streams.
    pub async fn counts(&self, now: u64) -> sqlx::Result<(i64, i64)> {
        let supernodes = sqlx::query("SELECT COUNT(*) AS n FROM supernodes WHERE last_seen >= ?")
            .bind(since(now, self.ttl.supernode))
            .fetch_one(&self.pool)
            .await?
            .get("n");
        let streams = sqlx::query("SELECT COUNT(*) AS n FROM streams WHERE updated >= ?")
            .bind(since(now, self.ttl.stream))
            .fetch_one(&self.pool)
            .await?
            .get("n");
        Ok((supernodes, streams))
    }

    /// Deletes what expired; reads skip expired rows anyway.
    /// Returns the streams taken off.
    pub async fn prune(&self, now: u64) -> sqlx::Result<Vec<StreamId>> {
        let mut tx = self.write().await?;
        let supernodes = since(now, self.ttl.supernode);
        sqlx::query(
            "DELETE FROM viewers WHERE supernode IN
             (SELECT id FROM supernodes WHERE last_seen < ?)",
        )
        .bind(supernodes)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM supernodes WHERE last_seen < ?")
            .bind(supernodes)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM tamper_reports WHERE last_at < ?")
            .bind(since(now, TAMPER_REPORTS_KEPT_SECS))
            .execute(&mut *tx)
            .await?;
        let gone = sqlx::query("DELETE FROM streams WHERE updated < ? RETURNING id")
            .bind(since(now, self.ttl.stream))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone
            .iter()
            .filter_map(|row| StreamId::new(row.get::<String, _>("id")).ok())
            .collect())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A stream with the viewers counted by live supernodes (the first parameter).
const SELECT_STREAMS: &str = "SELECT s.id, s.title, s.description, s.source_id, s.source_api,
        s.source_rtmp, s.started, s.updated, s.bitrate_kbps, s.width, s.height,
        COALESCE((SELECT SUM(v.count) FROM viewers v
                  JOIN supernodes n ON n.id = v.supernode
                  WHERE v.stream = s.id AND n.last_seen >= ?), 0) AS viewers
 FROM streams s";

/// How long a tampering report is kept.
const TAMPER_REPORTS_KEPT_SECS: u64 = 7 * 24 * 3600;
/// Most tampering reports kept: past it, the oldest go.
const MAX_TAMPER_REPORTS: i64 = 10_000;
/// Most tampering reports `GET /api/reports` lists.
const LISTED_TAMPER_REPORTS: i64 = 200;

/// The oldest time still alive for a time-to-live.
fn since(now: u64, ttl: u64) -> i64 {
    now.saturating_sub(ttl) as i64
}

fn peer_of(row: &sqlx::sqlite::SqliteRow) -> Option<Peer> {
    let addr = |column: &str| row.get::<String, _>(column).parse::<SocketAddr>().ok();
    Some(Peer::new(
        NodeId::new(row.get::<String, _>("id")).ok()?,
        addr("api")?,
        addr("rtmp")?,
    ))
}

fn entry_of(row: &sqlx::sqlite::SqliteRow) -> Option<StreamEntry> {
    let addr = |column: &str| row.get::<String, _>(column).parse::<SocketAddr>().ok();
    let number = |column: &str| u32::try_from(row.get::<i64, _>(column)).unwrap_or(u32::MAX);
    let time = |column: &str| u64::try_from(row.get::<i64, _>(column)).unwrap_or(0);
    Some(StreamEntry {
        id: StreamId::new(row.get::<String, _>("id")).ok()?,
        title: row.get("title"),
        description: row.get("description"),
        source: Peer::new(
            NodeId::new(row.get::<String, _>("source_id")).ok()?,
            addr("source_api")?,
            addr("source_rtmp")?,
        ),
        viewers: number("viewers"),
        started: time("started"),
        updated: time("updated"),
        bitrate_kbps: number("bitrate_kbps"),
        width: number("width"),
        height: number("height"),
    })
}

/// Records a box's public key, checked against the signature of its request.
async fn record_key(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    id: &NodeId,
    key: &PublicKey,
    now: u64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO node_keys (id, key, first_seen, last_seen) VALUES (?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
    )
    .bind(id.as_str())
    .bind(key.to_hex())
    .bind(now as i64)
    .bind(now as i64)
    .execute(&mut **tx)
    .await
    .map(drop)
}

impl Store {
    /// A box's recorded public key, if it ever registered or listed a stream.
    pub async fn node_key(&self, id: &NodeId) -> sqlx::Result<Option<PublicKey>> {
        let row = sqlx::query("SELECT key FROM node_keys WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| PublicKey::from_hex(r.get("key")).map_err(|e| sqlx::Error::Decode(e.into())))
            .transpose()
    }

    /// Records a box's report of tampering, or counts a repeated one.
    pub async fn report_tamper(
        &self,
        reporter: &NodeId,
        report: &TamperReport,
        now: u64,
    ) -> sqlx::Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO tamper_reports (reporter, parent, stream, what, first_at, last_at, count)
             VALUES (?, ?, ?, ?, ?, ?, 1)
             ON CONFLICT (reporter, parent, stream) DO UPDATE SET
                 what = excluded.what, last_at = excluded.last_at,
                 count = tamper_reports.count + 1",
        )
        .bind(reporter.as_str())
        .bind(report.parent.as_str())
        .bind(report.stream.as_str())
        .bind(&report.what)
        .bind(now as i64)
        .bind(now as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM tamper_reports WHERE last_at <
             (SELECT last_at FROM tamper_reports ORDER BY last_at DESC LIMIT 1 OFFSET ?)",
        )
        .bind(MAX_TAMPER_REPORTS)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// The latest tampering reports, newest first.
    pub async fn tamper_reports(&self) -> sqlx::Result<Vec<TamperEntry>> {
        let rows = sqlx::query(
            "SELECT reporter, parent, stream, what, first_at, last_at, count
             FROM tamper_reports ORDER BY last_at DESC LIMIT ?",
        )
        .bind(LISTED_TAMPER_REPORTS)
        .fetch_all(&self.pool)
        .await?;
        let time = |row: &sqlx::sqlite::SqliteRow, column: &str| {
            u64::try_from(row.get::<i64, _>(column)).unwrap_or(0)
        };
        Ok(rows
            .iter()
            .filter_map(|row| {
                Some(TamperEntry {
                    reporter: NodeId::new(row.get::<String, _>("reporter")).ok()?,
                    parent: NodeId::new(row.get::<String, _>("parent")).ok()?,
                    stream: StreamId::new(row.get::<String, _>("stream")).ok()?,
                    what: row.get("what"),
                    first_at: time(row, "first_at"),
                    last_at: time(row, "last_at"),
                    count: time(row, "count"),
                })
            })
            .collect())
    }
}

/// Owners and the boxes they claimed.
impl Store {
    /// Records a new owner, known from now on by the token whose SHA-256 is `token_hash`.
    pub async fn create_owner(&self, id: &str, token_hash: &str, now: u64) -> sqlx::Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO owners (id, token_hash, created_at) VALUES (?, ?, ?)")
            .bind(id)
            .bind(token_hash)
            .bind(now as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// The owner whose token has this SHA-256.
    pub async fn owner_by_token(&self, token_hash: &str) -> sqlx::Result<Option<String>> {
        let row = sqlx::query("SELECT id FROM owners WHERE token_hash = ?")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get("id")))
    }

    /// `owner` claimed box `node` (the box took the claim).
    pub async fn own_box(&self, owner: &str, node: &NodeId, now: u64) -> sqlx::Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO owned_boxes (node, owner, claimed_at) VALUES (?, ?, ?)
             ON CONFLICT (node) DO UPDATE SET owner = excluded.owner,
                 claimed_at = excluded.claimed_at",
        )
        .bind(node.as_str())
        .bind(owner)
        .bind(now as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// The box says who owns it (`None`: no one): a claim it no longer holds is
    /// forgotten. A box never adds an owner this way.
    pub async fn box_owned_by(&self, node: &NodeId, owner: Option<&str>) -> sqlx::Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM owned_boxes WHERE node = ? AND owner IS NOT ?")
            .bind(node.as_str())
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// The boxes `owner` claimed, with when, oldest first.
    pub async fn boxes_of(&self, owner: &str) -> sqlx::Result<Vec<(NodeId, u64)>> {
        let rows = sqlx::query(
            "SELECT node, claimed_at FROM owned_boxes WHERE owner = ? ORDER BY claimed_at, node",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let at = u64::try_from(row.get::<i64, _>("claimed_at")).unwrap_or(0);
                Some((NodeId::new(row.get::<String, _>("node")).ok()?, at))
            })
            .collect())
    }

    /// Whether `owner` claimed box `node`.
    pub async fn owns(&self, owner: &str, node: &NodeId) -> sqlx::Result<bool> {
        let row = sqlx::query("SELECT 1 FROM owned_boxes WHERE owner = ? AND node = ?")
            .bind(owner)
            .bind(node.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}
