/* storage/image_cache.h - images downloaded once per host, shared by thin overlays.
 *
 * Layout (Nova's): <dir>/<sha1(image id)> is the verified base, written as
 * <base>.part and renamed only after its size, sha256 and format were checked;
 * <base>.info records what it is; <base>.lock serialises downloaders across processes and
 * hosts sharing the folder.  Concurrent callers in one process share one download.  A
 * base is "in use" while a build holds it (vn_image_cache_acquire .. _release) or while
 * an instance disk names it; aging removes only unused bases untouched for the minimum
 * age, re-checked under the lock. */
#pragma once

#include <gio/gio.h>

typedef struct _VnImageCache VnImageCache;

typedef struct {
    guint64 max_bytes;    /* largest download and virtual size accepted */
    int timeout_s;        /* whole download */
    int low_speed_time_s; /* abort below 1 KiB/s for this long */
    const char *ca_file;  /* NULL or "": the system's */
    int min_age_s;        /* aging's minimum age (every host sharing the folder); 0: none */
} VnImageCacheConfig;

typedef struct {
    const char *id;
    const char *url;
    const char *sha256; /* lower-case hex */
    const char *format; /* "qcow2" or "raw" */
    guint64 size;       /* 0: not declared */
} VnImageSource;

/* Progress of a download: bytes done and expected (0 when unknown). */
typedef void (*VnImageProgressFunc)(guint64 done, guint64 total, gpointer user_data);

VnImageCache *vn_image_cache_new(const char *dir, const VnImageCacheConfig *cfg, GError **error);
void vn_image_cache_free(VnImageCache *cache);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnImageCache, vn_image_cache_free)

void vn_image_cache_set_config(VnImageCache *cache, const VnImageCacheConfig *cfg);

/* The path of the verified base for @src, downloading it if needed, and a hold on it that
 * vn_image_cache_release drops.  Concurrent callers for one image share one download.
 * Caller frees the path.  Errors: VN_STOR_ERROR_DOWNLOAD, _CHECKSUM, _TOO_LARGE, _UNSAFE,
 * _IO, _CANCELLED. */
char *vn_image_cache_acquire(VnImageCache *cache, const VnImageSource *src, GCancellable *cancel,
                             VnImageProgressFunc progress, gpointer user_data, GError **error);
void vn_image_cache_release(VnImageCache *cache, const char *image_id);

/* Where the base of @image_id lives (whether or not it exists).  Caller frees. */
char *vn_image_cache_path(VnImageCache *cache, const char *image_id);

const char *vn_image_cache_dir(VnImageCache *cache);

typedef struct {
    guint removed;
    guint kept_in_use;
    guint kept_young;
    guint64 bytes_freed;
} VnImageAgeReport;

/* Removes bases that no hold and no path in @in_use (a set of base paths) names, untouched
 * for @min_age_s seconds; leftover .part files of crashed downloads go too. */
gboolean vn_image_cache_age(VnImageCache *cache, GHashTable *in_use, gint64 min_age_s,
                            VnImageAgeReport *report, GError **error);

/* Removes the unfinished downloads a crash left (those whose lock nobody holds). */
void vn_image_cache_remove_partials(VnImageCache *cache);

/* Bytes the cached bases occupy on disk. */
guint64 vn_image_cache_usage(VnImageCache *cache);

/* Downloads finished since the cache was made (for tests and metrics). */
guint vn_image_cache_download_count(VnImageCache *cache);

/* Holds taken by vn_image_cache_acquire and not yet released, over every image. */
guint vn_image_cache_holds(VnImageCache *cache);
