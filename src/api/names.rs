//! Validation of user ids, room names, event names and ids (API.md "Names").

use crate::http::response::Response;
use crate::sse::frame;

/// Longest user id, room or tenant name, in bytes.
pub const MAX_NAME: usize = 128;

/// True for a valid user id or room name: 1–128 bytes, no control characters, `,` or `/`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && !name.chars().any(|c| c.is_control() || c == ',' || c == '/')
}

/// Checks a user id or room name ([`is_valid_name`]); `400` otherwise.
pub fn check_name(kind: &str, name: &str) -> Result<(), Response> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(invalid(format!("{kind} must be 1-{MAX_NAME} bytes without control characters, ',' or '/'")))
    }
}

/// Checks an event name or id for a frame field.
pub fn check_field(kind: &str, value: &str) -> Result<(), Response> {
    if value.is_empty() || value.len() > 256 {
        return Err(invalid(format!("{kind} must be 1-256 bytes")));
    }
    frame::check_field(value).map_err(|_| invalid(format!("{kind} must not contain CR, LF or NUL")))
}

/// The 400 answer for a failed validation.
pub fn invalid(message: impl Into<String>) -> Response {
    Response::error(400, "invalid_request", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("user", "alice").is_ok());
        assert!(check_name("user", "名前").is_ok());
        assert!(check_name("user", "").is_err());
        assert!(check_name("user", "a,b").is_err());
        assert!(check_name("user", "a/b").is_err());
        assert!(check_name("user", "a\tb").is_err());
        assert!(check_name("user", &"x".repeat(129)).is_err());
        assert!(check_field("event", "a\nb").is_err());
    }
}
