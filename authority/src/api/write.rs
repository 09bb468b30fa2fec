//! The one way a handler writes: submit the op, answer the request from the record the store
//! answers with once it has committed. The event loop never waits: the answer goes out through
//! the request's `Completion` from the writer's reply.

use std::sync::Arc;

use crate::app::App;
use crate::error::Error;
use crate::http::{Outcome, RequestContext, Response};
use crate::store::WriteOp;
use crate::store::outcome::FromOutcome;

/// Submits `op` and answers the request with `render` of the `T` the store answers with (a
/// store refusal, or an outcome of another shape, answers as the error it is). The closure's
/// argument type picks `T`: `|agent: AgentRecord| ..`.
pub fn submit<T: FromOutcome>(
    app: &Arc<App>,
    ctx: &RequestContext<'_>,
    op: WriteOp,
    render: impl FnOnce(T) -> Result<Response, Error> + Send + 'static,
) -> Outcome {
    let done = ctx.defer();
    app.submit(op, move |result| {
        done.complete(
            result
                .and_then(T::from_outcome)
                .map_err(Error::from)
                .and_then(render),
        );
    });
    Outcome::Deferred
}
