/* scheduler-client/amqp/url.c - broker URLs (see url.h). */
#include <string.h>

#include <amqp.h>

#include "scheduler-client/amqp/url.h"
#include "scheduler-client/sched_error.h"

VnAmqpUrl *vn_amqp_url_parse(const char *url, GError **error)
{
    g_autofree char *copy = g_strdup(url);
    struct amqp_connection_info info;
    VnAmqpUrl *u;
    const char *at = strrchr(url, '@');
    const char *shown = at ? at + 1 : (strstr(url, "://") ? strstr(url, "://") + 3 : url);

    if (!g_str_has_prefix(url, "amqp://") && !g_str_has_prefix(url, "amqps://")) {
        g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONFIG,
                    "broker URL '...%s' must start with amqp:// or amqps://", shown);
        return NULL;
    }
    amqp_default_connection_info(&info);
    if (amqp_parse_url(copy, &info) != AMQP_STATUS_OK || !info.host || !*info.host ||
        info.port <= 0 || info.port > 65535) {
        g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_CONFIG,
                    "broker URL '...%s' is not of the form amqp://user:password@host:port/vhost",
                    shown);
        return NULL;
    }
    u = g_new0(VnAmqpUrl, 1);
    u->user = g_strdup(info.user);
    u->password = g_strdup(info.password);
    u->host = g_strdup(info.host);
    u->port = info.port;
    u->vhost = g_strdup(info.vhost && *info.vhost ? info.vhost : "/");
    u->ssl = info.ssl != 0;
    return u;
}

void vn_amqp_url_free(VnAmqpUrl *u)
{
    if (!u)
        return;
    g_free(u->user);
    if (u->password)
        memset(u->password, 0, strlen(u->password));
    g_free(u->password);
    g_free(u->host);
    g_free(u->vhost);
    g_free(u);
}

char *vn_amqp_url_display(const VnAmqpUrl *u)
{
    return g_strdup_printf("%s://%s:%d%s%s", u->ssl ? "amqps" : "amqp", u->host, u->port,
                           u->vhost[0] == '/' ? "" : "/", u->vhost);
}

gboolean vn_amqp_url_list_check(const char *value, GError **error)
{
    g_auto(GStrv) parts = g_strsplit(value, ",", -1);

    for (char **p = parts; *p; p++) {
        g_strstrip(*p);
        if (!**p)
            continue;
        g_autoptr(VnAmqpUrl) u = vn_amqp_url_parse(*p, error);
        if (!u)
            return FALSE;
    }
    return TRUE;
}
