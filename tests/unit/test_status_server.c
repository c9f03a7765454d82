/* Unit tests of api/status_server: the endpoints over real HTTP (libcurl). */
#include "tests/unit/testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>

#include "api/status_server.h"

static gboolean is_ready;

static char *ready(gpointer data, gboolean *r)
{
    (void)data;
    *r = is_ready;
    return g_strdup(is_ready ? "{\"ready\":true}" : "{\"ready\":false}");
}

static char *metrics(gpointer data)
{
    (void)data;
    return g_strdup("virtnode_ready 1\n");
}

static size_t collect(char *p, size_t s, size_t n, void *u)
{
    g_string_append_len(u, p, (gssize)(s * n));
    return s * n;
}

static long get_from(const char *host, int port, const char *path, const char *method, char **body)
{
    CURL *c = curl_easy_init();
    g_autofree char *url = g_strdup_printf("http://%s:%d%s", host, port, path);
    GString *b = g_string_new(NULL);
    long code = 0;

    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    *body = g_string_free(b, FALSE);
    return code;
}

static long get(int port, const char *path, const char *method, char **body)
{
    return get_from("127.0.0.1", port, path, method, body);
}

static void test_ipv6_and_every_address(void **state)
{
    VnStatusHandlers h = { NULL, ready, metrics, NULL };
    g_autoptr(GError) err = NULL;
    g_autofree char *b1 = NULL, *b2 = NULL, *b3 = NULL;

    (void)state;
    assert_true(vn_status_listen_check("[::1]:8775", &err));
    assert_true(vn_status_listen_check(":8775", &err));
    assert_false(vn_status_listen_check("::1:8775", &err));
    g_clear_error(&err);
    assert_false(vn_status_listen_check("[::1:8775", &err));
    g_clear_error(&err);
    VnStatusServer *s6 = vn_status_server_start("[::1]:0", &h, &err);
    assert_non_null(s6);
    assert_int_equal(get_from("[::1]", vn_status_server_port(s6), "/healthz", "GET", &b1), 200);
    vn_status_server_stop(s6);
    /* every address: reachable over IPv6 and IPv4 */
    VnStatusServer *any = vn_status_server_start(":0", &h, &err);
    assert_non_null(any);
    assert_int_equal(get_from("[::1]", vn_status_server_port(any), "/healthz", "GET", &b2), 200);
    assert_int_equal(get_from("127.0.0.1", vn_status_server_port(any), "/healthz", "GET", &b3),
                     200);
    vn_status_server_stop(any);
}

static void test_endpoints(void **state)
{
    VnStatusHandlers h = { NULL, ready, metrics, NULL };
    g_autoptr(GError) err = NULL;
    VnStatusServer *s = vn_status_server_start("127.0.0.1:0", &h, &err);
    char *body = NULL;
    int port;

    (void)state;
    assert_non_null(s);
    port = vn_status_server_port(s);
    assert_true(port > 0);
    assert_int_equal(get(port, "/healthz", "GET", &body), 200);
    g_free(body);
    is_ready = FALSE;
    assert_int_equal(get(port, "/readyz", "GET", &body), 503);
    assert_non_null(strstr(body, "false"));
    g_free(body);
    is_ready = TRUE;
    assert_int_equal(get(port, "/readyz", "GET", &body), 200);
    g_free(body);
    assert_int_equal(get(port, "/metrics", "GET", &body), 200);
    assert_non_null(strstr(body, "virtnode_ready 1"));
    g_free(body);
    assert_int_equal(get(port, "/nope", "GET", &body), 404);
    g_free(body);
    assert_int_equal(get(port, "/healthz", "DELETE", &body), 405);
    g_free(body);
    vn_status_server_stop(s);
}

static gboolean healthy_flag = TRUE;

static gboolean healthy(gpointer data)
{
    (void)data;
    return healthy_flag;
}

/* A connection from @src to 127.0.0.1:@port that sends one byte of a request. */
static int slow_client(const char *src, int port)
{
    struct sockaddr_in a = { .sin_family = AF_INET }, to = { .sin_family = AF_INET };
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    inet_pton(AF_INET, src, &a.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    to.sin_port = htons((uint16_t)port);
    assert_int_equal(connect(fd, (struct sockaddr *)&to, sizeof(to)), 0);
    assert_int_equal(write(fd, "G", 1), 1);
    return fd;
}

/* 70 slow clients cannot keep /healthz from a well-behaved one, and none of them holds a
 * connection past the 10 s deadline, though each sends a byte every 2 s; /healthz follows
 * the daemon's main loop. */
static void test_slow_clients(void **state)
{
    VnStatusHandlers h = { healthy, ready, metrics, NULL };
    g_autoptr(GError) err = NULL;
    VnStatusServer *s = vn_status_server_start("127.0.0.1:0", &h, &err);
    int fds[70];
    char *body = NULL;
    int port, closed = 0;
    gint64 t0 = g_get_monotonic_time();

    (void)state;
    assert_non_null(s);
    port = vn_status_server_port(s);
    for (int i = 0; i < 70; i++)
        fds[i] = slow_client("127.0.0.5", port);
    assert_int_equal(get(port, "/healthz", "GET", &body), 200);
    g_free(body);
    /* keep dribbling; every slow connection ends by the deadline (10 s, plus slack) */
    while (closed < 70 && g_get_monotonic_time() - t0 < 16 * G_USEC_PER_SEC) {
        for (int i = 0; i < 70; i++) {
            struct pollfd p = { fds[i], POLLIN, 0 };
            char c;
            if (fds[i] < 0)
                continue;
            if (poll(&p, 1, 0) > 0 && read(fds[i], &c, 1) <= 0) {
                close(fds[i]);
                fds[i] = -1;
                closed++;
            } else if (send(fds[i], "E", 1, MSG_NOSIGNAL) < 0) {
                close(fds[i]);
                fds[i] = -1;
                closed++;
            }
        }
        g_usleep(2 * G_USEC_PER_SEC);
    }
    for (int i = 0; i < 70; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    assert_int_equal(closed, 70);
    healthy_flag = FALSE;
    assert_int_equal(get(port, "/healthz", "GET", &body), 503);
    g_free(body);
    healthy_flag = TRUE;
    vn_status_server_stop(s);
}

static void test_listen_check(void **state)
{
    g_autoptr(GError) err = NULL;

    (void)state;
    assert_true(vn_status_listen_check("127.0.0.1:8775", &err));
    assert_true(vn_status_listen_check("", &err));
    assert_false(vn_status_listen_check("localhost", &err));
    g_clear_error(&err);
    assert_false(vn_status_listen_check("127.0.0.1:99999", &err));
    g_clear_error(&err);
    assert_false(vn_status_listen_check("example.org:80", &err));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_listen_check),
        cmocka_unit_test(test_ipv6_and_every_address),
        cmocka_unit_test(test_slow_clients),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
