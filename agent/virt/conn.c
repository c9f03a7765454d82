/* agent/virt/conn.c - the shared libvirt connection and libvirt's event loop thread. */
#include <string.h>

#include <libvirt/virterror.h>

#include "agent/virt/conn.h"
#include "agent/virt/virt.h"

/* ------------------------------------------------------------------ event loop */

static GMutex loop_lock;
static int loop_users;
static GThread *loop_thread;
static volatile gint loop_stop;
static int loop_timer = -1;

static void loop_tick(int timer, void *opaque)
{
    (void)timer;
    (void)opaque;
}

static gpointer loop_run(gpointer data)
{
    (void)data;
    while (!g_atomic_int_get(&loop_stop)) {
        if (virEventRunDefaultImpl() < 0)
            g_warning("libvirt: event loop iteration failed: %s", virGetLastErrorMessage());
    }
    return NULL;
}

static void loop_acquire(void)
{
    g_mutex_lock(&loop_lock);
    if (loop_users++ == 0 && !loop_thread) {
        static gsize registered;
        if (g_once_init_enter(&registered)) {
            vn_virt_init();
            virEventRegisterDefaultImpl();
            g_once_init_leave(&registered, 1);
        }
        g_atomic_int_set(&loop_stop, 0);
        /* a periodic timer makes each iteration return, so a stop is noticed */
        loop_timer = virEventAddTimeout(250, loop_tick, NULL, NULL);
        loop_thread = g_thread_new("libvirt-events", loop_run, NULL);
    }
    g_mutex_unlock(&loop_lock);
}

static void loop_release(void)
{
    g_mutex_lock(&loop_lock);
    if (--loop_users == 0 && loop_thread) {
        g_atomic_int_set(&loop_stop, 1);
        g_thread_join(loop_thread);
        loop_thread = NULL;
        if (loop_timer >= 0)
            virEventRemoveTimeout(loop_timer);
        loop_timer = -1;
    }
    g_mutex_unlock(&loop_lock);
}

/* ------------------------------------------------------------------ connection */

struct _VnVirtConn {
    char *uri;
    int ka_interval;
    int ka_count;
    VnVirtHandlers h;

    GMutex lock;
    virConnectPtr conn;
    gboolean broken;
    gboolean outage_logged;
    gboolean was_down; /* closed or unreachable since the last successful open */
    gint64 last_attempt;
    int cb_lifecycle;
    int cb_job;
};

static void on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *opaque)
{
    VnVirtConn *c = opaque;
    char uuid[VIR_UUID_STRING_BUFLEN];

    (void)conn;
    if (c->h.lifecycle && virDomainGetUUIDString(dom, uuid) == 0)
        c->h.lifecycle(uuid, event, detail, c->h.user_data);
}

static void on_job_completed(virConnectPtr conn, virDomainPtr dom, virTypedParameterPtr params,
                             int nparams, void *opaque)
{
    VnVirtConn *c = opaque;
    char uuid[VIR_UUID_STRING_BUFLEN];
    VnJobStats stats;

    (void)conn;
    if (!c->h.job_completed || virDomainGetUUIDString(dom, uuid) != 0)
        return;
    vn_job_stats_from_params(params, nparams, &stats);
    stats.state = VN_JOB_COMPLETED;
    c->h.job_completed(uuid, &stats, c->h.user_data);
}

static void on_close(virConnectPtr conn, int reason, void *opaque)
{
    VnVirtConn *c = opaque;
    static const char *const reasons[] = { "error", "end of file", "keepalive timeout",
                                           "client closed" };

    (void)conn;
    g_mutex_lock(&c->lock);
    c->broken = TRUE;
    c->was_down = TRUE;
    g_mutex_unlock(&c->lock);
    g_warning("libvirt: connection to %s closed (%s)", c->uri,
              reason >= 0 && reason < (int)G_N_ELEMENTS(reasons) ? reasons[reason] : "unknown");
    if (c->h.connection)
        c->h.connection(FALSE, c->h.user_data);
}

/* Drops the current connection; called with the lock held. */
static void drop_locked(VnVirtConn *c)
{
    if (!c->conn)
        return;
    if (c->cb_lifecycle >= 0)
        virConnectDomainEventDeregisterAny(c->conn, c->cb_lifecycle);
    if (c->cb_job >= 0)
        virConnectDomainEventDeregisterAny(c->conn, c->cb_job);
    virConnectUnregisterCloseCallback(c->conn, on_close);
    virResetLastError();
    virConnectClose(c->conn);
    c->conn = NULL;
    c->cb_lifecycle = c->cb_job = -1;
}

static gboolean open_locked(VnVirtConn *c, GError **error)
{
    virConnectPtr conn = virConnectOpen(c->uri);

    if (!conn)
        return vn_virt_error(error, "connecting to %s", c->uri);
    /* local test drivers have no keepalive and no close callback: that is fine */
    if (virConnectSetKeepAlive(conn, c->ka_interval, (unsigned)c->ka_count) < 0)
        virResetLastError();
    if (virConnectRegisterCloseCallback(conn, on_close, c, NULL) < 0)
        virResetLastError();
    c->cb_lifecycle =
        virConnectDomainEventRegisterAny(conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                         VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle), c, NULL);
    c->cb_job =
        virConnectDomainEventRegisterAny(conn, NULL, VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
                                         VIR_DOMAIN_EVENT_CALLBACK(on_job_completed), c, NULL);
    if (c->cb_lifecycle < 0 || c->cb_job < 0)
        virResetLastError();
    c->conn = conn;
    c->broken = FALSE;
    return TRUE;
}

VnVirtConn *vn_virt_conn_new(const char *uri, int keepalive_interval, int keepalive_count,
                             const VnVirtHandlers *handlers)
{
    VnVirtConn *c = g_new0(VnVirtConn, 1);

    loop_acquire();
    c->uri = g_strdup(uri);
    c->ka_interval = keepalive_interval > 0 ? keepalive_interval : 5;
    c->ka_count = keepalive_count > 0 ? keepalive_count : 5;
    if (handlers)
        c->h = *handlers;
    c->cb_lifecycle = c->cb_job = -1;
    g_mutex_init(&c->lock);
    return c;
}

void vn_virt_conn_free(VnVirtConn *c)
{
    if (!c)
        return;
    g_mutex_lock(&c->lock);
    drop_locked(c);
    g_mutex_unlock(&c->lock);
    g_mutex_clear(&c->lock);
    g_free(c->uri);
    g_free(c);
    loop_release();
}

virConnectPtr vn_virt_conn_get(VnVirtConn *c, GError **error)
{
    virConnectPtr out = NULL;
    gboolean restored = FALSE;

    g_mutex_lock(&c->lock);
    if (c->conn && (c->broken || virConnectIsAlive(c->conn) != 1)) {
        virResetLastError();
        drop_locked(c);
    }
    if (!c->conn) {
        gint64 now = g_get_monotonic_time();
        g_autoptr(GError) err = NULL;
        if (c->last_attempt && now - c->last_attempt < G_TIME_SPAN_SECOND) {
            g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_CONNECT,
                        "libvirt at %s is unreachable (retrying)", c->uri);
            g_mutex_unlock(&c->lock);
            return NULL;
        }
        c->last_attempt = now;
        if (!open_locked(c, &err)) {
            if (!c->outage_logged)
                g_warning("libvirt: %s", err->message);
            c->outage_logged = TRUE;
            c->was_down = TRUE;
            g_propagate_error(error, g_steal_pointer(&err));
            g_mutex_unlock(&c->lock);
            return NULL;
        }
        restored = c->was_down;
        c->outage_logged = c->was_down = FALSE;
    }
    out = c->conn;
    virConnectRef(out);
    g_mutex_unlock(&c->lock);
    if (restored) {
        g_message("libvirt: connection to %s restored", c->uri);
        if (c->h.connection)
            c->h.connection(TRUE, c->h.user_data);
    }
    return out;
}

gboolean vn_virt_conn_is_alive(VnVirtConn *c)
{
    gboolean alive;

    g_mutex_lock(&c->lock);
    alive = c->conn && !c->broken && virConnectIsAlive(c->conn) == 1;
    virResetLastError();
    g_mutex_unlock(&c->lock);
    return alive;
}

const char *vn_virt_conn_uri(VnVirtConn *c)
{
    return c->uri;
}
