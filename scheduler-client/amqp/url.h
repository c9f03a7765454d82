/* scheduler-client/amqp/url.h - broker URLs: amqp://user:password@host:port/vhost and
 * amqps:// for TLS, parsed with librabbitmq's own parser. */
#pragma once

#include <glib.h>

typedef struct {
    char *user;
    char *password;
    char *host;
    int port;
    char *vhost;
    gboolean ssl;
} VnAmqpUrl;

/* Parses @url; errors (VN_SCHED_ERROR_CONFIG) never repeat the password. */
VnAmqpUrl *vn_amqp_url_parse(const char *url, GError **error);
void vn_amqp_url_free(VnAmqpUrl *u);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnAmqpUrl, vn_amqp_url_free)

/* "host:port/vhost" of @u for logs (no credentials).  Caller frees. */
char *vn_amqp_url_display(const VnAmqpUrl *u);

/* Config check of a comma-separated list of broker URLs (used by the daemon's table). */
gboolean vn_amqp_url_list_check(const char *value, GError **error);
