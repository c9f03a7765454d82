/* tests/unit/testutil.c - see testutil.h. */
#include <errno.h>
#include <string.h>
#include <stdlib.h>

#include <glib/gstdio.h>

#include "tests/unit/testutil.h"
#include "storage/disk.h"

char *vn_test_tmpdir(void)
{
    g_autoptr(GError) err = NULL;
    char *d = g_dir_make_tmp("vntest-XXXXXX", &err);

    assert_non_null(d);
    g_chmod(d, 0755);
    return d;
}

void vn_test_rmtree(const char *dir)
{
    if (dir)
        vn_disk_remove_tree(dir, NULL);
}

void vn_test_write(const char *path, const void *data, gsize len)
{
    g_autoptr(GError) err = NULL;

    if (!g_file_set_contents(path, data, (gssize)len, &err))
        fail_msg("writing %s: %s", path, err->message);
}

char *vn_test_sha256_file(const char *path)
{
    g_autofree char *data = NULL;
    gsize len = 0;

    assert_true(g_file_get_contents(path, &data, &len, NULL));
    return g_compute_checksum_for_data(G_CHECKSUM_SHA256, (const guchar *)data, len);
}

int vn_test_failing_flush(int fd)
{
    (void)fd;
    errno = EIO;
    return -1;
}

gboolean vn_test_run(const char *cmdline)
{
    int status = 0;

    if (!g_spawn_command_line_sync(cmdline, NULL, NULL, &status, NULL))
        return FALSE;
    return g_spawn_check_wait_status(status, NULL);
}

char *vn_test_source_path(const char *rel)
{
    const char *src = g_getenv("VN_SOURCE_DIR");

    return g_build_filename(src ? src : ".", rel, NULL);
}

/* ------------------------------------------------------------------ HTTP server */

struct _VnTestHttp {
    GSocketService *service;
    GThread *thread;
    GMainContext *ctx;
    GMainLoop *loop;
    char *root;
    int port;
    int delay_ms;
    GMutex lock;
    GHashTable *counts;
    guint64 bytes;     /* body bytes sent, under @lock */
    guint active;      /* requests being served, under @lock */
    gboolean stopping; /* under @lock */
    GCond idle;        /* signalled when @active drops */
};

static gboolean stopping(VnTestHttp *h)
{
    gboolean s;

    g_mutex_lock(&h->lock);
    s = h->stopping;
    g_mutex_unlock(&h->lock);
    return s;
}

static void serve(VnTestHttp *h, GSocketConnection *conn);

/* Counts the request while it is served: vn_test_http_stop waits for none to be left. */
static gboolean handle(GThreadedSocketService *svc, GSocketConnection *conn, GObject *src,
                       gpointer data)
{
    VnTestHttp *h = data;

    (void)svc;
    (void)src;
    g_mutex_lock(&h->lock);
    if (h->stopping) {
        g_mutex_unlock(&h->lock);
        return TRUE;
    }
    h->active++;
    g_mutex_unlock(&h->lock);
    serve(h, conn);
    g_mutex_lock(&h->lock);
    h->active--;
    g_cond_broadcast(&h->idle);
    g_mutex_unlock(&h->lock);
    return TRUE;
}

static void serve(VnTestHttp *h, GSocketConnection *conn)
{
    GInputStream *in = g_io_stream_get_input_stream(G_IO_STREAM(conn));
    GOutputStream *out = g_io_stream_get_output_stream(G_IO_STREAM(conn));
    g_autoptr(GDataInputStream) din = g_data_input_stream_new(in);
    g_autofree char *line = g_data_input_stream_read_line(din, NULL, NULL, NULL);
    g_autofree char *path = NULL;
    g_autofree char *file = NULL;
    g_autofree char *body = NULL;
    gsize len = 0;

    if (!line)
        return;
    for (;;) { /* the rest of the request head */
        g_autofree char *hdr = g_data_input_stream_read_line(din, NULL, NULL, NULL);
        if (!hdr || !*hdr || strcmp(hdr, "\r") == 0)
            break;
    }
    g_auto(GStrv) parts = g_strsplit(line, " ", 3);
    if (g_strv_length(parts) < 2)
        return;
    path = g_strdup(parts[1]);
    g_mutex_lock(&h->lock);
    g_hash_table_replace(
        h->counts, g_strdup(path),
        GUINT_TO_POINTER(GPOINTER_TO_UINT(g_hash_table_lookup(h->counts, path)) + 1));
    g_mutex_unlock(&h->lock);
    if (h->delay_ms)
        g_usleep((gulong)h->delay_ms * 1000);
    /* /trickle/<file>: one byte per 100 ms; /drop/<file>: half the body, then close */
    gboolean trickle = g_str_has_prefix(path, "/trickle/");
    gboolean drop = g_str_has_prefix(path, "/drop/");
    const char *name = trickle ? path + 8 : drop ? path + 5 : path;
    file = g_build_filename(h->root, name, NULL);
    if (strstr(path, "..") || !g_file_get_contents(file, &body, &len, NULL)) {
        const char *nf = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        g_output_stream_write_all(out, nf, strlen(nf), NULL, NULL, NULL);
        return;
    }
    g_autofree char *head = g_strdup_printf(
        "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nContent-Type: application/octet-stream\r\n"
        "Connection: close\r\n\r\n",
        len);
    g_output_stream_write_all(out, head, strlen(head), NULL, NULL, NULL);
    if (trickle) {
        for (gsize i = 0; i < len && i < 300 && !stopping(h); i++) { /* at most 30 s */
            if (!g_output_stream_write_all(out, body + i, 1, NULL, NULL, NULL) ||
                !g_output_stream_flush(out, NULL, NULL))
                break;
            g_mutex_lock(&h->lock);
            h->bytes++;
            g_mutex_unlock(&h->lock);
            g_usleep(100 * 1000);
        }
        return;
    }
    gsize n = drop ? len / 2 : len;
    gsize sent = 0;
    g_output_stream_write_all(out, body, n, &sent, NULL, NULL);
    g_mutex_lock(&h->lock);
    h->bytes += sent;
    g_mutex_unlock(&h->lock);
    return;
}

guint64 vn_test_http_bytes(VnTestHttp *h)
{
    guint64 n;

    g_mutex_lock(&h->lock);
    n = h->bytes;
    g_mutex_unlock(&h->lock);
    return n;
}

/* The service accepts in a main loop of its own thread: the test's thread blocks in the
 * code under test. */
static gpointer http_thread(gpointer data)
{
    VnTestHttp *h = data;
    g_autoptr(GInetAddress) lo = g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) addr = g_inet_socket_address_new(lo, 0);
    g_autoptr(GSocketAddress) bound = NULL;
    g_autoptr(GError) err = NULL;

    g_main_context_push_thread_default(h->ctx);
    h->service = g_threaded_socket_service_new(16);
    if (!g_socket_listener_add_address(G_SOCKET_LISTENER(h->service), addr, G_SOCKET_TYPE_STREAM,
                                       G_SOCKET_PROTOCOL_TCP, NULL, &bound, &err))
        g_error("http: %s", err->message);
    g_mutex_lock(&h->lock);
    h->port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(bound));
    g_mutex_unlock(&h->lock);
    g_signal_connect(h->service, "run", G_CALLBACK(handle), h);
    g_socket_service_start(h->service);
    g_main_loop_run(h->loop);
    g_socket_service_stop(h->service);
    g_socket_listener_close(G_SOCKET_LISTENER(h->service));
    g_clear_object(&h->service);
    g_main_context_pop_thread_default(h->ctx);
    return NULL;
}

VnTestHttp *vn_test_http_start(const char *root, int delay_ms)
{
    VnTestHttp *h = g_new0(VnTestHttp, 1);

    h->root = g_strdup(root);
    h->delay_ms = delay_ms;
    g_mutex_init(&h->lock);
    h->counts = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_cond_init(&h->idle);
    h->ctx = g_main_context_new();
    h->loop = g_main_loop_new(h->ctx, FALSE);
    h->thread = g_thread_new("test-http", http_thread, h);
    for (int i = 0; i < 500; i++) {
        g_mutex_lock(&h->lock);
        int port = h->port;
        g_mutex_unlock(&h->lock);
        if (port)
            break;
        g_usleep(2000);
    }
    return h;
}

int vn_test_http_port(VnTestHttp *h)
{
    int port;

    g_mutex_lock(&h->lock);
    port = h->port;
    g_mutex_unlock(&h->lock);
    return port;
}

guint vn_test_http_count(VnTestHttp *h, const char *path)
{
    guint n;

    g_mutex_lock(&h->lock);
    n = GPOINTER_TO_UINT(g_hash_table_lookup(h->counts, path));
    g_mutex_unlock(&h->lock);
    return n;
}

void vn_test_http_stop(VnTestHttp *h)
{
    g_mutex_lock(&h->lock);
    h->stopping = TRUE;
    g_mutex_unlock(&h->lock);
    g_main_loop_quit(h->loop);
    g_thread_join(h->thread);
    /* requests still being served use @h */
    g_mutex_lock(&h->lock);
    while (h->active > 0)
        g_cond_wait(&h->idle, &h->lock);
    g_mutex_unlock(&h->lock);
    g_cond_clear(&h->idle);
    g_main_loop_unref(h->loop);
    g_main_context_unref(h->ctx);
    g_hash_table_destroy(h->counts);
    g_mutex_clear(&h->lock);
    g_free(h->root);
    g_free(h);
}

static char *fixture_dir;

int vn_test_dir_setup(void **state)
{
    (void)state;
    fixture_dir = vn_test_tmpdir();
    return 0;
}

int vn_test_dir_teardown(void **state)
{
    (void)state;
    vn_test_rmtree(fixture_dir);
    g_clear_pointer(&fixture_dir, g_free);
    return 0;
}

const char *vn_test_dir(void)
{
    return fixture_dir;
}
