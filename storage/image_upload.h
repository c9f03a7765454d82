/* storage/image_upload.h - an image file sent by HTTP PUT (a snapshot to the image
 * service), its sha256 and size taken from the bytes as they go out. */
#pragma once

#include <gio/gio.h>

typedef void (*VnUploadProgress)(guint64 done, guint64 total, gpointer user_data);

typedef struct {
    const char *url;      /* http:// or https://, credentials included */
    const char *shown;    /* @url as messages may show it (no credentials) */
    const char *ca_file;  /* NULL or "": the system's */
    int timeout_s;        /* the whole transfer */
    int low_speed_time_s; /* given up below 1 KiB/s for this long */
} VnUploadTarget;

/* PUTs @path to @t->url with its length announced.  Any status but 2xx, a stall, the time
 * limit or @cancel fails it (VN_STOR_ERROR_DOWNLOAD for the transfer, _IO for the file,
 * _CANCELLED, _TIMEOUT).  On success *@sha256 (lower-case hex, caller frees) and *@size
 * describe what was sent. */
gboolean vn_image_upload(const char *path, const VnUploadTarget *t, GCancellable *cancel,
                         VnUploadProgress progress, gpointer user_data, char **sha256,
                         guint64 *size, GError **error);
