/* scheduler-client/amqp/envelope.c - oslo.messaging 2.0 messages (see envelope.h). */
#include <string.h>

#include "scheduler-client/amqp/envelope.h"
#include "scheduler-client/sched_error.h"

#define CONTEXT_PREFIX "_context_"
#define MAX_DEPTH      64

GQuark vn_sched_error_quark(void)
{
    return g_quark_from_static_string("vn-sched-error");
}

static void tokener_free(gpointer tok)
{
    json_tokener_free(tok);
}

/* Each thread's tokener, made once (its parse stack is an allocation of MAX_DEPTH
 * entries) and reset for every parse; freed when the thread ends. */
static GPrivate thread_tokener = G_PRIVATE_INIT(tokener_free);

json_object *vn_json_parse_strict(const char *text, gsize len, GError **error)
{
    json_tokener *tok = g_private_get(&thread_tokener);
    json_object *obj;
    enum json_tokener_error jerr;

    if (len > G_MAXINT32) {
        g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_TOO_LARGE, "body too large");
        return NULL;
    }
    if (!tok) {
        tok = json_tokener_new_ex(MAX_DEPTH);
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
        g_private_set(&thread_tokener, tok);
    }
    json_tokener_reset(tok);
    obj = json_tokener_parse_ex(tok, text, (int)len);
    jerr = json_tokener_get_error(tok);
    if (obj && jerr == json_tokener_success && json_tokener_get_parse_end(tok) < len) {
        /* trailing bytes after the value: only whitespace is allowed */
        for (size_t i = json_tokener_get_parse_end(tok); i < len; i++) {
            if (!g_ascii_isspace(text[i])) {
                json_object_put(obj);
                obj = NULL;
                jerr = json_tokener_error_parse_unexpected;
                break;
            }
        }
    }
    if (!obj || jerr != json_tokener_success) {
        if (obj)
            json_object_put(obj);
        g_set_error(error, VN_SCHED_ERROR, VN_SCHED_ERROR_MALFORMED, "not JSON: %s",
                    jerr == json_tokener_continue ? "unexpected end of data"
                                                  : json_tokener_error_desc(jerr));
        return NULL;
    }
    return obj;
}

char *vn_envelope_new_id(void)
{
    g_autofree char *u = g_uuid_string_random();
    GString *s = g_string_sized_new(32);

    for (const char *p = u; *p; p++) {
        if (*p != '-')
            g_string_append_c(s, *p);
    }
    return g_string_free(s, FALSE);
}

VnRpcMessage *vn_rpc_message_new(void)
{
    return g_new0(VnRpcMessage, 1);
}

void vn_rpc_message_free(VnRpcMessage *m)
{
    if (!m)
        return;
    g_free(m->method);
    if (m->args)
        json_object_put(m->args);
    g_free(m->version);
    g_free(m->namespace_);
    g_free(m->unique_id);
    g_free(m->msg_id);
    g_free(m->reply_q);
    if (m->context)
        json_object_put(m->context);
    g_free(m->request_id);
    g_free(m);
}

static gboolean malformed(GError **error, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static gboolean malformed(GError **error, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error_literal(error, VN_SCHED_ERROR, VN_SCHED_ERROR_MALFORMED, msg);
    return FALSE;
}

/* Reads an optional string member; a non-string is an error naming @key. */
/* Outside text made safe to store, log and echo: valid UTF-8 (invalid bytes become
 * U+FFFD), control characters replaced by U+FFFD, at most @max_bytes bytes, cut on a
 * character boundary.  A request id that broke every later reply of its instance once
 * (cut mid-character, then refused by the database and by the controllers' decoder) can
 * no longer. */
char *vn_envelope_clean_text(const char *s, gsize len, gsize max_bytes)
{
    g_autofree char *valid = g_utf8_make_valid(s, (gssize)len);
    GString *out = g_string_sized_new(MIN(len, max_bytes) + 1);

    for (const char *p = valid; *p; p = g_utf8_next_char(p)) {
        gunichar c = g_utf8_get_char(p);
        char buf[6];
        gint n;

        if (c < 0x20 || c == 0x7f || (c >= 0x80 && c < 0xa0))
            c = 0xfffd;
        n = g_unichar_to_utf8(c, buf);
        if (out->len + (gsize)n > max_bytes)
            break;
        g_string_append_len(out, buf, n);
    }
    return g_string_free(out, FALSE);
}

static gboolean opt_string(json_object *o, const char *key, gsize max_len, char **out,
                           GError **error)
{
    json_object *v = NULL;

    *out = NULL;
    if (!json_object_object_get_ex(o, key, &v) || json_object_is_type(v, json_type_null))
        return TRUE;
    if (!json_object_is_type(v, json_type_string))
        return malformed(error, "'%s' is not a string", key);
    if ((gsize)json_object_get_string_len(v) > max_len ||
        strlen(json_object_get_string(v)) != (gsize)json_object_get_string_len(v))
        return malformed(error, "'%s' is too long or contains NUL", key);
    /* ids the agent stores and echoes: printable ASCII only */
    for (const char *p = json_object_get_string(v); *p; p++) {
        if (!g_ascii_isprint(*p))
            return malformed(error, "'%s' contains characters other than printable ASCII", key);
    }
    *out = g_strdup(json_object_get_string(v));
    return TRUE;
}

static gboolean name_ok(const char *s)
{
    if (!s || !*s)
        return FALSE;
    for (const char *p = s; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '_' && *p != '.' && *p != '-')
            return FALSE;
    }
    return TRUE;
}

/* Parses the inner message text of an envelope; NULL unless it is a JSON object. */
static json_object *parse_inner(json_object *msg, GError **error)
{
    json_object *inner;

    if (!json_object_is_type(msg, json_type_string)) {
        malformed(error, "oslo.message is not a string");
        return NULL;
    }
    inner = vn_json_parse_strict(json_object_get_string(msg),
                                 (gsize)json_object_get_string_len(msg), error);
    if (inner && !json_object_is_type(inner, json_type_object)) {
        json_object_put(inner);
        malformed(error, "oslo.message is not a JSON object");
        return NULL;
    }
    return inner;
}

/* Unwraps the 2.0 envelope when present; returns the inner message object (owned).  An
 * incompatible version sets @version_error but still returns the inner message when it
 * can be read, so that the caller can answer it. */
static json_object *unwrap(json_object *outer, GError **version_error, GError **error)
{
    json_object *ver = NULL, *msg = NULL;
    gboolean has_ver = json_object_object_get_ex(outer, "oslo.version", &ver);
    gboolean has_msg = json_object_object_get_ex(outer, "oslo.message", &msg);

    if (!has_ver || !has_msg)
        return json_object_get(outer); /* a raw 1.0 message, as oslo accepts */
    if (!json_object_is_type(ver, json_type_string)) {
        g_set_error(version_error, VN_SCHED_ERROR, VN_SCHED_ERROR_VERSION,
                    "oslo.version is not a string");
    } else {
        const char *v = json_object_get_string(ver);
        g_auto(GStrv) parts = g_strsplit(v, ".", 3);
        if (g_strv_length(parts) != 2 || strcmp(parts[0], "2") != 0 || strcmp(parts[1], "0") != 0)
            g_set_error(version_error, VN_SCHED_ERROR, VN_SCHED_ERROR_VERSION,
                        "envelope version '%.32s' is not compatible with 2.0", v);
    }
    return parse_inner(msg, error);
}

/* The reply address and ids, read first so a failure can be answered. */
static void read_ids(json_object *m, VnRpcMessage *msg)
{
    if (!opt_string(m, "_msg_id", 255, &msg->msg_id, NULL))
        msg->msg_id = NULL;
    if (!opt_string(m, "_reply_q", 255, &msg->reply_q, NULL) || !name_ok(msg->reply_q))
        g_clear_pointer(&msg->reply_q, g_free);
    if (!opt_string(m, "_unique_id", 255, &msg->unique_id, NULL))
        msg->unique_id = NULL;
    if (!opt_string(m, "method", 255, &msg->method, NULL))
        msg->method = NULL;
    json_object *rid = NULL;
    if (json_object_object_get_ex(m, CONTEXT_PREFIX "request_id", &rid) &&
        json_object_is_type(rid, json_type_string))
        msg->request_id = vn_envelope_clean_text(json_object_get_string(rid),
                                                 (gsize)json_object_get_string_len(rid), 255);
}

static gboolean read_request(json_object *m, VnRpcMessage *msg, GError **error)
{
    json_object *v = NULL;

    if (!msg->method)
        return malformed(error, "'method' is missing or not a string");
    if (!name_ok(msg->method))
        return malformed(error, "'method' is not a method name");
    if (json_object_object_get_ex(m, "args", &v) && !json_object_is_type(v, json_type_null)) {
        if (!json_object_is_type(v, json_type_object))
            return malformed(error, "'args' is not an object");
        msg->args = json_object_get(v);
    } else {
        msg->args = json_object_new_object();
    }
    if (!opt_string(m, "version", 32, &msg->version, error) ||
        !opt_string(m, "namespace", 255, &msg->namespace_, error))
        return FALSE;
    if ((msg->msg_id == NULL) != (msg->reply_q == NULL) &&
        json_object_object_get_ex(m, "_reply_q", &v) && !json_object_is_type(v, json_type_null))
        return malformed(error, "a call needs both '_msg_id' and a valid '_reply_q'");
    if (json_object_object_get_ex(m, "_timeout", &v) && !json_object_is_type(v, json_type_null)) {
        if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
            return malformed(error, "'_timeout' is not a number");
        double t = json_object_get_double(v);
        msg->timeout = t >= 1 && t <= 86400 ? (int)t : 0;
    }
    msg->context = json_object_new_object();
    json_object_object_foreach(m, key, val)
    {
        if (g_str_has_prefix(key, CONTEXT_PREFIX) && key[strlen(CONTEXT_PREFIX)])
            json_object_object_add(msg->context, key + strlen(CONTEXT_PREFIX),
                                   json_object_get(val));
    }
    return TRUE;
}

gboolean vn_envelope_decode_request(const char *body, gsize len, VnRpcMessage **out, GError **error)
{
    g_autoptr(json_object) outer = NULL;
    g_autoptr(json_object) inner = NULL;
    g_autoptr(VnRpcMessage) msg = NULL;
    g_autoptr(GError) version_error = NULL;
    g_autoptr(GError) err = NULL;

    *out = NULL;
    outer = vn_json_parse_strict(body, len, error);
    if (!outer)
        return FALSE;
    if (!json_object_is_type(outer, json_type_object))
        return malformed(error, "the body is not a JSON object");
    inner = unwrap(outer, &version_error, &err);
    if (!inner) {
        g_propagate_error(error,
                          version_error ? g_steal_pointer(&version_error) : g_steal_pointer(&err));
        return FALSE;
    }
    msg = vn_rpc_message_new();
    read_ids(inner, msg);
    if (version_error || !read_request(inner, msg, &err)) {
        g_propagate_error(error,
                          version_error ? g_steal_pointer(&version_error) : g_steal_pointer(&err));
        *out = g_steal_pointer(&msg);
        return FALSE;
    }
    *out = g_steal_pointer(&msg);
    return TRUE;
}

static char *wrap(json_object *inner)
{
    g_autoptr(json_object) outer = json_object_new_object();
    const char *text = json_object_to_json_string_ext(inner, JSON_C_TO_STRING_PLAIN |
                                                                 JSON_C_TO_STRING_NOSLASHESCAPE);

    json_object_object_add(outer, "oslo.version", json_object_new_string("2.0"));
    json_object_object_add(outer, "oslo.message", json_object_new_string(text));
    return g_strdup(json_object_to_json_string_ext(outer, JSON_C_TO_STRING_PLAIN |
                                                              JSON_C_TO_STRING_NOSLASHESCAPE));
}

static json_object *str_or_null(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

char *vn_envelope_encode_request(const VnRpcMessage *msg)
{
    g_autoptr(json_object) m = json_object_new_object();

    json_object_object_add(m, "method", json_object_new_string(msg->method));
    json_object_object_add(m, "args",
                           msg->args ? json_object_get(msg->args) : json_object_new_object());
    if (msg->version)
        json_object_object_add(m, "version", json_object_new_string(msg->version));
    if (msg->namespace_)
        json_object_object_add(m, "namespace", json_object_new_string(msg->namespace_));
    json_object_object_add(m, "_unique_id", str_or_null(msg->unique_id));
    if (msg->msg_id) {
        json_object_object_add(m, "_msg_id", json_object_new_string(msg->msg_id));
        json_object_object_add(m, "_reply_q", str_or_null(msg->reply_q));
        json_object_object_add(m, "_timeout",
                               msg->timeout > 0 ? json_object_new_int(msg->timeout) : NULL);
    }
    if (msg->context) {
        json_object_object_foreach(msg->context, key, val)
        {
            g_autofree char *k = g_strconcat(CONTEXT_PREFIX, key, NULL);
            json_object_object_add(m, k, json_object_get(val));
        }
    }
    return wrap(m);
}

char *vn_envelope_encode_reply(const char *msg_id, json_object *result, const VnRpcFailure *failure,
                               gboolean ending)
{
    g_autoptr(json_object) m = json_object_new_object();
    g_autofree char *uid = vn_envelope_new_id();

    json_object_object_add(m, "result", result ? json_object_get(result) : NULL);
    if (failure) {
        g_autoptr(json_object) f = json_object_new_object();
        json_object *tb = json_object_new_array();
        json_object *args = json_object_new_array();
        json_object_array_add(tb, json_object_new_string("(raised by virtnode, a C agent)\n"));
        json_object_array_add(args, json_object_new_string(failure->message));
        json_object_object_add(f, "class", json_object_new_string(failure->class_name));
        json_object_object_add(f, "module", json_object_new_string(failure->module));
        json_object_object_add(f, "message", json_object_new_string(failure->message));
        json_object_object_add(f, "tb", tb);
        json_object_object_add(f, "args", args);
        json_object_object_add(f, "kwargs", json_object_new_object());
        json_object_object_add(m, "failure",
                               json_object_new_string(json_object_to_json_string_ext(
                                   f, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)));
    } else {
        json_object_object_add(m, "failure", NULL);
    }
    json_object_object_add(m, "ending", json_object_new_boolean(ending));
    json_object_object_add(m, "_msg_id", str_or_null(msg_id));
    json_object_object_add(m, "_unique_id", json_object_new_string(uid));
    return wrap(m);
}

void vn_rpc_reply_free(VnRpcReply *r)
{
    if (!r)
        return;
    g_free(r->msg_id);
    if (r->result)
        json_object_put(r->result);
    g_free(r->failure_class);
    g_free(r->failure_module);
    g_free(r->failure_message);
    g_free(r);
}

static gboolean read_failure(const char *text, VnRpcReply *r, GError **error)
{
    g_autoptr(json_object) f = vn_json_parse_strict(text, strlen(text), error);
    json_object *v = NULL;

    if (!f)
        return FALSE;
    if (!json_object_is_type(f, json_type_object))
        return malformed(error, "'failure' is not an object");
    if (json_object_object_get_ex(f, "class", &v) && json_object_is_type(v, json_type_string))
        r->failure_class = g_strdup(json_object_get_string(v));
    if (json_object_object_get_ex(f, "module", &v) && json_object_is_type(v, json_type_string))
        r->failure_module = g_strdup(json_object_get_string(v));
    if (json_object_object_get_ex(f, "message", &v) && json_object_is_type(v, json_type_string))
        r->failure_message = g_strdup(json_object_get_string(v));
    if (!r->failure_class)
        r->failure_class = g_strdup("RemoteError");
    if (!r->failure_message)
        r->failure_message = g_strdup("");
    return TRUE;
}

VnRpcReply *vn_envelope_decode_reply(const char *body, gsize len, GError **error)
{
    g_autoptr(json_object) outer = vn_json_parse_strict(body, len, error);
    g_autoptr(json_object) inner = NULL;
    g_autoptr(VnRpcReply) r = g_new0(VnRpcReply, 1);
    json_object *v = NULL;

    if (!outer)
        return NULL;
    if (!json_object_is_type(outer, json_type_object))
        return malformed(error, "the reply is not a JSON object"), NULL;
    g_autoptr(GError) version_error = NULL;
    inner = unwrap(outer, &version_error, error);
    if (!inner)
        return NULL;
    if (version_error) {
        g_propagate_error(error, g_steal_pointer(&version_error));
        return NULL;
    }
    if (!opt_string(inner, "_msg_id", 255, &r->msg_id, error))
        return NULL;
    if (json_object_object_get_ex(inner, "result", &v) && !json_object_is_type(v, json_type_null))
        r->result = json_object_get(v);
    if (json_object_object_get_ex(inner, "failure", &v) &&
        !json_object_is_type(v, json_type_null)) {
        if (!json_object_is_type(v, json_type_string))
            return malformed(error, "'failure' is not a string"), NULL;
        if (!read_failure(json_object_get_string(v), r, error))
            return NULL;
    }
    r->ending = TRUE;
    if (json_object_object_get_ex(inner, "ending", &v) && json_object_is_type(v, json_type_boolean))
        r->ending = json_object_get_boolean(v);
    return g_steal_pointer(&r);
}

char *vn_envelope_encode_notification(const char *publisher_id, const char *event_type,
                                      const char *priority, json_object *payload)
{
    g_autoptr(json_object) m = json_object_new_object();
    g_autoptr(GDateTime) now = g_date_time_new_now_utc();
    g_autofree char *ts = g_date_time_format(now, "%Y-%m-%d %H:%M:%S.%f");
    g_autofree char *id = g_uuid_string_random();

    json_object_object_add(m, "message_id", json_object_new_string(id));
    json_object_object_add(m, "publisher_id", json_object_new_string(publisher_id));
    json_object_object_add(m, "event_type", json_object_new_string(event_type));
    json_object_object_add(m, "priority", json_object_new_string(priority));
    json_object_object_add(m, "payload", payload ? json_object_get(payload) : NULL);
    json_object_object_add(m, "timestamp", json_object_new_string(ts));
    return wrap(m);
}
