//! Timestamps as people write them: RFC 3339 in UTC, and deadlines given as
//! a time or as a duration from now. Small enough not to need a date crate.

use crate::policy::parse_duration;

/// Unix milliseconds below this are taken for Unix seconds given by mistake
/// (it is March 1973 in milliseconds, but the year 5138 in seconds).
const SMALLEST_UNIX_MS: u64 = 100_000_000_000;

/// `ms` (Unix milliseconds) as RFC 3339 UTC with milliseconds, e.g. `2026-11-23T13:24:59.123Z`.
pub fn format_rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let (year, month, day) = civil_from_days(days);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        ms % 1000
    )
}

/// A deadline in Unix milliseconds from `text`: Unix milliseconds, an RFC 3339
/// time (`2026-11-23T15:00:00Z`, `...+01:00`), or a duration from `now_ms`
/// (`90s`, `10m`, `2h`). Refuses deadlines that have already passed.
pub fn parse_deadline(text: &str, now_ms: u64) -> Result<u64, String> {
    let text = text.trim();
    let deadline = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let ms: u64 = text.parse().map_err(|_| format!("`{text}` is out of range"))?;
        if ms < SMALLEST_UNIX_MS {
            return Err(format!(
                "`{text}` looks like Unix seconds; give Unix milliseconds, an RFC 3339 time or a duration such as 10m"
            ));
        }
        ms
    } else if text.contains('T') || text.contains('t') {
        parse_rfc3339_ms(text)?
    } else {
        let duration = parse_duration(text)
            .map_err(|_| format!("`{text}` is not Unix milliseconds, an RFC 3339 time or a duration such as 10m"))?;
        now_ms.saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    };
    if deadline <= now_ms {
        return Err(format!("`{text}` ({}) has already passed", format_rfc3339_ms(deadline)));
    }
    Ok(deadline)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)` as Unix milliseconds.
fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    let invalid = || format!("`{text}` is not an RFC 3339 time such as 2026-11-23T15:00:00Z");
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| number_in(text, range, &invalid);
    let separators_ok = bytes.len() >= 20
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b'T' | b't')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators_ok {
        return Err(invalid());
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) || hour > 23 || minute > 59 {
        return Err(invalid());
    }
    // A leap second reads as the last second of its minute.
    let second = second.min(59);
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse::<u64>().map_err(|_| invalid())?;
        rest = &fraction[digits..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return Err(invalid()),
            };
            let (hours, minutes) = (number_in(rest, 1..3, &invalid)?, number_in(rest, 4..6, &invalid)?);
            if rest.len() != 6 || rest.as_bytes()[3] != b':' || hours > 23 || minutes > 59 {
                return Err(invalid());
            }
            sign * i64::from(hours * 3600 + minutes * 60)
        }
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    let secs = u64::try_from(secs).map_err(|_| format!("`{text}` is before 1970"))?;
    Ok(secs * 1000 + millis)
}

fn number_in(text: &str, range: std::ops::Range<usize>, invalid: &dyn Fn() -> String) -> Result<u32, String> {
    let part = text.get(range).ok_or_else(invalid)?;
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    part.parse().map_err(|_| invalid())
}

fn days_in_month(year: u32, month: u32) -> u32 {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are small positive numbers by construction.
    (year, u32::try_from(month).unwrap_or(1), u32::try_from(day).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_000_000_000; // 2026-11-18T11:06:40Z

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_rfc3339_ms(NOW + 7), "2026-11-18T11:06:40.007Z");
    }

    #[test]
    fn rfc3339_round_trips_through_the_formatter() {
        for ms in [0, 951_782_400_000, NOW, NOW + 86_399_999, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Ok(ms));
        }
        assert_eq!(
            parse_rfc3339_ms("2026-11-18T12:06:40.5+01:00"),
            Ok(NOW + 500),
            "offsets are subtracted"
        );
    }

    #[test]
    fn deadlines_take_times_and_durations() {
        assert_eq!(parse_deadline("10m", NOW), Ok(NOW + 600_000));
        assert_eq!(parse_deadline("1895000000000", NOW), Ok(1_895_000_000_000));
        assert_eq!(parse_deadline("2026-11-18T11:06:41Z", NOW), Ok(NOW + 1000));
    }

    #[test]
    fn bad_deadlines_name_the_value() {
        for (text, expected) in [
            ("1795000000", "looks like Unix seconds"),
            ("2026-11-18T11:06:40Z", "has already passed"),
            ("2026-02-30T00:00:00Z", "`2026-02-30T00:00:00Z` is not an RFC 3339 time"),
            ("2026-11-18T11:06:40", "not an RFC 3339 time"),
            ("soon", "`soon` is not Unix milliseconds"),
        ] {
            let err = parse_deadline(text, NOW).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
