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
        routes::cities::list_aliases,
        routes::cities::put_alias,
        routes::cities::delete_alias,
        routes::cities::import_aliases,
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

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::bandit::{BetaPosterior, PosteriorSummary, PriorSource};
    use crate::model::Counts;
    use crate::serve::routes::posteriors::{ArmPrior, BannerPosterior};

    /// The properties of a component schema, following `$ref` and `allOf` (flattened fields).
    fn properties(spec: &Value, schema: &Value, into: &mut Vec<(String, bool)>) {
        if let Some(name) = schema["$ref"].as_str() {
            let name = name.trim_start_matches("#/components/schemas/");
            return properties(spec, &spec["components"]["schemas"][name], into);
        }
        for part in schema["allOf"].as_array().into_iter().flatten() {
            properties(spec, part, into);
        }
        let required = schema["required"].as_array();
        for key in schema["properties"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.keys())
        {
            let is_required = required.is_some_and(|r| r.iter().any(|k| k == key.as_str()));
            into.push((key.clone(), is_required));
        }
    }

    #[test]
    fn a_banner_posterior_schema_names_every_field_it_serializes() {
        let spec = serde_json::to_value(spec()).unwrap();
        let mut documented = Vec::new();
        let schema = &spec["components"]["schemas"]["BannerPosterior"];
        properties(&spec, schema, &mut documented);
        documented.sort();

        let posterior = BetaPosterior::uniform();
        let banner = BannerPosterior {
            banner: "b01".into(),
            image: "b01.svg".into(),
            summary: PosteriorSummary::new(Counts::ZERO, posterior),
            p_best: 1.0,
            valid_now: true,
            prior: ArmPrior {
                source: PriorSource::Uniform,
                alpha0: 1.0,
                beta0: 1.0,
                city_effect: None,
            },
        };
        let json = serde_json::to_value(&banner).unwrap();
        let mut served: Vec<(String, bool)> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| (k.clone(), true))
            .collect();
        served.sort();
        assert_eq!(documented, served, "every field documented and required");
    }
}
