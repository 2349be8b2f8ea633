//! The privacy policy's versions (`policy_versions`) and the processing record's
//! history (`processing_records`), each with the notice that told the account holders
//! of it.

use diesel::prelude::*;
use serde::Serialize;

use super::on_backend;
use super::schema::{policy_versions, processing_records};
use super::{DbConn, StorageError};
use crate::rules::Conflict;

/// A published version of the privacy policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyVersion {
    pub version: String,
    /// YYYY-MM-DD: the day it takes effect.
    pub effective_on: String,
    pub summary: String,
    pub published_at: i64,
    pub notice_id: Option<String>,
}

/// Records version `version`, effective on `effective_on`, told by notice
/// `notice_id`. A version published before is a conflict.
pub fn insert_version(conn: &mut DbConn, version: &PolicyVersion) -> Result<(), StorageError> {
    let taken: i64 = on_backend!(conn, c => policy_versions::table
        .filter(policy_versions::version.eq(&version.version))
        .count()
        .get_result(c))?;
    if taken > 0 {
        return Err(StorageError::Conflict {
            code: Conflict::PolicyVersionPublished,
            message: format!("version {} was published before", version.version),
        });
    }
    on_backend!(conn, c => diesel::insert_into(policy_versions::table)
        .values((
            policy_versions::version.eq(&version.version),
            policy_versions::effective_on.eq(&version.effective_on),
            policy_versions::summary.eq(&version.summary),
            policy_versions::published_at.eq(version.published_at),
            policy_versions::notice_id.eq(&version.notice_id),
        ))
        .execute(c))?;
    Ok(())
}

/// Every version, by effective day then publication.
pub fn versions(conn: &mut DbConn) -> Result<Vec<PolicyVersion>, StorageError> {
    let rows: Vec<(String, String, String, i64, Option<String>)> = on_backend!(conn, c => policy_versions::table
            .order((policy_versions::effective_on.asc(), policy_versions::published_at.asc()))
            .select((
                policy_versions::version,
                policy_versions::effective_on,
                policy_versions::summary,
                policy_versions::published_at,
                policy_versions::notice_id,
            ))
            .load(c))?;
    Ok(rows
        .into_iter()
        .map(
            |(version, effective_on, summary, published_at, notice_id)| PolicyVersion {
                version,
                effective_on,
                summary,
                published_at,
                notice_id,
            },
        )
        .collect())
}

/// The processing record last recorded (its JSON), if any.
pub fn last_processing_record(conn: &mut DbConn) -> Result<Option<String>, StorageError> {
    Ok(on_backend!(conn, c => processing_records::table
        .order(processing_records::id.desc())
        .select(processing_records::record_json)
        .limit(1)
        .load::<String>(c))?
    .pop())
}

/// Records `record_json` as the processing record from now on, told by `notice_id`.
pub fn insert_processing_record(
    conn: &mut DbConn,
    record_json: &str,
    notice_id: Option<&str>,
    now_ms: i64,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::insert_into(processing_records::table)
        .values((
            processing_records::id.eq(uuid::Uuid::now_v7().to_string()),
            processing_records::record_json.eq(record_json),
            processing_records::recorded_at.eq(now_ms),
            processing_records::notice_id.eq(notice_id),
        ))
        .execute(c))?;
    Ok(())
}
