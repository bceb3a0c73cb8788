//! Who may call what, in the OpenAPI document: a `bearer` security
//! scheme, and on every operation a sandbox token can reach (as
//! [`access::need`] says, the table the gate uses) the token as the
//! alternative to the unix socket, with the 401 and 403 answers.

use axum::http::Method;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Components, ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

use crate::auth::access::{self, Need};

/// The security scheme's name.
const BEARER: &str = "bearer";

fn error_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// Adds the scheme and marks the operations tokens can reach.
pub(super) fn document(api: &mut OpenApi) {
    api.components
        .get_or_insert_with(Components::new)
        .add_security_scheme(
            BEARER,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    for (path, item) in api.paths.paths.iter_mut() {
        let sample = path
            .replace("{id}", "sbx")
            .replace("{exec}", "exec")
            .replace("{path}", "file")
            .replace("{template}", "t");
        let operations = [
            (Method::GET, &mut item.get),
            (Method::PUT, &mut item.put),
            (Method::POST, &mut item.post),
            (Method::DELETE, &mut item.delete),
            (Method::HEAD, &mut item.head),
            (Method::PATCH, &mut item.patch),
        ];
        for (method, op) in operations {
            let Some(op) = op else { continue };
            if access::need(&method, &sample) == Need::Admin {
                continue;
            }
            // No requirement (the unix socket) or a bearer token (TCP).
            op.security = Some(vec![
                SecurityRequirement::default(),
                SecurityRequirement::new(BEARER, Vec::<String>::new()),
            ]);
            let responses = &mut op.responses.responses;
            responses.entry("401".into()).or_insert_with(|| {
                error_response("On TCP: no token, or a malformed, tampered or expired one, or its sandbox ended")
            });
            responses.entry("403".into()).or_insert_with(|| {
                error_response(
                    "On TCP: the token is for another sandbox or does not allow this operation",
                )
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_routes_say_so_and_admin_routes_do_not() {
        let doc: serde_json::Value =
            serde_json::from_str(&super::super::openapi_json()).expect("json");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let exec = &doc["paths"]["/v1/sandboxes/{id}/execs"]["post"];
        assert_eq!(exec["security"][1]["bearer"], serde_json::json!([]));
        assert!(exec["responses"]["401"].is_object());
        let list = &doc["paths"]["/v1/sandboxes"]["get"];
        assert!(list["security"].is_null());
        assert!(list["responses"]["401"].is_null());
    }
}
