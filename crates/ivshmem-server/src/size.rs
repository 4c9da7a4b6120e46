//! Sizes on the command line: `520192`, `0x7f000`, `508K`, `1M`, `2G`
//! (binary units; a trailing `B`/`iB` is accepted, e.g. `4KiB`).

/// Parses a size. Suffixes are binary (K = 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let err = || format!("invalid size {text:?} (examples: 0x7f000, 520192, 508K, 1M)");
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|_| err());
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(digits_end);
    let value: u64 = digits.parse().map_err(|_| err())?;
    let suffix = suffix.trim();
    let suffix = suffix
        .strip_suffix("iB")
        .or_else(|| suffix.strip_suffix('B'))
        .unwrap_or(suffix);
    let shift = match suffix {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(err()),
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {text:?} overflows 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn forms() {
        assert_eq!(parse_size("0x7f000"), Ok(0x7f000));
        assert_eq!(parse_size("520192"), Ok(0x7f000));
        assert_eq!(parse_size("508K"), Ok(0x7f000));
        assert_eq!(parse_size("1M"), Ok(0x100000));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("0xg").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
