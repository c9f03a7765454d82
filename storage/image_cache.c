/* storage/image_cache.c - the host's image cache (see image_cache.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <glib/gstdio.h>

#include "storage/image_cache.h"
#include "storage/image_inspect.h"
#include "storage/stor_error.h"

#define MAX_ATTEMPTS 3

G_DEFINE_AUTOPTR_CLEANUP_FUNC(CURL, curl_easy_cleanup)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CURLU, curl_url_cleanup)

/* Checking a base under its lock (and touching it, so that no host ages it) is good for
 * a while: a base checked less than LEASE ago, by this process, and unchanged since (the
 * same file and status change time) is used without taking the lock again.  The lease is
 * a tenth of aging's minimum age and at most this long; with no minimum age, no lease. */
#define LEASE_MAX_S 60

/* A file and the time of its last status change: what makes a check of it still hold. */
typedef struct {
    dev_t dev;
    ino_t ino;
    gint64 ctime_ns;
} FileId;

static gboolean file_id(const char *path, FileId *id)
{
    struct stat st;

    if (stat(path, &st) != 0)
        return FALSE;
    *id =
        (FileId){ st.st_dev, st.st_ino,
                  (gint64)st.st_ctim.tv_sec * G_GINT64_CONSTANT(1000000000) + st.st_ctim.tv_nsec };
    return TRUE;
}

/* Whether @path is still the file @was, unchanged since. */
static gboolean file_unchanged(const char *path, const FileId *was)
{
    FileId now;

    return file_id(path, &now) && now.dev == was->dev && now.ino == was->ino &&
           now.ctime_ns == was->ctime_ns;
}

/* One image of the cache, every field under the cache's lock. */
typedef struct {
    int holds;
    gboolean downloading;
    guint generation; /* downloads finished (or failed) for this image */
    GError *error;    /* of the last failed download, shared with its waiters */
    GCond done;
    /* the last check under the lock that found the base ready */
    gint64 checked_at; /* monotonic µs; 0: none */
    FileId checked;
    char *sha256;
    char *format;
} Entry;

struct _VnImageCache {
    char *dir;
    GMutex lock;
    VnImageCacheConfig cfg;
    char *ca_file;
    GHashTable *entries; /* image id -> Entry* */
    guint downloads;
};

static void entry_free(Entry *e)
{
    g_free(e->sha256);
    g_free(e->format);
    g_clear_error(&e->error);
    g_cond_clear(&e->done);
    g_free(e);
}

static void set_config_locked(VnImageCache *c, const VnImageCacheConfig *cfg)
{
    c->cfg = *cfg;
    g_free(c->ca_file);
    c->ca_file = g_strdup(cfg->ca_file && *cfg->ca_file ? cfg->ca_file : NULL);
    c->cfg.ca_file = c->ca_file;
    if (c->cfg.max_bytes == 0)
        c->cfg.max_bytes = G_GUINT64_CONSTANT(64) << 30;
    if (c->cfg.timeout_s <= 0)
        c->cfg.timeout_s = 3600;
    if (c->cfg.low_speed_time_s <= 0)
        c->cfg.low_speed_time_s = 60;
}

VnImageCache *vn_image_cache_new(const char *dir, const VnImageCacheConfig *cfg, GError **error)
{
    static gsize curl_once;
    VnImageCache *c;

    if (g_once_init_enter(&curl_once)) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        g_once_init_leave(&curl_once, 1);
    }
    /* guests' QEMU (each under its own identity) read their backing files here; only the
     * agent writes: 0755 folder, 0644 images, whatever the process umask */
    if (g_mkdir_with_parents(dir, 0755) < 0 || chmod(dir, 0755) < 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "creating '%s': %s", dir,
                    g_strerror(errno));
        return NULL;
    }
    c = g_new0(VnImageCache, 1);
    c->dir = g_strdup(dir);
    g_mutex_init(&c->lock);
    c->entries = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)entry_free);
    set_config_locked(c, cfg);
    return c;
}

void vn_image_cache_free(VnImageCache *c)
{
    if (!c)
        return;
    g_hash_table_destroy(c->entries);
    g_mutex_clear(&c->lock);
    g_free(c->ca_file);
    g_free(c->dir);
    g_free(c);
}

void vn_image_cache_set_config(VnImageCache *c, const VnImageCacheConfig *cfg)
{
    g_mutex_lock(&c->lock);
    set_config_locked(c, cfg);
    g_mutex_unlock(&c->lock);
}

const char *vn_image_cache_dir(VnImageCache *c)
{
    return c->dir;
}

char *vn_image_cache_path(VnImageCache *c, const char *image_id)
{
    g_autofree char *name = g_compute_checksum_for_string(G_CHECKSUM_SHA1, image_id, -1);

    return g_build_filename(c->dir, name, NULL);
}

guint vn_image_cache_download_count(VnImageCache *c)
{
    guint n;

    g_mutex_lock(&c->lock);
    n = c->downloads;
    g_mutex_unlock(&c->lock);
    return n;
}

guint vn_image_cache_holds(VnImageCache *c)
{
    GHashTableIter it;
    gpointer k, v;
    guint n = 0;

    g_mutex_lock(&c->lock);
    g_hash_table_iter_init(&it, c->entries);
    while (g_hash_table_iter_next(&it, &k, &v))
        n += (guint)((const Entry *)v)->holds;
    g_mutex_unlock(&c->lock);
    return n;
}

/* The URL without credentials, for messages. */
static char *url_shown(const char *url)
{
    g_autoptr(CURLU) h = curl_url();
    char *out = NULL;

    if (curl_url_set(h, CURLUPART_URL, url, 0) != CURLUE_OK)
        return g_strdup("(invalid URL)");
    curl_url_set(h, CURLUPART_PASSWORD, NULL, 0);
    curl_url_set(h, CURLUPART_QUERY, NULL, 0);
    if (curl_url_get(h, CURLUPART_URL, &out, 0) != CURLUE_OK)
        return g_strdup("(invalid URL)");
    char *copy = g_strdup(out);
    curl_free(out);
    return copy;
}

/* ------------------------------------------------------------------ the .info sidecar */

static char *info_path(const char *base)
{
    return g_strconcat(base, ".info", NULL);
}

static gboolean info_write(const char *base, const VnImageSource *src, GError **error)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autofree char *path = info_path(base);
    g_autofree char *shown = url_shown(src->url);

    g_key_file_set_string(kf, "image", "id", src->id);
    g_key_file_set_string(kf, "image", "sha256", src->sha256);
    g_key_file_set_string(kf, "image", "format", src->format);
    g_key_file_set_string(kf, "image", "url", shown);
    if (!g_key_file_save_to_file(kf, path, error)) {
        g_prefix_error(error, "recording the cached image: ");
        return FALSE;
    }
    return TRUE;
}

/* TRUE when the cached base exists and is the image asked for. */
static gboolean base_ready(const char *base, const VnImageSource *src, GError **error)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autofree char *path = info_path(base);
    g_autofree char *sha = NULL;
    g_autofree char *fmt = NULL;

    if (!g_file_test(base, G_FILE_TEST_IS_REGULAR))
        return FALSE;
    if (!g_key_file_load_from_file(kf, path, G_KEY_FILE_NONE, NULL))
        return FALSE; /* a base without its record: fetch it again */
    sha = g_key_file_get_string(kf, "image", "sha256", NULL);
    fmt = g_key_file_get_string(kf, "image", "format", NULL);
    if (g_strcmp0(sha, src->sha256) != 0 || g_strcmp0(fmt, src->format) != 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_CHECKSUM,
                    "image '%s' is cached with sha256 %s (%s), but the request names %s (%s)",
                    src->id, sha ? sha : "?", fmt ? fmt : "?", src->sha256, src->format);
        return FALSE;
    }
    /* every use makes the base young again for aging, as Nova does */
    if (utimensat(AT_FDCWD, base, NULL, 0) < 0)
        g_debug("touching %s: %s", base, g_strerror(errno));
    return TRUE;
}

/* ------------------------------------------------------------------ downloading */

typedef struct {
    int fd;
    GChecksum *sum;
    guint64 received;
    guint64 limit;
    gboolean too_large;
    int write_errno;
    GCancellable *cancel;
    VnImageProgressFunc progress;
    gpointer user_data;
    guint64 expected;
    gint64 last_report;
} Download;

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    Download *d = userdata;
    size_t n = size * nmemb;
    size_t off = 0;

    if (d->received + n > d->limit) {
        d->too_large = TRUE;
        return 0;
    }
    while (off < n) {
        ssize_t w = write(d->fd, ptr + off, n - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            d->write_errno = errno;
            return 0;
        }
        off += (size_t)w;
    }
    g_checksum_update(d->sum, (const guchar *)ptr, (gssize)n);
    d->received += n;
    return n;
}

static int on_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    Download *d = clientp;
    gint64 now = g_get_monotonic_time();

    (void)ultotal;
    (void)ulnow;
    if (g_cancellable_is_cancelled(d->cancel))
        return 1;
    if (d->progress && now - d->last_report >= 250 * G_TIME_SPAN_MILLISECOND) {
        d->last_report = now;
        d->progress((guint64)dlnow, d->expected ? d->expected : (guint64)MAX(dltotal, 0),
                    d->user_data);
    }
    return 0;
}

static gboolean transient(CURLcode rc, long http)
{
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
        return TRUE;
    case CURLE_HTTP_RETURNED_ERROR:
        return http >= 500;
    default:
        return FALSE;
    }
}

/* One attempt to download @src into @part.  *retry tells whether another may help. */
/* What all the attempts of one download may spend together: download_timeout and
 * max_image_size_gb bound the whole download, not each try. */
typedef struct {
    gint64 deadline;    /* monotonic */
    guint64 bytes_left; /* of max_bytes */
    int timeout_s;      /* for messages */
} Budget;

static gboolean download_once(VnImageCache *c, const VnImageSource *src, const char *part,
                              Budget *budget, GCancellable *cancel, VnImageProgressFunc progress,
                              gpointer user_data, gboolean *retry, GError **error)
{
    g_autoptr(CURL) curl = curl_easy_init();
    g_autofree char *shown = url_shown(src->url);
    g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
    char errbuf[CURL_ERROR_SIZE] = "";
    VnImageCacheConfig cfg;
    Download d = { 0 };
    CURLcode rc;
    long http = 0;

    *retry = FALSE;
    g_mutex_lock(&c->lock);
    cfg = c->cfg;
    g_autofree char *ca = g_strdup(c->ca_file);
    g_mutex_unlock(&c->lock);

    d.fd = open(part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (d.fd >= 0 && fchmod(d.fd, 0644) < 0) {
        close(d.fd);
        d.fd = -1;
    }
    if (d.fd < 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "creating '%s': %s", part,
                    g_strerror(errno));
        return FALSE;
    }
    gint64 left_ms = (budget->deadline - g_get_monotonic_time()) / 1000;
    if (left_ms <= 0 || budget->bytes_left == 0) {
        close(d.fd);
        g_set_error(error, VN_STOR_ERROR,
                    left_ms <= 0 ? VN_STOR_ERROR_TIMEOUT : VN_STOR_ERROR_TOO_LARGE,
                    "fetching '%s': the download's %s is spent", shown,
                    left_ms <= 0 ? "time (download_timeout)" : "size (max_image_size_gb)");
        return FALSE;
    }
    d.sum = sum;
    d.limit = src->size ? MIN(src->size, cfg.max_bytes) : cfg.max_bytes;
    gboolean budget_bound = budget->bytes_left < d.limit;
    d.limit = MIN(d.limit, budget->bytes_left);
    d.cancel = cancel;
    d.progress = progress;
    d.user_data = user_data;
    d.expected = src->size;

    curl_easy_setopt(curl, CURLOPT_URL, src->url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(curl, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 30L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)left_ms);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, (long)cfg.low_speed_time_s);
    curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)d.limit);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "virtnode/" VIRTNODE_VERSION);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &d);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &d);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    if (ca)
        curl_easy_setopt(curl, CURLOPT_CAINFO, ca);

    rc = curl_easy_perform(curl);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http);
    budget->bytes_left -= MIN(budget->bytes_left, d.received);
    if (rc == CURLE_OK && fsync(d.fd) < 0)
        d.write_errno = errno;
    close(d.fd);

    if (g_cancellable_is_cancelled(cancel)) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_CANCELLED, "download of '%s' cancelled",
                    shown);
        return FALSE;
    }
    if (d.too_large || rc == CURLE_FILESIZE_EXCEEDED) {
        if (budget_bound)
            g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TOO_LARGE,
                        "fetching '%s': the attempts together received max_image_size_gb", shown);
        else
            g_set_error(error, VN_STOR_ERROR,
                        src->size ? VN_STOR_ERROR_CHECKSUM : VN_STOR_ERROR_TOO_LARGE,
                        "'%s' sends more than %s bytes %" G_GUINT64_FORMAT, shown,
                        src->size ? "the declared" : "the allowed", d.limit);
        return FALSE;
    }
    if (rc == CURLE_OPERATION_TIMEDOUT && g_get_monotonic_time() >= budget->deadline) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TIMEOUT,
                    "fetching '%s': not done within download_timeout (%d s, all attempts "
                    "together)",
                    shown, budget->timeout_s);
        return FALSE;
    }
    if (d.write_errno) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "writing '%s': %s", part,
                    g_strerror(d.write_errno));
        return FALSE;
    }
    if (rc != CURLE_OK) {
        *retry = transient(rc, http);
        if (rc == CURLE_HTTP_RETURNED_ERROR)
            g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_DOWNLOAD, "fetching '%s': HTTP %ld",
                        shown, http);
        else
            g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_DOWNLOAD, "fetching '%s': %s", shown,
                        *errbuf ? errbuf : curl_easy_strerror(rc));
        return FALSE;
    }
    if (src->size && d.received != src->size) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_CHECKSUM,
                    "'%s' sent %" G_GUINT64_FORMAT
                    " bytes, the image is declared %" G_GUINT64_FORMAT,
                    shown, d.received, src->size);
        return FALSE;
    }
    if (strcmp(g_checksum_get_string(sum), src->sha256) != 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_CHECKSUM,
                    "'%s' has sha256 %s, the image is declared %s", shown,
                    g_checksum_get_string(sum), src->sha256);
        return FALSE;
    }
    if (progress)
        progress(d.received, d.received, user_data);
    return TRUE;
}

static gboolean verify_part(VnImageCache *c, const VnImageSource *src, const char *part,
                            GError **error)
{
    VnImageInfo info;
    guint64 max;

    g_mutex_lock(&c->lock);
    max = c->cfg.max_bytes;
    g_mutex_unlock(&c->lock);
    if (!vn_image_inspect_file(part, &info, error) ||
        !vn_image_check(&info, src->format, max, error)) {
        g_prefix_error(error, "image '%s': ", src->id);
        return FALSE;
    }
    return TRUE;
}

static gboolean fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    gboolean ok;

    if (fd < 0)
        return FALSE;
    ok = fsync(fd) == 0;
    close(fd);
    return ok;
}

/* Takes the cross-process lock of @base, waiting (cancellably) for another holder.  The
 * lock file exists only while someone holds it (unlock_base removes it), so a holder that
 * finds its file replaced or removed after flock() has locked a stale inode and tries
 * again. */
static int lock_base(const char *base, GCancellable *cancel, gboolean wait, GError **error)
{
    g_autofree char *path = g_strconcat(base, ".lock", NULL);

    for (;;) {
        struct stat fst, pst;
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

        if (fd < 0) {
            g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "opening '%s': %s", path,
                        g_strerror(errno));
            return -1;
        }
        while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            if (errno != EWOULDBLOCK && errno != EINTR) {
                g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "locking '%s': %s", path,
                            g_strerror(errno));
                close(fd);
                return -1;
            }
            if (!wait || g_cancellable_set_error_if_cancelled(cancel, error)) {
                if (!wait)
                    g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "'%s' is busy", path);
                close(fd);
                return -1;
            }
            g_usleep(200 * 1000);
        }
        if (fstat(fd, &fst) == 0 && stat(path, &pst) == 0 && fst.st_dev == pst.st_dev &&
            fst.st_ino == pst.st_ino)
            return fd;
        close(fd); /* the previous holder removed it: lock the current file */
    }
}

/* Releases a lock_base() lock and removes its file: no lock file outlives its holder,
 * whatever the outcome (a failed download used to leave one behind for good). */
static void unlock_base(const char *base, int fd)
{
    g_autofree char *path = g_strconcat(base, ".lock", NULL);

    g_unlink(path);
    flock(fd, LOCK_UN);
    close(fd);
}

/* Fetches the base under its cross-process lock (another host may have done it); on
 * success *@checked tells whether @id is the file found ready, read under that lock. */
static gboolean fetch(VnImageCache *c, const VnImageSource *src, const char *base,
                      GCancellable *cancel, VnImageProgressFunc progress, gpointer user_data,
                      gboolean *checked, FileId *id, GError **error)
{
    g_autofree char *part = g_strconcat(base, ".part", NULL);
    g_autoptr(GError) err = NULL;
    gboolean retry = FALSE;
    int lock = lock_base(base, cancel, TRUE, error);
    gboolean ok = FALSE;

    *checked = FALSE;
    if (lock < 0)
        return FALSE;
    if (base_ready(base, src, &err)) {
        ok = TRUE;
    } else if (err) {
        g_propagate_error(error, g_steal_pointer(&err));
    } else {
        Budget budget;
        g_mutex_lock(&c->lock);
        budget.timeout_s = c->cfg.timeout_s;
        budget.bytes_left = c->cfg.max_bytes;
        g_mutex_unlock(&c->lock);
        budget.deadline = g_get_monotonic_time() + (gint64)budget.timeout_s * G_TIME_SPAN_SECOND;
        for (int attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
            g_clear_error(&err);
            if (download_once(c, src, part, &budget, cancel, progress, user_data, &retry, &err))
                break;
            g_unlink(part);
            if (!retry || attempt == MAX_ATTEMPTS)
                break;
            g_info("image '%s': %s; retrying", src->id, err->message);
            g_usleep((gulong)attempt * G_USEC_PER_SEC);
        }
        if (!err && !verify_part(c, src, part, &err))
            g_unlink(part);
        if (!err && (g_rename(part, base) < 0 || !fsync_dir(c->dir))) {
            g_set_error(&err, VN_STOR_ERROR, VN_STOR_ERROR_IO, "installing '%s': %s", base,
                        g_strerror(errno));
            g_unlink(part);
        }
        if (!err && !info_write(base, src, &err))
            g_unlink(base);
        if (err) {
            g_propagate_error(error, g_steal_pointer(&err));
        } else {
            ok = TRUE;
            g_mutex_lock(&c->lock);
            c->downloads++;
            g_mutex_unlock(&c->lock);
            g_message("image '%s' downloaded and verified into %s", src->id, base);
        }
    }
    *checked = ok && file_id(base, id);
    unlock_base(base, lock);
    return ok;
}

static Entry *entry_get(VnImageCache *c, const char *id)
{
    Entry *e = g_hash_table_lookup(c->entries, id);

    if (!e) {
        e = g_new0(Entry, 1);
        g_cond_init(&e->done);
        g_hash_table_insert(c->entries, g_strdup(id), e);
    }
    return e;
}

/* With c->lock held: whether @e's last check stands for @src, if its base is still @id. */
static gboolean leased_locked(VnImageCache *c, const Entry *e, const VnImageSource *src, FileId *id)
{
    gint64 lease_s = MIN(LEASE_MAX_S, c->cfg.min_age_s / 10);

    if (e->downloading || !e->checked_at ||
        g_get_monotonic_time() - e->checked_at >= lease_s * G_USEC_PER_SEC ||
        g_strcmp0(e->sha256, src->sha256) != 0 || g_strcmp0(e->format, src->format) != 0)
        return FALSE;
    *id = e->checked;
    return TRUE;
}

char *vn_image_cache_acquire(VnImageCache *c, const VnImageSource *src, GCancellable *cancel,
                             VnImageProgressFunc progress, gpointer user_data, GError **error)
{
    g_autofree char *base = vn_image_cache_path(c, src->id);
    g_autoptr(GError) err = NULL;
    Entry *e;
    gboolean ok;
    FileId id;
    gboolean checked;

    g_mutex_lock(&c->lock);
    e = entry_get(c, src->id); /* entries live as long as the cache */
    e->holds++;
    for (;;) {
        checked = leased_locked(c, e, src, &id);
        g_mutex_unlock(&c->lock);
        /* looked at outside the lock: a hung shared folder must not hang other images */
        if (checked && file_unchanged(base, &id))
            return g_steal_pointer(&base);
        g_mutex_lock(&c->lock);
        if (!e->downloading)
            break;
        /* someone in this process fetches it: share that download and its outcome */
        guint gen = e->generation;
        while (e->downloading)
            g_cond_wait(&e->done, &c->lock);
        if (e->generation != gen && e->error) {
            g_propagate_error(error, g_error_copy(e->error));
            e->holds--;
            g_mutex_unlock(&c->lock);
            return NULL;
        }
    }
    e->downloading = TRUE;
    g_mutex_unlock(&c->lock);

    ok = fetch(c, src, base, cancel, progress, user_data, &checked, &id, &err);

    g_mutex_lock(&c->lock);
    e->downloading = FALSE;
    e->generation++;
    g_clear_error(&e->error);
    e->checked_at = 0;
    if (checked) {
        e->checked_at = g_get_monotonic_time();
        e->checked = id;
        g_free(e->sha256);
        e->sha256 = g_strdup(src->sha256);
        g_free(e->format);
        e->format = g_strdup(src->format);
    }
    if (!ok) {
        e->error = g_error_copy(err);
        e->holds--;
    }
    g_cond_broadcast(&e->done);
    g_mutex_unlock(&c->lock);
    if (!ok) {
        g_propagate_error(error, g_steal_pointer(&err));
        return NULL;
    }
    return g_steal_pointer(&base);
}

void vn_image_cache_release(VnImageCache *c, const char *image_id)
{
    Entry *e;

    g_mutex_lock(&c->lock);
    e = g_hash_table_lookup(c->entries, image_id);
    if (e && e->holds > 0)
        e->holds--;
    g_mutex_unlock(&c->lock);
}

/* ------------------------------------------------------------------ aging and usage */

static gboolean is_base_name(const char *name)
{
    if (strlen(name) != 40)
        return FALSE;
    for (const char *p = name; *p; p++) {
        if (!g_ascii_isxdigit(*p))
            return FALSE;
    }
    return TRUE;
}

/* TRUE when a hold in this process protects the base named @name. */
static gboolean held_locally(VnImageCache *c, const char *name)
{
    GHashTableIter it;
    gpointer k, v;
    gboolean held = FALSE;

    g_mutex_lock(&c->lock);
    g_hash_table_iter_init(&it, c->entries);
    while (!held && g_hash_table_iter_next(&it, &k, &v)) {
        Entry *e = v;
        if (e->holds <= 0 && !e->downloading)
            continue;
        g_autofree char *n = g_compute_checksum_for_string(G_CHECKSUM_SHA1, k, -1);
        held = strcmp(n, name) == 0;
    }
    g_mutex_unlock(&c->lock);
    return held;
}

static void age_one(VnImageCache *c, const char *name, GHashTable *in_use, gint64 min_age_s,
                    VnImageAgeReport *r)
{
    g_autofree char *base = g_build_filename(c->dir, name, NULL);
    g_autofree char *info = info_path(base);
    struct stat st;
    int lock;

    if ((in_use && g_hash_table_contains(in_use, base)) || held_locally(c, name)) {
        r->kept_in_use++;
        return;
    }
    lock = lock_base(base, NULL, FALSE, NULL);
    if (lock < 0) {
        r->kept_in_use++; /* being fetched or checked elsewhere */
        return;
    }
    /* re-checked under the lock: a build may have touched it meanwhile */
    if (stat(base, &st) == 0 && g_get_real_time() / G_USEC_PER_SEC - st.st_mtime >= min_age_s &&
        !held_locally(c, name)) {
        if (g_unlink(base) == 0) {
            g_unlink(info);
            r->removed++;
            r->bytes_freed += (guint64)st.st_blocks * 512;
            g_message("image cache: removed unused base %s", base);
        }
    } else {
        r->kept_young++;
    }
    unlock_base(base, lock);
}

/* Removes the download @name (a .part file) when no one holds its base's lock and it is
 * older than @min_age_s: what a crash left behind. */
static void remove_stale_part(VnImageCache *c, const char *name, gint64 min_age_s)
{
    g_autofree char *part = g_build_filename(c->dir, name, NULL);
    g_autofree char *base = g_strndup(part, strlen(part) - 5);
    gint64 now = g_get_real_time() / G_USEC_PER_SEC;
    struct stat st;
    int lock = lock_base(base, NULL, FALSE, NULL);

    if (lock < 0)
        return;
    if (stat(part, &st) == 0 && now - st.st_mtime >= min_age_s && g_unlink(part) == 0)
        g_message("image cache: removed the unfinished download %s", part);
    unlock_base(base, lock);
}

/* A lock file nobody holds (left by a crash, or by versions that kept them): removed. */
static void remove_stale_lock(VnImageCache *c, const char *name)
{
    g_autofree char *path = g_build_filename(c->dir, name, NULL);
    g_autofree char *base = g_strndup(path, strlen(path) - 5);
    int lock = lock_base(base, NULL, FALSE, NULL);

    if (lock >= 0)
        unlock_base(base, lock);
}

void vn_image_cache_remove_partials(VnImageCache *c)
{
    g_autoptr(GDir) dir = g_dir_open(c->dir, 0, NULL);
    const char *name;

    while (dir && (name = g_dir_read_name(dir))) {
        if (g_str_has_suffix(name, ".part"))
            remove_stale_part(c, name, 0);
        else if (g_str_has_suffix(name, ".lock"))
            remove_stale_lock(c, name);
    }
}

gboolean vn_image_cache_age(VnImageCache *c, GHashTable *in_use, gint64 min_age_s,
                            VnImageAgeReport *report, GError **error)
{
    g_autoptr(GDir) dir = g_dir_open(c->dir, 0, error);
    const char *name;
    VnImageAgeReport r = { 0 };

    if (!dir)
        return FALSE;
    while ((name = g_dir_read_name(dir))) {
        if (is_base_name(name)) {
            age_one(c, name, in_use, min_age_s, &r);
        } else if (g_str_has_suffix(name, ".part")) {
            remove_stale_part(c, name, 3600);
        }
    }
    if (report)
        *report = r;
    return TRUE;
}

guint64 vn_image_cache_usage(VnImageCache *c)
{
    g_autoptr(GDir) dir = g_dir_open(c->dir, 0, NULL);
    const char *name;
    guint64 total = 0;

    while (dir && (name = g_dir_read_name(dir))) {
        g_autofree char *p = g_build_filename(c->dir, name, NULL);
        struct stat st;
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode))
            total += (guint64)st.st_blocks * 512;
    }
    return total;
}
