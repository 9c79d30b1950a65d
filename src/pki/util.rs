//! Small helpers shared by the PKI files: hex, serial numbers, certificate times, PEM and
//! SHA-256 fingerprints.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, UtcOffset};

use super::PkiError;

/// Length of the serial numbers we generate. RFC 5280 §4.1.2.2 allows at most 20 octets;
/// 16 random octets with the top bit cleared carry 127 bits of entropy, far above the 64
/// the CA/Browser Forum asks for to make serials unpredictable.
pub(crate) const SERIAL_LEN: usize = 16;

/// RFC 5280 §4.1.2.2 caps serial numbers (and so CRL entries) at 20 octets.
const MAX_SERIAL_LEN: usize = 20;

/// A certificate time (whole seconds, as X.509 carries them) as the API's timestamp.
pub fn timestamp_of(t: OffsetDateTime) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_second(t.unix_timestamp()).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// Lower-case hex without separators.
pub fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A fresh random serial: positive (top bit clear, so DER needs no 0x00 pad) and with a
/// non-zero first octet (so DER's minimal encoding keeps all 16 octets). The serial in the
/// certificate is then byte for byte the serial we generated.
pub(crate) fn random_serial() -> Result<[u8; SERIAL_LEN], String> {
    let mut serial = [0u8; SERIAL_LEN];
    loop {
        getrandom::fill(&mut serial)
            .map_err(|e| format!("failed to read the operating system's random number generator: {e}"))?;
        serial[0] &= 0x7f;
        if serial[0] != 0 {
            return Ok(serial);
        }
    }
}

/// Parses a serial given as hex back into the INTEGER content octets it was read from.
///
/// Only the minimal encoding of a positive integer is accepted (RFC 5280 §4.1.2.2 serials
/// are positive, and DER is minimal), because rcgen re-encodes the bytes minimally: any
/// other input would be written to the CRL as a different serial than the one asked for.
pub(crate) fn serial_from_hex(serial_hex: &str) -> Result<Vec<u8>, PkiError> {
    let invalid = |why: &str| {
        PkiError::InvalidSerial(format!(
            "serial {serial_hex:?} is not valid: {why}; pass the serial_hex reported when the certificate was issued"
        ))
    };
    if serial_hex.is_empty() || !serial_hex.len().is_multiple_of(2) {
        return Err(invalid("it must be a non-empty, even number of hex digits"));
    }
    if serial_hex.len() > MAX_SERIAL_LEN * 2 {
        return Err(invalid("it is longer than the 20 octets RFC 5280 allows"));
    }
    // Checked first: `from_str_radix` alone would accept a sign such as "+1".
    if !serial_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("it contains characters other than hex digits"));
    }
    let bytes = serial_hex
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| invalid("it contains characters other than hex digits"))?;
    match bytes.as_slice() {
        [first, ..] if first & 0x80 != 0 => Err(invalid("it is a negative integer")),
        [0] => Err(invalid("it is zero")),
        [0, second, ..] if second & 0x80 == 0 => Err(invalid("it has a redundant leading zero octet")),
        _ => Ok(bytes),
    }
}

/// Certificate and CRL times are whole seconds in UTC (RFC 5280 §4.1.2.5.1 and §4.1.2.5.2
/// forbid fractions). Normalising up front means the times we report are the times encoded.
/// Years outside 1950..=9999 are refused: UTCTime cannot hold them before 1950, and
/// GeneralizedTime has four-digit years.
pub(crate) fn certificate_time(t: OffsetDateTime, what: &str) -> Result<OffsetDateTime, PkiError> {
    let utc = t.to_offset(UtcOffset::UTC);
    let whole = utc - Duration::nanoseconds(i64::from(utc.nanosecond()));
    if (1950..=9999).contains(&whole.year()) {
        Ok(whole)
    } else {
        Err(PkiError::InvalidValidity(format!(
            "{what} {} is outside the years 1950 to 9999 that X.509 can encode",
            rfc3339(whole)
        )))
    }
}

/// RFC 3339 rendering for messages; falls back to `Display` for years RFC 3339 cannot hold.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// PEM with `\n` line endings (the `pem` crate defaults to `\r\n`).
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

/// The DER of the first `CERTIFICATE` block of a PEM text; other blocks are skipped, so a
/// `tls.crt` holding the leaf followed by its chain yields the leaf.
pub(crate) fn first_certificate_der(cert_pem: &str) -> Result<Vec<u8>, PkiError> {
    let blocks =
        pem::parse_many(cert_pem).map_err(|e| PkiError::Parse(format!("failed to parse the certificate PEM: {e}")))?;
    blocks
        .into_iter()
        .find(|block| block.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .ok_or_else(|| PkiError::Parse("the PEM text contains no CERTIFICATE block".to_string()))
}

/// Lower-case hex SHA-256 over the DER certificate, the usual certificate fingerprint.
pub(crate) fn sha256_fingerprint(der: &[u8]) -> String {
    hex_lower(&Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_without_separators() {
        assert_eq!(hex_lower(&[0x00, 0x0a, 0xff, 0x7f]), "000aff7f");
        assert_eq!(hex_lower(&[]), "");
    }

    #[test]
    fn random_serials_are_positive_full_length_and_distinct() {
        let a = random_serial().unwrap();
        let b = random_serial().unwrap();
        for s in [a, b] {
            assert!(s[0] != 0 && s[0] & 0x80 == 0, "first octet {:#04x}", s[0]);
        }
        assert_ne!(a, b);
    }

    #[test]
    fn serial_hex_round_trips_and_accepts_upper_case() {
        let serial = random_serial().unwrap();
        assert_eq!(serial_from_hex(&hex_lower(&serial)).unwrap(), serial);
        assert_eq!(serial_from_hex("0A1B").unwrap(), vec![0x0a, 0x1b]);
        // A positive serial whose top bit is set keeps its 0x00 pad, as DER writes it.
        assert_eq!(serial_from_hex("0080").unwrap(), vec![0x00, 0x80]);
    }

    #[test]
    fn malformed_serial_hex_is_refused() {
        for bad in [
            "",
            "abc",
            "zz",
            "0a:1b",
            "80",
            "ff01",
            "00",
            "0001",
            &"11".repeat(21),
            "+1",
        ] {
            let err = serial_from_hex(bad).unwrap_err();
            assert_eq!(err.reason(), "InvalidSerial", "{bad:?}");
        }
    }

    #[test]
    fn certificate_time_truncates_to_seconds_in_utc() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_750_000_000_999_999_999)
            .unwrap()
            .to_offset(UtcOffset::from_hms(5, 30, 0).unwrap());
        let got = certificate_time(t, "notBefore").unwrap();
        assert_eq!(got, OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap());
        assert_eq!(got.offset(), UtcOffset::UTC);
    }

    #[test]
    fn certificate_time_refuses_years_x509_cannot_encode() {
        let t = OffsetDateTime::from_unix_timestamp(-1_000_000_000).unwrap(); // 1938
        assert_eq!(
            certificate_time(t, "notBefore").unwrap_err().reason(),
            "InvalidValidity"
        );
    }

    #[test]
    fn first_certificate_skips_other_blocks() {
        let text = format!(
            "{}{}",
            pem_encode("PRIVATE KEY", &[1, 2]),
            pem_encode("CERTIFICATE", &[3, 4])
        );
        assert_eq!(first_certificate_der(&text).unwrap(), vec![3, 4]);
        assert!(first_certificate_der("no pem here").is_err());
    }
}
