//! Sizes and rates as users write them: `'256MB'`, `'64 MiB/s'`, `'1.5GB'`.
//! As in DuckDB, KB, MB, GB and TB are powers of 1000 and KiB, MiB, GiB and
//! TiB powers of 1024; a bare number is bytes.

use datafusion::common::{Result, plan_err};

/// Bytes in `text` (`'16MB'`, `'512 KiB'`, `'4096'`).
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let Ok(value) = number.parse::<f64>() else {
        return plan_err!("'{text}' is not a size; write it as, say, '256MB' or '64MiB'");
    };
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" | "bytes" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return plan_err!(
                "'{other}' in '{text}' is not a unit of size; use B, KB, MB, GB, TB \
                 (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
            );
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return plan_err!("'{text}' is too large a size");
    }
    Ok(bytes.round() as u64)
}

/// Bytes per second in `text` (`'64MB/s'`, `'64MB'`); `'unlimited'` and
/// `'0'` are 0, no limit.
pub fn parse_rate(text: &str) -> Result<u64> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    let per_second = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("/S"))
        .unwrap_or(t);
    parse_bytes(per_second)
}

/// A rate as [`parse_rate`] reads it back: `'unlimited'` or, say, `'64MB/s'`.
pub fn format_rate(bytes_per_second: u64) -> String {
    if bytes_per_second == 0 {
        return "unlimited".to_string();
    }
    format!("{}/s", format_bytes(bytes_per_second))
}

/// A size in the largest decimal unit that shows it exactly (`'64MB'`,
/// `'1500KB'`, `'1048576B'`), so that it reads back the same.
pub fn format_bytes(bytes: u64) -> String {
    for (unit, scale) in [
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1000),
    ] {
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates() {
        assert_eq!(parse_bytes("256MB").unwrap(), 256_000_000);
        assert_eq!(parse_bytes(" 16 MiB ").unwrap(), 16 << 20);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_rate("64MB/s").unwrap(), 64_000_000);
        assert_eq!(parse_rate("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_rate("unlimited").unwrap(), 0);
        assert_eq!(parse_rate("0").unwrap(), 0);
        for bad in ["fast", "64 parsecs", "MB", "1e400GB", "-5MB"] {
            let e = parse_rate(bad).unwrap_err().to_string();
            assert!(e.contains(bad.trim()) || e.contains("size"), "{bad}: {e}");
        }
        for rate in [0, 1, 999, 64_000_000, 64 << 20, 1_500_000] {
            assert_eq!(
                parse_rate(&format_rate(rate)).unwrap(),
                rate,
                "{}",
                format_rate(rate)
            );
        }
        assert_eq!(format_rate(64_000_000), "64MB/s");
    }
}
