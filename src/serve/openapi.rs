//! The OpenAPI document, generated from the handlers' annotations (utoipa).

use std::sync::OnceLock;

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{compat, routes};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "slotbandit lookup service",
        description = "Thompson-sampling banner decisions per tenant, slot and city; signed \
                       request_ids; clicks; slot configuration; posteriors. Authenticate with \
                       `Authorization: Bearer <key>` (keys: `slotbandit keys add`). Times are \
                       shown in IST. Errors are JSON `{error, field, detail}`."
    ),
    paths(
        routes::decision::decision,
        routes::click::click,
        routes::slots::list_slots,
        routes::slots::get_slot,
        routes::slots::put_slot,
        routes::slots::import_slots,
        routes::posteriors::posteriors,
        routes::posteriors::series,
        routes::operations::me,
        compat::decision,
        compat::click,
        routes::operations::healthz,
        routes::operations::readyz,
        routes::operations::metrics_text,
    ),
    modifiers(&BearerKey)
)]
pub struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn spec() -> &'static utoipa::openapi::OpenApi {
    static SPEC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    SPEC.get_or_init(ApiDoc::openapi)
}

/// The OpenAPI 3.1 document of this service.
pub async fn document() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(spec())
}
