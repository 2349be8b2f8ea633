//! Deadlines as the privacy policy counts them. A data-subject request is due one
//! calendar month after receipt: the same date next month, or that month's last day
//! where the date does not exist (31 January → 28 or 29 February), moved to the next
//! working day when it falls on a weekend or a holiday (GDPR art. 12(3), with the
//! EU's rule on periods, Regulation 1182/71). An extension adds one or two months to
//! the original due date, counted the same way. An enquiry is due five business days
//! after receipt, the day of receipt not counted.

use time::{Date, Duration, Month, Weekday};

/// The UTC day of `ms` (milliseconds since the epoch).
pub fn day_of(ms: i64) -> Date {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .map(|t| t.date())
        .unwrap_or(Date::MIN)
}

/// Whether `day` is a working day: not a Saturday, a Sunday or one of `holidays`.
pub fn is_working_day(day: Date, holidays: &[Date]) -> bool {
    !matches!(day.weekday(), Weekday::Saturday | Weekday::Sunday) && !holidays.contains(&day)
}

/// `day`, or the first working day after it.
pub fn next_working_day(mut day: Date, holidays: &[Date]) -> Date {
    while !is_working_day(day, holidays) {
        match day.next_day() {
            Some(next) => day = next,
            None => break,
        }
    }
    day
}

/// The same date `months` calendar months later, or that month's last day where the
/// date does not exist.
pub fn add_months(day: Date, months: u32) -> Date {
    let index = day.year() as i64 * 12 + (day.month() as i64 - 1) + i64::from(months);
    let year = (index.div_euclid(12)) as i32;
    let month = Month::try_from((index.rem_euclid(12) + 1) as u8).unwrap_or(Month::December);
    let last = time::util::days_in_month(month, year);
    Date::from_calendar_date(year, month, day.day().min(last)).unwrap_or(day)
}

/// When a data-subject request received on `received` is due: one calendar month
/// later, on a working day.
pub fn request_due(received: Date, holidays: &[Date]) -> Date {
    next_working_day(add_months(received, 1), holidays)
}

/// The due date after an extension of `months` (1 or 2), counted from the original
/// due date before it was moved to a working day.
pub fn extended_due(received: Date, months: u32, holidays: &[Date]) -> Date {
    next_working_day(add_months(add_months(received, 1), months), holidays)
}

/// When an enquiry received on `received` is due: five working days later, the day of
/// receipt not counted.
pub fn enquiry_due(received: Date, holidays: &[Date]) -> Date {
    add_working_days(received, 5, holidays)
}

/// The `count`th working day after `day`.
pub fn add_working_days(mut day: Date, count: u32, holidays: &[Date]) -> Date {
    let mut left = count;
    while left > 0 {
        day += Duration::days(1);
        if is_working_day(day, holidays) {
            left -= 1;
        }
    }
    day
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Date {
        Date::parse(text, &time::format_description::well_known::Iso8601::DATE).expect("a date")
    }

    #[test]
    fn a_month_after_the_31st_of_january_is_the_end_of_february() {
        assert_eq!(add_months(d("2027-01-31"), 1), d("2027-02-28"));
        assert_eq!(add_months(d("2028-01-31"), 1), d("2028-02-29"));
        assert_eq!(add_months(d("2027-03-15"), 1), d("2027-04-15"));
        assert_eq!(add_months(d("2027-12-31"), 2), d("2028-02-29"));
        // Due on Sunday 28 February 2027: the next working day, Monday 1 March.
        assert_eq!(request_due(d("2027-01-31"), &[]), d("2027-03-01"));
        // Tuesday 29 February 2028 is a working day.
        assert_eq!(request_due(d("2028-01-31"), &[]), d("2028-02-29"));
    }

    #[test]
    fn a_due_date_on_a_saturday_moves_to_monday() {
        // Received Wednesday 6 January 2027: due Saturday 6 February → Monday 8.
        assert_eq!(request_due(d("2027-01-06"), &[]), d("2027-02-08"));
        // ... and to Tuesday when Monday is a holiday.
        let holidays = [d("2027-02-08")];
        assert_eq!(request_due(d("2027-01-06"), &holidays), d("2027-02-09"));
    }

    #[test]
    fn an_extension_counts_from_the_original_due_date() {
        // Received 31 January 2027: due 28 February (moved to 1 March); two months
        // more from 28 February is 28 April 2027, a Wednesday.
        assert_eq!(extended_due(d("2027-01-31"), 2, &[]), d("2027-04-28"));
        // One month more: 28 March 2027 is a Sunday → Monday 29 March.
        assert_eq!(extended_due(d("2027-01-31"), 1, &[]), d("2027-03-29"));
    }

    #[test]
    fn five_business_days_skip_the_weekend_and_a_holiday() {
        // Received Thursday 10 December 2026: Fri 11, Mon 14, Tue 15, Wed 16, Thu 17.
        assert_eq!(enquiry_due(d("2026-12-10"), &[]), d("2026-12-17"));
        // With Monday 14 a holiday: Fri 11, Tue 15, Wed 16, Thu 17, Fri 18.
        let holidays = [d("2026-12-14")];
        assert_eq!(enquiry_due(d("2026-12-10"), &holidays), d("2026-12-18"));
        // Received on a Saturday: Mon to Fri of the next week.
        assert_eq!(enquiry_due(d("2026-12-12"), &[]), d("2026-12-18"));
    }
}
