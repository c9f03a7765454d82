/* api/status_server.c - /healthz, /readyz, /metrics over libmicrohttpd. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "api/error.h"
#include "api/status_server.h"

/* A client may hold this many connections, and no connection lives longer than
 * REQUEST_DEADLINE_S from accept to close, however slowly it sends: 64 slow clients
 * (libmicrohttpd's inactivity timeout restarts with every byte) can no longer keep
 * /healthz from a well-behaved one. */
#define CONNECTIONS_MAX      64
#define CONNECTIONS_PER_IP   8
#define INACTIVITY_TIMEOUT_S 5
#define REQUEST_DEADLINE_S   10
#define ERROR_LOG_EVERY_S    60

typedef struct {
    int fd;
    gint64 deadline; /* monotonic */
} Open;

struct _VnStatusServer {
    /* immutable after start */
    struct MHD_Daemon *daemon;
    VnStatusHandlers h;
    int port;
    GThread *reaper;

    /* under @lock */
    GMutex lock;
    GCond cond;
    gboolean stopping;
    GHashTable *open; /* struct MHD_Connection * -> Open* */
    gint64 log_next;  /* monotonic: the next library message that may be logged */
    guint log_suppressed;
};

/* Called by libmicrohttpd's thread when a connection starts and when it closes (before
 * its socket is closed), so the reaper never touches a closed descriptor. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    VnStatusServer *s = cls;

    (void)socket_context;
    g_mutex_lock(&s->lock);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *i =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        Open *o = g_new0(Open, 1);
        o->fd = i ? i->connect_fd : -1;
        o->deadline = g_get_monotonic_time() + REQUEST_DEADLINE_S * G_TIME_SPAN_SECOND;
        g_hash_table_replace(s->open, conn, o);
    } else {
        g_hash_table_remove(s->open, conn);
    }
    g_mutex_unlock(&s->lock);
}

/* Ends connections past their deadline: shutting the socket down makes the library see
 * the end of the stream and close it in its own thread. */
static gpointer reaper(gpointer data)
{
    VnStatusServer *s = data;

    g_mutex_lock(&s->lock);
    while (!s->stopping) {
        GHashTableIter it;
        gpointer k, v;
        gint64 now = g_get_monotonic_time();
        g_hash_table_iter_init(&it, s->open);
        while (g_hash_table_iter_next(&it, &k, &v)) {
            Open *o = v;
            if (o->fd >= 0 && now >= o->deadline) {
                shutdown(o->fd, SHUT_RDWR);
                o->fd = -1; /* once */
            }
        }
        g_cond_wait_until(&s->cond, &s->lock, now + G_TIME_SPAN_SECOND);
    }
    g_mutex_unlock(&s->lock);
    return NULL;
}

/* The library's own messages (a refused connection, a client gone): one line a minute at
 * most, with a count of those left out, never a flood on stderr. */
static void on_library_message(void *cls, const char *fmt, va_list ap)
{
    VnStatusServer *s = cls;
    gint64 now = g_get_monotonic_time();
    guint suppressed;
    char buf[256];

    g_mutex_lock(&s->lock);
    if (now < s->log_next) {
        s->log_suppressed++;
        g_mutex_unlock(&s->lock);
        return;
    }
    suppressed = s->log_suppressed;
    s->log_suppressed = 0;
    s->log_next = now + ERROR_LOG_EVERY_S * G_TIME_SPAN_SECOND;
    g_mutex_unlock(&s->lock);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    g_strchomp(buf);
    if (suppressed)
        g_warning("status endpoint: %s (and %u similar messages in the last minute)", buf,
                  suppressed);
    else
        g_warning("status endpoint: %s", buf);
}

/* "address:port" with an IPv4 address, "[IPv6]:port", or ":port" (every address, IPv6 and
 * IPv4 when the host has IPv6). */
static gboolean parse_listen(const char *value, struct sockaddr_storage *ss, gboolean *dual,
                             GError **error)
{
    g_autofree char *host = NULL;
    const char *colon = value ? strrchr(value, ':') : NULL;
    char *end = NULL;
    long port;
    struct sockaddr_in *sa = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sa6 = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof(*ss));
    *dual = FALSE;
    if (!colon) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "'%s' is not address:port",
                    value ? value : "");
        return FALSE;
    }
    host = g_strndup(value, colon - value);
    port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 0 || port > 65535) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "'%s': bad port", value);
        return FALSE;
    }
    if (host[0] == '[') {
        gsize n = strlen(host);
        if (n < 3 || host[n - 1] != ']') {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "'%s': bad IPv6 address", value);
            return FALSE;
        }
        host[n - 1] = '\0';
        sa6->sin6_family = AF_INET6;
        sa6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host + 1, &sa6->sin6_addr) != 1) {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "'%s': bad IPv6 address", value);
            return FALSE;
        }
        return TRUE;
    }
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (!*host) {
        *dual = TRUE; /* every address: IPv6 and IPv4 where the host has IPv6 */
        return TRUE;
    }
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                    "'%s': the address must be an IPv4 address or an IPv6 one in brackets", value);
        return FALSE;
    }
    return TRUE;
}

gboolean vn_status_listen_check(const char *value, GError **error)
{
    struct sockaddr_storage ss;
    gboolean dual;

    return !*value || parse_listen(value, &ss, &dual, error);
}

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned code, const char *type,
                               char *body)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    enum MHD_Result ret;

    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

static char *dup_for_mhd(const char *s)
{
    /* MHD frees with free(): hand it malloc'd memory */
    return strdup(s);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_size, void **con_cls)
{
    VnStatusServer *s = cls;

    (void)version;
    (void)upload_data;
    (void)con_cls;
    if (*upload_size)
        return MHD_NO;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return respond(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain",
                       dup_for_mhd("method not allowed\n"));
    if (strcmp(url, "/healthz") == 0) {
        gboolean ok = !s->h.healthy || s->h.healthy(s->h.user_data);
        return respond(conn, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain",
                       dup_for_mhd(ok ? "ok\n" : "the main loop does not answer\n"));
    }
    if (strcmp(url, "/readyz") == 0) {
        gboolean ready = FALSE;
        g_autofree char *body = s->h.ready ? s->h.ready(s->h.user_data, &ready) : g_strdup("{}");
        return respond(conn, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, "application/json",
                       dup_for_mhd(body));
    }
    if (strcmp(url, "/metrics") == 0) {
        g_autofree char *body = s->h.metrics ? s->h.metrics(s->h.user_data) : g_strdup("");
        return respond(conn, MHD_HTTP_OK, "text/plain; version=0.0.4", dup_for_mhd(body));
    }
    return respond(conn, MHD_HTTP_NOT_FOUND, "text/plain", dup_for_mhd("not found\n"));
}

static struct MHD_Daemon *start_daemon(unsigned flags, const struct sockaddr *sa, VnStatusServer *s)
{
    return MHD_start_daemon(
        flags | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL, handle, s,
        MHD_OPTION_EXTERNAL_LOGGER, on_library_message, s, MHD_OPTION_SOCK_ADDR, sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)CONNECTIONS_MAX, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned)CONNECTIONS_PER_IP, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)INACTIVITY_TIMEOUT_S,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_END);
}

VnStatusServer *vn_status_server_start(const char *listen, const VnStatusHandlers *handlers,
                                       GError **error)
{
    struct sockaddr_storage ss;
    gboolean dual = FALSE;
    VnStatusServer *s;
    const union MHD_DaemonInfo *info;

    if (!parse_listen(listen, &ss, &dual, error))
        return NULL;
    s = g_new0(VnStatusServer, 1);
    s->h = *handlers;
    g_mutex_init(&s->lock);
    g_cond_init(&s->cond);
    s->open = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    if (dual) {
        /* every address: IPv6 with IPv4 mapped in; IPv4 alone on a host without IPv6 */
        struct sockaddr_in6 any6 = { .sin6_family = AF_INET6,
                                     .sin6_port = ((struct sockaddr_in *)&ss)->sin_port,
                                     .sin6_addr = IN6ADDR_ANY_INIT };
        s->daemon = start_daemon(MHD_USE_DUAL_STACK, (const struct sockaddr *)&any6, s);
    }
    if (!s->daemon)
        s->daemon = start_daemon(ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0,
                                 (const struct sockaddr *)&ss, s);
    if (!s->daemon) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INTERNAL,
                    "cannot listen on %s for the status endpoint", listen);
        g_hash_table_destroy(s->open);
        g_mutex_clear(&s->lock);
        g_cond_clear(&s->cond);
        g_free(s);
        return NULL;
    }
    info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    s->reaper = g_thread_new("status-reaper", reaper, s);
    return s;
}

int vn_status_server_port(VnStatusServer *s)
{
    return s->port;
}

void vn_status_server_stop(VnStatusServer *s)
{
    if (!s)
        return;
    g_mutex_lock(&s->lock);
    s->stopping = TRUE;
    g_cond_broadcast(&s->cond);
    g_mutex_unlock(&s->lock);
    g_thread_join(s->reaper);
    MHD_stop_daemon(s->daemon);
    g_hash_table_destroy(s->open);
    g_mutex_clear(&s->lock);
    g_cond_clear(&s->cond);
    g_free(s);
}
