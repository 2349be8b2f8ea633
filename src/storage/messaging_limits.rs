//! Meta's messaging limit, kept before Meta enforces it: the unique users a business
//! portfolio reaches with business-initiated messages (templates to a user without an
//! open customer-service window) in a moving 24 hours. A number's portfolio is the one
//! its operator grouped it into (`phone_numbers.portfolio_id`), else its WhatsApp
//! Business Account. The limit (`messaging_limits`) comes from Meta's webhooks or the
//! operator; the users reached (`portfolio_reach`) are counted in the write that marks
//! a send in flight ([`super::outbox::mark_sending`]), so the count is exact and
//! survives a restart.

use diesel::prelude::*;
use diesel::upsert::excluded;

use super::on_backend;
use super::schema::{messaging_limits, outbox, phone_numbers, portfolio_reach};
use super::{DbConn, StorageError};
use crate::ids::TenantId;

/// Meta's moving window.
pub const WINDOW_MS: i64 = 24 * 3600 * 1000;
/// A limit of "unlimited".
pub const UNLIMITED: i64 = -1;
/// Converra's own error for a send held past its deadline.
pub const MESSAGING_LIMIT: &str = "messaging_limit";

/// The portfolio of `phone_number_id`: its operator's grouping, else its account.
pub fn portfolio_of(
    conn: &mut DbConn,
    phone_number_id: &str,
) -> Result<Option<String>, StorageError> {
    let row: Option<(String, Option<String>)> = on_backend!(conn, c => phone_numbers::table
        .find(phone_number_id)
        .select((phone_numbers::waba_id, phone_numbers::portfolio_id))
        .get_result(c)
        .optional())?;
    Ok(row.map(|(waba, portfolio)| portfolio.unwrap_or(waba)))
}

/// A portfolio's budget as one write sees it.
#[derive(Debug, Clone)]
pub struct Budget {
    pub portfolio_id: String,
    /// `None`: unknown, not enforced; [`UNLIMITED`]: no limit.
    pub limit: Option<i64>,
    /// Users reached in the window.
    pub used: i64,
    /// The budget was found full before (and logged).
    pub reached_before: bool,
}

impl Budget {
    pub fn full(&self) -> bool {
        self.limit
            .is_some_and(|limit| limit >= 0 && self.used >= limit)
    }
}

/// The budget of `portfolio_id` at `now_ms`. Two counts of one enforced budget must
/// not run at once (PostgreSQL's writer threads may run two writes of one tenant
/// together): there, the senders take their tenant's turn first
/// ([`crate::actors::sender`]).
pub fn budget(conn: &mut DbConn, portfolio_id: &str, now_ms: i64) -> Result<Budget, StorageError> {
    let limit: Option<(i64, Option<i64>)> = on_backend!(conn, c => messaging_limits::table
        .find(portfolio_id)
        .select((messaging_limits::messaging_limit, messaging_limits::reached_at))
        .get_result(c)
        .optional())?;
    // Counted only where a limit is enforced, and only as far as the limit: whether
    // the budget is full is all a send needs to know.
    let used = match limit {
        Some((limit, _)) if limit >= 0 => {
            let ids: Vec<String> = on_backend!(conn, c => portfolio_reach::table
                .filter(portfolio_reach::portfolio_id.eq(portfolio_id))
                .filter(portfolio_reach::reached_at.gt(now_ms - WINDOW_MS))
                .select(portfolio_reach::contact_id)
                .limit(limit)
                .load(c))?;
            ids.len() as i64
        }
        _ => 0,
    };
    Ok(Budget {
        portfolio_id: portfolio_id.to_string(),
        limit: limit.map(|(l, _)| l),
        used,
        reached_before: limit.is_some_and(|(_, reached)| reached.is_some()),
    })
}

impl Budget {
    /// Whether a limit is enforced (known and not unlimited).
    pub fn enforced(&self) -> bool {
        self.limit.is_some_and(|limit| limit >= 0)
    }
}

/// The users `portfolio_id` reached in the window.
pub fn reached_count(
    conn: &mut DbConn,
    portfolio_id: &str,
    now_ms: i64,
) -> Result<i64, StorageError> {
    Ok(on_backend!(conn, c => portfolio_reach::table
        .filter(portfolio_reach::portfolio_id.eq(portfolio_id))
        .filter(portfolio_reach::reached_at.gt(now_ms - WINDOW_MS))
        .count()
        .get_result(c))?)
}

/// Whether the portfolio reached `contact_id` in the window (another message to them
/// uses no more of the budget).
pub fn reached(
    conn: &mut DbConn,
    portfolio_id: &str,
    contact_id: &str,
    now_ms: i64,
) -> Result<bool, StorageError> {
    let found: Option<i64> = on_backend!(conn, c => portfolio_reach::table
        .find((portfolio_id, contact_id))
        .filter(portfolio_reach::reached_at.gt(now_ms - WINDOW_MS))
        .select(portfolio_reach::reached_at)
        .get_result(c)
        .optional())?;
    Ok(found.is_some())
}

/// Records that the portfolio reaches `contact_id` now.
pub fn reach(
    conn: &mut DbConn,
    portfolio_id: &str,
    contact_id: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::insert_into(portfolio_reach::table)
        .values((
            portfolio_reach::portfolio_id.eq(portfolio_id),
            portfolio_reach::contact_id.eq(contact_id),
            portfolio_reach::reached_at.eq(now_ms),
        ))
        .on_conflict((portfolio_reach::portfolio_id, portfolio_reach::contact_id))
        .do_update()
        .set(portfolio_reach::reached_at.eq(excluded(portfolio_reach::reached_at)))
        .execute(c))?;
    Ok(())
}

/// Notes that the portfolio's budget is full (once until its limit changes).
pub fn note_reached(
    conn: &mut DbConn,
    portfolio_id: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::update(messaging_limits::table.find(portfolio_id))
        .set(messaging_limits::reached_at.eq(Some(now_ms)))
        .execute(c))?;
    Ok(())
}

/// Sets the limit of `portfolio_id` (`source`: `meta` or `operator`).
pub fn set_limit(
    conn: &mut DbConn,
    portfolio_id: &str,
    limit: i64,
    source: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::insert_into(messaging_limits::table)
        .values((
            messaging_limits::portfolio_id.eq(portfolio_id),
            messaging_limits::messaging_limit.eq(limit),
            messaging_limits::source.eq(source),
            messaging_limits::updated_at.eq(now_ms),
            messaging_limits::reached_at.eq(None::<i64>),
        ))
        .on_conflict(messaging_limits::portfolio_id)
        .do_update()
        .set((
            messaging_limits::messaging_limit.eq(limit),
            messaging_limits::source.eq(source),
            messaging_limits::updated_at.eq(now_ms),
            messaging_limits::reached_at.eq(None::<i64>),
        ))
        .execute(c))?;
    Ok(())
}

/// Meta's limit for account `waba_id`: set on the portfolio of each of its numbers (on
/// the account itself when none is registered yet). The numbers whose budget changed.
pub fn set_limit_of_account(
    conn: &mut DbConn,
    waba_id: &str,
    limit: i64,
    now_ms: i64,
) -> Result<Vec<String>, StorageError> {
    let numbers: Vec<(String, Option<String>)> = on_backend!(conn, c => phone_numbers::table
        .filter(phone_numbers::waba_id.eq(waba_id))
        .select((phone_numbers::phone_number_id, phone_numbers::portfolio_id))
        .load(c))?;
    let mut portfolios: Vec<String> = numbers
        .iter()
        .map(|(_, portfolio)| portfolio.clone().unwrap_or_else(|| waba_id.to_string()))
        .collect();
    if portfolios.is_empty() {
        portfolios.push(waba_id.to_string());
    }
    portfolios.sort();
    portfolios.dedup();
    for portfolio in &portfolios {
        set_limit(conn, portfolio, limit, "meta", now_ms)?;
    }
    numbers_of(conn, &portfolios)
}

/// Every number whose budget is one of `portfolios`.
pub fn numbers_of(conn: &mut DbConn, portfolios: &[String]) -> Result<Vec<String>, StorageError> {
    let rows: Vec<(String, String, Option<String>)> = on_backend!(conn, c => phone_numbers::table
        .select((phone_numbers::phone_number_id, phone_numbers::waba_id, phone_numbers::portfolio_id))
        .load(c))?;
    Ok(rows
        .into_iter()
        .filter(|(_, waba, portfolio)| portfolios.contains(portfolio.as_ref().unwrap_or(waba)))
        .map(|(id, _, _)| id)
        .collect())
}

/// Groups `phone_number_id` of `tenant_id` into portfolio `portfolio_id` (its account's
/// own when `None`).
pub fn set_portfolio(
    conn: &mut DbConn,
    tenant_id: &str,
    phone_number_id: &str,
    portfolio_id: Option<&str>,
) -> Result<(), StorageError> {
    let updated = on_backend!(conn, c => diesel::update(phone_numbers::table
            .find(phone_number_id)
            .filter(phone_numbers::tenant_id.eq(tenant_id)))
        .set(phone_numbers::portfolio_id.eq(portfolio_id))
        .execute(c))?;
    match updated {
        0 => Err(StorageError::NotFound),
        _ => Ok(()),
    }
}

/// A portfolio's numbers and where its budget stands.
#[derive(Debug, Clone)]
pub struct PortfolioUsage {
    pub portfolio_id: String,
    pub phone_number_ids: Vec<String>,
    /// `None`: unknown (not enforced); -1: unlimited.
    pub messaging_limit: Option<i64>,
    /// Users reached in the last 24 hours.
    pub reached: i64,
    /// Sends waiting for room in the budget.
    pub waiting: i64,
}

/// The portfolios of `tenant_id`'s numbers (all tenants' when `None`).
pub fn portfolios(
    conn: &mut DbConn,
    tenant_id: Option<&TenantId>,
    now_ms: i64,
) -> Result<Vec<PortfolioUsage>, StorageError> {
    let rows: Vec<(String, String, Option<String>)> = on_backend!(conn, c => {
        let mut query = phone_numbers::table
            .select((phone_numbers::phone_number_id, phone_numbers::waba_id, phone_numbers::portfolio_id))
            .order(phone_numbers::phone_number_id.asc())
            .into_boxed();
        if let Some(tenant) = tenant_id {
            query = query.filter(phone_numbers::tenant_id.eq(tenant.as_str()));
        }
        query.load(c)
    })?;
    let mut out: Vec<PortfolioUsage> = Vec::new();
    for (number, waba, portfolio) in rows {
        let portfolio = portfolio.unwrap_or(waba);
        match out.iter_mut().find(|p| p.portfolio_id == portfolio) {
            Some(p) => p.phone_number_ids.push(number),
            None => out.push(PortfolioUsage {
                portfolio_id: portfolio,
                phone_number_ids: vec![number],
                messaging_limit: None,
                reached: 0,
                waiting: 0,
            }),
        }
    }
    for p in &mut out {
        let budget = budget(conn, &p.portfolio_id, now_ms)?;
        p.messaging_limit = budget.limit;
        p.reached = reached_count(conn, &p.portfolio_id, now_ms)?;
        p.waiting = on_backend!(conn, c => outbox::table
            .filter(outbox::phone_number_id.eq_any(&p.phone_number_ids))
            .filter(outbox::state.eq(super::outbox::QUEUED))
            .filter(outbox::limit_held_since.is_not_null())
            .count()
            .get_result(c))?;
    }
    Ok(out)
}

/// Rows deleted per purge at most, so one pass never holds the writer long.
const PURGE_ROWS: i64 = 10_000;

/// Forgets the users reached before the window (they use no budget any more); how
/// many.
pub fn purge_reach(conn: &mut DbConn, now_ms: i64) -> Result<usize, StorageError> {
    let cutoff = now_ms - WINDOW_MS;
    let old: Vec<(String, String)> = on_backend!(conn, c => portfolio_reach::table
        .filter(portfolio_reach::reached_at.le(cutoff))
        .select((portfolio_reach::portfolio_id, portfolio_reach::contact_id))
        .limit(PURGE_ROWS)
        .load(c))?;
    let mut by_portfolio: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (portfolio, contact) in &old {
        by_portfolio.entry(portfolio).or_default().push(contact);
    }
    let mut deleted = 0;
    for (portfolio, contacts) in by_portfolio {
        for chunk in contacts.chunks(500) {
            deleted += on_backend!(conn, c => diesel::delete(portfolio_reach::table
                    .filter(portfolio_reach::portfolio_id.eq(portfolio))
                    .filter(portfolio_reach::contact_id.eq_any(chunk))
                    .filter(portfolio_reach::reached_at.le(cutoff)))
                .execute(c))?;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user counts for 24 hours after they were last reached, and is forgotten
    /// after; reaching them again moves their time on.
    #[test]
    fn users_count_for_the_moving_window_and_are_forgotten_after() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_, pool) = crate::storage::test_storage(dir.path());
        let mut conn = pool.get().expect("connection");
        set_limit(&mut conn, "P", 2, "operator", 0).expect("limit");
        let hour = 3_600_000;
        reach(&mut conn, "P", "a", 0).expect("reach");
        reach(&mut conn, "P", "b", hour).expect("reach");
        let budget_at = |conn: &mut DbConn, at: i64| budget(conn, "P", at).expect("budget");
        assert!(budget_at(&mut conn, 2 * hour).full());
        // A is out of the window 24 hours after they were reached.
        assert!(!budget_at(&mut conn, WINDOW_MS).full());
        assert!(reached(&mut conn, "P", "b", WINDOW_MS).expect("reached"));
        assert!(!reached(&mut conn, "P", "a", WINDOW_MS).expect("reached"));
        // Reached again, B counts 24 hours from then.
        reach(&mut conn, "P", "b", 20 * hour).expect("reach");
        assert_eq!(
            purge_reach(&mut conn, WINDOW_MS + 2 * hour).expect("purge"),
            1
        );
        assert_eq!(
            reached_count(&mut conn, "P", WINDOW_MS + 2 * hour).expect("count"),
            1
        );
        assert_eq!(
            purge_reach(&mut conn, WINDOW_MS + 20 * hour).expect("purge"),
            1
        );
        assert_eq!(reached_count(&mut conn, "P", 0).expect("count"), 0);
    }
}
