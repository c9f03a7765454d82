/* storage/runner.c - external programs, argv only, with a time limit (see runner.h). */
#include "storage/runner.h"
#include "storage/stor_error.h"

/* A watchdog thread: cancels @cancel when @deadline passes before the program ends. */
typedef struct {
    GMutex lock;
    GCond cond;
    gboolean done;
    gint64 deadline; /* monotonic */
    GCancellable *cancel;
} Watchdog;

static gpointer watchdog_run(gpointer data)
{
    Watchdog *w = data;

    g_mutex_lock(&w->lock);
    while (!w->done && g_cond_wait_until(&w->cond, &w->lock, w->deadline))
        ;
    if (!w->done)
        g_cancellable_cancel(w->cancel);
    g_mutex_unlock(&w->lock);
    return NULL;
}

static void wait_briefly(GSubprocess *p)
{
    g_autoptr(GCancellable) c = g_cancellable_new();
    Watchdog w = { .deadline = g_get_monotonic_time() + 2 * G_TIME_SPAN_SECOND, .cancel = c };
    GThread *t;

    g_mutex_init(&w.lock);
    g_cond_init(&w.cond);
    t = g_thread_new("run-reaper", watchdog_run, &w);
    g_subprocess_wait(p, c, NULL);
    g_mutex_lock(&w.lock);
    w.done = TRUE;
    g_cond_signal(&w.cond);
    g_mutex_unlock(&w.lock);
    g_thread_join(t);
    g_mutex_clear(&w.lock);
    g_cond_clear(&w.cond);
}

static void forward_cancel(GCancellable *from, gpointer to)
{
    (void)from;
    g_cancellable_cancel(to);
}

gboolean vn_stor_run(const char *const *argv, int timeout_s, GCancellable *cancel, char **out_text,
                     GError **error)
{
    g_autofree char *err = NULL;
    int status = 0;

    if (!vn_stor_run_status(argv, timeout_s, cancel, out_text, &err, &status, error))
        return FALSE;
    if (status != 0) {
        if (out_text)
            g_clear_pointer(out_text, g_free);
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TOOL, "%s %s: %s", argv[0],
                    argv[1] ? argv[1] : "", err && *err ? g_strstrip(err) : "failed");
        return FALSE;
    }
    return TRUE;
}

gboolean vn_stor_run_status(const char *const *argv, int timeout_s, GCancellable *cancel,
                            char **out_text, char **err_text, int *status, GError **error)
{
    g_autoptr(GSubprocess) p = NULL;
    g_autoptr(GCancellable) mine = g_cancellable_new();
    g_autofree char *out = NULL;
    g_autofree char *err = NULL;
    g_autoptr(GError) e = NULL;
    Watchdog w = { .deadline = g_get_monotonic_time() + (gint64)timeout_s * G_TIME_SPAN_SECOND,
                   .cancel = mine };
    gulong handler = 0;
    GThread *t;
    gboolean ok;

    p = g_subprocess_newv(argv, G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_PIPE,
                          &e);
    if (!p) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TOOL, "running %s: %s", argv[0],
                    e->message);
        return FALSE;
    }
    g_mutex_init(&w.lock);
    g_cond_init(&w.cond);
    if (cancel)
        handler = g_cancellable_connect(cancel, G_CALLBACK(forward_cancel), mine, NULL);
    t = g_thread_new("run-watchdog", watchdog_run, &w);
    ok = g_subprocess_communicate_utf8(p, NULL, mine, &out, &err, &e);
    g_mutex_lock(&w.lock);
    w.done = TRUE;
    g_cond_signal(&w.cond);
    g_mutex_unlock(&w.lock);
    g_thread_join(t);
    if (cancel)
        g_cancellable_disconnect(cancel, handler);
    g_mutex_clear(&w.lock);
    g_cond_clear(&w.cond);
    if (!ok) {
        /* killed, and waited for at most 2 s: a program stuck in the kernel (a dead NFS
         * server) dies only when the kernel lets it, and GLib reaps it then */
        g_subprocess_force_exit(p);
        wait_briefly(p);
        if (cancel && g_cancellable_is_cancelled(cancel))
            g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_CANCELLED, "%s %s: cancelled", argv[0],
                        argv[1] ? argv[1] : "");
        else if (g_error_matches(e, G_IO_ERROR, G_IO_ERROR_CANCELLED))
            g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TIMEOUT,
                        "%s %s: no answer within %d s (killed)", argv[0], argv[1] ? argv[1] : "",
                        timeout_s);
        else
            g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TOOL, "%s: %s", argv[0], e->message);
        return FALSE;
    }
    if (!g_subprocess_get_if_exited(p)) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TOOL, "%s %s: killed by signal %d", argv[0],
                    argv[1] ? argv[1] : "", g_subprocess_get_term_sig(p));
        return FALSE;
    }
    *status = g_subprocess_get_exit_status(p);
    if (out_text)
        *out_text = g_steal_pointer(&out);
    if (err_text)
        *err_text = g_steal_pointer(&err);
    return TRUE;
}
