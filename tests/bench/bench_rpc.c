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
#include <time.h>

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
static int opt_rounds = 5;
static int opt_agent_pid; /* > 0: the agent's CPU time is measured */
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

/* CPU time of every thread of process @pid so far, in seconds (the scheduler's own
 * accounting, in nanoseconds, rather than clock ticks). */
static double process_cpu_s(int pid)
{
    g_autofree char *dir = g_strdup_printf("/proc/%d/task", pid);
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *t;
    double sum = 0;

    if (!d)
        die("cannot read %s: is the agent running?", dir);
    while ((t = g_dir_read_name(d))) {
        g_autofree char *path = g_strdup_printf("%s/%s/schedstat", dir, t);
        g_autofree char *text = NULL;
        if (g_file_get_contents(path, &text, NULL, NULL))
            sum += g_ascii_strtod(text, NULL) / 1e9;
    }
    return sum;
}

static double thread_cpu_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
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
    double server_cpu_us; /* CPU time of the serving side per call: the agent or the echo */
    GArray *lat;          /* the round's latencies in seconds, sorted (owned) */
} Result;

/* The @q quantile of the sorted @v of @n values. */
static double quantile(const double *v, guint n, double q)
{
    return v[MIN(n - 1, (guint)(n * q))];
}

/* Takes @lat, which must outlive the result's use (the pooled tails read it again). */
static Result summarize(GArray *lat, double wall)
{
    Result r = { 0 };

    g_array_sort(lat, cmp_double);
    r.calls_per_s = lat->len / wall;
    r.p50_ms = quantile((double *)lat->data, lat->len, 0.50) * 1000;
    r.p99_ms = quantile((double *)lat->data, lat->len, 0.99) * 1000;
    r.lat = lat;
    return r;
}

/* What each round measures: the agent called by the raw client, the agent called through
 * virtnode's own client library, and the two raw baselines (bench_raw). */
enum { V_AGENT, V_LIBRARY, V_RAW, V_SAME, N_VARIANTS };
static const char *const variant_key[N_VARIANTS] = { "virtnode", "library_client", "raw",
                                                     "raw_same_path" };
static const char *const variant_label[N_VARIANTS] = { "virtnode ping, raw client",
                                                       "virtnode ping, virtnode's client",
                                                       "raw echo (default exchange)",
                                                       "raw echo (the agent's broker path)" };

static double median_of(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The median over the rounds of variant @v's field at @offset. */
static double median_field(const Result *rs, int v, gsize offset)
{
    g_autofree double *x = g_new(double, opt_rounds);

    for (int r = 0; r < opt_rounds; r++)
        x[r] = G_STRUCT_MEMBER(double, &rs[r * N_VARIANTS + v], offset);
    return median_of(x, opt_rounds);
}

/* The median over the rounds of variant @v's figures, each on its own. */
static Result median_result(const Result *rs, int v)
{
    return (Result){ median_field(rs, v, G_STRUCT_OFFSET(Result, calls_per_s)),
                     median_field(rs, v, G_STRUCT_OFFSET(Result, p50_ms)),
                     median_field(rs, v, G_STRUCT_OFFSET(Result, p99_ms)),
                     median_field(rs, v, G_STRUCT_OFFSET(Result, server_cpu_us)), NULL };
}

typedef struct {
    Result med, min, max; /* of the per-round ratios */
} Spread;

/* The ratios @a / @b round by round: their median and range. */
static Spread spread(const Result *rs, int a, int b)
{
    g_autofree double *c = g_new(double, opt_rounds);
    g_autofree double *p50 = g_new(double, opt_rounds);
    g_autofree double *p99 = g_new(double, opt_rounds);
    Spread s;

    for (int r = 0; r < opt_rounds; r++) {
        const Result *x = &rs[r * N_VARIANTS + a], *y = &rs[r * N_VARIANTS + b];
        c[r] = x->calls_per_s / y->calls_per_s;
        p50[r] = x->p50_ms / y->p50_ms;
        p99[r] = x->p99_ms / y->p99_ms;
    }
    s.med = (Result){ median_of(c, opt_rounds), median_of(p50, opt_rounds),
                      median_of(p99, opt_rounds), 0, NULL };
    s.min = (Result){ c[0], p50[0], p99[0], 0, NULL }; /* sorted by median_of */
    s.max = (Result){ c[opt_rounds - 1], p50[opt_rounds - 1], p99[opt_rounds - 1], 0, NULL };
    return s;
}

/* The @q quantile of variant @v's latencies (ms) pooled over the rounds @pick[0..n-1]
 * (a round may be picked more than once). */
static double pooled_quantile(const Result *rs, int v, const int *pick, int n, double q)
{
    g_autoptr(GArray) all = g_array_new(FALSE, FALSE, sizeof(double));

    for (int i = 0; i < n; i++) {
        const GArray *lat = rs[pick[i] * N_VARIANTS + v].lat;
        g_array_append_vals(all, lat->data, lat->len);
    }
    g_array_sort(all, cmp_double);
    return quantile((double *)all->data, all->len, q) * 1000;
}

/* A round's tail is a handful of calls, and a stall of the machine lands on all the
 * clients of a round at once, so a p99 round by round swings more than the difference it
 * should show.  The tails are therefore also taken over every round's calls together,
 * with a 90 % interval for their ratio from resampling whole rounds (each resample keeps
 * the variants of a round together, as they ran interleaved). */
typedef struct {
    double p99[N_VARIANTS]; /* pooled, ms */
    double ratio, lo, hi;   /* pooled p99 of a over b, and its 90 % interval */
} PooledTail;

#define RESAMPLES 400

static PooledTail pooled_tail(const Result *rs, int a, int b)
{
    g_autofree int *all = g_new(int, opt_rounds);
    g_autofree int *pick = g_new(int, opt_rounds);
    double ratios[RESAMPLES];
    g_autoptr(GRand) rng = g_rand_new_with_seed(12345);
    PooledTail t = { 0 };

    for (int r = 0; r < opt_rounds; r++)
        all[r] = r;
    for (int v = 0; v < N_VARIANTS; v++)
        t.p99[v] = pooled_quantile(rs, v, all, opt_rounds, 0.99);
    t.ratio = t.p99[a] / t.p99[b];
    for (int i = 0; i < RESAMPLES; i++) {
        for (int r = 0; r < opt_rounds; r++)
            pick[r] = g_rand_int_range(rng, 0, opt_rounds);
        ratios[i] = pooled_quantile(rs, a, pick, opt_rounds, 0.99) /
                    pooled_quantile(rs, b, pick, opt_rounds, 0.99);
    }
    qsort(ratios, RESAMPLES, sizeof(double), cmp_double);
    t.lo = ratios[RESAMPLES / 20];
    t.hi = ratios[RESAMPLES - 1 - RESAMPLES / 20];
    return t;
}

/* Drops the rounds' latencies (each result holds a reference). */
static void free_rounds(Result *rs)
{
    for (int i = 0; i < opt_rounds * N_VARIANTS; i++)
        g_clear_pointer(&rs[i].lat, g_array_unref);
}

static void append_spread_json(GString *o, const char *key, const Spread *s, const PooledTail *t)
{
    g_string_append_printf(o,
                           ", \"%s\": {\"calls_per_s\": %.3f, \"p50\": %.3f, \"p99\": %.3f, "
                           "\"calls_per_s_range\": [%.3f, %.3f], \"p99_range\": [%.3f, %.3f], "
                           "\"p99_pooled\": %.3f, \"p99_pooled_interval\": [%.3f, %.3f]}",
                           key, s->med.calls_per_s, s->med.p50_ms, s->med.p99_ms,
                           s->min.calls_per_s, s->max.calls_per_s, s->min.p99_ms, s->max.p99_ms,
                           t->ratio, t->lo, t->hi);
}

static void print_spread(const char *label, const Spread *s, const PooledTail *t)
{
    printf("%-38s %10.3f %10.3f %10.3f   (calls/s %.3f-%.3f, p99 %.3f-%.3f)\n", label,
           s->med.calls_per_s, s->med.p50_ms, s->med.p99_ms, s->min.calls_per_s, s->max.calls_per_s,
           s->min.p99_ms, s->max.p99_ms);
    printf("%-38s %32.3f   (90 %% interval %.3f-%.3f)\n", "  p99 over all rounds' calls", t->ratio,
           t->lo, t->hi);
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

/* Reads one message for @conn; frames other than a delivery (the broker's publisher
 * confirms) are read and dropped.  FALSE on a timeout. */
static gboolean raw_next_message(amqp_connection_state_t conn, amqp_envelope_t *env,
                                 struct timeval *tv)
{
    for (;;) {
        amqp_rpc_reply_t r;
        amqp_frame_t f;

        amqp_maybe_release_buffers(conn);
        r = amqp_consume_message(conn, env, tv, 0);
        if (r.reply_type == AMQP_RESPONSE_NORMAL)
            return TRUE;
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            return FALSE;
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            if (amqp_simple_wait_frame(conn, &f) != AMQP_STATUS_OK)
                die("raw librabbitmq: reading a frame failed");
            if (f.frame_type == AMQP_FRAME_METHOD && f.payload.method.id == AMQP_BASIC_ACK_METHOD)
                continue;
            die("raw librabbitmq: unexpected frame (method 0x%08x)", f.payload.method.id);
        }
        check_reply(r, "consume");
    }
}

/* The two raw baselines.  RAW_PLAIN: a transient queue on the default exchange, no
 * confirms, no mandatory flag: the cheapest round trip the broker offers.  RAW_SAME_PATH:
 * the broker path of an oslo call to the agent: the request through the durable topic
 * exchange to a durable queue, the reply published mandatory on a channel in confirm mode
 * (what the agent does), so only the agent's own work differs from the virtnode row. */
typedef enum { RAW_PLAIN, RAW_SAME_PATH } RawKind;

typedef struct {
    const VnAmqpUrl *url;
    RawKind kind;
    char *queue;
    gint stop;
    gint ready;
    guint64 served;
    double cpu_s; /* the echo thread's CPU time while serving */
} EchoServer;

static gpointer echo_server(gpointer data)
{
    EchoServer *s = data;
    amqp_connection_state_t conn = raw_connect(s->url);
    struct timeval tv = { 0, 100 * 1000 };
    gboolean same = s->kind == RAW_SAME_PATH;

    amqp_queue_declare(conn, 1, amqp_cstring_bytes(s->queue), 0, same, 0, 1, amqp_empty_table);
    check_reply(amqp_get_rpc_reply(conn), "queue.declare");
    if (same) {
        amqp_exchange_declare(conn, 1, amqp_cstring_bytes(opt_exchange),
                              amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
        check_reply(amqp_get_rpc_reply(conn), "exchange.declare");
        amqp_queue_bind(conn, 1, amqp_cstring_bytes(s->queue), amqp_cstring_bytes(opt_exchange),
                        amqp_cstring_bytes(s->queue), amqp_empty_table);
        check_reply(amqp_get_rpc_reply(conn), "queue.bind");
        amqp_confirm_select(conn, 1);
        check_reply(amqp_get_rpc_reply(conn), "confirm.select");
    }
    amqp_basic_qos(conn, 1, 0, RAW_PREFETCH, 0);
    amqp_basic_consume(conn, 1, amqp_cstring_bytes(s->queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    check_reply(amqp_get_rpc_reply(conn), "basic.consume");
    double cpu0 = thread_cpu_s();
    g_atomic_int_set(&s->ready, 1);
    while (!g_atomic_int_get(&s->stop)) {
        amqp_envelope_t env;
        amqp_basic_properties_t props;

        if (!raw_next_message(conn, &env, &tv))
            continue;
        props._flags = AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
        props.correlation_id = env.message.properties.correlation_id;
        props.content_type = amqp_cstring_bytes("application/json");
        amqp_basic_publish(conn, 1, amqp_empty_bytes, env.message.properties.reply_to, same, 0,
                           &props, env.message.body);
        amqp_basic_ack(conn, 1, env.delivery_tag, 0);
        amqp_destroy_envelope(&env);
        s->served++;
    }
    s->cpu_s = thread_cpu_s() - cpu0;
    if (same) {
        amqp_queue_delete(conn, 1, amqp_cstring_bytes(s->queue), 0, 0);
        check_reply(amqp_get_rpc_reply(conn), "queue.delete");
    }
    raw_close(conn);
    return NULL;
}

/* A raw librabbitmq client making calls one after another.  To the echo server: a fixed
 * body with a correlation id.  To the agent (@to_agent): a real oslo 2.0 ping per call,
 * encoded before the clock starts, through the agent's topic exchange; its reply is known
 * by its _msg_id, and checked after the clock stops. */
typedef struct {
    const VnAmqpUrl *url;
    const char *exchange;
    const char *routing_key;
    const char *body;  /* the echo: one body for every call */
    gboolean to_agent; /* else the echo server */
    int calls;
    int first;
    GArray *lat;
    double start, end; /* of the first and the last call */
} RawClient;

static char *ping_request(const char *reply_q, int n, char **msg_id)
{
    g_autoptr(VnRpcMessage) m = vn_rpc_message_new();

    m->method = g_strdup("ping");
    m->version = g_strdup("1.0");
    m->args = json_object_new_object();
    json_object_object_add(m->args, "arg", json_object_new_int(n));
    m->unique_id = vn_envelope_new_id();
    m->msg_id = vn_envelope_new_id();
    m->reply_q = g_strdup(reply_q);
    m->context = json_object_new_object();
    json_object_object_add(m->context, "request_id",
                           json_object_new_string("req-00000000-0000-0000-0000-000000000000"));
    if (msg_id)
        *msg_id = g_strdup(m->msg_id);
    return vn_envelope_encode_request(m);
}

static void check_ping_reply(const amqp_bytes_t *body, const char *msg_id, int n)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnRpcReply) r = vn_envelope_decode_reply(body->bytes, body->len, &err);
    json_object *arg;

    if (!r)
        die("the agent's reply does not decode: %s", err->message);
    if (g_strcmp0(r->msg_id, msg_id) != 0 || r->failure_class || !r->result ||
        !json_object_object_get_ex(r->result, "arg", &arg) || json_object_get_int(arg) != n)
        die("the agent's reply is not the answer to ping %d", n);
}

static gpointer raw_client(gpointer data)
{
    RawClient *c = data;
    amqp_connection_state_t conn = raw_connect(c->url);
    g_autofree char *qid = vn_envelope_new_id();
    g_autofree char *name = g_strdup_printf("reply_%s", qid);
    g_autoptr(GPtrArray) bodies = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) ids = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) replies = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
    amqp_bytes_t reply_q = amqp_cstring_bytes(name);

    amqp_queue_declare(conn, 1, reply_q, 0, 0, 1, 1, amqp_empty_table);
    check_reply(amqp_get_rpc_reply(conn), "reply queue.declare");
    amqp_basic_consume(conn, 1, reply_q, amqp_empty_bytes, 0, 1, 1, amqp_empty_table);
    check_reply(amqp_get_rpc_reply(conn), "reply basic.consume");
    for (int i = 0; c->to_agent && i < c->calls; i++) {
        char *id;
        g_ptr_array_add(bodies, ping_request(name, c->first + i, &id));
        g_ptr_array_add(ids, id);
    }
    for (int i = 0; i < c->calls; i++) {
        char corr[32];
        amqp_basic_properties_t props;
        const char *body = c->to_agent ? g_ptr_array_index(bodies, i) : c->body;
        const char *msg_id = c->to_agent ? g_ptr_array_index(ids, i) : NULL;
        double t0 = now_s();

        if (i == 0)
            c->start = t0;
        g_snprintf(corr, sizeof(corr), "%d", i);
        props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG;
        props.content_type = amqp_cstring_bytes("application/json");
        if (!c->to_agent) {
            props._flags |= AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG;
            props.reply_to = reply_q;
            props.correlation_id = amqp_cstring_bytes(corr);
        }
        if (amqp_basic_publish(conn, 1, amqp_cstring_bytes(c->exchange),
                               amqp_cstring_bytes(c->routing_key), 0, 0, &props,
                               amqp_cstring_bytes(body)) != AMQP_STATUS_OK)
            die("raw librabbitmq: publish failed");
        for (;;) {
            amqp_envelope_t env;
            gboolean mine;

            raw_next_message(conn, &env, NULL);
            if (c->to_agent) {
                mine = g_strstr_len(env.message.body.bytes, env.message.body.len, msg_id) != NULL;
                if (mine) {
                    g_array_append_val(c->lat, (double){ now_s() - t0 });
                    /* decoded after the clock stops: the client's own work is not timed */
                    g_ptr_array_add(replies,
                                    g_bytes_new(env.message.body.bytes, env.message.body.len));
                }
            } else {
                mine = env.message.properties.correlation_id.len == strlen(corr) &&
                       memcmp(env.message.properties.correlation_id.bytes, corr, strlen(corr)) == 0;
                if (mine && env.message.body.len != strlen(body))
                    die("raw librabbitmq: the echo is not what was sent");
                if (mine)
                    g_array_append_val(c->lat, (double){ now_s() - t0 });
            }
            amqp_destroy_envelope(&env);
            if (mine)
                break;
        }
    }
    c->end = now_s();
    for (guint i = 0; i < replies->len; i++) {
        gsize len;
        const void *bytes = g_bytes_get_data(g_ptr_array_index(replies, i), &len);
        amqp_bytes_t body = { len, (void *)bytes };
        check_ping_reply(&body, g_ptr_array_index(ids, i), c->first + (int)i);
    }
    raw_close(conn);
    return NULL;
}

/* Runs @clients RawClient threads, each making @calls / @clients calls; the template
 * @proto gives what they call. */
static Result run_raw_clients(const RawClient *proto, int calls, int clients)
{
    g_autoptr(GPtrArray) threads = g_ptr_array_new();
    g_autofree RawClient *cs = g_new0(RawClient, clients);
    GArray *all = g_array_new(FALSE, FALSE, sizeof(double));
    double start = G_MAXDOUBLE, end = 0;

    for (int i = 0; i < clients; i++) {
        cs[i] = *proto;
        cs[i].calls = calls / clients;
        cs[i].first = i * (calls / clients);
        cs[i].lat = g_array_new(FALSE, FALSE, sizeof(double));
        g_ptr_array_add(threads, g_thread_new("raw", raw_client, &cs[i]));
    }
    for (int i = 0; i < clients; i++) {
        g_thread_join(g_ptr_array_index(threads, i));
        g_array_append_vals(all, cs[i].lat->data, cs[i].lat->len);
        g_array_free(cs[i].lat, TRUE);
        start = MIN(start, cs[i].start);
        end = MAX(end, cs[i].end);
    }
    return summarize(all, end - start);
}

static Result bench_raw(const VnAmqpUrl *url, RawKind kind, const char *body, int calls,
                        int clients)
{
    EchoServer server = { .url = url,
                          .kind = kind,
                          .queue = g_strdup_printf("vnbench.echo.%d", (int)getpid()) };
    GThread *st = g_thread_new("echo", echo_server, &server);
    RawClient proto = { .url = url,
                        .exchange = kind == RAW_SAME_PATH ? opt_exchange : "",
                        .routing_key = server.queue,
                        .body = body };
    Result r;

    while (!g_atomic_int_get(&server.ready))
        g_usleep(1000);
    r = run_raw_clients(&proto, calls, clients);
    g_atomic_int_set(&server.stop, 1);
    g_thread_join(st);
    r.server_cpu_us = server.cpu_s * 1e6 / MAX(server.served, 1);
    g_free(server.queue);
    return r;
}

/* The agent, called by the same raw client: only the agent's side differs from the
 * baselines. */
static Result bench_agent_raw(const VnAmqpUrl *url, int calls, int clients)
{
    g_autofree char *key = g_strdup_printf("%s.%s", opt_topic, opt_host);
    RawClient proto = {
        .url = url, .exchange = opt_exchange, .routing_key = key, .to_agent = TRUE
    };

    Result r;
    double cpu0;

    g_array_unref(run_raw_clients(&proto, 5 * clients, clients).lat); /* warm-up */
    cpu0 = opt_agent_pid > 0 ? process_cpu_s(opt_agent_pid) : 0;
    r = run_raw_clients(&proto, calls, clients);
    if (opt_agent_pid > 0)
        r.server_cpu_us = (process_cpu_s(opt_agent_pid) - cpu0) * 1e6 / calls;
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
    GArray *all = g_array_new(FALSE, FALSE, sizeof(double));
    double t0;

    for (int i = 0; i < clients; i++) {
        cs[i] = (PingClient){ client_link(), calls / clients, i * (calls / clients),
                              g_array_new(FALSE, FALSE, sizeof(double)) };
        for (int w = 0; w < 5; w++) /* warm-up: reply queue declared, paths hot */
            ping(cs[i].rpc, -1 - w);
    }
    double cpu0 = opt_agent_pid > 0 ? process_cpu_s(opt_agent_pid) : 0;
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
        double cpu = opt_agent_pid > 0 ? process_cpu_s(opt_agent_pid) - cpu0 : 0;
        Result r = summarize(all, wall);
        r.server_cpu_us = cpu * 1e6 / calls;
        return r;
    }
}

/* ------------------------------------------------------------------ main */

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
        { "agent-pid", 0, 0, G_OPTION_ARG_INT, &opt_agent_pid,
          "The agent's process: its CPU time per call is measured", "PID" },
        { "rounds", 'r', 0, G_OPTION_ARG_INT, &opt_rounds, "Interleaved rounds (5)", "N" },
        { "json", 0, 0, G_OPTION_ARG_NONE, &opt_json, "One JSON line instead of a table", NULL },
        { NULL, 0, 0, 0, NULL, NULL, NULL }
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- ping throughput against raw AMQP");
    g_autoptr(GError) err = NULL;
    g_autoptr(VnAmqpUrl) url = NULL;
    g_autofree char *body = NULL;

    vn_cli_log_init(FALSE);
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err))
        die("%s", err->message);
    if (!opt_host)
        die("--host is required (the agent's [DEFAULT] host)");
    if (opt_clients < 1 || opt_rounds < 1 || opt_calls < opt_clients * opt_rounds)
        die("--calls must be at least --clients times --rounds, and both at least 1");
    url = vn_amqp_url_parse(opt_url, &err);
    if (!url)
        die("%s", err->message);
    if (url->ssl)
        die("the raw baseline speaks plain amqp:// only");
    body = ping_request("reply_0123456789abcdef0123456789abcdef", 123456, NULL);

    /* Rounds interleave the variants, so a drift of the broker or the machine weighs on
     * all of them alike, and each round starts one variant later, so that none always
     * follows the same one (the broker is still closing the previous variant's
     * connections and queues; a pause lets it settle); each figure is the median over
     * the rounds, each ratio the median of the rounds' ratios with their range. */
    int per = opt_calls / opt_rounds;
    g_autofree Result *rs = g_new0(Result, (gsize)opt_rounds * N_VARIANTS);
    for (int r = 0; r < opt_rounds; r++) {
        Result *row = rs + (gsize)r * N_VARIANTS;
        for (int k = 0; k < N_VARIANTS; k++) {
            int v = (r + k) % N_VARIANTS;
            g_usleep(G_USEC_PER_SEC / 2);
            if (v == V_LIBRARY)
                row[v] = bench_ping(per, opt_clients);
            else if (v == V_AGENT && opt_hosts == 0)
                row[v] = bench_agent_raw(url, per, opt_clients);
            else if (v == V_RAW)
                row[v] = bench_raw(url, RAW_PLAIN, body, per, opt_clients);
            else if (v == V_SAME && opt_hosts == 0)
                row[v] = bench_raw(url, RAW_SAME_PATH, body, per, opt_clients);
        }
        if (opt_hosts > 0) { /* a random agent each call: no raw client to it */
            row[V_AGENT] = row[V_LIBRARY];
            row[V_SAME] = row[V_RAW];
            g_array_ref(row[V_AGENT].lat);
            g_array_ref(row[V_SAME].lat);
        }
    }
    Result med[N_VARIANTS];
    Spread ratio = spread(rs, V_AGENT, V_RAW), ratio_same = spread(rs, V_AGENT, V_SAME);
    PooledTail tail = pooled_tail(rs, V_AGENT, V_RAW), tail_same = pooled_tail(rs, V_AGENT, V_SAME);
    for (int v = 0; v < N_VARIANTS; v++)
        med[v] = median_result(rs, v);
    if (opt_json) {
        g_autoptr(GString) o = g_string_new(NULL);
        g_string_append_printf(o,
                               "{\"bench\": \"rpc\", \"calls\": %d, \"clients\": %d, \"rounds\": "
                               "%d, \"message_bytes\": %zu",
                               opt_calls, opt_clients, opt_rounds, strlen(body));
        for (int v = 0; v < N_VARIANTS; v++)
            g_string_append_printf(o,
                                   ", \"%s\": {\"calls_per_s\": %.1f, \"p50_ms\": %.3f, "
                                   "\"p99_ms\": %.3f, \"p99_pooled_ms\": %.3f, "
                                   "\"server_cpu_us\": %.1f}",
                                   variant_key[v], med[v].calls_per_s, med[v].p50_ms, med[v].p99_ms,
                                   tail.p99[v], med[v].server_cpu_us);
        append_spread_json(o, "ratio", &ratio, &tail);
        append_spread_json(o, "ratio_same_path", &ratio_same, &tail_same);
        printf("%s}\n", o->str);
        free_rounds(rs);
        return 0;
    }
    printf("ping calls to virtnoded '%s' vs raw librabbitmq request/reply (%zu-byte messages)\n"
           "%d calls, %d concurrent clients, each on its own connection, %d interleaved "
           "rounds (medians)\n\n",
           opt_host, strlen(body), opt_calls, opt_clients, opt_rounds);
    printf("%-38s %10s %10s %10s %12s %12s\n", "", "calls/s", "p50 ms", "p99 ms", "server CPU",
           "pooled p99");
    for (int v = 0; v < N_VARIANTS; v++) {
        printf("%-38s %10.1f %10.3f %10.3f", variant_label[v], med[v].calls_per_s, med[v].p50_ms,
               med[v].p99_ms);
        if (opt_agent_pid > 0 || v >= V_RAW)
            printf(" %9.1f us", med[v].server_cpu_us);
        else
            printf(" %12s", "");
        printf(" %9.3f ms\n", tail.p99[v]);
    }
    print_spread("ratio virtnode/raw", &ratio, &tail);
    print_spread("ratio virtnode/raw on the same path", &ratio_same, &tail_same);
    free_rounds(rs);
    return 0;
}
