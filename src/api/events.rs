//! `GET /v1/events?types=…`: the instance's lifecycle events as an SSE
//! stream on the api listener (under `/v1/t/{tenant}/events`, that tenant's
//! only). See [`crate::events`] for what is sent and what it costs.

use bytes::Bytes;

use super::names::invalid;
use super::{param, query_params, subscribe, Routed};
use crate::events::EventTypes;
use crate::http::request::{Method, Request};
use crate::http::response::Response;
use crate::namespace::Namespace;
use crate::shard::envelope::Subscription;
use crate::shard::ShardCtx;

/// Turns the request into a listener stream, or answers why not.
pub fn listen(ctx: &ShardCtx, namespace: Namespace, request: &Request) -> Routed {
    let params = match query_params(request) {
        Ok(params) => params,
        Err(response) => return Routed::Response(response),
    };
    let types = match EventTypes::parse(param(&params, "types").unwrap_or_default()) {
        Ok(types) => types,
        Err(unknown) => {
            return Routed::Response(invalid(format!(
                "unknown event type `{unknown}` (types are connect, disconnect, publish, error)"
            )))
        }
    };
    if request.method == Method::Head {
        return Routed::Response(
            Response::with_body(200, "text/event-stream; charset=utf-8", Bytes::new())
                .header("Cache-Control", "no-cache, no-transform")
                .closing(),
        );
    }
    Routed::Subscribe(Subscription {
        namespace,
        user: None,
        rooms: Vec::new(),
        last_event_id: None,
        preamble: subscribe::preamble(ctx),
        events: Some(types),
    })
}
