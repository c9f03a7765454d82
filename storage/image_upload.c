/* storage/image_upload.c - HTTP PUT of an image file (see image_upload.h). */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "storage/image_upload.h"
#include "storage/stor_error.h"

typedef struct {
    int fd;
    int read_errno;
    guint64 total;
    GChecksum *sum;
    GCancellable *cancel;
    VnUploadProgress progress;
    gpointer user_data;
} Upload;

static size_t on_read(char *buf, size_t size, size_t n, void *data)
{
    Upload *u = data;
    ssize_t got;

    do {
        got = read(u->fd, buf, size * n);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        u->read_errno = errno;
        return CURL_READFUNC_ABORT;
    }
    g_checksum_update(u->sum, (const guchar *)buf, (gsize)got);
    return (size_t)got;
}

static int on_progress(void *data, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    Upload *u = data;

    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    if (g_cancellable_is_cancelled(u->cancel))
        return 1;
    if (u->progress)
        u->progress((guint64)ulnow, u->total, u->user_data);
    return 0;
}

gboolean vn_image_upload(const char *path, const VnUploadTarget *t, GCancellable *cancel,
                         VnUploadProgress progress, gpointer user_data, char **sha256,
                         guint64 *size, GError **error)
{
    Upload u = { .fd = -1, .cancel = cancel, .progress = progress, .user_data = user_data };
    char errbuf[CURL_ERROR_SIZE] = "";
    struct stat st;
    CURL *curl = NULL;
    CURLcode rc;
    long http = 0;
    gboolean ok = FALSE;

    u.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (u.fd < 0 || fstat(u.fd, &st) < 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "reading '%s': %s", path,
                    g_strerror(errno));
        goto out;
    }
    u.total = (guint64)st.st_size;
    u.sum = g_checksum_new(G_CHECKSUM_SHA256);
    curl = curl_easy_init();
    if (!curl) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_DOWNLOAD, "libcurl could not start");
        goto out;
    }
    curl_easy_setopt(curl, CURLOPT_URL, t->url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, (curl_off_t)st.st_size);
    curl_easy_setopt(curl, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(curl, CURLOPT_READDATA, &u);
    curl_easy_setopt(curl, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 30L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, (long)t->timeout_s);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, (long)t->low_speed_time_s);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "virtnode/" VIRTNODE_VERSION);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &u);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    if (t->ca_file && *t->ca_file)
        curl_easy_setopt(curl, CURLOPT_CAINFO, t->ca_file);
    rc = curl_easy_perform(curl);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http);
    if (rc == CURLE_ABORTED_BY_CALLBACK && g_cancellable_is_cancelled(cancel)) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_CANCELLED, "uploading to '%s': cancelled",
                    t->shown);
    } else if (u.read_errno) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "reading '%s': %s", path,
                    g_strerror(u.read_errno));
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TIMEOUT, "uploading to '%s': %s", t->shown,
                    *errbuf ? errbuf : curl_easy_strerror(rc));
    } else if (rc != CURLE_OK || http < 200 || http > 299) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_DOWNLOAD,
                    "uploading to '%s': %s (HTTP %ld)", t->shown,
                    rc != CURLE_OK ? (*errbuf ? errbuf : curl_easy_strerror(rc)) : "refused", http);
    } else {
        *sha256 = g_strdup(g_checksum_get_string(u.sum));
        *size = u.total;
        ok = TRUE;
    }
out:
    if (curl)
        curl_easy_cleanup(curl);
    if (u.sum)
        g_checksum_free(u.sum);
    if (u.fd >= 0)
        close(u.fd);
    return ok;
}
