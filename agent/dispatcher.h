/* agent/dispatcher.h - from a delivered request to a finished operation.
 *
 * In the AMQP thread: the method and version are looked up and the arguments validated
 * (a bad request is answered and rejected at once, touching nothing); a state-changing
 * request is recorded in the journal before the broker is acknowledged (the requests read
 * together share one flush of the journal's log), and one whose
 * _unique_id the journal knows is not run again (a finished call gets its stored reply
 * again).  Then the operation waits for the instance (one operation per instance at a
 * time; a delete cancels a build in progress) and for a worker of its kind (builds,
 * migrations, other operations, queries), runs, and its result goes back as the reply;
 * the journal closes the request and the instance's action. */
#pragma once

#include <gio/gio.h>

#include "agent/agent.h"
#include "agent/state/journal.h"
#include "api/methods.h"
#include "scheduler-client/amqp/envelope.h"
#include "scheduler-client/amqp/rpc.h"

/* One operation on its way. */
typedef struct {
    VnAgent *agent;
    const VnMethodInfo *info;
    VnRequest *req;
    VnRpcMessage *msg; /* reply address, context, _unique_id */
    char *unique_id;
    char *request_id;
    GCancellable *cancel;
    gboolean replayed;  /* re-run after a restart */
    gint64 action_id;   /* the instance action in the journal, 0 when none */
    gint64 received_us; /* monotonic */
} VnOp;

VnDispatcher *vn_dispatcher_new(VnAgent *agent);
/* Stops for good: nothing more is accepted or started, queued operations are left to
 * the journal's replay at the next start, running ones are cancelled, and it returns once
 * every worker has returned (after which no worker touches the agent).  Idempotent. */
void vn_dispatcher_shutdown(VnDispatcher *d);
/* Shuts down (if not yet) and frees. */
void vn_dispatcher_free(VnDispatcher *d);

/* Pool sizes (reloadable). */
void vn_dispatcher_configure(VnDispatcher *d, const VnConfig *cfg);

/* The AMQP handler: decides ack, reject or requeue.  Takes @msg.  A state-changing
 * request is written to the journal's log and held, with every request after it, until
 * vn_dispatcher_end_round; so are the others once one is held, to keep their order. */
VnRpcVerdict vn_dispatcher_submit(VnDispatcher *d, VnRpcMessage *msg);

/* After the requests read together were submitted, before their acks: makes their records
 * durable with one flush and hands them on.  FALSE when that flush failed: the requests
 * held are dropped and forgotten by the journal, and the caller requeues every request of
 * the round that it has not answered yet. */
gboolean vn_dispatcher_end_round(VnDispatcher *d);

/* Runs again the requests a crash left unfinished (journal order). */
void vn_dispatcher_replay(VnDispatcher *d, GPtrArray *unfinished);

/* Stops taking new operations (they are requeued to the broker). */
void vn_dispatcher_stop_accepting(VnDispatcher *d);

/* Waits up to @timeout_s for queued and running operations to end; then cancels what is
 * left and waits a little more.  TRUE when nothing runs any more. */
gboolean vn_dispatcher_drain(VnDispatcher *d, int timeout_s);

/* TRUE while an operation runs or waits for instance @uuid. */
gboolean vn_dispatcher_busy(VnDispatcher *d, const char *uuid);

/* Progress report helper for operations: records @percent for the op's instance. */
void vn_op_progress(VnOp *op, int percent);
