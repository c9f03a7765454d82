/* storage/runner.h - the one way storage runs an external program: an argv (never a shell
 * line), a time limit after which the program is killed, cancellation (a delete during a
 * build), its error output in the error.  qemu-img, genisoimage, and the volume tools go
 * through it. */
#pragma once

#include <gio/gio.h>

/* Runs @argv (argv[0] found on PATH) and waits at most @timeout_s seconds.  Its standard
 * output goes to *@out (may be NULL to drop it).  Errors: VN_STOR_ERROR_TOOL (could not run,
 * or failed: its stderr in the message), _TIMEOUT (killed at the limit), _CANCELLED. */
gboolean vn_stor_run(const char *const *argv, int timeout_s, GCancellable *cancel, char **out,
                     GError **error);
