//! STARTTLS: the plaintext exchange that asks a server to switch a connection to TLS, for
//! `tcp` and `tls` checks with `starttls` (SMTP, IMAP, POP3, FTP, PostgreSQL, LDAP), timed
//! as the `starttls` phase; the TLS handshake that follows is the caller's, timed as `tls`.
//! It reads the server's answers byte by byte (so nothing of the TLS stream is taken), at
//! most 4 KiB per answer, and quotes at most the first line of an answer it refuses.

use super::{Phase, ProbeRecord};

use crate::model::{ErrorKind, ProbeError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The protocols whose STARTTLS a `tcp` or `tls` check speaks before its TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Starttls {
    Smtp,
    Imap,
    Pop3,
    Ftp,
    Postgres,
    Ldap,
}

impl Starttls {
    pub fn as_str(self) -> &'static str {
        match self {
            Starttls::Smtp => "smtp",
            Starttls::Imap => "imap",
            Starttls::Pop3 => "pop3",
            Starttls::Ftp => "ftp",
            Starttls::Postgres => "postgres",
            Starttls::Ldap => "ldap",
        }
    }
}

/// An answer (all its lines) is read up to this.
const MAX_ANSWER_BYTES: usize = 4096;
/// LDAP's StartTLS extended operation.
const LDAP_STARTTLS_OID: &[u8] = b"1.3.6.1.4.1.1466.20037";
/// PostgreSQL's SSLRequest code.
const POSTGRES_SSL_REQUEST: u32 = 80_877_103;

/// Runs `protocol`'s plaintext exchange on `tcp` until the server agreed to TLS.
pub async fn negotiate(
    tcp: &mut TcpStream,
    protocol: Starttls,
    target: SocketAddr,
    record: &mut ProbeRecord,
) -> Result<(), ProbeError> {
    record.begin(Phase::Starttls);
    let mut session = Session {
        tcp,
        target,
        protocol,
    };
    match protocol {
        Starttls::Smtp => {
            session.expect_reply("220").await?;
            session.send(b"EHLO bastion.invalid\r\n").await?;
            let capabilities = session.expect_reply("250").await?;
            if !capabilities.lines().any(|line| {
                line.get(4..)
                    .is_some_and(|rest| rest.trim().eq_ignore_ascii_case("STARTTLS"))
            }) {
                return Err(session.refused("its EHLO answer does not offer STARTTLS"));
            }
            session.send(b"STARTTLS\r\n").await?;
            session.expect_reply("220").await?;
        }
        Starttls::Ftp => {
            session.expect_reply("220").await?;
            session.send(b"AUTH TLS\r\n").await?;
            session.expect_reply("234").await?;
        }
        Starttls::Imap => {
            session.expect_line("* OK").await?;
            session.send(b"b1 STARTTLS\r\n").await?;
            loop {
                let line = session.line().await?;
                if line.starts_with("b1 ") {
                    if line
                        .get(3..5)
                        .is_some_and(|word| word.eq_ignore_ascii_case("OK"))
                    {
                        break;
                    }
                    return Err(session.refused(&format!("it answered `{}`", first_line(&line))));
                }
            }
        }
        Starttls::Pop3 => {
            session.expect_line("+OK").await?;
            session.send(b"STLS\r\n").await?;
            session.expect_line("+OK").await?;
        }
        Starttls::Postgres => {
            let mut request = 8u32.to_be_bytes().to_vec();
            request.extend_from_slice(&POSTGRES_SSL_REQUEST.to_be_bytes());
            session.send(&request).await?;
            let mut answer = [0u8; 1];
            session
                .tcp
                .read_exact(&mut answer)
                .await
                .map_err(|error| session.io(error))?;
            match answer[0] {
                b'S' => {}
                b'N' => return Err(session.refused("it does not accept SSL (ssl = off)")),
                other => {
                    return Err(session.refused(&format!(
                        "it answered the SSLRequest with byte {other:#04x}"
                    )))
                }
            }
        }
        Starttls::Ldap => {
            let mut operation = vec![0x80, LDAP_STARTTLS_OID.len() as u8];
            operation.extend_from_slice(LDAP_STARTTLS_OID);
            let mut body = vec![0x02, 0x01, 0x01, 0x77, operation.len() as u8];
            body.extend_from_slice(&operation);
            let mut message = vec![0x30, body.len() as u8];
            message.extend_from_slice(&body);
            session.send(&message).await?;
            let answer = session.ber_message().await?;
            match ldap_extended_result(&answer) {
                Some((0, _)) => {}
                Some((code, diagnostic)) if diagnostic.is_empty() => {
                    return Err(
                        session.refused(&format!("it answered StartTLS with resultCode {code}"))
                    )
                }
                Some((code, diagnostic)) => {
                    return Err(session.refused(&format!(
                        "it answered StartTLS with resultCode {code} (`{}`)",
                        first_line(&diagnostic)
                    )))
                }
                None => return Err(session.refused("its answer is no LDAP ExtendedResponse")),
            }
        }
    }
    record.end();
    Ok(())
}

/// The resultCode and diagnosticMessage of an LDAP ExtendedResponse, from the content of its
/// LDAPMessage SEQUENCE: the messageID INTEGER, then `[APPLICATION 24]`, whose first elements
/// are the ENUMERATED resultCode, the matchedDN and the diagnosticMessage. None when the
/// bytes are not that.
fn ldap_extended_result(message: &[u8]) -> Option<(u8, String)> {
    let (tag, _id, rest) = ber_element(message)?;
    if tag != 0x02 {
        return None;
    }
    let (tag, response, _) = ber_element(rest)?;
    if tag != 0x78 {
        return None;
    }
    let (tag, code, rest) = ber_element(response)?;
    let [code] = code else {
        return None;
    };
    if tag != 0x0a {
        return None;
    }
    let diagnostic = ber_element(rest)
        .and_then(|(_, _, rest)| ber_element(rest))
        .filter(|(tag, _, _)| *tag == 0x04)
        .map(|(_, text, _)| String::from_utf8_lossy(text).into_owned())
        .unwrap_or_default();
    Some((*code, diagnostic))
}

/// One BER element of `bytes`: its tag, its value, and the bytes after it. Short and long
/// (up to 4 octets) definite lengths; None when truncated or indefinite.
fn ber_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first & 0x80 == 0 {
        usize::from(first)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 {
            return None;
        }
        let (length, after) = rest.split_at_checked(octets)?;
        rest = after;
        length
            .iter()
            .fold(0usize, |length, byte| (length << 8) | usize::from(*byte))
    };
    let (value, after) = rest.split_at_checked(length)?;
    Some((tag, value, after))
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

struct Session<'a> {
    tcp: &'a mut TcpStream,
    target: SocketAddr,
    protocol: Starttls,
}

impl Session<'_> {
    fn io(&self, error: std::io::Error) -> ProbeError {
        ProbeError::new(
            ErrorKind::Connect,
            format!(
                "starttls {} with {}: {error}",
                self.protocol.as_str(),
                self.target
            ),
        )
    }

    /// The server would not switch to TLS: a `tls` error, since TLS is what failed.
    fn refused(&self, why: &str) -> ProbeError {
        ProbeError::new(
            ErrorKind::Tls,
            format!(
                "{} refused STARTTLS ({}): {why}",
                self.target,
                self.protocol.as_str()
            ),
        )
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ProbeError> {
        self.tcp
            .write_all(bytes)
            .await
            .map_err(|error| self.io(error))
    }

    /// One line, without its line end.
    async fn line(&mut self) -> Result<String, ProbeError> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            if line.len() >= MAX_ANSWER_BYTES {
                return Err(self.refused(&format!("a line over {MAX_ANSWER_BYTES} bytes")));
            }
            let read = self
                .tcp
                .read(&mut byte)
                .await
                .map_err(|error| self.io(error))?;
            if read == 0 {
                return Err(self.refused("it closed the connection"));
            }
            line.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&line).trim_end().to_string())
    }

    /// A line that starts with `prefix`.
    async fn expect_line(&mut self, prefix: &str) -> Result<String, ProbeError> {
        let line = self.line().await?;
        if line.starts_with(prefix) {
            Ok(line)
        } else {
            Err(self.refused(&format!("expected `{prefix}`, got `{}`", first_line(&line))))
        }
    }

    /// An SMTP/FTP reply (`code-text` lines, then `code text`) whose code is `code`; all of
    /// its lines.
    async fn expect_reply(&mut self, code: &str) -> Result<String, ProbeError> {
        let mut reply = String::new();
        loop {
            let line = self.line().await?;
            let done = line.as_bytes().get(3) != Some(&b'-');
            if !line.starts_with(code) {
                return Err(self.refused(&format!("expected {code}, got `{}`", first_line(&line))));
            }
            reply.push_str(&line);
            reply.push('\n');
            if reply.len() > MAX_ANSWER_BYTES {
                return Err(self.refused(&format!("an answer over {MAX_ANSWER_BYTES} bytes")));
            }
            if done {
                return Ok(reply);
            }
        }
    }

    /// One BER-encoded LDAP message (a SEQUENCE), at most `MAX_ANSWER_BYTES`.
    async fn ber_message(&mut self) -> Result<Vec<u8>, ProbeError> {
        let mut head = [0u8; 2];
        self.tcp
            .read_exact(&mut head)
            .await
            .map_err(|error| self.io(error))?;
        if head[0] != 0x30 {
            return Err(self.refused("its answer is no LDAP message"));
        }
        let length = if head[1] & 0x80 == 0 {
            usize::from(head[1])
        } else {
            let octets = usize::from(head[1] & 0x7f);
            if octets == 0 || octets > 2 {
                return Err(self.refused("its answer has a length bastion does not read"));
            }
            let mut bytes = [0u8; 2];
            self.tcp
                .read_exact(&mut bytes[2 - octets..])
                .await
                .map_err(|error| self.io(error))?;
            usize::from(u16::from_be_bytes(bytes))
        };
        if length > MAX_ANSWER_BYTES {
            return Err(self.refused(&format!("an answer over {MAX_ANSWER_BYTES} bytes")));
        }
        let mut body = vec![0u8; length];
        self.tcp
            .read_exact(&mut body)
            .await
            .map_err(|error| self.io(error))?;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ldap_extended_response_gives_its_result_code_and_diagnostic() {
        // slapd's success: messageID 1, ExtendedResponse {0, "", ""}.
        let success = [
            0x02, 0x01, 0x01, 0x78, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00,
        ];
        assert_eq!(ldap_extended_result(&success), Some((0, String::new())));
        // unavailable (52) with a diagnostic, the response's length in long form.
        let mut refused = vec![
            0x02, 0x01, 0x01, 0x78, 0x81, 0x11, 0x0a, 0x01, 52, 0x04, 0x00,
        ];
        refused.extend([0x04, 0x0a]);
        refused.extend(b"no TLS yet");
        assert_eq!(
            ldap_extended_result(&refused),
            Some((52, "no TLS yet".to_string()))
        );
    }

    #[test]
    fn bytes_that_are_no_extended_response_are_none() {
        // A bind response ([APPLICATION 1]) instead.
        let bind = [
            0x02, 0x01, 0x01, 0x61, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00,
        ];
        assert_eq!(ldap_extended_result(&bind), None);
        // Truncated anywhere.
        let success = [
            0x02, 0x01, 0x01, 0x78, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00,
        ];
        for cut in 0..8 {
            assert_eq!(ldap_extended_result(&success[..cut]), None, "cut at {cut}");
        }
        // A length that claims more than there is, or too many length octets.
        assert_eq!(ber_element(&[0x04, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(ber_element(&[0x04, 0x85, 0, 0, 0, 0, 1, 0]), None);
        assert_eq!(ber_element(&[0x04, 0x80]), None);
        // A resultCode of two bytes is not one bastion reads.
        let wide = [
            0x02, 0x01, 0x01, 0x78, 0x08, 0x0a, 0x02, 0x00, 0x01, 0x04, 0x00, 0x04, 0x00,
        ];
        assert_eq!(ldap_extended_result(&wide), None);
    }
}
