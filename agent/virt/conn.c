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
    /* immutable after vn_virt_conn_new */
    char *uri;
    int ka_interval;
    int ka_count;
    VnVirtHandlers h;

    /* under @lock, which is never held across a call that talks to libvirtd: opening,
     * registering and closing happen outside it, so a hung libvirtd cannot stall a thread
     * that only asks whether the connection is alive (the main loop, /readyz) */
    GMutex lock;
    GCond cond;         /* signalled when an attempt to connect ends */
    virConnectPtr conn; /* the connection in use (a reference), or NULL */
    int cb_lifecycle;   /* @conn's callback ids */
    int cb_job;
    gboolean connecting; /* one thread is opening a connection */
    gboolean broken;     /* the close callback fired for @conn */
    gboolean outage_logged;
    gboolean was_down; /* closed or unreachable since the last successful open */
    gint64 last_attempt;
    char **security_models; /* read from @conn once, dropped with it (NULL: not yet) */

    /* the handlers run under the read side; vn_virt_conn_silence takes the write side */
    GRWLock handlers_lock;
    gboolean silenced; /* under @handlers_lock */
};

/* Runs in libvirt's event thread: calls into the agent only while not silenced. */
static gboolean handlers_enter(VnVirtConn *c)
{
    g_rw_lock_reader_lock(&c->handlers_lock);
    if (!c->silenced)
        return TRUE;
    g_rw_lock_reader_unlock(&c->handlers_lock);
    return FALSE;
}

static void handlers_leave(VnVirtConn *c)
{
    g_rw_lock_reader_unlock(&c->handlers_lock);
}

void vn_virt_conn_silence(VnVirtConn *c)
{
    g_rw_lock_writer_lock(&c->handlers_lock);
    c->silenced = TRUE;
    g_rw_lock_writer_unlock(&c->handlers_lock);
}

/* A connection taken out of use with its callback ids, to be closed outside the lock. */
typedef struct {
    virConnectPtr conn;
    int cb_lifecycle;
    int cb_job;
} Held;

static void on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *opaque)
{
    VnVirtConn *c = opaque;
    char uuid[VIR_UUID_STRING_BUFLEN];

    (void)conn;
    if (!c->h.lifecycle || virDomainGetUUIDString(dom, uuid) != 0 || !handlers_enter(c))
        return;
    c->h.lifecycle(uuid, event, detail, c->h.user_data);
    handlers_leave(c);
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
    if (!handlers_enter(c))
        return;
    c->h.job_completed(uuid, &stats, c->h.user_data);
    handlers_leave(c);
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
    if (c->h.connection && handlers_enter(c)) {
        c->h.connection(FALSE, c->h.user_data);
        handlers_leave(c);
    }
}

/* Takes the connection out of use; with the lock held.  close_held() finishes. */
static Held take_locked(VnVirtConn *c)
{
    Held h = { c->conn, c->cb_lifecycle, c->cb_job };

    c->conn = NULL;
    g_clear_pointer(&c->security_models, g_strfreev);
    c->cb_lifecycle = c->cb_job = -1;
    return h;
}

/* Deregisters and closes a connection taken out of use; it talks to libvirtd, so never
 * with the lock held. */
static void close_held(Held *h)
{
    if (!h->conn)
        return;
    if (h->cb_lifecycle >= 0)
        virConnectDomainEventDeregisterAny(h->conn, h->cb_lifecycle);
    if (h->cb_job >= 0)
        virConnectDomainEventDeregisterAny(h->conn, h->cb_job);
    virConnectUnregisterCloseCallback(h->conn, on_close);
    virResetLastError();
    virConnectClose(h->conn);
    h->conn = NULL;
}

/* Opens a connection with its keepalive and callbacks; outside the lock. */
static Held open_conn(VnVirtConn *c, GError **error)
{
    Held h = { virConnectOpen(c->uri), -1, -1 };

    if (!h.conn) {
        vn_virt_error(error, "connecting to %s", c->uri);
        return h;
    }
    /* local test drivers have no keepalive and no close callback: that is fine */
    if (virConnectSetKeepAlive(h.conn, c->ka_interval, (unsigned)c->ka_count) < 0)
        virResetLastError();
    if (virConnectRegisterCloseCallback(h.conn, on_close, c, NULL) < 0)
        virResetLastError();
    h.cb_lifecycle =
        virConnectDomainEventRegisterAny(h.conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                         VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle), c, NULL);
    h.cb_job =
        virConnectDomainEventRegisterAny(h.conn, NULL, VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
                                         VIR_DOMAIN_EVENT_CALLBACK(on_job_completed), c, NULL);
    if (h.cb_lifecycle < 0 || h.cb_job < 0)
        virResetLastError();
    return h;
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
    g_cond_init(&c->cond);
    g_rw_lock_init(&c->handlers_lock);
    return c;
}

void vn_virt_conn_free(VnVirtConn *c)
{
    Held h;

    if (!c)
        return;
    g_mutex_lock(&c->lock);
    while (c->connecting)
        g_cond_wait(&c->cond, &c->lock);
    h = take_locked(c);
    g_mutex_unlock(&c->lock);
    close_held(&h);
    g_mutex_clear(&c->lock);
    g_cond_clear(&c->cond);
    g_rw_lock_clear(&c->handlers_lock);
    g_free(c->uri);
    g_free(c);
    loop_release();
}

virConnectPtr vn_virt_conn_get(VnVirtConn *c, GError **error)
{
    g_autoptr(GError) err = NULL;
    Held stale = { NULL, -1, -1 };
    Held fresh;
    virConnectPtr out = NULL;
    gboolean restored;

    g_mutex_lock(&c->lock);
    /* one thread connects; the others wait for its outcome rather than pile up */
    while (c->connecting)
        g_cond_wait(&c->cond, &c->lock);
    if (c->conn && (c->broken || virConnectIsAlive(c->conn) != 1)) {
        virResetLastError();
        stale = take_locked(c);
    }
    if (c->conn) {
        out = c->conn;
        virConnectRef(out);
        g_mutex_unlock(&c->lock);
        return out;
    }
    gint64 now = g_get_monotonic_time();
    if (c->last_attempt && now - c->last_attempt < G_TIME_SPAN_SECOND) {
        g_mutex_unlock(&c->lock);
        close_held(&stale);
        g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_CONNECT,
                    "libvirt at %s is unreachable (retrying)", c->uri);
        return NULL;
    }
    c->last_attempt = now;
    c->connecting = TRUE;
    g_mutex_unlock(&c->lock);

    close_held(&stale);
    fresh = open_conn(c, &err);

    g_mutex_lock(&c->lock);
    c->connecting = FALSE;
    g_cond_broadcast(&c->cond);
    if (!fresh.conn) {
        gboolean log = !c->outage_logged;
        c->outage_logged = c->was_down = TRUE;
        g_mutex_unlock(&c->lock);
        if (log)
            g_warning("libvirt: %s", err->message);
        g_propagate_error(error, g_steal_pointer(&err));
        return NULL;
    }
    c->conn = fresh.conn;
    c->cb_lifecycle = fresh.cb_lifecycle;
    c->cb_job = fresh.cb_job;
    c->broken = FALSE;
    restored = c->was_down;
    c->outage_logged = c->was_down = FALSE;
    out = c->conn;
    virConnectRef(out);
    g_mutex_unlock(&c->lock);
    if (restored) {
        g_message("libvirt: connection to %s restored", c->uri);
        if (c->h.connection && handlers_enter(c)) {
            c->h.connection(TRUE, c->h.user_data);
            handlers_leave(c);
        }
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

char **vn_virt_conn_security_models(VnVirtConn *c, virConnectPtr conn)
{
    char **out = NULL;

    g_mutex_lock(&c->lock);
    if (conn == c->conn && c->security_models)
        out = g_strdupv(c->security_models);
    g_mutex_unlock(&c->lock);
    return out;
}

void vn_virt_conn_keep_security_models(VnVirtConn *c, virConnectPtr conn, char **models)
{
    g_mutex_lock(&c->lock);
    if (conn == c->conn) { /* still the connection in use: they were read from it */
        g_strfreev(c->security_models);
        c->security_models = g_strdupv(models);
    }
    g_mutex_unlock(&c->lock);
}

const char *vn_virt_conn_uri(VnVirtConn *c)
{
    return c->uri;
}
