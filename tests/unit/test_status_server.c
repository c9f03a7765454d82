/* Unit tests of api/status_server: the endpoints over real HTTP (libcurl). */
#include "tests/unit/testutil.h"

#include <string.h>

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

static long get(int port, const char *path, const char *method, char **body)
{
    CURL *c = curl_easy_init();
    g_autofree char *url = g_strdup_printf("http://127.0.0.1:%d%s", port, path);
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

static void test_endpoints(void **state)
{
    VnStatusHandlers h = { ready, metrics, NULL };
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
