//! Ages and dates as tables show them: `3m ago`, `in 12s`, `2026-05-01 12:03:04Z`. Ages are
//! measured against the `now_ms` the coordinator sends with every answer, not this
//! machine's clock, so that a skewed laptop still reads the right ages.
//!
//! It formats epoch milliseconds and nothing else; JSON output carries the raw numbers.

/// `3m ago`, `in 12s`, by the coordinator's clock.
pub fn relative(now: i64, at: i64) -> String {
    let diff = now - at;
    if diff.abs() < 1_000 {
        "just now".to_owned()
    } else if diff > 0 {
        format!("{} ago", span(diff))
    } else {
        format!("in {}", span(-diff))
    }
}

/// A duration in its largest sensible unit, rounded down: `45s`, `3m`, `5h`, `2d`.
pub fn span(ms: i64) -> String {
    let s = ms / 1_000;
    match s {
        _ if s < 60 => format!("{s}s"),
        _ if s < 3_600 => format!("{}m", s / 60),
        _ if s < 48 * 3_600 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Epoch milliseconds as `2026-05-01 12:03:04Z`, without a time-zone database.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date, after Howard Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// The date and, in parentheses, the age: `2026-05-01 12:03:04Z (3m ago)`.
pub fn when(now: i64, at: i64) -> String {
    format!("{} ({})", utc(at), relative(now, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(relative(10_000, 9_500), "just now");
        assert_eq!(relative(200_000, 20_000), "3m ago");
        assert_eq!(relative(0, 12_000), "in 12s");
        assert_eq!(span(5 * 3_600_000), "5h");
        assert_eq!(span(3 * 86_400_000), "3d");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_767_225_599_999), "2025-12-31 23:59:59Z");
        assert_eq!(utc(-1_000), "1969-12-31 23:59:59Z");
    }
}
