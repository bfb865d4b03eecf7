//! Durations, parsed in one place: Go's syntax as Knative writes them (`60s`, `1m30s`, `500ms`,
//! `0s`) in manifests and decider specs, and the same on the command line, where a plain number
//! also reads as seconds (`--tick 2`).

use std::time::Duration;

/// A command-line duration: Go syntax, or a plain number of seconds.
pub fn parse_flag_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = t
            .parse()
            .map_err(|_| format!("'{t}' is not a duration (e.g. 500ms, 2s, 5m, 1m30s)"))?;
        return seconds(t, secs);
    }
    parse_go_duration(t)
}

fn seconds(s: &str, secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is out of range"))
}

pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a duration (e.g. 60s, 1m30s, 500ms)"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => {
                return Err(format!(
                    "'{s}': unknown unit '{unit}' (use h, m, s, ms, us, ns)"
                ));
            }
        };
        total += value * scale;
        rest = next;
    }
    seconds(s, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_go_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_go_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_go_duration("60").is_err());
        assert!(parse_go_duration("1x").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("1e3s").is_err());
    }

    #[test]
    fn flags_take_go_durations_or_plain_seconds() {
        assert_eq!(
            parse_flag_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_flag_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse_flag_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_flag_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_flag_duration("1m30s").unwrap(),
            Duration::from_secs(90)
        );
        assert!(parse_flag_duration("5 parsecs").is_err());
        assert!(parse_flag_duration("ms").is_err());
        assert!(parse_flag_duration("1.2.3").is_err());
    }

    #[test]
    fn huge_values_are_errors_not_panics() {
        let huge = format!("{}h", "9".repeat(40));
        assert!(
            parse_go_duration(&huge)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(parse_flag_duration(&"9".repeat(400)).is_err());
    }
}
