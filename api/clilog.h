/* api/clilog.h - log output of command-line tools (virtnodectl, benchmarks): the link's
 * informational messages ("amqp: connected ...") are noise on a terminal, so only
 * warnings and errors are shown unless asked for. */
#pragma once

#include <glib.h>

/* Shows warnings and errors only, or everything from info up with @verbose. */
void vn_cli_log_init(gboolean verbose);
