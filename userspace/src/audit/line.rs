//! An audit record as one JSON object, written by hand. Every request
//! formats one on the proxy's thread, and serde's derived serializer
//! escaped each of the twenty keys at run time: 2.4 % of the proxy's CPU at
//! 32 connections (BENCHMARKS.md). The output is byte for byte what
//! `serde_json::to_writer` makes of the same record (the tests hold the
//! two together), so readers of the log see no change.

use super::AuditRecord;

/// Appends `record` to `out` as a JSON object, without a newline.
pub(super) fn write(out: &mut Vec<u8>, r: &AuditRecord) {
    out.extend_from_slice(b"{\"ts\":\"");
    out.extend_from_slice(&r.ts.text());
    out.extend_from_slice(b"\",\"agent\":");
    opt_str(out, r.agent.as_deref());
    out.extend_from_slice(b",\"cgroup\":");
    number(out, r.cgroup);
    out.extend_from_slice(b",\"pid\":");
    number(out, r.pid.into());
    out.extend_from_slice(b",\"uid\":");
    number(out, r.uid.into());
    out.extend_from_slice(b",\"action\":");
    opt_str(out, r.action.map(|a| a.as_str()));
    out.extend_from_slice(b",\"host\":");
    string(out, &r.host);
    out.extend_from_slice(b",\"port\":");
    number(out, r.port.into());
    out.extend_from_slice(b",\"dst\":");
    string(out, &r.dst);
    out.extend_from_slice(b",\"proto\":");
    string(out, r.proto);
    out.extend_from_slice(b",\"method\":");
    opt_str(out, r.method.as_deref());
    out.extend_from_slice(b",\"path\":");
    opt_str(out, r.path.as_deref());
    out.extend_from_slice(b",\"rule\":");
    opt_str(out, r.rule.as_deref());
    out.extend_from_slice(b",\"credentials\":");
    strings(out, &r.credentials);
    if !r.claimed_methods.is_empty() {
        out.extend_from_slice(b",\"claimed_methods\":");
        strings(out, &r.claimed_methods);
    }
    out.extend_from_slice(b",\"status\":");
    match r.status {
        Some(status) => number(out, status.into()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"bytes_in\":");
    number(out, r.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    number(out, r.bytes_out);
    out.extend_from_slice(b",\"duration_ms\":");
    number(out, r.duration_ms);
    out.extend_from_slice(b",\"request_id\":\"");
    out.extend_from_slice(&r.request_id.hex());
    out.extend_from_slice(b"\",\"reason\":");
    opt_str(out, r.reason.as_deref());
    out.push(b'}');
}

fn strings(out: &mut Vec<u8>, values: &[String]) {
    out.push(b'[');
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, value);
    }
    out.push(b']');
}

fn opt_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn number(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A JSON string, escaped as serde_json escapes: `"` and `\`, the short
/// forms of backspace, form feed, newline, carriage return and tab, and
/// `\u00XX` for the other control characters. Everything else, UTF-8
/// included, is copied as it is.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, RequestId, Timestamp};
    use std::{borrow::Cow, sync::Arc, time::SystemTime};

    fn by_hand(r: &AuditRecord) -> String {
        let mut out = Vec::new();
        write(&mut out, r);
        String::from_utf8(out).expect("UTF-8")
    }

    fn by_serde(r: &AuditRecord) -> String {
        serde_json::to_string(r).expect("serializes")
    }

    #[test]
    fn a_full_record_is_what_serde_makes_of_it() {
        let every_control: String = (0u8..0x20).map(char::from).collect();
        let r = AuditRecord {
            ts: Timestamp(Some(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_000_000_123),
            )),
            agent: Some(Arc::from("alpha")),
            cgroup: u64::MAX,
            pid: 4_294_967_295,
            uid: 0,
            action: Some(Action::RateLimited),
            host: Arc::from("api.example.com"),
            port: 443,
            dst: Arc::from("[::ffff:127.0.0.1]:443"),
            proto: "https",
            method: Some(Cow::Borrowed("POST")),
            path: Some(format!("/a\"b\\c{every_control}\u{7f}é漢🦀/end")),
            rule: Some(Arc::from("rule \"one\"")),
            credentials: vec!["github".into(), "open\nai".into()],
            claimed_methods: vec!["DELETE".into(), "PUT\t".into()],
            status: Some(403),
            bytes_in: 10,
            bytes_out: 1 << 40,
            duration_ms: 7,
            request_id: RequestId(0x0123_4567_89ab_cdef),
            reason: Some(Cow::Borrowed("placeholder_not_allowed")),
        };
        assert_eq!(by_hand(&r), by_serde(&r));
    }

    #[test]
    fn an_empty_record_is_what_serde_makes_of_it() {
        let r = AuditRecord::default();
        assert_eq!(by_hand(&r), by_serde(&r));
    }

    #[test]
    fn every_action_and_one_credential_are_what_serde_makes_of_them() {
        for action in [
            Action::Allow,
            Action::Deny,
            Action::Approve,
            Action::RateLimited,
            Action::Error,
        ] {
            let r = AuditRecord {
                action: Some(action),
                credentials: vec!["only".into()],
                ..AuditRecord::default()
            };
            assert_eq!(by_hand(&r), by_serde(&r));
        }
    }
}
