/* agent/base/log.h - the daemon's log writer: stderr or journald, plain or JSON lines, secrets
 * masked, and the request id and instance uuid of the operation a thread is running
 * added to every message, so one grep follows a request from message to guest.
 *
 * Modules log with g_debug/g_info/g_message/g_warning under their own G_LOG_DOMAIN; this
 * writer formats what they say. */
#pragma once

#include <glib.h>

#include "agent/base/config.h"

/* Installs the writer (stderr, plain, info) so that even start-up errors are formatted. */
void vn_log_init(void);

/* Applies the configured target, format and level; safe to call again on reload. */
void vn_log_configure(VnLogTarget target, VnLogFormat format, VnLogLevel level);

/* A copy of @text with URL passwords and password=/token= style values replaced by ***. */
char *vn_log_mask_secrets(const char *text);

/* @s with invalid UTF-8 repaired and control characters escaped (\n, \r, \t, \xNN), so
 * a logged value can never forge a line.  NULL for NULL; caller frees. */
char *vn_log_escape(const char *s);

/* Sets (or with NULLs clears) the ids added to every message logged by this thread. */
void vn_log_context_set(const char *request_id, const char *instance_uuid);

/* The format of one log line (exposed for tests): @fields as GLib passes them. */
char *vn_log_format_line(VnLogFormat format, GLogLevelFlags level, const GLogField *fields,
                         gsize n_fields);

/* Logs *@err (if set) as a warning after @fmt, then clears it: for a step whose failure
 * must be seen but cannot change the outcome (a journal write during a rollback, an
 * acknowledgement).  Never pass NULL as a GError ** to hide such a failure. */
void vn_warn_error(GError **err, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
