//! City aliases of a tenant: list, declare, remove, import a CSV. Admin keys only. Writes go to
//! the store (the whole set, checked by `CityAliases::declare`), then reload the cache so that
//! the next decision resolves them; the jobs pick them up as docs/architecture.md, "City names"
//! says.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{blocking, tenant_path, Shared, TenantPath};
use crate::model::{validate_name, CityAliases};
use crate::serve::auth::Caller;
use crate::serve::error::{ApiError, ErrorBody};
use crate::serve::AppState;
use crate::store::Role;

/// One alias: `alias` is another spelling of the canonical `city` (both normalized).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CityAlias {
    #[schema(example = "bangalore")]
    pub alias: String,
    #[schema(example = "bengaluru")]
    pub city: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CityAliasList {
    pub tenant: String,
    pub aliases: Vec<CityAlias>,
}

/// The canonical city of an alias, as the site or an address book spells it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CityAliasBody {
    #[schema(example = "Bengaluru")]
    pub city: String,
}

fn list(tenant: String, aliases: &CityAliases) -> CityAliasList {
    CityAliasList {
        tenant,
        aliases: aliases
            .iter()
            .map(|(alias, city)| CityAlias {
                alias: alias.to_string(),
                city: city.to_string(),
            })
            .collect(),
    }
}

/// Reads the tenant's aliases, changes them with `change` (which refuses bad input before
/// anything is written), stores them when they changed and reloads the cache.
async fn change_aliases<T: Send + 'static>(
    state: &AppState,
    tenant: &str,
    change: impl FnOnce(&mut CityAliases) -> Result<T, ApiError> + Send + 'static,
) -> Result<(T, CityAliases), ApiError> {
    let store = state.cache.store().clone();
    let t = tenant.to_string();
    let before = blocking(move || store.city_aliases(&t)).await?;
    let mut aliases = before.clone();
    let out = change(&mut aliases)?;
    if aliases != before {
        let store = state.cache.store().clone();
        let (t, a) = (tenant.to_string(), aliases.clone());
        blocking(move || store.put_city_aliases(&t, &a)).await?;
        if let Err(e) = state.cache.refresh().await {
            tracing::warn!(
                "aliases stored, cache reload failed (retried on the next refresh): {e}"
            );
        }
    }
    Ok((out, aliases))
}

type AliasPath = Result<Path<(String, String)>, PathRejection>;

fn alias_path(path: AliasPath) -> Result<(String, String), ApiError> {
    let Path((tenant, alias)) = path?;
    validate_name("tenant", &tenant)?;
    Ok((tenant, alias))
}

/// The tenant's city aliases. Needs role admin.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/city-aliases",
    tag = "cities",
    params(("tenant" = String, Path, pattern = "^[a-z0-9_-]{1,64}$")),
    responses(
        (status = 200, body = CityAliasList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Another tenant's key, or role serve", body = ErrorBody),
        (status = 503, description = "The store is down", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list_aliases(
    State(state): Shared,
    caller: Caller,
    path: TenantPath,
) -> Result<Json<CityAliasList>, ApiError> {
    let tenant = tenant_path(path)?;
    caller.require(&tenant, Role::Admin)?;
    let store = state.cache.store().clone();
    let t = tenant.clone();
    let aliases = blocking(move || store.city_aliases(&t)).await?;
    Ok(Json(list(tenant, &aliases)))
}

/// Declare `alias` another spelling of `city` (both normalized by the city rule): decisions for
/// the alias read the city's arms and its events count into them. History already counted under
/// the alias is merged into the city by the stream job (docs/architecture.md, "City names").
/// Refused with 400 naming the field, nothing changed: a name that does not normalize, an alias
/// of itself, a city that is itself an alias, an alias that is a city of other aliases, an alias
/// already naming another city. Needs role admin.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/city-aliases/{alias}",
    tag = "cities",
    params(
        ("tenant" = String, Path, pattern = "^[a-z0-9_-]{1,64}$"),
        ("alias" = String, Path, description = "Any spelling, e.g. `Bangalore`"),
    ),
    request_body = CityAliasBody,
    responses(
        (status = 200, description = "Declared (or already so)", body = CityAlias),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Another tenant's key, or role serve", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, description = "The store is down", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn put_alias(
    State(state): Shared,
    caller: Caller,
    path: AliasPath,
    body: Result<Json<CityAliasBody>, JsonRejection>,
) -> Result<Json<CityAlias>, ApiError> {
    let (tenant, alias) = alias_path(path)?;
    caller.require(&tenant, Role::Admin)?;
    let Json(body) = body?;
    let ((alias, city), _) = change_aliases(&state, &tenant, move |aliases| {
        Ok(aliases.declare(&alias, &body.city)?)
    })
    .await?;
    Ok(Json(CityAlias { alias, city }))
}

/// Remove an alias: from now on the name is a city of its own again (history merged into the
/// canonical city stays there). Needs role admin.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/city-aliases/{alias}",
    tag = "cities",
    params(
        ("tenant" = String, Path, pattern = "^[a-z0-9_-]{1,64}$"),
        ("alias" = String, Path),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No such alias", body = ErrorBody),
        (status = 503, description = "The store is down", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn delete_alias(
    State(state): Shared,
    caller: Caller,
    path: AliasPath,
) -> Result<StatusCode, ApiError> {
    let (tenant, alias) = alias_path(path)?;
    caller.require(&tenant, Role::Admin)?;
    change_aliases(&state, &tenant, move |aliases| {
        if aliases.remove(&alias)? {
            Ok(())
        } else {
            Err(ApiError::not_found(
                "alias",
                format!("{alias:?} is not a city alias"),
            ))
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Import aliases from a CSV with the header `alias,city`, declared onto the tenant's aliases
/// all or nothing (a refused line is named). Needs role admin.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/city-alias-imports",
    tag = "cities",
    params(("tenant" = String, Path, pattern = "^[a-z0-9_-]{1,64}$")),
    request_body(content = String, content_type = "text/csv"),
    responses(
        (status = 200, description = "Every alias of the tenant", body = CityAliasList),
        (status = 400, description = "A line breaks a rule (its number and field are named)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, description = "The store is down", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn import_aliases(
    State(state): Shared,
    caller: Caller,
    path: TenantPath,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CityAliasList>, ApiError> {
    let tenant = tenant_path(path)?;
    caller.require(&tenant, Role::Admin)?;
    let body = body?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::invalid("body", "must be UTF-8 text"))?;
    let ((), aliases) = change_aliases(&state, &tenant, move |aliases| {
        *aliases = aliases.with_csv(&text)?;
        Ok(())
    })
    .await?;
    Ok(Json(list(tenant, &aliases)))
}
