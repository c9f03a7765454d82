/* agent/dispatcher.c - requests to operations (see dispatcher.h). */
#include <string.h>

#include "agent/dispatcher.h"
#include "agent/metrics.h"
#include "agent/base/log.h"
#include "agent/ops/ops.h"
#include "api/error.h"
#include "api/json.h"

typedef struct {
    GQueue pending; /* VnOp* waiting for this instance */
    VnOp *current;
} InstanceQueue;

struct _VnDispatcher {
    /* immutable after vn_dispatcher_new */
    VnAgent *agent;
    GThreadPool *pools[VN_KIND_LAST]; /* self-locking; freed by vn_dispatcher_shutdown */

    /* under @lock */
    GMutex lock;
    GCond idle;         /* signalled when @pending drops */
    GHashTable *queues; /* uuid -> InstanceQueue* */
    int pending;        /* ops accepted whose worker has not returned (or queued) */
    gboolean accepting;
    gboolean closing; /* vn_dispatcher_shutdown began: nothing more starts */
    int max_queued;
    GPtrArray *running; /* VnOp* running now (for cancellation at shutdown) */

    /* the AMQP thread's alone (vn_dispatcher_submit, _end_round) */
    GPtrArray *held;   /* VnOp* of this round, in order, until their records are durable */
    guint64 held_upto; /* the journal's mark they wait for */
    guint held_writes; /* the journal writes among them (new requests recorded) */
};

static void op_free(VnOp *op)
{
    if (!op)
        return;
    vn_request_free(op->req);
    vn_rpc_message_free(op->msg);
    g_free(op->unique_id);
    g_free(op->request_id);
    g_clear_object(&op->cancel);
    g_free(op);
}

static void queue_free(InstanceQueue *q)
{
    g_queue_clear(&q->pending);
    g_free(q);
}

/* ------------------------------------------------------------------ replies */

static VnApiErrorCode failure_code(const VnOp *op, const GError *err)
{
    VnApiErrorCode fallback = VN_API_ERROR_OPERATION_FAILED;

    if (op && op->info->method == VN_METHOD_BUILD_AND_RUN_INSTANCE)
        fallback = VN_API_ERROR_BUILD_FAILED;
    else if (op && op->info->kind == VN_KIND_MIGRATION)
        fallback = VN_API_ERROR_MIGRATION_FAILED;
    return vn_api_error_code_of(err, fallback);
}

/* The reply as stored in the journal (so a duplicate of a call gets it again). */
static char *reply_record(json_object *result, const VnRpcFailure *f)
{
    g_autoptr(json_object) o = json_object_new_object();

    if (f) {
        json_object *fo = json_object_new_object();
        json_object_object_add(fo, "class", json_object_new_string(f->class_name));
        json_object_object_add(fo, "module", json_object_new_string(f->module));
        json_object_object_add(fo, "message", json_object_new_string(f->message));
        json_object_object_add(o, "failure", fo);
    } else {
        json_object_object_add(o, "result", result ? json_object_get(result) : NULL);
    }
    return vn_json_to_string(o);
}

static void resend_recorded(VnDispatcher *d, const VnRpcMessage *msg, const char *record)
{
    g_autoptr(json_object) o = json_tokener_parse(record);
    json_object *f = vn_json_member(o, "failure");

    if (!o)
        return;
    if (f) {
        VnRpcFailure fail = { json_object_get_string(vn_json_member(f, "class")),
                              json_object_get_string(vn_json_member(f, "module")),
                              json_object_get_string(vn_json_member(f, "message")) };
        if (!fail.class_name || !fail.module || !fail.message)
            return;
        vn_agent_reply(d->agent, msg->reply_q, msg->msg_id, NULL, &fail);
    } else {
        vn_agent_reply(d->agent, msg->reply_q, msg->msg_id, vn_json_member(o, "result"), NULL);
    }
}

static void reply_error(VnDispatcher *d, const VnRpcMessage *msg, VnApiErrorCode code,
                        const char *message)
{
    VnRpcFailure f = { vn_api_error_class(code), vn_api_error_module(code), message };

    vn_agent_reply(d->agent, msg->reply_q, msg->msg_id, NULL, &f);
}

/* ------------------------------------------------------------------ running */

static void start_op(VnDispatcher *d, VnOp *op)
{
    GError *err = NULL;

    if (!g_thread_pool_push(d->pools[op->info->kind], op, &err)) {
        g_critical("cannot queue an operation: %s", err->message);
        g_clear_error(&err);
    }
}

/* Ends @op: reply, journal, action; then lets the next op of its instance go. */
static void finish_op(VnDispatcher *d, VnOp *op, gboolean ok, json_object *result, GError *err,
                      gboolean queued)
{
    VnAgent *a = d->agent;
    VnRpcFailure fail;
    g_autofree char *record = NULL;
    gint64 now = g_get_real_time() / G_USEC_PER_SEC;
    const char *uuid = op->req ? op->req->instance_uuid : NULL;

    if (!ok) {
        VnApiErrorCode code = failure_code(op, err);
        fail.class_name = vn_api_error_class(code);
        fail.module = vn_api_error_module(code);
        fail.message = err ? err->message : "unknown error";
        g_atomic_int_inc(&a->counters.requests_failed);
        g_warning("%s failed: %s", op->info->name, fail.message);
    }
    /* the journal first: a duplicate arriving after the reply gets the recorded one; the
     * action ends in the same commit as its request */
    gboolean finishes = op->info->journaled && op->unique_id;
    VnJournalActionEnd end = { op->action_id, ok ? "Success" : "Error", ok ? NULL : fail.message,
                               now };
    if (finishes) {
        g_autoptr(GError) jerr = NULL;
        record = reply_record(ok ? result : NULL, ok ? NULL : &fail);
        if (!vn_journal_finish(a->journal, op->unique_id, record, op->action_id > 0 ? &end : NULL,
                               &jerr))
            g_warning("journal: %s", jerr->message);
    } else if (op->action_id > 0) {
        g_autoptr(GError) jerr = NULL;
        if (!vn_journal_action_finish(a->journal, &end, &jerr))
            g_warning("journal: %s", jerr->message);
    }
    if (op->action_id > 0 && a->reporter)
        vn_reporter_actions_pending(a->reporter);

    g_mutex_lock(&d->lock);
    g_ptr_array_remove(d->running, op);
    if (queued && op->info->per_instance && uuid) {
        InstanceQueue *q = g_hash_table_lookup(d->queues, uuid);
        VnOp *next = q ? g_queue_pop_head(&q->pending) : NULL;
        if (q) {
            q->current = next;
            if (!next)
                g_hash_table_remove(d->queues, uuid);
        }
        if (next && d->closing) {
            /* never started: it stays in the journal and runs after the next start */
            g_queue_push_head(&q->pending, next);
            q->current = NULL;
        } else if (next) {
            start_op(d, next);
        }
    }
    g_mutex_unlock(&d->lock);
    /* the reply last: when the caller hears back, the agent's state is settled */
    vn_agent_reply(a, op->msg->reply_q, op->msg->msg_id, ok ? result : NULL, ok ? NULL : &fail);
}

static void release_pending(VnDispatcher *d)
{
    g_mutex_lock(&d->lock);
    d->pending--;
    g_cond_broadcast(&d->idle);
    g_mutex_unlock(&d->lock);
}

static void worker(gpointer data, gpointer user_data)
{
    VnDispatcher *d = user_data;
    VnOp *op = data;
    VnAgent *a = d->agent;
    g_autoptr(GError) err = NULL;
    g_autoptr(json_object) result = NULL;
    gboolean ok;

    vn_log_context_set(op->request_id, op->req ? op->req->instance_uuid : NULL);
    g_mutex_lock(&d->lock);
    gboolean closing = d->closing;
    if (!closing)
        g_ptr_array_add(d->running, op);
    g_mutex_unlock(&d->lock);
    if (closing) {
        /* queued in the pool when the shutdown began: the journal replays it at the next
         * start */
        vn_log_context_set(NULL, NULL);
        op_free(op);
        release_pending(d);
        return;
    }
    /* the request is marked running with its action's start, or alone */
    if (op->info->journaled && op->unique_id && !(op->req && op->req->instance_uuid)) {
        g_autoptr(GError) e = NULL;
        if (!vn_journal_set_running(a->journal, op->unique_id, &e))
            vn_warn_error(&e, "journal: marking request %s running", op->unique_id);
    }
    if (op->info->journaled && op->req && op->req->instance_uuid) {
        g_autoptr(GError) e = NULL;
        op->action_id = vn_journal_action_start(a->journal, op->req->instance_uuid, op->request_id,
                                                op->info->name, op->unique_id,
                                                g_get_real_time() / G_USEC_PER_SEC, &e);
        if (op->action_id < 0)
            vn_warn_error(&e, "journal: recording the action of %s", op->unique_id);
        if (a->reporter)
            vn_reporter_actions_pending(a->reporter);
    }
    g_atomic_int_inc(&a->counters.ops_running);
    g_debug("%s started%s", op->info->name, op->replayed ? " (after a restart)" : "");
    ok = vn_ops_run(op, &result, &err);
    if (g_atomic_int_dec_and_test(&a->counters.ops_running))
        g_atomic_int_set(&a->trim_due, 1);
    vn_agent_observe_duration(a, op->info->method,
                              (g_get_monotonic_time() - op->received_us) / 1e6);
    /* reads are polled (get_instance, get_migration): their success is debug, not info */
    if (ok && op->info->kind == VN_KIND_QUERY && !op->info->control)
        g_debug("%s done in %.3f s", op->info->name,
                (g_get_monotonic_time() - op->received_us) / 1e6);
    else if (ok)
        g_info("%s done in %.3f s", op->info->name,
               (g_get_monotonic_time() - op->received_us) / 1e6);
    finish_op(d, op, ok, result, err, TRUE);
    vn_log_context_set(NULL, NULL);
    op_free(op);
    /* counted until the very end: once pending is 0, no worker touches the agent again */
    release_pending(d);
}

/* Queues @op behind the operations of its instance; called with the lock held.  Returns
 * FALSE when too many already wait (the op is then answered BUSY by the caller). */
static gboolean enqueue_locked(VnDispatcher *d, VnOp *op)
{
    const char *uuid = op->req->instance_uuid;
    InstanceQueue *q;

    if (!op->info->per_instance || !uuid) {
        d->pending++;
        start_op(d, op);
        return TRUE;
    }
    q = g_hash_table_lookup(d->queues, uuid);
    if (!q) {
        q = g_new0(InstanceQueue, 1);
        g_queue_init(&q->pending);
        g_hash_table_insert(d->queues, g_strdup(uuid), q);
    }
    if (!q->current) {
        q->current = op;
        d->pending++;
        start_op(d, op);
        return TRUE;
    }
    if ((int)g_queue_get_length(&q->pending) >= d->max_queued)
        return FALSE;
    /* a delete does not wait for a build to finish: it cancels it */
    if (op->info->method == VN_METHOD_TERMINATE_INSTANCE &&
        q->current->info->method == VN_METHOD_BUILD_AND_RUN_INSTANCE) {
        g_message("delete of %s cancels its build in progress", uuid);
        g_cancellable_cancel(q->current->cancel);
    }
    g_queue_push_tail(&q->pending, op);
    d->pending++;
    return TRUE;
}

static VnOp *op_new(VnDispatcher *d, const VnMethodInfo *info, VnRequest *req, VnRpcMessage *msg)
{
    VnOp *op = g_new0(VnOp, 1);

    op->agent = d->agent;
    op->info = info;
    op->req = req;
    op->msg = msg;
    op->unique_id = g_strdup(msg->unique_id);
    op->request_id = msg->request_id
                         ? g_strdup(msg->request_id)
                         : g_strdup_printf("req-%s", msg->unique_id ? msg->unique_id : "none");
    op->cancel = g_cancellable_new();
    op->received_us = g_get_monotonic_time();
    return op;
}

/* Hands @op to the queues; answers it BUSY when its instance has too many waiting. */
static void dispatch(VnDispatcher *d, VnOp *op)
{
    gboolean queued;

    g_mutex_lock(&d->lock);
    queued = enqueue_locked(d, op);
    g_mutex_unlock(&d->lock);
    if (!queued) {
        g_autoptr(GError) err = g_error_new(VN_API_ERROR, VN_API_ERROR_BUSY,
                                            "too many operations wait for instance %s (%d)",
                                            op->req->instance_uuid, d->max_queued);
        g_mutex_lock(&d->lock);
        d->pending++;
        g_mutex_unlock(&d->lock);
        finish_op(d, op, FALSE, NULL, err, FALSE);
        op_free(op);
        release_pending(d);
    }
}

/* ------------------------------------------------------------------ intake */

static gboolean journal_accept(VnDispatcher *d, VnRpcMessage *msg, VnRequest *req,
                               const VnMethodInfo *info, VnRpcVerdict *verdict, guint64 *logged)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnJournalRequest) prev = NULL;
    g_autofree char *body = NULL;
    VnJournalRequest jr = { 0 };
    VnJournalVerdict v;

    /* the journal keeps the request without its secrets */
    json_object *args = msg->args;
    msg->args = vn_request_args_redacted(info->name, args);
    body = vn_envelope_encode_request(msg);
    json_object_put(msg->args);
    msg->args = args;
    jr.unique_id = msg->unique_id;
    jr.method = (char *)info->name;
    jr.instance_uuid = req->instance_uuid;
    jr.msg_id = msg->msg_id;
    jr.reply_q = msg->reply_q;
    jr.request_id = msg->request_id;
    jr.body = body;
    jr.received_at = g_get_real_time() / G_USEC_PER_SEC;
    v = vn_journal_accept(d->agent->journal, &jr, &prev, logged, &err);
    if ((int)v < 0) {
        /* not recorded: the broker keeps it and delivers it again */
        g_warning("journal: cannot record %s (%s): %s; leaving it to the broker", info->name,
                  msg->unique_id, err ? err->message : "?");
        *verdict = VN_RPC_REQUEUE;
        return FALSE;
    }
    if (v == VN_JOURNAL_DUPLICATE) {
        g_atomic_int_inc(&d->agent->counters.duplicates);
        g_message("request %s (%s) was received before: not applied again", msg->unique_id,
                  info->name);
        if (prev && prev->reply && msg->msg_id && msg->reply_q)
            resend_recorded(d, msg, prev->reply);
        *verdict = VN_RPC_ACK;
        return FALSE;
    }
    return TRUE;
}

VnRpcVerdict vn_dispatcher_submit(VnDispatcher *d, VnRpcMessage *msg)
{
    g_autoptr(GError) err = NULL;
    const VnMethodInfo *info;
    VnRequest *req;
    VnRpcVerdict verdict = VN_RPC_ACK;
    gboolean accepting;
    guint64 logged = 0;

    g_atomic_int_inc(&d->agent->counters.requests_total);
    info = vn_method_lookup(msg->namespace_, msg->method, msg->version, &err);
    req = info ? vn_request_parse(info, msg->args, &err) : NULL;
    if (!req) {
        g_warning("rejecting %s (unique_id %s, request %s): %s", msg->method,
                  msg->unique_id ? msg->unique_id : "-", msg->request_id ? msg->request_id : "-",
                  err->message);
        reply_error(d, msg, vn_api_error_code_of(err, VN_API_ERROR_INVALID), err->message);
        g_atomic_int_inc(&d->agent->counters.requests_failed);
        vn_rpc_message_free(msg);
        return VN_RPC_REJECT;
    }
    if (info->method == VN_METHOD_PING) {
        g_autoptr(json_object) result = vn_ops_ping(d->agent, req);
        vn_agent_reply(d->agent, msg->reply_q, msg->msg_id, result, NULL);
        vn_request_free(req);
        vn_rpc_message_free(msg);
        return VN_RPC_ACK;
    }
    g_mutex_lock(&d->lock);
    accepting = d->accepting;
    g_mutex_unlock(&d->lock);
    if (!accepting) {
        vn_request_free(req);
        vn_rpc_message_free(msg);
        return VN_RPC_REQUEUE;
    }
    if (info->journaled) {
        if (!msg->unique_id) {
            msg->unique_id = vn_envelope_new_id();
            g_info("%s carries no _unique_id: it cannot be recognised if delivered again",
                   info->name);
        }
        if (!journal_accept(d, msg, req, info, &verdict, &logged)) {
            vn_request_free(req);
            vn_rpc_message_free(msg);
            return verdict;
        }
    }
    if (logged || d->held->len) {
        d->held_upto = MAX(d->held_upto, logged);
        d->held_writes += logged ? 1 : 0;
        g_ptr_array_add(d->held, op_new(d, info, req, msg));
    } else {
        dispatch(d, op_new(d, info, req, msg));
    }
    return VN_RPC_ACK;
}

gboolean vn_dispatcher_end_round(VnDispatcher *d)
{
    g_autoptr(GError) err = NULL;
    gboolean durable;

    if (!d->held->len)
        return TRUE;
    /* what is held starts with a request recorded: held_upto is set */
    durable = vn_journal_wait_logged(d->agent->journal, d->held_upto, d->held_writes, &err);
    if (!durable)
        g_warning("journal: cannot make %u requests durable: %s; leaving them to the broker",
                  d->held->len, err->message);
    for (guint i = 0; i < d->held->len; i++) {
        VnOp *op = g_ptr_array_index(d->held, i);
        if (durable) {
            dispatch(d, op);
            continue;
        }
        if (op->info->journaled) {
            g_autoptr(GError) e = NULL;
            if (!vn_journal_forget(d->agent->journal, op->unique_id, &e))
                vn_warn_error(&e, "journal: forgetting request %s", op->unique_id);
        }
        op_free(op);
    }
    g_ptr_array_set_size(d->held, 0);
    d->held_upto = 0;
    d->held_writes = 0;
    return durable;
}

void vn_dispatcher_replay(VnDispatcher *d, GPtrArray *unfinished)
{
    for (guint i = 0; unfinished && i < unfinished->len; i++) {
        VnJournalRequest *jr = g_ptr_array_index(unfinished, i);
        g_autoptr(GError) err = NULL;
        VnRpcMessage *msg = NULL;
        const VnMethodInfo *info = NULL;
        VnRequest *req = NULL;

        if (vn_envelope_decode_request(jr->body, strlen(jr->body), &msg, &err))
            info = vn_method_lookup(msg->namespace_, msg->method, msg->version, &err);
        if (info)
            req = vn_request_parse(info, msg->args, &err);
        if (!req) {
            g_warning("journal: dropping unreadable request %s: %s", jr->unique_id,
                      err ? err->message : "?");
            {
                g_autoptr(GError) e = NULL;
                if (!vn_journal_finish(d->agent->journal, jr->unique_id, NULL, NULL, &e))
                    vn_warn_error(&e, "journal: finishing request %s", jr->unique_id);
            }
            vn_rpc_message_free(msg);
            continue;
        }
        g_message("resuming %s (%s) interrupted by a restart", info->name, jr->unique_id);
        VnOp *op = op_new(d, info, req, msg);
        op->replayed = TRUE;
        dispatch(d, op);
    }
}

/* ------------------------------------------------------------------ life cycle */

VnDispatcher *vn_dispatcher_new(VnAgent *agent)
{
    VnDispatcher *d = g_new0(VnDispatcher, 1);
    g_autoptr(VnConfig) cfg = vn_agent_config(agent);

    d->agent = agent;
    g_mutex_init(&d->lock);
    g_cond_init(&d->idle);
    d->queues = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)queue_free);
    d->running = g_ptr_array_new();
    d->held = g_ptr_array_new();
    d->accepting = TRUE;
    d->pools[VN_KIND_QUERY] = g_thread_pool_new(worker, d, 8, FALSE, NULL);
    d->pools[VN_KIND_BUILD] = g_thread_pool_new(worker, d, cfg->max_concurrent_builds, FALSE, NULL);
    d->pools[VN_KIND_OPERATION] =
        g_thread_pool_new(worker, d, cfg->max_concurrent_operations, FALSE, NULL);
    d->pools[VN_KIND_MIGRATION] =
        g_thread_pool_new(worker, d, cfg->max_concurrent_live_migrations, FALSE, NULL);
    d->max_queued = cfg->max_queued_per_instance;
    return d;
}

void vn_dispatcher_configure(VnDispatcher *d, const VnConfig *cfg)
{
    g_thread_pool_set_max_threads(d->pools[VN_KIND_BUILD], cfg->max_concurrent_builds, NULL);
    g_thread_pool_set_max_threads(d->pools[VN_KIND_OPERATION], cfg->max_concurrent_operations,
                                  NULL);
    g_thread_pool_set_max_threads(d->pools[VN_KIND_MIGRATION], cfg->max_concurrent_live_migrations,
                                  NULL);
    g_mutex_lock(&d->lock);
    d->max_queued = cfg->max_queued_per_instance;
    g_mutex_unlock(&d->lock);
}

void vn_dispatcher_stop_accepting(VnDispatcher *d)
{
    g_mutex_lock(&d->lock);
    d->accepting = FALSE;
    g_mutex_unlock(&d->lock);
}

gboolean vn_dispatcher_drain(VnDispatcher *d, int timeout_s)
{
    gint64 end = g_get_monotonic_time() + (gint64)timeout_s * G_TIME_SPAN_SECOND;
    gboolean idle;

    g_mutex_lock(&d->lock);
    while (d->pending > 0 && g_cond_wait_until(&d->idle, &d->lock, end))
        ;
    if (d->pending > 0) {
        g_warning("%d operations still running after %d s: cancelling them", d->pending, timeout_s);
        for (guint i = 0; i < d->running->len; i++)
            g_cancellable_cancel(((VnOp *)g_ptr_array_index(d->running, i))->cancel);
        end = g_get_monotonic_time() + 10 * G_TIME_SPAN_SECOND;
        while (d->pending > 0 && g_cond_wait_until(&d->idle, &d->lock, end))
            ;
    }
    idle = d->pending == 0;
    g_mutex_unlock(&d->lock);
    return idle;
}

gboolean vn_dispatcher_busy(VnDispatcher *d, const char *uuid)
{
    gboolean busy;

    g_mutex_lock(&d->lock);
    busy = g_hash_table_contains(d->queues, uuid);
    for (guint i = 0; !busy && i < d->running->len; i++) {
        VnOp *op = g_ptr_array_index(d->running, i);
        busy = op->req && g_strcmp0(op->req->instance_uuid, uuid) == 0 &&
               op->info->kind != VN_KIND_QUERY;
    }
    g_mutex_unlock(&d->lock);
    return busy;
}

void vn_dispatcher_shutdown(VnDispatcher *d)
{
    GHashTableIter it;
    gpointer k, v;
    int dropped = 0;

    g_mutex_lock(&d->lock);
    if (d->closing) {
        g_mutex_unlock(&d->lock);
        return;
    }
    d->accepting = FALSE;
    d->closing = TRUE;
    /* queued, never started: they are journaled and run again after the next start */
    g_hash_table_iter_init(&it, d->queues);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        InstanceQueue *q = v;
        VnOp *op;
        while ((op = g_queue_pop_head(&q->pending))) {
            op_free(op);
            d->pending--;
            dropped++;
        }
    }
    for (guint i = 0; i < d->running->len; i++)
        g_cancellable_cancel(((VnOp *)g_ptr_array_index(d->running, i))->cancel);
    g_mutex_unlock(&d->lock);
    if (dropped)
        g_message("%d queued operations left for the next start", dropped);
    /* waits for every worker, including those queued in a pool and not yet running (they
     * see the cancellation at once) */
    for (int i = 0; i < VN_KIND_LAST; i++) {
        g_thread_pool_free(d->pools[i], FALSE, TRUE);
        d->pools[i] = NULL;
    }
    g_mutex_lock(&d->lock);
    g_assert(d->pending == 0);
    g_mutex_unlock(&d->lock);
}

void vn_dispatcher_free(VnDispatcher *d)
{
    if (!d)
        return;
    vn_dispatcher_shutdown(d);
    g_hash_table_destroy(d->queues);
    g_ptr_array_free(d->running, TRUE);
    /* a round ends before the AMQP link stops: nothing is held here any more */
    for (guint i = 0; i < d->held->len; i++)
        op_free(g_ptr_array_index(d->held, i));
    g_ptr_array_free(d->held, TRUE);
    g_mutex_clear(&d->lock);
    g_cond_clear(&d->idle);
    g_free(d);
}

void vn_op_progress(VnOp *op, int percent)
{
    if (op->req && op->req->instance_uuid)
        vn_instance_store_set_progress(op->agent->store, op->req->instance_uuid, percent);
}
