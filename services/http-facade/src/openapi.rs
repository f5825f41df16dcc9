//! The OpenAPI 3 document of the facade's JSON endpoints, generated from the handlers'
//! annotations, with each alias path documented as a copy of its standard path.

use crate::error::ErrorBody;
use crate::{discovery, health, oauth, security_events, userinfo, ALIASES};
use actix_web::{web, HttpResponse};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera HTTP facade",
        description = "The public OAuth 2.0 / OpenID Connect endpoints of Tessera. Request bodies are accepted as application/x-www-form-urlencoded and as application/json. The browser pages (authorize, login, consent, device verification) are HTML and not described here."
    ),
    paths(
        oauth::token,
        oauth::device_authorization,
        oauth::introspect,
        oauth::revoke,
        security_events::poll,
        discovery::oauth_metadata,
        discovery::openid_metadata,
        discovery::jwks,
        userinfo::userinfo_get,
        userinfo::userinfo_post,
        health::healthz,
        health::readyz,
        openapi_json,
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "oauth2", description = "RFC 6749, 7009, 7662, 8628 endpoints"),
        (name = "discovery", description = "RFC 8414 / OpenID Connect Discovery metadata and keys"),
        (name = "oidc", description = "OpenID Connect UserInfo"),
        (name = "operations", description = "Health and this document"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "client_secret_basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

fn rename_operation(op: &mut Option<Operation>, alias: &str) {
    if let Some(op) = op {
        let suffix: String = alias.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        op.operation_id = op.operation_id.take().map(|id| format!("{id}{suffix}"));
    }
}

/// The document, aliases included.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for (alias, canonical) in ALIASES {
        let Some(item) = doc.paths.paths.get(*canonical).cloned() else {
            // An HTML endpoint: not part of this document.
            continue;
        };
        let mut item: PathItem = item;
        // operationId must stay unique (OpenAPI 3.1 §4.8.10.1).
        for op in [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch] {
            rename_operation(op, alias);
        }
        item.summary = Some(format!("Alias of {canonical}"));
        doc.paths.paths.insert((*alias).to_owned(), item);
    }
    doc
}

pub fn document_json() -> anyhow::Result<String> {
    document().to_json().map_err(|e| anyhow::anyhow!("serializing the OpenAPI document: {e}"))
}

/// The serialized document, built once at start-up.
pub struct OpenApiJson(pub String);

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This document", body = Object, content_type = "application/json"))
)]
pub async fn openapi_json(doc: web::Data<OpenApiJson>) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(doc.0.clone())
}
