/* agent/base/log.c - GLib structured-log writer for the daemon (see log.h). */
#include <stdio.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>
#include <syslog.h>

#include <glib.h>
#include <json-c/json.h>
#include <systemd/sd-journal.h>

#include "agent/base/log.h"

typedef struct {
    char *request_id;
    char *instance_uuid;
} LogContext;

static void context_free(gpointer p)
{
    LogContext *c = p;

    g_free(c->request_id);
    g_free(c->instance_uuid);
    g_free(c);
}

static GPrivate log_context = G_PRIVATE_INIT(context_free);
static GMutex log_lock;
static int log_level = VN_LOG_LEVEL_INFO;
static int log_format = VN_LOG_FORMAT_PLAIN;
#define VN_LOG_JOURNAL_SOCKET "/run/systemd/journal/socket"

static gboolean log_journald;
static GRegex *mask_url;
static GRegex *mask_kv;

static void masks_init(void)
{
    static gsize once;

    if (g_once_init_enter(&once)) {
        /* interpreted, not JIT-compiled (G_REGEX_OPTIMIZE): log lines are short, and JIT
         * code reads past the subject in whole words, which memory checkers report */
        mask_url = g_regex_new("([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\\s]*:)[^@\\s/]+@", 0, 0, NULL);
        /* a quoted value is masked whole, spaces included; an unquoted one up to the next
         * "key=" or separator of pairs, so it may hold spaces too ("password=my secret
         * words user=x" masks "my secret words") */
        mask_kv = g_regex_new("\\b(password|passwd|auth_token|token|secret|chap_secret|"
                              "auth_password|auth_username)([\"']?\\s*[=:]\\s*)"
                              "(\"[^\"]*\"|'[^']*'|[^,&;}\\]\\n\"']+?"
                              "(?=\\s+[A-Za-z_]+\\s*[=:]|[,&;}\\]\\n\"']|$))",
                              G_REGEX_CASELESS, 0, NULL);
        g_once_init_leave(&once, 1);
    }
}

char *vn_log_mask_secrets(const char *text)
{
    masks_init();
    if (!text)
        return NULL;
    g_autofree char *a = g_regex_replace(mask_url, text, -1, 0, "\\1***@", 0, NULL);
    return g_regex_replace(mask_kv, a ? a : text, -1, 0, "\\1\\2***", 0, NULL);
}

void vn_log_context_set(const char *request_id, const char *instance_uuid)
{
    LogContext *c = g_new0(LogContext, 1);

    c->request_id = g_strdup(request_id);
    c->instance_uuid = g_strdup(instance_uuid);
    g_private_replace(&log_context, c);
}

static int level_rank(GLogLevelFlags level)
{
    if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL))
        return VN_LOG_LEVEL_ERROR;
    if (level & G_LOG_LEVEL_WARNING)
        return VN_LOG_LEVEL_WARNING;
    if (level & (G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_INFO))
        return VN_LOG_LEVEL_INFO;
    return VN_LOG_LEVEL_DEBUG;
}

static const char *level_name(GLogLevelFlags level)
{
    if (level & G_LOG_LEVEL_ERROR)
        return "FATAL";
    if (level & G_LOG_LEVEL_CRITICAL)
        return "ERROR";
    if (level & G_LOG_LEVEL_WARNING)
        return "WARNING";
    if (level & G_LOG_LEVEL_MESSAGE)
        return "NOTICE";
    if (level & G_LOG_LEVEL_INFO)
        return "INFO";
    return "DEBUG";
}

static int level_priority(GLogLevelFlags level)
{
    if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL))
        return LOG_ERR;
    if (level & G_LOG_LEVEL_WARNING)
        return LOG_WARNING;
    if (level & G_LOG_LEVEL_MESSAGE)
        return LOG_NOTICE;
    if (level & G_LOG_LEVEL_INFO)
        return LOG_INFO;
    return LOG_DEBUG;
}

typedef struct {
    const char *domain;
    const char *message;
    const char *request_id;
    const char *instance_uuid;
} LogRecord;

static LogRecord record_from(const GLogField *fields, gsize n_fields)
{
    LogRecord r = { "virtnode", "", NULL, NULL };
    LogContext *c = g_private_get(&log_context);

    for (gsize i = 0; i < n_fields; i++) {
        const char *k = fields[i].key;
        const char *v = fields[i].value;
        if (fields[i].length >= 0)
            continue; /* binary fields are not ours */
        if (strcmp(k, "MESSAGE") == 0)
            r.message = v;
        else if (strcmp(k, "GLIB_DOMAIN") == 0)
            r.domain = v;
        else if (strcmp(k, "REQUEST_ID") == 0)
            r.request_id = v;
        else if (strcmp(k, "INSTANCE_UUID") == 0)
            r.instance_uuid = v;
    }
    if (c && !r.request_id)
        r.request_id = c->request_id;
    if (c && !r.instance_uuid)
        r.instance_uuid = c->instance_uuid;
    return r;
}

char *vn_log_escape(const char *s)
{
    g_autofree char *valid = NULL;
    GString *out;

    if (!s)
        return NULL;
    valid = g_utf8_make_valid(s, -1);
    out = g_string_sized_new(strlen(valid));
    for (const char *p = valid; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\n')
            g_string_append(out, "\\n");
        else if (c == '\r')
            g_string_append(out, "\\r");
        else if (c == '\t')
            g_string_append(out, "\\t");
        else if (c < 0x20 || c == 0x7f)
            g_string_append_printf(out, "\\x%02x", c);
        else
            g_string_append_c(out, (char)c);
    }
    return g_string_free(out, FALSE);
}

char *vn_log_format_line(VnLogFormat format, GLogLevelFlags level, const GLogField *fields,
                         gsize n_fields)
{
    LogRecord r = record_from(fields, n_fields);
    g_autoptr(GDateTime) now = g_date_time_new_now_utc();
    g_autofree char *ts = g_date_time_format_iso8601(now);
    g_autofree char *masked = vn_log_mask_secrets(r.message);
    /* one event, one line: nothing that came from outside can start a line of its own */
    g_autofree char *msg = vn_log_escape(masked);
    g_autofree char *request_id = vn_log_escape(r.request_id);
    g_autofree char *instance_uuid = vn_log_escape(r.instance_uuid);
    g_autofree char *domain = vn_log_escape(r.domain);

    r.request_id = request_id;
    r.instance_uuid = instance_uuid;
    r.domain = domain;

    if (format == VN_LOG_FORMAT_JSON) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "ts", json_object_new_string(ts));
        json_object_object_add(o, "level", json_object_new_string(level_name(level)));
        json_object_object_add(o, "domain", json_object_new_string(r.domain));
        json_object_object_add(o, "msg", json_object_new_string(msg));
        if (r.request_id)
            json_object_object_add(o, "request_id", json_object_new_string(r.request_id));
        if (r.instance_uuid)
            json_object_object_add(o, "instance_uuid", json_object_new_string(r.instance_uuid));
        char *line = g_strdup_printf(
            "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                          JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
        return line;
    }

    GString *line = g_string_new(NULL);
    g_string_append_printf(line, "%s %-7s %s: %s", ts, level_name(level), r.domain, msg);
    if (r.request_id || r.instance_uuid) {
        g_string_append(line, " [");
        if (r.request_id)
            g_string_append_printf(line, "request_id=%s", r.request_id);
        if (r.instance_uuid)
            g_string_append_printf(line, "%sinstance=%s", r.request_id ? " " : "", r.instance_uuid);
        g_string_append_c(line, ']');
    }
    g_string_append_c(line, '\n');
    return g_string_free(line, FALSE);
}

static void write_journald(GLogLevelFlags level, const GLogField *fields, gsize n_fields)
{
    LogRecord r = record_from(fields, n_fields);
    g_autofree char *msg = vn_log_mask_secrets(r.message);

    sd_journal_send("MESSAGE=%s", msg, "PRIORITY=%d", level_priority(level), "GLIB_DOMAIN=%s",
                    r.domain, "SYSLOG_IDENTIFIER=virtnoded", "REQUEST_ID=%s",
                    r.request_id ? r.request_id : "", "INSTANCE_UUID=%s",
                    r.instance_uuid ? r.instance_uuid : "", NULL);
}

static GLogWriterOutput writer(GLogLevelFlags level, const GLogField *fields, gsize n_fields,
                               gpointer user_data)
{
    if (level_rank(level) < g_atomic_int_get(&log_level) && !(level & G_LOG_LEVEL_ERROR))
        return G_LOG_WRITER_HANDLED;
    if (g_atomic_int_get(&log_journald)) {
        write_journald(level, fields, n_fields);
        return G_LOG_WRITER_HANDLED;
    }
    g_autofree char *line =
        vn_log_format_line(g_atomic_int_get(&log_format), level, fields, n_fields);
    g_mutex_lock(&log_lock);
    fputs(line, stderr);
    fflush(stderr);
    g_mutex_unlock(&log_lock);
    return G_LOG_WRITER_HANDLED;
}

void vn_log_init(void)
{
    masks_init();
    g_log_set_writer_func(writer, NULL, NULL);
}

void vn_log_configure(VnLogTarget target, VnLogFormat format, VnLogLevel level)
{
    gboolean journald = target == VN_LOG_TARGET_JOURNALD ||
                        (target == VN_LOG_TARGET_AUTO && g_log_writer_is_journald(fileno(stderr)));
    /* journald asked for but absent (no systemd on the host, a container): stderr, said
     * once, rather than messages sent nowhere */
    gboolean missing = journald && access(VN_LOG_JOURNAL_SOCKET, W_OK) != 0;

    g_atomic_int_set(&log_level, level);
    g_atomic_int_set(&log_format, format);
    g_atomic_int_set(&log_journald, journald && !missing);
    if (missing)
        g_warning("log_target journald: %s is missing; logging to stderr", VN_LOG_JOURNAL_SOCKET);
}

void vn_warn_error(GError **err, const char *fmt, ...)
{
    g_autofree char *what = NULL;
    va_list ap;

    if (!err || !*err)
        return;
    va_start(ap, fmt);
    what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_warning("%s: %s", what, (*err)->message);
    g_clear_error(err);
}
