//! `GET /v1/usage`: the tenant's daily usage counters (UTC days), from `from` to `to`
//! (`YYYY-MM-DD`, both included; by default the last 30 days): inbound messages, sends
//! accepted by kind, automation runs and failed sends. Days without any are left out.
//! Beside them, each business portfolio's messaging limit as it stands now.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::api::{authenticate, read};
use super::AppState;
use crate::error::ApiError;
use crate::rules::Rule;
use crate::storage::{messaging_limits, usage};

/// The longest range one call reads.
const MAX_DAYS: i64 = 366;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Serialize, Default)]
struct UsageDay {
    date: String,
    inbound: i64,
    outbound: BTreeMap<String, i64>,
    automation_runs: i64,
    failures: i64,
}

#[derive(Serialize)]
struct UsagePage {
    items: Vec<UsageDay>,
    /// Each business portfolio of the tenant's numbers now: its messaging limit, the
    /// users reached in the moving 24 hours, and the sends waiting for room.
    portfolios: Vec<PortfolioView>,
}

/// A business portfolio as the API and `converra number list --json` show it.
#[derive(Serialize)]
pub struct PortfolioView {
    pub portfolio_id: String,
    pub phone_number_ids: Vec<String>,
    /// `null`: unknown (not enforced); -1: unlimited.
    pub messaging_limit: Option<i64>,
    /// Users reached in the last 24 hours.
    pub reached: i64,
    /// Sends waiting for room in the budget.
    pub waiting: i64,
}

impl From<messaging_limits::PortfolioUsage> for PortfolioView {
    fn from(p: messaging_limits::PortfolioUsage) -> PortfolioView {
        PortfolioView {
            portfolio_id: p.portfolio_id,
            phone_number_ids: p.phone_number_ids,
            messaging_limit: p.messaging_limit,
            reached: p.reached,
            waiting: p.waiting,
        }
    }
}

/// The Julian day of 1970-01-01: days are counted from it.
const EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// Days since 1970-01-01 of `YYYY-MM-DD`.
fn parse_day(field: &'static str, text: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::invalid(Rule::Format, field, "must be a date, YYYY-MM-DD");
    let mut parts = text.split('-');
    let (Some(year), Some(month), Some(day), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let year: i32 = year.parse().map_err(|_| bad())?;
    let month: u8 = month.parse().map_err(|_| bad())?;
    let day: u8 = day.parse().map_err(|_| bad())?;
    let month = time::Month::try_from(month).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(year, month, day).map_err(|_| bad())?;
    Ok(i64::from(date.to_julian_day()) - EPOCH_JULIAN_DAY)
}

fn date_of(day: i64) -> String {
    let julian = i32::try_from(day + EPOCH_JULIAN_DAY).unwrap_or(0);
    time::Date::from_julian_day(julian)
        .map(|d| d.to_string())
        .unwrap_or_default()
}

pub async fn get_usage(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let today = usage::day_of(state.core.clock.now_ms());
    let to = match &query.to {
        Some(to) => parse_day("to", to)?,
        None => today,
    };
    let from = match &query.from {
        Some(from) => parse_day("from", from)?,
        None => to - 29,
    };
    if from > to || to - from >= MAX_DAYS {
        return Err(ApiError::invalid(
            Rule::Range,
            "from",
            format!("from must not be after to, and the range at most {MAX_DAYS} days"),
        ));
    }
    let now = state.core.clock.now_ms();
    let (rows, portfolios) = read(&state, move |conn, _| {
        Ok((
            usage::usage(conn, &tenant, from, to)?,
            messaging_limits::portfolios(conn, Some(&tenant), now)?,
        ))
    })
    .await?;
    let mut days: Vec<UsageDay> = Vec::new();
    for (day, metric, count) in rows {
        let date = date_of(day);
        if days.last().is_none_or(|last| last.date != date) {
            days.push(UsageDay {
                date,
                ..UsageDay::default()
            });
        }
        let Some(entry) = days.last_mut() else {
            continue;
        };
        match metric.as_str() {
            usage::INBOUND => entry.inbound += count,
            usage::AUTOMATION_RUNS => entry.automation_runs += count,
            usage::FAILURES => entry.failures += count,
            other => {
                if let Some(kind) = other.strip_prefix(usage::OUTBOUND_PREFIX) {
                    *entry.outbound.entry(kind.to_string()).or_default() += count;
                }
            }
        }
    }
    Ok(HttpResponse::Ok().json(UsagePage {
        items: days,
        portfolios: portfolios.into_iter().map(PortfolioView::from).collect(),
    }))
}
