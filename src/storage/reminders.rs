//! The reminders sent (`compliance_reminders`): one per request or enquiry nearing its
//! due date, recorded in the transaction that queues its email, so none is sent twice.

use diesel::prelude::*;

use super::on_backend;
use super::schema::compliance_reminders;
use super::{DbConn, StorageError};
use crate::ids::TenantId;

/// Records the reminder for `item_id`; `false` when one was sent before.
pub fn record(
    conn: &mut DbConn,
    item_id: &str,
    tenant_id: &TenantId,
    now_ms: i64,
) -> Result<bool, StorageError> {
    let sent_before: i64 = on_backend!(conn, c => compliance_reminders::table
        .filter(compliance_reminders::item_id.eq(item_id))
        .count()
        .get_result(c))?;
    if sent_before > 0 {
        return Ok(false);
    }
    on_backend!(conn, c => diesel::insert_into(compliance_reminders::table)
        .values((
            compliance_reminders::item_id.eq(item_id),
            compliance_reminders::tenant_id.eq(tenant_id.as_str()),
            compliance_reminders::sent_at.eq(now_ms),
        ))
        .execute(c))?;
    Ok(true)
}
