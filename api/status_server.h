/* api/status_server.h - the HTTP status endpoint (libmicrohttpd): /healthz (the daemon's
 * main loop turns), /readyz (the agent can take work: 200 or 503, with the reasons), /metrics
 * (Prometheus text).  GET and HEAD only; everything else is 404/405. */
#pragma once

#include <glib.h>

typedef struct _VnStatusServer VnStatusServer;

typedef struct {
    /* /healthz: 200 while it returns TRUE (the daemon's main loop turns), else 503; NULL:
     * always 200 */
    gboolean (*healthy)(gpointer user_data);
    /* body of /readyz; *ready decides 200 or 503 */
    char *(*ready)(gpointer user_data, gboolean *ready);
    /* body of /metrics */
    char *(*metrics)(gpointer user_data);
    gpointer user_data;
} VnStatusHandlers;

/* Listens on @listen ("address:port"; port 0 picks one, see vn_status_server_port).  At
 * most 64 connections, 8 per client address, each closed 5 s after its last byte and 10 s
 * after it was accepted, whatever it sends. */
VnStatusServer *vn_status_server_start(const char *listen, const VnStatusHandlers *handlers,
                                       GError **error);
int vn_status_server_port(VnStatusServer *s);
void vn_status_server_stop(VnStatusServer *s);

/* Config check of "address:port". */
gboolean vn_status_listen_check(const char *value, GError **error);
