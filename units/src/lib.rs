//! Byte sizes as people write them, read by one parser with one rule.
//!
//! Every size Tessera reads (a job's memory, a block size on the command
//! line, `TESSERA_GPU_MEMORY`) goes through [`parse`], so `4GB` means the
//! same thing everywhere:
//!
//! * **Explicit units only.** Decimal units `KB`, `MB`, `GB`, `TB` are powers
//!   of 1000; binary units `KiB`, `MiB`, `GiB`, `TiB` powers of 1024; `B` is
//!   one byte. Case does not matter (`4 gib` is `4GiB`), a space may stand
//!   between number and unit.
//! * **One-letter units are refused as ambiguous.** `4G` is GiB to Slurm's
//!   `--mem` but GB to SGE's `g`; the error says to write `4GiB` or `4GB`.
//! * **A plain number is a count of bytes** (`1234` is 1234 bytes). Callers
//!   where a plain number would be misread may refuse it with
//!   [`ByteSize::has_unit`]: a job's memory does, because batch systems read
//!   a bare `--mem=4` as megabytes.
//! * Fractions are exact decimals, rounded up to whole bytes (`1.5GiB`,
//!   `0.1KB` = 100 bytes); no sign, no exponent, at most 9 decimals.
//!
//! ```
//! use tessera_units::{parse, parse_bytes};
//! assert_eq!(parse_bytes("4GiB")?, 4 << 30);
//! assert_eq!(parse_bytes("4GB")?, 4_000_000_000);
//! assert_eq!(parse_bytes("1234")?, 1234);
//! assert!(!parse("1234")?.has_unit());
//! let e = parse_bytes("4G").unwrap_err();
//! assert!(e.to_string().contains("ambiguous"));
//! # Ok::<(), tessera_units::ByteSizeError>(())
//! ```

/// Why a byte size was refused. The messages say what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ByteSizeError {
    /// Nothing, or no digits before the unit (`GiB`, `-4GB`).
    #[error("expected a number of bytes, with a unit such as 4GiB or 4000MB")]
    NoNumber,
    /// Digits that are not a decimal number (`4..0GB`, `4.GB`).
    #[error("malformed number")]
    Malformed,
    /// A one-letter unit (`4G`), which batch systems read differently.
    #[error(
        "`{unit}` is ambiguous: write {number}{upper}iB (binary, what Slurm's --mem={number}{upper} means) or \
         {number}{upper}B (decimal)",
        upper = unit.to_ascii_uppercase()
    )]
    Ambiguous { number: String, unit: String },
    /// A unit that is none of the above (`4 gigs`).
    #[error("unknown unit `{unit}`: use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)")]
    UnknownUnit { unit: String },
    /// More bytes than a `u64` holds.
    #[error("too large")]
    TooLarge,
}

/// A parsed size: its bytes, and whether a unit was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize {
    bytes: u64,
    has_unit: bool,
}

impl ByteSize {
    /// The size in bytes, rounded up to a whole byte.
    pub fn bytes(self) -> u64 {
        self.bytes
    }

    /// Whether the text had a unit (`4GiB`, `12B`) rather than a plain number.
    pub fn has_unit(self) -> bool {
        self.has_unit
    }
}

impl std::str::FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, ByteSizeError> {
        parse(s)
    }
}

/// Reads a byte size by the rule in the [crate docs](crate).
pub fn parse(s: &str) -> Result<ByteSize, ByteSizeError> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    if num.is_empty() {
        return Err(ByteSizeError::NoNumber);
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "k" | "m" | "g" | "t" => {
            return Err(ByteSizeError::Ambiguous { number: num.to_owned(), unit: unit.to_owned() });
        }
        _ => return Err(ByteSizeError::UnknownUnit { unit: unit.to_owned() }),
    };
    // Exact decimal arithmetic: digits before and after the point, rounded up to whole bytes.
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() || frac.contains('.') || (num.contains('.') && frac.is_empty()) || frac.len() > 9 {
        return Err(ByteSizeError::Malformed);
    }
    let digits: u128 = format!("{int}{frac}").parse().map_err(|_| ByteSizeError::TooLarge)?;
    let scale = 10u128.pow(frac.len() as u32);
    let bytes = digits.checked_mul(u128::from(mult)).ok_or(ByteSizeError::TooLarge)?.div_ceil(scale);
    let bytes = u64::try_from(bytes).map_err(|_| ByteSizeError::TooLarge)?;
    Ok(ByteSize { bytes, has_unit: !unit.is_empty() })
}

/// [`parse`], in bytes.
pub fn parse_bytes(s: &str) -> Result<u64, ByteSizeError> {
    parse(s).map(ByteSize::bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_units_decimal_and_binary() {
        assert_eq!(parse_bytes("40GiB"), Ok(40 << 30));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("4 gib"), Ok(4 << 30));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("0.1KB"), Ok(100));
        assert_eq!(parse_bytes("2TiB"), Ok(2 << 40));
        assert_eq!(parse_bytes("12B"), Ok(12));
        // Fractions of a byte round up.
        assert_eq!(parse_bytes("0.5B"), Ok(1));
    }

    #[test]
    fn plain_numbers_are_bytes_and_say_so() {
        assert_eq!(parse_bytes("1234"), Ok(1234));
        assert_eq!(parse_bytes(" 8 "), Ok(8));
        assert!(!parse("1234").unwrap().has_unit());
        assert!(parse("1234B").unwrap().has_unit());
        assert_eq!(parse_bytes("0"), Ok(0));
    }

    #[test]
    fn one_letter_units_are_ambiguous_and_the_error_says_what_to_write() {
        for s in ["4G", "4g", "64M", "1k", "2T"] {
            let e = parse_bytes(s).unwrap_err();
            assert!(matches!(e, ByteSizeError::Ambiguous { .. }), "{s}: {e:?}");
        }
        let e = parse_bytes("4G").unwrap_err().to_string();
        assert!(e.contains("4GiB") && e.contains("4GB") && e.contains("ambiguous"), "{e}");
        let e = parse_bytes("64m").unwrap_err().to_string();
        assert!(e.contains("64MiB") && e.contains("64MB"), "{e}");
    }

    #[test]
    fn malformed_input_is_refused() {
        assert_eq!(parse_bytes(""), Err(ByteSizeError::NoNumber));
        assert_eq!(parse_bytes("GiB"), Err(ByteSizeError::NoNumber));
        assert_eq!(parse_bytes("-4GB"), Err(ByteSizeError::NoNumber));
        assert_eq!(parse_bytes("4..0GB"), Err(ByteSizeError::Malformed));
        assert_eq!(parse_bytes("4.GB"), Err(ByteSizeError::Malformed));
        assert_eq!(parse_bytes("0.0000000001GB"), Err(ByteSizeError::Malformed));
        assert!(matches!(parse_bytes("12 parsecs"), Err(ByteSizeError::UnknownUnit { .. })));
        assert!(matches!(parse_bytes("1e9"), Err(ByteSizeError::UnknownUnit { .. })));
        assert_eq!(parse_bytes("99999999999TiB"), Err(ByteSizeError::TooLarge));
        assert_eq!(parse_bytes("18446744073709551616"), Err(ByteSizeError::TooLarge));
        assert_eq!(parse_bytes("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_bytes("999999999999999999999999999999999999999999GB"), Err(ByteSizeError::TooLarge));
    }
}
