//! Responses: status, a few headers and a body, serialised in one buffer.

use bytes::{BufMut, Bytes};

use crate::units::decimal;

/// Content type of every JSON answer.
pub const JSON: &str = "application/json";

/// An answer to one request.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers (Content-Type and Content-Length are written from the fields).
    pub headers: Vec<(&'static str, String)>,
    /// Value of Content-Type, when there is a body.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
    /// Close the connection after this answer (framing errors, oversized bodies).
    pub close: bool,
}

impl Response {
    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        // Serialized into a buffer that fits a typical answer at once (the
        // `Display` route grows a String from empty, reallocating as it goes).
        let mut body = Vec::with_capacity(128);
        serde_json::to_writer(&mut body, value).expect("a Value always serializes");
        Response { status, headers: Vec::new(), content_type: JSON, body: Bytes::from(body), close: false }
    }

    /// The error shape of the API: `{"error":"<code>","message":"<text>"}`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Response::json(status, &serde_json::json!({ "error": code, "message": message.into() }))
    }

    /// A body of any type.
    pub fn with_body(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Response { status, headers: Vec::new(), content_type, body: body.into(), close: false }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Marks the connection for closing after this answer.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// Serialises the answer; `head_only` for HEAD requests (RFC 9110 §9.3.2:
    /// the same headers, Content-Length included, and no body).
    pub fn encode(&self, head_only: bool, keep_alive: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.body.len());
        let mut digits = [0; 20];
        out.put_slice(b"HTTP/1.1 ");
        out.put_slice(decimal(u64::from(self.status), &mut digits));
        out.put_u8(b' ');
        out.put_slice(reason(self.status).as_bytes());
        out.put_slice(b"\r\n");
        if !self.body.is_empty() || self.status != 204 {
            put_header(&mut out, "Content-Type", self.content_type);
            out.put_slice(b"Content-Length: ");
            out.put_slice(decimal(self.body.len() as u64, &mut digits));
            out.put_slice(b"\r\n");
        }
        for (name, value) in &self.headers {
            put_header(&mut out, name, value);
        }
        put_header(&mut out, "Connection", if keep_alive && !self.close { "keep-alive" } else { "close" });
        out.put_slice(b"\r\n");
        if !head_only {
            out.put_slice(&self.body);
        }
        out
    }
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
}

/// Reason phrases for the statuses this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_json_errors_and_head() {
        let response = Response::error(404, "not_found", "no route").header("X-A", "1");
        let text = String::from_utf8(response.encode(false, true).to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"), "{text}");
        assert!(text.contains("X-A: 1\r\nConnection: keep-alive\r\n\r\n{"), "{text}");
        assert!(text.ends_with(r#"{"error":"not_found","message":"no route"}"#), "{text}");
        let head = String::from_utf8(response.encode(true, false).to_vec()).unwrap();
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
        assert!(head.contains("Content-Length: 42\r\n"), "{head}");
    }
}
