/* scheduler-client/amqp/rpc.c - the AMQP link (see rpc.h).
 *
 * One thread owns the connection.  Other threads hand it work through the outbox (under
 * the lock) and wake it through an eventfd.  The thread polls the socket and the eventfd,
 * reads frames without blocking, assembles message contents, publishes the outbox on a
 * channel in confirm mode, and reconnects with back-off when anything fails.  On a plain
 * TCP connection the frames of one turn of its loop (replies, acks, calls) go out in one
 * write before it waits again (frames.h); on TLS librabbitmq writes each frame. */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib.h>
#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <openssl/err.h>

#include "scheduler-client/amqp/frames.h"
#include "scheduler-client/amqp/rpc.h"
#include "scheduler-client/amqp/url.h"
#include "scheduler-client/backoff.h"
#include "scheduler-client/sched_error.h"

#define CH_CONSUME       1
#define CH_PUBLISH       2
#define MAX_INFLIGHT     4096
#define FRAMES_PER_ROUND 512
#define RETURN_RETRY_US  (250 * G_TIME_SPAN_MILLISECOND)
#define N_SERVER_QUEUES  3
#define REPLY_BIT        (1u << N_SERVER_QUEUES)

typedef enum { OUT_REPLY, OUT_KEEPALIVE, OUT_CALL, OUT_CAST, OUT_NOTIFY } OutKind;

typedef struct {
    OutKind kind;
    guint64 id; /* message_id property: matches a basic.return to its message */
    gint64 notify_id;
    char *exchange;
    char *routing_key;
    char *body;
    gboolean mandatory;
    gint64 created; /* monotonic */
    gint64 retry_at;
    gboolean returned;
    int expiration_ms;
    char *msg_id; /* replies and calls */
} OutMsg;

typedef struct {
    GCond cond;
    gboolean done;
    json_object *result;
    char *failure_class;
    char *failure_message;
    GError *error;
    gint64 last_seen;
} PendingCall;

typedef struct {
    char *reply_q;
    gint64 interval;
    gint64 next;
} ActiveCall;

typedef enum { CONTENT_NONE, CONTENT_DELIVER, CONTENT_RETURN } ContentKind;

typedef struct {
    ContentKind kind;
    amqp_channel_t channel;
    guint64 delivery_tag;
    gboolean from_reply_queue;
    int reply_code;
    gboolean have_header;
    guint64 body_size;
    guint64 received;
    GByteArray *body; /* NULL while discarding an oversize body */
    char *message_id;
} Content;

struct _VnRpc {
    /* configuration (owned copies) */
    VnRpcConfig cfg;
    char **urls;
    VnRpcHandlers h;
    char *proc_id;
    char *reply_q;
    char *fanout_q;

    GThread *thread;
    int wake_fd;

    GMutex lock; /* everything below up to the link-thread section */
    GCond cond;
    GQueue outbox;
    GHashTable *calls; /* msg_id -> PendingCall* */
    gboolean stop;
    guint callers; /* threads inside vn_rpc_call; vn_rpc_free waits for none */
    gboolean stop_consuming;
    gboolean cancel_sent;
    gboolean drained;
    guint flushing; /* threads waiting in vn_rpc_flush for the link to drain */
    VnRpcStats stats;
    guint64 next_out_id;
    gboolean outbox_overflow_logged;

    /* link thread only */
    amqp_connection_state_t conn;
    gboolean gather; /* plain TCP: frames are gathered in out and written once per turn */
    VnFrames out;
    guint url_index;
    GHashTable *inflight; /* publish seq -> OutMsg* */
    GArray *confirmed;    /* gint64: notifications confirmed in this round, for the hook */
    guint64 publish_seq;
    GHashTable *active;       /* msg_id -> ActiveCall* */
    GQueue retry;             /* OutMsg* whose reply queue did not exist yet */
    GPtrArray *consumer_tags; /* index i consumes server_queue(i); empty when not serving */
    char *reply_tag;
    guint cancelled; /* bit i: the broker cancelled consumer i; bit REPLY_BIT: the reply one */
    Content content;
    guint64 ack_upto;       /* deliveries on CH_CONSUME up to this tag await one multiple ack */
    GPtrArray *round_calls; /* msg_id: calls of this round given keep-alives and acked */
    VnBackoff backoff;
    char *where; /* "host:port/vhost" of the current broker, for logs */
};

static void out_free(OutMsg *m)
{
    if (!m)
        return;
    g_free(m->exchange);
    g_free(m->routing_key);
    g_free(m->body);
    g_free(m->msg_id);
    g_free(m);
}

static void active_free(ActiveCall *a)
{
    g_free(a->reply_q);
    g_free(a);
}

static void content_reset(Content *c)
{
    if (c->body)
        g_byte_array_unref(c->body);
    g_free(c->message_id);
    memset(c, 0, sizeof(*c));
}

/* The link whose thread this is, if any: what that thread queues needs no wake-up, its
 * loop drains the outbox before it polls again. */
static _Thread_local VnRpc *link_of_thread;

static void wake(VnRpc *rpc)
{
    guint64 one = 1;

    if (write(rpc->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        g_warning("amqp: cannot wake the link thread: %s", g_strerror(errno));
}

/* ------------------------------------------------------------------ outbox (any thread) */

static void enqueue_locked(VnRpc *rpc, OutMsg *m, gboolean front)
{
    m->id = ++rpc->next_out_id;
    m->created = g_get_monotonic_time();
    if (front)
        g_queue_push_head(&rpc->outbox, m);
    else
        g_queue_push_tail(&rpc->outbox, m);
    rpc->drained = FALSE;

    /* bound what waits while the broker is unreachable: drop the oldest notification or
     * cast; replies and calls are bounded by the requests in flight */
    if (m->kind != OUT_NOTIFY && m->kind != OUT_CAST)
        return;
    guint droppable = 0;
    for (GList *l = rpc->outbox.head; l; l = l->next) {
        OutMsg *o = l->data;
        droppable += o->kind == OUT_NOTIFY || o->kind == OUT_CAST;
    }
    if (droppable <= (guint)rpc->cfg.outbox_limit)
        return;
    for (GList *l = rpc->outbox.head; l; l = l->next) {
        OutMsg *o = l->data;
        if (o->kind == OUT_NOTIFY || o->kind == OUT_CAST) {
            if (!rpc->outbox_overflow_logged) {
                g_warning("amqp: more than %d messages wait for the broker; dropping the "
                          "oldest ('%s')",
                          rpc->cfg.outbox_limit, o->routing_key);
                rpc->outbox_overflow_logged = TRUE;
            }
            rpc->stats.notifications_dropped++;
            g_queue_delete_link(&rpc->outbox, l);
            out_free(o);
            break;
        }
    }
}

static void enqueue(VnRpc *rpc, OutMsg *m)
{
    g_mutex_lock(&rpc->lock);
    enqueue_locked(rpc, m, FALSE);
    g_mutex_unlock(&rpc->lock);
    if (link_of_thread != rpc)
        wake(rpc);
}

void vn_rpc_reply_to(VnRpc *rpc, const char *reply_q, const char *msg_id, json_object *result,
                     const VnRpcFailure *failure)
{
    OutMsg *m;

    if (!reply_q || !msg_id)
        return; /* a cast: nobody waits */
    m = g_new0(OutMsg, 1);
    m->kind = OUT_REPLY;
    m->exchange = g_strdup("");
    m->routing_key = g_strdup(reply_q);
    m->body = vn_envelope_encode_reply(msg_id, result, failure, TRUE);
    m->mandatory = TRUE;
    m->msg_id = g_strdup(msg_id);
    enqueue(rpc, m);
}

void vn_rpc_reply(VnRpc *rpc, const VnRpcMessage *req, json_object *result,
                  const VnRpcFailure *failure)
{
    vn_rpc_reply_to(rpc, req->reply_q, req->msg_id, result, failure);
}

void vn_rpc_notify(VnRpc *rpc, gint64 id, const char *event_type, const char *priority,
                   json_object *payload)
{
    OutMsg *m;
    g_autofree char *publisher = NULL;
    g_autofree char *prio = g_ascii_strdown(priority, -1);

    if (!rpc->cfg.notification_topic)
        return;
    publisher = g_strdup_printf("%s.%s", rpc->cfg.topic, rpc->cfg.server ? rpc->cfg.server : "");
    m = g_new0(OutMsg, 1);
    m->kind = OUT_NOTIFY;
    m->notify_id = id;
    m->exchange = g_strdup(rpc->cfg.exchange);
    m->routing_key = g_strdup_printf("%s.%s", rpc->cfg.notification_topic, prio);
    m->body = vn_envelope_encode_notification(publisher, event_type, priority, payload);
    enqueue(rpc, m);
}

static OutMsg *request_msg(VnRpc *rpc, const char *server, const char *method, json_object *args,
                           const char *version, json_object *context, const char *msg_id,
                           int timeout_s)
{
    g_autoptr(VnRpcMessage) req = vn_rpc_message_new();
    OutMsg *m = g_new0(OutMsg, 1);

    req->method = g_strdup(method);
    req->args = args ? json_object_get(args) : json_object_new_object();
    req->version = g_strdup(version);
    req->unique_id = vn_envelope_new_id();
    req->context = context ? json_object_get(context) : json_object_new_object();
    if (msg_id) {
        req->msg_id = g_strdup(msg_id);
        req->reply_q = g_strdup(rpc->reply_q);
        req->timeout = timeout_s;
    }
    if (server && strcmp(server, "*") == 0) {
        m->exchange = g_strdup_printf("%s_fanout", rpc->cfg.topic);
        m->routing_key = g_strdup(rpc->cfg.topic);
    } else {
        m->exchange = g_strdup(rpc->cfg.exchange);
        m->routing_key =
            server ? g_strdup_printf("%s.%s", rpc->cfg.topic, server) : g_strdup(rpc->cfg.topic);
    }
    m->body = vn_envelope_encode_request(req);
    m->mandatory = TRUE;
    return m;
}

gboolean vn_rpc_cast(VnRpc *rpc, const char *server, const char *method, json_object *args,
                     const char *version, json_object *context, GError **error)
{
    OutMsg *m = request_msg(rpc, server, method, args, version, context, NULL, 0);

    m->kind = OUT_CAST;
    g_mutex_lock(&rpc->lock);
    if (rpc->stop) {
        g_mutex_unlock(&rpc->lock);
        out_free(m);
        g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_STOPPED, "the AMQP link is stopping");
        return FALSE;
    }
    enqueue_locked(rpc, m, FALSE);
    g_mutex_unlock(&rpc->lock);
    wake(rpc);
    return TRUE;
}

static void pending_free(PendingCall *pc)
{
    g_cond_clear(&pc->cond);
    if (pc->result)
        json_object_put(pc->result);
    g_free(pc->failure_class);
    g_free(pc->failure_message);
    g_clear_error(&pc->error);
    g_free(pc);
}

gboolean vn_rpc_call(VnRpc *rpc, const char *server, const char *method, json_object *args,
                     const char *version, json_object *context, int timeout_s, int monitor_s,
                     json_object **result, GError **error)
{
    g_autofree char *msg_id = vn_envelope_new_id();
    OutMsg *m = request_msg(rpc, server, method, args, version, context, msg_id,
                            monitor_s > 0 ? monitor_s : 0);
    PendingCall *pc = g_new0(PendingCall, 1);
    gint64 start = g_get_monotonic_time();
    gint64 end = start + (gint64)timeout_s * G_TIME_SPAN_SECOND;
    gboolean ok = FALSE;

    *result = NULL;
    m->kind = OUT_CALL;
    m->msg_id = g_strdup(msg_id);
    m->expiration_ms = timeout_s > 0 ? timeout_s * 1000 : 0;
    g_cond_init(&pc->cond);
    pc->last_seen = start;

    g_mutex_lock(&rpc->lock);
    if (rpc->stop) {
        g_mutex_unlock(&rpc->lock);
        out_free(m);
        pending_free(pc);
        g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_STOPPED, "the AMQP link is stopping");
        return FALSE;
    }
    rpc->callers++;
    g_hash_table_insert(rpc->calls, g_strdup(msg_id), pc);
    enqueue_locked(rpc, m, FALSE);
    wake(rpc);
    while (!pc->done) {
        gint64 deadline = end;
        if (monitor_s > 0)
            deadline = MIN(deadline, pc->last_seen + (gint64)monitor_s * G_TIME_SPAN_SECOND);
        if (!g_cond_wait_until(&pc->cond, &rpc->lock, deadline) && !pc->done &&
            g_get_monotonic_time() >= deadline) {
            gboolean overall = g_get_monotonic_time() >= end;
            g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_TIMEOUT,
                        "no %s from %s for '%s' within %d s", overall ? "reply" : "keep-alive",
                        server ? server : rpc->cfg.topic, method, overall ? timeout_s : monitor_s);
            break;
        }
    }
    g_hash_table_remove(rpc->calls, msg_id); /* frees its copy of the id, not the call */
    g_mutex_unlock(&rpc->lock);

    if (pc->done) {
        if (pc->error) {
            g_propagate_error(error, g_steal_pointer(&pc->error));
        } else if (pc->failure_class) {
            g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_REMOTE, "%s: %s", pc->failure_class,
                        pc->failure_message ? pc->failure_message : "");
        } else {
            *result = g_steal_pointer(&pc->result);
            ok = TRUE;
        }
    }
    pending_free(pc);
    g_mutex_lock(&rpc->lock);
    rpc->callers--;
    g_cond_broadcast(&rpc->cond);
    g_mutex_unlock(&rpc->lock);
    return ok;
}

/* ------------------------------------------------------------------ AMQP helpers */

static char *amqp_text(amqp_bytes_t b)
{
    return g_strndup(b.bytes, b.len);
}

static char *reply_error(amqp_rpc_reply_t r)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return g_strdup("no error");
    case AMQP_RESPONSE_NONE:
        return g_strdup("missing reply");
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        return g_strdup(amqp_error_string2(r.library_error));
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *c = r.reply.decoded;
            g_autofree char *t = amqp_text(c->reply_text);
            return g_strdup_printf("broker closed the connection: %u %s", c->reply_code, t);
        }
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *c = r.reply.decoded;
            g_autofree char *t = amqp_text(c->reply_text);
            return g_strdup_printf("broker closed the channel: %u %s", c->reply_code, t);
        }
        return g_strdup_printf("broker error (method 0x%08x)", r.reply.id);
    }
    return g_strdup("unknown error");
}

static gboolean check_reply(VnRpc *rpc, const char *what, GError **error)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(rpc->conn);

    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return TRUE;
    g_autofree char *e = reply_error(r);
    g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONNECTION, "%s: %s", what, e);
    return FALSE;
}

/* A small argument table for queue.declare (entries live in @e, strings are static). */
typedef struct {
    amqp_table_entry_t e[4];
    amqp_table_t t;
} QueueArgs;

static void qargs_init(QueueArgs *a)
{
    memset(a, 0, sizeof(*a));
    a->t.entries = a->e;
}

static void qargs_int(QueueArgs *a, const char *key, int32_t v)
{
    amqp_table_entry_t *e = &a->e[a->t.num_entries++];
    e->key = amqp_cstring_bytes(key);
    e->value.kind = AMQP_FIELD_KIND_I32;
    e->value.value.i32 = v;
}

static void qargs_str(QueueArgs *a, const char *key, const char *v)
{
    amqp_table_entry_t *e = &a->e[a->t.num_entries++];
    e->key = amqp_cstring_bytes(key);
    e->value.kind = AMQP_FIELD_KIND_UTF8;
    e->value.value.bytes = amqp_cstring_bytes(v);
}

static gboolean declare_queue(VnRpc *rpc, const char *name, gboolean durable, gboolean auto_delete,
                              const QueueArgs *args, GError **error)
{
    amqp_queue_declare(rpc->conn, CH_CONSUME, amqp_cstring_bytes(name), 0, durable, 0, auto_delete,
                       args ? args->t : amqp_empty_table);
    g_autofree char *what = g_strdup_printf("declaring queue '%s'", name);
    return check_reply(rpc, what, error);
}

static gboolean bind_queue(VnRpc *rpc, const char *queue, const char *exchange, const char *key,
                           GError **error)
{
    amqp_queue_bind(rpc->conn, CH_CONSUME, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                    amqp_cstring_bytes(key), amqp_empty_table);
    g_autofree char *what = g_strdup_printf("binding queue '%s' to '%s'", queue, exchange);
    return check_reply(rpc, what, error);
}

static gboolean consume(VnRpc *rpc, const char *queue, gboolean no_ack, char **tag, GError **error)
{
    amqp_basic_consume_ok_t *ok =
        amqp_basic_consume(rpc->conn, CH_CONSUME, amqp_cstring_bytes(queue), amqp_empty_bytes, 0,
                           no_ack, 0, amqp_empty_table);
    g_autofree char *what = g_strdup_printf("consuming from '%s'", queue);

    if (!ok)
        return check_reply(rpc, what, error);
    *tag = amqp_text(ok->consumer_tag);
    return TRUE;
}

/* The queues a server consumes, by index: the topic's shared queue, its own direct queue
 * and its fanout queue. */
static char *server_queue(VnRpc *rpc, guint i)
{
    const VnRpcConfig *c = &rpc->cfg;

    switch (i) {
    case 0:
        return g_strdup(c->topic);
    case 1:
        return g_strdup_printf("%s.%s", c->topic, c->server);
    default:
        return g_strdup(rpc->fanout_q);
    }
}

/* Declares and binds server queue @i (see server_queue) with its arguments. */
static gboolean declare_server_queue(VnRpc *rpc, guint i, GError **error)
{
    const VnRpcConfig *c = &rpc->cfg;
    gboolean dlx = c->dead_letter_exchange && *c->dead_letter_exchange;
    g_autofree char *q = server_queue(rpc, i);
    QueueArgs args;

    qargs_init(&args);
    if (i == 2) {
        g_autofree char *fanout_ex = g_strdup_printf("%s_fanout", c->topic);
        qargs_int(&args, "x-expires", c->transient_ttl * 1000);
        if (dlx)
            qargs_str(&args, "x-dead-letter-exchange", c->dead_letter_exchange);
        return declare_queue(rpc, q, FALSE, TRUE, &args, error) &&
               bind_queue(rpc, q, fanout_ex, c->topic, error);
    }
    if (c->quorum)
        qargs_str(&args, "x-queue-type", "quorum");
    if (dlx)
        qargs_str(&args, "x-dead-letter-exchange", c->dead_letter_exchange);
    return declare_queue(rpc, q, c->durable || c->quorum, FALSE, &args, error) &&
           bind_queue(rpc, q, c->exchange, q, error);
}

/* The queue of replies to our own calls. */
static gboolean consume_replies(VnRpc *rpc, GError **error)
{
    QueueArgs rq;

    qargs_init(&rq);
    qargs_int(&rq, "x-expires", rpc->cfg.transient_ttl * 1000);
    return declare_queue(rpc, rpc->reply_q, FALSE, FALSE, &rq, error) &&
           consume(rpc, rpc->reply_q, TRUE, &rpc->reply_tag, error);
}

/* Declares everything the link uses; called after every (re)connection. */
static gboolean setup_topology(VnRpc *rpc, GError **error)
{
    const VnRpcConfig *c = &rpc->cfg;
    gboolean dlx = c->dead_letter_exchange && *c->dead_letter_exchange;
    char *tag = NULL;
    /* with quorum queues, every durable queue declared here is one: a classic queue whose
     * home node is down cannot be declared again, which would hold the whole link down
     * until that node returns */
    QueueArgs durable_args;

    qargs_init(&durable_args);
    if (c->quorum)
        qargs_str(&durable_args, "x-queue-type", "quorum");

    amqp_channel_open(rpc->conn, CH_CONSUME);
    if (!check_reply(rpc, "opening the consumer channel", error))
        return FALSE;
    amqp_channel_open(rpc->conn, CH_PUBLISH);
    if (!check_reply(rpc, "opening the publisher channel", error))
        return FALSE;
    amqp_confirm_select(rpc->conn, CH_PUBLISH);
    if (!check_reply(rpc, "enabling publisher confirms", error))
        return FALSE;
    rpc->publish_seq = 0;

    amqp_exchange_declare(rpc->conn, CH_CONSUME, amqp_cstring_bytes(c->exchange),
                          amqp_cstring_bytes("topic"), 0, c->durable || c->quorum, 0, 0,
                          amqp_empty_table);
    if (!check_reply(rpc, "declaring the control exchange", error))
        return FALSE;
    if (dlx) {
        amqp_exchange_declare(rpc->conn, CH_CONSUME, amqp_cstring_bytes(c->dead_letter_exchange),
                              amqp_cstring_bytes("fanout"), 0, 1, 0, 0, amqp_empty_table);
        if (!check_reply(rpc, "declaring the dead-letter exchange", error) ||
            !declare_queue(rpc, c->dead_letter_exchange, TRUE, FALSE, &durable_args, error) ||
            !bind_queue(rpc, c->dead_letter_exchange, c->dead_letter_exchange, "#", error))
            return FALSE;
    }

    if (c->server) {
        g_autofree char *fanout_ex = g_strdup_printf("%s_fanout", c->topic);
        amqp_exchange_declare(rpc->conn, CH_CONSUME, amqp_cstring_bytes(fanout_ex),
                              amqp_cstring_bytes("fanout"), 0, 0, 1, 0, amqp_empty_table);
        if (!check_reply(rpc, "declaring the fanout exchange", error))
            return FALSE;
        for (guint i = 0; i < N_SERVER_QUEUES; i++) {
            if (!declare_server_queue(rpc, i, error))
                return FALSE;
        }
        amqp_basic_qos(rpc->conn, CH_CONSUME, 0, (uint16_t)c->prefetch, 0);
        if (!check_reply(rpc, "setting the prefetch count", error))
            return FALSE;
    }

    if (c->notification_topic) {
        for (const char *const *p = (const char *const[]){ "info", "error", NULL }; *p; p++) {
            g_autofree char *q = g_strdup_printf("%s.%s", c->notification_topic, *p);
            if (!declare_queue(rpc, q, c->durable || c->quorum, FALSE, &durable_args, error) ||
                !bind_queue(rpc, q, c->exchange, q, error))
                return FALSE;
        }
    }

    if (!consume_replies(rpc, error))
        return FALSE;

    rpc->cancelled = 0;
    g_mutex_lock(&rpc->lock);
    gboolean serve = c->server && !rpc->stop_consuming;
    g_mutex_unlock(&rpc->lock);
    if (serve) {
        for (guint i = 0; i < N_SERVER_QUEUES; i++) {
            g_autofree char *q = server_queue(rpc, i);
            if (!consume(rpc, q, FALSE, &tag, error))
                return FALSE;
            g_ptr_array_add(rpc->consumer_tags, tag);
        }
    }
    return TRUE;
}

/* After the broker cancelled consumers (their queue was deleted, or a quorum queue's
 * leader moved): declares their queues again and consumes on the same channel, without
 * dropping the link. */
static gboolean reconsume(VnRpc *rpc, GError **error)
{
    guint cancelled = rpc->cancelled;

    rpc->cancelled = 0;
    if (cancelled & REPLY_BIT) {
        g_clear_pointer(&rpc->reply_tag, g_free);
        if (!consume_replies(rpc, error))
            return FALSE;
        g_message("amqp: consuming replies again from '%s'", rpc->reply_q);
    }
    g_mutex_lock(&rpc->lock);
    gboolean serve = !rpc->stop_consuming;
    g_mutex_unlock(&rpc->lock);
    for (guint i = 0; serve && i < rpc->consumer_tags->len; i++) {
        if (!(cancelled & (1u << i)))
            continue;
        g_autofree char *q = server_queue(rpc, i);
        char *tag = NULL;
        if (!declare_server_queue(rpc, i, error) || !consume(rpc, q, FALSE, &tag, error))
            return FALSE;
        g_free(g_ptr_array_index(rpc->consumer_tags, i));
        g_ptr_array_index(rpc->consumer_tags, i) = tag;
        g_message("amqp: consuming requests again from '%s'", q);
    }
    return TRUE;
}

static gint compare_seq(gconstpointer a, gconstpointer b)
{
    gsize x = GPOINTER_TO_SIZE(a), y = GPOINTER_TO_SIZE(b);

    return x < y ? -1 : x > y;
}

static void disconnect(VnRpc *rpc)
{
    if (!rpc->conn)
        return;
    /* best effort: the socket may already be dead */
    amqp_connection_close(rpc->conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(rpc->conn);
    rpc->conn = NULL;
    vn_frames_reset(&rpc->out); /* their messages are in inflight and go out again */
    rpc->ack_upto = 0;          /* the broker delivers them again */
    content_reset(&rpc->content);
    g_ptr_array_set_size(rpc->consumer_tags, 0);
    g_clear_pointer(&rpc->reply_tag, g_free);

    /* what was published but not confirmed goes out again, in order */
    g_autoptr(GList) seqs = g_hash_table_get_keys(rpc->inflight);
    seqs = g_list_sort(seqs, compare_seq);
    g_mutex_lock(&rpc->lock);
    for (GList *l = g_list_last(seqs); l; l = l->prev) {
        OutMsg *m = g_hash_table_lookup(rpc->inflight, l->data);
        g_hash_table_steal(rpc->inflight, l->data);
        m->returned = FALSE;
        if (m->kind == OUT_KEEPALIVE)
            out_free(m);
        else
            g_queue_push_head(&rpc->outbox, m);
    }
    rpc->stats.connected = FALSE;
    g_mutex_unlock(&rpc->lock);
    if (rpc->h.state)
        rpc->h.state(FALSE, rpc->h.user_data);
}

/* librabbitmq folds every failed connect into "a socket error occurred": the reason
 * (refused, unreachable, no such host), from one more attempt through GIO. */
static char *socket_failure(const char *host, int port, int timeout_s)
{
    g_autoptr(GSocketClient) client = g_socket_client_new();
    g_autoptr(GSocketConnection) conn = NULL;
    g_autoptr(GError) err = NULL;

    g_socket_client_set_timeout(client, (guint)MAX(timeout_s, 1));
    conn = g_socket_client_connect_to_host(client, host, (guint16)port, NULL, &err);
    if (!conn)
        return g_strdup(err->message);
    return g_strdup("a socket error occurred (the port answers now)");
}

/* librabbitmq's TLS errors say "a SSL error occurred"; OpenSSL's queue (this thread's)
 * has the reason: the server's alert (an expired or unknown client certificate) or the
 * verification that failed here. */
static char *tls_failure(int status)
{
    unsigned long e = ERR_peek_last_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;

    ERR_clear_error();
    if (!reason)
        return g_strdup(amqp_error_string2(status));
    return g_strdup_printf("%s: %s", amqp_error_string2(status), reason);
}

static gboolean connect_one(VnRpc *rpc, const char *url_text, GError **error)
{
    g_autoptr(VnAmqpUrl) url = vn_amqp_url_parse(url_text, error);
    amqp_socket_t *sock;
    struct timeval tv = { rpc->cfg.connect_timeout, 0 };
    int st;

    if (!url)
        return FALSE;
    g_free(rpc->where);
    rpc->where = vn_amqp_url_display(url);
    rpc->conn = amqp_new_connection();
    rpc->gather = !url->ssl;
    if (url->ssl) {
        sock = amqp_ssl_socket_new(rpc->conn);
        if (sock) {
            const char *ca = rpc->cfg.ssl_ca_file && *rpc->cfg.ssl_ca_file
                                 ? rpc->cfg.ssl_ca_file
                                 : "/etc/ssl/certs/ca-certificates.crt";
            amqp_ssl_socket_set_verify_peer(sock, 1);
            amqp_ssl_socket_set_verify_hostname(sock, rpc->cfg.ssl_verify_hostname);
            if (amqp_ssl_socket_set_cacert(sock, ca) != AMQP_STATUS_OK) {
                g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONFIG,
                            "cannot load the CA bundle '%s'", ca);
                goto fail;
            }
            if (rpc->cfg.ssl_cert_file && *rpc->cfg.ssl_cert_file &&
                amqp_ssl_socket_set_key(sock, rpc->cfg.ssl_cert_file, rpc->cfg.ssl_key_file) !=
                    AMQP_STATUS_OK) {
                g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONFIG,
                            "cannot load the client certificate '%s' or its key",
                            rpc->cfg.ssl_cert_file);
                goto fail;
            }
        }
    } else {
        sock = amqp_tcp_socket_new(rpc->conn);
    }
    if (!sock) {
        g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONNECTION, "cannot create a socket");
        goto fail;
    }
    amqp_set_handshake_timeout(rpc->conn, &tv);
    ERR_clear_error();
    st = amqp_socket_open_noblock(sock, url->host, url->port, &tv);
    if (st != AMQP_STATUS_OK) {
        g_autofree char *why = st == AMQP_STATUS_SOCKET_ERROR
                                   ? socket_failure(url->host, url->port, rpc->cfg.connect_timeout)
                                   : tls_failure(st);
        g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONNECTION, "connecting to %s: %s",
                    rpc->where, why);
        goto fail;
    }

    /* the broker tells of a cancelled consumer (basic.cancel) and of a resource alarm
     * (connection.blocked) only to a client that says it understands them */
    amqp_table_entry_t caps_e[2];
    caps_e[0].key = amqp_cstring_bytes("consumer_cancel_notify");
    caps_e[1].key = amqp_cstring_bytes("connection.blocked");
    for (guint i = 0; i < G_N_ELEMENTS(caps_e); i++) {
        caps_e[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        caps_e[i].value.value.boolean = 1;
    }
    amqp_table_entry_t props_e[3];
    amqp_table_t props = { 3, props_e };
    props_e[2].key = amqp_cstring_bytes("capabilities");
    props_e[2].value.kind = AMQP_FIELD_KIND_TABLE;
    props_e[2].value.value.table = (amqp_table_t){ G_N_ELEMENTS(caps_e), caps_e };
    props_e[0].key = amqp_cstring_bytes("connection_name");
    props_e[0].value.kind = AMQP_FIELD_KIND_UTF8;
    props_e[0].value.value.bytes =
        amqp_cstring_bytes(rpc->cfg.connection_name ? rpc->cfg.connection_name : "virtnode");
    props_e[1].key = amqp_cstring_bytes("product");
    props_e[1].value.kind = AMQP_FIELD_KIND_UTF8;
    props_e[1].value.value.bytes = amqp_cstring_bytes("virtnode");
    amqp_rpc_reply_t r = amqp_login_with_properties(
        rpc->conn, url->vhost, 0, 131072, rpc->cfg.heartbeat, &props, AMQP_SASL_METHOD_PLAIN,
        url->user ? url->user : "guest", url->password ? url->password : "guest");
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        /* with TLS 1.3 the server refuses a client certificate after the handshake: its
         * alert arrives with the first read, here */
        g_autofree char *e = r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                                     (r.library_error == AMQP_STATUS_SSL_ERROR ||
                                      r.library_error == AMQP_STATUS_SSL_CONNECTION_FAILED)
                                 ? tls_failure(r.library_error)
                                 : reply_error(r);
        g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONNECTION, "logging in to %s: %s",
                    rpc->where, e);
        goto fail;
    }
    struct timeval rpc_tv = { MAX(rpc->cfg.connect_timeout, 5), 0 };
    amqp_set_rpc_timeout(rpc->conn, &rpc_tv);
    if (!setup_topology(rpc, error)) {
        g_prefix_error(error, "%s: ", rpc->where);
        goto fail;
    }
    return TRUE;

fail:
    amqp_destroy_connection(rpc->conn);
    rpc->conn = NULL;
    g_ptr_array_set_size(rpc->consumer_tags, 0);
    g_clear_pointer(&rpc->reply_tag, g_free);
    return FALSE;
}

/* Sleeps up to @seconds unless woken to stop; returns FALSE when stopping. */
static gboolean sleep_unless_stopped(VnRpc *rpc, double seconds)
{
    gint64 end = g_get_monotonic_time() + (gint64)(seconds * G_TIME_SPAN_SECOND);

    for (;;) {
        g_mutex_lock(&rpc->lock);
        gboolean stop = rpc->stop;
        g_mutex_unlock(&rpc->lock);
        if (stop)
            return FALSE;
        gint64 left = end - g_get_monotonic_time();
        if (left <= 0)
            return TRUE;
        struct pollfd p = { rpc->wake_fd, POLLIN, 0 };
        if (poll(&p, 1, (int)MIN(left / 1000 + 1, 1000)) > 0) {
            guint64 n;
            if (read(rpc->wake_fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
                return TRUE;
        }
    }
}

/* Connects to the next broker of the list, with back-off between failed rounds. */
static gboolean connect_with_backoff(VnRpc *rpc)
{
    gboolean logged = FALSE;
    guint n = g_strv_length(rpc->urls);

    for (;;) {
        g_mutex_lock(&rpc->lock);
        gboolean stop = rpc->stop;
        g_mutex_unlock(&rpc->lock);
        if (stop)
            return FALSE;
        for (guint i = 0; i < n; i++) {
            g_autoptr(GError) err = NULL;
            guint idx = (rpc->url_index + i) % n;
            if (connect_one(rpc, rpc->urls[idx], &err)) {
                rpc->url_index = idx;
                return TRUE;
            }
            if (!logged || rpc->backoff.failures < 2)
                g_warning("amqp: %s", err->message);
            else
                g_debug("amqp: %s", err->message);
            logged = TRUE;
            g_mutex_lock(&rpc->lock);
            g_strlcpy(rpc->stats.last_connect_error, err->message,
                      sizeof(rpc->stats.last_connect_error));
            if (i == n - 1)
                rpc->stats.connect_rounds_failed++;
            g_mutex_unlock(&rpc->lock);
        }
        double d = vn_backoff_next(&rpc->backoff, g_random_double());
        if (rpc->backoff.failures == 1)
            g_message("amqp: no broker accepted the link; retrying with back-off (next in %.1f s)",
                      d);
        else
            g_debug("amqp: no broker accepted the link; next attempt in %.1f s", d);
        if (!sleep_unless_stopped(rpc, d))
            return FALSE;
    }
}

/* ------------------------------------------------------------------ link thread: writing */

/* Sends a method frame: gathered on plain TCP, written by librabbitmq on TLS.  A failure
 * shows on the connection's next write or read. */
static void link_method(VnRpc *rpc, amqp_channel_t ch, amqp_method_number_t id, void *m)
{
    if (rpc->gather) {
        if (!vn_frames_method(&rpc->out, ch, id, m))
            g_warning("amqp: cannot encode method 0x%08x", id);
        return;
    }
    amqp_send_method(rpc->conn, ch, id, m);
}

static void link_ack(VnRpc *rpc, amqp_channel_t ch, guint64 tag, gboolean multiple)
{
    amqp_basic_ack_t a = { .delivery_tag = tag, .multiple = multiple ? 1 : 0 };

    link_method(rpc, ch, AMQP_BASIC_ACK_METHOD, &a);
}

/* Writes the frames gathered so far in one go; waits while the broker reads nothing (as
 * librabbitmq does while it blocks the connection for a resource alarm) unless the link
 * is stopping. */
static gboolean link_write(VnRpc *rpc, GError **error)
{
    while (vn_frames_pending(&rpc->out)) {
        int e = vn_frames_write(&rpc->out, amqp_get_sockfd(rpc->conn), 1000);
        if (e == 0)
            return TRUE;
        if (e == ETIMEDOUT) {
            g_mutex_lock(&rpc->lock);
            gboolean stop = rpc->stop;
            g_mutex_unlock(&rpc->lock);
            if (!stop)
                continue;
        }
        g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONNECTION,
                    "connection to %s lost: writing: %s", rpc->where, g_strerror(e));
        return FALSE;
    }
    return TRUE;
}

/* ------------------------------------------------------------------ link thread: input */

static gboolean is_consumer_tag(VnRpc *rpc, const char *tag)
{
    for (guint i = 0; i < rpc->consumer_tags->len; i++) {
        if (strcmp(g_ptr_array_index(rpc->consumer_tags, i), tag) == 0)
            return TRUE;
    }
    return FALSE;
}

static void handle_reply(VnRpc *rpc, const char *body, gsize len)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnRpcReply) r = vn_envelope_decode_reply(body, len, &err);
    PendingCall *pc;

    if (!r || !r->msg_id) {
        g_warning("amqp: ignoring an undecodable reply: %s", err ? err->message : "no _msg_id");
        return;
    }
    g_mutex_lock(&rpc->lock);
    pc = g_hash_table_lookup(rpc->calls, r->msg_id);
    if (!pc || pc->done) {
        g_mutex_unlock(&rpc->lock);
        g_debug("amqp: reply to %s arrived after its caller gave up", r->msg_id);
        return;
    }
    pc->last_seen = g_get_monotonic_time();
    if (r->result) {
        if (pc->result)
            json_object_put(pc->result);
        pc->result = json_object_get(r->result);
    }
    if (r->failure_class) {
        pc->failure_class = g_strdup(r->failure_class);
        pc->failure_message = g_strdup(r->failure_message);
    }
    if (r->ending)
        pc->done = TRUE;
    g_cond_broadcast(&pc->cond);
    g_mutex_unlock(&rpc->lock);
}

static void fail_call(VnRpc *rpc, const char *msg_id, GError *error)
{
    PendingCall *pc;

    g_mutex_lock(&rpc->lock);
    pc = msg_id ? g_hash_table_lookup(rpc->calls, msg_id) : NULL;
    if (pc && !pc->done) {
        pc->done = TRUE;
        pc->error = error;
        error = NULL;
        g_cond_broadcast(&pc->cond);
    }
    g_mutex_unlock(&rpc->lock);
    g_clear_error(&error);
}

static void send_malformed_failure(VnRpc *rpc, VnRpcMessage *msg, const GError *err)
{
    VnRpcFailure f = { "MalformedRequest", "virtnode.exception", err->message };

    if (err->domain == VN_SCHED_ERROR && err->code == VN_SCHED_ERROR_VERSION)
        f.class_name = "UnsupportedVersion";
    vn_rpc_reply(rpc, msg, NULL, &f);
}

static void handle_request(VnRpc *rpc, Content *c)
{
    g_autoptr(GError) err = NULL;
    VnRpcMessage *msg = NULL;
    VnRpcVerdict verdict;
    gboolean stopping;

    g_mutex_lock(&rpc->lock);
    rpc->stats.received++;
    stopping = rpc->stop_consuming;
    g_mutex_unlock(&rpc->lock);

    if (!c->body) {
        g_warning("amqp: rejecting message %" G_GUINT64_FORMAT ": its body of %" G_GUINT64_FORMAT
                  " bytes exceeds max_message_bytes (%zu)",
                  c->delivery_tag, c->body_size, rpc->cfg.max_message_bytes);
        verdict = VN_RPC_REJECT;
    } else if (stopping) {
        verdict = VN_RPC_REQUEUE;
    } else if (!vn_envelope_decode_request((const char *)c->body->data, c->body->len, &msg, &err)) {
        g_warning("amqp: rejecting message %" G_GUINT64_FORMAT
                  " (method '%s', _unique_id '%s', _msg_id '%s'): %s",
                  c->delivery_tag, msg && msg->method ? msg->method : "?",
                  msg && msg->unique_id ? msg->unique_id : "?",
                  msg && msg->msg_id ? msg->msg_id : "?", err->message);
        if (msg)
            send_malformed_failure(rpc, msg, err);
        vn_rpc_message_free(msg);
        verdict = VN_RPC_REJECT;
    } else {
        /* keep-alives start before the handler runs: its reply may already be queued */
        gboolean keepalive = msg->msg_id && msg->reply_q && msg->timeout >= 2;
        g_autofree char *msg_id = g_strdup(msg->msg_id);
        if (keepalive) {
            ActiveCall *a = g_new0(ActiveCall, 1);
            a->reply_q = g_strdup(msg->reply_q);
            a->interval = (gint64)msg->timeout * G_TIME_SPAN_SECOND / 2;
            a->next = g_get_monotonic_time() + a->interval;
            g_hash_table_replace(rpc->active, g_strdup(msg->msg_id), a);
        }
        verdict = rpc->h.request ? rpc->h.request(msg, rpc->h.user_data) : VN_RPC_REJECT;
        if (keepalive && verdict != VN_RPC_ACK)
            g_hash_table_remove(rpc->active, msg_id);
        else if (keepalive)
            g_ptr_array_add(rpc->round_calls, g_steal_pointer(&msg_id));
    }

    switch (verdict) {
    case VN_RPC_ACK:
        /* acked with the others of this round, after their replies went out */
        if (c->channel == CH_CONSUME)
            rpc->ack_upto = c->delivery_tag;
        else
            link_ack(rpc, c->channel, c->delivery_tag, FALSE);
        break;
    case VN_RPC_REJECT:
        g_mutex_lock(&rpc->lock);
        rpc->stats.rejected++;
        g_mutex_unlock(&rpc->lock);
        amqp_basic_reject_t r = { .delivery_tag = c->delivery_tag, .requeue = 0 };
        link_method(rpc, c->channel, AMQP_BASIC_REJECT_METHOD, &r);
        break;
    case VN_RPC_REQUEUE: {
        amqp_basic_nack_t n = { .delivery_tag = c->delivery_tag, .multiple = 0, .requeue = 1 };
        link_method(rpc, c->channel, AMQP_BASIC_NACK_METHOD, &n);
        break;
    }
    }
}

static OutMsg *inflight_by_id(VnRpc *rpc, const char *message_id)
{
    GHashTableIter it;
    gpointer k, v;
    guint64 id = message_id ? g_ascii_strtoull(message_id, NULL, 10) : 0;

    g_hash_table_iter_init(&it, rpc->inflight);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        if (((OutMsg *)v)->id == id)
            return v;
    }
    return NULL;
}

static void content_complete(VnRpc *rpc)
{
    Content *c = &rpc->content;

    if (c->kind == CONTENT_DELIVER) {
        if (c->from_reply_queue) {
            if (c->body)
                handle_reply(rpc, (const char *)c->body->data, c->body->len);
        } else {
            handle_request(rpc, c);
        }
    } else if (c->kind == CONTENT_RETURN) {
        OutMsg *m = inflight_by_id(rpc, c->message_id);
        if (m)
            m->returned = TRUE;
    }
    content_reset(c);
}

/* Confirms (or refuses, @ok FALSE) publishes up to @tag. */
static void handle_confirm(VnRpc *rpc, guint64 tag, gboolean multiple, gboolean ok)
{
    GList *done = NULL;
    GHashTableIter it;
    gpointer k, v;

    g_hash_table_iter_init(&it, rpc->inflight);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        guint64 seq = GPOINTER_TO_SIZE(k);
        if (seq == tag || (multiple && seq < tag)) {
            done = g_list_prepend(done, v);
            g_hash_table_iter_steal(&it);
        }
    }
    for (GList *l = done; l; l = l->next) {
        OutMsg *m = l->data;
        gint64 now = g_get_monotonic_time();
        if (!ok) {
            m->retry_at = now + RETURN_RETRY_US;
            g_queue_push_tail(&rpc->retry, m);
            continue;
        }
        if (!m->returned) {
            g_mutex_lock(&rpc->lock);
            if (m->kind == OUT_REPLY)
                rpc->stats.replies_sent++;
            else if (m->kind == OUT_KEEPALIVE)
                rpc->stats.keepalives_sent++;
            else if (m->kind == OUT_NOTIFY)
                rpc->stats.notifications_sent++;
            g_mutex_unlock(&rpc->lock);
            if (m->kind == OUT_NOTIFY && m->notify_id > 0)
                g_array_append_val(rpc->confirmed, m->notify_id);
            out_free(m);
            continue;
        }
        m->returned = FALSE;
        if (m->kind == OUT_REPLY &&
            now - m->created < (gint64)rpc->cfg.reply_timeout * G_TIME_SPAN_SECOND) {
            m->retry_at = now + RETURN_RETRY_US;
            g_queue_push_tail(&rpc->retry, m);
            continue;
        }
        if (m->kind == OUT_REPLY) {
            g_warning("amqp: dropping the reply to %s: reply queue '%s' did not appear within "
                      "%d s",
                      m->msg_id, m->routing_key, rpc->cfg.reply_timeout);
            g_mutex_lock(&rpc->lock);
            rpc->stats.replies_dropped++;
            g_mutex_unlock(&rpc->lock);
        } else if (m->kind == OUT_CALL) {
            GError *e = g_error_new(VN_SCHED_ERROR, VN_SCHED_ERROR_CONNECTION,
                                    "no server consumes '%s' on exchange '%s'", m->routing_key,
                                    m->exchange);
            fail_call(rpc, m->msg_id, e);
        } else if (m->kind == OUT_CAST) {
            g_warning("amqp: cast dropped: no server consumes '%s'", m->routing_key);
        }
        out_free(m);
    }
    g_list_free(done);
}

static void content_start(VnRpc *rpc, ContentKind kind, amqp_channel_t ch)
{
    content_reset(&rpc->content);
    rpc->content.kind = kind;
    rpc->content.channel = ch;
}

/* Handles one frame; FALSE when the connection must be dropped. */
static gboolean handle_frame(VnRpc *rpc, amqp_frame_t *f, GError **error)
{
    Content *c = &rpc->content;

    if (f->frame_type == AMQP_FRAME_METHOD) {
        switch (f->payload.method.id) {
        case AMQP_BASIC_DELIVER_METHOD: {
            amqp_basic_deliver_t *d = f->payload.method.decoded;
            g_autofree char *tag = amqp_text(d->consumer_tag);
            content_start(rpc, CONTENT_DELIVER, f->channel);
            c->delivery_tag = d->delivery_tag;
            c->from_reply_queue = rpc->reply_tag && strcmp(tag, rpc->reply_tag) == 0;
            if (!c->from_reply_queue && !is_consumer_tag(rpc, tag))
                g_debug("amqp: delivery for an old consumer '%s'", tag);
            return TRUE;
        }
        case AMQP_BASIC_RETURN_METHOD: {
            amqp_basic_return_t *r = f->payload.method.decoded;
            content_start(rpc, CONTENT_RETURN, f->channel);
            c->reply_code = r->reply_code;
            return TRUE;
        }
        case AMQP_BASIC_ACK_METHOD: {
            amqp_basic_ack_t *a = f->payload.method.decoded;
            handle_confirm(rpc, a->delivery_tag, a->multiple, TRUE);
            return TRUE;
        }
        case AMQP_BASIC_NACK_METHOD: {
            amqp_basic_nack_t *n = f->payload.method.decoded;
            handle_confirm(rpc, n->delivery_tag, n->multiple, FALSE);
            return TRUE;
        }
        case AMQP_BASIC_CANCEL_METHOD: {
            amqp_basic_cancel_t *cn = f->payload.method.decoded;
            g_autofree char *tag = amqp_text(cn->consumer_tag);
            guint bit = 0;
            if (rpc->reply_tag && strcmp(tag, rpc->reply_tag) == 0)
                bit = REPLY_BIT;
            for (guint i = 0; !bit && i < rpc->consumer_tags->len; i++) {
                if (strcmp(g_ptr_array_index(rpc->consumer_tags, i), tag) == 0)
                    bit = 1u << i;
            }
            if (bit) {
                g_warning("amqp: the broker cancelled consumer '%s' (its queue was deleted or "
                          "its leader moved); consuming again",
                          tag);
                rpc->cancelled |= bit;
            }
            return TRUE;
        }
        case AMQP_CHANNEL_CLOSE_METHOD: {
            amqp_channel_close_t *cl = f->payload.method.decoded;
            amqp_channel_close_ok_t ok = { 0 };
            g_autofree char *t = amqp_text(cl->reply_text);
            amqp_send_method(rpc->conn, f->channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
            g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONNECTION,
                        "the broker closed channel %u: %u %s", f->channel, cl->reply_code, t);
            return FALSE;
        }
        case AMQP_CONNECTION_CLOSE_METHOD: {
            amqp_connection_close_t *cl = f->payload.method.decoded;
            amqp_connection_close_ok_t ok = { 0 };
            g_autofree char *t = amqp_text(cl->reply_text);
            amqp_send_method(rpc->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
            g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONNECTION,
                        "the broker closed the connection: %u %s", cl->reply_code, t);
            return FALSE;
        }
        case AMQP_CONNECTION_BLOCKED_METHOD:
            g_warning("amqp: the broker blocks publishing (resource alarm)");
            return TRUE;
        case AMQP_CONNECTION_UNBLOCKED_METHOD:
            g_message("amqp: the broker accepts publishing again");
            return TRUE;
        default:
            return TRUE;
        }
    }
    if (f->frame_type == AMQP_FRAME_HEADER) {
        if (c->kind == CONTENT_NONE || c->channel != f->channel || c->have_header)
            return TRUE;
        c->have_header = TRUE;
        c->body_size = f->payload.properties.body_size;
        amqp_basic_properties_t *p = f->payload.properties.decoded;
        if (p && (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG))
            c->message_id = amqp_text(p->message_id);
        if (c->body_size <= rpc->cfg.max_message_bytes)
            c->body = g_byte_array_sized_new((guint)c->body_size);
        if (c->body_size == 0)
            content_complete(rpc);
        return TRUE;
    }
    if (f->frame_type == AMQP_FRAME_BODY) {
        if (c->kind == CONTENT_NONE || c->channel != f->channel || !c->have_header)
            return TRUE;
        amqp_bytes_t frag = f->payload.body_fragment;
        c->received += frag.len;
        if (c->body)
            g_byte_array_append(c->body, frag.bytes, (guint)frag.len);
        if (c->received >= c->body_size)
            content_complete(rpc);
        return TRUE;
    }
    return TRUE;
}

/* Reads every frame available now; FALSE when the connection failed. */
/* Tells the hook, at once, of the notifications confirmed in a round. */
static void report_confirmed(VnRpc *rpc)
{
    if (rpc->confirmed->len && rpc->h.confirmed)
        rpc->h.confirmed((const gint64 *)(gpointer)rpc->confirmed->data, rpc->confirmed->len,
                         rpc->h.user_data);
    g_array_set_size(rpc->confirmed, 0);
}

static gboolean read_frames(VnRpc *rpc, GError **error)
{
    gboolean ok = TRUE;

    for (int i = 0; ok && i < FRAMES_PER_ROUND; i++) {
        amqp_frame_t f;
        struct timeval zero = { 0, 0 };
        /* once what was read is handled, the replies go out before the socket is tried
         * again: the loop's poll tells when more has come (an empty read costs two calls) */
        if (i > 0 && !amqp_frames_enqueued(rpc->conn) && !amqp_data_in_buffer(rpc->conn))
            break;
        int st = amqp_simple_wait_frame_noblock(rpc->conn, &f, &zero);
        if (st == AMQP_STATUS_TIMEOUT)
            break;
        if (st != AMQP_STATUS_OK) {
            g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONNECTION,
                        "connection to %s lost: %s", rpc->where, amqp_error_string2(st));
            ok = FALSE;
        } else {
            ok = handle_frame(rpc, &f, error);
        }
    }
    /* what the broker confirmed holds even when the connection went after it */
    report_confirmed(rpc);
    /* the round's requests are acked once the handler has made them its own; it ends the
     * round even when the connection went, as it may have taken some */
    if (rpc->h.round_end && !rpc->h.round_end(rpc->h.user_data)) {
        amqp_basic_nack_t n = { .delivery_tag = rpc->ack_upto, .multiple = 1, .requeue = 1 };
        if (ok && rpc->ack_upto)
            link_method(rpc, CH_CONSUME, AMQP_BASIC_NACK_METHOD, &n);
        rpc->ack_upto = 0;
        for (guint i = 0; i < rpc->round_calls->len; i++)
            g_hash_table_remove(rpc->active, g_ptr_array_index(rpc->round_calls, i));
    }
    g_ptr_array_set_size(rpc->round_calls, 0);
    if (ok && !amqp_frames_enqueued(rpc->conn) && !amqp_data_in_buffer(rpc->conn))
        amqp_maybe_release_buffers(rpc->conn);
    return ok;
}

/* ------------------------------------------------------------------ link thread: output */

static gboolean publish(VnRpc *rpc, OutMsg *m, GError **error)
{
    amqp_basic_properties_t p;
    char id[32];
    char exp[32];
    int st;

    memset(&p, 0, sizeof(p));
    g_snprintf(id, sizeof(id), "%" G_GUINT64_FORMAT, m->id);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG |
               AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.content_encoding = amqp_cstring_bytes("utf-8");
    p.delivery_mode = (m->kind == OUT_CAST || m->kind == OUT_NOTIFY) ? 2 : 1;
    p.message_id = amqp_cstring_bytes(id);
    if (m->expiration_ms > 0) {
        g_snprintf(exp, sizeof(exp), "%d", m->expiration_ms);
        p._flags |= AMQP_BASIC_EXPIRATION_FLAG;
        p.expiration = amqp_cstring_bytes(exp);
    }
    if (rpc->gather)
        st = vn_frames_publish(&rpc->out, CH_PUBLISH, amqp_cstring_bytes(m->exchange),
                               amqp_cstring_bytes(m->routing_key), m->mandatory, &p,
                               amqp_cstring_bytes(m->body), amqp_get_frame_max(rpc->conn))
                 ? AMQP_STATUS_OK
                 : AMQP_STATUS_BAD_AMQP_DATA;
    else
        st = amqp_basic_publish(rpc->conn, CH_PUBLISH, amqp_cstring_bytes(m->exchange),
                                amqp_cstring_bytes(m->routing_key), m->mandatory, 0, &p,
                                amqp_cstring_bytes(m->body));
    if (st != AMQP_STATUS_OK) {
        g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONNECTION, "publishing to %s: %s",
                    rpc->where, amqp_error_string2(st));
        return FALSE;
    }
    m->returned = FALSE;
    g_hash_table_insert(rpc->inflight, GSIZE_TO_POINTER(++rpc->publish_seq), m);
    return TRUE;
}

static gboolean drain_outbox(VnRpc *rpc, GError **error)
{
    for (;;) {
        if (g_hash_table_size(rpc->inflight) >= MAX_INFLIGHT)
            return TRUE;
        g_mutex_lock(&rpc->lock);
        OutMsg *m = g_queue_pop_head(&rpc->outbox);
        if (!m)
            rpc->outbox_overflow_logged = FALSE;
        g_mutex_unlock(&rpc->lock);
        if (!m)
            return TRUE;
        if (m->kind == OUT_REPLY) {
            g_hash_table_remove(rpc->active, m->msg_id);
            if (g_get_monotonic_time() - m->created >
                (gint64)rpc->cfg.reply_timeout * G_TIME_SPAN_SECOND) {
                g_warning("amqp: dropping the reply to %s: older than reply_timeout (%d s)",
                          m->msg_id, rpc->cfg.reply_timeout);
                out_free(m);
                continue;
            }
        }
        if (!publish(rpc, m, error)) {
            g_mutex_lock(&rpc->lock);
            g_queue_push_head(&rpc->outbox, m);
            g_mutex_unlock(&rpc->lock);
            return FALSE;
        }
    }
}

/* One ack for every delivery of the round that was accepted (the rejected and requeued
 * ones were answered at once, and an ack with "multiple" covers only those still open). */
static void flush_acks(VnRpc *rpc)
{
    if (!rpc->ack_upto)
        return;
    link_ack(rpc, CH_CONSUME, rpc->ack_upto, TRUE);
    rpc->ack_upto = 0;
}

static void send_keepalives(VnRpc *rpc, gint64 now)
{
    GHashTableIter it;
    gpointer k, v;

    g_hash_table_iter_init(&it, rpc->active);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        ActiveCall *a = v;
        if (now < a->next)
            continue;
        a->next = now + a->interval;
        OutMsg *m = g_new0(OutMsg, 1);
        m->kind = OUT_KEEPALIVE;
        m->exchange = g_strdup("");
        m->routing_key = g_strdup(a->reply_q);
        m->body = vn_envelope_encode_reply(k, NULL, NULL, FALSE);
        m->mandatory = TRUE;
        m->msg_id = g_strdup(k);
        g_mutex_lock(&rpc->lock);
        enqueue_locked(rpc, m, TRUE);
        g_mutex_unlock(&rpc->lock);
    }
}

static void requeue_retries(VnRpc *rpc, gint64 now)
{
    GList *l = rpc->retry.head;

    while (l) {
        GList *next = l->next;
        OutMsg *m = l->data;
        if (m->retry_at <= now) {
            g_queue_delete_link(&rpc->retry, l);
            g_mutex_lock(&rpc->lock);
            g_queue_push_head(&rpc->outbox, m);
            g_mutex_unlock(&rpc->lock);
        }
        l = next;
    }
}

/* Milliseconds until the next thing the thread must do by itself. */
static int next_timeout_ms(VnRpc *rpc, gint64 now)
{
    gint64 next = now + G_TIME_SPAN_SECOND;
    GHashTableIter it;
    gpointer k, v;

    if (rpc->cfg.heartbeat > 0)
        next = MIN(next, now + (gint64)rpc->cfg.heartbeat * G_TIME_SPAN_SECOND / 4);
    g_hash_table_iter_init(&it, rpc->active);
    while (g_hash_table_iter_next(&it, &k, &v))
        next = MIN(next, ((ActiveCall *)v)->next);
    for (GList *l = rpc->retry.head; l; l = l->next)
        next = MIN(next, ((OutMsg *)l->data)->retry_at);
    if (next <= now)
        return 0;
    return (int)((next - now + 999) / 1000);
}

static void cancel_consumers(VnRpc *rpc)
{
    for (guint i = 0; i < rpc->consumer_tags->len; i++) {
        const char *tag = g_ptr_array_index(rpc->consumer_tags, i);
        amqp_basic_cancel(rpc->conn, CH_CONSUME, amqp_cstring_bytes(tag));
    }
    g_ptr_array_set_size(rpc->consumer_tags, 0);
    g_info("amqp: stopped consuming requests");
}

/* Runs one connected session until it fails or the link stops. */
static void run_connected(VnRpc *rpc)
{
    g_autoptr(GError) err = NULL;

    g_mutex_lock(&rpc->lock);
    rpc->stats.connected = TRUE;
    g_cond_broadcast(&rpc->cond);
    g_mutex_unlock(&rpc->lock);
    vn_backoff_reset(&rpc->backoff);
    g_message("amqp: connected to %s", rpc->where);
    if (rpc->h.state)
        rpc->h.state(TRUE, rpc->h.user_data);

    for (;;) {
        gint64 now = g_get_monotonic_time();

        g_mutex_lock(&rpc->lock);
        gboolean stop = rpc->stop;
        gboolean cancel = rpc->stop_consuming && !rpc->cancel_sent;
        if (cancel)
            rpc->cancel_sent = TRUE;
        g_mutex_unlock(&rpc->lock);
        if (stop)
            return;
        if (cancel && !link_write(rpc, &err))
            break;
        if (cancel)
            cancel_consumers(rpc);

        requeue_retries(rpc, now);
        send_keepalives(rpc, now);
        if (!drain_outbox(rpc, &err) || !read_frames(rpc, &err))
            break;
        if (rpc->cancelled && (!link_write(rpc, &err) || !reconsume(rpc, &err)))
            break;
        if (!drain_outbox(rpc, &err))
            break;
        flush_acks(rpc);
        if (!link_write(rpc, &err))
            break;

        g_mutex_lock(&rpc->lock);
        gboolean was_drained = rpc->drained;
        rpc->drained = g_queue_is_empty(&rpc->outbox) && g_hash_table_size(rpc->inflight) == 0 &&
                       g_queue_is_empty(&rpc->retry);
        rpc->stats.outbox = g_queue_get_length(&rpc->outbox);
        if (rpc->drained && !was_drained && rpc->flushing) /* vn_rpc_flush waits for this */
            g_cond_broadcast(&rpc->cond);
        gboolean more =
            !g_queue_is_empty(&rpc->outbox) && g_hash_table_size(rpc->inflight) < MAX_INFLIGHT;
        g_mutex_unlock(&rpc->lock);

        if (more || amqp_frames_enqueued(rpc->conn) || amqp_data_in_buffer(rpc->conn))
            continue;
        struct pollfd p[2] = { { amqp_get_sockfd(rpc->conn), POLLIN, 0 },
                               { rpc->wake_fd, POLLIN, 0 } };
        int timeout = next_timeout_ms(rpc, g_get_monotonic_time());
        if (poll(p, 2, timeout) < 0 && errno != EINTR) {
            g_set_error(&err, VN_SCHED_ERROR, VN_SCHED_ERROR_CONNECTION, "poll: %s",
                        g_strerror(errno));
            break;
        }
        if (p[1].revents & POLLIN) {
            guint64 n;
            if (read(rpc->wake_fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
                g_debug("amqp: wake-up read: %s", g_strerror(errno));
        }
    }
    g_warning("amqp: %s; reconnecting", err ? err->message : "connection lost");
}

static gpointer link_thread(gpointer data)
{
    VnRpc *rpc = data;

    link_of_thread = rpc;
    for (;;) {
        if (!connect_with_backoff(rpc))
            break;
        run_connected(rpc);
        g_mutex_lock(&rpc->lock);
        gboolean stop = rpc->stop;
        if (!stop) {
            rpc->stats.reconnects++;
            rpc->cancel_sent = FALSE;
        }
        g_mutex_unlock(&rpc->lock);
        if (stop)
            break;
        disconnect(rpc);
        /* a short pause so a broker that accepts and drops at once is not hammered */
        if (!sleep_unless_stopped(rpc, vn_backoff_next(&rpc->backoff, g_random_double())))
            break;
    }
    disconnect(rpc);
    return NULL;
}

/* ------------------------------------------------------------------ life cycle */

VnRpc *vn_rpc_new(const VnRpcConfig *cfg, const VnRpcHandlers *handlers, GError **error)
{
    VnRpc *rpc;

    if (!cfg->urls || !cfg->urls[0]) {
        g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONFIG, "no broker URL");
        return NULL;
    }
    for (char **u = cfg->urls; *u; u++) {
        g_autoptr(VnAmqpUrl) url = vn_amqp_url_parse(*u, error);
        if (!url)
            return NULL;
    }
    if (cfg->ssl_cert_file && *cfg->ssl_cert_file && (!cfg->ssl_key_file || !*cfg->ssl_key_file)) {
        g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONFIG,
                    "ssl_cert_file needs ssl_key_file");
        return NULL;
    }
    rpc = g_new0(VnRpc, 1);
    rpc->cfg = *cfg;
    rpc->urls = g_strdupv(cfg->urls);
    rpc->cfg.urls = rpc->urls;
    rpc->cfg.exchange = g_strdup(cfg->exchange);
    rpc->cfg.topic = g_strdup(cfg->topic);
    rpc->cfg.server = g_strdup(cfg->server);
    rpc->cfg.connection_name = g_strdup(cfg->connection_name);
    rpc->cfg.dead_letter_exchange = g_strdup(cfg->dead_letter_exchange);
    rpc->cfg.notification_topic = g_strdup(cfg->notification_topic);
    rpc->cfg.ssl_ca_file = g_strdup(cfg->ssl_ca_file);
    rpc->cfg.ssl_cert_file = g_strdup(cfg->ssl_cert_file);
    rpc->cfg.ssl_key_file = g_strdup(cfg->ssl_key_file);
    if (rpc->cfg.max_message_bytes == 0)
        rpc->cfg.max_message_bytes = 1024 * 1024;
    if (rpc->cfg.outbox_limit <= 0)
        rpc->cfg.outbox_limit = 10000;
    if (rpc->cfg.reply_timeout <= 0)
        rpc->cfg.reply_timeout = 60;
    if (rpc->cfg.transient_ttl <= 0)
        rpc->cfg.transient_ttl = 1800;
    if (rpc->cfg.connect_timeout <= 0)
        rpc->cfg.connect_timeout = 10;
    if (rpc->cfg.prefetch <= 0)
        rpc->cfg.prefetch = 64;
    if (handlers)
        rpc->h = *handlers;
    rpc->proc_id = vn_envelope_new_id();
    rpc->reply_q = g_strdup_printf("reply_%s", rpc->proc_id);
    rpc->fanout_q = g_strdup_printf("%s_fanout_%s", cfg->topic, rpc->proc_id);
    rpc->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    g_mutex_init(&rpc->lock);
    g_cond_init(&rpc->cond);
    g_queue_init(&rpc->outbox);
    g_queue_init(&rpc->retry);
    rpc->calls = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    rpc->inflight = g_hash_table_new(g_direct_hash, g_direct_equal);
    rpc->confirmed = g_array_new(FALSE, FALSE, sizeof(gint64));
    rpc->active =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)active_free);
    rpc->consumer_tags = g_ptr_array_new_with_free_func(g_free);
    rpc->round_calls = g_ptr_array_new_with_free_func(g_free);
    rpc->drained = TRUE;
    vn_frames_init(&rpc->out);
    rpc->url_index = g_random_int_range(0, (gint32)g_strv_length(rpc->urls));
    vn_backoff_init(&rpc->backoff, cfg->reconnect_min > 0 ? cfg->reconnect_min : 1,
                    cfg->reconnect_max > 0 ? cfg->reconnect_max : 30);
    return rpc;
}

void vn_rpc_start(VnRpc *rpc)
{
    if (!rpc->thread)
        rpc->thread = g_thread_new("amqp-link", link_thread, rpc);
}

gboolean vn_rpc_wait_connected(VnRpc *rpc, double timeout_s)
{
    gint64 end = g_get_monotonic_time() + (gint64)(timeout_s * G_TIME_SPAN_SECOND);
    gboolean ok;

    g_mutex_lock(&rpc->lock);
    while (!rpc->stats.connected && !rpc->stop) {
        if (!g_cond_wait_until(&rpc->cond, &rpc->lock, end))
            break;
    }
    ok = rpc->stats.connected;
    g_mutex_unlock(&rpc->lock);
    return ok;
}

void vn_rpc_stop_consuming(VnRpc *rpc)
{
    g_mutex_lock(&rpc->lock);
    rpc->stop_consuming = TRUE;
    g_mutex_unlock(&rpc->lock);
    wake(rpc);
}

gboolean vn_rpc_flush(VnRpc *rpc, double timeout_s)
{
    gint64 end = g_get_monotonic_time() + (gint64)(timeout_s * G_TIME_SPAN_SECOND);
    gboolean ok;

    wake(rpc);
    g_mutex_lock(&rpc->lock);
    rpc->flushing++;
    while (!(rpc->drained && g_queue_is_empty(&rpc->outbox)) && rpc->thread) {
        if (!g_cond_wait_until(&rpc->cond, &rpc->lock, end))
            break;
    }
    rpc->flushing--;
    ok = rpc->drained && g_queue_is_empty(&rpc->outbox);
    g_mutex_unlock(&rpc->lock);
    return ok;
}

void vn_rpc_get_stats(VnRpc *rpc, VnRpcStats *out)
{
    g_mutex_lock(&rpc->lock);
    *out = rpc->stats;
    out->outbox = g_queue_get_length(&rpc->outbox);
    g_mutex_unlock(&rpc->lock);
}

void vn_rpc_free(VnRpc *rpc)
{
    GHashTableIter it;
    gpointer k, v;

    if (!rpc)
        return;
    g_mutex_lock(&rpc->lock);
    rpc->stop = TRUE;
    /* wake every waiting caller */
    g_hash_table_iter_init(&it, rpc->calls);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        PendingCall *pc = v;
        if (!pc->done) {
            pc->done = TRUE;
            pc->error =
                g_error_new(VN_SCHED_ERROR, VN_SCHED_ERROR_STOPPED, "the AMQP link is stopping");
            g_cond_broadcast(&pc->cond);
        }
    }
    g_cond_broadcast(&rpc->cond);
    /* woken callers still read their call and the lock: wait until every one has left */
    while (rpc->callers > 0)
        g_cond_wait(&rpc->cond, &rpc->lock);
    g_mutex_unlock(&rpc->lock);
    wake(rpc);
    if (rpc->thread)
        g_thread_join(rpc->thread);

    g_queue_clear_full(&rpc->outbox, (GDestroyNotify)out_free);
    g_queue_clear_full(&rpc->retry, (GDestroyNotify)out_free);
    g_hash_table_iter_init(&it, rpc->inflight);
    while (g_hash_table_iter_next(&it, &k, &v))
        out_free(v);
    g_hash_table_destroy(rpc->inflight);
    g_array_unref(rpc->confirmed);
    g_hash_table_destroy(rpc->active);
    g_hash_table_destroy(rpc->calls);
    g_ptr_array_free(rpc->consumer_tags, TRUE);
    g_ptr_array_free(rpc->round_calls, TRUE);
    content_reset(&rpc->content);
    vn_frames_clear(&rpc->out);
    close(rpc->wake_fd);
    g_mutex_clear(&rpc->lock);
    g_cond_clear(&rpc->cond);
    g_strfreev(rpc->urls);
    g_free((char *)rpc->cfg.exchange);
    g_free((char *)rpc->cfg.topic);
    g_free((char *)rpc->cfg.server);
    g_free((char *)rpc->cfg.connection_name);
    g_free((char *)rpc->cfg.dead_letter_exchange);
    g_free((char *)rpc->cfg.notification_topic);
    g_free((char *)rpc->cfg.ssl_ca_file);
    g_free((char *)rpc->cfg.ssl_cert_file);
    g_free((char *)rpc->cfg.ssl_key_file);
    g_free(rpc->proc_id);
    g_free(rpc->reply_q);
    g_free(rpc->fanout_q);
    g_free(rpc->reply_tag);
    g_free(rpc->where);
    g_free(rpc);
}
