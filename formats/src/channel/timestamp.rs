//! The RFC 3339 UTC timestamps of manifests (`created`, `expires`):
//! exactly `YYYY-MM-DDTHH:MM:SSZ`, as seconds since the epoch.

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (UTC only, no fractions) to seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = &s[r];
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())
            .flatten()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // None for 2023-02-30 and the like
    let midnight = chrono::NaiveDate::from_ymd_opt(y as i32, mo as u32, d as u32)?
        .and_hms_opt(0, 0, 0)?
        .and_utc()
        .timestamp();
    Some(midnight + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_208_000), "2025-11-27T01:46:40Z");
        for t in [0, 951_782_399, 1_764_208_000, 4_102_444_800, 68_169_600] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{t}");
        }
        for bad in [
            "2025-11-27 01:46:40Z",
            "2025-11-27T01:46:40",
            "2025-11-27T01:46:40+01:00",
            "2023-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-1a-01T00:00:00Z",
            "",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
