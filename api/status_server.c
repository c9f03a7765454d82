/* api/status_server.c - /healthz, /readyz, /metrics over libmicrohttpd. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "api/error.h"
#include "api/status_server.h"

struct _VnStatusServer {
    struct MHD_Daemon *daemon;
    VnStatusHandlers h;
    int port;
};

static gboolean parse_listen(const char *value, struct sockaddr_in *sa, GError **error)
{
    g_autofree char *host = NULL;
    const char *colon = value ? strrchr(value, ':') : NULL;
    char *end = NULL;
    long port;

    memset(sa, 0, sizeof(*sa));
    if (!colon) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "'%s' is not address:port",
                    value ? value : "");
        return FALSE;
    }
    host = g_strndup(value, colon - value);
    port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "'%s': bad port", value);
        return FALSE;
    }
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, *host ? host : "0.0.0.0", &sa->sin_addr) != 1) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                    "'%s': the address must be an IPv4 address", value);
        return FALSE;
    }
    return TRUE;
}

gboolean vn_status_listen_check(const char *value, GError **error)
{
    struct sockaddr_in sa;

    return !*value || parse_listen(value, &sa, error);
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
    if (strcmp(url, "/healthz") == 0)
        return respond(conn, MHD_HTTP_OK, "text/plain", dup_for_mhd("ok\n"));
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

VnStatusServer *vn_status_server_start(const char *listen, const VnStatusHandlers *handlers,
                                       GError **error)
{
    struct sockaddr_in sa;
    VnStatusServer *s;
    const union MHD_DaemonInfo *info;

    if (!parse_listen(listen, &sa, error))
        return NULL;
    s = g_new0(VnStatusServer, 1);
    s->h = *handlers;
    s->daemon =
        MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL, handle,
                         s, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (!s->daemon) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INTERNAL,
                    "cannot listen on %s for the status endpoint", listen);
        g_free(s);
        return NULL;
    }
    info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : ntohs(sa.sin_port);
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
    MHD_stop_daemon(s->daemon);
    g_free(s);
}
