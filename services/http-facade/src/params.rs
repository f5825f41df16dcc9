//! Request parameters from a query string, an `application/x-www-form-urlencoded` body (the
//! RFCs) or an `application/json` object (what the documented JSON APIs send), and client
//! authentication from HTTP Basic or the body. Parsing only: what the values mean is the
//! token service's business.

use crate::error::ApiError;
use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{FromRequest, HttpRequest};
use base64::Engine as _;
use futures::future::LocalBoxFuture;
use futures::StreamExt as _;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;
use tessera_core::{printable, OAuthError};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How much of an oversized body is still read (and dropped) so the client sees the 413
/// instead of a reset connection.
const DRAIN_LIMIT_BYTES: usize = 1024 * 1024;

/// The parameters of one request, each name at most once, empty values left out.
#[derive(Default)]
pub struct Params(Vec<(String, String)>);

// Values are secrets often enough (passwords, codes, tokens) that only names are shown.
impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(k, _)| k)).finish()
    }
}

impl Params {
    /// Parses `application/x-www-form-urlencoded` (a query string or a form body).
    pub fn from_urlencoded(input: &[u8]) -> Result<Self, OAuthError> {
        let mut params = Params::default();
        for (name, value) in url::form_urlencoded::parse(input) {
            params.push(name.into_owned(), value.into_owned())?;
        }
        Ok(params)
    }

    /// Parses a JSON object of strings (numbers and booleans are taken as their text).
    pub fn from_json(input: &[u8]) -> Result<Self, OAuthError> {
        // serde_json's type errors quote the value, so a body that is a bare JSON string would
        // come back whole in the error_description: anything but an object is refused first.
        if input.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(OAuthError::invalid_request("the JSON body is not an object"));
        }
        let flat: FlatObject = serde_json::from_slice(input)
            .map_err(|e| OAuthError::invalid_request(format!("the JSON body is not a flat object: {e}")))?;
        Ok(flat.0)
    }

    fn push(&mut self, name: String, value: String) -> Result<(), OAuthError> {
        // RFC 6749 §3.1: parameters must not be included more than once.
        if self.0.iter().any(|(k, _)| *k == name) {
            return Err(OAuthError::invalid_request(format!("the parameter {} is repeated", printable(&name))));
        }
        // RFC 6749 §3.1: a parameter sent without a value is treated as omitted.
        if !value.is_empty() {
            self.0.push((name, value));
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The parameters as a typed request (unknown names are ignored, RFC 6749 §3.1).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, OAuthError> {
        let pairs = self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        T::deserialize(serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(pairs))
            .map_err(|e| OAuthError::invalid_request(format!("malformed parameters: {e}")))
    }
}

/// A JSON object whose values are scalars, with repeated names refused (serde_json would keep
/// the last one silently).
struct FlatObject(Params);

impl<'de> Deserialize<'de> for FlatObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FlatObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FlatObject, A::Error> {
                use serde::de::Error as _;
                let mut params = Params::default();
                while let Some(name) = map.next_key::<String>()? {
                    let value = match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::String(s) => s,
                        serde_json::Value::Number(n) => n.to_string(),
                        serde_json::Value::Bool(b) => b.to_string(),
                        serde_json::Value::Null => String::new(),
                        _ => {
                            return Err(A::Error::custom(format!(
                                "the parameter {} must be a string",
                                printable(&name)
                            )))
                        }
                    };
                    params.push(name, value).map_err(|e| A::Error::custom(e.description))?;
                }
                Ok(FlatObject(params))
            }
        }
        d.deserialize_map(V)
    }
}

/// The body format of a request.
enum BodyKind {
    Form,
    Json,
}

fn body_kind(req: &HttpRequest) -> Result<Option<BodyKind>, OAuthError> {
    let wrong = || {
        OAuthError::invalid_request("the Content-Type must be application/x-www-form-urlencoded or application/json")
    };
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| wrong())?;
    let mime: mime_lite::Mime = mime_lite::parse(value).ok_or_else(wrong)?;
    if let Some(charset) = &mime.charset {
        if !charset.eq_ignore_ascii_case("utf-8") {
            return Err(OAuthError::invalid_request("the body must be UTF-8"));
        }
    }
    match (mime.kind.as_str(), mime.subtype.as_str()) {
        ("application", "x-www-form-urlencoded") => Ok(Some(BodyKind::Form)),
        ("application", "json") => Ok(Some(BodyKind::Json)),
        ("application", s) if s.ends_with("+json") => Ok(Some(BodyKind::Json)),
        _ => Err(wrong()),
    }
}

/// Just enough of RFC 9110 §8.3.1 media types: type, subtype and a charset parameter.
mod mime_lite {
    pub struct Mime {
        pub kind: String,
        pub subtype: String,
        pub charset: Option<String>,
    }

    pub fn parse(s: &str) -> Option<Mime> {
        let mut parts = s.split(';');
        let essence = parts.next()?.trim().to_ascii_lowercase();
        let (kind, subtype) = essence.split_once('/')?;
        if kind.is_empty() || subtype.is_empty() {
            return None;
        }
        let mut charset = None;
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("charset") {
                    charset = Some(v.trim().trim_matches('"').to_owned());
                }
            }
        }
        Some(Mime { kind: kind.to_owned(), subtype: subtype.to_owned(), charset })
    }
}

fn too_large() -> ApiError {
    ApiError::invalid_request(format!("the request body is larger than {} KiB", MAX_BODY_BYTES / 1024))
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// Reads the whole body, at most [`MAX_BODY_BYTES`].
async fn read_body(req: &HttpRequest, payload: &mut Payload) -> Result<Vec<u8>, ApiError> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT_BYTES) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(MAX_BODY_BYTES));
    let mut seen = 0usize;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid_request(format!("the request body could not be read: {e}")))?;
        seen += chunk.len();
        if seen > DRAIN_LIMIT_BYTES {
            return Err(too_large());
        }
        if seen <= MAX_BODY_BYTES {
            body.extend_from_slice(&chunk);
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(body)
}

/// A JSON body (an RFC 8936 poll request), at most [`MAX_BODY_BYTES`]; `None` for no body.
pub async fn json_body(req: &HttpRequest, payload: &mut Payload) -> Result<Option<Vec<u8>>, ApiError> {
    let kind = body_kind(req);
    let body = read_body(req, payload).await?;
    match kind? {
        Some(BodyKind::Json) => Ok(Some(body)),
        None if body.iter().all(u8::is_ascii_whitespace) => Ok(None),
        _ => Err(ApiError::invalid_request("the Content-Type must be application/json")),
    }
}

/// Parameters from a request body (form or JSON).
pub async fn body_params(req: &HttpRequest, payload: &mut Payload) -> Result<Params, ApiError> {
    let kind = body_kind(req);
    let body = read_body(req, payload).await?;
    let kind = kind?;
    match kind {
        Some(BodyKind::Form) => Ok(Params::from_urlencoded(&body)?),
        Some(BodyKind::Json) => Ok(Params::from_json(&body)?),
        // A bodiless POST (no Content-Type, nothing sent) has no parameters; anything else
        // must say what it is.
        None if body.iter().all(u8::is_ascii_whitespace) => Ok(Params::default()),
        None => Err(ApiError::invalid_request(
            "the Content-Type must be application/x-www-form-urlencoded or application/json",
        )),
    }
}

impl FromRequest for Params {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move { body_params(&req, &mut payload).await })
    }
}

/// How a client identified itself (RFC 6749 §2.3.1).
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: String,
    /// Whether they came in an `Authorization: Basic` header.
    pub basic: bool,
}

/// Client credentials from HTTP Basic or the body parameters, never both (RFC 6749 §2.3:
/// one authentication method per request).
pub fn client_credentials(
    req: &HttpRequest,
    body_client_id: &str,
    body_client_secret: &str,
) -> Result<ClientCredentials, ApiError> {
    let mut headers = req.headers().get_all(header::AUTHORIZATION);
    let Some(value) = headers.next() else {
        return Ok(ClientCredentials {
            client_id: body_client_id.to_owned(),
            client_secret: body_client_secret.to_owned(),
            basic: false,
        });
    };
    if headers.next().is_some() {
        return Err(ApiError::invalid_request("the Authorization header is repeated"));
    }
    let bad = |why: &str| {
        ApiError::new(OAuthError::invalid_client(format!("client authentication failed: {why}"))).basic(true)
    };
    let value = value.to_str().map_err(|_| bad("the Authorization header is not ASCII"))?;
    let (scheme, encoded) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad("use HTTP Basic or the client_id/client_secret parameters"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad("the Basic credentials are not base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad("the Basic credentials are not UTF-8"))?;
    let (id, secret) = decoded.split_once(':').ok_or_else(|| bad("the Basic credentials have no ':'"))?;
    // RFC 6749 §2.3.1: the id and secret are form-urlencoded before they are joined.
    let id = form_decode(id);
    let secret = form_decode(secret);
    if !body_client_secret.is_empty() {
        return Err(ApiError::invalid_request(
            "the client authenticated twice: with HTTP Basic and with client_secret in the body",
        ));
    }
    if !body_client_id.is_empty() && body_client_id != id {
        return Err(ApiError::invalid_request("the client_id in the body differs from the one in HTTP Basic"));
    }
    Ok(ClientCredentials { client_id: id, client_secret: secret, basic: true })
}

fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn repeated_parameters_are_refused_in_both_formats() {
        assert!(Params::from_urlencoded(b"a=1&a=2").is_err());
        assert!(Params::from_json(br#"{"a":"1","a":"2"}"#).is_err());
        let p = Params::from_urlencoded(b"a=1&b=&c=x+y%21").unwrap();
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), None);
        assert_eq!(p.get("c"), Some("x y!"));
    }

    #[test]
    fn json_values_must_be_scalars() {
        let p = Params::from_json(br#"{"a":"x","n":5,"t":true,"z":null}"#).unwrap();
        assert_eq!(p.get("n"), Some("5"));
        assert_eq!(p.get("t"), Some("true"));
        assert_eq!(p.get("z"), None);
        assert!(Params::from_json(br#"{"a":{"b":1}}"#).is_err());
        assert!(Params::from_json(br#"["a"]"#).is_err());
        assert!(Params::from_json(b"{").is_err());
    }

    #[test]
    fn a_json_body_that_is_not_an_object_is_not_quoted_back() {
        for body in
            [&br#"  "grant_type=password&password=hunter2""#[..], b"12345678901234567890", b"[\"hunter2\"]", b""]
        {
            let e = Params::from_json(body).unwrap_err();
            assert_eq!(e.description, "the JSON body is not an object");
        }
        let e = Params::from_json(br#"{"a": "hunter2", "a": "x"}"#).unwrap_err();
        assert!(e.description.contains("repeated") && !e.description.contains("hunter2"), "{}", e.description);
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let raw = base64::engine::general_purpose::STANDARD.encode("my%7Eclient:s+e%2Bc");
        let req = TestRequest::default().insert_header(("Authorization", format!("Basic {raw}"))).to_http_request();
        let c = client_credentials(&req, "", "").unwrap();
        assert_eq!(c.client_id, "my~client");
        assert_eq!(c.client_secret, "s e+c");
        assert!(c.basic);
        assert!(client_credentials(&req, "", "other").is_err());
        assert!(client_credentials(&req, "someone-else", "").is_err());
        assert!(client_credentials(&req, "my~client", "").is_ok());
    }
}
