//! Unix time and the two text formats the director prints timestamps in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Whole seconds since the Unix epoch (the director's integer timestamps).
pub fn unix_seconds(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    }
}

/// A UTC calendar time, split into fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Civil {
    /// Days-to-date conversion from Howard Hinnant's `civil_from_days`, valid for any year.
    fn from_unix(seconds: i64) -> Civil {
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_index = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
        let month = if month_index < 10 {
            month_index + 3
        } else {
            month_index - 9
        } as u32;
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: second_of_day / 3600,
            minute: second_of_day / 60 % 60,
            second: second_of_day % 60,
        }
    }
}

/// `2024-05-01T12:34:56Z`: how instance rows print `vm_created_at`.
pub fn rfc3339(at: SystemTime) -> String {
    let c = Civil::from_unix(unix_seconds(at));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// `2024-05-01 12:34:56 UTC`: Ruby's `Time#to_s`, how configs print `created_at`.
pub fn ruby_time(at: SystemTime) -> String {
    let c = Civil::from_unix(unix_seconds(at));
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn from_unix_seconds(seconds: i64) -> SystemTime {
        if seconds >= 0 {
            UNIX_EPOCH + Duration::from_secs(seconds as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
        }
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(from_unix_seconds(0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(from_unix_seconds(1_714_566_896)),
            "2024-05-01T12:34:56Z"
        );
        assert_eq!(
            ruby_time(from_unix_seconds(1_714_566_896)),
            "2024-05-01 12:34:56 UTC"
        );
        // A leap day and the last second of a year.
        assert_eq!(
            rfc3339(from_unix_seconds(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(from_unix_seconds(1_703_980_799)),
            "2023-12-30T23:59:59Z"
        );
    }

    #[test]
    fn unix_seconds_round_trips() {
        for seconds in [-86_401, -1, 0, 1, 1_714_566_896] {
            assert_eq!(unix_seconds(from_unix_seconds(seconds)), seconds);
        }
    }
}
