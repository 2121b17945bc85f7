//! Validation of user ids, room names, event names and ids (API.md "Names").

use crate::http::response::Response;
/// True for a valid user id, room or tenant name: 1–128 bytes, no control
/// characters, `,` or `/`.
pub use crate::namespace::valid_name as is_valid_name;
use crate::namespace::Namespace;
pub use crate::namespace::MAX_NAME;
use crate::sse::frame;

/// Checks a user id, room or tenant name ([`is_valid_name`]); `400` otherwise.
#[inline]
pub fn check_name(kind: &str, name: &str) -> Result<(), Response> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(invalid(format!("{kind} must be 1-{MAX_NAME} bytes without control characters, ',' or '/'")))
    }
}

/// The namespace of a route's `{tenant}` segment (`None`: the default one):
/// `400` for an invalid name, `404` for a name `--tenants` does not list.
pub fn namespace(tenant: Option<&str>, allowed: Option<&[Box<str>]>) -> Result<Namespace, Response> {
    let Some(tenant) = tenant else { return Ok(Namespace::DEFAULT) };
    check_name("tenant", tenant)?;
    if allowed.is_some_and(|list| list.binary_search_by(|t| (**t).cmp(tenant)).is_err()) {
        return Err(Response::error(404, "not_found", "no such tenant (--tenants does not list it)"));
    }
    Ok(Namespace::tenant(tenant))
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

    #[test]
    fn tenants() {
        assert_eq!(namespace(None, None).unwrap(), Namespace::DEFAULT);
        assert_eq!(namespace(Some("acme"), None).unwrap(), Namespace::tenant("acme"));
        assert_eq!(namespace(Some("a/b"), None).unwrap_err().status, 400);
        assert_eq!(namespace(Some(""), None).unwrap_err().status, 400);
        let allowed: Vec<Box<str>> = vec!["acme".into(), "globex".into()];
        assert!(namespace(Some("globex"), Some(&allowed)).is_ok());
        assert_eq!(namespace(Some("initech"), Some(&allowed)).unwrap_err().status, 404);
        assert_eq!(namespace(Some("bad,name"), Some(&allowed)).unwrap_err().status, 400, "400 before 404");
    }
}
