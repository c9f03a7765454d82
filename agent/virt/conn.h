/* agent/virt/conn.h - the agent's one shared libvirt connection.
 *
 * libvirt's default event loop runs in a thread of its own, so keepalives detect a dead
 * libvirtd and domain events arrive.  When libvirtd restarts, the next user of the
 * connection reopens it (at most once a second) and the event callbacks are registered
 * again; the outage and the recovery are logged once each. */
#pragma once

#include <glib.h>
#include <libvirt/libvirt.h>

#include "agent/virt/job.h"

typedef struct _VnVirtConn VnVirtConn;

typedef struct {
    /* a domain lifecycle event (virDomainEventType, detail), in the event thread */
    void (*lifecycle)(const char *uuid, int event, int detail, gpointer user_data);
    /* a job (migration) finished on a domain of this host, in the event thread */
    void (*job_completed)(const char *uuid, const VnJobStats *stats, gpointer user_data);
    /* the connection went down (FALSE) or came back (TRUE) */
    void (*connection)(gboolean up, gpointer user_data);
    gpointer user_data;
} VnVirtHandlers;

VnVirtConn *vn_virt_conn_new(const char *uri, int keepalive_interval, int keepalive_count,
                             const VnVirtHandlers *handlers);
void vn_virt_conn_free(VnVirtConn *c);

/* After it returns, no handler is running or will be called again (the connection itself
 * stays usable): what the handlers reach may then be freed. */
void vn_virt_conn_silence(VnVirtConn *c);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnVirtConn, vn_virt_conn_free)

/* The connection, opened or reopened if needed; the caller owns a reference
 * (g_autoptr(virConnect) or virConnectClose). */
virConnectPtr vn_virt_conn_get(VnVirtConn *c, GError **error);

/* TRUE when the connection is open and libvirtd answers keepalives. */
gboolean vn_virt_conn_is_alive(VnVirtConn *c);

/* The host's security models as read from @conn (vn_host_security_models), when @conn is
 * the connection in use and they were kept for it; NULL otherwise.  A connection made
 * again (libvirtd restarted, perhaps with other security drivers) starts without. */
char **vn_virt_conn_security_models(VnVirtConn *c, virConnectPtr conn);
void vn_virt_conn_keep_security_models(VnVirtConn *c, virConnectPtr conn, char **models);

const char *vn_virt_conn_uri(VnVirtConn *c);
