/* Unit tests of agent/log: secret masking and the line formats. */
#include "tests/unit/testutil.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "agent/base/log.h"

static void check_mask(const char *in, const char *secret, const char *kept)
{
    g_autofree char *out = vn_log_mask_secrets(in);

    if (strstr(out, secret))
        fail_msg("'%s' still shows '%s'", out, secret);
    if (kept && !strstr(out, kept))
        fail_msg("'%s' lost '%s'", out, kept);
}

static void test_masking(void **state)
{
    (void)state;
    check_mask("connecting amqp://guest:pa55word@broker:5672/", "pa55word", "amqp://guest:***@");
    check_mask("amqps://u:p%40ss@h1/,amqp://v:w0rd@h2/", "w0rd", "h2");
    check_mask("host=db password=hunter2 user=x", "hunter2", "user=x");
    check_mask("{\"auth_token\": \"abcdef\", \"x\": 1}", "abcdef", "\"x\": 1");
    check_mask("chap_secret=topsecret", "topsecret", "chap_secret=***");
    check_mask("postgresql://app:Secr3t@db:5432/cloud", "Secr3t", "@db:5432");
    /* values with spaces are masked whole (the mask used to stop at the space) */
    check_mask("password=my secret words user=x", "secret words", "user=x");
    check_mask("reload: password: correct horse battery", "horse battery", "password: ***");
    check_mask("{\"auth_password\": \"two words\"}", "words", "\"auth_password\": ***");
}

static void test_plain_and_json_lines(void **state)
{
    GLogField fields[] = {
        { "MESSAGE", "booting with password=xyz", -1 },
        { "GLIB_DOMAIN", "virtnode-test", -1 },
    };
    g_autofree char *plain = NULL;
    g_autofree char *js = NULL;

    (void)state;
    vn_log_context_set("req-42", "0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01");
    plain = vn_log_format_line(VN_LOG_FORMAT_PLAIN, G_LOG_LEVEL_WARNING, fields, 2);
    js = vn_log_format_line(VN_LOG_FORMAT_JSON, G_LOG_LEVEL_WARNING, fields, 2);
    vn_log_context_set(NULL, NULL);

    assert_non_null(strstr(plain, "WARNING virtnode-test: booting with password=***"));
    assert_non_null(strstr(plain, "[request_id=req-42 instance=0b5e1c5e"));
    assert_true(g_str_has_suffix(plain, "\n"));
    json_object *o = json_tokener_parse(js);
    assert_non_null(o);
    assert_string_equal(json_object_get_string(json_object_object_get(o, "level")), "WARNING");
    assert_string_equal(json_object_get_string(json_object_object_get(o, "request_id")), "req-42");
    assert_string_equal(json_object_get_string(json_object_object_get(o, "msg")),
                        "booting with password=***");
    json_object_put(o);
}

/* journald asked for on a host without it: the lines go to stderr, with a warning. */
static void test_journald_fallback(void **state)
{
    g_autofree char *path = g_build_filename(g_get_tmp_dir(), "vn-log-fallback.txt", NULL);
    g_autofree char *text = NULL;
    int saved = dup(STDERR_FILENO);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

    (void)state;
    if (access("/run/systemd/journal/socket", W_OK) == 0)
        skip(); /* a host with journald: nothing to fall back from */
    assert_true(fd >= 0 && saved >= 0);
    dup2(fd, STDERR_FILENO);
    vn_log_init();
    vn_log_configure(VN_LOG_TARGET_JOURNALD, VN_LOG_FORMAT_PLAIN, VN_LOG_LEVEL_INFO);
    g_message("a line that must reach someone");
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fd);
    vn_log_configure(VN_LOG_TARGET_STDERR, VN_LOG_FORMAT_PLAIN, VN_LOG_LEVEL_INFO);
    assert_true(g_file_get_contents(path, &text, NULL, NULL));
    unlink(path);
    assert_non_null(strstr(text, "logging to stderr"));
    assert_non_null(strstr(text, "a line that must reach someone"));
}

/* Values from outside cannot forge a log line: control characters are escaped. */
static void test_no_forged_lines(void **state)
{
    GLogField fields[] = {
        { "MESSAGE", "unknown method 'x'\n2026-01-01T00:00:00Z NOTICE virtnode-agent: forged", -1 },
        { "GLIB_DOMAIN", "virtnode-test", -1 },
        { "REQUEST_ID", "req\r\n\x1b[31mred\xff", -1 },
    };
    g_autofree char *plain = NULL;

    (void)state;
    plain = vn_log_format_line(VN_LOG_FORMAT_PLAIN, G_LOG_LEVEL_WARNING, fields, 3);
    /* one line: the only newline is the last character */
    assert_ptr_equal(strchr(plain, '\n'), plain + strlen(plain) - 1);
    assert_null(strchr(plain, '\r'));
    assert_null(strchr(plain, '\x1b'));
    assert_non_null(strstr(plain, "'x'\\n2026"));
    assert_non_null(strstr(plain, "request_id=req\\r\\n\\x1b[31mred"));
    assert_true(g_utf8_validate(plain, -1, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_masking),
        cmocka_unit_test(test_journald_fallback),
        cmocka_unit_test(test_plain_and_json_lines),
        cmocka_unit_test(test_no_forged_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
