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

/* As vn_stor_run, but a program that ran and exited with a status other than 0 is not an
 * error: its status goes to *@status (0 on success), for tools whose exit codes mean
 * something (iscsiadm's 15 "already logged in", 21 "no records").  Errors in *@errout
 * (may be NULL) are its standard error. */
gboolean vn_stor_run_status(const char *const *argv, int timeout_s, GCancellable *cancel,
                            char **out, char **errout, int *status, GError **error);

/* The shape of a runner, so that code driving external tools (the volume connectors) can
 * be given another one in unit tests: same contract as vn_stor_run_status. */
typedef gboolean (*VnStorRunFunc)(const char *const *argv, int timeout_s, char **out, char **errout,
                                  int *status, gpointer data, GError **error);
