/* tests/unit/testutil.h - helpers shared by the unit tests: temporary folders, a small
 * in-process HTTP server (counting requests), files and images.  No external service. */
#pragma once

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <gio/gio.h>

/* A fresh temporary folder, removed by vn_test_rmtree.  Caller frees. */
char *vn_test_tmpdir(void);
void vn_test_rmtree(const char *dir);

/* cmocka setup/teardown pair: a fresh temporary folder per test, named by vn_test_dir(). */
int vn_test_dir_setup(void **state);
int vn_test_dir_teardown(void **state);
const char *vn_test_dir(void);

/* Writes @len bytes to @path (fails the test on error). */
void vn_test_write(const char *path, const void *data, gsize len);

/* The file's sha256 as lower-case hex.  Caller frees. */
char *vn_test_sha256_file(const char *path);

/* A flush that always fails with EIO: for vn_journal_set_flush, a disk that cannot flush. */
int vn_test_failing_flush(int fd);

/* Runs a command line; TRUE when it exits 0. */
gboolean vn_test_run(const char *cmdline);

/* An HTTP server on 127.0.0.1 serving files of @root, counting GETs per path.
 * With @delay_ms each response waits that long first (to make downloads overlap). */
typedef struct _VnTestHttp VnTestHttp;
VnTestHttp *vn_test_http_start(const char *root, int delay_ms);
int vn_test_http_port(VnTestHttp *h);
guint vn_test_http_count(VnTestHttp *h, const char *path);
/* Body bytes sent so far.  Paths /trickle/<file> (a byte per 100 ms) and /drop/<file> (half
 * the body, then the connection closes) serve broken downloads. */
guint64 vn_test_http_bytes(VnTestHttp *h);
void vn_test_http_stop(VnTestHttp *h);

/* Source tree path of @rel (VN_SOURCE_DIR set by ctest).  Caller frees. */
char *vn_test_source_path(const char *rel);
