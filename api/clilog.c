/* api/clilog.c - log filtering for command-line tools. */
#include "api/clilog.h"

static GLogWriterOutput writer(GLogLevelFlags level, const GLogField *fields, gsize n_fields,
                               gpointer user_data)
{
    gboolean verbose = GPOINTER_TO_INT(user_data);
    GLogLevelFlags shown = G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL;

    /* the tool reports what failed in one line of its own; the libraries' warnings on the
     * way (each broker URL refused, a retry) only with --verbose */
    if (verbose)
        shown |= G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_INFO;
    if (!(level & shown))
        return G_LOG_WRITER_HANDLED;
    return g_log_writer_standard_streams(level, fields, n_fields, NULL);
}

void vn_cli_log_init(gboolean verbose)
{
    g_log_set_writer_func(writer, GINT_TO_POINTER(verbose), NULL);
}
