/* scheduler-client/amqp/rpc.h - the link to the cloud over RabbitMQ: an oslo.messaging
 * compatible RPC server, an RPC client, and a notifier, all on one AMQP connection that
 * one thread owns (librabbitmq connections are not thread-safe).
 *
 * Server: consumes <topic>, <topic>.<server> and a <topic>_fanout_<id> queue; each request
 * is handed to the handler in the link thread, which decides whether the broker may
 * forget it (ack), must drop it (reject, dead-lettered when configured) or must redeliver
 * it (requeue).  Undecodable requests are logged once, rejected and, when their reply
 * address can be read, answered with a failure.  Replies are published with the mandatory
 * flag; a reply whose queue does not exist yet is retried for reply_timeout.  While a call
 * that names a _timeout runs, keep-alive replies go out every _timeout/2 seconds.
 *
 * Client: calls and casts with the same envelope; calls wait for their reply (keep-alives
 * extend the monitor timeout).
 *
 * Notifier: versioned notifications on <notification_topic>.<priority> with publisher
 * confirms; unconfirmed ones are sent again after a reconnect.
 *
 * Resilience: heartbeats; failover across the URL list; reconnect with capped exponential
 * back-off and jitter; queues re-declared on reconnect; replies, casts and notifications
 * queued while disconnected.  All functions are thread-safe unless noted. */
#pragma once

#include <glib.h>
#include <json-c/json.h>

#include "scheduler-client/amqp/envelope.h"

typedef struct _VnRpc VnRpc;

typedef struct {
    char **urls;          /* amqp:// or amqps:// broker URLs, tried in turn */
    const char *exchange; /* control_exchange */
    const char *topic;
    const char *server;          /* this host; NULL for a client-only link */
    const char *connection_name; /* shown by the broker, e.g. "virtnoded host-a" */
    int heartbeat;               /* seconds, 0 = off */
    int prefetch;
    gboolean durable;
    gboolean quorum;
    int transient_ttl;                /* seconds (x-expires of fanout and reply queues) */
    const char *dead_letter_exchange; /* NULL or "" = none */
    gsize max_message_bytes;
    int connect_timeout;            /* seconds */
    int reconnect_min;              /* seconds */
    int reconnect_max;              /* seconds */
    int reply_timeout;              /* seconds */
    const char *notification_topic; /* NULL = no notifications */
    int outbox_limit;               /* queued casts and notifications kept while disconnected */
    const char *ssl_ca_file;
    const char *ssl_cert_file;
    const char *ssl_key_file;
    gboolean ssl_verify_hostname;
} VnRpcConfig;

typedef enum {
    VN_RPC_ACK,     /* the request is safely recorded (or was a duplicate): forget it */
    VN_RPC_REJECT,  /* the request is invalid: drop it (dead-letter when configured) */
    VN_RPC_REQUEUE, /* not now (e.g. stopping): let the broker deliver it again */
} VnRpcVerdict;

/* Handles one decoded request, in the link thread: must not block for long.  Takes
 * ownership of @msg. */
typedef VnRpcVerdict (*VnRpcRequestFunc)(VnRpcMessage *msg, gpointer user_data);

/* Called in the link thread when the link comes up (TRUE) or goes down (FALSE). */
typedef void (*VnRpcStateFunc)(gboolean connected, gpointer user_data);

/* Called in the link thread when the broker confirmed the @n notifications @ids (those
 * of one round of reading, together). */
typedef void (*VnRpcConfirmFunc)(const gint64 *ids, guint n, gpointer user_data);

/* Called in the link thread after the requests of one round of reading were handed to
 * the request handler, before their acks go out.  FALSE: none of them may be acked; every
 * delivery of the round not yet answered goes back to the queue. */
typedef gboolean (*VnRpcRoundFunc)(gpointer user_data);

typedef struct {
    VnRpcRequestFunc request;
    VnRpcStateFunc state;
    VnRpcConfirmFunc confirmed;
    VnRpcRoundFunc round_end; /* NULL: each request is acked as it was handled */
    gpointer user_data;
} VnRpcHandlers;

/* Counters for /metrics. */
typedef struct {
    guint64 received;
    guint64 rejected;
    guint64 replies_sent;
    guint64 replies_dropped;
    guint64 keepalives_sent;
    guint64 notifications_sent;
    guint64 notifications_dropped;
    guint64 reconnects;
    guint64 connect_rounds_failed; /* times every broker URL refused the link in a row */
    char last_connect_error[256];  /* why the last URL tried did (empty: none failed) */
    gboolean connected;
    guint outbox;
} VnRpcStats;

/* Validates @cfg (URLs, TLS files) and copies it; the thread starts with vn_rpc_start. */
VnRpc *vn_rpc_new(const VnRpcConfig *cfg, const VnRpcHandlers *handlers, GError **error);

/* Starts the link thread; it connects (and reconnects) on its own. */
void vn_rpc_start(VnRpc *rpc);

/* Waits up to @timeout_s for the link to be connected; FALSE if it is not. */
gboolean vn_rpc_wait_connected(VnRpc *rpc, double timeout_s);

/* Server side: a reply (result, or failure when @failure is set) to request @req; no-op
 * for casts.  @result is borrowed. */
void vn_rpc_reply(VnRpc *rpc, const VnRpcMessage *req, json_object *result,
                  const VnRpcFailure *failure);

/* Server side: the same for a request known only by its reply address (journal replay). */
void vn_rpc_reply_to(VnRpc *rpc, const char *reply_q, const char *msg_id, json_object *result,
                     const VnRpcFailure *failure);

/* Client side: calls @method on @server (NULL: any server of the topic) and waits up to
 * @timeout_s for the reply; with @monitor_s > 0 the call also fails when no keep-alive
 * arrived for that long.  On success *result holds the result (NULL for a JSON null).
 * Errors: VN_SCHED_ERROR_REMOTE (the method failed: "<class>: <message>"), _TIMEOUT,
 * _CONNECTION (no server for @server), _STOPPED. */
gboolean vn_rpc_call(VnRpc *rpc, const char *server, const char *method, json_object *args,
                     const char *version, json_object *context, int timeout_s, int monitor_s,
                     json_object **result, GError **error);

/* Client side: a cast to @server (NULL: the topic; "*": fanout).  Queued while the link is
 * down (outbox_limit).  @args, @context borrowed. */
gboolean vn_rpc_cast(VnRpc *rpc, const char *server, const char *method, json_object *args,
                     const char *version, json_object *context, GError **error);

/* Publishes a notification (priority "INFO" or "ERROR"); @id (> 0) is passed back to the
 * confirmed handler once the broker has it.  @payload borrowed. */
void vn_rpc_notify(VnRpc *rpc, gint64 id, const char *event_type, const char *priority,
                   json_object *payload);

/* Stops consuming requests (graceful shutdown); requests still arriving are requeued. */
void vn_rpc_stop_consuming(VnRpc *rpc);

/* Waits up to @timeout_s until every queued reply and notification is confirmed. */
gboolean vn_rpc_flush(VnRpc *rpc, double timeout_s);

void vn_rpc_get_stats(VnRpc *rpc, VnRpcStats *out);

/* Stops the thread and closes the connection. */
void vn_rpc_free(VnRpc *rpc);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnRpc, vn_rpc_free)
