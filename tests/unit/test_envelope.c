/* Unit tests of scheduler-client: the oslo.messaging envelope, broker URLs, back-off, the
 * gathered AMQP frames. */
#include "tests/unit/testutil.h"

#include <string.h>

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include <amqp_tcp_socket.h>
#include <glib-unix.h>

#include "scheduler-client/amqp/envelope.h"
#include "scheduler-client/amqp/frames.h"
#include "scheduler-client/amqp/url.h"
#include "scheduler-client/backoff.h"
#include "scheduler-client/sched_error.h"

/* A call as oslo.messaging 14 (Debian 12) puts it on the wire. */
static const char *oslo_call =
    "{\"oslo.version\": \"2.0\", \"oslo.message\": \"{\\\"method\\\": \\\"ping\\\", "
    "\\\"args\\\": {\\\"arg\\\": \\\"hello\\\"}, \\\"namespace\\\": \\\"baseapi\\\", "
    "\\\"version\\\": \\\"1.1\\\", \\\"_unique_id\\\": \\\"4a0c1f8e6f0d4c59bd1d4c3e3b3f3f11\\\", "
    "\\\"_msg_id\\\": \\\"7c1d9b2f0a8e4e0e9a5c6d7e8f9a0b1c\\\", "
    "\\\"_reply_q\\\": \\\"reply_0123456789abcdef0123456789abcdef\\\", \\\"_timeout\\\": 30, "
    "\\\"_context_request_id\\\": \\\"req-11111111-2222-3333-4444-555555555555\\\", "
    "\\\"_context_project_id\\\": \\\"p1\\\", \\\"_context_roles\\\": [\\\"admin\\\"]}\"}";

static void test_decode_oslo_call(void **state)
{
    g_autoptr(GError) err = NULL;
    VnRpcMessage *m = NULL;

    (void)state;
    assert_true(vn_envelope_decode_request(oslo_call, strlen(oslo_call), &m, &err));
    assert_string_equal(m->method, "ping");
    assert_string_equal(m->namespace_, "baseapi");
    assert_string_equal(m->version, "1.1");
    assert_string_equal(m->unique_id, "4a0c1f8e6f0d4c59bd1d4c3e3b3f3f11");
    assert_string_equal(m->msg_id, "7c1d9b2f0a8e4e0e9a5c6d7e8f9a0b1c");
    assert_string_equal(m->reply_q, "reply_0123456789abcdef0123456789abcdef");
    assert_int_equal(m->timeout, 30);
    assert_string_equal(m->request_id, "req-11111111-2222-3333-4444-555555555555");
    assert_string_equal(json_object_get_string(json_object_object_get(m->context, "project_id")),
                        "p1");
    assert_true(json_object_is_type(json_object_object_get(m->context, "roles"), json_type_array));
    assert_string_equal(json_object_get_string(json_object_object_get(m->args, "arg")), "hello");
    vn_rpc_message_free(m);
}

/* A request id from outside is stored and echoed: it becomes valid UTF-8 without control
 * characters, cut on a character boundary; ids with anything but printable ASCII are
 * dropped (a call without them cannot be answered, and is not stored). */
static void test_hostile_ids(void **state)
{
    g_autoptr(GError) err = NULL;
    VnRpcMessage *m = NULL;
    GString *rid = g_string_new(NULL);
    g_autofree char *body = NULL;
    g_autofree char *inner = NULL;
    json_object *o = json_object_new_object();
    json_object *outer = json_object_new_object();

    (void)state;
    /* 254 ASCII bytes, then a 2-byte character: a byte cut at 255 splits it */
    for (int i = 0; i < 254; i++)
        g_string_append_c(rid, 'r');
    g_string_append(rid, "\xc3\xa9\n2026-01-01 FAKE LINE");
    json_object_object_add(o, "method", json_object_new_string("ping"));
    json_object_object_add(o, "_context_request_id",
                           json_object_new_string_len(rid->str, (int)rid->len));
    json_object_object_add(o, "_unique_id", json_object_new_string("abc\ndef"));
    inner = g_strdup(json_object_to_json_string(o));
    json_object_object_add(outer, "oslo.version", json_object_new_string("2.0"));
    json_object_object_add(outer, "oslo.message", json_object_new_string(inner));
    body = g_strdup(json_object_to_json_string(outer));
    if (!vn_envelope_decode_request(body, strlen(body), &m, &err))
        fail_msg("%s", err->message);
    assert_true(g_utf8_validate(m->request_id, -1, NULL));
    assert_true(strlen(m->request_id) <= 255);
    assert_int_equal(strlen(m->request_id), 254); /* the split character is left out */
    assert_null(strchr(m->request_id, '\n'));
    assert_null(m->unique_id);
    g_autofree char *clean = vn_envelope_clean_text("a\x01"
                                                    "b\xff"
                                                    "c",
                                                    5, 64);
    assert_string_equal(clean, "a\xef\xbf\xbd"
                               "b\xef\xbf\xbd"
                               "c");
    vn_rpc_message_free(m);
    json_object_put(o);
    json_object_put(outer);
    g_string_free(rid, TRUE);
}

static void test_encode_decode_round_trip(void **state)
{
    g_autoptr(VnRpcMessage) m = vn_rpc_message_new();
    g_autoptr(GError) err = NULL;
    g_autofree char *body = NULL;
    VnRpcMessage *back = NULL;

    (void)state;
    m->method = g_strdup("stop_instance");
    m->args = json_tokener_parse("{\"instance_uuid\": \"x\", \"timeout\": 3}");
    m->version = g_strdup("1.0");
    m->unique_id = vn_envelope_new_id();
    m->context = json_tokener_parse("{\"request_id\": \"req-9\"}");
    body = vn_envelope_encode_request(m);
    assert_true(vn_envelope_decode_request(body, strlen(body), &back, &err));
    assert_string_equal(back->method, "stop_instance");
    assert_string_equal(back->unique_id, m->unique_id);
    assert_null(back->msg_id); /* a cast */
    assert_string_equal(back->request_id, "req-9");
    assert_int_equal(json_object_get_int(json_object_object_get(back->args, "timeout")), 3);
    assert_int_equal(strlen(m->unique_id), 32);
    vn_rpc_message_free(back);
}

/* Each bad body fails with @needle in the error; *out keeps what could be read. */
static void expect_bad(const char *body, const char *needle, gboolean reply_readable)
{
    g_autoptr(GError) err = NULL;
    VnRpcMessage *m = NULL;

    assert_false(vn_envelope_decode_request(body, strlen(body), &m, &err));
    assert_non_null(err);
    if (!strstr(err->message, needle))
        fail_msg("'%s' does not contain '%s'", err->message, needle);
    if (reply_readable) {
        assert_non_null(m);
        assert_non_null(m->reply_q);
        assert_non_null(m->msg_id);
    }
    vn_rpc_message_free(m);
}

static void test_bad_envelopes(void **state)
{
    (void)state;
    expect_bad("not json", "not JSON", FALSE);
    expect_bad("{\"a\": 1} trailing", "not JSON", FALSE);
    expect_bad("[1, 2]", "not a JSON object", FALSE);
    expect_bad("{\"oslo.version\": \"3.0\", \"oslo.message\": \"{}\"}", "not compatible with 2.0",
               FALSE);
    /* a newer envelope can still be answered when its reply address is readable */
    expect_bad("{\"oslo.version\": \"3.0\", \"oslo.message\": \"{\\\"method\\\": \\\"ping\\\", "
               "\\\"_msg_id\\\": \\\"m\\\", \\\"_reply_q\\\": \\\"reply_1\\\"}\"}",
               "not compatible with 2.0", TRUE);
    expect_bad("{\"oslo.version\": 2, \"oslo.message\": \"{}\"}", "oslo.version is not a string",
               FALSE);
    expect_bad("{\"oslo.version\": \"2.0\", \"oslo.message\": 5}", "oslo.message is not a string",
               FALSE);
    expect_bad("{\"oslo.version\": \"2.0\", \"oslo.message\": \"{broken\"}", "not JSON", FALSE);
    expect_bad("{\"args\": {}, \"_msg_id\": \"m1\", \"_reply_q\": \"reply_x\"}",
               "'method' is missing", TRUE);
    expect_bad(
        "{\"method\": \"ping\", \"args\": [1], \"_msg_id\": \"m1\", \"_reply_q\": \"reply_x\"}",
        "'args' is not an object", TRUE);
    expect_bad("{\"method\": \"p i n g\", \"_msg_id\": \"m1\", \"_reply_q\": \"reply_x\"}",
               "'method' is not a method name", TRUE);
    expect_bad("{\"method\": \"ping\", \"version\": 1.0, \"_msg_id\": \"m\", \"_reply_q\": \"r\"}",
               "'version' is not a string", TRUE);
    expect_bad(
        "{\"method\": \"ping\", \"_timeout\": \"soon\", \"_msg_id\": \"m\", \"_reply_q\": \"r\"}",
        "'_timeout' is not a number", TRUE);
    /* invalid UTF-8 is refused by the parser */
    expect_bad("{\"method\": \"p\xff\"}", "not JSON", FALSE);
}

/* Envelope versions follow oslo.messaging's rule: 2.0 only (2.1 is refused, as oslo's
 * version_is_compatible refuses a minor above its own); a bare message is accepted. */
static void test_envelope_versions(void **state)
{
    const char *v21 = "{\"oslo.version\": \"2.1\", \"oslo.message\": "
                      "\"{\\\"method\\\": \\\"ping\\\", \\\"_msg_id\\\": \\\"m1\\\", "
                      "\\\"_reply_q\\\": \\\"reply_x\\\"}\"}";
    g_autoptr(GError) err = NULL;
    VnRpcMessage *m = NULL;

    (void)state;
    assert_false(vn_envelope_decode_request(v21, strlen(v21), &m, &err));
    assert_true(g_error_matches(err, VN_SCHED_ERROR, VN_SCHED_ERROR_VERSION));
    /* still answerable: the ids were read */
    assert_non_null(m);
    assert_string_equal(m->msg_id, "m1");
    vn_rpc_message_free(m);
}

static void test_raw_v1_message_accepted(void **state)
{
    const char *body = "{\"method\": \"ping\", \"args\": {\"arg\": 1}, \"_unique_id\": \"u\"}";
    g_autoptr(GError) err = NULL;
    VnRpcMessage *m = NULL;

    (void)state;
    assert_true(vn_envelope_decode_request(body, strlen(body), &m, &err));
    assert_string_equal(m->method, "ping");
    vn_rpc_message_free(m);
}

static void test_reply_and_failure(void **state)
{
    g_autoptr(json_object) result = json_tokener_parse("{\"service\": \"virtnode\"}");
    g_autofree char *ok = vn_envelope_encode_reply("m1", result, NULL, TRUE);
    VnRpcFailure f = { "InstanceNotFound", "virtnode.exception", "instance x is not here" };
    g_autofree char *bad = vn_envelope_encode_reply("m2", NULL, &f, TRUE);
    g_autofree char *ka = vn_envelope_encode_reply("m3", NULL, NULL, FALSE);
    g_autoptr(GError) err = NULL;
    g_autoptr(VnRpcReply) r1 = vn_envelope_decode_reply(ok, strlen(ok), &err);
    g_autoptr(VnRpcReply) r2 = vn_envelope_decode_reply(bad, strlen(bad), &err);
    g_autoptr(VnRpcReply) r3 = vn_envelope_decode_reply(ka, strlen(ka), &err);

    (void)state;
    assert_string_equal(r1->msg_id, "m1");
    assert_true(r1->ending);
    assert_null(r1->failure_class);
    assert_string_equal(json_object_get_string(json_object_object_get(r1->result, "service")),
                        "virtnode");
    assert_string_equal(r2->failure_class, "InstanceNotFound");
    assert_string_equal(r2->failure_module, "virtnode.exception");
    assert_string_equal(r2->failure_message, "instance x is not here");
    assert_false(r3->ending);
    assert_null(r3->result);

    /* the failure is a JSON string with oslo's six members */
    g_autoptr(json_object) outer = json_tokener_parse(bad);
    g_autoptr(json_object) inner =
        json_tokener_parse(json_object_get_string(json_object_object_get(outer, "oslo.message")));
    json_object *fs = json_object_object_get(inner, "failure");
    assert_true(json_object_is_type(fs, json_type_string));
    g_autoptr(json_object) fo = json_tokener_parse(json_object_get_string(fs));
    for (const char *const *k =
             (const char *const[]){ "class", "module", "message", "tb", "args", "kwargs", NULL };
         *k; k++)
        assert_true(json_object_object_get_ex(fo, *k, NULL));
}

static void test_notification(void **state)
{
    g_autoptr(json_object) payload = json_tokener_parse("{\"a\": 1}");
    g_autofree char *body =
        vn_envelope_encode_notification("compute.host-a", "instance.create.end", "INFO", payload);
    g_autoptr(json_object) outer = json_tokener_parse(body);
    g_autoptr(json_object) m =
        json_tokener_parse(json_object_get_string(json_object_object_get(outer, "oslo.message")));

    (void)state;
    assert_string_equal(json_object_get_string(json_object_object_get(outer, "oslo.version")),
                        "2.0");
    assert_string_equal(json_object_get_string(json_object_object_get(m, "event_type")),
                        "instance.create.end");
    assert_string_equal(json_object_get_string(json_object_object_get(m, "priority")), "INFO");
    assert_string_equal(json_object_get_string(json_object_object_get(m, "publisher_id")),
                        "compute.host-a");
    assert_non_null(json_object_object_get(m, "message_id"));
    assert_non_null(json_object_object_get(m, "timestamp"));
}

static void test_urls(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnAmqpUrl) u = vn_amqp_url_parse("amqps://agent:pw@broker.example:5671/cloud", &err);
    g_autofree char *shown = NULL;

    (void)state;
    assert_non_null(u);
    assert_true(u->ssl);
    assert_string_equal(u->user, "agent");
    assert_string_equal(u->password, "pw");
    assert_int_equal(u->port, 5671);
    assert_string_equal(u->vhost, "cloud");
    shown = vn_amqp_url_display(u);
    assert_null(strstr(shown, "pw"));
    g_autoptr(VnAmqpUrl) bad = vn_amqp_url_parse("amqp://user:secret@host:notaport/", &err);
    assert_null(bad);
    assert_null(strstr(err->message, "secret"));
    g_clear_error(&err);
    assert_false(vn_amqp_url_list_check("amqp://h/, http://x", &err));
    g_clear_error(&err);
    assert_true(vn_amqp_url_list_check("amqp://a/, amqp://b:5673/", &err));
}

static void test_backoff(void **state)
{
    VnBackoff b;
    double prev_cap = 0;

    (void)state;
    vn_backoff_init(&b, 1, 30);
    for (int i = 0; i < 10; i++) {
        double lo = vn_backoff_next(&b, 0.0);
        b.failures--; /* the same step again, with the other jitter extreme */
        double hi = vn_backoff_next(&b, 0.999999);
        double cap = MIN(30.0, 1.0 * (1 << i));
        assert_true(lo >= cap * 0.5 - 1e-9 && lo <= cap + 1e-9);
        assert_true(hi <= cap + 1e-9 && hi > lo);
        assert_true(cap >= prev_cap);
        prev_cap = cap;
    }
    vn_backoff_reset(&b);
    assert_true(vn_backoff_next(&b, 0.5) <= 1.0);
}

/* Everything @fd has to read now (it is non-blocking). */
static GByteArray *read_all(int fd)
{
    GByteArray *b = g_byte_array_new();
    guint8 chunk[65536];
    ssize_t n;

    while ((n = read(fd, chunk, sizeof(chunk))) > 0)
        g_byte_array_append(b, chunk, (guint)n);
    return b;
}

/* The gathered frames are byte for byte those librabbitmq writes for the same publish
 * (a body longer than a frame included) and the same ack: the broker cannot tell them
 * apart. */
static void test_frames_match_librabbitmq(void **state)
{
    int sv[2];
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);
    amqp_basic_properties_t p;
    GString *body = g_string_new(NULL);
    VnFrames f;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    amqp_tcp_socket_set_sockfd(sock, sv[0]);
    int frame_max = amqp_get_frame_max(conn);
    for (int i = 0; (int)body->len < frame_max + 1000; i++)
        g_string_append_printf(body, "{\"n\": %d}", i);
    memset(&p, 0, sizeof(p));
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_EXPIRATION_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = 2;
    p.message_id = amqp_cstring_bytes("42");
    p.expiration = amqp_cstring_bytes("60000");

    vn_frames_init(&f);
    for (int round = 0; round < 2; round++) {
        /* a body of several frames, then one of none */
        amqp_bytes_t b = round == 0 ? (amqp_bytes_t){ body->len, body->str } : amqp_empty_bytes;
        assert_int_equal(amqp_basic_publish(conn, 2, amqp_cstring_bytes("nova"),
                                            amqp_cstring_bytes("compute.h1"), 1, 0, &p, b),
                         AMQP_STATUS_OK);
        assert_int_equal(amqp_basic_ack(conn, 1, 77, 1), AMQP_STATUS_OK);
        g_autoptr(GByteArray) want = read_all(sv[1]);

        assert_true(vn_frames_publish(&f, 2, amqp_cstring_bytes("nova"),
                                      amqp_cstring_bytes("compute.h1"), TRUE, &p, b, frame_max));
        amqp_basic_ack_t a = { .delivery_tag = 77, .multiple = 1 };
        assert_true(vn_frames_method(&f, 1, AMQP_BASIC_ACK_METHOD, &a));
        assert_true(vn_frames_pending(&f));
        assert_int_equal(vn_frames_write(&f, sv[0], 1000), 0);
        assert_false(vn_frames_pending(&f));
        g_autoptr(GByteArray) got = read_all(sv[1]);

        assert_true(want->len > (round == 0 ? (guint)frame_max : 0u));
        assert_int_equal(got->len, want->len);
        assert_memory_equal(got->data, want->data, want->len);
    }
    vn_frames_clear(&f);
    g_string_free(body, TRUE);
    amqp_destroy_connection(conn);
    close(sv[1]);
}

typedef struct {
    int fd;
    GByteArray *got;
} Reader;

static gpointer slow_reader(gpointer data)
{
    Reader *r = data;
    guint8 chunk[4096];
    ssize_t n;

    while ((n = read(r->fd, chunk, sizeof(chunk))) > 0) {
        g_byte_array_append(r->got, chunk, (guint)n);
        g_usleep(100);
    }
    return NULL;
}

/* A write larger than the socket takes at once waits for the reader and loses nothing; a
 * socket nobody reads times out with what was written gone from the buffer and the rest
 * kept. */
static void test_frames_partial_writes(void **state)
{
    int sv[2], small = 4096;
    VnFrames f;
    GString *body = g_string_new(NULL);
    amqp_basic_properties_t p = { 0 };

    (void)state;
    for (int i = 0; i < 100000; i++)
        g_string_append_printf(body, "%d,", i);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    g_unix_set_fd_nonblocking(sv[0], TRUE, NULL);
    vn_frames_init(&f);
    assert_true(vn_frames_publish(&f, 2, amqp_empty_bytes, amqp_cstring_bytes("q"), FALSE, &p,
                                  (amqp_bytes_t){ body->len, body->str }, 131072));
    g_autoptr(GByteArray) sent = g_byte_array_new();
    g_byte_array_append(sent, f.buf->data, f.buf->len);

    /* nobody reads: a timeout, part of it written */
    assert_int_equal(vn_frames_write(&f, sv[0], 50), ETIMEDOUT);
    assert_true(vn_frames_pending(&f));
    guint left = f.buf->len;
    assert_true(left < sent->len);
    assert_memory_equal(f.buf->data, sent->data + (sent->len - left), left);

    Reader r = { sv[1], g_byte_array_new() };
    GThread *t = g_thread_new("reader", slow_reader, &r);
    assert_int_equal(vn_frames_write(&f, sv[0], 5000), 0);
    close(sv[0]);
    g_thread_join(t);
    assert_int_equal(r.got->len, sent->len);
    assert_memory_equal(r.got->data, sent->data, sent->len);
    g_byte_array_free(r.got, TRUE);

    /* a closed peer is an error, not a hang */
    int sv2[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv2), 0);
    close(sv2[1]);
    assert_true(vn_frames_publish(&f, 2, amqp_empty_bytes, amqp_cstring_bytes("q"), FALSE, &p,
                                  amqp_cstring_bytes("x"), 131072));
    assert_int_equal(vn_frames_write(&f, sv2[0], 50), EPIPE);
    close(sv2[0]);
    vn_frames_clear(&f);
    close(sv[1]);
    g_string_free(body, TRUE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_oslo_call),
        cmocka_unit_test(test_hostile_ids),
        cmocka_unit_test(test_encode_decode_round_trip),
        cmocka_unit_test(test_bad_envelopes),
        cmocka_unit_test(test_raw_v1_message_accepted),
        cmocka_unit_test(test_envelope_versions),
        cmocka_unit_test(test_reply_and_failure),
        cmocka_unit_test(test_notification),
        cmocka_unit_test(test_urls),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_frames_match_librabbitmq),
        cmocka_unit_test(test_frames_partial_writes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
