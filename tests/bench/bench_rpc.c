/* tests/bench/bench_rpc.c - ping call throughput and latency through a running virtnoded,
 * next to a raw librabbitmq request/reply round trip on the same broker in the same run.
 *
 *   bench_rpc --url amqp://guest:guest@127.0.0.1:5672/ --host HOST [-n CALLS] [-c CLIENTS]
 *             [--hosts N]
 *
 * With --hosts, each call goes to a random agent of HOST-0000 .. HOST-(N-1) (a simulated
 * cell, tests/bench/bench_cell.py).
 *
 * Each of the CLIENTS threads has its own connection and makes CALLS/CLIENTS calls one
 * after another.  The virtnode side is a real oslo 2.0 ping call (method "ping", version
 * 1.0) answered by the agent; the raw side is a client publishing a message of the same
 * size with reply_to and a correlation id to a queue served by a minimal librabbitmq echo
 * server (one connection, acks, same prefetch as the agent), waiting for the echo.  The
 * ratio row says what the agent's envelope, dispatch and reply path cost over the broker
 * round trip itself. */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/clilog.h"
#include "scheduler-client/amqp/envelope.h"
#include "scheduler-client/amqp/rpc.h"
#include "scheduler-client/amqp/url.h"

#define RAW_PREFETCH 16

static const char *opt_url = "amqp://guest:guest@127.0.0.1:5672/";
static const char *opt_host;
static const char *opt_exchange = "virtnode";
static const char *opt_topic = "compute";
static int opt_calls = 2000;
static int opt_clients = 4;
static int opt_hosts; /* > 0: each call to a random host HOST-0000 .. HOST-(N-1) */
static gboolean opt_json;

static G_NORETURN void die(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "bench_rpc: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static double now_s(void)
{
    return (double)g_get_monotonic_time() / G_USEC_PER_SEC;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

typedef struct {
    double calls_per_s;
    double p50_ms;
    double p99_ms;
} Result;

static Result summarize(GArray *lat, double wall)
{
    Result r = { 0 };

    g_array_sort(lat, cmp_double);
    r.calls_per_s = lat->len / wall;
    r.p50_ms = g_array_index(lat, double, lat->len / 2) * 1000;
    r.p99_ms = g_array_index(lat, double, MIN(lat->len - 1, (guint)(lat->len * 0.99))) * 1000;
    return r;
}

/* ------------------------------------------------------------------ raw librabbitmq */

static void check_reply(amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        die("raw librabbitmq: %s failed (reply type %d)", what, r.reply_type);
}

static amqp_connection_state_t raw_connect(const VnAmqpUrl *u)
{
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);

    if (!sock || amqp_socket_open(sock, u->host, u->port) != AMQP_STATUS_OK)
        die("raw librabbitmq: cannot connect to %s:%d", u->host, u->port);
    check_reply(
        amqp_login(conn, u->vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, u->user, u->password),
        "login");
    amqp_channel_open(conn, 1);
    check_reply(amqp_get_rpc_reply(conn), "channel.open");
    return conn;
}

static void raw_close(amqp_connection_state_t conn)
{
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
}

typedef struct {
    const VnAmqpUrl *url;
    char *queue;
    gint stop;
    gint ready;
} EchoServer;

static gpointer echo_server(gpointer data)
{
    EchoServer *s = data;
    amqp_connection_state_t conn = raw_connect(s->url);
    struct timeval tv = { 0, 100 * 1000 };

    amqp_queue_declare(conn, 1, amqp_cstring_bytes(s->queue), 0, 0, 0, 1, amqp_empty_table);
    check_reply(amqp_get_rpc_reply(conn), "queue.declare");
    amqp_basic_qos(conn, 1, 0, RAW_PREFETCH, 0);
    amqp_basic_consume(conn, 1, amqp_cstring_bytes(s->queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    check_reply(amqp_get_rpc_reply(conn), "basic.consume");
    g_atomic_int_set(&s->ready, 1);
    while (!g_atomic_int_get(&s->stop)) {
        amqp_envelope_t env;
        amqp_rpc_reply_t r;
        amqp_basic_properties_t props;

        amqp_maybe_release_buffers(conn);
        r = amqp_consume_message(conn, &env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            continue;
        check_reply(r, "echo consume");
        props._flags = AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
        props.correlation_id = env.message.properties.correlation_id;
        props.content_type = amqp_cstring_bytes("application/json");
        amqp_basic_publish(conn, 1, amqp_empty_bytes, env.message.properties.reply_to, 0, 0, &props,
                           env.message.body);
        amqp_basic_ack(conn, 1, env.delivery_tag, 0);
        amqp_destroy_envelope(&env);
    }
    raw_close(conn);
    return NULL;
}

typedef struct {
    const VnAmqpUrl *url;
    const char *queue;
    const char *body;
    int calls;
    GArray *lat;
} RawClient;

static gpointer raw_client(gpointer data)
{
    RawClient *c = data;
    amqp_connection_state_t conn = raw_connect(c->url);
    amqp_queue_declare_ok_t *q =
        amqp_queue_declare(conn, 1, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
    amqp_bytes_t reply_q;

    check_reply(amqp_get_rpc_reply(conn), "reply queue.declare");
    reply_q = amqp_bytes_malloc_dup(q->queue);
    amqp_basic_consume(conn, 1, reply_q, amqp_empty_bytes, 0, 1, 1, amqp_empty_table);
    check_reply(amqp_get_rpc_reply(conn), "reply basic.consume");
    for (int i = 0; i < c->calls; i++) {
        char corr[32];
        amqp_basic_properties_t props;
        double t0 = now_s();

        g_snprintf(corr, sizeof(corr), "%d", i);
        props._flags = AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
                       AMQP_BASIC_CONTENT_TYPE_FLAG;
        props.reply_to = reply_q;
        props.correlation_id = amqp_cstring_bytes(corr);
        props.content_type = amqp_cstring_bytes("application/json");
        if (amqp_basic_publish(conn, 1, amqp_empty_bytes, amqp_cstring_bytes(c->queue), 0, 0,
                               &props, amqp_cstring_bytes(c->body)) != AMQP_STATUS_OK)
            die("raw librabbitmq: publish failed");
        for (;;) {
            amqp_envelope_t env;
            gboolean mine;

            amqp_maybe_release_buffers(conn);
            check_reply(amqp_consume_message(conn, &env, NULL, 0), "reply consume");
            mine = env.message.properties.correlation_id.len == strlen(corr) &&
                   memcmp(env.message.properties.correlation_id.bytes, corr, strlen(corr)) == 0;
            if (mine && env.message.body.len != strlen(c->body))
                die("raw librabbitmq: the echo is not what was sent");
            amqp_destroy_envelope(&env);
            if (mine)
                break;
        }
        g_array_append_val(c->lat, (double){ now_s() - t0 });
    }
    amqp_bytes_free(reply_q);
    raw_close(conn);
    return NULL;
}

static Result bench_raw(const VnAmqpUrl *url, const char *body, int calls, int clients)
{
    EchoServer server = { url, g_strdup_printf("vnbench.echo.%d", (int)getpid()), 0, 0 };
    GThread *st = g_thread_new("echo", echo_server, &server);
    g_autoptr(GPtrArray) threads = g_ptr_array_new();
    g_autofree RawClient *cs = g_new0(RawClient, clients);
    g_autoptr(GArray) all = g_array_new(FALSE, FALSE, sizeof(double));
    double t0;
    Result r;

    while (!g_atomic_int_get(&server.ready))
        g_usleep(1000);
    t0 = now_s();
    for (int i = 0; i < clients; i++) {
        cs[i] = (RawClient){ url, server.queue, body, calls / clients,
                             g_array_new(FALSE, FALSE, sizeof(double)) };
        g_ptr_array_add(threads, g_thread_new("raw", raw_client, &cs[i]));
    }
    for (int i = 0; i < clients; i++) {
        g_thread_join(g_ptr_array_index(threads, i));
        g_array_append_vals(all, cs[i].lat->data, cs[i].lat->len);
        g_array_free(cs[i].lat, TRUE);
    }
    r = summarize(all, now_s() - t0);
    g_atomic_int_set(&server.stop, 1);
    g_thread_join(st);
    g_free(server.queue);
    return r;
}

/* ------------------------------------------------------------------ virtnode ping */

typedef struct {
    VnRpc *rpc;
    int calls;
    int first;
    GArray *lat;
} PingClient;

static VnRpc *client_link(void)
{
    g_autoptr(GError) err = NULL;
    char *urls[] = { (char *)opt_url, NULL };
    VnRpcConfig rc = { 0 };
    VnRpc *rpc;

    rc.urls = urls;
    rc.exchange = opt_exchange;
    rc.topic = opt_topic;
    rc.connection_name = "bench_rpc";
    rc.durable = TRUE; /* the exchange as the agents declare it by default (durable_queues) */
    rc.heartbeat = 30;
    rc.connect_timeout = 5;
    rc.reconnect_min = 1;
    rc.reconnect_max = 5;
    rc.reply_timeout = 10;
    rc.max_message_bytes = 1 << 20;
    rpc = vn_rpc_new(&rc, NULL, &err);
    if (!rpc)
        die("%s", err->message);
    vn_rpc_start(rpc);
    if (!vn_rpc_wait_connected(rpc, 15))
        die("cannot reach the broker at %s", opt_url);
    return rpc;
}

static void ping(VnRpc *rpc, int n)
{
    g_autoptr(json_object) args = json_object_new_object();
    g_autoptr(json_object) res = NULL;
    g_autoptr(GError) err = NULL;
    json_object *arg;

    g_autofree char *host =
        opt_hosts > 0 ? g_strdup_printf("%s-%04d", opt_host, g_random_int_range(0, opt_hosts))
                      : g_strdup(opt_host);

    json_object_object_add(args, "arg", json_object_new_int(n));
    if (!vn_rpc_call(rpc, host, "ping", args, "1.0", NULL, 30, 0, &res, &err))
        die("ping %s: %s", host, err->message);
    if (!json_object_object_get_ex(res, "arg", &arg) || json_object_get_int(arg) != n)
        die("ping %s: the reply does not carry the argument back", host);
}

static gpointer ping_client(gpointer data)
{
    PingClient *c = data;

    for (int i = 0; i < c->calls; i++) {
        double t0 = now_s();
        ping(c->rpc, c->first + i);
        g_array_append_val(c->lat, (double){ now_s() - t0 });
    }
    return NULL;
}

static Result bench_ping(int calls, int clients)
{
    g_autoptr(GPtrArray) threads = g_ptr_array_new();
    g_autofree PingClient *cs = g_new0(PingClient, clients);
    g_autoptr(GArray) all = g_array_new(FALSE, FALSE, sizeof(double));
    double t0;

    for (int i = 0; i < clients; i++) {
        cs[i] = (PingClient){ client_link(), calls / clients, i * (calls / clients),
                              g_array_new(FALSE, FALSE, sizeof(double)) };
        for (int w = 0; w < 20; w++) /* warm-up: reply queue declared, paths hot */
            ping(cs[i].rpc, -1 - w);
    }
    t0 = now_s();
    for (int i = 0; i < clients; i++)
        g_ptr_array_add(threads, g_thread_new("ping", ping_client, &cs[i]));
    for (int i = 0; i < clients; i++)
        g_thread_join(g_ptr_array_index(threads, i));
    {
        double wall = now_s() - t0;
        for (int i = 0; i < clients; i++) {
            g_array_append_vals(all, cs[i].lat->data, cs[i].lat->len);
            g_array_free(cs[i].lat, TRUE);
            vn_rpc_free(cs[i].rpc);
        }
        return summarize(all, wall);
    }
}

/* ------------------------------------------------------------------ main */

static char *ping_body(void)
{
    g_autoptr(VnRpcMessage) m = vn_rpc_message_new();

    m->method = g_strdup("ping");
    m->version = g_strdup("1.0");
    m->args = json_object_new_object();
    json_object_object_add(m->args, "arg", json_object_new_int(123456));
    m->unique_id = vn_envelope_new_id();
    m->msg_id = vn_envelope_new_id();
    m->reply_q = g_strdup_printf("reply_%s", m->msg_id);
    m->context = json_object_new_object();
    json_object_object_add(m->context, "request_id",
                           json_object_new_string("req-00000000-0000-0000-0000-000000000000"));
    return vn_envelope_encode_request(m);
}

int main(int argc, char **argv)
{
    GOptionEntry entries[] = {
        { "url", 0, 0, G_OPTION_ARG_STRING, &opt_url, "Broker URL", "URL" },
        { "host", 0, 0, G_OPTION_ARG_STRING, &opt_host, "The agent's host name", "HOST" },
        { "exchange", 0, 0, G_OPTION_ARG_STRING, &opt_exchange, "control_exchange", "NAME" },
        { "topic", 0, 0, G_OPTION_ARG_STRING, &opt_topic, "Topic", "NAME" },
        { "calls", 'n', 0, G_OPTION_ARG_INT, &opt_calls, "Calls in total (2000)", "N" },
        { "clients", 'c', 0, G_OPTION_ARG_INT, &opt_clients, "Concurrent clients (4)", "N" },
        { "hosts", 0, 0, G_OPTION_ARG_INT, &opt_hosts,
          "Call a random host of HOST-0000 .. HOST-(N-1) each time", "N" },
        { "json", 0, 0, G_OPTION_ARG_NONE, &opt_json, "One JSON line instead of a table", NULL },
        { NULL, 0, 0, 0, NULL, NULL, NULL }
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- ping throughput against raw AMQP");
    g_autoptr(GError) err = NULL;
    g_autoptr(VnAmqpUrl) url = NULL;
    g_autofree char *body = NULL;
    Result v, raw;

    vn_cli_log_init(FALSE);
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err))
        die("%s", err->message);
    if (!opt_host)
        die("--host is required (the agent's [DEFAULT] host)");
    if (opt_clients < 1 || opt_calls < opt_clients)
        die("--calls must be at least --clients, and --clients at least 1");
    url = vn_amqp_url_parse(opt_url, &err);
    if (!url)
        die("%s", err->message);
    if (url->ssl)
        die("the raw baseline speaks plain amqp:// only");
    body = ping_body();

    v = bench_ping(opt_calls, opt_clients);
    raw = bench_raw(url, body, opt_calls, opt_clients);
    if (opt_json) {
        printf("{\"bench\": \"rpc\", \"calls\": %d, \"clients\": %d, \"message_bytes\": %zu, "
               "\"virtnode\": {\"calls_per_s\": %.1f, \"p50_ms\": %.3f, \"p99_ms\": %.3f}, "
               "\"raw\": {\"calls_per_s\": %.1f, \"p50_ms\": %.3f, \"p99_ms\": %.3f}, "
               "\"ratio\": {\"calls_per_s\": %.3f, \"p50\": %.3f, \"p99\": %.3f}}\n",
               opt_calls, opt_clients, strlen(body), v.calls_per_s, v.p50_ms, v.p99_ms,
               raw.calls_per_s, raw.p50_ms, raw.p99_ms, v.calls_per_s / raw.calls_per_s,
               v.p50_ms / raw.p50_ms, v.p99_ms / raw.p99_ms);
        return 0;
    }
    printf("ping calls to virtnoded '%s' vs raw librabbitmq request/reply (%zu-byte messages)\n"
           "%d calls, %d concurrent clients, each on its own connection\n\n",
           opt_host, strlen(body), opt_calls, opt_clients);
    printf("%-24s %10s %10s %10s\n", "", "calls/s", "p50 ms", "p99 ms");
    printf("%-24s %10.1f %10.3f %10.3f\n", "virtnode ping (oslo 2.0)", v.calls_per_s, v.p50_ms,
           v.p99_ms);
    printf("%-24s %10.1f %10.3f %10.3f\n", "raw librabbitmq", raw.calls_per_s, raw.p50_ms,
           raw.p99_ms);
    printf("%-24s %10.3f %10.3f %10.3f\n", "ratio virtnode/raw", v.calls_per_s / raw.calls_per_s,
           v.p50_ms / raw.p50_ms, v.p99_ms / raw.p99_ms);
    return 0;
}
